//! OpenTelemetry traces: the tracer both binaries install, exporting over OTLP/HTTP (protobuf)
//! only when the standard `OTEL_*` variables name an endpoint; W3C trace context (`traceparent`,
//! `tracestate`) in and out of AMQP headers, CloudEvents and HTTP; and the span names and
//! attributes both binaries share (docs/operations.md, "Seeing a trace").
//!
//! The tracer is installed whether or not it exports: trace ids are made and carried from the
//! HTTP request through the messages either way (CONTRACT §10), and log lines name them. Without
//! an endpoint no span leaves the process and nothing is queued.

use std::collections::HashMap;
use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::AMQPValue;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::messaging;

/// The header (and CloudEvents extension) names of W3C trace context.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// What flushing spans at shutdown may add to the exit, whatever the collector does.
pub const FLUSH_PATIENCE: Duration = Duration::from_secs(1);

/// Where spans go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Export {
    /// Nowhere: ids are made and carried, spans end in the process.
    Off,
    /// To the endpoint the `OTEL_EXPORTER_OTLP_*` variables name (the exporter reads them).
    FromEnvironment,
    /// To this full OTLP/HTTP traces URL (`http://host:4318/v1/traces`).
    To(String),
}

impl Export {
    /// From the standard variables: on when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` is set, unless `OTEL_SDK_DISABLED=true` or
    /// `OTEL_TRACES_EXPORTER=none`.
    pub fn from_env() -> Export {
        let set = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let disabled = set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
        if !disabled
            && (set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some() || set("OTEL_EXPORTER_OTLP_ENDPOINT").is_some())
        {
            Export::FromEnvironment
        } else {
            Export::Off
        }
    }
}

/// The installed tracer provider; [`Traces::shutdown`] flushes it.
#[derive(Debug, Clone)]
pub struct Traces {
    provider: SdkTracerProvider,
    exporting: bool,
}

impl Traces {
    /// A provider for `service` (`OTEL_SERVICE_NAME` overrides it), sampling as
    /// `OTEL_TRACES_SAMPLER` says (parent-based, always on by default), batching as `OTEL_BSP_*`
    /// say. An exporter that cannot be built is reported once and traces stay in the process.
    pub fn new(service: &'static str, export: &Export) -> Traces {
        let name = std::env::var("OTEL_SERVICE_NAME").ok().filter(|n| !n.trim().is_empty());
        let resource = Resource::builder()
            .with_service_name(name.unwrap_or_else(|| service.to_string()))
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let builder = SdkTracerProvider::builder().with_resource(resource);
        let exporter = match export {
            Export::Off => None,
            Export::FromEnvironment => {
                opentelemetry_otlp::SpanExporter::builder().with_http().with_protocol(Protocol::HttpBinary).build().ok()
            }
            Export::To(url) => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(url)
                .build()
                .ok(),
        };
        if *export != Export::Off && exporter.is_none() {
            eprintln!("the OTLP trace exporter could not be built (check OTEL_EXPORTER_OTLP_*); not exporting traces");
        }
        let exporting = exporter.is_some();
        let provider = match exporter {
            // On the tokio runtime: the async HTTP client needs it, and a slow collector then
            // holds up no request: a full queue drops spans.
            Some(exporter) => builder
                .with_span_processor(
                    opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
                        exporter,
                        opentelemetry_sdk::runtime::Tokio,
                    )
                    .build(),
                )
                .build(),
            None => builder.build(),
        };
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        Traces { provider, exporting }
    }

    pub fn exporting(&self) -> bool {
        self.exporting
    }

    pub fn tracer(&self) -> SdkTracer {
        self.provider.tracer("automation-engine")
    }

    /// Flushes what is queued, giving up after [`FLUSH_PATIENCE`]: a collector that is away must
    /// not hold the exit. The flush blocks, so it runs on a thread of its own (left behind if it
    /// overruns, rather than holding the runtime's shutdown).
    pub async fn shutdown(&self) {
        if !self.exporting {
            return;
        }
        let provider = self.provider.clone();
        let (done, flushed) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new().name("otel-flush".into()).spawn(move || {
            let _ = done.send(provider.shutdown_with_timeout(FLUSH_PATIENCE));
        });
        if spawned.is_err() {
            return;
        }
        match tokio::time::timeout(FLUSH_PATIENCE, flushed).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => tracing::warn!(%error, "could not flush the last spans"),
            Ok(Err(_)) | Err(_) => {
                tracing::warn!("the trace collector did not take the last spans in time; leaving them")
            }
        }
    }
}

/// W3C trace context as text, for a message or a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceHeaders {
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

impl TraceHeaders {
    /// The context of `span` (none when tracing is not installed).
    pub fn of(span: &tracing::Span) -> TraceHeaders {
        TraceHeaders::of_context(&span.context())
    }

    /// The context of the current span.
    pub fn current() -> TraceHeaders {
        TraceHeaders::of(&tracing::Span::current())
    }

    fn of_context(context: &Context) -> TraceHeaders {
        let mut carrier = HashMap::new();
        TraceContextPropagator::new().inject_context(context, &mut Carrier(&mut carrier));
        TraceHeaders {
            traceparent: carrier.remove(TRACEPARENT),
            tracestate: carrier.remove(TRACESTATE).filter(|s| !s.is_empty()),
        }
    }

    /// The remote context these headers name; an empty one if they are missing or malformed
    /// (the spec says to ignore them then).
    pub fn context(&self) -> Context {
        let mut carrier = HashMap::new();
        // The propagator takes `00-abc-def-01` as a trace: the W3C shape is checked here.
        if let Some(parent) = self.traceparent.as_deref().filter(|p| well_formed(p)) {
            carrier.insert(TRACEPARENT.to_string(), parent.to_string());
        }
        if let Some(state) = &self.tracestate {
            carrier.insert(TRACESTATE.to_string(), state.clone());
        }
        TraceContextPropagator::new().extract(&Carrier(&mut carrier))
    }

    /// The span context these headers name, when valid.
    pub fn span_context(&self) -> Option<SpanContext> {
        let context = self.context();
        let span = context.span();
        let span_context = span.span_context();
        span_context.is_valid().then(|| span_context.clone())
    }

    /// From AMQP headers `traceparent` and `tracestate`.
    pub fn from_amqp(properties: &BasicProperties) -> TraceHeaders {
        let text = |name: &str| {
            properties.headers().as_ref().and_then(|h| h.inner().get(name)).and_then(|v| match v {
                AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok().map(str::to_string),
                AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
                _ => None,
            })
        };
        TraceHeaders { traceparent: text(TRACEPARENT), tracestate: text(TRACESTATE) }
    }

    /// Sets the AMQP headers `traceparent` and `tracestate` (the names the contract uses).
    pub fn to_amqp(&self, mut properties: BasicProperties) -> BasicProperties {
        if let Some(parent) = &self.traceparent {
            properties = messaging::set_header(properties, TRACEPARENT, parent.clone());
        }
        if let Some(state) = &self.tracestate {
            properties = messaging::set_header(properties, TRACESTATE, state.clone());
        }
        properties
    }

    /// The `traceparent` and `tracestate` members of a JSON body (a CloudEvent's extensions, a
    /// start message), read without decoding the rest.
    pub fn from_json(body: &[u8]) -> TraceHeaders {
        #[derive(serde::Deserialize)]
        struct Members {
            traceparent: Option<String>,
            tracestate: Option<String>,
        }
        serde_json::from_slice::<Members>(body)
            .map(|m| TraceHeaders { traceparent: m.traceparent, tracestate: m.tracestate })
            .unwrap_or_default()
    }
}

/// The trace id of `span` as 32 hex digits; empty when it has none.
pub fn trace_id(span: &tracing::Span) -> String {
    let context = span.context();
    let span_ref = context.span();
    let span_context = span_ref.span_context();
    if span_context.is_valid() { span_context.trace_id().to_string() } else { String::new() }
}

/// Makes `span` continue `remote` (a no-op for an empty context) and records its trace id in its
/// `trace_id` field, for the log lines in it.
pub fn continue_from(span: &tracing::Span, remote: &TraceHeaders) {
    let context = remote.context();
    if context.span().span_context().is_valid() {
        let _ = span.set_parent(context);
    }
    span.record("trace_id", trace_id(span).as_str());
}

/// Links `span` to the contexts of what it handles on behalf of other traces.
pub fn link_all<'a>(span: &tracing::Span, remotes: impl IntoIterator<Item = &'a TraceHeaders>) {
    for remote in remotes {
        if let Some(context) = remote.span_context() {
            span.add_link(context);
        }
    }
}

/// `version-traceid-spanid-flags` with 2, 32, 16 and 2 lowercase hex digits (a later version
/// may add fields after these); version `ff` is invalid.
fn well_formed(traceparent: &str) -> bool {
    let parts: Vec<&str> = traceparent.trim().split('-').collect();
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    parts.len() >= 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && (parts[0] != "00" || parts.len() == 4)
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
}

struct Carrier<'a>(&'a mut HashMap<String, String>);

impl Injector for Carrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), value);
    }
}

impl Extractor for Carrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_context_is_read_and_written_with_its_state() {
        let headers = TraceHeaders {
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            tracestate: Some("congo=t61rcWkgMzE".into()),
        };
        let context = headers.context();
        assert_eq!(TraceHeaders::of_context(&context), headers);
        let properties = headers.to_amqp(BasicProperties::default());
        assert_eq!(TraceHeaders::from_amqp(&properties), headers);
        let body = br#"{"id":"1","traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","tracestate":"congo=t61rcWkgMzE","data":{}}"#;
        assert_eq!(TraceHeaders::from_json(body), headers);
    }

    #[test]
    fn malformed_trace_context_is_ignored() {
        for bad in [
            "",
            "00-abc-def-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        ] {
            let headers = TraceHeaders { traceparent: Some(bad.into()), tracestate: None };
            assert!(headers.span_context().is_none(), "{bad}");
        }
    }
}
