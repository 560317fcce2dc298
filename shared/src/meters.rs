//! Every metric the binaries export, in one place: its name, kind and HELP text, and the buckets
//! of each histogram. Each binary describes its own at start, so `/metrics` carries HELP and TYPE
//! for every family and the unlabelled series exist (at zero) before their first use.

use metrics::Unit;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric family.
#[derive(Debug, Clone, Copy)]
pub struct Meter {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Option<Unit>,
    pub help: &'static str,
    /// Whether every series has labels (then none exists before its first use).
    pub labelled: bool,
}

const fn meter(name: &'static str, kind: Kind, unit: Option<Unit>, labelled: bool, help: &'static str) -> Meter {
    Meter { name, kind, unit, help, labelled }
}

pub const API_REQUESTS: &str = "automation_api_requests_total";
pub const API_REQUEST_SECONDS: &str = "automation_api_request_seconds";
pub const API_EVENTS_PUBLISHED: &str = "automation_api_events_published_total";

pub const WORKER_EVENTS: &str = "automation_worker_events_total";
pub const WORKER_DEAD_LETTERED: &str = "automation_worker_dead_lettered_total";
pub const WORKER_RETRIES: &str = "automation_worker_retries_total";
pub const WORKER_IN_FLIGHT: &str = "automation_worker_in_flight";
pub const WORKER_BATCH_SIZE: &str = "automation_worker_batch_size";
pub const WORKER_BATCH_SECONDS: &str = "automation_worker_batch_seconds";
pub const WORKER_APPLY_SECONDS: &str = "automation_worker_apply_seconds";
pub const WORKER_TASK_SECONDS: &str = "automation_worker_task_seconds";
pub const WORKER_PARTITIONS_OWNED: &str = "automation_worker_partitions_owned";
pub const WORKER_DEFERRED_EVENTS: &str = "automation_worker_deferred_events";
pub const WORKER_SEQUENCED: &str = "automation_worker_sequenced_total";
pub const WORKER_OUTBOX_SWEPT: &str = "automation_worker_outbox_swept_total";
pub const WORKER_OUTBOX_PUBLISHED: &str = "automation_worker_outbox_published_total";

pub const WORKER_OUTBOX_ROWS: &str = "automation_worker_outbox_rows";
pub const WORKER_OUTBOX_OLDEST_SECONDS: &str = "automation_worker_outbox_oldest_seconds";
pub const WORKER_DEAD_LETTERS: &str = "automation_worker_dead_letters";

/// `automation_db_pool_connections{state="in_use"|"idle"}`: the MySQL pool, both binaries.
pub const DB_POOL_CONNECTIONS: &str = "automation_db_pool_connections";
/// `automation_broker_connected`: 1 while the RabbitMQ connection is open, both binaries.
pub const BROKER_CONNECTED: &str = "automation_broker_connected";

/// `automation_ready`: 1 when this process's last readiness answer was 200, else 0, both binaries.
pub const READY: &str = "automation_ready";

/// `automation_build_info{binary, version}`: always 1.
pub const BUILD_INFO: &str = "automation_build_info";

/// Both binaries' own: their connections.
pub const CONNECTIONS: &[Meter] = &[
    meter(
        DB_POOL_CONNECTIONS,
        Kind::Gauge,
        None,
        true,
        "MySQL connections of this process's pool, by state (in_use, idle); read every 10 s.",
    ),
    meter(
        BROKER_CONNECTED,
        Kind::Gauge,
        None,
        false,
        "1 while this process's RabbitMQ connection is open and not blocked by an alarm, else 0; read every 10 s.",
    ),
    meter(
        READY,
        Kind::Gauge,
        None,
        false,
        "1 when this process's last readiness answer (/health/ready, the kubelet's probe) was 200, else 0.",
    ),
];

/// How often [`report_connections`] is meant to run.
pub const CONNECTIONS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Sets the connection gauges from the pool and the broker's state.
pub fn report_connections(pool: &sqlx::MySqlPool, broker_ready: bool) {
    let (size, idle) = (pool.size() as f64, pool.num_idle() as f64);
    metrics::gauge!(DB_POOL_CONNECTIONS, "state" => "in_use").set((size - idle).max(0.0));
    metrics::gauge!(DB_POOL_CONNECTIONS, "state" => "idle").set(idle);
    metrics::gauge!(BROKER_CONNECTED).set(if broker_ready { 1.0 } else { 0.0 });
}

pub const API: &[Meter] = &[
    meter(API_REQUESTS, Kind::Counter, None, true, "HTTP requests answered, by method, route and status."),
    meter(
        API_REQUEST_SECONDS,
        Kind::Histogram,
        Some(Unit::Seconds),
        true,
        "Time to answer an HTTP request, by method and route.",
    ),
    meter(API_EVENTS_PUBLISHED, Kind::Counter, None, true, "Events the broker confirmed, by type."),
];

pub const WORKER: &[Meter] = &[
    meter(
        WORKER_EVENTS,
        Kind::Counter,
        None,
        true,
        "Events processed, by type and outcome (applied, rejected, duplicate).",
    ),
    meter(
        WORKER_DEAD_LETTERED,
        Kind::Counter,
        None,
        true,
        "Messages dead-lettered, by kind and reason: poison and exhausted when the worker sends them; the broker's own (delivery_limit, expired, with reason broker) when the dead-letter store takes them.",
    ),
    meter(WORKER_RETRIES, Kind::Counter, None, true, "Transient failures sent to wait for another attempt, by kind."),
    meter(WORKER_IN_FLIGHT, Kind::Gauge, None, false, "Deliveries held by this worker right now."),
    meter(WORKER_BATCH_SIZE, Kind::Histogram, None, false, "Events per applied batch."),
    meter(
        WORKER_BATCH_SECONDS,
        Kind::Histogram,
        Some(Unit::Seconds),
        false,
        "Time to apply a batch, from its first delivery to its commit.",
    ),
    meter(
        WORKER_APPLY_SECONDS,
        Kind::Histogram,
        Some(Unit::Seconds),
        false,
        "Time inside a batch's database transaction.",
    ),
    meter(
        WORKER_TASK_SECONDS,
        Kind::Histogram,
        Some(Unit::Seconds),
        true,
        "Time one attempt of a task run took, by automation.",
    ),
    meter(WORKER_PARTITIONS_OWNED, Kind::Gauge, None, false, "Partition queues this worker consumes."),
    meter(WORKER_DEFERRED_EVENTS, Kind::Gauge, None, false, "Events stored waiting for their entity or their turn."),
    meter(WORKER_SEQUENCED, Kind::Counter, None, false, "Events the sequencer moved into the partitions."),
    meter(
        WORKER_OUTBOX_SWEPT,
        Kind::Counter,
        None,
        false,
        "Outbox rows published by the sweeper (left behind by a crash or an outage).",
    ),
    meter(WORKER_OUTBOX_PUBLISHED, Kind::Counter, None, false, "Outbox rows published right after their commit."),
    meter(
        WORKER_OUTBOX_ROWS,
        Kind::Gauge,
        None,
        false,
        "Outbox rows waiting to be published (the whole database: every worker reports the same; take the max).",
    ),
    meter(
        WORKER_OUTBOX_OLDEST_SECONDS,
        Kind::Gauge,
        Some(Unit::Seconds),
        false,
        "Age of the oldest outbox row waiting to be published (0 when none).",
    ),
    meter(
        WORKER_DEAD_LETTERS,
        Kind::Gauge,
        None,
        true,
        "Dead letters in the store, by state (dead, replayed, discarded; the whole database).",
    ),
];

/// Buckets per histogram: seconds for durations, counts for sizes.
pub fn buckets(name: &str) -> &'static [f64] {
    match name {
        WORKER_BATCH_SIZE => &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0],
        // A webhook may run 120 s.
        WORKER_TASK_SECONDS => &[0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0],
        _ => &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
    }
}

/// Describes `meters` to the recorder, creates the unlabelled series at zero, and sets
/// `automation_build_info` for `binary`.
pub fn describe(binary: &'static str, meters: &[Meter]) {
    metrics::describe_gauge!(BUILD_INFO, "The binary and its version; always 1.");
    metrics::gauge!(BUILD_INFO, "binary" => binary, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    for m in CONNECTIONS.iter().chain(meters) {
        match (m.kind, m.unit) {
            (Kind::Counter, Some(unit)) => metrics::describe_counter!(m.name, unit, m.help),
            (Kind::Counter, None) => metrics::describe_counter!(m.name, m.help),
            (Kind::Gauge, Some(unit)) => metrics::describe_gauge!(m.name, unit, m.help),
            (Kind::Gauge, None) => metrics::describe_gauge!(m.name, m.help),
            (Kind::Histogram, Some(unit)) => metrics::describe_histogram!(m.name, unit, m.help),
            (Kind::Histogram, None) => metrics::describe_histogram!(m.name, m.help),
        }
        if !m.labelled {
            match m.kind {
                Kind::Counter => metrics::counter!(m.name).increment(0),
                Kind::Gauge => metrics::gauge!(m.name).set(0.0),
                // A histogram has no zero to record; it appears with its first observation.
                Kind::Histogram => {}
            }
        }
    }
}
