//! The job loop every worker service runs, around a [`JobHandler`] that does the work.
//!
//! For each ticket pulled from the queue: load the job; drop the ticket if the job has ended
//! (after re-requesting the follow-ups of a success, which may have been lost with a crash);
//! record `JobStarted` with the delivery's attempt; keep the delivery alive with progress acks;
//! publish live progress on core NATS every second and a `JobCheckpointed` every few seconds;
//! then record the result. A [`JobError::Temporary`] failure is retried with the queue's
//! backoff and dead-lettered after the last try; a [`JobError::Permanent`] one fails the job
//! at once. At most [`WorkerSettings::parallel`] jobs run at a time in one worker.
//!
//! A job cancelled while it runs (`JobCancelled`, from the API) is seen by the attempt at
//! once (it follows its job's events): [`JobContext::cancelled`] completes, handlers that
//! can stop early do (the backup engine stops reading and writes no snapshot), and after
//! [`WorkerSettings::cancel_grace`] the attempt is dropped whatever the handler does.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arca_bus::jobs::{self, JobConsumer, JobDelivery, JobTicket, Progress, Retry, WorkerConfig};
use arca_bus::{BusError, EventStore, ExecuteError};
use arca_domain::DomainError;
use arca_domain::job::{Job, JobCommand, JobStatus};
use arca_events::{JobId, JobKind, Metadata, PolicyId, SnapshotId, TargetId, TenantId, Trigger};
use arca_telemetry::names;
use futures::StreamExt;
use tokio::sync::{Semaphore, watch};
use tracing::Instrument;

/// How one worker pool takes and runs jobs.
#[derive(Clone, Debug)]
pub struct WorkerSettings {
    /// Recorded in `JobStarted` (default: `<host>:<pid>`).
    pub name: String,
    /// Take only this site's jobs.
    pub site: Option<String>,
    /// Jobs run at once by this worker.
    pub parallel: usize,
    /// Deliveries before a job is dead-lettered.
    pub max_deliver: u32,
    /// Pause before each redelivery of a failed attempt.
    pub backoff: Vec<Duration>,
    /// A worker silent for this long is presumed dead and its job redelivered.
    pub ack_wait: Duration,
    /// Live progress on core NATS.
    pub progress_every: Duration,
    /// A `JobCheckpointed` event.
    pub checkpoint_every: Duration,
    /// How long a cancelled attempt may take to stop by itself before it is dropped.
    pub cancel_grace: Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        WorkerSettings {
            name: format!("{host}:{}", std::process::id()),
            site: None,
            parallel: 2,
            max_deliver: 5,
            backoff: vec![Duration::from_secs(5), Duration::from_secs(30), Duration::from_secs(120)],
            ack_wait: Duration::from_secs(30),
            progress_every: Duration::from_secs(1),
            checkpoint_every: Duration::from_secs(15),
            cancel_grace: Duration::from_secs(10),
        }
    }
}

impl WorkerSettings {
    fn queue(&self, kind: JobKind) -> WorkerConfig {
        WorkerConfig {
            kind,
            site: self.site.clone(),
            max_deliver: self.max_deliver,
            backoff: self.backoff.clone(),
            ack_wait: self.ack_wait,
        }
    }
}

/// Why a job attempt did not succeed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// May work later (a store or NATS was unreachable): retried with backoff.
    #[error("{0}")]
    Temporary(String),
    /// Will not work however often it is tried: the job fails now.
    #[error("{0}")]
    Permanent(String),
}

impl From<ExecuteError> for JobError {
    fn from(e: ExecuteError) -> Self {
        match &e {
            ExecuteError::Bus(bus) if bus.is_retryable() => JobError::Temporary(e.to_string()),
            _ => JobError::Permanent(e.to_string()),
        }
    }
}

impl From<crate::targets::TargetError> for JobError {
    fn from(e: crate::targets::TargetError) -> Self {
        if e.is_temporary() { JobError::Temporary(e.to_string()) } else { JobError::Permanent(e.to_string()) }
    }
}

impl From<arca_repo::Error> for JobError {
    fn from(e: arca_repo::Error) -> Self {
        if e.is_temporary() { JobError::Temporary(e.to_string()) } else { JobError::Permanent(e.to_string()) }
    }
}

/// What a successful attempt reports (it becomes `JobSucceeded`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobOutcome {
    pub snapshot: Option<SnapshotId>,
    pub bytes_read: u64,
    pub bytes_added: u64,
    pub files: u64,
}

/// A job a finished job asks for (retention after a backup, a copy offsite, …).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FollowUp {
    pub kind: JobKind,
    pub policy: Option<PolicyId>,
    pub target: Option<TargetId>,
    pub snapshot: Option<SnapshotId>,
    pub site: Option<String>,
}

/// Live progress as a handler last reported it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgressReading {
    pub bytes_done: u64,
    pub bytes_total: Option<u64>,
    pub files_done: u64,
}

type ProgressSource = Box<dyn Fn() -> ProgressReading + Send + Sync>;

/// One attempt of one job, as a handler sees it.
#[derive(Clone)]
pub struct JobContext {
    pub store: EventStore,
    pub tenant: TenantId,
    pub job_id: JobId,
    /// The job as it was when this attempt started.
    pub job: Job,
    pub attempt: u32,
    /// Correlation and trace for the events this attempt appends.
    pub meta: Metadata,
    progress: Arc<Mutex<Option<ProgressSource>>>,
    cancelled: watch::Receiver<bool>,
}

impl JobContext {
    /// Where live progress is read from while the job runs (polled by the runner).
    pub fn report_progress(&self, source: impl Fn() -> ProgressReading + Send + Sync + 'static) {
        *self.progress.lock().expect("progress source lock") = Some(Box::new(source));
    }

    /// Whether the job has been cancelled while this attempt runs.
    pub fn is_cancelled(&self) -> bool {
        *self.cancelled.borrow()
    }

    /// Completes when the job is cancelled; never, if it is not.
    pub async fn cancelled(&self) {
        let mut cancelled = self.cancelled.clone();
        if cancelled.wait_for(|c| *c).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    fn read_progress(&self) -> Option<ProgressReading> {
        self.progress.lock().expect("progress source lock").as_ref().map(|source| source())
    }
}

/// The work of one kind of job.
pub trait JobHandler: Send + Sync + 'static {
    fn kind(&self) -> JobKind;

    /// Does the work of one attempt.
    fn run(&self, ctx: JobContext) -> impl Future<Output = Result<JobOutcome, JobError>> + Send;

    /// The jobs a success of `job` asks for. Called again when a ticket of an already
    /// succeeded job comes back, so it must depend only on `job` and the log.
    fn follow_ups(&self, ctx: &JobContext, job: &Job) -> impl Future<Output = Result<Vec<FollowUp>, JobError>> + Send {
        let _ = (ctx, job);
        async { Ok(Vec::new()) }
    }
}

/// Takes jobs of `handler`'s kind until the task is dropped or NATS is gone for good.
pub async fn run_worker<H: JobHandler>(
    handler: Arc<H>,
    store: EventStore,
    settings: WorkerSettings,
) -> Result<(), BusError> {
    let consumer = JobConsumer::open(store.clone(), settings.queue(handler.kind())).await?;
    let slots = Arc::new(Semaphore::new(settings.parallel.max(1)));
    let settings = Arc::new(settings);
    let depth = metrics::gauge!(names::QUEUE_DEPTH, "kind" => handler.kind().as_str());
    let mut depth_measured = Instant::now() - Duration::from_secs(60);
    loop {
        if depth_measured.elapsed() >= Duration::from_secs(5) {
            depth_measured = Instant::now();
            if let Ok(pending) = consumer.pending().await {
                depth.set(pending as f64);
            }
        }
        let slot = slots.clone().acquire_owned().await.expect("the semaphore is never closed");
        match consumer.next(Duration::from_secs(5)).await {
            Ok(Some(delivery)) => {
                let (handler, store, settings) = (handler.clone(), store.clone(), settings.clone());
                tokio::spawn(async move {
                    handle(&*handler, &store, &settings, delivery).await;
                    drop(slot);
                });
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(kind = handler.kind().as_str(), error = %e, "could not fetch a job; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn handle<H: JobHandler>(handler: &H, store: &EventStore, settings: &WorkerSettings, delivery: JobDelivery) {
    let ticket = delivery.ticket.clone();
    // One span per attempt, continuing the trace the ticket carries (the scheduler's firing,
    // the API request, or the job this one follows up).
    let span = tracing::info_span!(
        "job",
        kind = handler.kind().as_str(),
        job = %ticket.job,
        tenant = %ticket.tenant,
        attempt = delivery.attempt
    );
    arca_telemetry::set_parent(&span, ticket.trace.as_ref());
    let meta = Metadata {
        correlation_id: uuid::Uuid::now_v7(),
        causation_id: None,
        trace: arca_telemetry::trace_of(&span).or_else(|| ticket.trace.as_ref().map(|t| t.child())),
    };
    attempt(handler, store, settings, delivery, ticket, meta).instrument(span).await;
}

async fn attempt<H: JobHandler>(
    handler: &H,
    store: &EventStore,
    settings: &WorkerSettings,
    delivery: JobDelivery,
    ticket: JobTicket,
    meta: Metadata,
) {
    let kind = handler.kind().as_str();
    let job = match store.load_state::<Job>(ticket.tenant, ticket.job.as_uuid()).await {
        Ok((job, _)) => job,
        Err(e) => return retry_later(delivery, &format!("load job {}: {e}", ticket.job)).await,
    };
    let (cancel, cancelled) = watch::channel(false);
    let ctx = JobContext {
        store: store.clone(),
        tenant: ticket.tenant,
        job_id: ticket.job,
        job: job.clone(),
        attempt: delivery.attempt,
        meta: meta.clone(),
        progress: Arc::default(),
        cancelled,
    };
    match job.status {
        JobStatus::Missing => {
            tracing::error!(job = %ticket.job, "dead-lettering a ticket for a job that was never requested");
            if let Err(e) = delivery.discard("the ticket names a job that was never requested").await {
                tracing::warn!(job = %ticket.job, error = %e, "could not dead-letter a ticket");
            }
            return;
        }
        JobStatus::Succeeded => {
            if let Err(e) = request_follow_ups(handler, &ctx, &job).await {
                return retry_later(delivery, &e.to_string()).await;
            }
            return finish(delivery).await;
        }
        JobStatus::Failed | JobStatus::Cancelled => return finish(delivery).await,
        JobStatus::Requested | JobStatus::Running => {}
    }
    let start = JobCommand::Start { worker: settings.name.clone(), attempt: delivery.attempt };
    match store.execute::<Job>(ticket.tenant, ticket.job, &start, &meta).await {
        Ok(_) => {}
        // A redelivery after a lost acknowledgement: the job is ours all the same.
        Err(ExecuteError::Domain(DomainError::IllegalTransition { .. })) if job.status == JobStatus::Running => {}
        Err(ExecuteError::Domain(e)) => {
            tracing::warn!(job = %ticket.job, error = %e, "the job refused to start; dropping its ticket");
            return finish(delivery).await;
        }
        Err(e) => return retry_later(delivery, &format!("start job {}: {e}", ticket.job)).await,
    }
    tracing::info!(job = %ticket.job, kind, attempt = delivery.attempt, "job started");
    metrics::counter!(names::JOBS, "kind" => kind, "state" => "started").increment(1);
    let running = metrics::gauge!(names::JOBS_RUNNING, "kind" => kind);
    running.increment(1.0);
    let keep_alive = delivery.keep_alive();
    let reporter = tokio::spawn(report(ctx.clone(), settings.progress_every, settings.checkpoint_every));
    let cancel_watch = tokio::spawn(watch_for_cancel(store.clone(), ticket.tenant, ticket.job, cancel));
    let started = Instant::now();
    let result = tokio::select! {
        result = handler.run(ctx.clone()) => result,
        () = async { ctx.cancelled().await; tokio::time::sleep(settings.cancel_grace).await } => {
            Err(JobError::Permanent("cancelled; the attempt did not stop by itself and was dropped".into()))
        }
    };
    reporter.abort();
    cancel_watch.abort();
    drop(keep_alive);
    if ctx.is_cancelled() {
        running.decrement(1.0);
        metrics::counter!(names::JOBS, "kind" => kind, "state" => "cancelled").increment(1);
        tracing::info!(job = %ticket.job, kind, "job cancelled");
        return finish(delivery).await;
    }
    if result.is_ok() {
        // The last word on progress, so a follower sees the job complete even when it ran
        // for less than one reporting interval.
        publish_reading(&ctx, started, true).await;
    }
    running.decrement(1.0);
    metrics::histogram!(names::JOB_DURATION, "kind" => kind).record(started.elapsed().as_secs_f64());
    match &result {
        Ok(outcome) => {
            metrics::counter!(names::JOBS, "kind" => kind, "state" => "succeeded").increment(1);
            metrics::counter!(names::BYTES_IN, "kind" => kind).increment(outcome.bytes_read);
            metrics::counter!(names::BYTES_OUT, "kind" => kind).increment(outcome.bytes_added);
        }
        Err(e) => {
            let temporary = matches!(e, JobError::Temporary(_));
            let state = if temporary { "retried" } else { "failed" };
            metrics::counter!(names::JOBS, "kind" => kind, "state" => state).increment(1);
            metrics::counter!(names::JOB_ERRORS, "kind" => kind, "temporary" => temporary.to_string()).increment(1);
        }
    }
    match result {
        Ok(outcome) => {
            let succeed = JobCommand::Succeed {
                snapshot: outcome.snapshot,
                bytes_read: outcome.bytes_read,
                bytes_added: outcome.bytes_added,
                files: outcome.files,
                duration_ms: started.elapsed().as_millis() as u64,
            };
            let job = match store.execute::<Job>(ticket.tenant, ticket.job, &succeed, &meta).await {
                Ok(committed) => committed.state,
                Err(ExecuteError::Domain(e)) => {
                    // Cancelled meanwhile, or the outcome broke a rule: nothing more to do.
                    tracing::warn!(job = %ticket.job, error = %e, "the job refused its success");
                    return finish(delivery).await;
                }
                Err(e) => {
                    return retry_later(delivery, &format!("record the success of job {}: {e}", ticket.job)).await;
                }
            };
            tracing::info!(job = %ticket.job, kind, "job succeeded");
            if let Err(e) = request_follow_ups(handler, &ctx, &job).await {
                return retry_later(delivery, &e.to_string()).await;
            }
            finish(delivery).await;
        }
        Err(JobError::Temporary(error)) => {
            tracing::warn!(job = %ticket.job, %error, "job attempt failed; it will be retried");
            retry_later(delivery, &error).await;
        }
        Err(JobError::Permanent(error)) => {
            tracing::warn!(job = %ticket.job, %error, "job failed");
            let fail = JobCommand::Fail { error: error.clone(), attempts: delivery.attempt, dead_lettered: false };
            match store.execute::<Job>(ticket.tenant, ticket.job, &fail, &meta).await {
                Ok(_) | Err(ExecuteError::Domain(_)) => finish(delivery).await,
                Err(e) => retry_later(delivery, &format!("record the failure of job {}: {e}", ticket.job)).await,
            }
        }
    }
}

/// Signals `cancel` when the job's events show it cancelled.
async fn watch_for_cancel(store: EventStore, tenant: TenantId, job: JobId, cancel: watch::Sender<bool>) {
    let aggregate = arca_events::AggregateRef::new(tenant, arca_events::AggregateType::Job, job);
    let mut events = match arca_bus::follow::follow_aggregate(store.bus(), aggregate, 0).await {
        Ok(events) => events,
        Err(e) => {
            tracing::warn!(%job, error = %e, "cannot follow the job's events; it cannot be cancelled while it runs");
            return;
        }
    };
    while let Some(event) = events.next().await {
        match event {
            Ok(envelope) if envelope.event_type == "JobCancelled" => {
                let _ = cancel.send(true);
                return;
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(%job, error = %e, "a job event could not be read"),
        }
    }
}

async fn finish(delivery: JobDelivery) {
    let job = delivery.ticket.job;
    if let Err(e) = delivery.complete().await {
        tracing::warn!(%job, error = %e, "could not acknowledge a job; it may be delivered again");
    }
}

async fn retry_later(delivery: JobDelivery, error: &str) {
    let job = delivery.ticket.job;
    match delivery.fail(error).await {
        Ok(Retry::Later(delay)) => tracing::info!(%job, ?delay, "job will be tried again"),
        Ok(Retry::DeadLettered) => tracing::warn!(%job, %error, "job dead-lettered after its last try"),
        Err(e) => tracing::warn!(%job, error = %e, "could not hand a failed job back to the queue"),
    }
}

/// Requests (idempotently) the jobs `job`'s success asks for and puts them on the queue.
async fn request_follow_ups<H: JobHandler>(handler: &H, ctx: &JobContext, job: &Job) -> Result<(), JobError> {
    for follow_up in handler.follow_ups(ctx, job).await? {
        let id = crate::ids::follow_up_job_id(ctx.job_id, follow_up.kind, follow_up.target);
        request_job(&ctx.store, ctx.tenant, id, &follow_up, Trigger::FollowUp { after: ctx.job_id }, &ctx.meta).await?;
    }
    Ok(())
}

/// Requests job `id` (`command` is a [`JobCommand::Request`]) and puts its ticket on the
/// queue, carrying `meta`'s trace: how the API and the CLI start work.
pub async fn start_job(
    store: &EventStore,
    tenant: TenantId,
    id: JobId,
    command: &JobCommand,
    meta: &Metadata,
) -> Result<(), ExecuteError> {
    let JobCommand::Request { kind, site, .. } = command else {
        panic!("start_job takes a job request, not `{command:?}`");
    };
    store.execute::<Job>(tenant, id, command, meta).await?;
    let ticket = JobTicket { tenant, job: id, kind: *kind, site: site.clone(), trace: meta.trace.clone() };
    jobs::enqueue(store.bus(), &ticket, &id.to_string()).await?;
    Ok(())
}

/// Requests job `id` and puts its ticket on the queue (message id = job id), so a retry
/// with the same id is harmless. A job that exists already is only re-enqueued.
pub async fn request_job(
    store: &EventStore,
    tenant: TenantId,
    id: JobId,
    job: &FollowUp,
    trigger: Trigger,
    meta: &Metadata,
) -> Result<(), JobError> {
    let command = JobCommand::Request {
        kind: job.kind,
        trigger,
        policy: job.policy,
        source: None,
        target: job.target,
        snapshot: job.snapshot,
        mode: None,
        site: job.site.clone(),
    };
    match store.execute::<Job>(tenant, id, &command, meta).await {
        Ok(_) | Err(ExecuteError::Domain(DomainError::IllegalTransition { .. })) => {}
        Err(ExecuteError::Domain(e)) => {
            tracing::warn!(job = %id, kind = job.kind.as_str(), error = %e, "a follow-up job was refused");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    }
    let ticket = JobTicket { tenant, job: id, kind: job.kind, site: job.site.clone(), trace: meta.trace.clone() };
    jobs::enqueue(store.bus(), &ticket, &id.to_string())
        .await
        .map_err(|e| JobError::Temporary(format!("enqueue job {id}: {e}")))?;
    Ok(())
}

/// Publishes the handler's current progress (rate since `started`, ETA from the total);
/// returns the reading, `None` when the handler reports none.
async fn publish_reading(ctx: &JobContext, started: Instant, finished: bool) -> Option<ProgressReading> {
    let reading = ctx.read_progress()?;
    let seconds = started.elapsed().as_secs_f64().max(0.001);
    let rate = reading.bytes_done as f64 / seconds;
    let eta = match finished {
        true => Some(0),
        false => reading
            .bytes_total
            .filter(|_| rate > 0.0)
            .map(|total| (total.saturating_sub(reading.bytes_done) as f64 / rate).ceil() as u64),
    };
    let progress = Progress {
        bytes_done: reading.bytes_done,
        bytes_total: reading.bytes_total,
        files_done: reading.files_done,
        bytes_per_second: rate,
        eta_seconds: eta,
    };
    if let Err(e) = jobs::publish_progress(ctx.store.bus(), ctx.tenant, ctx.job_id, &progress).await {
        tracing::debug!(job = %ctx.job_id, error = %e, "could not publish progress");
    }
    Some(reading)
}

/// Publishes live progress and checkpoints until aborted.
async fn report(ctx: JobContext, every: Duration, checkpoint_every: Duration) {
    let started = Instant::now();
    let mut last_checkpoint = Instant::now();
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(reading) = publish_reading(&ctx, started, false).await else { continue };
        if last_checkpoint.elapsed() >= checkpoint_every {
            last_checkpoint = Instant::now();
            let checkpoint = JobCommand::Checkpoint {
                bytes_done: reading.bytes_done,
                files_done: reading.files_done,
                packs_uploaded: 0,
            };
            if let Err(e) = ctx.store.execute::<Job>(ctx.tenant, ctx.job_id, &checkpoint, &ctx.meta).await {
                tracing::debug!(job = %ctx.job_id, error = %e, "could not checkpoint");
            }
        }
    }
}
