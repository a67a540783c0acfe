//! Following the event log durably from a position the reader stores itself.
//!
//! A read model (the catalog, a scheduler's view of policies) keeps the stream sequence it
//! has applied next to its data, in the same transaction. [`durable_consumer`] gives it a
//! JetStream durable consumer that continues from exactly there. [`follow_aggregate`]
//! follows one aggregate live (a job's state changes, for its watchers).

use std::time::Duration;

use arca_events::{AggregateRef, Envelope};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::stream::Stream;
use futures::StreamExt;

use crate::{Bus, BusError, EVENTS_STREAM};

/// The durable consumer `name` on `EVENTS` (only `filter_subject`, if given), positioned
/// just after stream sequence `applied`. Acking a message acks every earlier one.
///
/// A reader must see events in stream order, and a consumer redelivers unacked messages
/// only after their ack wait — after newer ones. So the consumer is reused only when it has
/// delivered exactly what the reader applied (a clean stop); otherwise (a crash with a batch
/// in flight, a reader restored from a backup, rebuilt or replaced) it is recreated at the
/// reader's position: the reader is the authority on what it has applied. One process
/// follows one consumer at a time.
pub async fn durable_consumer(
    bus: &Bus,
    name: &str,
    filter_subject: Option<&str>,
    applied: u64,
) -> Result<PullConsumer, BusError> {
    let stream: Stream = bus
        .jetstream()
        .get_stream(EVENTS_STREAM)
        .await
        .map_err(|e| BusError::unavailable("open the EVENTS stream", e))?;
    // Only "not found" means there is none; anything else (a timeout) is an error, not a reason to recreate.
    let exists = match stream.consumer_info(name).await {
        Ok(_) => true,
        Err(e) if matches!(e.kind(), ConsumerInfoErrorKind::NotFound) => false,
        Err(e) => return Err(BusError::unavailable(format!("read consumer {name}"), e)),
    };
    let existing = if exists {
        Some(
            stream
                .get_consumer::<pull::Config>(name)
                .await
                .map_err(|e| BusError::unavailable(format!("open consumer {name}"), e))?,
        )
    } else {
        None
    };
    if let Some(mut existing) = existing {
        let info = existing.info().await.map_err(|e| BusError::unavailable(format!("read consumer {name}"), e))?;
        let delivered = info.delivered.stream_sequence;
        let same_filter = info.config.filter_subject == filter_subject.unwrap_or_default();
        if delivered == applied && same_filter {
            return Ok(existing);
        }
        tracing::info!(consumer = name, delivered, applied, "repositioning the consumer at the reader's position");
        stream
            .delete_consumer(name)
            .await
            .map_err(|e| BusError::unavailable(format!("reposition consumer {name}"), e))?;
    }
    let config = pull::Config {
        durable_name: Some(name.to_owned()),
        filter_subject: filter_subject.unwrap_or_default().to_owned(),
        ack_policy: AckPolicy::All,
        deliver_policy: if applied == 0 {
            DeliverPolicy::All
        } else {
            DeliverPolicy::ByStartSequence { start_sequence: applied + 1 }
        },
        max_ack_pending: 50_000,
        ack_wait: Duration::from_secs(60),
        ..Default::default()
    };
    stream.create_consumer(config).await.map_err(|e| BusError::unavailable(format!("create consumer {name}"), e))
}

/// The events of `aggregate` stored after stream sequence `after` (its [`Version`] when it was
/// loaded), in order, as they are appended: load the state, then follow from its version,
/// and nothing is missed or seen twice. An ephemeral ordered consumer: dropping the stream
/// is all the cleanup there is.
///
/// [`Version`]: crate::Version
pub async fn follow_aggregate(
    bus: &Bus,
    aggregate: AggregateRef,
    after: u64,
) -> Result<impl futures::Stream<Item = Result<Envelope, BusError>> + Send + Unpin + 'static, BusError> {
    let subject = aggregate.subject();
    let stream: Stream = bus
        .jetstream()
        .get_stream(EVENTS_STREAM)
        .await
        .map_err(|e| BusError::unavailable("open the EVENTS stream", e))?;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: subject.clone(),
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: after + 1 },
            ..Default::default()
        })
        .await
        .map_err(|e| BusError::unavailable(format!("follow `{subject}`"), e))?;
    let messages = consumer.messages().await.map_err(|e| BusError::unavailable(format!("follow `{subject}`"), e))?;
    Ok(messages.map(move |message| {
        let message = message.map_err(|e| BusError::unavailable(format!("follow `{subject}`"), e))?;
        Envelope::from_json(&message.payload)
            .map_err(|e| BusError::Malformed { what: format!("event on `{subject}`"), reason: e.to_string() })
    }))
}
