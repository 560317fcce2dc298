//! The worker's side of RabbitMQ: its connection and publisher, the names of its exchanges and
//! queues, whose messages are the system's, and what an inbound message is checked against.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use automation_shared::config::Config;
use automation_shared::events::WorkQueue;
use automation_shared::events::envelope::Limits;
use automation_shared::messaging::topology::{self, TopologySettings};
use automation_shared::messaging::{self, Addresses, Names, Publisher, SystemUsers};
use lapin::Connection;
use tokio_util::sync::CancellationToken;

use crate::health::Starting;

/// The broker as every part of the worker that consumes or publishes sees it. Cheap to clone:
/// each task takes its own.
#[derive(Clone)]
pub struct Broker {
    pub connection: Arc<Connection>,
    pub publisher: Publisher,
    pub names: Names,
    /// Exchange and queue names the relay publishes to, computed once.
    pub exchanges: Arc<Exchanges>,
    /// Whose messages are the system's; the worker publishes as the first.
    pub system_users: SystemUsers,
    max_message_bytes: usize,
    publishers: Arc<BTreeMap<String, Vec<String>>>,
    /// For a connection of its own (the sequencer's), to the node the others found up.
    addresses: Addresses,
    publish_timeout: Duration,
}

/// Where outbox messages go.
#[derive(Debug, Clone)]
pub struct Exchanges {
    pub events: String,
    pub notifications: String,
    pub tasks_queue: String,
}

impl Broker {
    /// Connects and declares the topology. Waits for the broker as long as it takes, saying so
    /// on the probes and in the log; `None` when `stop` came first.
    pub async fn connect(
        config: &Config,
        stop: &CancellationToken,
        starting: &Starting,
    ) -> anyhow::Result<Option<Broker>> {
        let addresses = config.amqp.addresses()?;
        let Some(connection) = messaging::connect_until(&addresses, "automation-worker", stop, |error| {
            starting.broker_failed(format!("{} is not reachable: {error}", addresses.describe()))
        })
        .await
        else {
            return Ok(None);
        };
        let connection = Arc::new(connection);
        let names = Names::new(config.amqp.prefix.clone());
        declare_topology(&connection, &names, config).await?;
        let publish_timeout = Duration::from_millis(config.amqp.publish_timeout_ms);
        let publisher = Publisher::new(connection.clone(), publish_timeout).await?;
        let exchanges = Exchanges {
            events: names.events(),
            notifications: names.notifications(),
            tasks_queue: names.work_queue(WorkQueue::Tasks),
        };
        Ok(Some(Broker {
            connection,
            publisher,
            names,
            exchanges: Arc::new(exchanges),
            system_users: SystemUsers::of(&config.amqp),
            max_message_bytes: config.worker.max_message_bytes,
            publishers: Arc::new(config.worker.publishers.clone()),
            addresses,
            publish_timeout,
        }))
    }

    /// What an inbound message is checked against.
    pub fn limits(&self) -> Limits<'_> {
        Limits { max_bytes: self.max_message_bytes, publishers: &self.publishers, system: &self.system_users }
    }

    /// A connection of its own to the same broker, which does not recover by itself.
    pub async fn connect_once(&self, name: &str) -> lapin::Result<Connection> {
        messaging::connect_once(&self.addresses, name).await
    }

    /// A publisher with confirms on `connection`, with the worker's publish timeout.
    pub async fn publisher_on(&self, connection: Arc<Connection>) -> lapin::Result<Publisher> {
        Publisher::new(connection, self.publish_timeout).await
    }
}

/// How long the worker's connection may stay down before it asks whether the broker is away or
/// only its connection is stuck.
const RECOVERY_PATIENCE: Duration = Duration::from_secs(15);
/// How long a node must have taken fresh connections, with ours still down, before the worker
/// gives up on lapin's recovery: longer than lapin's longest pause between attempts (5 s).
const STUCK_AFTER: Duration = Duration::from_secs(10);

/// Watches lapin's recovery of the worker's connection until `stop`. lapin recovers by itself
/// after a node is lost (to the next node of `AMQP_URL`), but the cluster drill saw a
/// connection that never came back while the other nodes took connections: the worker then
/// consumed nothing and kept its partitions. When the connection has been down for
/// [`RECOVERY_PATIENCE`] while a fresh connection has worked for [`STUCK_AFTER`], this returns
/// an error: the worker stops (exit code 1) and its orchestrator starts a fresh process, while
/// the others take its partitions over. With the broker away (no fresh connection either) it
/// waits without end, as before.
pub async fn watch_recovery(broker: Broker, stop: CancellationToken) -> anyhow::Result<()> {
    let mut down_since: Option<tokio::time::Instant> = None;
    let mut reachable_since: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if broker.connection.status().connected() {
            (down_since, reachable_since) = (None, None);
            continue;
        }
        if down_since.get_or_insert_with(tokio::time::Instant::now).elapsed() < RECOVERY_PATIENCE {
            continue;
        }
        let probe = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            probe = broker.connect_once("automation-worker recovery probe") => probe,
        };
        match probe {
            Ok(connection) => {
                let _ = connection.close(200, "probe".into()).await;
                if reachable_since.get_or_insert_with(tokio::time::Instant::now).elapsed() >= STUCK_AFTER {
                    anyhow::bail!(
                        "the RabbitMQ connection has been down for {} s while {} takes new connections: lapin's recovery is stuck; exiting so that a fresh process starts",
                        down_since.map_or(0, |d| d.elapsed().as_secs()),
                        broker.addresses.describe()
                    );
                }
            }
            Err(_) => reachable_since = None,
        }
    }
}

pub async fn declare_topology(connection: &Connection, names: &Names, config: &Config) -> anyhow::Result<()> {
    let settings = TopologySettings::of_config(config);
    topology::declare(connection, names, &settings).await.context(
        "could not declare the RabbitMQ topology; if a queue exists with other arguments, see docs/operations.md",
    )?;
    Ok(())
}
