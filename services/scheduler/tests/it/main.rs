//! Schedulers against a real nats-server: firings become jobs, exactly once per firing even
//! with several replicas; paused and deleted policies stop firing.

use std::collections::BTreeMap;
use std::time::Duration;

use arca_bus::{Bus, BusConfig, EventStore};
use arca_domain::job::Job;
use arca_domain::policy::{Policy, PolicyCommand};
use arca_domain::tenant::{Tenant, TenantCommand};
use arca_events::*;
use arca_scheduler::{Fired, SchedulerConfig, firing_job_id};
use chrono::{DateTime, Utc};

async fn store(server: &arca_testkit::NatsServer) -> EventStore {
    Bus::connect(BusConfig::new(server.url.clone())).await.unwrap().event_store().await.unwrap()
}

/// A tenant with a policy firing every second.
async fn every_second_policy(store: &EventStore) -> (TenantId, PolicyId) {
    let tenant = TenantId::new();
    let create = TenantCommand::Create { name: "sched".into(), quota_bytes: None };
    store.execute::<Tenant>(tenant, tenant, &create, &Metadata::new_root()).await.unwrap();
    let policy = PolicyId::new();
    let command = PolicyCommand::Create {
        name: "every second".into(),
        source: SourceId::new(),
        target: TargetId::new(),
        schedule: Schedule::Cron { expression: "* * * * * *".into(), timezone: "Europe/Berlin".into() },
        misfire: Misfire::Skip,
        mode: BackupMode::Incremental,
        retention: Retention::default(),
        copy_targets: vec![],
        verify_schedule: None,
    };
    store.execute::<Policy>(tenant, policy, &command, &Metadata::new_root()).await.unwrap();
    (tenant, policy)
}

/// Every `JobRequested` of `tenant`, by scheduled time.
async fn requested_jobs(bus: &Bus, tenant: TenantId) -> BTreeMap<DateTime<Utc>, Vec<JobId>> {
    let stream = bus.jetstream().get_stream(arca_bus::EVENTS_STREAM).await.unwrap();
    let mut by_time: BTreeMap<DateTime<Utc>, Vec<JobId>> = BTreeMap::new();
    let mut sequence = 1;
    while let Ok(message) = stream.get_raw_message(sequence).await {
        sequence += 1;
        let envelope = Envelope::from_json(&message.payload).unwrap();
        if envelope.tenant != tenant {
            continue;
        }
        if let Ok(Event::JobRequested(requested)) = envelope.event() {
            let Trigger::Schedule { at } = requested.trigger else { panic!("{requested:?}") };
            by_time.entry(at).or_default().push(JobId(envelope.aggregate_id));
        }
    }
    by_time
}

async fn queued_tickets(bus: &Bus) -> u64 {
    let mut stream = bus.jetstream().get_stream(arca_bus::JOBS_STREAM).await.unwrap();
    stream.info().await.unwrap().state.messages
}

#[tokio::test]
async fn two_schedulers_request_exactly_one_job_per_firing() {
    let server = arca_testkit::nats_server();
    let store = store(&server).await;
    let (tenant, policy) = every_second_policy(&store).await;
    let config = SchedulerConfig { tick: Duration::from_millis(50), ..SchedulerConfig::new(server.url.clone()) };
    let a = arca_scheduler::spawn(config.clone()).await.unwrap();
    let b = arca_scheduler::spawn(config).await.unwrap();
    tokio::time::sleep(Duration::from_millis(4200)).await;
    a.abort();
    b.abort();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let jobs = requested_jobs(store.bus(), tenant).await;
    assert!(jobs.len() >= 3, "about four firings in 4.2 s: {jobs:?}");
    for (at, ids) in &jobs {
        assert_eq!(ids.len(), 1, "firing at {at}: one job, not {ids:?}");
        assert_eq!(ids[0], firing_job_id(policy, *at), "the job id is derived from the firing");
        assert_eq!(at.timestamp_subsec_millis(), 0, "cron times are whole seconds");
        let (job, _) = store.load_state::<Job>(tenant, ids[0].as_uuid()).await.unwrap();
        assert_eq!(job.policy, Some(policy));
    }
    assert_eq!(queued_tickets(store.bus()).await, jobs.len() as u64, "one ticket per firing on the queue");
}

#[tokio::test]
async fn firing_the_same_time_twice_is_idempotent() {
    let server = arca_testkit::nats_server();
    let store = store(&server).await;
    let (tenant, policy_id) = every_second_policy(&store).await;
    let (policy, _) = store.load_state::<Policy>(tenant, policy_id.as_uuid()).await.unwrap();
    let at: DateTime<Utc> = "2026-12-01T02:00:00Z".parse().unwrap();
    let (first, second) = tokio::join!(
        arca_scheduler::fire(&store, tenant, policy_id, &policy, at),
        arca_scheduler::fire(&store, tenant, policy_id, &policy, at),
    );
    let outcomes = [first.unwrap(), second.unwrap()];
    let job = firing_job_id(policy_id, at);
    assert!(outcomes.contains(&Fired::Requested(job)), "{outcomes:?}");
    assert!(outcomes.contains(&Fired::AlreadyRequested(job)), "{outcomes:?}");
    assert_eq!(queued_tickets(store.bus()).await, 1);
}

#[tokio::test]
async fn a_paused_policy_stops_firing_and_a_suspended_tenant_gets_no_jobs() {
    let server = arca_testkit::nats_server();
    let store = store(&server).await;
    let (tenant, policy) = every_second_policy(&store).await;
    store.execute::<Policy>(tenant, policy, &PolicyCommand::Pause, &Metadata::new_root()).await.unwrap();
    let config = SchedulerConfig { tick: Duration::from_millis(50), ..SchedulerConfig::new(server.url.clone()) };
    let scheduler = arca_scheduler::spawn(config).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert!(requested_jobs(store.bus(), tenant).await.is_empty(), "paused");

    store.execute::<Policy>(tenant, policy, &PolicyCommand::Resume, &Metadata::new_root()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let fired = requested_jobs(store.bus(), tenant).await.len();
    assert!(fired >= 1, "resumed");

    let suspend = TenantCommand::Suspend { reason: "unpaid".into() };
    store.execute::<Tenant>(tenant, tenant, &suspend, &Metadata::new_root()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let before = requested_jobs(store.bus(), tenant).await.len();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(requested_jobs(store.bus(), tenant).await.len(), before, "a suspended tenant gets no new jobs");
    scheduler.abort();
}
