//! The worker process: connects, declares the topology, runs the consumers, the outbox relay,
//! the dead-letter store, the audit sealer and the probes, and drains them in order on
//! shutdown.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use automation_shared::config::{Config, Ordering};
use automation_shared::db;
use automation_shared::db::events::OutboxMessage;
use automation_shared::events::WorkQueue;
use automation_shared::events::envelope::Limits;
use automation_shared::messaging::topology::{self, TopologySettings};
use automation_shared::messaging::{self, Names, Publisher, SystemUsers};
use lapin::Connection;
use sqlx::MySqlPool;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::health::{Health, Starting};
use crate::membership::Assignment;
use crate::tasks::Registry;
use crate::{consumer, dead_letter_store, deferrals, health, membership, outbox, partitions, sequencer};

/// How long start-up waits for RabbitMQ before giving up with a clear error.
/// How often the audit chains' heads are sealed.
const SEAL_INTERVAL: Duration = Duration::from_secs(60);

/// What every part of the worker shares.
pub struct Worker {
    pub config: Arc<Config>,
    pub pool: MySqlPool,
    pub connection: Arc<Connection>,
    pub publisher: Publisher,
    pub names: Names,
    pub health: Health,
    pub registry: Registry,
    /// Where consumers hand the outbox rows they committed, for the relay to publish at once.
    pub outbox: mpsc::Sender<Vec<OutboxMessage>>,
    outbox_receiver: std::sync::Mutex<Option<mpsc::Receiver<Vec<OutboxMessage>>>>,
    /// Exchange and queue names the relay publishes to, computed once.
    pub exchanges: Exchanges,
    /// For tasks that call out (`webhook.call`).
    pub http: reqwest::Client,
    /// Whose messages are the system's; the worker publishes as the first.
    pub system_users: SystemUsers,
}

/// Where outbox messages go.
#[derive(Debug, Clone)]
pub struct Exchanges {
    pub events: String,
    pub notifications: String,
    pub tasks_queue: String,
}

impl Worker {
    /// Connects to MySQL (lazily: it may be down) and RabbitMQ, and declares the topology. Waits
    /// for the broker as long as it takes, saying so on the probes and in the log; `None` when
    /// `stop` came first.
    pub async fn connect(
        config: Arc<Config>,
        stop: &CancellationToken,
        starting: &Starting,
    ) -> anyhow::Result<Option<Arc<Worker>>> {
        // Installed before the first counter is touched; `/metrics` renders it.
        automation_shared::telemetry::metrics();
        automation_shared::meters::describe("automation-worker", automation_shared::meters::WORKER);
        // rustls on ring, chosen once per process (a no-op when `main` or an embedder did).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let pool = db::lazy_pool(&config.database)?;
        let Some(connection) = messaging::connect_until(&config.amqp.url, "automation-worker", stop, |error| {
            starting.broker_failed(format!("{} is not reachable: {error}", messaging::address(&config.amqp.url)))
        })
        .await
        else {
            return Ok(None);
        };
        let connection = Arc::new(connection);
        let names = Names::new(config.amqp.prefix.clone());
        declare_topology(&connection, &names, &config).await?;
        let publisher =
            Publisher::new(connection.clone(), Duration::from_millis(config.amqp.publish_timeout_ms)).await?;
        let (outbox, receiver) = mpsc::channel(outbox::CHANNEL_BATCHES);
        let exchanges = Exchanges {
            events: names.events(),
            notifications: names.notifications(),
            tasks_queue: names.work_queue(WorkQueue::Tasks),
        };
        Ok(Some(Arc::new(Worker {
            system_users: SystemUsers::of(&config.amqp),
            config,
            pool,
            connection,
            publisher,
            names,
            health: Health::default(),
            registry: Registry::default(),
            outbox,
            outbox_receiver: std::sync::Mutex::new(Some(receiver)),
            exchanges,
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .build()
                .context("could not build the HTTP client")?,
        })))
    }

    /// What an inbound message is checked against.
    pub fn limits(&self) -> Limits<'_> {
        Limits {
            max_bytes: self.config.worker.max_message_bytes,
            publishers: &self.config.worker.publishers,
            system: &self.system_users,
        }
    }

    /// Waits until MySQL answers; readiness reports it down meanwhile. `false` if `stop` came
    /// first.
    pub async fn wait_for_database(&self, stop: &CancellationToken) -> bool {
        self.health.set_database_down(true);
        let mut delay = Duration::from_millis(200);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return false,
                _ = tokio::time::sleep(delay) => {}
            }
            if db::ping(&self.pool).await.is_ok() {
                self.health.set_database_down(false);
                tracing::info!("MySQL answers again; resuming");
                return true;
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}

impl Worker {
    /// Runs a database operation through outages (waiting, spending nothing) and lock conflicts
    /// (run again a few times). `None` when shutdown came while the database was away.
    pub async fn through_outages<T, F, Fut>(
        &self,
        stop: &CancellationToken,
        mut operation: F,
    ) -> Option<sqlx::Result<T>>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = sqlx::Result<T>>,
    {
        loop {
            match db::through_conflicts(&mut operation).await {
                Err(error) if db::classify(&error) == db::Failure::Unavailable => {
                    tracing::warn!(%error, "MySQL is unavailable; waiting for it");
                    if !self.wait_for_database(stop).await {
                        return None;
                    }
                }
                result => return Some(result),
            }
        }
    }
}

pub async fn declare_topology(connection: &Connection, names: &Names, config: &Config) -> anyhow::Result<()> {
    let channel = connection.create_channel().await?;
    let settings = TopologySettings::of(&config.worker);
    topology::declare(&channel, names, &settings).await.context(
        "could not declare the RabbitMQ topology; if a queue exists with other arguments, see docs/operations.md",
    )?;
    let _ = channel.close(200, "topology declared".into()).await;
    Ok(())
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
pub async fn run(worker: Arc<Worker>, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let tracker = TaskTracker::new();
    let background = CancellationToken::new();
    let probes = CancellationToken::new();
    let failed = CancellationToken::new();

    let http =
        axum::serve(listener, health::router(worker.clone())).with_graceful_shutdown(probes.clone().cancelled_owned());
    tracker.spawn(async move {
        if let Err(error) = http.await {
            tracing::error!(%error, "the probe server stopped");
        }
    });

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
    let lanes = worker.config.worker.consumers;
    match worker.config.worker.ordering {
        Ordering::Partitioned => {
            let instance = uuid::Uuid::new_v4();
            let (assign, assignment) = watch::channel(Assignment::default());
            tracker.spawn(membership::run(worker.clone(), instance, assign, shutdown.clone()));
            spawn_consumer("sequencer", Box::pin(sequencer::run(worker.clone(), assignment.clone(), shutdown.clone())));
            for lane in 0..lanes {
                let work = partitions::run(worker.clone(), lane, lanes, assignment.clone(), shutdown.clone());
                spawn_consumer("partitions", Box::pin(work));
            }
            tracker.spawn(deferrals::run(worker.clone(), background.clone()));
            tracing::info!(%instance, partitions = worker.config.worker.partitions, lanes, "per-entity order: partitioned layout");
        }
        Ordering::Competing => {
            for _ in 0..lanes {
                spawn_consumer(
                    "commands",
                    Box::pin(consumer::run(worker.clone(), WorkQueue::Commands, shutdown.clone())),
                );
            }
        }
    }
    spawn_consumer("tasks", Box::pin(consumer::run(worker.clone(), WorkQueue::Tasks, shutdown.clone())));
    let fresh = worker
        .outbox_receiver
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
        .ok_or_else(|| anyhow::anyhow!("this worker is already running"))?;
    tracker.spawn(outbox::run(worker.clone(), fresh, background.clone()));
    {
        let (worker, background) = (worker.clone(), background.clone());
        tracker.spawn(async move {
            if let Err(error) = dead_letter_store::run(worker, background).await {
                tracing::error!(error = format!("{error:#}"), "the dead-letter store consumer stopped");
            }
        });
    }
    tracker.spawn(seal_periodically(worker.clone(), background.clone()));
    tracker.spawn(report_backlogs(worker.clone(), background.clone()));
    tracker.spawn(crate::scheduler::run(worker.clone(), background.clone()));
    tracker.close();
    tracing::info!(prefix = %worker.names.prefix(), "worker running");

    shutdown.cancelled().await;
    worker.health.set_draining();
    let grace = worker.config.worker.shutdown_grace();
    tracing::info!(grace_secs = grace.as_secs(), in_flight = worker.health.in_flight(), "draining");
    let drained = tokio::time::timeout(grace, futures_util::future::join_all(consumers)).await.is_ok();
    if !drained {
        tracing::warn!(
            in_flight = worker.health.in_flight(),
            "the grace period ran out; unacked deliveries go back to the queue"
        );
    }
    background.cancel();
    probes.cancel();
    // A background task waiting for a database that is away (an acquire bounded by its own
    // timeout) has nothing to finish: with MySQL down, a second is all it gets.
    let database_up =
        matches!(tokio::time::timeout(Duration::from_millis(500), db::ping(&worker.pool)).await, Ok(Ok(())));
    let patience = if database_up { Duration::from_secs(5) } else { Duration::from_secs(1) };
    if tokio::time::timeout(patience, tracker.wait()).await.is_err() {
        tracing::warn!(waited_ms = patience.as_millis() as u64, "background tasks did not stop in time; leaving them");
    }
    worker.publisher.close().await;
    let _ = worker.connection.close(200, "worker stopped".into()).await;
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
async fn report_backlogs(worker: Arc<Worker>, stop: CancellationToken) {
    use automation_shared::meters;
    loop {
        meters::report_connections(&worker.pool, worker.publisher.is_ready());
        if let Ok((rows, oldest)) = db::events::outbox_backlog(&worker.pool).await {
            metrics::gauge!(meters::WORKER_OUTBOX_ROWS).set(rows as f64);
            metrics::gauge!(meters::WORKER_OUTBOX_OLDEST_SECONDS).set(oldest as f64);
        }
        if let Ok(states) = db::dead_letters::count_by_state(&worker.pool).await {
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

async fn seal_periodically(worker: Arc<Worker>, stop: CancellationToken) {
    let key = worker.config.audit.key.clone();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(SEAL_INTERVAL) => {}
        }
        match db::audit::seal(&worker.pool, key.as_deref()).await {
            Ok(Some(seal)) => tracing::debug!(audit.seal = seal, "audit chains sealed"),
            Ok(None) => {}
            Err(error) => tracing::debug!(%error, "could not seal the audit chains this time"),
        }
    }
}
