//! The worker's spans (docs/operations.md, "Seeing a trace"), named and attributed after the
//! OpenTelemetry messaging conventions: one consumer span per event, continuing the context its
//! publisher put in the message; one per batch, a child of its first event's span and linked to
//! the others; a span per handler call and one for the commit; and, after the commit, a span for
//! each outbox round with a producer span per message, whose context the message carries on.
//!
//! Every span an event is handled in records `trace_id` and `event.id`, so each log line written
//! meanwhile names both (`telemetry`'s JSON lines flatten the fields of the spans a line is in).

use automation_shared::db::events::Destination;
use automation_shared::events::Envelope;
use automation_shared::traces::{self, TraceHeaders};
use tracing::Span;
use tracing::field::Empty;

/// The span of one event taken from `queue`: a root in this process that continues the trace of
/// its publisher. The envelope is given the span's context, so what the event causes
/// (notifications, follow-up events, a run) continues from here.
pub fn event(queue: &str, routing_key: &str, envelope: &mut Envelope, redelivered: bool) -> Span {
    let span = tracing::info_span!(
        parent: None,
        "event",
        otel.name = %format!("process {queue}"),
        otel.kind = "consumer",
        messaging.system = "rabbitmq",
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = %queue,
        messaging.rabbitmq.destination.routing_key = %routing_key,
        messaging.message.id = %envelope.id,
        messaging.rabbitmq.message.redelivered = redelivered,
        event.id = %envelope.id,
        event.r#type = %envelope.event_type.as_str(),
        event.source = %envelope.source,
        trace_id = Empty,
    );
    let publisher = TraceHeaders { traceparent: envelope.traceparent.take(), tracestate: envelope.tracestate.take() };
    traces::continue_from(&span, &publisher);
    let ours = TraceHeaders::of(&span);
    envelope.traceparent = ours.traceparent.or(publisher.traceparent);
    envelope.tracestate = ours.tracestate.or(publisher.tracestate);
    span
}

/// A message that cannot be taken, while it is dead-lettered: it continues its publisher's
/// trace from the AMQP headers, as far as they tell.
pub fn poison(queue: &str, routing_key: &str, properties: &lapin::BasicProperties, event_id: Option<&str>) -> Span {
    let span = tracing::info_span!(
        parent: None,
        "event",
        otel.name = %format!("process {queue}"),
        otel.kind = "consumer",
        otel.status_code = "error",
        messaging.system = "rabbitmq",
        messaging.operation.type = "process",
        messaging.destination.name = %queue,
        messaging.rabbitmq.destination.routing_key = %routing_key,
        messaging.message.id = event_id,
        event.id = event_id,
        trace_id = Empty,
    );
    traces::continue_from(&span, &TraceHeaders::from_amqp(properties));
    span
}

/// The span of a batch of events applied in one transaction: a child of the first event's span,
/// linked to the others'. Its `event.id` lists the batch's events, comma-separated.
pub fn batch<'a>(queue: &str, events: impl ExactSizeIterator<Item = (&'a Span, &'a str)>) -> Span {
    let count = events.len();
    let (spans, ids): (Vec<&Span>, Vec<&str>) = events.unzip();
    let span = tracing::info_span!(
        parent: spans.first().and_then(|s| s.id()),
        "batch",
        otel.name = %format!("apply {queue}"),
        messaging.system = "rabbitmq",
        messaging.operation.type = "process",
        messaging.destination.name = %queue,
        messaging.batch.message_count = count,
        event.id = %ids.join(","),
        trace_id = Empty,
    );
    let others: Vec<TraceHeaders> = spans.iter().skip(1).map(|s| TraceHeaders::of(s)).collect();
    traces::link_all(&span, &others);
    span.record("trace_id", traces::trace_id(&span).as_str());
    span
}

/// A handler deciding one event, inside its batch. In a batch of several it is linked to its
/// event's span, and its `trace_id` is its event's, for the log lines it writes.
pub fn handler(envelope: &Envelope) -> Span {
    let event = TraceHeaders { traceparent: envelope.traceparent.clone(), tracestate: envelope.tracestate.clone() };
    let event_trace = event.span_context().map(|c| c.trace_id().to_string());
    let span = tracing::info_span!(
        "handle",
        otel.name = %format!("handle {}", envelope.event_type.as_str()),
        event.id = %envelope.id,
        event.r#type = %envelope.event_type.as_str(),
        trace_id = event_trace.as_deref(),
    );
    if event_trace.is_some_and(|t| t != traces::trace_id(&span)) {
        traces::link_all(&span, [&event]);
    }
    span
}

/// The commit of a batch's transaction.
pub fn commit() -> Span {
    tracing::info_span!("commit", otel.name = "commit", db.system.name = "mysql", db.operation.name = "COMMIT")
}

/// One round of the outbox relay: a child of its first message's cause, linked to the others'.
/// A message's cause is the span of the event (or run) that wrote it, whose context its
/// CloudEvent (or start message) carries.
pub fn outbox_round(causes: &[TraceHeaders], swept: bool) -> Span {
    let span = tracing::info_span!(
        parent: None,
        "outbox",
        otel.name = if swept { "publish outbox leftovers" } else { "publish outbox" },
        otel.kind = "producer",
        messaging.system = "rabbitmq",
        messaging.operation.type = "send",
        messaging.batch.message_count = causes.len(),
        trace_id = Empty,
    );
    if let Some(first) = causes.first() {
        traces::continue_from(&span, first);
    }
    traces::link_all(&span, causes.iter().skip(1));
    span
}

/// The producer span of one outbox message (a notification, a follow-up event, a run's start),
/// a child of its cause. The message carries this span's context in its AMQP headers.
pub fn outbox_message(
    cause: &TraceHeaders,
    exchange: &str,
    destination: Destination,
    routing_key: &str,
    message_id: &str,
) -> Span {
    let span = tracing::info_span!(
        parent: None,
        "publish",
        otel.name = %format!("publish {}", if exchange.is_empty() { routing_key } else { exchange }),
        otel.kind = "producer",
        messaging.system = "rabbitmq",
        messaging.operation.type = "send",
        messaging.operation.name = "publish",
        messaging.destination.name = %exchange,
        messaging.rabbitmq.destination.routing_key = %routing_key,
        messaging.message.id = %message_id,
        outbox.destination = destination.as_str(),
        trace_id = Empty,
    );
    traces::continue_from(&span, cause);
    span
}

/// One attempt of a run, from its start message: continues the trace of the event that asked
/// for the run (the start message carries it).
pub fn run_attempt(delivery: &lapin::message::Delivery) -> Span {
    let span = tracing::info_span!(
        parent: None,
        "run",
        otel.name = %format!("run {}", crate::tasks::EXECUTE),
        otel.kind = "consumer",
        messaging.system = "rabbitmq",
        messaging.operation.type = "process",
        messaging.destination.name = %delivery.routing_key.as_str(),
        messaging.message.id = delivery.properties.message_id().as_ref().map(|m| m.as_str()),
        run.id = Empty,
        automation = Empty,
        attempt = Empty,
        event.id = Empty,
        trace_id = Empty,
    );
    let mut cause = TraceHeaders::from_amqp(&delivery.properties);
    if cause.traceparent.is_none() {
        cause = TraceHeaders::from_json(&delivery.data);
    }
    traces::continue_from(&span, &cause);
    span
}

/// A dead letter taken into the store: continues the trace of the message that died (its AMQP
/// headers keep the context it was published with).
pub fn dead_letter(delivery: &lapin::message::Delivery) -> Span {
    let span = tracing::info_span!(
        parent: None,
        "dead_letter",
        otel.name = %format!("process {}", delivery.exchange.as_str()),
        otel.kind = "consumer",
        messaging.system = "rabbitmq",
        messaging.operation.type = "process",
        messaging.destination.name = %delivery.exchange.as_str(),
        messaging.rabbitmq.destination.routing_key = %delivery.routing_key.as_str(),
        messaging.message.id = delivery.properties.message_id().as_ref().map(|m| m.as_str()),
        trace_id = Empty,
    );
    traces::continue_from(&span, &TraceHeaders::from_amqp(&delivery.properties));
    span
}
