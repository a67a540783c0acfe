//! The work queue: `JOBS`, subjects `arca.job.<kind>[.<site>]`.
//!
//! A job is requested as an event (`JobRequested`) and put on the queue as a small
//! [`JobTicket`]. Workers pull tickets from a durable consumer shared by every worker of
//! that kind (and site), so each ticket goes to one of them. Long work sends progress acks;
//! a worker that dies stops acking and the ticket is redelivered after the ack wait, with
//! growing backoff, at most `max_deliver` times. After the last try a `JobFailed` with
//! `dead_lettered` is appended to the job — by the worker that gave up, or, when the last
//! worker died, by [`watch_dead_letters`] from the server's max-deliveries advisory.

use std::sync::Arc;
use std::time::Duration;

use arca_domain::job::{Job, JobCommand};
use arca_events::{JobId, JobKind, Metadata, TenantId, TraceContext};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::message::{AckKind, PublishMessage};
use async_nats::jetstream::{self, stream::Stream};
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::{Bus, BusError, DEAD_SUBJECT_PREFIX, EventStore, ExecuteError, JOB_SUBJECT_PREFIX, JOBS_STREAM, headers};

/// What a worker needs to find a job; the job's details are in its events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobTicket {
    pub tenant: TenantId,
    pub job: JobId,
    pub kind: JobKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceContext>,
}

/// `arca.job.<kind>` or `arca.job.<kind>.<site>`.
pub fn job_subject(kind: JobKind, site: Option<&str>) -> String {
    match site {
        Some(site) => format!("{JOB_SUBJECT_PREFIX}.{}.{site}", kind.as_str()),
        None => format!("{JOB_SUBJECT_PREFIX}.{}", kind.as_str()),
    }
}

/// Puts `ticket` on the queue. `message_id` makes it idempotent (the scheduler uses
/// `<policy>:<scheduled time>`); returns false when JetStream already had that id.
pub async fn enqueue(bus: &Bus, ticket: &JobTicket, message_id: &str) -> Result<bool, BusError> {
    let subject = job_subject(ticket.kind, ticket.site.as_deref());
    let mut trace_headers = async_nats::HeaderMap::new();
    if let Some(trace) = &ticket.trace {
        headers::insert_trace(&mut trace_headers, trace);
    }
    let message = PublishMessage::build()
        .headers(trace_headers)
        .payload(Bytes::from(serde_json::to_vec(ticket).expect("a ticket serialises")))
        .message_id(message_id);
    let ack = bus
        .jetstream()
        .send_publish(subject.clone(), message)
        .await
        .map_err(|e| BusError::unavailable(format!("enqueue on `{subject}`"), e))?
        .await
        .map_err(|e| BusError::unavailable(format!("enqueue on `{subject}`"), e))?;
    Ok(!ack.duplicate)
}

/// How a pool of workers takes one kind of job.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub kind: JobKind,
    /// Take only this site's jobs (`arca.job.<kind>.<site>`); `None` takes the unlabelled ones.
    pub site: Option<String>,
    /// Deliveries before the job is dead-lettered.
    pub max_deliver: u32,
    /// Pause before each redelivery (the last entry repeats).
    pub backoff: Vec<Duration>,
    /// A delivery not acked (or progress-acked) within this is redelivered.
    pub ack_wait: Duration,
}

impl WorkerConfig {
    pub fn new(kind: JobKind) -> Self {
        Self {
            kind,
            site: None,
            max_deliver: 5,
            backoff: vec![Duration::from_secs(5), Duration::from_secs(30), Duration::from_secs(120)],
            ack_wait: Duration::from_secs(60),
        }
    }

    /// The durable consumer every worker of this kind and site shares.
    pub fn consumer_name(&self) -> String {
        match &self.site {
            Some(site) => format!("jobs-{}-{site}", self.kind.as_str()),
            None => format!("jobs-{}", self.kind.as_str()),
        }
    }

    fn delay_before(&self, attempt: u32) -> Duration {
        let index = (attempt as usize).saturating_sub(1).min(self.backoff.len().saturating_sub(1));
        self.backoff.get(index).copied().unwrap_or(self.ack_wait)
    }

    /// The server's deadline for delivery `attempt` (the consumer's backoff list): a delivery
    /// left unacknowledged that long is delivered again. The first is never below the ack wait,
    /// so a worker has time to send its first progress ack.
    fn server_backoff(&self, attempt: u32) -> Duration {
        match attempt {
            0 | 1 => self.delay_before(1).max(self.ack_wait),
            n => self.delay_before(n),
        }
    }
}

/// A worker's handle on the queue for one kind (and site) of job.
pub struct JobConsumer {
    consumer: PullConsumer,
    config: Arc<WorkerConfig>,
    store: EventStore,
}

impl JobConsumer {
    /// Opens (or creates) the shared durable consumer.
    pub async fn open(store: EventStore, config: WorkerConfig) -> Result<JobConsumer, BusError> {
        let stream: Stream = store
            .bus()
            .jetstream()
            .get_stream(JOBS_STREAM)
            .await
            .map_err(|e| BusError::unavailable("open the JOBS stream", e))?;
        let name = config.consumer_name();
        // The server's own backoff covers deliveries that were never acked (a dead worker).
        let backoff: Vec<Duration> = (1..config.max_deliver).map(|attempt| config.server_backoff(attempt)).collect();
        let consumer_config = pull::Config {
            durable_name: Some(name.clone()),
            filter_subject: job_subject(config.kind, config.site.as_deref()),
            ack_policy: AckPolicy::Explicit,
            deliver_policy: DeliverPolicy::All,
            ack_wait: config.ack_wait,
            max_deliver: config.max_deliver as i64,
            backoff,
            ..Default::default()
        };
        let consumer = stream
            .get_or_create_consumer(&name, consumer_config)
            .await
            .map_err(|e| BusError::unavailable(format!("open consumer {name}"), e))?;
        Ok(JobConsumer { consumer, config: Arc::new(config), store })
    }

    /// Tickets waiting for a worker plus those delivered and not yet acknowledged.
    pub async fn pending(&self) -> Result<u64, BusError> {
        let mut consumer = self.consumer.clone();
        let info = consumer.info().await.map_err(|e| BusError::unavailable("read the queue's consumer", e))?;
        Ok(info.num_pending + info.num_ack_pending as u64)
    }

    /// Waits up to `wait` for the next job.
    pub async fn next(&self, wait: Duration) -> Result<Option<JobDelivery>, BusError> {
        let mut batch = self
            .consumer
            .fetch()
            .max_messages(1)
            .expires(wait)
            .messages()
            .await
            .map_err(|e| BusError::unavailable("fetch a job", e))?;
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| BusError::unavailable("fetch a job", e))?;
            let info = message.info().map_err(|e| BusError::unavailable("read job delivery info", e))?;
            let attempt = info.delivered.max(1) as u32;
            match serde_json::from_slice::<JobTicket>(&message.payload) {
                Ok(ticket) => {
                    return Ok(Some(JobDelivery {
                        ticket,
                        attempt,
                        message: Arc::new(message),
                        config: self.config.clone(),
                        store: self.store.clone(),
                    }));
                }
                Err(e) => {
                    // Not a ticket: it can never succeed. Keep it in the dead-letter stream
                    // with the reason, and take it off the queue so nothing else waits.
                    tracing::error!(subject = %message.subject, error = %e, "dead-lettering a malformed job message");
                    discard(self.store.bus(), &message, &format!("not a job ticket: {e}")).await?;
                }
            }
        }
        Ok(None)
    }
}

/// One delivery of one job to this worker.
pub struct JobDelivery {
    pub ticket: JobTicket,
    /// 1 on the first delivery, growing on redelivery.
    pub attempt: u32,
    message: Arc<jetstream::Message>,
    config: Arc<WorkerConfig>,
    store: EventStore,
}

/// What became of a failed delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// It will be delivered again after the delay.
    Later(Duration),
    /// That was the last try: the job failed with `dead_lettered`.
    DeadLettered,
}

impl JobDelivery {
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.config.max_deliver
    }

    /// Tells the server the work goes on, so it does not redeliver.
    pub async fn in_progress(&self) -> Result<(), BusError> {
        self.message.ack_with(AckKind::Progress).await.map_err(|e| BusError::unavailable("progress ack", e))
    }

    /// Sends progress acks every third of the ack wait until the returned handle is dropped.
    pub fn keep_alive(&self) -> KeepAlive {
        let message = self.message.clone();
        // The server's deadline is the ack wait, or the backoff entry for this delivery.
        let deadline =
            self.config.backoff.iter().copied().chain([self.config.ack_wait]).min().unwrap_or(self.config.ack_wait);
        let every = (deadline / 3).max(std::time::Duration::from_millis(100));
        KeepAlive(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = message.ack_with(AckKind::Progress).await {
                    tracing::warn!(error = %e, "progress ack failed");
                }
            }
        }))
    }

    /// The ticket can never be worked (it names a job that was never requested): it goes to
    /// the `DEAD` stream with `reason` and leaves the queue.
    pub async fn discard(self, reason: &str) -> Result<(), BusError> {
        discard(self.store.bus(), &self.message, reason).await
    }

    /// The job is done: it leaves the queue.
    pub async fn complete(self) -> Result<(), BusError> {
        self.message.double_ack().await.map_err(|e| BusError::unavailable("ack a job", e))
    }

    /// The attempt failed with a temporary error: try again later, or after the last try,
    /// dead-letter it (a `JobFailed` with `dead_lettered` on the job).
    ///
    /// "Later" is the consumer's backoff for this delivery: the message is left unacknowledged
    /// and the server redelivers it when that runs out. (A NAK with a delay is not used: the
    /// server honoured it only on the first redelivery here and redelivered at once after.)
    pub async fn fail(self, error: &str) -> Result<Retry, ExecuteError> {
        if !self.is_last_attempt() {
            return Ok(Retry::Later(self.config.server_backoff(self.attempt)));
        }
        dead_letter(&self.store, &self.ticket, self.attempt, error).await?;
        self.message.ack_with(AckKind::Term).await.map_err(|e| BusError::unavailable("terminate a job", e))?;
        Ok(Retry::DeadLettered)
    }
}

/// Moves `message` to the `DEAD` stream (`arca.dead.<its subject>`, the reason in the
/// `Arca-Dead-Reason` header) and takes it off the queue.
async fn discard(bus: &Bus, message: &jetstream::Message, reason: &str) -> Result<(), BusError> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Arca-Dead-Reason", reason);
    let dead = PublishMessage::build().headers(headers).payload(message.payload.clone());
    let subject = format!("{DEAD_SUBJECT_PREFIX}.{}", message.subject);
    match bus.jetstream().send_publish(subject, dead).await {
        Ok(ack) => {
            if let Err(e) = ack.await {
                tracing::warn!(error = %e, "the dead-letter stream did not confirm a message");
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not dead-letter a job message"),
    }
    message.ack_with(AckKind::Term).await.map_err(|e| BusError::unavailable("drop a job message", e))
}

/// Stops the progress acks when dropped.
pub struct KeepAlive(JoinHandle<()>);

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Appends the dead-letter `JobFailed`; a job already finished is left as it is.
pub async fn dead_letter(
    store: &EventStore,
    ticket: &JobTicket,
    attempts: u32,
    error: &str,
) -> Result<(), ExecuteError> {
    let command = JobCommand::Fail { error: error.to_owned(), attempts, dead_lettered: true };
    let meta = Metadata { trace: ticket.trace.clone(), ..Metadata::new_root() };
    match store.execute::<Job>(ticket.tenant, ticket.job, &command, &meta).await {
        Ok(_) => Ok(()),
        Err(ExecuteError::Domain(e @ arca_domain::DomainError::IllegalTransition { .. })) => {
            tracing::info!(job = %ticket.job, error = %e, "not dead-lettering a job that has already ended");
            Ok(())
        }
        Err(ExecuteError::Domain(e)) => {
            tracing::warn!(job = %ticket.job, error = %e, "the job refused its dead letter");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// The max-deliveries advisory the server sends when a consumer gives up on a message.
#[derive(Deserialize)]
struct MaxDeliveriesAdvisory {
    stream_seq: u64,
    deliveries: u32,
}

/// Dead-letters jobs whose last delivery was never acked (the worker died), and removes
/// them from the queue. Every instance may run one; a queue group makes one act.
pub async fn watch_dead_letters(store: EventStore) -> Result<JoinHandle<()>, BusError> {
    let bus = store.bus().clone();
    let subject = format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{JOBS_STREAM}.*");
    let mut advisories = bus
        .client()
        .queue_subscribe(subject, "arca-dead-letters".into())
        .await
        .map_err(|e| BusError::unavailable("subscribe to max-deliveries advisories", e))?;
    let stream =
        bus.jetstream().get_stream(JOBS_STREAM).await.map_err(|e| BusError::unavailable("open the JOBS stream", e))?;
    Ok(tokio::spawn(async move {
        while let Some(message) = advisories.next().await {
            let Ok(advisory) = serde_json::from_slice::<MaxDeliveriesAdvisory>(&message.payload) else {
                tracing::warn!("ignoring a malformed max-deliveries advisory");
                continue;
            };
            let ticket = match stream.get_raw_message(advisory.stream_seq).await {
                Ok(raw) => serde_json::from_slice::<JobTicket>(&raw.payload).ok(),
                Err(e) => {
                    tracing::warn!(seq = advisory.stream_seq, error = %e, "dead job ticket is gone");
                    continue;
                }
            };
            if let Some(ticket) = ticket {
                let error = format!("no worker finished the job in {} deliveries", advisory.deliveries);
                let mut attempt = 0;
                while let Err(e) = dead_letter(&store, &ticket, advisory.deliveries, &error).await {
                    attempt += 1;
                    if attempt >= 10 {
                        // The ticket stays on the queue; the job stays as it was.
                        tracing::error!(job = %ticket.job, error = %e, "could not dead-letter a job; giving up");
                        break;
                    }
                    tracing::warn!(job = %ticket.job, error = %e, attempt, "could not dead-letter a job; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(200 << attempt.min(6))).await;
                }
                if attempt >= 10 {
                    continue;
                }
            }
            if let Err(e) = stream.delete_message(advisory.stream_seq).await {
                tracing::warn!(seq = advisory.stream_seq, error = %e, "could not remove a dead job ticket");
            }
        }
    }))
}

/// Live progress of a job, published on core NATS (not stored).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub bytes_done: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<u64>,
    pub files_done: u64,
    pub bytes_per_second: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<u64>,
}

/// `arca.progress.<tenant>.<job>`
pub fn progress_subject(tenant: TenantId, job: JobId) -> String {
    format!("arca.progress.{tenant}.{job}")
}

/// Publishes live progress; lost messages only make a progress bar skip.
pub async fn publish_progress(bus: &Bus, tenant: TenantId, job: JobId, progress: &Progress) -> Result<(), BusError> {
    let payload = Bytes::from(serde_json::to_vec(progress).expect("progress serialises"));
    bus.client()
        .publish(progress_subject(tenant, job), payload)
        .await
        .map_err(|e| BusError::unavailable("publish progress", e))
}
