//! What every handler shares: the bus, the event store, the sealed-secret store and metrics.

use std::sync::Arc;
use std::time::Duration;

use arca_bus::query::RawAnswer;
use arca_bus::secrets::SecretStore;
use arca_bus::{Bus, EventStore};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::cache::{KeyCache, PageCache};
use crate::problem::ApiError;

pub struct AppState {
    pub bus: Bus,
    pub store: EventStore,
    /// Seals target credentials; `None` when the gateway has no server key.
    pub secrets: Option<SecretStore>,
    /// Opens tenants' repositories (file downloads); `None` when the gateway has no server key.
    pub targets: Option<arca_worker::Targets>,
    /// Repositories opened for downloads, kept for a minute.
    pub repositories: Arc<crate::v1::recovery::OpenRepositories>,
    pub metrics: PrometheusHandle,
    pub idempotency: crate::idempotency::Idempotency,
    /// Per-key request rate; `None`: unlimited.
    pub limiter: Option<crate::limit::Limiter>,
    pub query_timeout: Duration,
    /// API keys by hash, kept for a few seconds.
    pub keys: Arc<KeyCache>,
    /// Snapshot pages, kept while no newer event of their tenant's snapshots has arrived.
    pub pages: Arc<PageCache>,
}

impl AppState {
    /// Asks the catalog `arca.q.catalog.<name>`.
    pub async fn catalog<R: DeserializeOwned>(&self, name: &str, query: Value) -> Result<R, ApiError> {
        let subject = format!("arca.q.catalog.{name}");
        let trace = arca_telemetry::trace_of(&tracing::Span::current());
        Ok(self.bus.request(&subject, &query, trace.as_ref(), self.query_timeout).await?)
    }

    /// [`AppState::catalog`], answering the catalog's JSON bytes unparsed (with its headers).
    pub async fn catalog_raw(&self, name: &str, query: &Value) -> Result<RawAnswer, ApiError> {
        let subject = format!("arca.q.catalog.{name}");
        let trace = arca_telemetry::trace_of(&tracing::Span::current());
        Ok(self.bus.request_raw(&subject, query, trace.as_ref(), self.query_timeout).await?)
    }
}
