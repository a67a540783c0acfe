//! Replacing and removing targets, sources and policies (`PUT` and `DELETE` on
//! `/v1/{targets,sources,policies}/{id}`; `GET` is in [`crate::v1::data`]).
//!
//! A `PUT` replaces everything of the object that may change; what is fixed when it is added
//! (a target's kind and location, a source's kind and host, a policy's source and target) is
//! not in its body. Both honour `If-Match` with the `ETag` a `GET` gave (412 `stale_version`
//! when the object changed since) and answer the new `ETag`.
//!
//! A target or source still in use is not removed (409 `in_use`, naming who uses it): a
//! policy backing up to a removed target would fail at every firing. The check reads the
//! catalog once it has applied every event written before the request, so an object
//! created before the `DELETE` was sent is always seen.

use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use arca_bus::ExecuteError;
use arca_bus::query::APPLIED_HEADER;
use arca_domain::policy::{Policy, PolicyCommand, PolicyStatus};
use arca_domain::source::{Source, SourceCommand};
use arca_domain::target::{Target, TargetCommand};
use arca_domain::{DomainError, Lifecycle};
use arca_events::{AggregateType, PolicyId, SourceId, TargetId, TenantId};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;
use uuid::Uuid;

use super::data::if_match;
use super::{
    Credentials, Data, MisfireBody, ModeBody, PolicySettings, Result, RetentionBody, ScheduleBody, TenantParams,
    require_targets, seal_credentials,
};
use crate::auth::Authorized;
use crate::observe::command_metadata;
use crate::problem::{ApiError, Problem};
use crate::state::AppState;

/// What a replace changed: the object's id and its new version (also its `ETag`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Replaced {
    pub id: Uuid,
    /// The object's version now; send it as `If-Match: "<version>"` with the next change.
    #[schema(format = "uint64")]
    pub version: u64,
}

pub(super) fn replaced(id: impl Into<Uuid>, version: u64) -> HttpResponse {
    HttpResponse::Ok().insert_header(("ETag", format!("\"{version}\""))).json(Replaced { id: id.into(), version })
}

// ---- Targets ----

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(
    json!({ "name": "primary" }),
    json!({
        "name": "offsite", "settings": { "endpoint": "https://s3.example.com", "region": "eu-central-1" },
        "credentials": { "access_key_id": "AKIAEXAMPLE", "secret_access_key": "example-secret" }
    })
))]
pub struct ReplaceTarget {
    #[schema(min_length = 1)]
    pub name: String,
    /// Non-secret settings: `endpoint`, `region`, `account_name` (replaced as a whole).
    #[serde(default)]
    pub settings: std::collections::BTreeMap<String, String>,
    /// Write-only. Left out: the stored credentials stay; given: they replace the stored ones
    /// (`{}` removes them).
    pub credentials: Option<Credentials>,
}

/// Replace a target's name, settings and credentials (tenant admins; honours `If-Match`).
/// Its kind and location are fixed: moving a repository is a copy to a new target.
#[utoipa::path(put, path = "/v1/targets/{id}", tag = "targets", request_body = ReplaceTarget,
    params(("id" = Uuid, Path, description = "The target"), TenantParams, IfMatch),
    responses((status = 200, body = Replaced, headers(("ETag" = String, description = "The new version"))),
        (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = [])))]
pub async fn replace_target(
    req: HttpRequest,
    auth: Authorized,
    state: Data,
    id: web::Path<Uuid>,
    _tenant: web::Query<TenantParams>,
    body: web::Json<ReplaceTarget>,
) -> Result<HttpResponse> {
    let expected = if_match(&req)?;
    let id = TargetId::from(id.into_inner());
    let ReplaceTarget { name, settings, credentials } = body.into_inner();
    // Found and current before anything is sealed: a refused request leaves no secret behind.
    let (current, version) = state.store.load_state::<Target>(auth.tenant, id.as_uuid()).await?;
    require_active(current.status, AggregateType::Target)?;
    require_version(expected, version.sequence)?;
    let (credentials, sealed_now) = match credentials {
        None => (current.credentials, None),
        Some(given) => {
            let sealed = seal_credentials(&state, auth.tenant, given).await?;
            (sealed, sealed)
        }
    };
    let command = TargetCommand::Update { name, settings, credentials };
    let outcome =
        state.store.execute_expecting::<Target>(auth.tenant, id, &command, &command_metadata(), expected).await;
    match outcome {
        Ok(committed) => Ok(replaced(id, committed.version.sequence)),
        Err(e) => {
            // Nothing refers to what was sealed for a refused change.
            if let (Some(secrets), Some(sealed)) = (&state.secrets, sealed_now)
                && let Err(e) = secrets.delete(auth.tenant, sealed).await
            {
                tracing::warn!(error = %e, "could not delete the credentials of a refused target change");
            }
            Err(e.into())
        }
    }
}

/// Remove a target (tenant admins; honours `If-Match`). Refused (409 `in_use`) while a policy
/// backs up or copies to it or a replica keeps its points there. Its repository is left as
/// it is.
#[utoipa::path(delete, path = "/v1/targets/{id}", tag = "targets",
    params(("id" = Uuid, Path, description = "The target"), TenantParams, IfMatch),
    responses((status = 204, description = "Removed"), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = [])))]
pub async fn remove_target(
    req: HttpRequest,
    auth: Authorized,
    state: Data,
    id: web::Path<Uuid>,
    _tenant: web::Query<TenantParams>,
) -> Result<HttpResponse> {
    let expected = if_match(&req)?;
    let id = id.into_inner();
    let (current, version) = state.store.load_state::<Target>(auth.tenant, id).await?;
    require_active(current.status, AggregateType::Target)?;
    require_version(expected, version.sequence)?;
    let target = json!(id);
    let mut users = users_of(&state, auth.tenant, ("policies", "policy"), |policy| {
        policy["target_id"] == target
            || policy["copy_targets"].as_array().is_some_and(|copies| copies.contains(&target))
    })
    .await?;
    users.extend(
        users_of(&state, auth.tenant, ("replicas", "replica"), |replica| {
            replica["destination"]["type"] == "target" && replica["destination"]["target"] == target
        })
        .await?,
    );
    refuse_in_use("target", &users)?;
    let target = TargetId::from(id);
    state
        .store
        .execute_expecting::<Target>(auth.tenant, target, &TargetCommand::Remove, &command_metadata(), expected)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

// ---- Sources ----

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({
    "name": "documents", "paths": ["/home", "/etc", "/srv"], "excludes": ["/home/*/.cache"],
    "pre_hook": "app quiesce", "post_hook": "app resume"
})))]
pub struct ReplaceSource {
    #[schema(min_length = 1)]
    pub name: String,
    /// Paths (files), the image (image) or database names (postgres).
    pub paths: Vec<String>,
    #[serde(default)]
    pub excludes: Vec<String>,
    /// Only transport workers with this site label read it.
    pub site: Option<String>,
    pub pre_hook: Option<String>,
    pub post_hook: Option<String>,
    /// For an image a running qemu has open (see adding a source).
    pub qemu: Option<super::QemuBody>,
}

/// Replace a source's name, paths, excludes, site and hooks (tenant admins; honours
/// `If-Match`). Its kind and host are fixed.
#[utoipa::path(put, path = "/v1/sources/{id}", tag = "sources", request_body = ReplaceSource,
    params(("id" = Uuid, Path, description = "The source"), TenantParams, IfMatch),
    responses((status = 200, body = Replaced, headers(("ETag" = String, description = "The new version"))),
        (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = [])))]
pub async fn replace_source(
    req: HttpRequest,
    auth: Authorized,
    state: Data,
    id: web::Path<Uuid>,
    _tenant: web::Query<TenantParams>,
    body: web::Json<ReplaceSource>,
) -> Result<HttpResponse> {
    let expected = if_match(&req)?;
    let id = SourceId::from(id.into_inner());
    let ReplaceSource { name, paths, excludes, site, pre_hook, post_hook, qemu } = body.into_inner();
    let qemu = qemu.map(Into::into);
    let command = SourceCommand::Update { name, paths, excludes, site, pre_hook, post_hook, qemu };
    let committed =
        state.store.execute_expecting::<Source>(auth.tenant, id, &command, &command_metadata(), expected).await?;
    Ok(replaced(id, committed.version.sequence))
}

/// Remove a source (tenant admins; honours `If-Match`). Refused (409 `in_use`) while a policy
/// backs it up or a replica follows it. Its snapshots stay.
#[utoipa::path(delete, path = "/v1/sources/{id}", tag = "sources",
    params(("id" = Uuid, Path, description = "The source"), TenantParams, IfMatch),
    responses((status = 204, description = "Removed"), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = [])))]
pub async fn remove_source(
    req: HttpRequest,
    auth: Authorized,
    state: Data,
    id: web::Path<Uuid>,
    _tenant: web::Query<TenantParams>,
) -> Result<HttpResponse> {
    let expected = if_match(&req)?;
    let id = id.into_inner();
    let (current, version) = state.store.load_state::<Source>(auth.tenant, id).await?;
    require_active(current.status, AggregateType::Source)?;
    require_version(expected, version.sequence)?;
    let source = json!(id);
    let mut users =
        users_of(&state, auth.tenant, ("policies", "policy"), |policy| policy["source_id"] == source).await?;
    users.extend(
        users_of(&state, auth.tenant, ("replicas", "replica"), |replica| replica["source_id"] == source).await?,
    );
    refuse_in_use("source", &users)?;
    let source = SourceId::from(id);
    state
        .store
        .execute_expecting::<Source>(auth.tenant, source, &SourceCommand::Remove, &command_metadata(), expected)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

// ---- Policies ----

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({
    "name": "nightly",
    "schedule": { "type": "cron", "expression": "30 1 * * *", "timezone": "Europe/Berlin" },
    "retention": { "keep_daily": 14, "keep_weekly": 8 },
    "verify_every_seconds": 604800
})))]
pub struct ReplacePolicy {
    #[schema(min_length = 1)]
    pub name: String,
    pub schedule: ScheduleBody,
    #[serde(default)]
    pub misfire: MisfireBody,
    #[serde(default)]
    pub mode: ModeBody,
    #[serde(default)]
    pub retention: RetentionBody,
    /// Copy each backup to these targets too.
    #[serde(default)]
    pub copy_targets: Vec<Uuid>,
    /// Verify the target every this many seconds: a minute to 366 days.
    #[schema(minimum = 60, maximum = 31_622_400)]
    pub verify_every_seconds: Option<u64>,
}

/// Replace a policy's name, schedule, mode, retention, copy targets and verify schedule
/// (tenant admins; honours `If-Match`). Its source and target are fixed; a paused policy stays
/// paused.
#[utoipa::path(put, path = "/v1/policies/{id}", tag = "policies", request_body = ReplacePolicy,
    params(("id" = Uuid, Path, description = "The policy"), TenantParams, IfMatch),
    responses((status = 200, body = Replaced, headers(("ETag" = String, description = "The new version"))),
        (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = [])))]
pub async fn replace_policy(
    req: HttpRequest,
    auth: Authorized,
    state: Data,
    id: web::Path<Uuid>,
    _tenant: web::Query<TenantParams>,
    body: web::Json<ReplacePolicy>,
) -> Result<HttpResponse> {
    let expected = if_match(&req)?;
    let id = PolicyId::from(id.into_inner());
    let body = body.into_inner();
    // The policy first, so another tenant's id is 404 whatever the body names.
    let (current, _) = state.store.load_state::<Policy>(auth.tenant, id.as_uuid()).await?;
    match current.status {
        PolicyStatus::Missing => return Err(DomainError::NotFound { aggregate: AggregateType::Policy }.into()),
        PolicyStatus::Deleted => return Err(DomainError::Removed { aggregate: AggregateType::Policy }.into()),
        PolicyStatus::Active | PolicyStatus::Paused => {}
    }
    require_targets(&state, auth.tenant, "copy_targets", &body.copy_targets).await?;
    let settings = PolicySettings::new(
        &body.schedule,
        body.misfire,
        body.mode,
        body.retention,
        &body.copy_targets,
        body.verify_every_seconds,
    );
    let command = PolicyCommand::Update {
        name: body.name,
        schedule: settings.schedule,
        misfire: settings.misfire,
        mode: settings.mode,
        retention: settings.retention,
        copy_targets: settings.copy_targets,
        verify_schedule: settings.verify_schedule,
    };
    let committed =
        state.store.execute_expecting::<Policy>(auth.tenant, id, &command, &command_metadata(), expected).await?;
    Ok(replaced(id, committed.version.sequence))
}

/// Delete a policy (tenant admins; honours `If-Match`): it fires no more. Its snapshots stay;
/// a job it started runs to its end.
#[utoipa::path(delete, path = "/v1/policies/{id}", tag = "policies",
    params(("id" = Uuid, Path, description = "The policy"), TenantParams, IfMatch),
    responses((status = 204, description = "Deleted"), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = [])))]
pub async fn delete_policy(
    req: HttpRequest,
    auth: Authorized,
    state: Data,
    id: web::Path<Uuid>,
    _tenant: web::Query<TenantParams>,
) -> Result<HttpResponse> {
    let expected = if_match(&req)?;
    let id = PolicyId::from(id.into_inner());
    state
        .store
        .execute_expecting::<Policy>(auth.tenant, id, &PolicyCommand::Delete, &command_metadata(), expected)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

// ---- Shared ----

/// The `If-Match` request header, as the spec shows it.
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IfMatch {
    /// The `ETag` of the version the change is based on (`"3"`); refused with 412 when the
    /// object has changed since. Left out, the change applies to whatever version is current.
    #[param(rename = "If-Match")]
    pub if_match: Option<String>,
}

fn require_active(status: Lifecycle, aggregate: AggregateType) -> Result<()> {
    match status {
        Lifecycle::Missing => Err(DomainError::NotFound { aggregate }.into()),
        Lifecycle::Removed => Err(DomainError::Removed { aggregate }.into()),
        Lifecycle::Active => Ok(()),
    }
}

fn require_version(expected: Option<u64>, current: u64) -> Result<()> {
    match expected {
        Some(expected) if expected != current => Err(ExecuteError::Stale { expected, current }.into()),
        _ => Ok(()),
    }
}

/// How long a removal waits for the catalog to apply what was written before it.
const CATALOG_CATCH_UP: Duration = Duration::from_secs(5);

/// `` <noun> `<name>` (<id>) `` for each row of catalog list `<resource>.list` of `tenant`
/// that `uses` picks, read from a catalog that has applied every event written before this
/// call.
async fn users_of(
    state: &AppState,
    tenant: TenantId,
    (resource, noun): (&str, &str),
    uses: impl Fn(&Value) -> bool,
) -> Result<Vec<String>> {
    let written = state.store.last_sequence().await?;
    let deadline = Instant::now() + CATALOG_CATCH_UP;
    let mut found = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = json!({ "tenant": tenant, "limit": super::MAX_PAGE_LIMIT, "cursor": cursor });
        let answer = state.catalog_raw(&format!("{resource}.list"), &query).await?;
        let applied = answer.header(APPLIED_HEADER).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        if applied < written {
            // Behind: start again from the first page once it has caught up.
            if Instant::now() > deadline {
                return Err(ApiError::unavailable("the catalog is behind the event log; try again"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            found.clear();
            cursor = None;
            continue;
        }
        let page: super::Page = serde_json::from_slice(&answer.json)
            .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "an unreadable catalog page"))?;
        found.extend(page.items.iter().filter(|row| uses(row)).map(|row| {
            format!("{noun} `{}` ({})", row["name"].as_str().unwrap_or("?"), row["id"].as_str().unwrap_or("?"))
        }));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(found),
        }
    }
}

fn refuse_in_use(what: &str, users: &[String]) -> Result<()> {
    if users.is_empty() {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "in_use",
        format!("the {what} is in use by {}; delete or change those first", users.join(", ")),
    ))
}
