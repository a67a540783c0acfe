//! Stored bytes per target, and the tenant's total as `TenantUsageReported`.
//!
//! Each target's size (the packs its index lists) is kept in the `arca-usage` key-value
//! bucket under `<tenant>.<target>`, written by whichever worker last changed that
//! repository; the tenant's usage is the sum over its keys. Workers on several machines
//! therefore report one consistent figure, and quota checks see what is really stored.

use arca_bus::{BusError, EventStore, ExecuteError};
use arca_domain::tenant::{Tenant, TenantCommand};
use arca_events::{Metadata, TargetId, TenantId};
use async_nats::jetstream::kv;
use futures::StreamExt;

const BUCKET: &str = "arca-usage";

/// The bytes a repository occupies: its packs, as its index lists them (blocking).
pub fn repository_bytes(repo: &arca_repo::Repository) -> Result<u64, arca_repo::Error> {
    Ok(repo.load_index()?.packs.iter().map(|pack| pack.size).sum())
}

async fn bucket(store: &EventStore) -> Result<kv::Store, BusError> {
    let bus = store.bus();
    bus.jetstream()
        .create_or_update_key_value(kv::Config {
            bucket: BUCKET.into(),
            history: 1,
            num_replicas: bus.config().replicas,
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| BusError::unavailable("open the usage bucket", e))
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
    // The newest value of each of the tenant's keys, then the watch ends (`delta` 0).
    let mut entries =
        usage.watch_with_history(format!("{tenant}.*")).await.map_err(|e| BusError::unavailable("read usage", e))?;
    let mut total = 0u64;
    while let Some(entry) = entries.next().await {
        let entry = entry.map_err(|e| BusError::unavailable("read usage", e))?;
        if entry.operation == kv::Operation::Put {
            total += std::str::from_utf8(&entry.value).ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
        if entry.delta == 0 {
            break;
        }
    }
    store.execute::<Tenant>(tenant, tenant, &TenantCommand::ReportUsage { used_bytes: total }, meta).await?;
    Ok(total)
}
