//! Worker throughput: two comparisons in one run on the same machine. In each run the queue is
//! filled first, then an in-process worker drains it; the clock starts when the first event is in
//! the inbox (start-up is not throughput) and stops when every event is and every notification
//! has left the outbox.
//!
//! 1. **Batching**: one transaction per event (N=1, the baseline) against batches (N=100), with
//!    `approval.requested` events (applied, audited, announced), on the `competing` layout (the
//!    one the figures in README.md were first measured on).
//! 2. **Ordering**: the `competing` layout (every consumer on the one `commands` queue) against
//!    the `partitioned` one (a sequencer moves events into partition queues by entity key, each
//!    consumed by one worker at a time): batch 100, one worker with its default consumers, and
//!    `audit.recorded` events (applicable in any order, so both layouts do the same work) on two
//!    loads: **spread** over 10,000 entities and **concentrated** on 10. Event n goes to entity
//!    number `n mod entities` (a UUID derived from it). The layouts alternate run by run (competing, partitioned, competing,
//!    …) so drift on a noisy machine hits both; each cell is the median of `BENCH_REPEAT` runs.
//!
//! Every run checks, after the worker stopped, that each event was applied exactly once (in the
//! inbox once as `applied`, and one effect row each) and panics otherwise; it also fails when
//! nothing moves for a minute. The ordering runs also count the events applied after a later one
//! on the same entity (reported, not checked: the worker's tests check the guarantee).
//!
//! `make bench` (or `cargo bench -p automation-worker --bench throughput`) prints a table and a
//! one-line JSON summary per comparison on stdout, progress on stderr. Environment:
//!
//! - `BENCH_EVENTS`: events per run, in both comparisons (default 20000);
//! - `BENCH_BATCHES`: the batch sizes of the batching comparison (default "1,100");
//! - `BENCH_BATCH_LAYOUT`: the layout of the batching comparison, `competing` (default) or
//!   `partitioned`;
//! - `BENCH_CONSUMERS`: consumers per worker, in both comparisons (default: the worker's, 2);
//! - `BENCH_REPEAT`: runs per cell of the ordering comparison (default 3);
//! - `BENCH_PARTITIONS`: partitions of the partitioned layout (default 16, as in production);
//! - `BENCH_TABLES`: the comparisons to run, from "batching,ordering" (the default: both).
//! - `BENCH_SQL=1`: after each run, what MariaDB did per event (its `Com_*`, `Handler_*` and
//!   `Innodb_rows_*` counters that moved; the server's, so a test beside the bench counts too).
//!
//! The partition count is the worker's default (16): the test environment declares the topology
//! before a run could change it.

#![expect(clippy::expect_used, reason = "test support: a failed set-up stops the test with its message")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use automation_shared::config::Ordering as Layout;
use automation_shared::messaging::{Outgoing, cloud_event_properties};
use automation_shared::testing::TestEnv;
use automation_worker::service::{self, Worker};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A run that stops progressing this long has failed.
const STALL: Duration = Duration::from_secs(60);
/// And one that takes longer than this.
const LIMIT: Duration = Duration::from_secs(600);
/// The batch size of the ordering comparison.
const ORDERING_BATCH: usize = 100;
/// The loads of the ordering comparison: name, entities.
const LOADS: [(&str, usize); 2] = [("spread", 10_000), ("concentrated", 10)];
/// The layouts of the ordering comparison, in the order they alternate.
const LAYOUTS: [Layout; 2] = [Layout::Competing, Layout::Partitioned];
/// The `entity` of every `audit.recorded` event the bench sends.
const ENTITY: &str = "bench";

/// What a run drains.
#[derive(Clone, Copy)]
enum Workload {
    /// `approval.requested` on one workflow: applied, audited, announced.
    Approvals,
    /// `audit.recorded` over `entities` entities.
    Audits { entities: usize },
}

impl Workload {
    fn event_type(self) -> &'static str {
        match self {
            Workload::Approvals => "approval.requested",
            Workload::Audits { .. } => "audit.recorded",
        }
    }
}

/// One run's settings.
struct Setup {
    label: String,
    workload: Workload,
    layout: Layout,
    batch: usize,
    events: usize,
    consumers: Option<u16>,
}

/// What one run measured.
struct Measured {
    seconds: f64,
    consumers: u16,
    partitions: u16,
    /// Events applied after a later event on the same entity (`Audits` only; `None` when the
    /// query failed).
    out_of_order: Option<i64>,
    /// CPU per event of the worker, RabbitMQ and MariaDB together, in µs (`None` when one of
    /// them was not found): the box is the limit, so this is what throughput costs.
    cpu_per_event: Option<f64>,
}

impl Measured {
    fn rate(&self, events: usize) -> f64 {
        events as f64 / self.seconds
    }
}

fn layout_name(layout: Layout) -> &'static str {
    match layout {
        Layout::Competing => "competing",
        Layout::Partitioned => "partitioned",
    }
}

fn parse_layout(variable: &str, value: &str) -> Layout {
    match value.trim() {
        "competing" => Layout::Competing,
        "partitioned" => Layout::Partitioned,
        other => panic!("{variable}: `{other}` is neither `competing` nor `partitioned`"),
    }
}

/// A number from the environment, `None` when unset; a value that does not parse stops the bench
/// rather than silently running something else.
fn env_number<T: std::str::FromStr>(variable: &str) -> Option<T> {
    let value = std::env::var(variable).ok()?;
    Some(value.trim().parse().unwrap_or_else(|_| panic!("{variable}: `{value}` is not a number")))
}

async fn run(setup: &Setup) -> Measured {
    let mut env = TestEnv::new().await;
    env.config.worker.ordering = setup.layout;
    // As in production (the tests use fewer); the worker declares the ones the tests did not.
    env.config.worker.partitions =
        env_number("BENCH_PARTITIONS").unwrap_or_else(|| automation_shared::config::WorkerConfig::default().partitions);
    env.config.worker.batch_size = setup.batch;
    env.config.worker.prefetch = (setup.batch * 2).clamp(200, u16::MAX as usize) as u16;
    env.config.database.max_connections = 10;
    if let Some(consumers) = setup.consumers {
        env.config.worker.consumers = consumers;
    }

    let bodies = match setup.workload {
        Workload::Approvals => approvals(&env, setup.events).await,
        Workload::Audits { entities } => audits(setup.events, entities),
    };
    fill(&env, setup.workload.event_type(), &bodies).await;

    let before = histograms();
    let counters = if std::env::var_os("BENCH_SQL").is_some() { server_counters(&env).await } else { Vec::new() };
    let (seconds, cpu_per_event) = drain(&env, setup).await;
    if !counters.is_empty() {
        let after = server_counters(&env).await;
        let moved: Vec<String> = after
            .iter()
            .filter_map(|(name, value)| {
                let was = counters.iter().find(|(n, _)| n == name).map_or(0, |(_, v)| *v);
                let per_event = value.saturating_sub(was) as f64 / setup.events as f64;
                (per_event >= 0.005).then(|| format!("{name} {per_event:.2}"))
            })
            .collect();
        eprintln!("    MariaDB per event: {}", moved.join(", "));
    }
    for ((name, count, sum), (_, count_before, sum_before)) in histograms().into_iter().zip(before) {
        let (count, sum) = (count - count_before, sum - sum_before);
        if name.ends_with("_seconds") {
            eprintln!("    {name}: {count} observations, {sum:.2} s in total");
        } else {
            eprintln!("    {name}: {count} batches, {:.0} events each on average", sum / count.max(1.0));
        }
    }
    verify(&env, setup).await;
    let out_of_order = match setup.workload {
        Workload::Approvals => None,
        Workload::Audits { .. } => out_of_order(&env).await,
    };
    Measured {
        seconds,
        consumers: env.config.worker.consumers,
        partitions: env.config.worker.partitions,
        out_of_order,
        cpu_per_event,
    }
}

/// `approval.requested` events on a workflow seeded for them.
async fn approvals(env: &TestEnv, events: usize) -> Vec<(String, Vec<u8>)> {
    let workflow = Uuid::new_v4();
    sqlx::query("insert into workflows (id, name, status, version) values (?, 'bench', 'ACTIVE', 1)")
        .bind(workflow.to_string())
        .execute(&env.pool)
        .await
        .expect("seed workflow");
    (0..events)
        .map(|i| {
            let id = Uuid::new_v4().to_string();
            let body = json!({
                "specversion": "1.0", "id": id, "source": "/bench", "type": "approval.requested",
                "data": {"workflowId": workflow, "title": format!("request {i}"), "amount": (i % 5000) as f64 + 0.5,
                         "currency": "EUR", "requesterId": Uuid::new_v4()}
            });
            (id, body.to_string().into_bytes())
        })
        .collect()
}

/// `audit.recorded` events, event n on entity number `n mod entities`, named by a UUID derived
/// from that number: entity ids scattered as real ones (approval and workflow ids) are, not
/// `e-1, e-2, …`, whose neighbouring events would fall on neighbouring index pages.
fn audits(events: usize, entities: usize) -> Vec<(String, Vec<u8>)> {
    (0..events)
        .map(|n| {
            let id = Uuid::new_v4().to_string();
            let body = json!({
                "specversion": "1.0", "id": id, "source": "/bench", "type": "audit.recorded",
                "data": {"entity": ENTITY, "entityId": Uuid::new_v5(&Uuid::NAMESPACE_OID, &(n % entities.max(1)).to_be_bytes()), "action": "hit",
                         "details": {"seq": n}}
            });
            (id, body.to_string().into_bytes())
        })
        .collect()
}

/// Publishes every event, in order, with confirms.
async fn fill(env: &TestEnv, routing_key: &str, bodies: &[(String, Vec<u8>)]) {
    let exchange = env.names().events();
    for chunk in bodies.chunks(1000) {
        let messages = chunk
            .iter()
            .map(|(id, body)| Outgoing {
                exchange: &exchange,
                routing_key,
                body,
                properties: cloud_event_properties(id, routing_key),
                mandatory: false,
            })
            .collect();
        env.publisher.publish_all(messages).await.expect("queue filled");
    }
}

/// Starts a worker on the filled queue and times it, from the first event in the inbox until
/// every event is and the outbox is empty; returns the seconds the whole drain takes at that
/// rate, once the worker has stopped, and the CPU per event of the worker, RabbitMQ and MariaDB.
async fn drain(env: &TestEnv, setup: &Setup) -> (f64, Option<f64>) {
    let events = setup.events as i64;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the worker's health port");
    let worker = Worker::connect(Arc::new(env.config.clone()), &CancellationToken::new(), &Default::default())
        .await
        .expect("the worker connects")
        .expect("not stopped");
    let shutdown = CancellationToken::new();
    // A failed check stops the worker too, before the environment goes.
    let _stop = shutdown.clone().drop_guard();
    let cpu_before = cpu();
    let started = Instant::now();
    let mut handle = tokio::spawn(service::run(worker, listener, shutdown.clone()));
    let (mut seen, mut progressed) = (-1, Instant::now());
    // The clock runs from the first event applied: start-up (connections, the partitioned
    // layout's membership, lock and partition channels) is not throughput. Progress is read off
    // the worker's own counter, in this process: counting the inbox every 20 ms cost MariaDB a
    // table scan each time, more the longer a run took (it was most of MariaDB's reads). The
    // database is asked only once the counter says all are through.
    let counted_before = events_counted();
    let mut first: Option<(Instant, i64)> = None;
    loop {
        let counted = events_counted() - counted_before;
        if first.is_none() && counted > 0 {
            first = Some((Instant::now(), counted));
        }
        if counted >= events
            && env.count("select count(*) from inbox").await >= events
            && env.count("select count(*) from (select 1 from outbox limit 1) as any_left").await == 0
        {
            break;
        }
        if counted != seen {
            seen = counted;
            progressed = Instant::now();
        }
        if progressed.elapsed() >= STALL || started.elapsed() >= LIMIT {
            let processed = env.count("select count(*) from inbox").await;
            let unsent = env.count("select count(*) from outbox").await;
            let state = format!("{processed} of {events} events in the inbox, {unsent} notifications in the outbox");
            assert!(progressed.elapsed() < STALL, "{}: nothing moved for {STALL:?}: {state}", setup.label);
            panic!("{}: the run did not finish in {LIMIT:?}: {state}", setup.label);
        }
        if handle.is_finished() {
            let ended = (&mut handle).await;
            panic!(
                "{}: the worker stopped before the queue was drained ({counted} of {events}): {ended:?}",
                setup.label
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu_after = cpu();
    let per_event = |name: &str| {
        let spent = cpu_after
            .iter()
            .find(|(n, _)| *n == name)?
            .1
            .checked_sub(cpu_before.iter().find(|(n, _)| *n == name)?.1)?;
        Some(spent as f64 * 1e6 / CLOCK_TICKS / events as f64)
    };
    let (worker, rabbitmq, mariadb) = (per_event("worker"), per_event("rabbitmq"), per_event("mariadb"));
    eprintln!(
        "    CPU per event (start-up included): worker {:.0} µs, RabbitMQ {:.0} µs, MariaDB {:.0} µs",
        worker.unwrap_or(f64::NAN),
        rabbitmq.unwrap_or(f64::NAN),
        mariadb.unwrap_or(f64::NAN)
    );
    let cpu_per_event = worker.zip(rabbitmq).zip(mariadb).map(|((w, r), m)| w + r + m);
    // The time the whole drain would take at the rate measured after the first event.
    let seconds = match first {
        Some((at, before)) if before < events => at.elapsed().as_secs_f64() * events as f64 / (events - before) as f64,
        _ => started.elapsed().as_secs_f64(),
    };
    shutdown.cancel();
    match handle.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => eprintln!("    warning: the worker stopped with an error after the drain: {error:#}"),
        Err(error) => panic!("{}: the worker panicked: {error}", setup.label),
    }
    (seconds, cpu_per_event)
}

/// Every event applied exactly once: in the inbox once, as `applied`, and one effect row each.
async fn verify(env: &TestEnv, setup: &Setup) {
    let sent = setup.events as i64;
    let event_type = setup.workload.event_type();
    let inbox = env.count("select count(*) from inbox").await;
    let of_type = env.count_bound("select count(*) from inbox where type = ?", event_type).await;
    let applied =
        env.count_bound("select count(*) from inbox where type = ? and outcome = 'applied'", event_type).await;
    let (effect, rows, distinct) = match setup.workload {
        Workload::Approvals => {
            let rows = env.count("select count(*) from approvals").await;
            ("approvals", rows, rows)
        }
        Workload::Audits { .. } => {
            let (rows, distinct): (i64, i64) =
                sqlx::query_as("select count(*), count(distinct event_id) from audit_log where entity = ?")
                    .bind(ENTITY)
                    .fetch_one(&env.pool)
                    .await
                    .expect("count the audit records");
            ("audit_log (entity 'bench')", rows, distinct)
        }
    };
    // Approvals may cause follow-ups of other types; audit records cause none.
    let inbox_ok = match setup.workload {
        Workload::Approvals => of_type == sent,
        Workload::Audits { .. } => inbox == sent,
    };
    if inbox_ok && of_type == sent && applied == sent && rows == sent && distinct == sent {
        return;
    }
    let outcomes: Vec<(String, String, Option<String>, i64)> = sqlx::query_as(
        "select type, outcome, reason_code, count(*) from inbox group by type, outcome, reason_code order by 4 desc",
    )
    .fetch_all(&env.pool)
    .await
    .expect("inbox outcomes");
    panic!(
        "{}: not every event was applied exactly once: sent {sent}; inbox {inbox} rows, {of_type} of type \
         {event_type}, {applied} of them applied; {effect}: {rows} rows for {distinct} events. \
         Inbox (type, outcome, reason, count): {outcomes:?}",
        setup.label
    );
}

/// Audit records written after a record of a later event (by `details.seq`) on the same entity;
/// `None` when they cannot be counted (a record without its `seq`, a failed query).
async fn out_of_order(env: &TestEnv) -> Option<i64> {
    let counted = sqlx::query_as::<_, (i64, i64)>(
        "select count(case when latest_before > n then 1 end), count(case when n is null then 1 end) from (
             select cast(json_value(details, '$.seq') as unsigned) as n,
                    max(cast(json_value(details, '$.seq') as unsigned)) over (
                        partition by entity_id order by seq rows between unbounded preceding and 1 preceding
                    ) as latest_before
             from audit_log where entity = ?
         ) applied",
    )
    .bind(ENTITY)
    .fetch_one(&env.pool)
    .await;
    match counted {
        Ok((late, 0)) => Some(late),
        Ok((_, unnumbered)) => {
            eprintln!("    warning: {unnumbered} audit records without details.seq: events out of order not counted");
            None
        }
        Err(error) => {
            eprintln!("    warning: could not count events out of order: {error}");
            None
        }
    }
}

/// What the partitioned layout's hop costs the worker's CPU per event, without the broker: the
/// sequencer's read of each event (to find its key), packing, and the lane's unpacking.
fn hop(events: usize) {
    use automation_shared::events::Envelope;
    use automation_shared::events::envelope::Limits;
    use automation_shared::messaging::SystemUsers;
    let system = SystemUsers::new("guest", &[]);
    let publishers = std::collections::BTreeMap::new();
    let limits = Limits { max_bytes: 256 * 1024, publishers: &publishers, system: &system };
    let bodies = audits(events, 10_000);
    let properties: Vec<lapin::BasicProperties> = bodies
        .iter()
        .map(|(id, _)| cloud_event_properties(id, "audit.recorded").with_user_id("guest".into()))
        .collect();
    let time = |what: &str, f: &mut dyn FnMut()| {
        let started = Instant::now();
        f();
        eprintln!("    {what}: {:.1} µs per event", started.elapsed().as_secs_f64() * 1e6 / events as f64);
    };
    eprintln!("the hop's CPU in the worker ({events} audit.recorded events):");
    time("read (Envelope::parse) and key", &mut || {
        for ((_, body), props) in bodies.iter().zip(&properties) {
            let envelope = Envelope::parse("audit.recorded", props, body, limits).expect("valid");
            std::hint::black_box(automation_worker::handlers::entity_key(&envelope).partition(16));
        }
    });
    let mut packs = Vec::new();
    time("pack (100 a pack)", &mut || {
        let events: Vec<(&str, &lapin::BasicProperties, &[u8])> =
            bodies.iter().zip(&properties).map(|((_, b), p)| ("audit.recorded", p, b.as_slice())).collect();
        packs = events
            .chunks(automation_worker::pack::MAX_EVENTS)
            .map(|c| automation_worker::pack::pack(c.iter().copied()))
            .collect();
    });
    time("unpack", &mut || {
        for (_, body) in &packs {
            std::hint::black_box(automation_worker::pack::unpack(body).expect("a pack"));
        }
    });
}

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ, 100 on Linux).
const CLOCK_TICKS: f64 = 100.0;

/// MariaDB's statement, handler and row counters.
async fn server_counters(env: &TestEnv) -> Vec<(String, u64)> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "select variable_name, variable_value from information_schema.global_status \
         where variable_name like 'COM\\_%' or variable_name like 'HANDLER\\_%' or variable_name like 'INNODB\\_ROWS\\_%'",
    )
    .fetch_all(&env.pool)
    .await
    .expect("MariaDB's status counters");
    rows.into_iter().filter_map(|(name, value)| Some((name.to_lowercase(), value.parse().ok()?))).collect()
}

/// CPU ticks (user + system) so far of this process (the worker runs in it), RabbitMQ's
/// `beam.smp` and MariaDB's server, found by name under /proc. Of each, the one started first:
/// the machine's own service, not an instance a test beside the bench started and stops.
fn cpu() -> Vec<(&'static str, u64)> {
    // After the command's closing parenthesis: state is field 3, utime 14, stime 15, starttime 22.
    let stat = |pid: &str| -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some((ticks, fields.get(19)?.parse::<u64>().ok()?))
    };
    let mut found = vec![("worker", stat("self").map_or(0, |(ticks, _)| ticks))];
    let mut first: Vec<(&'static str, u64, u64)> = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = entry.file_name().to_string_lossy().to_string();
        let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else { continue };
        let name = match comm.trim() {
            "beam.smp" => "rabbitmq",
            "mariadbd" | "mysqld" => "mariadb",
            _ => continue,
        };
        if let Some((ticks, started)) = stat(&pid) {
            match first.iter_mut().find(|(n, _, _)| *n == name) {
                Some(earlier) if earlier.2 <= started => {}
                Some(earlier) => *earlier = (name, ticks, started),
                None => first.push((name, ticks, started)),
            }
        }
    }
    found.extend(first.into_iter().map(|(name, ticks, _)| (name, ticks)));
    found
}

/// Events the worker in this process has handled so far, whatever the outcome.
fn events_counted() -> i64 {
    let rendered = automation_shared::telemetry::metrics().render();
    let name = automation_shared::meters::WORKER_EVENTS;
    rendered
        .lines()
        .filter(|line| line.split(['{', ' ']).next() == Some(name))
        .filter_map(|line| line.split_whitespace().last()?.parse::<f64>().ok())
        .sum::<f64>() as i64
}

/// The worker's own histograms (this process's recorder): name, observations, sum (seconds, or
/// events for the batch size).
fn histograms() -> Vec<(&'static str, f64, f64)> {
    let rendered = automation_shared::telemetry::metrics().render();
    let total = |series: String| -> f64 {
        rendered
            .lines()
            .filter(|line| line.split(['{', ' ']).next() == Some(series.as_str()))
            .filter_map(|line| line.split_whitespace().last()?.parse::<f64>().ok())
            .sum()
    };
    ["automation_worker_batch_seconds", "automation_worker_apply_seconds", "automation_worker_batch_size"]
        .into_iter()
        .map(|name| (name, total(format!("{name}_count")), total(format!("{name}_sum"))))
        .collect()
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    match sorted.len() {
        0 => f64::NAN,
        n if n.is_multiple_of(2) => (sorted[middle - 1] + sorted[middle]) / 2.0,
        _ => sorted[middle],
    }
}

fn rounded(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

/// N=1 against N=100 (or `BENCH_BATCHES`).
async fn batching(events: usize, consumers: Option<u16>) {
    let batches: Vec<usize> = std::env::var("BENCH_BATCHES")
        .unwrap_or_else(|_| "1,100".into())
        .split(',')
        .filter_map(|b| b.trim().parse().ok())
        .collect();
    let layout = std::env::var("BENCH_BATCH_LAYOUT")
        .map(|value| parse_layout("BENCH_BATCH_LAYOUT", &value))
        .unwrap_or(Layout::Competing);
    let mut runs = Vec::new();
    for batch in &batches {
        eprintln!("N={batch}: filling the queue with {events} approval.requested events, then draining it…");
        let setup = Setup {
            label: format!("batching N={batch}"),
            workload: Workload::Approvals,
            layout,
            batch: *batch,
            events,
            consumers,
        };
        runs.push((*batch, run(&setup).await));
    }
    let baseline = runs.first().map(|(_, r)| r.rate(events)).unwrap_or(1.0);
    println!("\nworker throughput (approval.requested: applied, audited, announced; {} layout)", layout_name(layout));
    println!("{:>8} {:>10} {:>10} {:>12} {:>10}", "batch N", "events", "seconds", "events/s", "vs N=first");
    for (batch, r) in &runs {
        let rate = r.rate(events);
        println!("{:>8} {:>10} {:>10.2} {:>12.0} {:>9.1}x", batch, events, r.seconds, rate, rate / baseline);
    }
    let summary: Vec<_> = runs
        .iter()
        .map(|(batch, r)| {
            json!({"batch": batch, "events": events, "seconds": r.seconds, "eventsPerSecond": r.rate(events)})
        })
        .collect();
    println!("{}", json!({"bench": "worker-throughput", "layout": layout_name(layout), "runs": summary}));
}

/// One cell of the ordering comparison: a load on a layout, over the repeats.
struct Cell {
    load: &'static str,
    entities: usize,
    layout: Layout,
    rates: Vec<f64>,
    out_of_order: Vec<Option<i64>>,
    cpu_per_event: Vec<f64>,
}

impl Cell {
    fn median(&self) -> f64 {
        median(&self.rates)
    }

    /// The most events out of order in any run; `None` if a run could not count them.
    fn most_out_of_order(&self) -> Option<i64> {
        self.out_of_order.iter().copied().collect::<Option<Vec<_>>>().map(|n| n.into_iter().max().unwrap_or(0))
    }
}

/// Competing against partitioned, spread and concentrated, interleaved.
async fn ordering(events: usize, consumers: Option<u16>) {
    let repeat: usize = env_number("BENCH_REPEAT").unwrap_or(3);
    assert!(repeat >= 1, "BENCH_REPEAT must be at least 1");
    let mut cells: Vec<Cell> = LOADS
        .iter()
        .flat_map(|&(load, entities)| {
            LAYOUTS.iter().map(move |&layout| Cell {
                load,
                entities,
                layout,
                rates: Vec::new(),
                out_of_order: Vec::new(),
                cpu_per_event: Vec::new(),
            })
        })
        .collect();
    let (mut used_consumers, mut partitions) = (0, 0);
    for round in 1..=repeat {
        for cell in &mut cells {
            let label = format!("{} {} #{round}", cell.load, layout_name(cell.layout));
            eprintln!(
                "{label}: filling the queue with {events} audit.recorded events on {} entities, then draining it…",
                cell.entities
            );
            let setup = Setup {
                label,
                workload: Workload::Audits { entities: cell.entities },
                layout: cell.layout,
                batch: ORDERING_BATCH,
                events,
                consumers,
            };
            let measured = run(&setup).await;
            let out_of_order = measured.out_of_order.map_or("?".to_string(), |n| n.to_string());
            eprintln!(
                "    {:.2} s, {:.0} events/s, {out_of_order} out of order",
                measured.seconds,
                measured.rate(events)
            );
            cell.rates.push(measured.rate(events));
            cell.out_of_order.push(measured.out_of_order);
            cell.cpu_per_event.extend(measured.cpu_per_event);
            (used_consumers, partitions) = (measured.consumers, measured.partitions);
        }
    }

    let find = |load: &str, layout: Layout| {
        cells.iter().find(|c| c.load == load && c.layout == layout).expect("every load runs on every layout")
    };
    println!(
        "\nworker throughput by layout (audit.recorded; batch {ORDERING_BATCH}, {used_consumers} consumers, one \
         worker, {partitions} partitions; {events} events per run, median of {repeat})"
    );
    println!(
        "{:<13} {:>9} {:>15} {:>17} {:>22} {:>18} {:>22}",
        "load",
        "entities",
        "competing ev/s",
        "partitioned ev/s",
        "partitioned/competing",
        "out of order c/p",
        "box CPU µs/event c/p"
    );
    let show = |n: Option<i64>| n.map_or("?".to_string(), |n| n.to_string());
    let mut loads = Vec::new();
    let mut ratios = serde_json::Map::new();
    for (load, entities) in LOADS {
        let (competing, partitioned) = (find(load, Layout::Competing), find(load, Layout::Partitioned));
        let ratio = partitioned.median() / competing.median();
        let cpu = |cell: &Cell| median(&cell.cpu_per_event);
        println!(
            "{:<13} {:>9} {:>15.0} {:>17.0} {:>21.2}x {:>18} {:>22}",
            load,
            entities,
            competing.median(),
            partitioned.median(),
            ratio,
            format!("{} / {}", show(competing.most_out_of_order()), show(partitioned.most_out_of_order())),
            format!("{:.0} / {:.0}", cpu(competing), cpu(partitioned)),
        );
        let side = |cell: &Cell| -> Value {
            json!({
                "eventsPerSecond": rounded(cell.median(), 1),
                "runs": cell.rates.iter().map(|r| rounded(*r, 1)).collect::<Vec<_>>(),
                "outOfOrder": cell.most_out_of_order(),
                "cpuMicrosecondsPerEvent": (!cell.cpu_per_event.is_empty()).then(|| rounded(median(&cell.cpu_per_event), 1)),
            })
        };
        ratios.insert(load.to_string(), json!(rounded(ratio, 3)));
        loads.push(json!({
            "load": load, "entities": entities,
            "competing": side(competing), "partitioned": side(partitioned),
            "partitionedOverCompeting": rounded(ratio, 3),
        }));
    }
    println!("out of order: events applied after a later event on the same entity (the most in any run)");
    println!("box CPU: the worker's, RabbitMQ's and MariaDB's CPU per event together (median; start-up included)");
    println!(
        "{}",
        json!({
            "bench": "worker-ordering", "eventType": "audit.recorded", "events": events, "batch": ORDERING_BATCH,
            "consumers": used_consumers, "workers": 1, "partitions": partitions, "repeat": repeat,
            "partitionedOverCompeting": ratios, "loads": loads,
        })
    );
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // `RUST_LOG=sqlx::query=debug` shows every statement with its time.
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    let events: usize = env_number("BENCH_EVENTS").unwrap_or(20_000);
    assert!(events >= 1, "BENCH_EVENTS must be at least 1");
    let consumers: Option<u16> = env_number("BENCH_CONSUMERS");
    let tables = std::env::var("BENCH_TABLES").unwrap_or_else(|_| "batching,ordering".into());
    let tables: Vec<&str> = tables.split(',').map(str::trim).filter(|t| !t.is_empty()).collect();
    if let Some(unknown) = tables.iter().find(|t| !["batching", "ordering", "hop"].contains(t)) {
        panic!("BENCH_TABLES: `{unknown}` is none of `batching`, `ordering`, `hop`");
    }
    if tables.contains(&"hop") {
        hop(events);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        if tables.contains(&"batching") {
            batching(events, consumers).await;
        }
        if tables.contains(&"ordering") {
            ordering(events, consumers).await;
        }
    });
}
