//! Every request in one span and two metrics.
//!
//! [`observe`] wraps the whole app: a `http_request` span (method, route pattern, status) that
//! continues the caller's trace when it sends a W3C `traceparent`, so the commands a handler
//! appends and the jobs it starts carry the request's trace ([`command_metadata`]) across
//! the services. Requests are counted and timed by method, route pattern and status
//! (patterns, not paths, so ids do not explode the label space).

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use arca_events::{Metadata, TraceContext};
use arca_telemetry::names;
use tracing::Instrument;

pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let method = req.method().as_str().to_owned();
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
    let span = tracing::info_span!("http_request", method = %method, route = %route, status = tracing::field::Empty);
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let incoming = header("traceparent").and_then(|parent| TraceContext::parse(parent, header("tracestate")));
    arca_telemetry::set_parent(&span, incoming.as_ref());
    let started = Instant::now();
    let response = next.call(req).instrument(span.clone()).await;
    let status = match &response {
        Ok(response) => response.status(),
        Err(error) => error.as_response_error().status_code(),
    };
    span.record("status", status.as_u16());
    let labels = [("method", method), ("route", route)];
    metrics::histogram!(names::HTTP_DURATION, &labels).record(started.elapsed().as_secs_f64());
    let [method, route] = labels;
    metrics::counter!(names::HTTP_REQUESTS, &[method, route, ("status", status.as_u16().to_string())]).increment(1);
    response
}

/// Metadata for the commands a handler appends: a new correlation, the request's trace.
pub fn command_metadata() -> Metadata {
    arca_telemetry::root_metadata(&tracing::Span::current())
}
