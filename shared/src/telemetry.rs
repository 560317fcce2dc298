//! Logs (JSON lines in production, pretty in a terminal) with the trace and event of the span
//! they are in, the tracer (`traces`), and Prometheus metrics.

use std::io::IsTerminal;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::JsonFields;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::{Config, LogFormat};
use crate::meters::Kind;
use crate::traces::{Export, Traces};

mod log_lines;

/// Installs the global log subscriber and the tracer of `service` (exporting when the
/// standard `OTEL_*` variables say so). Call once, from `main`; flush with
/// [`Traces::shutdown`] before exiting.
pub fn init_tracing(config: &Config, service: &'static str) -> Traces {
    let json = match config.log_format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    init_tracing_with(config, service, &Export::from_env(), json, std::io::stdout)
}

/// [`init_tracing`] with the export and the log writer chosen by the caller (tests).
pub fn init_tracing_with<W>(config: &Config, service: &'static str, export: &Export, json: bool, writer: W) -> Traces
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(&config.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let traces = Traces::new(service, export);
    let logs: Box<dyn Layer<Registry> + Send + Sync> = if json {
        tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .fmt_fields(JsonFields::new())
            .event_format(log_lines::JsonLines)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer().with_writer(writer).with_target(true).boxed()
    };
    let subscriber = Registry::default()
        .with(logs)
        // Busy/idle times and thread names only matter in an exported span: without an endpoint
        // they are not taken.
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(traces.tracer())
                .with_location(false)
                .with_tracked_inactivity(traces.exporting())
                .with_threads(traces.exporting()),
        )
        .with(filter);
    // Another subscriber (a test harness) may already be installed: keep it.
    let _ = tracing::subscriber::set_global_default(subscriber);
    traces
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
