//! What every handler shares: the bus, the event store, the sealed-secret store and metrics.

use std::time::Duration;

use arca_bus::secrets::SecretStore;
use arca_bus::{Bus, EventStore};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::problem::ApiError;

pub struct AppState {
    pub bus: Bus,
    pub store: EventStore,
    /// Seals target credentials; `None` when the gateway has no server key.
    pub secrets: Option<SecretStore>,
    /// Opens tenants' repositories (file downloads); `None` when the gateway has no server key.
    pub targets: Option<arca_worker::Targets>,
    pub metrics: PrometheusHandle,
    pub idempotency: crate::idempotency::Idempotency,
    /// Per-key request rate; `None`: unlimited.
    pub limiter: Option<crate::limit::Limiter>,
    pub query_timeout: Duration,
}

impl AppState {
    /// Asks the catalog `arca.q.catalog.<name>`.
    pub async fn catalog<R: DeserializeOwned>(&self, name: &str, query: Value) -> Result<R, ApiError> {
        let subject = format!("arca.q.catalog.{name}");
        let trace = arca_telemetry::trace_of(&tracing::Span::current());
        Ok(self.bus.request(&subject, &query, trace.as_ref(), self.query_timeout).await?)
    }
}
