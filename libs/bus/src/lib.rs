//! NATS JetStream as Arca's event store, work queue and query transport.
//!
//! | stream | subjects | retention | what |
//! |---|---|---|---|
//! | `EVENTS` | `arca.evt.<tenant>.<aggregate>.<id>` | forever (limits, none set) | the event log: the truth |
//! | `JOBS` | `arca.job.<kind>[.<site>]` | work queue (gone once acked) | work for the services |
//! | `DEAD` | `arca.dead.<subject>` | 30 days | job messages no worker can read, for inspection |
//!
//! - [`EventStore`] appends with optimistic concurrency (`Nats-Expected-Last-Subject-Sequence`)
//!   and idempotency (`Nats-Msg-Id` = event id), loads an aggregate from its subject, and
//!   [`EventStore::execute`]s domain commands: load, decide, append, and on a lost race
//!   reload and decide again.
//! - [`jobs`] puts work on the queue and hands it to workers with progress acks, bounded
//!   redelivery with backoff, and a dead-letter `JobFailed` after the last try.
//! - [`query`] is request/reply with timeouts for read models.
//! - Trace context travels in the `traceparent` / `tracestate` message headers.
//!
//! Data never passes through NATS: events carry ids and small facts.

mod error;
pub mod follow;
pub mod jobs;
pub mod query;
pub mod secrets;
mod store;

use std::time::Duration;

use async_nats::jetstream::{self, stream};

pub use error::{BusError, ExecuteError};
pub use store::{Committed, EventStore, Loaded, StoredEvent, Version};

/// Name of the event-log stream.
pub const EVENTS_STREAM: &str = "EVENTS";
/// Name of the work-queue stream.
pub const JOBS_STREAM: &str = "JOBS";
/// Every job subject starts with this.
pub const JOB_SUBJECT_PREFIX: &str = "arca.job";
/// Name of the dead-letter stream: messages no worker can read, kept for inspection.
pub const DEAD_STREAM: &str = "DEAD";
/// A dead message is kept under `arca.dead.<its original subject>`.
pub const DEAD_SUBJECT_PREFIX: &str = "arca.dead";

/// How to reach NATS and how to lay out the streams.
#[derive(Clone, Debug)]
pub struct BusConfig {
    /// `nats://host:port` (several comma-separated for a cluster).
    pub url: String,
    /// Stream replicas: 1 on a single node, 3 in a cluster.
    pub replicas: usize,
    /// How long JetStream remembers a `Nats-Msg-Id` to drop a duplicate publish.
    pub duplicate_window: Duration,
    /// Shown in the server's connection list.
    pub client_name: String,
}

impl BusConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into(), replicas: 1, duplicate_window: Duration::from_secs(120), client_name: "arca".into() }
    }
}

/// A connection to NATS with the streams in place.
#[derive(Clone)]
pub struct Bus {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    config: BusConfig,
}

impl Bus {
    /// Connects and creates (or updates) the `EVENTS` and `JOBS` streams.
    pub async fn connect(config: BusConfig) -> Result<Bus, BusError> {
        let client = async_nats::ConnectOptions::new()
            .name(&config.client_name)
            .connect(&config.url)
            .await
            .map_err(|e| BusError::unavailable(format!("connect to {}", config.url), e))?;
        let jetstream = jetstream::new(client.clone());
        let bus = Bus { client, jetstream, config };
        bus.ensure_streams().await?;
        Ok(bus)
    }

    async fn ensure_streams(&self) -> Result<(), BusError> {
        let events = stream::Config {
            name: EVENTS_STREAM.into(),
            subjects: vec![format!("{}.>", arca_events::EVENT_SUBJECT_PREFIX)],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            num_replicas: self.config.replicas,
            duplicate_window: self.config.duplicate_window,
            allow_direct: true,
            allow_atomic_publish: true,
            ..Default::default()
        };
        let jobs = stream::Config {
            name: JOBS_STREAM.into(),
            subjects: vec![format!("{JOB_SUBJECT_PREFIX}.>")],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: self.config.replicas,
            duplicate_window: self.config.duplicate_window,
            allow_direct: true,
            ..Default::default()
        };
        let dead = stream::Config {
            name: DEAD_STREAM.into(),
            subjects: vec![format!("{DEAD_SUBJECT_PREFIX}.>")],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            num_replicas: self.config.replicas,
            max_age: Duration::from_secs(30 * 24 * 3600),
            ..Default::default()
        };
        for config in [events, jobs, dead] {
            let name = config.name.clone();
            self.jetstream
                .create_or_update_stream(config)
                .await
                .map_err(|e| BusError::unavailable(format!("create stream {name}"), e))?;
        }
        Ok(())
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }

    pub fn config(&self) -> &BusConfig {
        &self.config
    }

    /// Opens (or creates) key-value bucket `name`: one value per key, on file storage, with the
    /// configured replicas — the shape every Arca bucket uses (secrets, usage, claims, cursors).
    pub async fn key_value(&self, name: &str) -> Result<jetstream::kv::Store, BusError> {
        self.expiring_key_value(name, Duration::ZERO).await
    }

    /// [`Bus::key_value`] whose entries expire `max_age` after their last write (zero: never).
    pub async fn expiring_key_value(&self, name: &str, max_age: Duration) -> Result<jetstream::kv::Store, BusError> {
        let config = jetstream::kv::Config {
            bucket: name.into(),
            history: 1,
            max_age,
            num_replicas: self.config.replicas,
            storage: stream::StorageType::File,
            ..Default::default()
        };
        self.jetstream
            .create_or_update_key_value(config)
            .await
            .map_err(|e| BusError::unavailable(format!("open the key-value bucket {name}"), e))
    }

    /// The event store over this connection.
    pub async fn event_store(&self) -> Result<EventStore, BusError> {
        EventStore::open(self.clone()).await
    }
}

/// Header names for W3C trace context.
pub mod headers {
    use arca_events::TraceContext;
    use async_nats::HeaderMap;

    pub const TRACEPARENT: &str = "traceparent";
    pub const TRACESTATE: &str = "tracestate";

    /// Writes `trace` into `headers`.
    pub fn insert_trace(headers: &mut HeaderMap, trace: &TraceContext) {
        headers.insert(TRACEPARENT, trace.traceparent.as_str());
        if let Some(state) = &trace.tracestate {
            headers.insert(TRACESTATE, state.as_str());
        }
    }

    /// Reads the trace context from `headers`, if a valid one is there.
    pub fn trace_of(headers: Option<&HeaderMap>) -> Option<TraceContext> {
        let headers = headers?;
        let parent = headers.get(TRACEPARENT)?.as_str();
        TraceContext::parse(parent, headers.get(TRACESTATE).map(|v| v.as_str()))
    }
}
