//! Reading one object, snapshots (browse, lock, forget), file search, usage, audit, and
//! the keys of a tenant.
//!
//! Objects read by id carry an `ETag` (their version: the number of events in their
//! history); a write that sends `If-Match` with it is refused with 412 when the object has
//! changed since. A read by id reflects every change of the object stored before it (see
//! `get` in [`crate::v1`]), so a client reads its own writes and their versions.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use arca_domain::api_key::{ApiKey, ApiKeyCommand};
use arca_domain::job::JobCommand;
use arca_domain::snapshot::{Snapshot, SnapshotCommand};
use arca_events::{AggregateType, ApiKeyId, JobId, JobKind, SnapshotId, Trigger};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{Data, ListParams, Page, Result, StartedJob, TenantParams, get, list, page_limit};
use crate::auth::Authorized;
use crate::observe::command_metadata;
use crate::problem::{ApiError, Problem};

/// The version `If-Match` names (`"3"`), `None` without the header or with `*`.
pub fn if_match(req: &HttpRequest) -> Result<Option<u64>> {
    let Some(value) = req.headers().get(actix_web::http::header::IF_MATCH) else { return Ok(None) };
    let text = value.to_str().unwrap_or_default().trim();
    if text == "*" {
        return Ok(None);
    }
    text.strip_prefix("W/")
        .unwrap_or(text)
        .trim_matches('"')
        .parse()
        .map(Some)
        .map_err(|_| ApiError::bad_request("invalid_if_match", "`If-Match` is an ETag of this API: `\"<version>\"`"))
}

macro_rules! get_by_id {
    ($name:ident, $path:literal, $tag:literal, $query:literal, $aggregate:expr, $what:literal) => {
        #[doc = concat!("One ", $what, " (with its version as `ETag`).")]
        #[utoipa::path(get, path = $path, tag = $tag,
            params(("id" = Uuid, Path, description = $what), TenantParams),
            responses((status = 200, body = Object), (status = "4XX", body = Problem, content_type = "application/problem+json")),
            security(("api_key" = [])))]
        pub async fn $name(
            auth: Authorized,
            state: Data,
            id: web::Path<Uuid>,
            _tenant: web::Query<TenantParams>,
        ) -> Result<HttpResponse> {
            get(&state, $query, $aggregate, auth, id.into_inner()).await
        }
    };
}

get_by_id!(get_target, "/v1/targets/{id}", "targets", "targets", AggregateType::Target, "target");
get_by_id!(get_source, "/v1/sources/{id}", "sources", "sources", AggregateType::Source, "source");
get_by_id!(get_policy, "/v1/policies/{id}", "policies", "policies", AggregateType::Policy, "policy");
get_by_id!(get_snapshot, "/v1/snapshots/{id}", "snapshots", "snapshots", AggregateType::Snapshot, "snapshot");

/// One tenant (MSP admins, and the tenant's own keys).
#[utoipa::path(get, path = "/v1/tenants/{tenant}", tag = "tenants",
    params(("tenant" = Uuid, Path, description = "The tenant")),
    responses((status = 200, body = Object), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = [])))]
pub async fn get_tenant(auth: Authorized, state: Data, _tenant: web::Path<Uuid>) -> Result<HttpResponse> {
    get(&state, "tenants", AggregateType::Tenant, auth, auth.tenant.as_uuid()).await
}

// ---- Snapshots ----

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TreeParams {
    /// The folder (default: the top).
    pub path: Option<String>,
    /// Rows per page (1 to 500, default 50).
    #[param(minimum = 1, maximum = 500, example = 50)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    #[param(min_length = 1)]
    pub cursor: Option<String>,
    pub tenant: Option<Uuid>,
}

/// Browse a snapshot: the direct children of one folder, a page at a time.
#[utoipa::path(get, path = "/v1/snapshots/{id}/tree", tag = "snapshots",
    params(("id" = Uuid, Path, description = "The snapshot"), TreeParams),
    responses((status = 200, body = Page), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = [])))]
pub async fn snapshot_tree(
    auth: Authorized,
    state: Data,
    id: web::Path<Uuid>,
    query: web::Query<TreeParams>,
) -> Result<HttpResponse> {
    let query = query.into_inner();
    let request = json!({
        "tenant": auth.tenant,
        "snapshot": id.into_inner(),
        "path": query.path.unwrap_or_default(),
        "limit": page_limit(query.limit)?,
        "cursor": query.cursor,
    });
    let page: Page = state.catalog("files.list", request).await?;
    Ok(HttpResponse::Ok().json(page))
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({ "until": "2030-01-01T00:00:00Z" })))]
pub struct LockSnapshot {
    /// Kept by every forget and prune until then (RFC 3339); a later date extends a lock.
    #[schema(value_type = String, format = DateTime)]
    pub until: DateTime<Utc>,
}

/// Lock a snapshot until a date (operators and up; honours `If-Match`).
#[utoipa::path(post, path = "/v1/snapshots/{id}/lock", tag = "snapshots", request_body = LockSnapshot,
    params(("id" = Uuid, Path, description = "The snapshot"), TenantParams),
    responses((status = 200, body = Object), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = [])))]
pub async fn lock_snapshot(
    req: HttpRequest,
    auth: Authorized,
    state: Data,
    id: web::Path<Uuid>,
    _tenant: web::Query<TenantParams>,
    body: web::Json<LockSnapshot>,
) -> Result<HttpResponse> {
    let id = SnapshotId::from(id.into_inner());
    let command = SnapshotCommand::Lock { until: body.until };
    let committed = state
        .store
        .execute_expecting::<Snapshot>(auth.tenant, id, &command, &command_metadata(), if_match(&req)?)
        .await?;
    Ok(HttpResponse::Ok()
        .insert_header(("ETag", format!("\"{}\"", committed.version.sequence)))
        .json(json!({ "snapshot": id, "locked_until": committed.state.locked_until })))
}

/// Forget a snapshot (tenant admins): a forget job removes it from its repository unless it
/// is locked; a prune follows and frees its space.
#[utoipa::path(post, path = "/v1/snapshots/{id}/forget", tag = "snapshots",
    params(("id" = Uuid, Path, description = "The snapshot"), TenantParams),
    responses((status = 202, body = StartedJob), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = [])))]
pub async fn forget_snapshot(
    req: HttpRequest,
    auth: Authorized,
    state: Data,
    id: web::Path<Uuid>,
    _tenant: web::Query<TenantParams>,
) -> Result<HttpResponse> {
    let id = SnapshotId::from(id.into_inner());
    let work = async {
        let (snapshot, _) = state.store.load_state::<Snapshot>(auth.tenant, id.as_uuid()).await?;
        let commit = match snapshot.commit {
            Some(commit) if !snapshot.forgotten => commit,
            _ => return Err(ApiError::not_found()),
        };
        if let Some(until) = snapshot.locked_until.filter(|until| *until > Utc::now()) {
            return Err(ApiError::new(StatusCode::CONFLICT, "snapshot_locked", format!("locked until {until}")));
        }
        let command = JobCommand::Request {
            kind: JobKind::Forget,
            trigger: Trigger::Manual,
            policy: None,
            source: None,
            target: Some(commit.target),
            snapshot: Some(id),
            mode: None,
            site: None,
        };
        let job = JobId::new();
        arca_worker::runner::start_job(&state.store, auth.tenant, job, &command, &command_metadata()).await?;
        Ok((StatusCode::ACCEPTED, json!(StartedJob { job: job.into() })))
    };
    state.idempotency.answer(&req, &auth, &(), work).await
}

// ---- Files ----

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FileSearchParams {
    /// A path (`/home/ann/report.pdf`), a folder (`/home/ann/`: everything below it) or a glob
    /// (`/home/*/report.pdf`, `**/*.pdf`).
    #[param(min_length = 1)]
    pub path: String,
    /// Only this source's snapshots.
    pub source: Option<Uuid>,
    /// Rows per page (1 to 500, default 50).
    #[param(minimum = 1, maximum = 500, example = 50)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    #[param(min_length = 1)]
    pub cursor: Option<String>,
    pub tenant: Option<Uuid>,
}

/// Find a path across every snapshot: each version with the snapshots that hold it.
#[utoipa::path(get, path = "/v1/files", tag = "files", params(FileSearchParams),
    responses((status = 200, body = Page), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = [])))]
pub async fn search_files(auth: Authorized, state: Data, query: web::Query<FileSearchParams>) -> Result<HttpResponse> {
    let query = query.into_inner();
    let request = json!({
        "tenant": auth.tenant,
        "path": query.path,
        "series": query.source,
        "limit": page_limit(query.limit)?,
        "cursor": query.cursor,
    });
    let page: Page = state.catalog("files.search", request).await?;
    Ok(HttpResponse::Ok().json(page))
}

// ---- Usage and audit ----

/// What a tenant stores and may store.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    pub tenant: Uuid,
    /// Stored bytes across the tenant's repositories, as last reported by storage.
    pub used_bytes: u64,
    /// `null`: no quota.
    pub quota_bytes: Option<u64>,
}

/// The tenant's storage use and quota.
#[utoipa::path(get, path = "/v1/usage", tag = "usage", params(TenantParams),
    responses((status = 200, body = Usage), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = [])))]
pub async fn usage(auth: Authorized, state: Data, _tenant: web::Query<TenantParams>) -> Result<HttpResponse> {
    let row: serde_json::Value =
        state.catalog("tenants.get", json!({ "tenant": auth.tenant, "id": auth.tenant })).await?;
    Ok(HttpResponse::Ok().json(Usage {
        tenant: auth.tenant.as_uuid(),
        used_bytes: row["used_bytes"].as_u64().unwrap_or(0),
        quota_bytes: row["quota_bytes"].as_u64(),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Only one kind of object.
    #[param(value_type = Option<AuditKind>, inline)]
    pub aggregate_type: Option<String>,
    /// Only one object's history.
    pub aggregate_id: Option<Uuid>,
    /// Rows per page (1 to 500, default 50).
    #[param(minimum = 1, maximum = 500, example = 50)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    #[param(min_length = 1)]
    pub cursor: Option<String>,
    pub tenant: Option<Uuid>,
}

/// A kind of object, as the audit trail names it.
// Every `arca_events::AggregateType` (a test below keeps the two the same).
#[derive(Clone, Copy, Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    Tenant,
    ApiKey,
    Target,
    Source,
    Policy,
    Job,
    Snapshot,
    Restore,
    Replica,
    Export,
}

/// The tenant's audit trail: every change, newest first, with who caused it.
#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(AuditParams),
    responses((status = 200, body = Page), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = [])))]
pub async fn audit(auth: Authorized, state: Data, query: web::Query<AuditParams>) -> Result<HttpResponse> {
    let query = query.into_inner();
    if let Some(kind) = &query.aggregate_type
        && arca_events::AggregateType::parse(kind).is_none()
    {
        return Err(ApiError::bad_request("invalid_query", format!("`{kind}` is not a kind of object"))
            .with_field("aggregate_type"));
    }
    let page = ListParams { limit: query.limit, cursor: query.cursor, tenant: query.tenant };
    let filter = json!({ "aggregate_type": query.aggregate_type, "aggregate_id": query.aggregate_id });
    list(&state, "audit", Some(auth), &page, filter).await
}

// ---- API keys of a tenant ----

/// List a tenant's API keys (tenant admins; never the keys themselves).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/api-keys", tag = "api-keys", params(("tenant" = Uuid, Path, description = "The tenant"), ListParams),
    responses((status = 200, body = Page), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = [])))]
pub async fn list_api_keys(
    auth: Authorized,
    state: Data,
    _tenant: web::Path<Uuid>,
    page: web::Query<ListParams>,
) -> Result<HttpResponse> {
    list(&state, "api_keys", Some(auth), &page, json!({})).await
}

/// Revoke an API key (tenant admins; honours `If-Match`): it stops working at once.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/api-keys/{id}", tag = "api-keys",
    params(("tenant" = Uuid, Path, description = "The tenant"), ("id" = Uuid, Path, description = "The key")),
    responses((status = 204), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = [])))]
pub async fn revoke_api_key(
    req: HttpRequest,
    auth: Authorized,
    state: Data,
    path: web::Path<(Uuid, Uuid)>,
) -> Result<HttpResponse> {
    let id = ApiKeyId::from(path.into_inner().1);
    let command = ApiKeyCommand::Revoke { reason: Some(format!("revoked through the API by key {}", auth.key)) };
    state.store.execute_expecting::<ApiKey>(auth.tenant, id, &command, &command_metadata(), if_match(&req)?).await?;
    // Refused from the next request on, before the catalog (or the event) catches up.
    state.keys.revoke(id.as_uuid(), std::time::Instant::now());
    Ok(HttpResponse::NoContent().finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_lists_every_kind_of_object_the_audit_trail_takes() {
        let schema = serde_json::to_value(<AuditKind as utoipa::PartialSchema>::schema()).unwrap();
        let mut listed: Vec<&str> = schema["enum"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        let mut kinds: Vec<&str> = arca_events::AggregateType::ALL.iter().map(|kind| kind.as_str()).collect();
        listed.sort_unstable();
        kinds.sort_unstable();
        assert_eq!(listed, kinds);
    }
}
