//! Arca's wire contract: every event that goes into the log, and the envelope around it.
//!
//! The truth of the platform is an append-only log in NATS JetStream. Each aggregate
//! (tenant, API key, target, source, policy, job, snapshot, replica, restore) has its own
//! subject, `arca.evt.<tenant>.<aggregate>.<id>`, and each event on it is an [`Envelope`]
//! in JSON:
//!
//! | field | meaning |
//! |---|---|
//! | `id` | UUIDv7 of the event; also the `Nats-Msg-Id`, so a retried publish is stored once |
//! | `tenant`, `aggregate`, `aggregate_id` | whose event (the subject, repeated) |
//! | `sequence` | 1-based position in the aggregate's history |
//! | `event_type`, `schema_version` | which payload, in which version |
//! | `time` | when it was decided |
//! | `correlation_id`, `causation_id` | the request that started the chain, and the event or command that caused this one |
//! | `trace` | W3C trace context |
//! | `payload` | the event's data |
//!
//! Old payload versions are upcast when read ([`upcast`]), so code only ever sees the
//! current types. **No secret is ever in an event**: credentials are sealed in the
//! secret store and events carry a [`SecretRef`].

mod event;
mod ids;
mod trace;
mod types;
pub mod upcast;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use event::*;
pub use ids::*;
pub use trace::TraceContext;
pub use types::*;

/// The prefix of every event subject.
pub const EVENT_SUBJECT_PREFIX: &str = "arca.evt";

/// The kinds of aggregate, as they appear in subjects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AggregateType {
    Tenant,
    ApiKey,
    Target,
    Source,
    Policy,
    Job,
    Snapshot,
    Replica,
    Restore,
    Export,
}

impl AggregateType {
    pub const ALL: [AggregateType; 10] = [
        AggregateType::Tenant,
        AggregateType::ApiKey,
        AggregateType::Target,
        AggregateType::Source,
        AggregateType::Policy,
        AggregateType::Job,
        AggregateType::Snapshot,
        AggregateType::Replica,
        AggregateType::Restore,
        AggregateType::Export,
    ];

    /// The subject token: `tenant`, `api_key`, …
    pub fn as_str(&self) -> &'static str {
        match self {
            AggregateType::Tenant => "tenant",
            AggregateType::ApiKey => "api_key",
            AggregateType::Target => "target",
            AggregateType::Source => "source",
            AggregateType::Policy => "policy",
            AggregateType::Job => "job",
            AggregateType::Snapshot => "snapshot",
            AggregateType::Replica => "replica",
            AggregateType::Restore => "restore",
            AggregateType::Export => "export",
        }
    }

    pub fn parse(token: &str) -> Option<AggregateType> {
        AggregateType::ALL.into_iter().find(|a| a.as_str() == token)
    }
}

/// One aggregate instance: whose, which kind, which id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AggregateRef {
    pub tenant: TenantId,
    pub aggregate: AggregateType,
    pub id: Uuid,
}

impl AggregateRef {
    pub fn new(tenant: TenantId, aggregate: AggregateType, id: impl Into<Uuid>) -> Self {
        Self { tenant, aggregate, id: id.into() }
    }

    /// `arca.evt.<tenant>.<aggregate>.<id>`
    pub fn subject(&self) -> String {
        format!("{EVENT_SUBJECT_PREFIX}.{}.{}.{}", self.tenant, self.aggregate.as_str(), self.id.hyphenated())
    }

    /// Parses an event subject back; `None` for anything else.
    pub fn from_subject(subject: &str) -> Option<Self> {
        let rest = subject.strip_prefix(EVENT_SUBJECT_PREFIX)?.strip_prefix('.')?;
        let mut parts = rest.split('.');
        let (tenant, aggregate, id) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        Some(Self {
            tenant: tenant.parse().ok()?,
            aggregate: AggregateType::parse(aggregate)?,
            id: Uuid::parse_str(id).ok()?,
        })
    }
}

/// Who asked and why: carried from a command to every event it produces.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Metadata {
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
    pub trace: Option<TraceContext>,
}

impl Metadata {
    /// A new chain: fresh correlation id and a new trace.
    pub fn new_root() -> Self {
        Self { correlation_id: Uuid::now_v7(), causation_id: None, trace: Some(TraceContext::new_root()) }
    }

    /// Metadata for work caused by `envelope`: same correlation and trace, caused by it.
    pub fn caused_by(envelope: &Envelope) -> Self {
        Self {
            correlation_id: envelope.correlation_id,
            causation_id: Some(envelope.id),
            trace: envelope.trace.as_ref().map(TraceContext::child),
        }
    }
}

/// An event as stored on the stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: Uuid,
    pub tenant: TenantId,
    pub aggregate: AggregateType,
    pub aggregate_id: Uuid,
    pub sequence: u64,
    pub event_type: String,
    pub schema_version: u32,
    pub time: DateTime<Utc>,
    pub correlation_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceContext>,
    pub payload: serde_json::Value,
}

impl Envelope {
    /// Wraps `event` as the `sequence`-th event of `aggregate`.
    ///
    /// Panics when the event belongs to another kind of aggregate: that is a bug in the caller.
    pub fn new(aggregate: AggregateRef, sequence: u64, event: &Event, time: DateTime<Utc>, meta: &Metadata) -> Self {
        assert_eq!(
            event.aggregate(),
            aggregate.aggregate,
            "{} is not a {:?} event",
            event.event_type(),
            aggregate.aggregate
        );
        Self {
            id: Uuid::now_v7(),
            tenant: aggregate.tenant,
            aggregate: aggregate.aggregate,
            aggregate_id: aggregate.id,
            sequence,
            event_type: event.event_type().to_owned(),
            schema_version: event.schema_version(),
            time,
            correlation_id: meta.correlation_id,
            causation_id: meta.causation_id,
            trace: meta.trace.clone(),
            payload: event.to_payload(),
        }
    }

    pub fn aggregate_ref(&self) -> AggregateRef {
        AggregateRef { tenant: self.tenant, aggregate: self.aggregate, id: self.aggregate_id }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an envelope always serialises")
    }

    /// Parses the envelope only; the payload is read by [`Envelope::event`].
    pub fn from_json(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        serde_json::from_slice(bytes).map_err(|e| DecodeError::Envelope(e.to_string()))
    }

    /// The payload as the current version of its type, upcasting older versions.
    pub fn event(&self) -> Result<Event, DecodeError> {
        let belongs_to =
            Event::aggregate_of(&self.event_type).ok_or_else(|| DecodeError::UnknownType(self.event_type.clone()))?;
        if belongs_to != self.aggregate {
            return Err(DecodeError::WrongAggregate { event_type: self.event_type.clone(), aggregate: self.aggregate });
        }
        let payload = upcast::to_current(&self.event_type, self.schema_version, self.payload.clone())?;
        Event::from_current_payload(&self.event_type, payload)
    }
}

/// Why bytes from the stream are not a usable event. Never retryable: the bytes will not change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not an event envelope: {0}")]
    Envelope(String),
    #[error("unknown event type `{0}`")]
    UnknownType(String),
    #[error("`{event_type}` version {version} is newer than this build understands (up to {known})")]
    FutureVersion { event_type: String, version: u32, known: u32 },
    #[error("`{event_type}` version {version} has no upcaster")]
    NoUpcaster { event_type: String, version: u32 },
    #[error("`{event_type}` is not an event of a {aggregate:?}")]
    WrongAggregate { event_type: String, aggregate: AggregateType },
    #[error("malformed `{event_type}` payload: {reason}")]
    Payload { event_type: String, reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_round_trip() {
        let aggregate = AggregateRef::new(TenantId::new(), AggregateType::ApiKey, ApiKeyId::new());
        let subject = aggregate.subject();
        assert!(subject.starts_with("arca.evt.") && subject.contains(".api_key."), "{subject}");
        assert_eq!(AggregateRef::from_subject(&subject), Some(aggregate));
        for bad in ["arca.evt", "arca.evt.x.tenant.y", "arca.job.backup", &format!("{subject}.extra")] {
            assert_eq!(AggregateRef::from_subject(bad), None, "{bad}");
        }
    }

    #[test]
    fn every_event_type_names_its_aggregate_and_version() {
        for name in Event::TYPES {
            assert!(Event::aggregate_of(name).is_some(), "{name}");
            assert!(Event::current_version_of(name).unwrap() >= 1, "{name}");
            assert!(!name.ends_with("ing"), "{name}: events are named in the past tense");
        }
    }

    #[test]
    fn envelopes_round_trip_through_json() {
        let tenant = TenantId::new();
        let event = Event::from(TenantCreated { name: "acme".into(), quota_bytes: Some(1 << 40) });
        let envelope = Envelope::new(
            AggregateRef::new(tenant, AggregateType::Tenant, tenant),
            1,
            &event,
            Utc::now(),
            &Metadata::new_root(),
        );
        let decoded = Envelope::from_json(&envelope.to_json()).unwrap();
        assert_eq!(decoded, envelope);
        assert_eq!(decoded.event().unwrap(), event);
        assert_eq!(decoded.id.get_version_num(), 7);
    }

    #[test]
    fn bad_envelopes_are_typed_errors() {
        assert!(matches!(Envelope::from_json(b"{not json"), Err(DecodeError::Envelope(_))));
        let tenant = TenantId::new();
        let mut envelope = Envelope::new(
            AggregateRef::new(tenant, AggregateType::Tenant, tenant),
            1,
            &TenantDeleted {}.into(),
            Utc::now(),
            &Metadata::default(),
        );
        envelope.event_type = "TenantExploded".into();
        assert_eq!(envelope.event(), Err(DecodeError::UnknownType("TenantExploded".into())));
        envelope.event_type = "JobStarted".into();
        assert!(matches!(envelope.event(), Err(DecodeError::WrongAggregate { .. })));
        envelope.event_type = "TenantRenamed".into();
        assert!(matches!(envelope.event(), Err(DecodeError::Payload { .. })), "{:?}", envelope.event());
        envelope.schema_version = 9;
        assert!(matches!(envelope.event(), Err(DecodeError::FutureVersion { version: 9, .. })));
    }
}
