//! The event log: load an aggregate, append to it, execute commands against it.

use std::time::Duration;

use arca_domain::{Aggregate, Context, TenantFacts};
use arca_events::{AggregateRef, Envelope, Event, Metadata, TenantId};
use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{DirectGetErrorKind, Stream};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{Bus, BusError, EVENTS_STREAM, ExecuteError, headers};

/// How many times [`EventStore::execute`] reloads and decides again after losing a race.
const MAX_CONFLICT_RETRIES: usize = 20;
/// The NATS error code for a failed `Nats-Expected-Last-Subject-Sequence` check.
const WRONG_LAST_SEQUENCE: u64 = 10071;

/// Where an aggregate's history ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Version {
    /// Stream sequence of the aggregate's last event; 0 when it has none.
    pub stream_sequence: u64,
    /// How many events the aggregate has.
    pub sequence: u64,
}

/// An event with its position in the stream.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredEvent {
    pub stream_sequence: u64,
    pub envelope: Envelope,
}

/// An aggregate's history as read from its subject.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    pub events: Vec<StoredEvent>,
    pub version: Version,
}

/// The outcome of a command that was carried out.
#[derive(Clone, Debug)]
pub struct Committed<A> {
    pub state: A,
    pub version: Version,
    /// The events this command appended (empty when it changed nothing).
    pub events: Vec<StoredEvent>,
    /// How many races were lost before this attempt won.
    pub conflicts: usize,
}

/// The `EVENTS` stream as an event store.
#[derive(Clone)]
pub struct EventStore {
    bus: Bus,
    stream: Stream,
}

impl EventStore {
    pub(crate) async fn open(bus: Bus) -> Result<EventStore, BusError> {
        let stream = bus
            .jetstream()
            .get_stream(EVENTS_STREAM)
            .await
            .map_err(|e| BusError::unavailable("open the EVENTS stream", e))?;
        Ok(EventStore { bus, stream })
    }

    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Reads every event of `aggregate`, oldest first.
    pub async fn load(&self, aggregate: AggregateRef) -> Result<Loaded, BusError> {
        let subject = aggregate.subject();
        let mut loaded = Loaded::default();
        let mut from = None;
        loop {
            let message = match self.stream.direct_get_next_for_subject(subject.as_str(), from).await {
                Ok(message) => message,
                Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => break,
                Err(e) => return Err(BusError::unavailable(format!("load `{subject}`"), e)),
            };
            let envelope = Envelope::from_json(&message.payload).map_err(|e| BusError::Malformed {
                what: format!("event at stream sequence {} on `{subject}`", message.sequence),
                reason: e.to_string(),
            })?;
            from = Some(message.sequence + 1);
            loaded.version = Version { stream_sequence: message.sequence, sequence: envelope.sequence };
            loaded.events.push(StoredEvent { stream_sequence: message.sequence, envelope });
        }
        Ok(loaded)
    }

    /// The stream sequence of the newest event of `aggregate`; `None` when it has none. One
    /// direct get, whatever the length of its history: what a read model must have applied to
    /// reflect every change of it stored so far.
    pub async fn last_stream_sequence(&self, aggregate: AggregateRef) -> Result<Option<u64>, BusError> {
        let subject = aggregate.subject();
        match self.stream.direct_get_last_for_subject(subject.as_str()).await {
            Ok(message) => Ok(Some(message.sequence)),
            Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => Ok(None),
            Err(e) => Err(BusError::unavailable(format!("read the last event of `{subject}`"), e)),
        }
    }

    /// The event on `subject` right after `version`, if any.
    async fn next_after(&self, subject: &str, version: Version) -> Result<Option<StoredEvent>, BusError> {
        match self.stream.direct_get_next_for_subject(subject, Some(version.stream_sequence + 1)).await {
            Ok(message) => {
                let envelope = Envelope::from_json(&message.payload).map_err(|e| BusError::Malformed {
                    what: format!("event at stream sequence {} on `{subject}`", message.sequence),
                    reason: e.to_string(),
                })?;
                Ok(Some(StoredEvent { stream_sequence: message.sequence, envelope }))
            }
            Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => Ok(None),
            Err(e) => Err(BusError::unavailable(format!("read `{subject}`"), e)),
        }
    }

    /// Loads and folds an aggregate's state.
    pub async fn load_state<A: Aggregate>(&self, tenant: TenantId, id: Uuid) -> Result<(A, Version), ExecuteError> {
        let loaded = self.load(AggregateRef::new(tenant, A::TYPE, id)).await?;
        let mut state = A::default();
        for stored in &loaded.events {
            let event = stored.envelope.event().map_err(|e| {
                ExecuteError::Corrupt(format!(
                    "{} at stream sequence {}: {e}",
                    stored.envelope.event_type, stored.stream_sequence
                ))
            })?;
            state.apply(&event);
        }
        Ok((state, loaded.version))
    }

    /// Appends `events` to `aggregate` if its history still ends at `expected`.
    ///
    /// One event is one publish with `Nats-Msg-Id` (its event id) and the expected
    /// subject sequence; several are one atomic batch, so a command's events are stored
    /// together or not at all. A lost race is [`BusError::Conflict`].
    pub async fn append(
        &self,
        aggregate: AggregateRef,
        expected: Version,
        events: &[Event],
        meta: &Metadata,
        time: DateTime<Utc>,
    ) -> Result<Vec<StoredEvent>, BusError> {
        let envelopes: Vec<Envelope> = events
            .iter()
            .enumerate()
            .map(|(i, event)| Envelope::new(aggregate, expected.sequence + i as u64 + 1, event, time, meta))
            .collect();
        self.append_envelopes(aggregate, expected, envelopes).await
    }

    /// Appends prepared envelopes (their `sequence` must continue from `expected`).
    pub async fn append_envelopes(
        &self,
        aggregate: AggregateRef,
        expected: Version,
        envelopes: Vec<Envelope>,
    ) -> Result<Vec<StoredEvent>, BusError> {
        let subject = aggregate.subject();
        match envelopes.len() {
            0 => Ok(Vec::new()),
            1 => {
                let envelope = envelopes.into_iter().next().expect("one envelope");
                let mut headers = HeaderMap::new();
                if let Some(trace) = &envelope.trace {
                    headers::insert_trace(&mut headers, trace);
                }
                // `headers` first: it replaces the map the header setters below add to.
                let message = PublishMessage::build()
                    .headers(headers)
                    .payload(Bytes::from(envelope.to_json()))
                    .message_id(envelope.id.to_string())
                    .expected_last_subject_sequence(expected.stream_sequence);
                let published = async {
                    self.bus
                        .jetstream()
                        .send_publish(subject.clone(), message)
                        .await
                        .map_err(|e| publish_error(&subject, expected, e.kind(), &e))?
                        .await
                        .map_err(|e| publish_error(&subject, expected, e.kind(), &e))
                };
                match published.await {
                    Ok(ack) => Ok(vec![StoredEvent { stream_sequence: ack.sequence, envelope }]),
                    // The expectation is checked before the message id: a retry of a publish
                    // whose ack was lost looks like a conflict. It is not one if the event
                    // right after the expected position is this very event.
                    Err(conflict @ BusError::Conflict { .. }) => match self.next_after(&subject, expected).await? {
                        Some(stored) if stored.envelope.id == envelope.id => Ok(vec![stored]),
                        _ => Err(conflict),
                    },
                    Err(e) => Err(e),
                }
            }
            _ => {
                let first_id = envelopes[0].id;
                match self.append_batch(&subject, expected, envelopes.clone()).await {
                    // As for one event: a retried batch whose commit ack was lost. Batches
                    // are atomic, so finding the first event means all of them are stored.
                    Err(conflict @ BusError::Conflict { .. }) => match self.next_after(&subject, expected).await? {
                        Some(stored) if stored.envelope.id == first_id => Ok(envelopes
                            .into_iter()
                            .enumerate()
                            .map(|(i, envelope)| StoredEvent {
                                stream_sequence: stored.stream_sequence + i as u64,
                                envelope,
                            })
                            .collect()),
                        _ => Err(conflict),
                    },
                    other => other,
                }
            }
        }
    }

    async fn append_batch(
        &self,
        subject: &str,
        expected: Version,
        envelopes: Vec<Envelope>,
    ) -> Result<Vec<StoredEvent>, BusError> {
        let client = self.bus.client();
        let batch_id = Uuid::now_v7().simple().to_string();
        let count = envelopes.len();
        let mut commit_reply = None;
        for (i, envelope) in envelopes.iter().enumerate() {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Batch-Id", batch_id.as_str());
            headers.insert("Nats-Batch-Sequence", (i + 1).to_string().as_str());
            if i == 0 {
                headers.insert("Nats-Expected-Last-Subject-Sequence", expected.stream_sequence.to_string().as_str());
            }
            if let Some(trace) = &envelope.trace {
                headers::insert_trace(&mut headers, trace);
            }
            let payload = Bytes::from(envelope.to_json());
            if i + 1 < count {
                client
                    .publish_with_headers(subject.to_owned(), headers, payload)
                    .await
                    .map_err(|e| BusError::unavailable(format!("append to `{subject}`"), e))?;
            } else {
                headers.insert("Nats-Batch-Commit", "1");
                let request =
                    async_nats::Request::new().headers(headers).payload(payload).timeout(Some(Duration::from_secs(10)));
                let reply = client
                    .send_request(subject.to_owned(), request)
                    .await
                    .map_err(|e| BusError::unavailable(format!("append to `{subject}`"), e))?;
                commit_reply = Some(reply);
            }
        }
        let reply = commit_reply.expect("a batch has a last message");
        let ack: serde_json::Value = serde_json::from_slice(&reply.payload)
            .map_err(|e| BusError::Malformed { what: format!("batch ack for `{subject}`"), reason: e.to_string() })?;
        if let Some(error) = ack.get("error") {
            if error.get("err_code").and_then(|c| c.as_u64()) == Some(WRONG_LAST_SEQUENCE) {
                return Err(BusError::Conflict { subject: subject.to_owned(), expected: expected.stream_sequence });
            }
            return Err(BusError::Unavailable {
                operation: format!("append to `{subject}`"),
                reason: error.to_string(),
            });
        }
        let last = ack.get("seq").and_then(|s| s.as_u64()).ok_or_else(|| BusError::Malformed {
            what: format!("batch ack for `{subject}`"),
            reason: format!("no sequence in {ack}"),
        })?;
        let first = (last + 1).checked_sub(count as u64).ok_or_else(|| BusError::Malformed {
            what: format!("batch ack for `{subject}`"),
            reason: format!("sequence {last} is smaller than the batch of {count}"),
        })?;
        Ok(envelopes
            .into_iter()
            .enumerate()
            .map(|(i, envelope)| StoredEvent { stream_sequence: first + i as u64, envelope })
            .collect())
    }

    /// Carries out `command` on aggregate `id` of `tenant`: loads the tenant's facts and
    /// the aggregate, decides, appends; on a lost race reloads and decides again.
    pub async fn execute<A: Aggregate>(
        &self,
        tenant: TenantId,
        id: impl Into<Uuid>,
        command: &A::Command,
        meta: &Metadata,
    ) -> Result<Committed<A>, ExecuteError> {
        self.execute_expecting(tenant, id, command, meta, None).await
    }

    /// [`EventStore::execute`], but only while the aggregate has exactly `expected` events
    /// (the version a caller last read, an API client's `If-Match`); else [`ExecuteError::Stale`].
    pub async fn execute_expecting<A: Aggregate>(
        &self,
        tenant: TenantId,
        id: impl Into<Uuid>,
        command: &A::Command,
        meta: &Metadata,
        expected: Option<u64>,
    ) -> Result<Committed<A>, ExecuteError> {
        let id = id.into();
        let aggregate = AggregateRef::new(tenant, A::TYPE, id);
        let mut conflicts = 0;
        loop {
            let facts = self.tenant_facts(tenant).await?;
            let (mut state, version) = self.load_state::<A>(tenant, id).await?;
            if let Some(expected) = expected
                && expected != version.sequence
            {
                return Err(ExecuteError::Stale { expected, current: version.sequence });
            }
            let now = Utc::now();
            let events = state.handle(command, &Context::new(now, facts))?;
            if events.is_empty() {
                return Ok(Committed { state, version, events: Vec::new(), conflicts });
            }
            match self.append(aggregate, version, &events, meta, now).await {
                Ok(stored) => {
                    for event in &events {
                        state.apply(event);
                    }
                    let last = stored.last().expect("events were appended");
                    let version = Version { stream_sequence: last.stream_sequence, sequence: last.envelope.sequence };
                    return Ok(Committed { state, version, events: stored, conflicts });
                }
                Err(BusError::Conflict { .. }) if conflicts < MAX_CONFLICT_RETRIES => {
                    conflicts += 1;
                    tracing::debug!(subject = %aggregate.subject(), conflicts, "lost an append race; reloading");
                    tokio::time::sleep(Duration::from_millis(retry_pause_ms(conflicts))).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// What the domain needs to know about a tenant to decide a command.
    pub async fn tenant_facts(&self, tenant: TenantId) -> Result<TenantFacts, ExecuteError> {
        if tenant.is_system() {
            return Ok(TenantFacts::system());
        }
        let (state, _) = self.load_state::<arca_domain::tenant::Tenant>(tenant, tenant.as_uuid()).await?;
        Ok(TenantFacts::from_state(&state))
    }

    /// The stream sequence of the newest event in the log (0 when empty).
    pub async fn last_sequence(&self) -> Result<u64, BusError> {
        let info = self.stream.get_info().await.map_err(|e| BusError::unavailable("read EVENTS info", e))?;
        Ok(info.state.last_sequence)
    }
}

/// A short, growing pause between retries; the clock's nanoseconds spread racing writers out.
fn retry_pause_ms(attempt: usize) -> u64 {
    let nanos = Utc::now().timestamp_subsec_nanos() as u64;
    (nanos % 5) + (attempt as u64).min(10)
}

fn publish_error(subject: &str, expected: Version, kind: PublishErrorKind, error: &dyn std::fmt::Display) -> BusError {
    match kind {
        PublishErrorKind::WrongLastSequence => {
            BusError::Conflict { subject: subject.to_owned(), expected: expected.stream_sequence }
        }
        PublishErrorKind::TimedOut => BusError::Timeout { operation: format!("append to `{subject}`") },
        _ => BusError::Unavailable { operation: format!("append to `{subject}`"), reason: error.to_string() },
    }
}
