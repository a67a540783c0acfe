//! Read-model queries: plain async functions over a connection, every one scoped to a tenant
//! (except [`list_tenants`]/[`get_tenant`], which are the MSP's view, and
//! [`find_api_key_by_hash`], which authentication uses before it knows the tenant).
//!
//! Lists page with an opaque cursor: base64 of the last row's id. Ids are UUIDv7, so id order is
//! creation order; most lists run oldest first, jobs, snapshots and the audit log newest first.
//! A page holds at most `limit` rows (1..=500, default 50) and `next_cursor` is set only when
//! more rows follow.

use arca_events::{
    AggregateType, ApiKeyId, JobId, JobKind, PolicyId, ReplicaId, RestoreId, SnapshotId, SourceId, TargetId, TenantId,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, DatabaseConnection, EntityTrait, FromQueryResult, Order, QueryFilter, QueryOrder, QuerySelect, Select,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::entities::jobs::JobStatus;
use crate::entities::*;
use crate::error::{CatalogError, db_err};

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 500;

pub type TenantRow = tenants::Model;
pub type ApiKeyRow = api_keys::Model;
pub type TargetRow = targets::Model;
pub type SourceRow = sources::Model;
pub type PolicyRow = policies::Model;
pub type JobRow = jobs::Model;
pub type SnapshotRow = snapshots::Model;
pub type ReplicaRow = replicas::Model;
pub type RestoreRow = restores::Model;
pub type AuditRow = audit_events::Model;

/// Which page: at most `limit` rows after `cursor` (the previous page's `next_cursor`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PageRequest {
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

impl PageRequest {
    pub fn first(limit: u32) -> Self {
        Self { limit: Some(limit), cursor: None }
    }

    pub fn after(limit: u32, cursor: impl Into<String>) -> Self {
        Self { limit: Some(limit), cursor: Some(cursor.into()) }
    }

    /// The limit, clamped to 1..=[`MAX_LIMIT`].
    pub fn limit(&self) -> u64 {
        u64::from(self.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT))
    }
}

/// One page of rows, and the cursor of the next page when there is one.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct JobFilter {
    pub status: Option<JobStatus>,
    pub kind: Option<JobKind>,
    /// Jobs on this target (a backup's, a copy's destination, a prune's, …).
    pub target: Option<TargetId>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SnapshotFilter {
    pub source: Option<SourceId>,
    pub target: Option<TargetId>,
    /// Forgotten snapshots are left out unless asked for.
    pub include_forgotten: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuditFilter {
    pub aggregate_type: Option<AggregateType>,
    /// One aggregate's history.
    pub aggregate_id: Option<Uuid>,
}

// ---- Tenants (the MSP's view) ----

pub async fn list_tenants(db: &DatabaseConnection, page: &PageRequest) -> Result<Page<TenantRow>, CatalogError> {
    list_by_id(db, tenants::Entity::find(), tenants::Column::Id, Order::Asc, page, |row| row.id).await
}

pub async fn get_tenant(db: &DatabaseConnection, tenant: TenantId) -> Result<Option<TenantRow>, CatalogError> {
    tenants::Entity::find_by_id(tenant.as_uuid()).one(db).await.map_err(db_err("get a tenant"))
}

// ---- API keys ----

pub async fn list_api_keys(
    db: &DatabaseConnection,
    tenant: TenantId,
    page: &PageRequest,
) -> Result<Page<ApiKeyRow>, CatalogError> {
    let select = api_keys::Entity::find().filter(api_keys::Column::TenantId.eq(tenant.as_uuid()));
    list_by_id(db, select, api_keys::Column::Id, Order::Asc, page, |row| row.id).await
}

pub async fn get_api_key(
    db: &DatabaseConnection,
    tenant: TenantId,
    id: ApiKeyId,
) -> Result<Option<ApiKeyRow>, CatalogError> {
    get_in_tenant(db, api_keys::Entity::find_by_id(id.as_uuid()), api_keys::Column::TenantId, tenant).await
}

/// The key with this hash (hex SHA-256 of the whole key), whatever its tenant and status: the
/// caller checks `status` and `expires_at`.
pub async fn find_api_key_by_hash(db: &DatabaseConnection, hash: &str) -> Result<Option<ApiKeyRow>, CatalogError> {
    api_keys::Entity::find()
        .filter(api_keys::Column::Hash.eq(hash))
        .one(db)
        .await
        .map_err(db_err("find an API key by hash"))
}

// ---- Targets, sources, policies ----

pub async fn list_targets(
    db: &DatabaseConnection,
    tenant: TenantId,
    page: &PageRequest,
) -> Result<Page<TargetRow>, CatalogError> {
    let select = targets::Entity::find().filter(targets::Column::TenantId.eq(tenant.as_uuid()));
    list_by_id(db, select, targets::Column::Id, Order::Asc, page, |row| row.id).await
}

pub async fn get_target(
    db: &DatabaseConnection,
    tenant: TenantId,
    id: TargetId,
) -> Result<Option<TargetRow>, CatalogError> {
    get_in_tenant(db, targets::Entity::find_by_id(id.as_uuid()), targets::Column::TenantId, tenant).await
}

pub async fn list_sources(
    db: &DatabaseConnection,
    tenant: TenantId,
    page: &PageRequest,
) -> Result<Page<SourceRow>, CatalogError> {
    let select = sources::Entity::find().filter(sources::Column::TenantId.eq(tenant.as_uuid()));
    list_by_id(db, select, sources::Column::Id, Order::Asc, page, |row| row.id).await
}

pub async fn get_source(
    db: &DatabaseConnection,
    tenant: TenantId,
    id: SourceId,
) -> Result<Option<SourceRow>, CatalogError> {
    get_in_tenant(db, sources::Entity::find_by_id(id.as_uuid()), sources::Column::TenantId, tenant).await
}

pub async fn list_policies(
    db: &DatabaseConnection,
    tenant: TenantId,
    page: &PageRequest,
) -> Result<Page<PolicyRow>, CatalogError> {
    let select = policies::Entity::find().filter(policies::Column::TenantId.eq(tenant.as_uuid()));
    list_by_id(db, select, policies::Column::Id, Order::Asc, page, |row| row.id).await
}

pub async fn get_policy(
    db: &DatabaseConnection,
    tenant: TenantId,
    id: PolicyId,
) -> Result<Option<PolicyRow>, CatalogError> {
    get_in_tenant(db, policies::Entity::find_by_id(id.as_uuid()), policies::Column::TenantId, tenant).await
}

// ---- Jobs ----

/// Newest first.
pub async fn list_jobs(
    db: &DatabaseConnection,
    tenant: TenantId,
    filter: &JobFilter,
    page: &PageRequest,
) -> Result<Page<JobRow>, CatalogError> {
    let mut select = jobs::Entity::find().filter(jobs::Column::TenantId.eq(tenant.as_uuid()));
    if let Some(status) = filter.status {
        select = select.filter(jobs::Column::Status.eq(status.as_str()));
    }
    if let Some(kind) = filter.kind {
        select = select.filter(jobs::Column::Kind.eq(kind.as_str()));
    }
    if let Some(target) = filter.target {
        select = select.filter(jobs::Column::TargetId.eq(target.as_uuid()));
    }
    list_by_id(db, select, jobs::Column::Id, Order::Desc, page, |row| row.id).await
}

pub async fn get_job(db: &DatabaseConnection, tenant: TenantId, id: JobId) -> Result<Option<JobRow>, CatalogError> {
    get_in_tenant(db, jobs::Entity::find_by_id(id.as_uuid()), jobs::Column::TenantId, tenant).await
}

// ---- Snapshots ----

/// Newest first.
pub async fn list_snapshots(
    db: &DatabaseConnection,
    tenant: TenantId,
    filter: &SnapshotFilter,
    page: &PageRequest,
) -> Result<Page<SnapshotRow>, CatalogError> {
    let select = snapshots_of(tenant, filter);
    list_by_id(db, select, snapshots::Column::Id, Order::Desc, page, |row| row.id).await
}

/// One snapshot of a listed page, its fields in name order: as a page of
/// [`SnapshotRow`]s reads once turned into JSON values (whose objects sort their keys), which
/// is what the API has always answered.
#[derive(Clone, Debug, PartialEq, Eq, FromQueryResult, Serialize)]
pub struct SnapshotItem {
    pub added_bytes: i64,
    pub created_at: DateTime<Utc>,
    pub files: i64,
    pub forgotten_by_job_id: Option<Uuid>,
    pub host: String,
    pub id: Uuid,
    pub job_id: Option<Uuid>,
    pub locked_until: Option<DateTime<Utc>>,
    pub partial: bool,
    #[serde(serialize_with = "crate::entities::json_text")]
    pub paths: String,
    pub policy_id: Option<Uuid>,
    pub repo_snapshot: String,
    pub size_bytes: i64,
    pub source_id: Option<Uuid>,
    pub status: String,
    #[serde(serialize_with = "crate::entities::json_text")]
    pub tags: String,
    pub target_id: Uuid,
    pub tenant_id: Uuid,
    pub time: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

/// [`list_snapshots`] as the JSON of its page (`{"items":[…],"next_cursor":…}`), built
/// straight from the rows: what `arca.q.catalog.snapshots.list` answers.
pub async fn list_snapshots_json(
    db: &DatabaseConnection,
    tenant: TenantId,
    filter: &SnapshotFilter,
    page: &PageRequest,
) -> Result<Vec<u8>, CatalogError> {
    let limit = page.limit();
    let rows = page_select(snapshots_of(tenant, filter), snapshots::Column::Id, Order::Desc, page)?
        .into_model::<SnapshotItem>()
        .all(db)
        .await
        .map_err(db_err("list snapshots"))?;
    let page = into_page(rows, limit, |row| row.id.hyphenated().to_string());
    Ok(serde_json::to_vec(&page).expect("a page of snapshots serialises"))
}

fn snapshots_of(tenant: TenantId, filter: &SnapshotFilter) -> Select<snapshots::Entity> {
    let mut select = snapshots::Entity::find().filter(snapshots::Column::TenantId.eq(tenant.as_uuid()));
    if let Some(source) = filter.source {
        select = select.filter(snapshots::Column::SourceId.eq(source.as_uuid()));
    }
    if let Some(target) = filter.target {
        select = select.filter(snapshots::Column::TargetId.eq(target.as_uuid()));
    }
    if !filter.include_forgotten {
        select = select.filter(snapshots::Column::Status.ne("forgotten"));
    }
    select
}

/// Any snapshot of the tenant, forgotten ones included.
pub async fn get_snapshot(
    db: &DatabaseConnection,
    tenant: TenantId,
    id: SnapshotId,
) -> Result<Option<SnapshotRow>, CatalogError> {
    get_in_tenant(db, snapshots::Entity::find_by_id(id.as_uuid()), snapshots::Column::TenantId, tenant).await
}

// ---- Replicas, restores ----

pub async fn list_replicas(
    db: &DatabaseConnection,
    tenant: TenantId,
    page: &PageRequest,
) -> Result<Page<ReplicaRow>, CatalogError> {
    let select = replicas::Entity::find().filter(replicas::Column::TenantId.eq(tenant.as_uuid()));
    list_by_id(db, select, replicas::Column::Id, Order::Asc, page, |row| row.id).await
}

pub async fn get_replica(
    db: &DatabaseConnection,
    tenant: TenantId,
    id: ReplicaId,
) -> Result<Option<ReplicaRow>, CatalogError> {
    get_in_tenant(db, replicas::Entity::find_by_id(id.as_uuid()), replicas::Column::TenantId, tenant).await
}

/// Newest first.
pub async fn list_restores(
    db: &DatabaseConnection,
    tenant: TenantId,
    page: &PageRequest,
) -> Result<Page<RestoreRow>, CatalogError> {
    let select = restores::Entity::find().filter(restores::Column::TenantId.eq(tenant.as_uuid()));
    list_by_id(db, select, restores::Column::Id, Order::Desc, page, |row| row.id).await
}

pub async fn get_restore(
    db: &DatabaseConnection,
    tenant: TenantId,
    id: RestoreId,
) -> Result<Option<RestoreRow>, CatalogError> {
    get_in_tenant(db, restores::Entity::find_by_id(id.as_uuid()), restores::Column::TenantId, tenant).await
}

// ---- Audit ----

/// The tenant's events, newest first; the cursor is the stream sequence.
pub async fn list_audit(
    db: &DatabaseConnection,
    tenant: TenantId,
    filter: &AuditFilter,
    page: &PageRequest,
) -> Result<Page<AuditRow>, CatalogError> {
    let mut select = audit_events::Entity::find().filter(audit_events::Column::TenantId.eq(tenant.as_uuid()));
    if let Some(aggregate) = filter.aggregate_type {
        select = select.filter(audit_events::Column::AggregateType.eq(aggregate.as_str()));
    }
    if let Some(id) = filter.aggregate_id {
        select = select.filter(audit_events::Column::AggregateId.eq(id));
    }
    if let Some(cursor) = &page.cursor {
        let before = decode_cursor(cursor)?.parse::<i64>().map_err(|_| invalid_cursor(cursor))?;
        select = select.filter(audit_events::Column::StreamSequence.lt(before));
    }
    let limit = page.limit();
    let rows = select
        .order_by(audit_events::Column::StreamSequence, Order::Desc)
        .limit(limit + 1)
        .all(db)
        .await
        .map_err(db_err("list audit events"))?;
    Ok(into_page(rows, limit, |row| row.stream_sequence.to_string()))
}

pub async fn get_audit_event(
    db: &DatabaseConnection,
    tenant: TenantId,
    stream_sequence: u64,
) -> Result<Option<AuditRow>, CatalogError> {
    let Ok(stream_sequence) = i64::try_from(stream_sequence) else {
        return Ok(None);
    };
    get_in_tenant(db, audit_events::Entity::find_by_id(stream_sequence), audit_events::Column::TenantId, tenant).await
}

// ---- Helpers ----

async fn get_in_tenant<E: EntityTrait>(
    db: &DatabaseConnection,
    select: Select<E>,
    tenant_column: E::Column,
    tenant: TenantId,
) -> Result<Option<E::Model>, CatalogError> {
    select.filter(tenant_column.eq(tenant.as_uuid())).one(db).await.map_err(db_err("get a row"))
}

/// A page of `select` in `order` of the UUID `id_column`, after the cursor's id.
async fn list_by_id<E: EntityTrait>(
    db: &DatabaseConnection,
    select: Select<E>,
    id_column: E::Column,
    order: Order,
    page: &PageRequest,
    id_of: impl Fn(&E::Model) -> Uuid,
) -> Result<Page<E::Model>, CatalogError> {
    let rows = page_select(select, id_column, order, page)?.all(db).await.map_err(db_err("list rows"))?;
    Ok(into_page(rows, page.limit(), |row| id_of(row).hyphenated().to_string()))
}

/// `select` narrowed to the page: after the cursor's id in `order` of `id_column`, and one
/// row more than the page holds (to learn whether another follows).
fn page_select<E: EntityTrait>(
    mut select: Select<E>,
    id_column: E::Column,
    order: Order,
    page: &PageRequest,
) -> Result<Select<E>, CatalogError> {
    if let Some(cursor) = &page.cursor {
        let after = Uuid::parse_str(&decode_cursor(cursor)?).map_err(|_| invalid_cursor(cursor))?;
        select = match order {
            Order::Desc => select.filter(id_column.lt(after)),
            _ => select.filter(id_column.gt(after)),
        };
    }
    Ok(select.order_by(id_column, order).limit(page.limit() + 1))
}

/// Cuts the one extra row fetched to learn whether another page follows.
pub(crate) fn into_page<T>(mut rows: Vec<T>, limit: u64, key_of: impl Fn(&T) -> String) -> Page<T> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let next_cursor = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(|row| URL_SAFE_NO_PAD.encode(key_of(row)))
    } else {
        None
    };
    Page { items: rows, next_cursor }
}

pub(crate) fn decode_cursor(cursor: &str) -> Result<String, CatalogError> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| invalid_cursor(cursor))?;
    String::from_utf8(bytes).map_err(|_| invalid_cursor(cursor))
}

pub(crate) fn invalid_cursor(cursor: &str) -> CatalogError {
    CatalogError::InvalidCursor(cursor.chars().take(64).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_clamped() {
        assert_eq!(PageRequest::default().limit(), 50);
        assert_eq!(PageRequest::first(0).limit(), 1);
        assert_eq!(PageRequest::first(10_000).limit(), 500);
    }

    #[test]
    fn pages_cut_the_extra_row_and_point_past_the_last_one() {
        let page = into_page(vec![1, 2, 3], 2, |n| n.to_string());
        assert_eq!(page.items, vec![1, 2]);
        assert_eq!(decode_cursor(page.next_cursor.as_deref().unwrap()).unwrap(), "2");
        assert_eq!(into_page(vec![1, 2], 2, |n| n.to_string()).next_cursor, None);
    }

    #[test]
    fn foreign_cursors_are_refused() {
        assert!(matches!(decode_cursor("not base64!"), Err(CatalogError::InvalidCursor(_))));
        assert!(matches!(decode_cursor(&URL_SAFE_NO_PAD.encode([0xff, 0xfe])), Err(CatalogError::InvalidCursor(_))));
    }
}
