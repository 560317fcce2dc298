//! The API's link to RabbitMQ: a confirm-mode publisher, and a reply queue of this process's own
//! that wakes requests waiting with `Prefer: wait`. The queue is bound to nothing: an event
//! published by a waiting request names it as `reply_to`, and the worker sends copies of that
//! event's notifications there alone, so a replica receives only what its requests wait for.
//! The API starts without the broker and connects in the background; once connected, lapin
//! recovers the connection after a broker restart. While there is no link, writes answer 503.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use automation_shared::config::Config;
use automation_shared::events::Notification;
use automation_shared::messaging::topology::{self, TopologySettings};
use automation_shared::messaging::{self, Addresses, Names, Publisher};
use automation_shared::traces::{self, TraceHeaders};
use futures_util::StreamExt;
use lapin::Connection;
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;

use crate::waiters::Waiters;

/// How long a link may be recovering before a new one is made beside it: longer than lapin's
/// longest pause between attempts (5 s), so a recovery under way is not cut short.
const RECOVERY_PATIENCE: Duration = Duration::from_secs(10);

#[derive(Clone)]
struct Link {
    connection: Arc<Connection>,
    publisher: Publisher,
    /// This link's reply queue (`<prefix>.api.<hex>`).
    reply_queue: Arc<str>,
}

pub struct Broker {
    link: RwLock<Option<Link>>,
    config: Arc<Config>,
    names: Names,
    /// The nodes of `AMQP_URL`; a link that lapin gave up on is made again through them.
    addresses: Result<Addresses, String>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").field("ready", &self.is_ready()).finish()
    }
}

impl Broker {
    pub fn new(config: Arc<Config>) -> Broker {
        let names = Names::new(config.amqp.prefix.clone());
        let addresses = config.amqp.addresses().map_err(|error| error.to_string());
        Broker { link: RwLock::new(None), config, names, addresses }
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    fn current(&self) -> Option<Link> {
        self.link.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The publisher, when connected.
    pub fn publisher(&self) -> Option<Publisher> {
        self.current().map(|l| l.publisher)
    }

    /// The publisher and the reply queue of one link, when connected: an event published with it
    /// names that queue as `reply_to`.
    pub fn publisher_and_reply_queue(&self) -> Option<(Publisher, Arc<str>)> {
        self.current().map(|l| (l.publisher, l.reply_queue))
    }

    /// Connected, not blocked by an alarm, channel open.
    pub fn is_ready(&self) -> bool {
        self.current().is_some_and(|l| l.publisher.is_ready())
    }

    /// Keeps the link up until `stop`: connects, and connects again if recovery ever gives up or
    /// has not brought the link back within [`RECOVERY_PATIENCE`] (the cluster drill saw lapin's
    /// recovery of a connection stall while the other nodes took connections: writes answered
    /// 503 for good). A new link goes through the same node list; while no node answers, the old
    /// one is kept and the attempts go on.
    pub async fn maintain(self: Arc<Self>, waiters: Arc<Waiters>, stop: CancellationToken) {
        let mut delay = Duration::from_millis(250);
        let mut down_since: Option<tokio::time::Instant> = None;
        loop {
            let (connected, recovering) = self.current().map_or((false, false), |l| {
                let status = l.connection.status();
                (status.connected(), status.reconnecting() || status.connecting())
            });
            if connected {
                down_since = None;
            }
            let waited = down_since.get_or_insert_with(tokio::time::Instant::now).elapsed();
            let healthy = connected || (recovering && waited < RECOVERY_PATIENCE);
            if !healthy {
                // Each attempt is bounded (messaging::CONNECT_TIMEOUT), and SIGTERM ends it.
                let attempt = tokio::select! {
                    _ = stop.cancelled() => return,
                    attempt = self.connect(&waiters) => attempt,
                };
                match attempt {
                    Ok(link) => {
                        if recovering {
                            tracing::warn!(
                                down_ms = waited.as_millis() as u64,
                                "the RabbitMQ connection had not recovered; replaced it with a new one"
                            );
                        }
                        tracing::info!("connected to RabbitMQ");
                        let old = self.link.write().unwrap_or_else(std::sync::PoisonError::into_inner).replace(link);
                        // A link given up on is closed, or lapin would keep reconnecting it.
                        if let Some(old) = old {
                            let _ = tokio::time::timeout(
                                Duration::from_secs(2),
                                old.connection.close(200, "replaced".into()),
                            )
                            .await;
                        }
                        delay = Duration::from_millis(250);
                        down_since = None;
                    }
                    Err(error) => {
                        tracing::warn!(
                            broker = %self.addresses.as_ref().map_or_else(|_| "AMQP_URL".to_string(), Addresses::describe),
                            error = format!("{error:#}"),
                            retry.in_ms = delay.as_millis() as u64,
                            "RabbitMQ is not reachable; writes answer 503 meanwhile"
                        );
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(if healthy { Duration::from_secs(1) } else { delay }) => {}
            }
        }
    }

    async fn connect(&self, waiters: &Arc<Waiters>) -> anyhow::Result<Link> {
        // Config::load checked AMQP_URL; a configuration built otherwise says what is wrong here.
        let addresses = self.addresses.as_ref().map_err(|error| anyhow::anyhow!("{error}"))?;
        let connection = Arc::new(messaging::connect(addresses, "automation-api").await?);
        let settings = TopologySettings::of_config(&self.config);
        topology::declare(&connection, &self.names, &settings).await?;
        let publisher =
            Publisher::new(connection.clone(), Duration::from_millis(self.config.amqp.publish_timeout_ms)).await?;
        let reply_queue = self.listen(&connection, waiters.clone()).await?;
        Ok(Link { connection, publisher, reply_queue })
    }

    /// The reply queue of this process's own. It is exclusive and goes away with the connection;
    /// lapin declares it again, with its name, after a recovery. It is bound to no exchange: only
    /// the worker's copies for the requests waiting here arrive.
    async fn listen(&self, connection: &Connection, waiters: Arc<Waiters>) -> anyhow::Result<Arc<str>> {
        let channel = connection.create_channel().await?;
        let queue = self.names.api_reply_queue();
        channel
            .queue_declare(
                queue.clone().into(),
                QueueDeclareOptions { exclusive: true, auto_delete: true, ..QueueDeclareOptions::default() },
                FieldTable::default(),
            )
            .await?;
        let mut consumer = channel
            .basic_consume(
                queue.clone().into(),
                "api-waiters".into(),
                BasicConsumeOptions { no_ack: true, ..BasicConsumeOptions::default() },
                FieldTable::default(),
            )
            .await?;
        let name: Arc<str> = queue.into();
        let listened = name.clone();
        tokio::spawn(async move {
            loop {
                match consumer.next().await {
                    // Parsed only while a request waits (one that timed out may still get its copy).
                    Some(Ok(delivery)) if waiters.any() => {
                        if let Ok(notification) = serde_json::from_slice::<Notification>(&delivery.data) {
                            wake(&waiters, notification, &delivery, &listened);
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(error)) => {
                        if channel.wait_for_recovery(error).await.is_err() {
                            return;
                        }
                    }
                    None => return,
                }
            }
        });
        Ok(name)
    }

    pub async fn close(&self) {
        if let Some(link) = self.current() {
            link.publisher.close().await;
            let _ = link.connection.close(200, "api stopped".into()).await;
        }
    }
}

/// Hands a notification to the requests waiting for its cause, in a consumer span that continues
/// the notification's trace (the `Prefer: wait` wake). Notifications nobody waits for make none.
fn wake(waiters: &Waiters, notification: Notification, delivery: &lapin::message::Delivery, queue: &str) {
    let Some(cause) = notification.causation_id.clone().filter(|c| waiters.waits_for(c)) else {
        return;
    };
    let span = tracing::info_span!(
        "wake",
        otel.name = "wake Prefer: wait",
        otel.kind = "consumer",
        messaging.system = "rabbitmq",
        messaging.operation.type = "process",
        messaging.destination.name = queue,
        messaging.rabbitmq.destination.routing_key = notification.kind.map(|k| k.as_str()),
        event.id = %cause,
        trace_id = tracing::field::Empty,
    );
    let mut trace = TraceHeaders::from_amqp(&delivery.properties);
    if trace.traceparent.is_none() {
        trace = TraceHeaders::from_json(&delivery.data);
    }
    traces::continue_from(&span, &trace);
    let _entered = span.enter();
    waiters.deliver(notification);
}
