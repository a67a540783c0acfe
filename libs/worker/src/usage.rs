//! Stored bytes per target, and the tenant's total as `TenantUsageReported`.
//!
//! Each target's size (the packs its index lists) is kept in the `arca-usage` key-value
//! bucket under `<tenant>.<target>`, written by whichever worker last changed that
//! repository; the tenant's usage is the sum over its keys. Workers on several machines
//! therefore report one consistent figure, and quota checks see what is really stored.
//! Backups and copies add what they uploaded ([`add`], a compare-and-set on the key, so
//! concurrent writers do not lose each other's bytes); prune measures the repository and
//! sets the exact figure ([`record`]).

use arca_bus::{BusError, EventStore, ExecuteError};
use arca_domain::tenant::{Tenant, TenantCommand};
use arca_events::{Metadata, TargetId, TenantId};
use async_nats::jetstream::kv;
use futures::StreamExt;

const BUCKET: &str = "arca-usage";

/// A stored figure (decimal text); an unreadable one counts as zero.
fn bytes_of(value: &[u8]) -> u64 {
    std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// The bytes a repository occupies: its packs, as its index lists them (blocking).
pub fn repository_bytes(repo: &arca_repo::Repository) -> Result<u64, arca_repo::Error> {
    Ok(repo.load_index()?.packs.iter().map(|pack| pack.size).sum())
}

async fn bucket(store: &EventStore) -> Result<kv::Store, BusError> {
    store.bus().key_value(BUCKET).await
}

/// Adds `bytes` (just uploaded) to `target`'s figure and reports the tenant's new total.
pub async fn add(
    store: &EventStore,
    tenant: TenantId,
    target: TargetId,
    bytes: u64,
    meta: &Metadata,
) -> Result<u64, ExecuteError> {
    let usage = bucket(store).await?;
    let key = format!("{tenant}.{target}");
    let mut conflicts = 0;
    loop {
        let entry = usage.entry(&key).await.map_err(|e| BusError::unavailable("read a target's usage", e))?;
        let (current, revision) = match &entry {
            Some(entry) if entry.operation == kv::Operation::Put => (bytes_of(&entry.value), Some(entry.revision)),
            Some(entry) => (0, Some(entry.revision)),
            None => (0, None),
        };
        let value = (current + bytes).to_string().into_bytes().into();
        let written = match revision {
            Some(revision) => usage.update(&key, value, revision).await.map(|_| ()).map_err(|e| e.to_string()),
            None => usage.create(&key, value).await.map(|_| ()).map_err(|e| e.to_string()),
        };
        match written {
            Ok(()) => break,
            Err(e) if conflicts < 20 => {
                conflicts += 1;
                tracing::debug!(%key, error = %e, "usage changed meanwhile; adding again");
            }
            Err(e) => return Err(BusError::unavailable("add to a target's usage", e).into()),
        }
    }
    report_total(store, &usage, tenant, meta).await
}

/// Records `bytes` for `target` and reports the tenant's new total; returns the total.
pub async fn record(
    store: &EventStore,
    tenant: TenantId,
    target: TargetId,
    bytes: u64,
    meta: &Metadata,
) -> Result<u64, ExecuteError> {
    let usage = bucket(store).await?;
    usage
        .put(format!("{tenant}.{target}"), bytes.to_string().into_bytes().into())
        .await
        .map_err(|e| BusError::unavailable("record a target's usage", e))?;
    report_total(store, &usage, tenant, meta).await
}

/// Sums the tenant's targets and reports the total as `TenantUsageReported`.
async fn report_total(
    store: &EventStore,
    usage: &kv::Store,
    tenant: TenantId,
    meta: &Metadata,
) -> Result<u64, ExecuteError> {
    // The newest value of each of the tenant's keys, then the watch ends (`delta` 0).
    let mut entries =
        usage.watch_with_history(format!("{tenant}.*")).await.map_err(|e| BusError::unavailable("read usage", e))?;
    let mut total = 0u64;
    while let Some(entry) = entries.next().await {
        let entry = entry.map_err(|e| BusError::unavailable("read usage", e))?;
        if entry.operation == kv::Operation::Put {
            total += bytes_of(&entry.value);
        }
        if entry.delta == 0 {
            break;
        }
    }
    store.execute::<Tenant>(tenant, tenant, &TenantCommand::ReportUsage { used_bytes: total }, meta).await?;
    Ok(total)
}
