//! Authentication and authorization, in one place.
//!
//! A request carries `Authorization: Bearer <key>`. The gateway hashes the key (hex SHA-256,
//! the only form ever stored) and asks the catalog for the key with that hash
//! (`arca.q.catalog.api_keys.by_hash`), and keeps the answer for a few seconds
//! ([`crate::cache::KeyCache`]: a revoked key stops working at once, expiry is checked on every
//! request). [`access_rule`] is the single table of which role each
//! route needs and whether it is scoped to a tenant; the [`authenticate`] middleware around
//! `/v1` applies it before a body is read or a handler runs, and hands handlers the outcome as
//! [`Authorized`], so they only ever see the tenant they may act on.
//!
//! Tenant scoping: a tenant's key acts on its own tenant only; naming another tenant (in the
//! path or `?tenant=`) answers 404, exactly like an object that does not exist. An MSP admin
//! key (tenant [`TenantId::SYSTEM`]) names the tenant it acts on with `?tenant=` (or the path).

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{FromRequest, HttpMessage, HttpRequest, web};
use arca_bus::EventStore;
use arca_domain::DomainError;
use arca_domain::api_key::{ApiKey, ApiKeyCommand};
use arca_events::{ApiKeyId, Metadata, Role, TenantId};
use chrono::Utc;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::cache::KeyRow;
use crate::problem::ApiError;
use crate::state::AppState;

/// The caller, once authenticated and allowed: the tenant it acts on and its role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Authorized {
    /// The tenant the request acts on; [`TenantId::SYSTEM`] on MSP-wide routes.
    pub tenant: TenantId,
    pub role: Role,
    pub key: ApiKeyId,
}

/// Whether a route acts inside one tenant or across the MSP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Msp,
    Tenant,
}

/// What a route asks of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccessRule {
    pub min_role: Role,
    pub scope: Scope,
}

/// The one table of permissions, by method and route pattern. Reads need any role of the
/// tenant; starting work needs an operator; changing configuration needs a tenant admin;
/// tenants themselves are the MSP's. A route not named here is MSP-admin only, so a new
/// route is closed until someone opens it.
pub fn access_rule(method: &Method, pattern: &str) -> AccessRule {
    let tenant = |min_role| AccessRule { min_role, scope: Scope::Tenant };
    match (method.as_str(), pattern) {
        (_, "/v1/tenants") => AccessRule { min_role: Role::MspAdmin, scope: Scope::Msp },
        ("GET", "/v1/tenants/{tenant}") => tenant(Role::Viewer),
        (_, "/v1/tenants/{tenant}/api-keys" | "/v1/tenants/{tenant}/api-keys/{id}") => tenant(Role::TenantAdmin),
        ("POST", "/v1/policies/{id}/run" | "/v1/jobs/{id}/cancel" | "/v1/restores" | "/v1/snapshots/{id}/lock") => {
            tenant(Role::Operator)
        }
        // Data out of a snapshot is a restore by other means.
        ("POST", "/v1/exports" | "/v1/replicas/{id}/failover" | "/v1/replicas/{id}/failback")
        | ("DELETE", "/v1/exports/{id}")
        | ("GET", "/v1/snapshots/{id}/content" | "/v1/snapshots/{id}/archive") => tenant(Role::Operator),
        ("POST", "/v1/targets" | "/v1/sources" | "/v1/policies" | "/v1/snapshots/{id}/forget" | "/v1/replicas")
        | ("PUT" | "DELETE", "/v1/targets/{id}" | "/v1/sources/{id}" | "/v1/policies/{id}")
        | ("DELETE", "/v1/replicas/{id}") => tenant(Role::TenantAdmin),
        (
            "GET",
            "/v1/targets"
            | "/v1/targets/{id}"
            | "/v1/sources"
            | "/v1/sources/{id}"
            | "/v1/policies"
            | "/v1/policies/{id}"
            | "/v1/jobs"
            | "/v1/jobs/{id}"
            | "/v1/jobs/{id}/events"
            | "/v1/snapshots"
            | "/v1/snapshots/{id}"
            | "/v1/snapshots/{id}/tree"
            | "/v1/restores"
            | "/v1/restores/{id}"
            | "/v1/exports"
            | "/v1/exports/{id}"
            | "/v1/replicas"
            | "/v1/replicas/{id}"
            | "/v1/files"
            | "/v1/usage"
            | "/v1/audit",
        ) => tenant(Role::Viewer),
        _ => AccessRule { min_role: Role::MspAdmin, scope: Scope::Msp },
    }
}

/// Higher is more powerful.
fn rank(role: Role) -> u8 {
    match role {
        Role::MspAdmin => 3,
        Role::TenantAdmin => 2,
        Role::Operator => 1,
        Role::Viewer => 0,
    }
}

/// Hex SHA-256 of a key: how keys are stored and looked up.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A new random key (`arca_` and 64 hex digits) and its display prefix.
pub fn new_key() -> (String, String) {
    let key = format!("arca_{}", hex::encode(rand::random::<[u8; 32]>()));
    let prefix = key[..13].to_owned();
    (key, prefix)
}

#[derive(Deserialize)]
struct TenantParam {
    tenant: Option<String>,
}

impl FromRequest for Authorized {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(req.extensions().get::<Authorized>().copied().ok_or_else(|| {
            tracing::error!(path = req.path(), "a handler asked for the caller outside the authenticated scope");
            ApiError::new(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR, "internal", "the caller is unknown")
        }))
    }
}

/// The middleware around `/v1`: authenticates and authorizes every request before its body is
/// read or its handler runs, and hands the result to the handler as [`Authorized`].
pub async fn authenticate(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let authorized = authorize(req.request()).await?;
    req.extensions_mut().insert(authorized);
    next.call(req).await
}

async fn authorize(req: &HttpRequest) -> Result<Authorized, ApiError> {
    let state = req.app_data::<web::Data<AppState>>().expect("the app has its state");
    let key = bearer(req)?;
    let row = api_key(state, hash_key(key)).await?;
    if !row.is_usable(Utc::now()) {
        return Err(ApiError::unauthorized("the API key is revoked or expired"));
    }
    if let Some(limiter) = &state.limiter {
        limiter.check(row.id.into())?;
    }
    let own = TenantId::from(row.tenant_id);
    let rule = access_rule(req.method(), req.match_pattern().as_deref().unwrap_or_default());
    if rank(row.role) < rank(rule.min_role) {
        return Err(ApiError::forbidden(format!(
            "this needs the `{}` role or more",
            serde_json::to_value(rule.min_role).expect("roles serialise").as_str().unwrap_or_default()
        )));
    }
    let tenant = match rule.scope {
        Scope::Msp => TenantId::SYSTEM,
        Scope::Tenant => {
            let named = named_tenant(req)?;
            if own.is_system() {
                named.ok_or_else(|| {
                    ApiError::bad_request("tenant_required", "an MSP admin key names the tenant: `?tenant=<id>`")
                        .with_field("tenant")
                })?
            } else {
                if named.is_some_and(|t| t != own) {
                    return Err(ApiError::not_found());
                }
                own
            }
        }
    };
    Ok(Authorized { tenant, role: row.role, key: row.id.into() })
}

/// The key with this hash: from the gateway's cache, else from the catalog (then cached).
async fn api_key(state: &AppState, hash: String) -> Result<KeyRow, ApiError> {
    if let Some(row) = state.keys.get(&hash, Instant::now()) {
        return Ok(row);
    }
    let fetched_at = Instant::now();
    let row: KeyRow = match state.catalog("api_keys.by_hash", serde_json::json!({ "hash": hash })).await {
        Ok(row) => row,
        Err(e) if e.code == "not_found" => return Err(ApiError::unauthorized("unknown API key")),
        Err(e) => return Err(e),
    };
    Ok(state.keys.insert(hash, row, fetched_at))
}

fn bearer(req: &HttpRequest) -> Result<&str, ApiError> {
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("send an API key: `Authorization: Bearer <key>`"))?;
    header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| ApiError::unauthorized("the `Authorization` header is not `Bearer <key>`"))
}

/// The tenant the request names: the `{tenant}` path segment, else `?tenant=`.
fn named_tenant(req: &HttpRequest) -> Result<Option<TenantId>, ApiError> {
    // The middleware runs before the resource's path parameters are matched: read the
    // `{tenant}` segment by lining the path up with the route pattern.
    let pattern = req.match_pattern().unwrap_or_default();
    let in_path = pattern.split('/').zip(req.path().split('/')).find(|(p, _)| *p == "{tenant}").map(|(_, s)| s);
    let text = match in_path {
        Some(segment) => Some(segment.to_owned()),
        None => web::Query::<TenantParam>::from_query(req.query_string()).ok().and_then(|q| q.into_inner().tenant),
    };
    text.map(|t| {
        t.parse::<TenantId>().map_err(|_| {
            ApiError::bad_request("invalid_tenant", format!("`{t}` is not a tenant id")).with_field("tenant")
        })
    })
    .transpose()
}

/// Makes sure an MSP admin key exists. With `configured` (`ARCA_BOOTSTRAP_KEY`), that key is
/// registered (once: its aggregate id derives from its hash). Without it, the first start
/// creates a random key and returns it, to be printed once; later starts return `None`.
pub async fn ensure_bootstrap_key(store: &EventStore, configured: Option<&str>) -> anyhow::Result<Option<String>> {
    let (key, prefix, id, generated) = match configured {
        Some(key) => {
            anyhow::ensure!(
                key.len() >= 16 && key.chars().all(|c| c.is_ascii_graphic()),
                "the bootstrap key must be at least 16 printable ASCII characters without spaces"
            );
            let hash = Sha256::digest(key.as_bytes());
            let id = Uuid::new_v8(hash[..16].try_into().expect("16 bytes"));
            (key.to_owned(), key.chars().take(8).collect::<String>(), id, false)
        }
        None => {
            let (key, prefix) = new_key();
            (key, prefix, Uuid::new_v8(*b"arca-bootstrap-1"), true)
        }
    };
    let command = ApiKeyCommand::Create {
        tenant: TenantId::SYSTEM,
        name: "bootstrap".into(),
        role: Role::MspAdmin,
        prefix,
        hash: hash_key(&key),
        expires_at: None,
    };
    match store.execute::<ApiKey>(TenantId::SYSTEM, id, &command, &Metadata::new_root()).await {
        Ok(_) => Ok(generated.then_some(key)),
        Err(arca_bus::ExecuteError::Domain(DomainError::AlreadyExists { .. })) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
