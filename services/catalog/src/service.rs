//! The running catalog: a durable JetStream consumer feeding the [`Projector`], the
//! query endpoints over request/reply, and the rebuild that replays the whole log.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arca_bus::{Bus, BusConfig, BusError, EVENTS_STREAM};
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::stream::Stream;
use futures::{FutureExt, StreamExt};
use sea_orm::DatabaseConnection;
use tokio::task::JoinHandle;

use crate::error::CatalogError;
use crate::projector::{BatchOutcome, Projector, RawEvent};

/// The most events one transaction applies.
pub const MAX_BATCH: usize = 1000;

/// How to run a catalog.
#[derive(Clone, Debug)]
pub struct CatalogConfig {
    pub nats_url: String,
    /// `sqlite://path?mode=rwc`, `sqlite::memory:` or `postgres://…`
    pub database_url: String,
    /// The durable consumer's name; one per catalog database (see [`CatalogConfig::new`]).
    pub consumer: String,
    pub replicas: usize,
    /// The deployment's server key: with it the catalog opens repositories to fill the file
    /// index (see [`crate::indexer`]); without it the file index stays empty.
    pub server_key: Option<arca_worker::keys::ServerKey>,
}

impl CatalogConfig {
    /// The consumer is named after the database: catalogs with their own databases never
    /// share (and split) one consumer, and a restarted catalog finds its own again.
    pub fn new(nats_url: impl Into<String>, database_url: impl Into<String>) -> Self {
        let database_url = database_url.into();
        let consumer = format!("catalog-{}", &blake3::hash(database_url.as_bytes()).to_hex()[..16]);
        Self { nats_url: nats_url.into(), database_url, consumer, replicas: 1, server_key: None }
    }
}

/// Counters a running catalog exposes (and the status query returns).
#[derive(Debug, Default)]
pub struct Stats {
    pub last_applied: AtomicU64,
    pub applied: AtomicU64,
    pub malformed: AtomicU64,
    pub duplicates: AtomicU64,
}

/// A built catalog, ready to run.
pub struct Catalog {
    pub bus: Bus,
    pub db: DatabaseConnection,
    pub stats: Arc<Stats>,
    config: CatalogConfig,
}

impl Catalog {
    /// Connects to NATS and the database (running migrations).
    pub async fn build(config: CatalogConfig) -> Result<Catalog, CatalogError> {
        let db = crate::db::connect(&config.database_url).await?;
        let bus = Bus::connect(BusConfig {
            replicas: config.replicas,
            client_name: "arca-catalog".into(),
            ..BusConfig::new(&config.nats_url)
        })
        .await?;
        Ok(Catalog { bus, db, stats: Arc::new(Stats::default()), config })
    }

    /// Projects and answers queries until `shutdown` completes.
    pub async fn run_until_stopped(self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), CatalogError> {
        let queries = crate::api::serve(&self.bus, self.db.clone(), self.stats.clone()).await?;
        let projection =
            tokio::spawn(project(self.bus.clone(), self.db.clone(), self.config.consumer.clone(), self.stats.clone()));
        let indexer = match &self.config.server_key {
            Some(key) => {
                let store = self.bus.event_store().await?;
                let secrets = arca_bus::secrets::SecretStore::open(&self.bus, &key.secret_store_key()).await?;
                let targets = arca_worker::Targets::new(store, secrets, key.clone());
                let name = format!("{}-files", self.config.consumer);
                tokio::spawn(crate::indexer::run(self.bus.clone(), self.db.clone(), targets, name))
            }
            None => tokio::spawn(std::future::pending()),
        };
        let lag = tokio::spawn(measure_lag(self.bus.clone(), self.stats.clone()));
        let result = tokio::select! {
            () = shutdown => Ok(()),
            finished = projection => match finished {
                Ok(result) => result,
                Err(e) => Err(CatalogError::Internal(format!("projection task: {e}"))),
            },
            finished = indexer => match finished {
                Ok(result) => result,
                Err(e) => Err(CatalogError::Internal(format!("file index task: {e}"))),
            },
        };
        queries.abort();
        lag.abort();
        result
    }
}

/// Keeps the `arca_catalog_lag_events` gauge current: events in the log not yet applied.
async fn measure_lag(bus: Bus, stats: Arc<Stats>) {
    let gauge = metrics::gauge!(arca_telemetry::names::CATALOG_LAG);
    let Ok(store) = bus.event_store().await else { return };
    loop {
        if let Ok(last) = store.last_sequence().await {
            gauge.set(last.saturating_sub(stats.last_applied.load(Ordering::Relaxed)) as f64);
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Follows the event log from the database's last applied sequence, forever.
async fn project(bus: Bus, db: DatabaseConnection, name: String, stats: Arc<Stats>) -> Result<(), CatalogError> {
    let projector = Projector::new(db);
    let mut last = projector.last_sequence().await?;
    stats.last_applied.store(last, Ordering::Relaxed);
    loop {
        // (Re)positioned on every (re)subscription: messages delivered to a broken
        // subscription would otherwise come back after newer ones.
        let consumer = arca_bus::follow::durable_consumer(&bus, &name, None, last).await?;
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(MAX_BATCH)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .map_err(|e| BusError::unavailable("follow the event log", e))?;
        while let Some(first) = messages.next().await {
            let first = match first {
                Ok(message) => message,
                Err(e) => {
                    tracing::warn!(error = %e, "event log delivery error; resubscribing");
                    break;
                }
            };
            // Take what is already here, up to a batch: big transactions under load, no waiting when idle.
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match messages.next().now_or_never() {
                    Some(Some(Ok(message))) => batch.push(message),
                    _ => break,
                }
            }
            // Only a gap-free run is applied: the log has no holes, so a missing sequence is a
            // message lost in transit, and acking past it would skip it for good.
            let mut raw = Vec::with_capacity(batch.len());
            let mut expected = last + 1;
            let mut gap = false;
            for message in &batch {
                let Ok(info) = message.info() else {
                    gap = true;
                    break;
                };
                let sequence = info.stream_sequence;
                if sequence > expected && !deleted_between(&bus, expected, sequence).await? {
                    tracing::warn!(expected, got = sequence, "a gap in the event log delivery; resubscribing");
                    gap = true;
                    break;
                }
                expected = expected.max(sequence + 1);
                raw.push(RawEvent {
                    stream_sequence: sequence,
                    subject: message.subject.to_string(),
                    payload: message.payload.clone(),
                });
            }
            if !raw.is_empty() {
                let outcome = apply(&projector, &raw).await?;
                last = last.max(outcome.last_sequence);
                stats.last_applied.store(last, Ordering::Relaxed);
                stats.applied.fetch_add(outcome.applied, Ordering::Relaxed);
                stats.malformed.fetch_add(outcome.malformed, Ordering::Relaxed);
                stats.duplicates.fetch_add(outcome.skipped_duplicates, Ordering::Relaxed);
                // Ack-all: acking the last applied message acks the run. A crash before this
                // only causes redelivery, which the stored sequence turns into skips.
                if let Err(e) = batch[raw.len() - 1].ack().await {
                    tracing::warn!(error = %e, "acking a projected batch failed; it will be redelivered and skipped");
                }
            }
            if gap {
                break;
            }
        }
    }
}

/// Applies `raw`, waiting out a database that is away. An event the database refuses for
/// good (not retryable) is found by halving the batch, recorded and skipped, so one bad
/// event never stops the projection.
async fn apply(projector: &Projector, raw: &[RawEvent]) -> Result<BatchOutcome, CatalogError> {
    let mut pending: Vec<&[RawEvent]> = vec![raw];
    let mut total = BatchOutcome::default();
    while let Some(part) = pending.pop() {
        match projector.apply_batch(part).await {
            Ok(outcome) => {
                total.applied += outcome.applied;
                total.malformed += outcome.malformed;
                total.skipped_duplicates += outcome.skipped_duplicates;
                total.last_sequence = total.last_sequence.max(outcome.last_sequence);
            }
            Err(e) if e.is_retryable() => {
                tracing::error!(error = %e, "projecting a batch failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                pending.push(part);
            }
            Err(e) if part.len() == 1 => {
                projector.skip_unusable(&part[0], &e.to_string()).await?;
                total.malformed += 1;
                total.last_sequence = total.last_sequence.max(part[0].stream_sequence);
            }
            Err(_) => {
                let (head, tail) = part.split_at(part.len() / 2);
                // A stack: the head is applied first.
                pending.push(tail);
                pending.push(head);
            }
        }
    }
    Ok(total)
}

/// True when every message from `from` up to (not including) `to` is gone from the stream
/// (deleted or purged), so skipping them loses nothing.
async fn deleted_between(bus: &Bus, from: u64, to: u64) -> Result<bool, CatalogError> {
    let stream: Stream = bus
        .jetstream()
        .get_stream(EVENTS_STREAM)
        .await
        .map_err(|e| BusError::unavailable("open the EVENTS stream", e))?;
    for sequence in from..to {
        match stream.get_raw_message(sequence).await {
            Err(e) if matches!(e.kind(), async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound) => {}
            Ok(_) => return Ok(false),
            Err(e) => return Err(BusError::unavailable(format!("look for event {sequence}"), e).into()),
        }
    }
    Ok(true)
}

/// Replays the whole event log into an empty database. Returns how many events were read.
pub async fn rebuild(bus: &Bus, db: DatabaseConnection) -> Result<u64, CatalogError> {
    let projector = Projector::new(db);
    if projector.last_sequence().await? != 0 {
        return Err(CatalogError::NotEmpty);
    }
    let mut stream: Stream = bus
        .jetstream()
        .get_stream(EVENTS_STREAM)
        .await
        .map_err(|e| BusError::unavailable("open the EVENTS stream", e))?;
    let end = stream.info().await.map_err(|e| BusError::unavailable("read the EVENTS stream", e))?.state.last_sequence;
    if end == 0 {
        return Ok(0);
    }
    let consumer = stream
        .create_consumer(pull::OrderedConfig { deliver_policy: DeliverPolicy::All, ..Default::default() })
        .await
        .map_err(|e| BusError::unavailable("replay the event log", e))?;
    let mut messages = consumer.messages().await.map_err(|e| BusError::unavailable("replay the event log", e))?;
    let mut read = 0u64;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut done = false;
    while !done {
        let Some(message) = messages.next().await else {
            return Err(BusError::Unavailable {
                operation: "replay the event log".into(),
                reason: "the replay ended early".into(),
            }
            .into());
        };
        let message = message.map_err(|e| BusError::unavailable("replay the event log", e))?;
        let info = message.info().map_err(|e| BusError::unavailable("replay the event log", e))?;
        let sequence = info.stream_sequence;
        // The end of the log as it was when the rebuild started (`pending` covers a last message that was deleted).
        done = sequence >= end || info.pending == 0;
        batch.push(RawEvent {
            stream_sequence: sequence,
            subject: message.subject.to_string(),
            payload: message.payload.clone(),
        });
        read += 1;
        if batch.len() >= MAX_BATCH || done {
            apply(&projector, &batch).await?;
            batch.clear();
        }
    }
    Ok(read)
}

/// Spawns a catalog in this process (for `arca server` and tests).
pub async fn spawn(config: CatalogConfig) -> Result<(Arc<Stats>, JoinHandle<Result<(), CatalogError>>), CatalogError> {
    let catalog = Catalog::build(config).await?;
    let stats = catalog.stats.clone();
    Ok((stats, tokio::spawn(catalog.run_until_stopped(std::future::pending()))))
}
