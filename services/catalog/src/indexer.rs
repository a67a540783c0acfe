//! Fills the file index from the repositories: follows `SnapshotCommitted` (reads the
//! snapshot's trees from its target's repository and indexes them, see [`crate::files`]) and
//! `SnapshotForgotten` (hides and cleans up its versions).
//!
//! The index needs the deployment's server key (to open the tenant's repositories), so it runs
//! only when the catalog is given one. It has its own durable consumer, one event at a time in
//! log order (a series is indexed oldest first); a snapshot the projection has not reached yet,
//! or a repository that cannot be reached, is tried again after a pause. A snapshot older than
//! the newest indexed one of its series — a copy into another target records the original's
//! time — is skipped: its files are those of the original, which is indexed.

use std::time::Duration;

use arca_bus::{Bus, BusError, EVENTS_STREAM};
use arca_events::{Envelope, Event, SnapshotId};
use arca_worker::Targets;
use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use futures::StreamExt;
use sea_orm::DatabaseConnection;

use crate::error::CatalogError;
use crate::files;

/// What became of one event.
enum Indexed {
    Done,
    Later(String),
}

/// Indexes snapshots; a subscription that ends is opened again (the durable consumer resumes).
pub async fn run(bus: Bus, db: DatabaseConnection, targets: Targets, name: String) -> Result<(), CatalogError> {
    loop {
        if let Err(e) = follow(&bus, &db, &targets, &name).await {
            tracing::warn!(error = %e, "file index: following snapshot events failed; subscribing again");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn follow(bus: &Bus, db: &DatabaseConnection, targets: &Targets, name: &str) -> Result<(), CatalogError> {
    let stream = bus
        .jetstream()
        .get_stream(EVENTS_STREAM)
        .await
        .map_err(|e| BusError::unavailable("open the EVENTS stream", e))?;
    let config = pull::Config {
        durable_name: Some(name.to_owned()),
        filter_subject: format!("{}.*.snapshot.*", arca_events::EVENT_SUBJECT_PREFIX),
        ack_policy: AckPolicy::Explicit,
        deliver_policy: DeliverPolicy::All,
        ack_wait: Duration::from_secs(600),
        max_ack_pending: 1,
        ..Default::default()
    };
    let consumer = stream
        .get_or_create_consumer(name, config)
        .await
        .map_err(|e| BusError::unavailable(format!("open consumer {name}"), e))?;
    let mut messages = consumer.messages().await.map_err(|e| BusError::unavailable("follow snapshot events", e))?;
    while let Some(message) = messages.next().await {
        let message = match message {
            Ok(message) => message,
            Err(e) => {
                tracing::warn!(error = %e, "file index: a delivery failed");
                continue;
            }
        };
        let ack = match index_one(db, targets, &message.payload).await {
            Indexed::Done => AckKind::Ack,
            Indexed::Later(why) => {
                tracing::debug!(%why, "file index: trying the snapshot again later");
                AckKind::Nak(Some(Duration::from_secs(1)))
            }
        };
        if let Err(e) = message.ack_with(ack).await {
            tracing::warn!(error = %e, "file index: could not acknowledge");
        }
    }
    Err(BusError::Unavailable { operation: "follow snapshot events".into(), reason: "the subscription ended".into() }
        .into())
}

async fn index_one(db: &DatabaseConnection, targets: &Targets, payload: &[u8]) -> Indexed {
    let Ok(envelope) = Envelope::from_json(payload) else { return Indexed::Done };
    let snapshot = SnapshotId(envelope.aggregate_id);
    let tenant = envelope.tenant;
    match envelope.event() {
        Ok(Event::SnapshotCommitted(commit)) => {
            let row = match crate::queries::get_snapshot(db, tenant, snapshot).await {
                Ok(Some(row)) => row,
                Ok(None) => return Indexed::Later("the projection has not reached it".into()),
                Err(e) => return Indexed::Later(e.to_string()),
            };
            let spec = match targets.describe(tenant, commit.target).await {
                Ok(spec) => spec,
                Err(e) if e.is_temporary() => return Indexed::Later(e.to_string()),
                Err(e) => {
                    tracing::warn!(%snapshot, error = %e, "file index: the snapshot's target is gone; not indexed");
                    return Indexed::Done;
                }
            };
            let repo_snapshot = commit.repo_snapshot.clone();
            let entries = tokio::task::spawn_blocking(move || {
                let repo = spec.open()?;
                files::entries_from_repository(&repo, &repo_snapshot)
            })
            .await;
            let entries = match entries {
                Ok(Ok(entries)) => entries,
                Ok(Err(e)) if e.is_temporary() => return Indexed::Later(e.to_string()),
                Ok(Err(arca_repo::Error::NotFound(_))) => {
                    tracing::info!(%snapshot, "file index: the snapshot left its repository before it was indexed");
                    return Indexed::Done;
                }
                Ok(Err(e)) => {
                    tracing::warn!(%snapshot, error = %e, "file index: cannot read the snapshot; not indexed");
                    return Indexed::Done;
                }
                Err(e) => return Indexed::Later(e.to_string()),
            };
            let series = files::Series::of_snapshot(&row);
            match files::index_snapshot(db, tenant, snapshot, &series, row.time, entries).await {
                Ok(outcome) => {
                    tracing::info!(%snapshot, entries = outcome.entries, added = outcome.rows_added, "file index: indexed");
                    Indexed::Done
                }
                Err(CatalogError::SnapshotOutOfOrder { .. }) => {
                    tracing::info!(%snapshot, "file index: older than its series' newest snapshot (a copy); skipped");
                    Indexed::Done
                }
                Err(e) if e.is_retryable() => Indexed::Later(e.to_string()),
                Err(e) => {
                    tracing::warn!(%snapshot, error = %e, "file index: not indexed");
                    Indexed::Done
                }
            }
        }
        Ok(Event::SnapshotForgotten(_)) => match files::forget_snapshot(db, tenant, snapshot).await {
            Ok(_) => Indexed::Done,
            Err(e) if e.is_retryable() => Indexed::Later(e.to_string()),
            Err(e) => {
                tracing::warn!(%snapshot, error = %e, "file index: could not forget");
                Indexed::Done
            }
        },
        _ => Indexed::Done,
    }
}
