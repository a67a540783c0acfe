//! The `/v1` resources. Writes are domain commands through [`EventStore::execute`]; reads are
//! catalog queries over NATS. The scope's middleware ([`crate::auth::authenticate`])
//! authenticates, checks the role and scopes the tenant before a body is read; handlers take
//! the outcome as [`Authorized`].
//!
//! [`EventStore::execute`]: arca_bus::EventStore::execute

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::http::header::ContentType;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use arca_bus::query::APPLIED_HEADER;
use arca_domain::Lifecycle;
use arca_domain::api_key::{ApiKey, ApiKeyCommand};
use arca_domain::job::JobCommand;
use arca_domain::policy::{Policy, PolicyCommand};
use arca_domain::source::{Source, SourceCommand};
use arca_domain::target::{Target, TargetCommand};
use arca_domain::tenant::{Tenant, TenantCommand};
use arca_events::{
    AggregateRef, AggregateType, ApiKeyId, BackupMode, JobId, JobKind, Misfire, PolicyId, Retention, Role, Schedule,
    SourceId, SourceKind, TargetId, TargetKind, TenantId, Trigger,
};
use arca_worker::targets::TargetCredentials;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::{Authorized, hash_key, new_key};
use crate::observe::command_metadata;
use crate::problem::{ApiError, Problem};
use crate::state::AppState;

pub mod data;
pub mod jobs;
pub mod recovery;
pub mod replace;
pub mod replicas;

/// A resource with one route per `method => handler`, answering any other method with 405.
/// (Defined before [`configure`], which uses it: `macro_rules!` scope is textual.)
macro_rules! resource {
    ($path:literal, $($method:ident => $handler:expr),+ $(,)?) => {
        web::resource($path)
            $(.route(web::$method().to($handler)))+
            .default_service(method_not_allowed(&[$(stringify!($method)),+]))
    };
}

/// 405 with `Allow: <methods>` (given in lower case, as the route builders are named).
fn method_not_allowed(methods: &[&str]) -> actix_web::Route {
    let allow = methods.iter().map(|m| m.to_ascii_uppercase()).collect::<Vec<_>>().join(", ");
    web::to(move || {
        let allow = allow.clone();
        async move {
            let detail = format!("this route takes {allow}");
            let mut response =
                ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", detail).error_response();
            let value = actix_web::http::header::HeaderValue::from_str(&allow).expect("method names are header-safe");
            response.headers_mut().insert(actix_web::http::header::ALLOW, value);
            response
        }
    })
}

/// The routes of `/v1`: one resource per path, so a method the path does not take is 405
/// with `Allow` (after authentication: the access table closes unknown methods to all but
/// MSP admins).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/v1")
            .wrap(actix_web::middleware::from_fn(crate::auth::authenticate))
            .service(resource!("/tenants", post => create_tenant, get => list_tenants))
            .service(resource!("/tenants/{tenant}", get => data::get_tenant, patch => update_tenant))
            .service(resource!("/tenants/{tenant}/api-keys", post => create_api_key, get => data::list_api_keys))
            .service(resource!("/tenants/{tenant}/api-keys/{id}", delete => data::revoke_api_key))
            .service(resource!("/targets", post => create_target, get => list_targets))
            .service(resource!(
                "/targets/{id}",
                get => data::get_target,
                put => replace::replace_target,
                delete => replace::remove_target
            ))
            .service(resource!("/sources", post => create_source, get => list_sources))
            .service(resource!(
                "/sources/{id}",
                get => data::get_source,
                put => replace::replace_source,
                delete => replace::remove_source
            ))
            .service(resource!("/policies", post => create_policy, get => list_policies))
            .service(resource!(
                "/policies/{id}",
                get => data::get_policy,
                put => replace::replace_policy,
                delete => replace::delete_policy
            ))
            .service(resource!("/policies/{id}/run", post => run_policy))
            .service(resource!("/jobs", get => list_jobs))
            .service(resource!("/jobs/{id}", get => get_job))
            .service(resource!("/jobs/{id}/cancel", post => jobs::cancel_job))
            .service(resource!("/jobs/{id}/events", get => jobs::job_events))
            .service(resource!("/snapshots", get => list_snapshots))
            .service(resource!("/snapshots/{id}", get => data::get_snapshot))
            .service(resource!("/snapshots/{id}/tree", get => data::snapshot_tree))
            .service(resource!("/snapshots/{id}/lock", post => data::lock_snapshot))
            .service(resource!("/snapshots/{id}/forget", post => data::forget_snapshot))
            .service(resource!("/restores", post => jobs::create_restore, get => jobs::list_restores))
            .service(resource!("/restores/{id}", get => jobs::get_restore))
            .service(resource!("/replicas", post => replicas::create_replica, get => replicas::list_replicas))
            .service(resource!("/replicas/{id}", get => replicas::get_replica, delete => replicas::delete_replica))
            .service(resource!("/replicas/{id}/failover", post => replicas::fail_over))
            .service(resource!("/replicas/{id}/failback", post => replicas::fail_back))
            .service(resource!("/exports", get => recovery::list_exports, post => recovery::create_export))
            .service(resource!("/exports/{id}", get => recovery::get_export, delete => recovery::stop_export))
            .service(resource!("/snapshots/{id}/content", get => recovery::file_content))
            .service(resource!("/snapshots/{id}/archive", get => recovery::folder_archive))
            .service(resource!("/files", get => data::search_files))
            .service(resource!("/usage", get => data::usage))
            .service(resource!("/audit", get => data::audit)),
    );
}

type Data = web::Data<AppState>;
type Result<T> = std::result::Result<T, ApiError>;

/// One page of a list; pass `next_cursor` as `cursor` for the next.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Page {
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<Value>,
    pub next_cursor: Option<String>,
}

/// A page of a list. MSP admins name the tenant with `tenant`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Rows per page (1 to 500, default 50).
    #[param(minimum = 1, maximum = 500, example = 50)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    #[param(min_length = 1)]
    pub cursor: Option<String>,
    /// The tenant (MSP admin keys only; a tenant key is always its own tenant).
    pub tenant: Option<Uuid>,
}

/// Names the tenant for MSP admin keys.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TenantParams {
    /// The tenant (MSP admin keys only).
    pub tenant: Option<Uuid>,
}

/// The id of what was created.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Created {
    pub id: Uuid,
}

/// The most rows one page holds (the catalog's own maximum).
pub const MAX_PAGE_LIMIT: u32 = 500;

/// `limit` as the spec allows it: 1 to [`MAX_PAGE_LIMIT`] (the catalog would clamp anything
/// else; refusing it tells the caller their page is not the size they asked for).
fn page_limit(limit: Option<u32>) -> Result<Option<u32>> {
    match limit {
        Some(rows) if !(1..=MAX_PAGE_LIMIT).contains(&rows) => Err(ApiError::bad_request(
            "invalid_query",
            format!("`limit` is {rows}; a page holds 1 to {MAX_PAGE_LIMIT} rows"),
        )
        .with_field("limit")),
        _ => Ok(limit),
    }
}

/// A page of catalog query `<name>.list`, with the resource's `filter` fields.
async fn list(
    state: &AppState,
    name: &str,
    auth: Option<Authorized>,
    page: &ListParams,
    filter: Value,
) -> Result<HttpResponse> {
    let query = list_query(auth, page, filter)?;
    // The catalog's page is already the answer (a [`Page`]): passed on as it came.
    let page = state.catalog_raw(&format!("{name}.list"), &query).await?;
    Ok(page_response(page.json))
}

/// The catalog query for a page of `<name>.list`: the page, the filter, and the tenant the
/// caller acts on (every tenant-scoped list is scoped here).
fn list_query(auth: Option<Authorized>, page: &ListParams, mut filter: Value) -> Result<Value> {
    filter["limit"] = json!(page_limit(page.limit)?);
    filter["cursor"] = json!(page.cursor);
    if let Some(auth) = auth {
        filter["tenant"] = json!(auth.tenant);
    }
    Ok(filter)
}

fn page_response(json: bytes::Bytes) -> HttpResponse {
    HttpResponse::Ok().content_type(ContentType::json()).body(json)
}

/// How long a read by id waits for a lagging catalog before answering what it has.
const READ_YOUR_WRITES_WAIT: Duration = Duration::from_secs(2);

/// One row of catalog query `<name>.get` (the `aggregate` `id`), its version as the `ETag`.
///
/// Reads its writes: the answer reflects every event of the object stored before the request
/// (the catalog is given a moment when it lags), so the `ETag` is the version a following
/// `If-Match` is checked against, and a change just made is seen.
async fn get(
    state: &AppState,
    name: &str,
    aggregate: AggregateType,
    auth: Authorized,
    id: Uuid,
) -> Result<HttpResponse> {
    let query = json!({ "tenant": auth.tenant, "id": id });
    let written = state.store.last_stream_sequence(AggregateRef::new(auth.tenant, aggregate, id)).await?;
    let deadline = Instant::now() + READ_YOUR_WRITES_WAIT;
    loop {
        let (answer, applied) = match state.catalog_raw(&format!("{name}.get"), &query).await {
            Ok(row) => {
                let applied = row.header(APPLIED_HEADER).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                (Ok(row.json), applied)
            }
            // Not there: gone, or not projected yet.
            Err(e) if e.code == "not_found" && written.is_some() => {
                let status: Value = state.catalog("status", json!({})).await?;
                (Err(e), status["last_applied"].as_u64().unwrap_or(0))
            }
            Err(e) => return Err(e),
        };
        if written.is_none_or(|written| applied >= written) || Instant::now() >= deadline {
            let row: Value = serde_json::from_slice(&answer?).map_err(|_| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the catalog gave an unreadable row")
            })?;
            let mut response = HttpResponse::Ok();
            if let Some(version) = row["version"].as_u64() {
                response.insert_header(("ETag", format!("\"{version}\"")));
            }
            return Ok(response.json(row));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn created(id: impl Into<Uuid>) -> HttpResponse {
    HttpResponse::Created().json(Created { id: id.into() })
}

// ---- Tenants ----

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({ "name": "Acme Corp", "quota_bytes": 1_099_511_627_776_u64 })))]
pub struct CreateTenant {
    #[schema(min_length = 1)]
    pub name: String,
    /// Stored bytes allowed across the tenant's repositories; none is unlimited.
    #[schema(minimum = 1, format = "uint64")]
    pub quota_bytes: Option<u64>,
}

/// Create a tenant (MSP admins).
#[utoipa::path(post, path = "/v1/tenants", tag = "tenants", request_body = CreateTenant,
    responses((status = 201, body = Created), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = [])))]
pub async fn create_tenant(_auth: Authorized, state: Data, body: web::Json<CreateTenant>) -> Result<HttpResponse> {
    let CreateTenant { name, quota_bytes } = body.into_inner();
    let id = TenantId::new();
    state.store.execute::<Tenant>(id, id, &TenantCommand::Create { name, quota_bytes }, &command_metadata()).await?;
    Ok(created(id))
}

/// What to change of a tenant; fields left out stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(
    json!({ "quota_bytes": 2_199_023_255_552_u64 }),
    json!({ "suspended": true, "reason": "invoice overdue" }),
    json!({ "name": "Acme Inc", "quota_bytes": null, "suspended": false })
))]
pub struct UpdateTenant {
    #[schema(min_length = 1)]
    pub name: Option<String>,
    /// Stored bytes allowed across the tenant's repositories; `null` removes the quota.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>, nullable, minimum = 1, format = "uint64")]
    pub quota_bytes: Option<Option<u64>>,
    /// `true` suspends the tenant (its schedules fire no jobs and nothing new starts),
    /// `false` resumes it.
    pub suspended: Option<bool>,
    /// Why it is suspended (with `"suspended": true`).
    #[schema(min_length = 1)]
    pub reason: Option<String>,
}

/// A field that was sent, even as `null` (`Some(None)`), apart from one left out (`None`).
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    value: D,
) -> std::result::Result<Option<T>, D::Error> {
    T::deserialize(value).map(Some)
}

/// Change a tenant's name, quota or suspension (MSP admins; honours `If-Match`, checked
/// against the version before the first change).
#[utoipa::path(patch, path = "/v1/tenants/{tenant}", tag = "tenants", request_body = UpdateTenant,
    params(("tenant" = Uuid, Path, description = "The tenant"), replace::IfMatch),
    responses((status = 200, body = replace::Replaced, headers(("ETag" = String, description = "The new version"))),
        (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = [])))]
pub async fn update_tenant(
    req: HttpRequest,
    _auth: Authorized,
    state: Data,
    tenant: web::Path<Uuid>,
    body: web::Json<UpdateTenant>,
) -> Result<HttpResponse> {
    let id = TenantId::from(tenant.into_inner());
    let UpdateTenant { name, quota_bytes, suspended, reason } = body.into_inner();
    let mut commands = Vec::new();
    commands.extend(name.map(|name| TenantCommand::Rename { name }));
    commands.extend(quota_bytes.map(|quota_bytes| TenantCommand::SetQuota { quota_bytes }));
    match (suspended, reason) {
        (Some(true), reason) => {
            commands.push(TenantCommand::Suspend { reason: reason.unwrap_or_else(|| "suspended by the MSP".into()) });
        }
        (Some(false), None) => commands.push(TenantCommand::Resume),
        (_, Some(_)) => {
            return Err(
                ApiError::bad_request("invalid", "`reason` goes with `\"suspended\": true`").with_field("reason")
            );
        }
        (None, None) => {}
    }
    if commands.is_empty() {
        return Err(ApiError::bad_request("invalid", "nothing to change: give name, quota_bytes or suspended"));
    }
    let mut expected = data::if_match(&req)?;
    let meta = command_metadata();
    let mut version = 0;
    for command in &commands {
        version =
            state.store.execute_expecting::<Tenant>(id, id, command, &meta, expected.take()).await?.version.sequence;
    }
    Ok(replace::replaced(id, version))
}

/// List tenants (MSP admins).
#[utoipa::path(get, path = "/v1/tenants", tag = "tenants", params(ListParams),
    responses((status = 200, body = Page), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = [])))]
pub async fn list_tenants(_auth: Authorized, state: Data, page: web::Query<ListParams>) -> Result<HttpResponse> {
    list(&state, "tenants", None, &page, json!({})).await
}

// ---- API keys ----

/// A tenant role (MSP admin keys are not created through the API).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TenantRole {
    TenantAdmin,
    Operator,
    Viewer,
}

impl From<TenantRole> for Role {
    fn from(role: TenantRole) -> Role {
        match role {
            TenantRole::TenantAdmin => Role::TenantAdmin,
            TenantRole::Operator => Role::Operator,
            TenantRole::Viewer => Role::Viewer,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({ "name": "nightly scripts", "role": "operator", "expires_at": "2030-01-01T00:00:00Z" })))]
pub struct CreateApiKey {
    #[schema(min_length = 1)]
    pub name: String,
    pub role: TenantRole,
    /// RFC 3339; none never expires.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<DateTime<Utc>>,
}

/// A new key: `key` is shown this once and never again.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedApiKey {
    pub id: Uuid,
    pub key: String,
    pub prefix: String,
    pub role: TenantRole,
}

/// Create an API key for a tenant (tenant admins of that tenant, MSP admins).
#[utoipa::path(post, path = "/v1/tenants/{tenant}/api-keys", tag = "api-keys", request_body = CreateApiKey,
    params(("tenant" = Uuid, Path, description = "The tenant")),
    responses((status = 201, body = CreatedApiKey), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = [])))]
pub async fn create_api_key(
    auth: Authorized,
    state: Data,
    _tenant: web::Path<Uuid>,
    body: web::Json<CreateApiKey>,
) -> Result<HttpResponse> {
    let CreateApiKey { name, role, expires_at } = body.into_inner();
    let (key, prefix) = new_key();
    let command = ApiKeyCommand::Create {
        tenant: auth.tenant,
        name,
        role: role.into(),
        prefix: prefix.clone(),
        hash: hash_key(&key),
        expires_at,
    };
    let id = ApiKeyId::new();
    state.store.execute::<ApiKey>(auth.tenant, id, &command, &command_metadata()).await?;
    Ok(HttpResponse::Created().json(CreatedApiKey { id: id.into(), key, prefix, role }))
}

// ---- Targets ----

/// Object-store credentials: sealed with the server key, never returned.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub account_key: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(
    json!({ "name": "primary", "location": "fs:///srv/backup/acme" }),
    json!({
        "name": "offsite", "location": "s3://acme-backups/arca",
        "settings": { "endpoint": "https://s3.example.com", "region": "eu-central-1" },
        "credentials": { "access_key_id": "AKIAEXAMPLE", "secret_access_key": "example-secret" }
    })
))]
pub struct CreateTarget {
    #[schema(min_length = 1)]
    pub name: String,
    /// `fs:///abs/path`, `s3://bucket/prefix` or `azblob://container/prefix`.
    #[schema(pattern = "^(fs|s3|azblob)://")]
    pub location: String,
    /// Non-secret settings: `endpoint`, `region`, `account_name`.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    /// Write-only.
    pub credentials: Option<Credentials>,
}

/// Add a target (tenant admins); the storage service creates the tenant's repository there.
#[utoipa::path(post, path = "/v1/targets", tag = "targets", request_body = CreateTarget, params(TenantParams),
    responses((status = 201, body = Created), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = [])))]
pub async fn create_target(
    auth: Authorized,
    state: Data,
    _tenant: web::Query<TenantParams>,
    body: web::Json<CreateTarget>,
) -> Result<HttpResponse> {
    let CreateTarget { name, location, settings, credentials } = body.into_inner();
    let kind = match location.split_once("://").map(|(scheme, _)| scheme) {
        Some("fs") => TargetKind::Fs,
        Some("s3") => TargetKind::S3,
        Some("azblob") => TargetKind::Azblob,
        _ => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                format!(
                    "`{location}` is not a target location (fs:///path, s3://bucket/prefix, azblob://container/prefix)"
                ),
            )
            .with_field("location"));
        }
    };
    let sealed = match credentials {
        None => None,
        Some(credentials) => seal_credentials(&state, auth.tenant, credentials).await?,
    };
    let id = TargetId::new();
    let command = TargetCommand::Add { name, kind, location, settings, credentials: sealed };
    state.store.execute::<Target>(auth.tenant, id, &command, &command_metadata()).await?;
    Ok(created(id))
}

/// Seals `credentials` in the secret store; `None` when the object names none of them.
async fn seal_credentials(
    state: &AppState,
    tenant: TenantId,
    credentials: Credentials,
) -> Result<Option<arca_events::SecretRef>> {
    let credentials = TargetCredentials {
        access_key_id: credentials.access_key_id,
        secret_access_key: credentials.secret_access_key,
        account_key: credentials.account_key,
    };
    if credentials.access_key_id.is_none()
        && credentials.secret_access_key.is_none()
        && credentials.account_key.is_none()
    {
        return Ok(None);
    }
    let secrets = state.secrets.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_server_key",
            "this gateway has no server key to seal credentials with",
        )
    })?;
    let bytes = serde_json::to_vec(&credentials).expect("credentials serialise");
    Ok(Some(secrets.put(tenant, &bytes).await?))
}

/// List targets (credentials are never returned).
#[utoipa::path(get, path = "/v1/targets", tag = "targets", params(ListParams),
    responses((status = 200, body = Page), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = [])))]
pub async fn list_targets(auth: Authorized, state: Data, page: web::Query<ListParams>) -> Result<HttpResponse> {
    list(&state, "targets", Some(auth), &page, json!({})).await
}

// ---- Sources ----

#[derive(Clone, Copy, Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SourceKindBody {
    #[default]
    Files,
    Image,
    Postgres,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({
    "name": "documents", "kind": "files", "paths": ["/home", "/etc"], "excludes": ["/home/*/.cache"],
    "pre_hook": "app quiesce", "post_hook": "app resume"
})))]
pub struct CreateSource {
    #[schema(min_length = 1)]
    pub name: String,
    #[serde(default)]
    pub kind: SourceKindBody,
    /// The host the data is read on (default `localhost`).
    pub host: Option<String>,
    /// Paths (files), the image (image) or database names (postgres).
    pub paths: Vec<String>,
    #[serde(default)]
    pub excludes: Vec<String>,
    /// Only transport workers with this site label read it.
    pub site: Option<String>,
    pub pre_hook: Option<String>,
    pub post_hook: Option<String>,
    /// For an image a running qemu has open: replicas ask qemu which blocks changed instead
    /// of reading the whole image.
    pub qemu: Option<QemuBody>,
}

/// The running qemu (a VM, or `qemu-storage-daemon`) that has an image source open, on the
/// source's host. The image must be raw.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({"monitor": "/run/vm1/qmp.sock", "node": "drive0"})))]
pub struct QemuBody {
    /// Its QMP monitor socket.
    #[schema(min_length = 1)]
    pub monitor: String,
    /// The image's block node (`node-name`).
    #[schema(min_length = 1)]
    pub node: String,
    /// The socket of an NBD server the qemu already runs (it runs at most one); without it,
    /// replicas start one.
    pub nbd: Option<String>,
}

impl From<QemuBody> for arca_events::QemuDisk {
    fn from(body: QemuBody) -> Self {
        arca_events::QemuDisk { monitor: body.monitor, node: body.node, nbd: body.nbd }
    }
}

/// Add a source (tenant admins).
#[utoipa::path(post, path = "/v1/sources", tag = "sources", request_body = CreateSource, params(TenantParams),
    responses((status = 201, body = Created), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = [])))]
pub async fn create_source(
    auth: Authorized,
    state: Data,
    _tenant: web::Query<TenantParams>,
    body: web::Json<CreateSource>,
) -> Result<HttpResponse> {
    let CreateSource { name, kind, host, paths, excludes, site, pre_hook, post_hook, qemu } = body.into_inner();
    let kind = match kind {
        SourceKindBody::Files => SourceKind::Files,
        SourceKindBody::Image => SourceKind::Image,
        SourceKindBody::Postgres => SourceKind::Postgres,
    };
    let host = host.unwrap_or_else(|| "localhost".into());
    let id = SourceId::new();
    let qemu = qemu.map(Into::into);
    let command = SourceCommand::Add { name, kind, host, paths, excludes, site, pre_hook, post_hook, qemu };
    state.store.execute::<Source>(auth.tenant, id, &command, &command_metadata()).await?;
    Ok(created(id))
}

/// List sources.
#[utoipa::path(get, path = "/v1/sources", tag = "sources", params(ListParams),
    responses((status = 200, body = Page), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = [])))]
pub async fn list_sources(auth: Authorized, state: Data, page: web::Query<ListParams>) -> Result<HttpResponse> {
    list(&state, "sources", Some(auth), &page, json!({})).await
}

// ---- Policies ----

/// When a policy fires.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ScheduleBody {
    /// A cron expression (5 or 6 fields) in an IANA time zone (default UTC).
    Cron { expression: String, timezone: Option<String> },
    /// Every `seconds` seconds: a minute to 366 days.
    Interval {
        #[schema(minimum = 60, maximum = 31_622_400)]
        seconds: u64,
    },
}

#[derive(Clone, Copy, Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MisfireBody {
    #[default]
    Skip,
    RunOnce,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModeBody {
    #[default]
    Incremental,
    Full,
    Differential,
}

/// Which snapshots to keep; no rule keeps everything.
#[derive(Clone, Copy, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetentionBody {
    #[schema(minimum = 1, maximum = 4_294_967_295_u32, format = "uint32")]
    pub keep_last: Option<u32>,
    #[schema(minimum = 1, maximum = 4_294_967_295_u32, format = "uint32")]
    pub keep_hourly: Option<u32>,
    #[schema(minimum = 1, maximum = 4_294_967_295_u32, format = "uint32")]
    pub keep_daily: Option<u32>,
    #[schema(minimum = 1, maximum = 4_294_967_295_u32, format = "uint32")]
    pub keep_weekly: Option<u32>,
    #[schema(minimum = 1, maximum = 4_294_967_295_u32, format = "uint32")]
    pub keep_monthly: Option<u32>,
    #[schema(minimum = 1, maximum = 4_294_967_295_u32, format = "uint32")]
    pub keep_yearly: Option<u32>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({
    "name": "nightly",
    "source": "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
    "target": "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5c",
    "schedule": { "type": "cron", "expression": "0 2 * * *", "timezone": "Europe/Berlin" },
    "retention": { "keep_daily": 7, "keep_weekly": 4 },
    "verify_every_seconds": 86400
})))]
pub struct CreatePolicy {
    #[schema(min_length = 1)]
    pub name: String,
    pub source: Uuid,
    pub target: Uuid,
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

/// Create a policy (tenant admins): a source backed up to a target on a schedule.
#[utoipa::path(post, path = "/v1/policies", tag = "policies", request_body = CreatePolicy, params(TenantParams),
    responses((status = 201, body = Created), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = [])))]
pub async fn create_policy(
    auth: Authorized,
    state: Data,
    _tenant: web::Query<TenantParams>,
    body: web::Json<CreatePolicy>,
) -> Result<HttpResponse> {
    let body = body.into_inner();
    // The source and targets must be this tenant's: their aggregates live under its subjects.
    let (source, _) = state.store.load_state::<Source>(auth.tenant, body.source).await?;
    if source.status != Lifecycle::Active {
        return Err(unknown("source", body.source));
    }
    require_targets(&state, auth.tenant, "target", [&body.target]).await?;
    require_targets(&state, auth.tenant, "copy_targets", &body.copy_targets).await?;
    let settings = PolicySettings::from(&body);
    let command = PolicyCommand::Create {
        name: body.name,
        source: body.source.into(),
        target: body.target.into(),
        schedule: settings.schedule,
        misfire: settings.misfire,
        mode: settings.mode,
        retention: settings.retention,
        copy_targets: settings.copy_targets,
        verify_schedule: settings.verify_schedule,
    };
    let id = PolicyId::new();
    state.store.execute::<Policy>(auth.tenant, id, &command, &command_metadata()).await?;
    Ok(created(id))
}

/// A policy's settings as the domain takes them: what create and replace share.
pub(crate) struct PolicySettings {
    pub schedule: Schedule,
    pub misfire: Misfire,
    pub mode: BackupMode,
    pub retention: Retention,
    pub copy_targets: Vec<TargetId>,
    pub verify_schedule: Option<Schedule>,
}

impl PolicySettings {
    pub(crate) fn new(
        schedule: &ScheduleBody,
        misfire: MisfireBody,
        mode: ModeBody,
        retention: RetentionBody,
        copy_targets: &[Uuid],
        verify_every_seconds: Option<u64>,
    ) -> Self {
        PolicySettings {
            schedule: match schedule.clone() {
                ScheduleBody::Cron { expression, timezone } => {
                    Schedule::Cron { expression, timezone: timezone.unwrap_or_else(|| "UTC".into()) }
                }
                ScheduleBody::Interval { seconds } => Schedule::Interval { seconds },
            },
            misfire: match misfire {
                MisfireBody::Skip => Misfire::Skip,
                MisfireBody::RunOnce => Misfire::RunOnce,
            },
            mode: match mode {
                ModeBody::Incremental => BackupMode::Incremental,
                ModeBody::Full => BackupMode::Full,
                ModeBody::Differential => BackupMode::Differential,
            },
            retention: Retention {
                keep_last: retention.keep_last,
                keep_hourly: retention.keep_hourly,
                keep_daily: retention.keep_daily,
                keep_weekly: retention.keep_weekly,
                keep_monthly: retention.keep_monthly,
                keep_yearly: retention.keep_yearly,
            },
            copy_targets: copy_targets.iter().copied().map(TargetId::from).collect(),
            verify_schedule: verify_every_seconds.map(|seconds| Schedule::Interval { seconds }),
        }
    }
}

impl From<&CreatePolicy> for PolicySettings {
    fn from(body: &CreatePolicy) -> Self {
        PolicySettings::new(
            &body.schedule,
            body.misfire,
            body.mode,
            body.retention,
            &body.copy_targets,
            body.verify_every_seconds,
        )
    }
}

/// Refuses (422, naming `field`) a target that is not an active target of `tenant`: a
/// policy's targets must be its tenant's, whose aggregates live under its subjects.
pub(crate) async fn require_targets(
    state: &AppState,
    tenant: TenantId,
    field: &'static str,
    targets: impl IntoIterator<Item = &Uuid>,
) -> Result<()> {
    for target in targets {
        let (found, _) = state.store.load_state::<Target>(tenant, *target).await?;
        if found.status != Lifecycle::Active {
            return Err(unknown(field, *target));
        }
    }
    Ok(())
}

/// 422 for `field` naming an object the tenant does not have.
fn unknown(field: &'static str, id: Uuid) -> ApiError {
    let noun = if field == "source" { "source" } else { "target" };
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", format!("{noun} `{id}` does not exist"))
        .with_field(field)
}

/// List policies.
#[utoipa::path(get, path = "/v1/policies", tag = "policies", params(ListParams),
    responses((status = 200, body = Page), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = [])))]
pub async fn list_policies(auth: Authorized, state: Data, page: web::Query<ListParams>) -> Result<HttpResponse> {
    list(&state, "policies", Some(auth), &page, json!({})).await
}

/// The job a request started.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StartedJob {
    pub job: Uuid,
}

/// Run a policy's backup now (operators and up).
#[utoipa::path(post, path = "/v1/policies/{id}/run", tag = "policies",
    params(("id" = Uuid, Path, description = "The policy"), TenantParams),
    responses((status = 202, body = StartedJob), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = [])))]
pub async fn run_policy(
    req: HttpRequest,
    auth: Authorized,
    state: Data,
    id: web::Path<Uuid>,
    _tenant: web::Query<TenantParams>,
) -> Result<HttpResponse> {
    let policy_id = PolicyId::from(id.into_inner());
    let work = async {
        let (policy, _) = state.store.load_state::<Policy>(auth.tenant, policy_id.as_uuid()).await?;
        if policy.schedule.is_none() {
            return Err(ApiError::not_found());
        }
        let (source, _) = state.store.load_state::<Source>(auth.tenant, policy.source.as_uuid()).await?;
        let command = JobCommand::Request {
            kind: JobKind::Backup,
            trigger: Trigger::Manual,
            policy: Some(policy_id),
            source: Some(policy.source),
            target: Some(policy.target),
            snapshot: None,
            mode: Some(policy.mode),
            site: source.site,
        };
        let job = JobId::new();
        arca_worker::runner::start_job(&state.store, auth.tenant, job, &command, &command_metadata()).await?;
        Ok((StatusCode::ACCEPTED, json!(StartedJob { job: job.into() })))
    };
    state.idempotency.answer(&req, &auth, &(), work).await
}

// ---- Jobs and snapshots ----

/// List jobs, newest first.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", params(ListParams),
    responses((status = 200, body = Page), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = [])))]
pub async fn list_jobs(auth: Authorized, state: Data, page: web::Query<ListParams>) -> Result<HttpResponse> {
    list(&state, "jobs", Some(auth), &page, json!({})).await
}

/// One job.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = Uuid, Path, description = "The job"), TenantParams),
    responses((status = 200, body = Object), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = [])))]
pub async fn get_job(
    auth: Authorized,
    state: Data,
    id: web::Path<Uuid>,
    _tenant: web::Query<TenantParams>,
) -> Result<HttpResponse> {
    let job: Value = state.catalog("jobs.get", json!({ "tenant": auth.tenant, "id": id.into_inner() })).await?;
    Ok(HttpResponse::Ok().json(job))
}

/// List snapshots, newest first (forgotten ones left out).
#[utoipa::path(get, path = "/v1/snapshots", tag = "snapshots", params(ListParams),
    responses((status = 200, body = Page), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("api_key" = [])))]
pub async fn list_snapshots(auth: Authorized, state: Data, page: web::Query<ListParams>) -> Result<HttpResponse> {
    // The busiest list: pages are kept in the gateway while the tenant's snapshots are
    // unchanged (see [`crate::cache`]). The query names the tenant, so a page is only ever
    // found again for the tenant it was fetched for.
    let query = list_query(Some(auth), &page, json!({}))?;
    let key = query.to_string();
    if let Some(json) = state.pages.get(&key, Instant::now()) {
        return Ok(page_response(json));
    }
    let fetched_at = Instant::now();
    let page = state.catalog_raw("snapshots.list", &query).await?;
    let applied = page.header(APPLIED_HEADER).and_then(|v| v.parse::<u64>().ok());
    if let Some(applied) = applied {
        state.pages.insert(auth.tenant, key, page.json.clone(), applied, fetched_at);
    }
    Ok(page_response(page.json))
}
