//! The scheduler service decides *when* work happens: it turns policies' cron and interval
//! schedules into backup jobs on the JetStream work queue.
//!
//! It follows every policy event (`arca.evt.*.policy.*`, from the start of the log) and
//! folds them with the same pure `Policy` aggregate the command side uses, so it always
//! knows each policy's schedule, misfire rule and whether it is paused or deleted.
//!
//! **Replicas need no leader.** Each firing of a policy has a deterministic job id (derived
//! from the policy and the scheduled time) and a queue message id `<policy>:<time>`: two
//! schedulers firing the same policy at the same time race on one job aggregate — exactly
//! one `JobRequested` is appended, the loser's reload finds the job already requested — and
//! JetStream keeps one ticket.
//!
//! **Misfires.** A firing found more than [`LATE_AFTER`] past its time (the process was
//! paused or starting) is late: `skip` drops it, `run_once` runs one job for all the late
//! firings of that policy. Firings missed while no scheduler ran at all are not replayed.

use std::collections::HashMap;
use std::time::Duration;

use arca_bus::jobs::{self, JobTicket};
use arca_bus::{Bus, BusConfig, BusError, EVENTS_STREAM, EventStore, ExecuteError};
use arca_domain::job::{Job, JobCommand};
use arca_domain::policy::Policy;
use arca_domain::schedule::CompiledSchedule;
use arca_domain::source::Source;
use arca_domain::{Aggregate, DomainError};
use arca_events::{Envelope, JobId, JobKind, Metadata, Misfire, PolicyId, TenantId, Trigger};
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::task::JoinHandle;
use tracing::Instrument;

/// Firings requested at once.
const FIRING_CONCURRENCY: usize = 32;

/// How late a firing may be and still count as on time.
pub const LATE_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Execute(#[from] ExecuteError),
}

/// How to run a scheduler.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    pub nats_url: String,
    pub replicas: usize,
    /// How often due firings are looked for.
    pub tick: Duration,
}

impl SchedulerConfig {
    pub fn new(nats_url: impl Into<String>) -> Self {
        Self { nats_url: nats_url.into(), replicas: 1, tick: Duration::from_millis(250) }
    }
}

/// What became of one firing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fired {
    /// This scheduler requested the job.
    Requested(JobId),
    /// Another replica (or an earlier attempt) had already requested it.
    AlreadyRequested(JobId),
    /// The domain refused it (tenant suspended, over quota, deleted …).
    Refused(JobId),
}

/// The id of the job for `policy`'s firing at `at`: the same in every replica.
pub fn firing_job_id(policy: PolicyId, at: DateTime<Utc>) -> JobId {
    derived_firing_id(b"arca-firing\0", policy, at)
}

/// The id of the verify job for `policy`'s verify schedule firing at `at`.
pub fn verify_firing_job_id(policy: PolicyId, at: DateTime<Utc>) -> JobId {
    derived_firing_id(b"arca-verify-firing\0", policy, at)
}

/// BLAKE3 of a domain tag, the policy and the time, as a UUIDv8.
fn derived_firing_id(domain: &[u8], policy: PolicyId, at: DateTime<Utc>) -> JobId {
    let mut hasher = blake3::Hasher::new();
    hasher.update(domain);
    hasher.update(policy.as_uuid().as_bytes());
    hasher.update(&at.timestamp_millis().to_be_bytes());
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest.as_bytes()[..16]);
    JobId(uuid::Uuid::new_v8(bytes))
}

/// One policy as the scheduler sees it.
#[derive(Default)]
struct Plan {
    policy: Policy,
    compiled: Option<CompiledSchedule>,
    next_due: Option<DateTime<Utc>>,
    verify_compiled: Option<CompiledSchedule>,
    verify_next_due: Option<DateTime<Utc>>,
}

impl Plan {
    fn reschedule(&mut self, now: DateTime<Utc>) {
        self.compiled = self.policy.schedule.as_ref().and_then(|s| CompiledSchedule::parse(s).ok());
        self.next_due = match (&self.compiled, self.policy.is_active()) {
            (Some(compiled), true) => compiled.next_after(now),
            _ => None,
        };
        self.verify_compiled = self.policy.verify_schedule.as_ref().and_then(|s| CompiledSchedule::parse(s).ok());
        self.verify_next_due = match (&self.verify_compiled, self.policy.is_active()) {
            (Some(compiled), true) => compiled.next_after(now),
            _ => None,
        };
    }
}

/// A built scheduler, ready to run.
pub struct Scheduler {
    store: EventStore,
    config: SchedulerConfig,
}

impl Scheduler {
    pub async fn build(config: SchedulerConfig) -> Result<Scheduler, SchedulerError> {
        let bus = Bus::connect(BusConfig {
            replicas: config.replicas,
            client_name: "arca-scheduler".into(),
            ..BusConfig::new(&config.nats_url)
        })
        .await?;
        Ok(Scheduler { store: bus.event_store().await?, config })
    }

    /// Follows policies and fires them until `shutdown` completes.
    pub async fn run_until_stopped(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), SchedulerError> {
        tokio::select! {
            () = shutdown => Ok(()),
            result = self.run() => result,
        }
    }

    async fn run(self) -> Result<(), SchedulerError> {
        // A subscription that ends or fails (NATS restarted, a missed heartbeat under load) is
        // opened again and every policy re-read from the start: the scheduler never stops.
        loop {
            if let Err(e) = self.follow_and_fire().await {
                tracing::warn!(error = %e, "following policies failed; subscribing again");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn follow_and_fire(&self) -> Result<(), SchedulerError> {
        let bus = self.store.bus().clone();
        let stream = bus
            .jetstream()
            .get_stream(EVENTS_STREAM)
            .await
            .map_err(|e| BusError::unavailable("open the EVENTS stream", e))?;
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: format!("{}.*.policy.*", arca_events::EVENT_SUBJECT_PREFIX),
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| BusError::unavailable("follow policies", e))?;
        let mut policies = consumer.messages().await.map_err(|e| BusError::unavailable("follow policies", e))?;
        let mut plans: HashMap<(TenantId, PolicyId), Plan> = HashMap::new();
        loop {
            // Wake at the earliest due firing (at most `tick` from now): no polling delay.
            let now = Utc::now();
            let earliest = plans.values().flat_map(|plan| [plan.next_due, plan.verify_next_due]).flatten().min();
            let wait = earliest
                .map(|due| due.signed_duration_since(now).to_std().unwrap_or_default())
                .unwrap_or(self.config.tick)
                .min(self.config.tick);
            tokio::select! {
                message = policies.next() => {
                    let Some(message) = message else {
                        return Err(BusError::Unavailable { operation: "follow policies".into(), reason: "the subscription ended".into() }.into());
                    };
                    let message = message.map_err(|e| BusError::unavailable("follow policies", e))?;
                    apply_policy_event(&mut plans, &message.payload);
                }
                () = tokio::time::sleep(wait) => {
                    self.fire_due(&mut plans).await;
                }
            }
        }
    }

    /// Fires every due policy (and verify schedule), many at once: a minute boundary where
    /// hundreds of policies are due must not make the last one wait for all the others.
    async fn fire_due(&self, plans: &mut HashMap<(TenantId, PolicyId), Plan>) {
        let now = Utc::now();
        let mut firings = Vec::new();
        for ((tenant, policy_id), plan) in plans.iter_mut() {
            let (Some(due), Some(compiled)) = (plan.next_due, plan.compiled.as_ref()) else { continue };
            if due > now {
                continue;
            }
            let late = now.signed_duration_since(due).to_std().unwrap_or_default() > LATE_AFTER;
            // The next firing after now: however many were missed, at most one runs now.
            let mut last_missed = due;
            while let Some(next) = compiled.next_after(last_missed).filter(|next| *next <= now) {
                last_missed = next;
            }
            plan.next_due = compiled.next_after(last_missed);
            if late && plan.policy.misfire == Misfire::Skip {
                tracing::warn!(policy = %policy_id, due = %due, "skipping a late firing (misfire: skip)");
                continue;
            }
            firings.push((JobKind::Backup, *tenant, *policy_id, plan.policy.clone(), last_missed));
        }
        for ((tenant, policy_id), plan) in plans.iter_mut() {
            let (Some(due), Some(compiled)) = (plan.verify_next_due, plan.verify_compiled.as_ref()) else { continue };
            if due > now {
                continue;
            }
            // Verification is not time-critical: a late one runs once, never several.
            let mut last_missed = due;
            while let Some(next) = compiled.next_after(last_missed).filter(|next| *next <= now) {
                last_missed = next;
            }
            plan.verify_next_due = compiled.next_after(last_missed);
            firings.push((JobKind::Verify, *tenant, *policy_id, plan.policy.clone(), last_missed));
        }
        futures::stream::iter(firings)
            .for_each_concurrent(FIRING_CONCURRENCY, |(kind, tenant, policy_id, policy, at)| async move {
                // A firing whose request cannot be made now is tried a few times, then logged:
                // the scheduler itself keeps running.
                for attempt in 1..=3 {
                    let outcome = match kind {
                        JobKind::Verify => fire_verify(&self.store, tenant, policy_id, &policy, at).await,
                        _ => fire(&self.store, tenant, policy_id, &policy, at).await,
                    };
                    match outcome {
                        Ok(outcome) => {
                            tracing::info!(policy = %policy_id, %at, kind = kind.as_str(), ?outcome, "policy fired");
                            return;
                        }
                        Err(e) if attempt < 3 => {
                            tracing::warn!(policy = %policy_id, %at, error = %e, "firing failed; trying again");
                            tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                        }
                        Err(e) => tracing::error!(policy = %policy_id, %at, error = %e, "firing lost"),
                    }
                }
            })
            .await;
    }
}

fn apply_policy_event(plans: &mut HashMap<(TenantId, PolicyId), Plan>, payload: &[u8]) {
    let envelope = match Envelope::from_json(payload) {
        Ok(envelope) => envelope,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring a malformed policy event");
            return;
        }
    };
    let event = match envelope.event() {
        Ok(event) => event,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring an unreadable policy event");
            return;
        }
    };
    let key = (envelope.tenant, PolicyId(envelope.aggregate_id));
    let plan = plans.entry(key).or_default();
    let before = (plan.policy.schedule.clone(), plan.policy.verify_schedule.clone(), plan.policy.is_active());
    plan.policy.apply(&event);
    if (plan.policy.schedule.clone(), plan.policy.verify_schedule.clone(), plan.policy.is_active()) != before {
        plan.reschedule(Utc::now());
    }
}

/// A firing starts a trace: the span's own when OpenTelemetry records it, else a fresh one.
fn firing_metadata(span: &tracing::Span) -> Metadata {
    let root = Metadata::new_root();
    Metadata { trace: arca_telemetry::trace_of(span).or(root.trace.clone()), ..root }
}

/// Requests the job for `policy`'s firing at `at` and puts its ticket on the queue; safe to
/// call from several replicas for the same firing.
pub async fn fire(
    store: &EventStore,
    tenant: TenantId,
    policy_id: PolicyId,
    policy: &Policy,
    at: DateTime<Utc>,
) -> Result<Fired, SchedulerError> {
    let job = firing_job_id(policy_id, at);
    // The source's site label routes the job to that site's transport workers.
    let (source, _) = store.load_state::<Source>(tenant, policy.source.as_uuid()).await?;
    let command = JobCommand::Request {
        kind: JobKind::Backup,
        trigger: Trigger::Schedule { at },
        policy: Some(policy_id),
        source: Some(policy.source),
        target: Some(policy.target),
        snapshot: None,
        mode: Some(policy.mode),
        site: source.site.clone(),
    };
    let span = tracing::info_span!("fire", policy = %policy_id, %job, at = %at);
    // Also when another replica requested it: it may have died before enqueueing.
    let message_id = format!("{policy_id}:{}", at.to_rfc3339());
    let ticket = JobTicket { tenant, job, kind: JobKind::Backup, site: source.site, trace: None };
    request_firing(store, ticket, &command, span, &message_id).await
}

/// Requests the verify job for `policy`'s verify firing at `at` (its target, structure and a
/// share of the packs read back) and puts it on the queue; safe from several replicas.
pub async fn fire_verify(
    store: &EventStore,
    tenant: TenantId,
    policy_id: PolicyId,
    policy: &Policy,
    at: DateTime<Utc>,
) -> Result<Fired, SchedulerError> {
    let job = verify_firing_job_id(policy_id, at);
    let command = JobCommand::Request {
        kind: JobKind::Verify,
        trigger: Trigger::Schedule { at },
        policy: Some(policy_id),
        source: None,
        target: Some(policy.target),
        snapshot: None,
        mode: None,
        site: None,
    };
    let span = tracing::info_span!("fire_verify", policy = %policy_id, %job, at = %at);
    let message_id = format!("{policy_id}:verify:{}", at.to_rfc3339());
    let ticket = JobTicket { tenant, job, kind: JobKind::Verify, site: None, trace: None };
    request_firing(store, ticket, &command, span, &message_id).await
}

/// Requests the ticket's job with `command` in a trace that starts at `span`, then puts the
/// ticket on the queue under `message_id` — also when the job existed already (a replica that
/// requested it may have died before enqueueing). A firing the domain refuses is logged.
async fn request_firing(
    store: &EventStore,
    mut ticket: JobTicket,
    command: &JobCommand,
    span: tracing::Span,
    message_id: &str,
) -> Result<Fired, SchedulerError> {
    let (tenant, job) = (ticket.tenant, ticket.job);
    let meta = firing_metadata(&span);
    let fired = match store.execute::<Job>(tenant, job, command, &meta).instrument(span).await {
        Ok(committed) if committed.events.is_empty() => Fired::AlreadyRequested(job),
        Ok(_) => Fired::Requested(job),
        Err(ExecuteError::Domain(DomainError::IllegalTransition { .. })) => Fired::AlreadyRequested(job),
        Err(ExecuteError::Domain(e)) => {
            tracing::warn!(%job, kind = ticket.kind.as_str(), error = %e, "the firing was refused");
            return Ok(Fired::Refused(job));
        }
        Err(e) => return Err(e.into()),
    };
    ticket.trace = meta.trace;
    jobs::enqueue(store.bus(), &ticket, message_id).await?;
    Ok(fired)
}

/// Spawns a scheduler in this process (for `arca server` and tests).
pub async fn spawn(config: SchedulerConfig) -> Result<JoinHandle<Result<(), SchedulerError>>, SchedulerError> {
    let scheduler = Scheduler::build(config).await?;
    Ok(tokio::spawn(scheduler.run_until_stopped(std::future::pending())))
}
