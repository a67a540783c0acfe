use std::time::Duration;

use arca_bus::jobs::{self, JobConsumer, JobTicket, Retry, WorkerConfig};
use arca_domain::job::{Job, JobCommand, JobStatus};
use arca_domain::tenant::{Tenant, TenantCommand};
use arca_events::*;

use crate::harness;

async fn requested_job(h: &crate::Harness, site: Option<&str>) -> JobTicket {
    let tenant = TenantId::new();
    let create = TenantCommand::Create { name: "jobs".into(), quota_bytes: None };
    h.store.execute::<Tenant>(tenant, tenant, &create, &Metadata::new_root()).await.unwrap();
    let job = JobId::new();
    let request = JobCommand::Request {
        kind: JobKind::Verify,
        trigger: Trigger::Manual,
        policy: None,
        source: None,
        target: Some(TargetId::new()),
        snapshot: None,
        mode: None,
        site: site.map(str::to_owned),
    };
    h.store.execute::<Job>(tenant, job, &request, &Metadata::new_root()).await.unwrap();
    JobTicket {
        tenant,
        job,
        kind: JobKind::Verify,
        site: site.map(str::to_owned),
        trace: Some(TraceContext::new_root()),
    }
}

fn fast(kind: JobKind) -> WorkerConfig {
    WorkerConfig {
        max_deliver: 2,
        backoff: vec![Duration::from_millis(200)],
        ack_wait: Duration::from_secs(1),
        ..WorkerConfig::new(kind)
    }
}

async fn job_state(h: &crate::Harness, ticket: &JobTicket) -> Job {
    h.store.load_state::<Job>(ticket.tenant, ticket.job.as_uuid()).await.unwrap().0
}

#[tokio::test]
async fn a_ticket_enqueued_twice_is_delivered_once_and_leaves_when_done() {
    let h = harness().await;
    let ticket = requested_job(&h, None).await;
    assert!(jobs::enqueue(&h.bus, &ticket, &ticket.job.to_string()).await.unwrap());
    assert!(!jobs::enqueue(&h.bus, &ticket, &ticket.job.to_string()).await.unwrap(), "duplicate");
    let consumer = JobConsumer::open(h.store.clone(), fast(JobKind::Verify)).await.unwrap();
    let delivery = consumer.next(Duration::from_secs(2)).await.unwrap().expect("a job");
    assert_eq!(delivery.ticket, ticket);
    assert_eq!(delivery.attempt, 1);
    delivery.in_progress().await.unwrap();
    delivery.complete().await.unwrap();
    assert!(consumer.next(Duration::from_millis(1500)).await.unwrap().is_none(), "gone after the ack");
}

#[tokio::test]
async fn progress_acks_keep_a_long_job_from_being_redelivered() {
    let h = harness().await;
    let ticket = requested_job(&h, None).await;
    jobs::enqueue(&h.bus, &ticket, "long").await.unwrap();
    let consumer = JobConsumer::open(h.store.clone(), fast(JobKind::Verify)).await.unwrap();
    let delivery = consumer.next(Duration::from_secs(2)).await.unwrap().unwrap();
    let keep_alive = delivery.keep_alive();
    // Three ack waits of work: without progress acks it would come back.
    assert!(consumer.next(Duration::from_secs(3)).await.unwrap().is_none());
    drop(keep_alive);
    delivery.complete().await.unwrap();
}

#[tokio::test]
async fn a_failing_job_is_retried_with_backoff_then_dead_lettered() {
    let h = harness().await;
    let ticket = requested_job(&h, None).await;
    jobs::enqueue(&h.bus, &ticket, "fails").await.unwrap();
    let consumer = JobConsumer::open(h.store.clone(), fast(JobKind::Verify)).await.unwrap();
    let first = consumer.next(Duration::from_secs(2)).await.unwrap().unwrap();
    assert!(!first.is_last_attempt());
    // The first redelivery waits at least the ack wait (the server's deadline for that delivery).
    assert_eq!(first.fail("disk on fire").await.unwrap(), Retry::Later(Duration::from_secs(1)));
    let second = consumer.next(Duration::from_secs(3)).await.unwrap().expect("redelivered");
    assert_eq!(second.attempt, 2);
    assert!(second.is_last_attempt());
    assert_eq!(second.fail("disk still on fire").await.unwrap(), Retry::DeadLettered);
    let job = job_state(&h, &ticket).await;
    assert_eq!(job.status, JobStatus::Failed);
    let events = h.store.load(AggregateRef::new(ticket.tenant, AggregateType::Job, ticket.job)).await.unwrap();
    let Event::JobFailed(failed) = events.events.last().unwrap().envelope.event().unwrap() else { panic!() };
    assert!(failed.dead_lettered);
    assert_eq!(failed.attempts, 2);
    assert_eq!(failed.error, "disk still on fire");
    assert!(consumer.next(Duration::from_millis(1500)).await.unwrap().is_none(), "not delivered again");
}

#[tokio::test]
async fn a_job_whose_workers_all_died_is_dead_lettered_by_the_watcher() {
    let h = harness().await;
    let _watcher = jobs::watch_dead_letters(h.store.clone()).await.unwrap();
    let ticket = requested_job(&h, None).await;
    jobs::enqueue(&h.bus, &ticket, "abandoned").await.unwrap();
    let consumer = JobConsumer::open(h.store.clone(), fast(JobKind::Verify)).await.unwrap();
    for attempt in 1..=2 {
        // Taken and never acked: the worker "died".
        let delivery = consumer.next(Duration::from_secs(4)).await.unwrap().expect("delivered");
        assert_eq!(delivery.attempt, attempt);
        drop(delivery);
    }
    // Workers keep pulling; the server gives up on the ticket instead of a third delivery.
    assert!(consumer.next(Duration::from_secs(3)).await.unwrap().is_none());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let job = job_state(&h, &ticket).await;
        if job.status == JobStatus::Failed {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never dead-lettered: {job:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stream = h.bus.jetstream().get_stream(arca_bus::JOBS_STREAM).await.unwrap();
    let mut stream = stream;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while stream.info().await.unwrap().state.messages != 0 {
        assert!(tokio::time::Instant::now() < deadline, "the dead ticket stays on the queue");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_site_job_goes_only_to_that_sites_workers() {
    let h = harness().await;
    let ticket = requested_job(&h, Some("branch-7")).await;
    jobs::enqueue(&h.bus, &ticket, "site").await.unwrap();
    let unlabelled = JobConsumer::open(h.store.clone(), fast(JobKind::Verify)).await.unwrap();
    assert!(unlabelled.next(Duration::from_millis(800)).await.unwrap().is_none());
    let other_site =
        JobConsumer::open(h.store.clone(), WorkerConfig { site: Some("hq".into()), ..fast(JobKind::Verify) })
            .await
            .unwrap();
    assert!(other_site.next(Duration::from_millis(800)).await.unwrap().is_none());
    let branch =
        JobConsumer::open(h.store.clone(), WorkerConfig { site: Some("branch-7".into()), ..fast(JobKind::Verify) })
            .await
            .unwrap();
    let delivery = branch.next(Duration::from_secs(2)).await.unwrap().expect("the branch worker gets it");
    assert_eq!(delivery.ticket.site.as_deref(), Some("branch-7"));
    delivery.complete().await.unwrap();
}

#[tokio::test]
async fn live_progress_goes_over_core_nats() {
    use futures::StreamExt;
    let h = harness().await;
    let (tenant, job) = (TenantId::new(), JobId::new());
    let mut updates = h.bus.client().subscribe(jobs::progress_subject(tenant, job)).await.unwrap();
    h.bus.client().flush().await.unwrap();
    let progress = jobs::Progress { bytes_done: 42, files_done: 3, bytes_per_second: 1.5, ..Default::default() };
    jobs::publish_progress(&h.bus, tenant, job, &progress).await.unwrap();
    let message = tokio::time::timeout(Duration::from_secs(2), updates.next()).await.unwrap().unwrap();
    assert_eq!(serde_json::from_slice::<jobs::Progress>(&message.payload).unwrap(), progress);
    let info = h.bus.jetstream().get_stream(arca_bus::EVENTS_STREAM).await.unwrap().get_info().await.unwrap();
    assert_eq!(info.state.messages, 0, "progress is not stored");
}
