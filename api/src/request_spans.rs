//! The server span of each HTTP request (OpenTelemetry HTTP semantic conventions): named
//! `{method} {route}`, continuing the caller's `traceparent`/`tracestate`, with the status of
//! the answer. The path is recorded without its query string: the old login put a password there.

use automation_shared::traces::{self, TraceHeaders};
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderMap, StatusCode};
use tracing::Span;
use tracing::field::Empty;

/// The trace context a request (or any HTTP message) carries.
pub fn trace_headers(headers: &HeaderMap) -> TraceHeaders {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    TraceHeaders { traceparent: text(traces::TRACEPARENT), tracestate: text(traces::TRACESTATE) }
}

pub fn make_span(request: &Request) -> Span {
    let id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let route = request.extensions().get::<MatchedPath>().map(MatchedPath::as_str);
    let method = request.method().as_str();
    let span = tracing::info_span!(
        "request",
        otel.name = %route.map_or_else(|| method.to_string(), |r| format!("{method} {r}")),
        otel.kind = "server",
        otel.status_code = Empty,
        method = %method,
        path = %request.uri().path(),
        http.request.method = %method,
        http.route = route,
        url.path = %request.uri().path(),
        url.scheme = "http",
        http.response.status_code = Empty,
        request_id = %id,
        trace_id = Empty,
    );
    traces::continue_from(&span, &trace_headers(request.headers()));
    span
}

/// Records the answer's status on the request's span (the access log calls it for every answer).
pub fn record_status(status: StatusCode, span: &Span) {
    span.record("http.response.status_code", status.as_u16());
    // A 4xx is the caller's business; for a server span only a 5xx is an error.
    if status.is_server_error() {
        span.record("otel.status_code", "error");
    }
}
