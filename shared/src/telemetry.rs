//! Logs (JSON lines in production, pretty in a terminal), Prometheus metrics, and W3C trace
//! context carried from the HTTP request through the message to the worker.

use std::io::IsTerminal;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat};
use crate::meters::Kind;

/// Installs the global log subscriber. Call once, from `main`.
pub fn init_tracing(config: &Config) {
    let filter = EnvFilter::try_new(&config.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match config.log_format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(true);
    // Another subscriber (a test harness) may already be installed: keep it.
    let _ = if json {
        builder.json().flatten_event(true).with_current_span(true).with_span_list(false).try_init()
    } else {
        builder.try_init()
    };
}

/// The process-wide Prometheus recorder. The `metrics` facade is global by design; this keeps
/// the one handle that renders it.
pub fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let histograms = crate::meters::API.iter().chain(crate::meters::WORKER).filter(|m| m.kind == Kind::Histogram);
        let recorder = histograms
            .fold(PrometheusBuilder::new().set_buckets(crate::meters::buckets("")), |builder, m| {
                builder.and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(m.name.to_string()), crate::meters::buckets(m.name))
                })
            })
            .map(|b| b.build_recorder())
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        // Fails only if another recorder was installed first; ours still renders, empty.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// A W3C `traceparent`: version 00, trace id, parent span id, flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: String,
    pub span_id: String,
    pub sampled: bool,
}

impl TraceParent {
    /// Parses a `traceparent` header; anything malformed is ignored, as the spec asks.
    pub fn parse(header: &str) -> Option<TraceParent> {
        let mut parts = header.trim().split('-');
        let (version, trace_id, span_id, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex =
            |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
        if version != "00" || parts.next().is_some() || !hex(trace_id, 32) || !hex(span_id, 16) || !hex(flags, 2) {
            return None;
        }
        if trace_id.bytes().all(|b| b == b'0') || span_id.bytes().all(|b| b == b'0') {
            return None;
        }
        Some(TraceParent {
            trace_id: trace_id.to_string(),
            span_id: span_id.to_string(),
            sampled: u8::from_str_radix(flags, 16).is_ok_and(|f| f & 1 == 1),
        })
    }

    /// A new trace, for a request that arrived without one.
    pub fn new_root() -> TraceParent {
        let id = uuid::Uuid::new_v4().simple().to_string();
        TraceParent { trace_id: id, span_id: new_span_id(), sampled: true }
    }

    /// The context to hand on: same trace, a new span of ours.
    pub fn child(&self) -> TraceParent {
        TraceParent { trace_id: self.trace_id.clone(), span_id: new_span_id(), sampled: self.sampled }
    }

    pub fn header(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.span_id, if self.sampled { "01" } else { "00" })
    }
}

fn new_span_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..16].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_children_keep_the_trace() {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parent = TraceParent::parse(header).expect("valid");
        assert_eq!(parent.header(), header);
        let child = parent.child();
        assert_eq!(child.trace_id, parent.trace_id);
        assert_ne!(child.span_id, parent.span_id);
        assert!(TraceParent::parse(&child.header()).is_some());
    }

    #[test]
    fn malformed_traceparents_are_ignored() {
        for bad in [
            "",
            "00-abc-def-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ] {
            assert!(TraceParent::parse(bad).is_none(), "{bad}");
        }
    }
}
