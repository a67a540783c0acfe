//! Creating a repository when a target is added.

use std::time::Duration;

use arca_bus::{BusError, EVENTS_STREAM};
use arca_events::{Envelope, Event, TargetId};
use arca_worker::Targets;
use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use futures::StreamExt;

/// Every storage instance shares this consumer, so each added target is handled once.
const CONSUMER: &str = "storage-targets";

/// Follows `TargetAdded` and creates the repository there (a target that already holds the
/// tenant's repository is left as it is). A target that cannot be reached is tried again
/// with growing pauses; one whose repository cannot be opened with the tenant's key (a
/// foreign repository) is reported and skipped.
pub async fn create_repositories(targets: Targets) -> Result<(), BusError> {
    // The durable consumer resumes where it was: a subscription that ends is simply opened again.
    loop {
        if let Err(e) = follow_targets(&targets).await {
            tracing::warn!(error = %e, "following target events failed; subscribing again");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn follow_targets(targets: &Targets) -> Result<(), BusError> {
    let stream = targets
        .store()
        .bus()
        .jetstream()
        .get_stream(EVENTS_STREAM)
        .await
        .map_err(|e| BusError::unavailable("open the EVENTS stream", e))?;
    let config = pull::Config {
        durable_name: Some(CONSUMER.into()),
        filter_subject: format!("{}.*.target.*", arca_events::EVENT_SUBJECT_PREFIX),
        ack_policy: AckPolicy::Explicit,
        deliver_policy: DeliverPolicy::All,
        ack_wait: Duration::from_secs(120),
        backoff: vec![Duration::from_secs(2), Duration::from_secs(10), Duration::from_secs(60)],
        max_deliver: 20,
        ..Default::default()
    };
    let consumer = stream
        .get_or_create_consumer(CONSUMER, config)
        .await
        .map_err(|e| BusError::unavailable("open the storage-targets consumer", e))?;
    let mut messages = consumer.messages().await.map_err(|e| BusError::unavailable("follow target events", e))?;
    while let Some(message) = messages.next().await {
        let message = match message {
            Ok(message) => message,
            Err(e) => {
                tracing::warn!(error = %e, "target events: a delivery failed");
                continue;
            }
        };
        let ack = match added_target(&message.payload) {
            None => AckKind::Ack,
            Some(envelope) => {
                let target = TargetId(envelope.aggregate_id);
                match create_one(targets, envelope.tenant, target).await {
                    Ok(()) => AckKind::Ack,
                    Err(e) if e.is_temporary() => {
                        tracing::warn!(%target, error = %e, "could not create the repository yet; will retry");
                        AckKind::Nak(None)
                    }
                    Err(e) => {
                        tracing::error!(%target, error = %e, "could not create the repository");
                        AckKind::Ack
                    }
                }
            }
        };
        if let Err(e) = message.ack_with(ack).await {
            tracing::warn!(error = %e, "could not acknowledge a target event");
        }
    }
    Err(BusError::Unavailable { operation: "follow target events".into(), reason: "the subscription ended".into() })
}

fn added_target(payload: &[u8]) -> Option<Envelope> {
    let envelope = Envelope::from_json(payload).ok()?;
    matches!(envelope.event(), Ok(Event::TargetAdded(_))).then_some(envelope)
}

async fn create_one(
    targets: &Targets,
    tenant: arca_events::TenantId,
    target: TargetId,
) -> Result<(), arca_worker::targets::TargetError> {
    let spec = match targets.describe(tenant, target).await {
        Ok(spec) => spec,
        // Removed since: nothing to create.
        Err(arca_worker::targets::TargetError::Removed(_)) => return Ok(()),
        Err(e) => return Err(e),
    };
    let name = spec.name.clone();
    targets.ensure_repository(&spec).await?;
    tracing::info!(%target, %name, "repository ready");
    Ok(())
}
