//! Logs, traces and metrics, the same way in every service.
//!
//! - [`init`] installs the log output (stderr, filtered by `RUST_LOG`) and, when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set, an OpenTelemetry layer that exports spans over
//!   OTLP/HTTP with the service's name. [`init_with_provider`] does the same with a given
//!   tracer provider (tests use an in-memory exporter).
//! - A trace crosses services in NATS: events and job tickets carry a W3C `TraceContext`
//!   (`traceparent`, `tracestate`), also in their message headers. [`set_parent`] makes a span
//!   continue the trace a message carries, [`trace_of`] gives the context to put on the next
//!   message. Without an OpenTelemetry layer, `trace_of` is `None` and callers keep the
//!   context they were given, so ids still flow from event to event.
//! - [`shutdown_signal`] is how every service process learns to stop.
//! - [`serve_metrics`] exposes the process's Prometheus metrics (`metrics` crate macros) on
//!   `http://ADDR/metrics`.

use std::collections::HashMap;
use std::net::SocketAddr;

use arca_events::TraceContext;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("OTLP exporter: {0}")]
    Exporter(String),
    #[error("metrics endpoint on {addr}: {reason}")]
    Metrics { addr: SocketAddr, reason: String },
}

/// Flushes and stops trace export when dropped (keep it alive in `main`).
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("telemetry: flushing spans failed: {e}");
        }
    }
}

fn filter(default: &str) -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into())
}

/// Installs logging and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, OTLP trace export for
/// `service`. `default_filter` applies when `RUST_LOG` is not set.
pub fn init(service: &'static str, default_filter: &str) -> Result<Telemetry, TelemetryError> {
    let provider = match std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT") {
        Some(_) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .build()
                .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(opentelemetry_sdk::Resource::builder().with_service_name(service).build())
                    .build(),
            )
        }
        None => None,
    };
    Ok(install(service, provider, default_filter))
}

/// Installs logging and trace export through `provider` (e.g. an in-memory exporter).
pub fn init_with_provider(service: &'static str, provider: SdkTracerProvider, default_filter: &str) -> Telemetry {
    install(service, Some(provider), default_filter)
}

fn install(service: &'static str, provider: Option<SdkTracerProvider>, default_filter: &str) -> Telemetry {
    use std::io::IsTerminal;
    // Colours only on a terminal: logs redirected to a file stay plain text.
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    let otel = provider.as_ref().map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service)));
    // A second init in one process (tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry().with(filter(default_filter)).with(fmt).with(otel).try_init();
    Telemetry { provider }
}

/// Makes `span` continue the trace `trace` names (a remote parent).
pub fn set_parent(span: &tracing::Span, trace: Option<&TraceContext>) {
    let Some(trace) = trace else { return };
    let mut carrier = HashMap::new();
    carrier.insert("traceparent".to_owned(), trace.traceparent.clone());
    if let Some(state) = &trace.tracestate {
        carrier.insert("tracestate".to_owned(), state.clone());
    }
    let parent = TraceContextPropagator::new().extract(&carrier);
    if let Err(e) = span.set_parent(parent) {
        tracing::debug!(error = %e, "could not set a span's remote parent");
    }
}

/// The W3C context of `span`, to carry on the messages it sends; `None` when no
/// OpenTelemetry layer records it.
pub fn trace_of(span: &tracing::Span) -> Option<TraceContext> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    TraceContext::parse(carrier.get("traceparent")?, carrier.get("tracestate").map(String::as_str))
}

/// Metadata for a new chain of work started inside `span` (an API request, a CLI command):
/// a fresh correlation id and the span's trace, or a new trace when no OpenTelemetry layer
/// records the span.
pub fn root_metadata(span: &tracing::Span) -> arca_events::Metadata {
    let mut meta = arca_events::Metadata::new_root();
    if let Some(trace) = trace_of(span) {
        meta.trace = Some(trace);
    }
    meta
}

/// Serves the process's metrics for Prometheus on `http://addr/metrics` (from a Tokio context:
/// the listener runs on the current runtime).
pub fn serve_metrics(addr: SocketAddr) -> Result<(), TelemetryError> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| TelemetryError::Metrics { addr, reason: e.to_string() })
}

/// Completes when the process is asked to stop (SIGTERM or Ctrl-C): every service's
/// `run_until_stopped` future.
pub async fn shutdown_signal() {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("install a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

/// Metric names, so every service spells them alike.
pub mod names {
    /// Counter, labels `kind`, `state` (`started`, `succeeded`, `failed`, `retried`).
    pub const JOBS: &str = "arca_jobs_total";
    /// Gauge, label `kind`: jobs running in this process.
    pub const JOBS_RUNNING: &str = "arca_jobs_running";
    /// Histogram, label `kind`: seconds from start to end of an attempt.
    pub const JOB_DURATION: &str = "arca_job_duration_seconds";
    /// Counter, label `kind`: bytes read from sources or repositories.
    pub const BYTES_IN: &str = "arca_bytes_in_total";
    /// Counter, label `kind`: bytes added to repositories.
    pub const BYTES_OUT: &str = "arca_bytes_out_total";
    /// Counter, labels `kind`, `temporary`.
    pub const JOB_ERRORS: &str = "arca_job_errors_total";
    /// Gauge, label `kind`: tickets waiting on the queue (and unacknowledged).
    pub const QUEUE_DEPTH: &str = "arca_queue_depth";
    /// Gauge: events the catalog has not applied yet.
    pub const CATALOG_LAG: &str = "arca_catalog_lag_events";
    /// Counter, labels `method`, `route`, `status`: HTTP requests the gateway answered.
    pub const HTTP_REQUESTS: &str = "arca_http_requests_total";
    /// Histogram, labels `method`, `route`: seconds from request to response head.
    pub const HTTP_DURATION: &str = "arca_http_request_duration_seconds";
}
