//! Queries over NATS request/reply: `arca.q.catalog.<resource>.<list|get>` and
//! `arca.q.catalog.status`.
//!
//! Every query but the MSP's tenant list names its tenant, and every row it can return
//! is filtered by that tenant in SQL: another tenant's id answers `not_found`, exactly
//! like an id that does not exist. Lists take `limit` and `cursor` and return
//! `{items, next_cursor}`.
//!
//! The file index ([`crate::files`]) answers `arca.q.catalog.files.search`
//! (`{tenant, path, series?, limit?, cursor?}` → versions of the paths with the snapshots that
//! hold them) and `arca.q.catalog.files.list` (`{tenant, snapshot, path?, limit?, cursor?}` →
//! the direct children of a folder in one snapshot; `not_found` for a snapshot the tenant has
//! not indexed or has forgotten).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use arca_bus::Bus;
use arca_bus::query::{APPLIED_HEADER, RawAnswer, RemoteError};
use arca_events::TenantId;
use async_nats::HeaderMap;
use sea_orm::DatabaseConnection;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::error::CatalogError;
use crate::files;
use crate::queries::{self, AuditFilter, JobFilter, PageRequest, SnapshotFilter};
use crate::service::Stats;

/// Every catalog query subject starts with this.
pub const QUERY_PREFIX: &str = "arca.q.catalog";

/// What `arca.q.catalog.status` answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Stream sequence of the last event applied.
    pub last_applied: u64,
    /// Stream sequence of the newest event in the log.
    pub stream_last: u64,
    /// Events in the log not yet applied.
    pub lag: u64,
    pub applied: u64,
    pub malformed: u64,
    pub duplicates: u64,
}

/// Answers catalog queries in the `arca-catalog` queue group until aborted.
pub async fn serve(bus: &Bus, db: DatabaseConnection, stats: Arc<Stats>) -> Result<JoinHandle<()>, CatalogError> {
    let store = bus.event_store().await?;
    let handler = move |subject: String, query: Value, _trace| {
        let (db, stats, store) = (db.clone(), stats.clone(), store.clone());
        async move {
            let name = subject.strip_prefix(QUERY_PREFIX).and_then(|s| s.strip_prefix('.')).unwrap_or_default();
            // Read before the query: the projector stores a batch, then advances this. Every
            // answer carries it (`APPLIED_HEADER`): a cache of answers (the gateway's)
            // compares it with the events it has seen since.
            let last_applied = stats.last_applied.load(Ordering::Relaxed);
            let mut answer = if name == "status" {
                let stream_last =
                    store.last_sequence().await.map_err(|e| RemoteError::new("unavailable", e.to_string()))?;
                RawAnswer::json(&Status {
                    last_applied,
                    stream_last,
                    lag: stream_last.saturating_sub(last_applied),
                    applied: stats.applied.load(Ordering::Relaxed),
                    malformed: stats.malformed.load(Ordering::Relaxed),
                    duplicates: stats.duplicates.load(Ordering::Relaxed),
                })?
            } else {
                answer(&db, name, query).await?
            };
            let mut headers = HeaderMap::new();
            headers.insert(APPLIED_HEADER, last_applied.to_string().as_str());
            answer.headers = Some(headers);
            Ok(answer)
        }
    };
    Ok(bus.serve_raw(&format!("{QUERY_PREFIX}.>"), "arca-catalog", handler).await?)
}

/// A list query: the tenant, the page, and the resource's filters.
#[derive(Deserialize)]
struct List<F = NoFilter> {
    tenant: TenantId,
    #[serde(flatten)]
    page: PageRequest,
    #[serde(flatten)]
    filter: F,
}

#[derive(Default, Deserialize)]
struct NoFilter {}

#[derive(Deserialize)]
struct Get {
    tenant: TenantId,
    id: Uuid,
}

#[derive(Deserialize)]
struct TenantsList {
    #[serde(flatten)]
    page: PageRequest,
}

#[derive(Deserialize)]
struct ByHash {
    hash: String,
}

async fn answer(db: &DatabaseConnection, name: &str, query: Value) -> Result<RawAnswer, RemoteError> {
    match name {
        "tenants.list" => {
            let q: TenantsList = parse(query)?;
            page(queries::list_tenants(db, &q.page).await)
        }
        "tenants.get" => {
            let q: Get = parse(query)?;
            // A tenant sees only itself.
            if q.id != q.tenant.as_uuid() {
                return Err(not_found());
            }
            found(queries::get_tenant(db, q.tenant).await)
        }
        "api_keys.list" => {
            let q: List = parse(query)?;
            page(queries::list_api_keys(db, q.tenant, &q.page).await)
        }
        "api_keys.get" => {
            let q: Get = parse(query)?;
            found(queries::get_api_key(db, q.tenant, q.id.into()).await)
        }
        "api_keys.by_hash" => {
            let q: ByHash = parse(query)?;
            found(queries::find_api_key_by_hash(db, &q.hash).await)
        }
        "targets.list" => {
            let q: List = parse(query)?;
            page(queries::list_targets(db, q.tenant, &q.page).await)
        }
        "targets.get" => {
            let q: Get = parse(query)?;
            found(queries::get_target(db, q.tenant, q.id.into()).await)
        }
        "sources.list" => {
            let q: List = parse(query)?;
            page(queries::list_sources(db, q.tenant, &q.page).await)
        }
        "sources.get" => {
            let q: Get = parse(query)?;
            found(queries::get_source(db, q.tenant, q.id.into()).await)
        }
        "policies.list" => {
            let q: List = parse(query)?;
            page(queries::list_policies(db, q.tenant, &q.page).await)
        }
        "policies.get" => {
            let q: Get = parse(query)?;
            found(queries::get_policy(db, q.tenant, q.id.into()).await)
        }
        "jobs.list" => {
            let q: List<JobFilter> = parse(query)?;
            page(queries::list_jobs(db, q.tenant, &q.filter, &q.page).await)
        }
        "jobs.get" => {
            let q: Get = parse(query)?;
            found(queries::get_job(db, q.tenant, q.id.into()).await)
        }
        "snapshots.list" => {
            let q: List<SnapshotFilter> = parse(query)?;
            // Rows straight to the page's bytes: the API's busiest list.
            let json = queries::list_snapshots_json(db, q.tenant, &q.filter, &q.page).await.map_err(remote)?;
            Ok(RawAnswer { json: json.into(), headers: None })
        }
        "snapshots.get" => {
            let q: Get = parse(query)?;
            found(queries::get_snapshot(db, q.tenant, q.id.into()).await)
        }
        "replicas.list" => {
            let q: List = parse(query)?;
            page(queries::list_replicas(db, q.tenant, &q.page).await)
        }
        "replicas.get" => {
            let q: Get = parse(query)?;
            found(queries::get_replica(db, q.tenant, q.id.into()).await)
        }
        "restores.list" => {
            let q: List = parse(query)?;
            page(queries::list_restores(db, q.tenant, &q.page).await)
        }
        "restores.get" => {
            let q: Get = parse(query)?;
            found(queries::get_restore(db, q.tenant, q.id.into()).await)
        }
        "files.search" => {
            let q: List<files::SearchRequest> = parse(query)?;
            page(files::search(db, q.tenant, &q.filter, &q.page).await)
        }
        "files.list" => {
            let q: List<files::ListRequest> = parse(query)?;
            found(files::list_folder(db, q.tenant, &q.filter, &q.page).await)
        }
        "audit.list" => {
            let q: List<AuditFilter> = parse(query)?;
            page(queries::list_audit(db, q.tenant, &q.filter, &q.page).await)
        }
        other => Err(RemoteError::new("not_found", format!("no catalog query `{other}`"))),
    }
}

fn parse<T: DeserializeOwned>(query: Value) -> Result<T, RemoteError> {
    serde_json::from_value(query).map_err(|e| RemoteError::new("bad_request", e.to_string()))
}

/// `value`'s JSON with every object's keys in name order (through a JSON value), as the
/// API has always answered.
fn to_json<T: Serialize>(value: T) -> Result<RawAnswer, RemoteError> {
    RawAnswer::json(&serde_json::to_value(value).map_err(|e| RemoteError::new("internal", e.to_string()))?)
}

fn page<T: Serialize>(result: Result<queries::Page<T>, CatalogError>) -> Result<RawAnswer, RemoteError> {
    to_json(result.map_err(remote)?)
}

fn found<T: Serialize>(result: Result<Option<T>, CatalogError>) -> Result<RawAnswer, RemoteError> {
    match result.map_err(remote)? {
        Some(row) => to_json(row),
        None => Err(not_found()),
    }
}

fn not_found() -> RemoteError {
    RemoteError::new("not_found", "no such object")
}

/// A typed error for the caller; database details stay in this service's log.
fn remote(error: CatalogError) -> RemoteError {
    match error {
        CatalogError::InvalidCursor(_) | CatalogError::InvalidPattern(_) => {
            RemoteError::new("bad_request", error.to_string())
        }
        other if other.is_retryable() => {
            tracing::warn!(error = %other, "a catalog query failed; the caller may retry");
            RemoteError::new("unavailable", "the catalog database is not reachable; try again")
        }
        other => {
            tracing::error!(error = %other, "a catalog query failed");
            RemoteError::new("internal", "the catalog could not answer this query")
        }
    }
}
