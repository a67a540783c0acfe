//! The OpenAPI gateway (actix-web + utoipa): Arca's multi-tenant REST API.
//!
//! - `/healthz` (the process answers), `/readyz` (NATS connected and the catalog answering
//!   `arca.q.catalog.status`), `/metrics` (Prometheus text).
//! - `/v1/…` resources ([`v1`]): writes become domain commands appended through the event
//!   store, reads are catalog queries over NATS.
//! - Authentication, roles and tenant scoping live in one place ([`auth`]): the
//!   [`auth::authenticate`] middleware around `/v1`, whose outcome every handler takes as
//!   [`auth::Authorized`].
//! - Every request runs in an `http_request` span that continues the caller's W3C trace and
//!   is counted and timed by route ([`observe`]); the commands it appends carry that trace.
//! - Every error is an RFC 9457 problem document with a machine code ([`problem`]); unknown
//!   JSON fields are refused and bodies are limited to [`GatewayConfig::json_limit`] (413).
//!
//! Zero2prod-style: [`Application::build`] binds (port 0 allowed) and reports its port;
//! [`Application::run_until_stopped`] serves until the server is stopped.

pub mod auth;
pub mod idempotency;
pub mod observe;
pub mod problem;
pub mod state;
pub mod v1;

use std::net::{SocketAddr, TcpListener};
use std::sync::OnceLock;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::error::{JsonPayloadError, QueryPayloadError};
use actix_web::http::StatusCode;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use arca_bus::secrets::SecretStore;
use arca_bus::{Bus, BusConfig};
use arca_worker::keys::ServerKey;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use utoipa::OpenApi;

use crate::problem::ApiError;
use crate::state::AppState;

/// How to run a gateway.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub nats_url: String,
    /// Where to listen; port 0 picks a free one.
    pub listen: SocketAddr,
    /// `ARCA_BOOTSTRAP_KEY`: an MSP admin key to register; without it the first start creates one.
    pub bootstrap_key: Option<String>,
    /// Seals target credentials; without it, targets with credentials are refused.
    pub server_key: Option<ServerKey>,
    /// The largest JSON body accepted, in bytes.
    pub json_limit: usize,
    /// How long a catalog query may take.
    pub query_timeout: Duration,
}

impl GatewayConfig {
    pub fn new(nats_url: impl Into<String>, listen: SocketAddr) -> Self {
        Self {
            nats_url: nats_url.into(),
            listen,
            bootstrap_key: None,
            server_key: None,
            json_limit: 64 * 1024,
            query_timeout: Duration::from_secs(5),
        }
    }
}

/// A gateway bound to its port, ready to serve.
pub struct Application {
    port: u16,
    server: Server,
    new_bootstrap_key: Option<String>,
}

impl Application {
    /// Connects to NATS, makes sure an MSP admin key exists, and binds the listener.
    pub async fn build(config: GatewayConfig) -> anyhow::Result<Application> {
        let bus =
            Bus::connect(BusConfig { client_name: "arca-gateway".into(), ..BusConfig::new(&config.nats_url) }).await?;
        let store = bus.event_store().await?;
        let new_bootstrap_key = auth::ensure_bootstrap_key(&store, config.bootstrap_key.as_deref()).await?;
        let secrets = match &config.server_key {
            Some(key) => Some(SecretStore::open(&bus, &key.secret_store_key()).await?),
            None => None,
        };
        let idempotency = idempotency::Idempotency::open(&bus).await?;
        let state = web::Data::new(AppState {
            idempotency,
            bus,
            store,
            secrets,
            metrics: metrics_handle(),
            query_timeout: config.query_timeout,
        });
        let listener = TcpListener::bind(config.listen)?;
        let port = listener.local_addr()?.port();
        let json_limit = config.json_limit;
        let server = HttpServer::new(move || {
            App::new()
                .wrap(actix_web::middleware::from_fn(observe::observe))
                .app_data(state.clone())
                .app_data(web::JsonConfig::default().limit(json_limit).error_handler(json_error))
                .app_data(web::QueryConfig::default().error_handler(query_error))
                .app_data(web::PathConfig::default().error_handler(|e, _| {
                    ApiError::bad_request("invalid_path", format!("the path is not valid: {e}")).into()
                }))
                .route("/healthz", web::get().to(healthz))
                .route("/readyz", web::get().to(readyz))
                .route("/metrics", web::get().to(metrics))
                .route("/openapi.json", web::get().to(openapi))
                .configure(v1::configure)
                .default_service(web::to(|| async {
                    Err::<HttpResponse, _>(ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route"))
                }))
        })
        .listen(listener)?
        .disable_signals()
        .run();
        Ok(Application { port, server, new_bootstrap_key })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The MSP admin key this start created (the first start without `ARCA_BOOTSTRAP_KEY`):
    /// print it once; it is never shown again.
    pub fn new_bootstrap_key(&self) -> Option<&str> {
        self.new_bootstrap_key.as_deref()
    }

    /// Serves until `shutdown` completes, then finishes the requests in flight.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        let handle = self.server.handle();
        let server = self.server;
        tokio::pin!(server);
        tokio::select! {
            result = &mut server => result,
            () = shutdown => {
                handle.stop(true).await;
                server.await
            }
        }
    }
}

/// The OpenAPI document of the gateway.
#[derive(OpenApi)]
#[openapi(
    info(title = "Arca API", description = "Multi-tenant backup platform: tenants, keys, targets, sources, policies, jobs, snapshots, restores, file search, usage, audit"),
    paths(
        v1::create_tenant, v1::list_tenants, v1::create_api_key,
        v1::create_target, v1::list_targets, v1::create_source, v1::list_sources,
        v1::create_policy, v1::list_policies, v1::run_policy,
        v1::list_jobs, v1::get_job, v1::list_snapshots,
        v1::data::get_tenant, v1::data::list_api_keys, v1::data::revoke_api_key,
        v1::data::get_target, v1::data::get_source, v1::data::get_policy,
        v1::jobs::cancel_job, v1::jobs::job_events,
        v1::data::get_snapshot, v1::data::snapshot_tree, v1::data::lock_snapshot, v1::data::forget_snapshot,
        v1::jobs::create_restore, v1::jobs::list_restores, v1::jobs::get_restore,
        v1::data::search_files, v1::data::usage, v1::data::audit,
    ),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("api_key", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// The spec as committed in `openapi/openapi.json` (pretty JSON and a final newline).
pub fn openapi_json() -> String {
    let mut spec = ApiDoc::openapi();
    spec.info.version = "1".into();
    spec.info.license = None;
    spec.info.contact = None;
    spec.to_pretty_json().expect("the spec serialises") + "\n"
}

/// One Prometheus recorder per process: a second gateway in the same process (tests, or
/// another service that installed one) renders from its own recorder.
fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .install_recorder()
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder().handle())
        })
        .clone()
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if state.bus.client().connection_state() != async_nats::connection::State::Connected {
        return Err(ApiError::unavailable("NATS is not connected"));
    }
    let status: serde_json::Value = state.catalog("status", serde_json::json!({})).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "status": "ready", "catalog": status })))
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(state.metrics.render())
}

async fn openapi() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(openapi_json())
}

fn json_error(error: JsonPayloadError, _: &HttpRequest) -> actix_web::Error {
    let api = match &error {
        JsonPayloadError::Overflow { limit } | JsonPayloadError::OverflowKnownLength { limit, .. } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is larger than {limit} bytes"),
        ),
        JsonPayloadError::ContentType => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as `application/json`",
        ),
        JsonPayloadError::Deserialize(e) if e.is_data() => {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", format!("the body does not fit: {e}"))
        }
        other => {
            ApiError::new(StatusCode::BAD_REQUEST, "malformed_body", format!("the body is not valid JSON: {other}"))
        }
    };
    api.into()
}

fn query_error(error: QueryPayloadError, _: &HttpRequest) -> actix_web::Error {
    ApiError::bad_request("invalid_query", format!("the query string does not fit: {error}")).into()
}
