//! The OpenAPI gateway (actix-web + utoipa): Arca's multi-tenant REST API.
//!
//! - `/healthz` (the process answers), `/readyz` (NATS connected and the catalog answering
//!   `arca.q.catalog.status`), `/metrics` (Prometheus text).
//! - `/v1/…` resources ([`v1`]): writes become domain commands appended through the event
//!   store, reads are catalog queries over NATS.
//! - Authentication, roles and tenant scoping live in one place ([`auth`]): the
//!   [`auth::authenticate`] middleware around `/v1`, whose outcome every handler takes as
//!   [`auth::Authorized`].
//! - `/openapi.json` is the spec, `/docs` an interactive reference (Swagger UI, served from
//!   the binary: no CDN). HTTPS when [`GatewayConfig::tls`] names a certificate; per-key rate
//!   limits ([`limit`]) answer 429 with `Retry-After`.
//! - Every request runs in an `http_request` span that continues the caller's W3C trace and
//!   is counted and timed by route ([`observe`]); the commands it appends carry that trace.
//! - Every error is an RFC 9457 problem document with a machine code ([`problem`]); unknown
//!   JSON fields are refused and bodies are limited to [`GatewayConfig::json_limit`] (413).
//!
//! Zero2prod-style: [`Application::build`] binds (port 0 allowed) and reports its port;
//! [`Application::run_until_stopped`] serves until the server is stopped.

pub mod auth;
pub mod cache;
pub mod idempotency;
pub mod limit;
pub mod observe;
pub mod problem;
pub mod state;
pub mod v1;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
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
    /// Requests per API key; `None`: unlimited.
    pub rate_limit: Option<limit::RateLimit>,
    /// Serve HTTPS with this certificate chain and key (PEM files).
    pub tls: Option<TlsFiles>,
    /// How long an API key is kept after the catalog answered it ([`cache::KeyCache`]); zero
    /// keeps none. Revocations apply at once whatever this is.
    pub key_cache_ttl: Duration,
    /// How long a snapshot page is kept at most ([`cache::PageCache`]); zero keeps none. A
    /// change to the tenant's snapshots replaces it sooner.
    pub page_cache_ttl: Duration,
}

/// PEM files of a server certificate (chain) and its private key.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub certificate: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    fn server_config(&self) -> anyhow::Result<rustls::ServerConfig> {
        use anyhow::Context;
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain = CertificateDer::pem_file_iter(&self.certificate)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .with_context(|| format!("read the certificate {}", self.certificate.display()))?;
        anyhow::ensure!(!chain.is_empty(), "no certificate in {}", self.certificate.display());
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .with_context(|| format!("read the private key {}", self.key.display()))?;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .context("the certificate and key do not make a TLS server")
    }
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
            rate_limit: None,
            tls: None,
            key_cache_ttl: Duration::from_secs(5),
            page_cache_ttl: Duration::from_secs(5),
        }
    }
}

/// The HTTP settings `arca-gateway` and `arca server` take on their command lines.
#[derive(Clone, Debug, clap::Args)]
pub struct HttpArgs {
    /// Serve the REST API on this address; port 0 picks a free one
    #[arg(long, env = "ARCA_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// Serve HTTPS with this PEM certificate (chain); needs --tls-key
    #[arg(long, env = "ARCA_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert
    #[arg(long, env = "ARCA_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Requests per second each API key may send on average (bursts of twice that); 0: no limit
    #[arg(long, env = "ARCA_RATE_LIMIT", default_value_t = 50)]
    pub rate_limit: u32,
}

impl HttpArgs {
    /// A gateway configuration with these settings.
    pub fn config(&self, nats_url: &str) -> GatewayConfig {
        let mut config = GatewayConfig::new(nats_url, self.http_addr);
        config.tls = match (&self.tls_cert, &self.tls_key) {
            (Some(certificate), Some(key)) => Some(TlsFiles { certificate: certificate.clone(), key: key.clone() }),
            _ => None,
        };
        config.rate_limit = std::num::NonZeroU32::new(self.rate_limit).map(|per_second| limit::RateLimit {
            per_second,
            burst: per_second.saturating_mul(std::num::NonZeroU32::new(2).expect("2 is not 0")),
        });
        config.bootstrap_key = std::env::var("ARCA_BOOTSTRAP_KEY").ok().filter(|k| !k.is_empty());
        config
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        if self.tls_cert.is_some() { "https" } else { "http" }
    }
}

/// A gateway bound to its port, ready to serve.
pub struct Application {
    port: u16,
    server: Server,
    new_bootstrap_key: Option<String>,
    /// Keeps the caches honest ([`cache::follow_events`]); stopped with the server.
    follower: tokio::task::JoinHandle<()>,
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
        let targets = match (&secrets, &config.server_key) {
            (Some(secrets), Some(key)) => Some(arca_worker::Targets::new(store.clone(), secrets.clone(), key.clone())),
            _ => None,
        };
        let idempotency = idempotency::Idempotency::open(&bus).await?;
        let tls = config.tls.as_ref().map(TlsFiles::server_config).transpose()?;
        let keys = std::sync::Arc::new(cache::KeyCache::new(config.key_cache_ttl));
        let pages = std::sync::Arc::new(cache::PageCache::new(config.page_cache_ttl));
        // Following starts before the first request, so no revocation after it is missed.
        let follower = cache::follow_events(&bus, keys.clone(), pages.clone()).await?;
        let state = web::Data::new(AppState {
            keys,
            pages,
            idempotency,
            limiter: config.rate_limit.map(limit::Limiter::new),
            bus,
            store,
            secrets,
            targets,
            repositories: Default::default(),
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
                .service(utoipa_swagger_ui::SwaggerUi::new("/docs/{_:.*}").url("/openapi.json", openapi()))
                .route(
                    "/docs",
                    web::get().to(|| async {
                        HttpResponse::PermanentRedirect().insert_header(("Location", "/docs/")).finish()
                    }),
                )
                .configure(v1::configure)
                .default_service(web::to(|| async {
                    Err::<HttpResponse, _>(ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route"))
                }))
        });
        let server = match tls {
            Some(tls) => server.listen_rustls_0_23(listener, tls)?,
            None => server.listen(listener)?,
        };
        let server = server.disable_signals().run();
        Ok(Application { port, server, new_bootstrap_key, follower })
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
        let result = tokio::select! {
            result = &mut server => result,
            () = shutdown => {
                handle.stop(true).await;
                server.await
            }
        };
        self.follower.abort();
        result
    }
}

/// The OpenAPI document of the gateway.
#[derive(OpenApi)]
#[openapi(
    info(title = "Arca API", description = "Multi-tenant backup platform: tenants, keys, targets, sources, policies, jobs, snapshots, restores, replicas, NBD exports and file downloads, file search, usage, audit"),
    paths(
        v1::create_tenant, v1::list_tenants, v1::update_tenant, v1::create_api_key,
        v1::create_target, v1::list_targets, v1::create_source, v1::list_sources,
        v1::create_policy, v1::list_policies, v1::run_policy,
        v1::list_jobs, v1::get_job, v1::list_snapshots,
        v1::data::get_tenant, v1::data::list_api_keys, v1::data::revoke_api_key,
        v1::data::get_target, v1::data::get_source, v1::data::get_policy,
        v1::replace::replace_target, v1::replace::remove_target, v1::replace::replace_source,
        v1::replace::remove_source, v1::replace::replace_policy, v1::replace::delete_policy,
        v1::jobs::cancel_job, v1::jobs::job_events,
        v1::data::get_snapshot, v1::data::snapshot_tree, v1::data::lock_snapshot, v1::data::forget_snapshot,
        v1::jobs::create_restore, v1::jobs::list_restores, v1::jobs::get_restore,
        v1::replicas::create_replica, v1::replicas::list_replicas, v1::replicas::get_replica,
        v1::replicas::fail_over, v1::replicas::fail_back, v1::replicas::delete_replica,
        v1::recovery::create_export, v1::recovery::list_exports, v1::recovery::get_export, v1::recovery::stop_export,
        v1::recovery::file_content, v1::recovery::folder_archive,
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

/// The spec the gateway serves on `/openapi.json` (and `/docs` shows).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut spec = ApiDoc::openapi();
    spec.info.version = "1".into();
    spec.info.license = None;
    spec.info.contact = None;
    spec
}

/// The spec as committed in `openapi/openapi.json` (pretty JSON and a final newline).
pub fn openapi_json() -> String {
    openapi().to_pretty_json().expect("the spec serialises") + "\n"
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
