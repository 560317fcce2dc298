//! The worker process: connects to MySQL and RabbitMQ and declares the topology
//! ([`Worker::connect`]), then hands each part the context it needs and runs it ([`run`]): the
//! consumers, the outbox relay, the dead-letter store, the scheduler, the audit sealer and the
//! probes; on shutdown it drains them in order.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use automation_shared::config::{Config, Ordering};
use automation_shared::db;
use automation_shared::db::events::OutboxMessage;
use automation_shared::events::WorkQueue;
use automation_shared::messaging::Publisher;
use sqlx::MySqlPool;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::Broker;
use crate::consumer::ApplyContext;
use crate::database::Database;
use crate::health::{Health, Readiness, Starting};
use crate::membership::Assignment;
use crate::outbox::Relay;
use crate::runner::TaskRunner;
use crate::scheduler::Scheduler;
use crate::tasks::Registry;
use crate::{consumer, dead_letter_store, deferrals, health, membership, outbox, partitions, scheduler, sequencer};

/// How often the audit chains' heads are sealed.
const SEAL_INTERVAL: Duration = Duration::from_secs(60);

/// A worker connected and not running yet: its connections and what its parts share. [`run`]
/// takes it apart and hands each part the context it needs.
pub struct Worker {
    config: Arc<Config>,
    database: Database,
    broker: Broker,
    health: Arc<Health>,
    registry: Arc<Registry>,
    /// For tasks that call out (`webhook.call`).
    http: reqwest::Client,
    /// Where consumers hand the outbox rows they committed, for the relay to publish at once.
    outbox: mpsc::Sender<Vec<OutboxMessage>>,
    /// The relay's end of `outbox`, handed to it when the worker runs.
    fresh: mpsc::Receiver<Vec<OutboxMessage>>,
}

impl Worker {
    /// Connects to MySQL (lazily: it may be down) and RabbitMQ, and declares the topology. Waits
    /// for the broker as long as it takes, saying so on the probes and in the log; `None` when
    /// `stop` came first.
    pub async fn connect(
        config: Arc<Config>,
        stop: &CancellationToken,
        starting: &Starting,
    ) -> anyhow::Result<Option<Worker>> {
        // Installed before the first counter is touched; `/metrics` renders it.
        automation_shared::telemetry::metrics();
        automation_shared::meters::describe("automation-worker", automation_shared::meters::WORKER);
        // rustls on ring, chosen once per process (a no-op when `main` or an embedder did).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let health = Arc::new(Health::default());
        let database = Database::lazy(&config.database, health.clone())?;
        let Some(broker) = Broker::connect(&config, stop, starting).await? else {
            return Ok(None);
        };
        let (outbox, fresh) = mpsc::channel(outbox::CHANNEL_BATCHES);
        Ok(Some(Worker {
            config,
            database,
            broker,
            health,
            registry: Arc::new(Registry::default()),
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .build()
                .context("could not build the HTTP client")?,
            outbox,
            fresh,
        }))
    }
}

/// Connects and runs in a task of its own: what `main` does, for embedding in tests and benches.
pub async fn spawn(
    config: Arc<Config>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
    // The probes answer from the first moment: liveness at once, readiness 503 naming what the
    // worker waits for. (Two listeners on one socket: the starting one stops taking connections
    // when the worker's own probe server takes over.)
    let socket = listener.into_std()?;
    let early = TcpListener::from_std(socket.try_clone()?)?;
    let listener = TcpListener::from_std(socket)?;
    let starting = Arc::new(Starting::default());
    let started = CancellationToken::new();
    let early = axum::serve(early, health::starting_router(starting.clone()))
        .with_graceful_shutdown(started.clone().cancelled_owned());
    tokio::spawn(async move {
        if let Err(error) = early.await {
            tracing::error!(%error, "the probe server stopped while starting");
        }
    });
    let worker = Worker::connect(config, &shutdown, &starting).await;
    started.cancel();
    match worker? {
        Some(worker) => Ok(tokio::spawn(run(worker, listener, shutdown))),
        None => {
            tracing::info!("stopped while starting");
            Ok(tokio::spawn(async { Ok(()) }))
        }
    }
}

/// Runs until `shutdown`, then drains within the grace period and returns. An error means a
/// part failed for good (the process should exit non-zero and be restarted).
pub async fn run(worker: Worker, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let Worker { config, database, broker, health, registry, http, outbox, fresh } = worker;
    let settings = Arc::new(config.worker.clone());
    let tracker = TaskTracker::new();
    let background = CancellationToken::new();
    let probes = CancellationToken::new();
    let failed = CancellationToken::new();

    let readiness = Readiness {
        health: health.clone(),
        pool: database.pool.clone(),
        connection: broker.connection.clone(),
        outbox_sweep: Duration::from_millis(settings.outbox_sweep_ms),
    };
    let probe_server =
        axum::serve(listener, health::router(readiness)).with_graceful_shutdown(probes.clone().cancelled_owned());
    tracker.spawn(async move {
        if let Err(error) = probe_server.await {
            tracing::error!(%error, "the probe server stopped");
        }
    });

    let runner = TaskRunner {
        database: database.clone(),
        broker: broker.clone(),
        registry: registry.clone(),
        http,
        config: config.clone(),
        outbox: outbox.clone(),
    };
    let applying = ApplyContext {
        database: database.clone(),
        broker: broker.clone(),
        registry: registry.clone(),
        health: health.clone(),
        outbox: outbox.clone(),
        settings: settings.clone(),
        audit_key: config.audit.key.as_deref().map(Arc::from),
        max_rule_steps: config.rules.max_steps,
        runner,
    };
    let mut consumers = Vec::new();
    let mut spawn_consumer =
        |name: &'static str, work: futures_util::future::BoxFuture<'static, anyhow::Result<()>>| {
            let (shutdown, failed) = (shutdown.clone(), failed.clone());
            consumers.push(tracker.spawn(async move {
                if let Err(error) = work.await {
                    tracing::error!(
                        error = format!("{error:#}"),
                        consumer = name,
                        "a consumer failed; stopping the worker"
                    );
                    failed.cancel();
                    shutdown.cancel();
                }
            }));
        };
    let lanes = settings.consumers;
    match settings.ordering {
        Ordering::Partitioned => {
            let instance = uuid::Uuid::new_v4();
            let (assign, assignment) = watch::channel(Assignment::default());
            tracker.spawn(membership::run(
                database.pool.clone(),
                settings.partitions,
                instance,
                assign,
                shutdown.clone(),
            ));
            let sequencing = sequencer::run(broker.clone(), settings.partitions, assignment.clone(), shutdown.clone());
            spawn_consumer("sequencer", Box::pin(sequencing));
            for lane in 0..lanes {
                let work = partitions::run(applying.clone(), lane, lanes, assignment.clone(), shutdown.clone());
                spawn_consumer("partitions", Box::pin(work));
            }
            tracker.spawn(deferrals::run(applying.clone(), background.clone()));
            tracing::info!(%instance, partitions = settings.partitions, lanes, "per-entity order: partitioned layout");
        }
        Ordering::Competing => {
            for _ in 0..lanes {
                spawn_consumer(
                    "commands",
                    Box::pin(consumer::run(applying.clone(), WorkQueue::Commands, shutdown.clone())),
                );
            }
        }
    }
    spawn_consumer("tasks", Box::pin(consumer::run(applying, WorkQueue::Tasks, shutdown.clone())));
    spawn_consumer("broker connection", Box::pin(crate::broker::watch_recovery(broker.clone(), shutdown.clone())));
    let relay = Relay {
        pool: database.pool.clone(),
        broker: broker.clone(),
        sweep_every: Duration::from_millis(settings.outbox_sweep_ms),
    };
    tracker.spawn(outbox::run(relay, fresh, background.clone()));
    {
        let (database, broker, background) = (database.clone(), broker.clone(), background.clone());
        tracker.spawn(async move {
            if let Err(error) = dead_letter_store::run(database, broker, background).await {
                tracing::error!(error = format!("{error:#}"), "the dead-letter store consumer stopped");
            }
        });
    }
    tracker.spawn(seal_periodically(database.pool.clone(), config.audit.key.clone(), background.clone()));
    tracker.spawn(report_backlogs(database.pool.clone(), broker.publisher.clone(), background.clone()));
    let scheduler =
        Scheduler { pool: database.pool.clone(), registry, configured: config.tasks.schedules.clone(), outbox };
    tracker.spawn(scheduler::run(scheduler, background.clone()));
    tracker.close();
    tracing::info!(prefix = %broker.names.prefix(), "worker running");

    shutdown.cancelled().await;
    health.set_draining();
    let grace = settings.shutdown_grace();
    tracing::info!(grace_secs = grace.as_secs(), in_flight = health.in_flight(), "draining");
    let drained = tokio::time::timeout(grace, futures_util::future::join_all(consumers)).await.is_ok();
    if !drained {
        tracing::warn!(
            in_flight = health.in_flight(),
            "the grace period ran out; unacked deliveries go back to the queue"
        );
    }
    background.cancel();
    probes.cancel();
    // A background task waiting for a database that is away (an acquire bounded by its own
    // timeout) has nothing to finish: with MySQL down, a second is all it gets.
    let database_up =
        matches!(tokio::time::timeout(Duration::from_millis(500), db::ping(&database.pool)).await, Ok(Ok(())));
    let patience = if database_up { Duration::from_secs(5) } else { Duration::from_secs(1) };
    if tokio::time::timeout(patience, tracker.wait()).await.is_err() {
        tracing::warn!(waited_ms = patience.as_millis() as u64, "background tasks did not stop in time; leaving them");
    }
    broker.publisher.close().await;
    let _ = broker.connection.close(200, "worker stopped".into()).await;
    tracing::info!("worker stopped");
    if failed.is_cancelled() {
        anyhow::bail!("a consumer failed; see the log above");
    }
    Ok(())
}

/// How often the database-wide gauges (outbox backlog, dead letters by state) and the
/// connection gauges are read.
const BACKLOG_INTERVAL: Duration = automation_shared::meters::CONNECTIONS_INTERVAL;

/// Keeps the outbox and dead-letter gauges current: what ops alert on when publishing is stuck
/// or dead letters pile up.
async fn report_backlogs(pool: MySqlPool, publisher: Publisher, stop: CancellationToken) {
    use automation_shared::meters;
    loop {
        meters::report_connections(&pool, publisher.is_ready());
        if let Ok((rows, oldest)) = db::events::outbox_backlog(&pool).await {
            metrics::gauge!(meters::WORKER_OUTBOX_ROWS).set(rows as f64);
            metrics::gauge!(meters::WORKER_OUTBOX_OLDEST_SECONDS).set(oldest as f64);
        }
        if let Ok(states) = db::dead_letters::count_by_state(&pool).await {
            for state in ["dead", "replayed", "discarded"] {
                let count = states.iter().find(|(s, _)| s == state).map_or(0, |(_, n)| *n);
                metrics::gauge!(meters::WORKER_DEAD_LETTERS, "state" => state).set(count as f64);
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(BACKLOG_INTERVAL) => {}
        }
    }
}

/// Seals the audit chains' heads with `key` every [`SEAL_INTERVAL`] until `stop`.
async fn seal_periodically(pool: MySqlPool, key: Option<String>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(SEAL_INTERVAL) => {}
        }
        match db::audit::seal(&pool, key.as_deref()).await {
            Ok(Some(seal)) => tracing::debug!(audit.seal = seal, "audit chains sealed"),
            Ok(None) => {}
            Err(error) => tracing::debug!(%error, "could not seal the audit chains this time"),
        }
    }
}
