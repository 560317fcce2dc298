//! RabbitMQ: the connection (with automatic recovery, to another node of a cluster), the
//! topology, and publishing with confirms.

pub mod addresses;
pub mod origin;
pub mod topology;

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

pub use addresses::{AddressError, Addresses};
pub use origin::{Origin, SystemUsers};
pub use topology::Names;

/// AMQP delivery mode 2: the broker writes the message to disk.
pub const PERSISTENT: u8 = 2;

/// How long one attempt to connect may take: a broker that takes the TCP connection and never
/// answers (hung, or a half-open load balancer) would otherwise hold the caller for ever.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Fails an attempt that takes longer than [`CONNECT_TIMEOUT`] (more with several nodes: each
/// may take [`addresses::NODE_CONNECT_TIMEOUT`]).
async fn within_timeout(
    addresses: &Addresses,
    attempt: impl Future<Output = lapin::Result<Connection>>,
) -> lapin::Result<Connection> {
    let nodes = u32::try_from(addresses.nodes().len()).unwrap_or(u32::MAX);
    let timeout = CONNECT_TIMEOUT.max(addresses::NODE_CONNECT_TIMEOUT.saturating_mul(nodes.saturating_add(1)));
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(lapin::Error::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no AMQP answer from {} within {} s", addresses.describe(), timeout.as_secs()),
        ))),
    }
}

/// Connects, retrying with bounded backoff (200 ms doubling to 5 s) and a line per failed attempt
/// naming the brokers, the error and the next delay, until connected or `stop`. `None`: stopped.
pub async fn connect_until(
    addresses: &Addresses,
    name: &str,
    stop: &tokio_util::sync::CancellationToken,
    mut failed: impl FnMut(&lapin::Error),
) -> Option<Connection> {
    let broker = addresses.describe();
    let mut delay = Duration::from_millis(200);
    loop {
        let attempt = tokio::select! {
            _ = stop.cancelled() => return None,
            attempt = connect(addresses, name) => attempt,
        };
        match attempt {
            Ok(connection) => return Some(connection),
            Err(error) => {
                failed(&error);
                tracing::warn!(%broker, %error, retry.in_ms = delay.as_millis() as u64, "RabbitMQ is not reachable yet");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Opens a connection that recovers by itself: when its node fails or restarts, lapin connects
/// again, to the next node of `addresses` (in list order), and replays the exchanges, queues,
/// bindings, QoS and consumers declared on it.
pub async fn connect(addresses: &Addresses, name: &str) -> lapin::Result<Connection> {
    let properties = ConnectionProperties::default()
        .with_connection_name(LongString::from(name.to_string()))
        .enable_auto_recover()
        // The default gives up after 16 attempts; a worker must outlive any broker outage.
        .with_backoff(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(250))
                .with_max_delay(Duration::from_secs(5))
                .with_jitter()
                .without_max_times(),
        );
    within_timeout(addresses, addresses::open(addresses, properties)).await
}

/// Opens a connection that does not recover: when it fails, everything done on it ends with it.
/// For work that must not resume by itself after an outage (the sequencer's lock and consumer).
/// The attempt goes through the nodes of `addresses` like any other.
pub async fn connect_once(addresses: &Addresses, name: &str) -> lapin::Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(LongString::from(name.to_string()));
    within_timeout(addresses, addresses::open(addresses, properties)).await
}

/// Connects, retrying with backoff for up to `patience`. Used at start-up, when the broker may
/// still be starting beside us.
pub async fn connect_with_patience(addresses: &Addresses, name: &str, patience: Duration) -> lapin::Result<Connection> {
    let attempt = || async { connect(addresses, name).await };
    attempt
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(3))
                .with_total_delay(Some(patience))
                .without_max_times(),
        )
        .notify(|error, after| {
            tracing::warn!(broker = %addresses.describe(), error = %error, retry.in_ms = after.as_millis() as u64, "RabbitMQ is not reachable yet");
        })
        .await
}

/// Why a publish did not get a positive confirm. Whoever publishes must treat every variant as
/// "not sent": answer 503, keep the outbox row, or leave the delivery unacked.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the broker connection is down")]
    Disconnected,
    #[error("the broker is blocking publishers (a memory or disk alarm)")]
    Blocked,
    #[error("the broker did not confirm within {0:?}")]
    Timeout(Duration),
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error("no queue is bound for routing key {0:?}")]
    Unroutable(String),
    #[error("AMQP error: {0}")]
    Amqp(#[from] lapin::Error),
}

/// One outgoing message.
#[derive(Debug, Clone)]
pub struct Outgoing<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub body: &'a [u8],
    pub properties: BasicProperties,
    /// Ask the broker to return the message if no queue takes it.
    pub mandatory: bool,
}

/// A channel in confirm mode. Every publish waits for the broker's confirm (bounded by the
/// timeout), so "published" means "the broker has it". When the broker closes the channel (a
/// message it refused with a channel error), the next publish opens a new one: no message can
/// leave the publisher broken.
#[derive(Clone)]
pub struct Publisher {
    connection: std::sync::Arc<Connection>,
    channel: std::sync::Arc<std::sync::Mutex<Channel>>,
    /// Held while a closed channel is replaced, so concurrent publishers open one, not many.
    reopening: std::sync::Arc<tokio::sync::Mutex<()>>,
    timeout: Duration,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").field("channel", &self.current().id()).field("timeout", &self.timeout).finish()
    }
}

impl Publisher {
    pub async fn new(connection: std::sync::Arc<Connection>, timeout: Duration) -> lapin::Result<Publisher> {
        let channel = Self::open(&connection).await?;
        Ok(Publisher {
            connection,
            channel: std::sync::Arc::new(std::sync::Mutex::new(channel)),
            reopening: std::sync::Arc::default(),
            timeout,
        })
    }

    async fn open(connection: &Connection) -> lapin::Result<Channel> {
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(channel)
    }

    fn current(&self) -> Channel {
        self.channel.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The channel to publish on: the current one, or a new one if the broker closed it while
    /// the connection stayed up (after a reconnect lapin recovers the channel itself).
    async fn usable(&self) -> Result<Channel, PublishError> {
        let channel = self.current();
        let status = channel.status();
        // Opening, or waiting for the connection's recovery: lapin brings it back itself.
        if status.connected() || status.initializing() || status.reconnecting() {
            return Ok(channel);
        }
        let _reopening = self.reopening.lock().await;
        let channel = self.current();
        if channel.status().connected() {
            return Ok(channel);
        }
        let fresh = tokio::time::timeout(self.timeout, Self::open(&self.connection))
            .await
            .map_err(|_| PublishError::Timeout(self.timeout))??;
        tracing::warn!(channel = fresh.id(), "the broker had closed the publishing channel; opened a new one");
        *self.channel.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = fresh.clone();
        Ok(fresh)
    }

    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// Is the broker connected and accepting publishes right now? (A channel the broker closed
    /// does not count against it: the next publish replaces it.)
    pub fn is_ready(&self) -> bool {
        let status = self.connection.status();
        status.connected() && !status.blocked()
    }

    /// Publishes and waits for the confirm.
    pub async fn publish(&self, message: Outgoing<'_>) -> Result<(), PublishError> {
        let confirm = self.start(message).await?;
        self.finish(confirm).await
    }

    /// Publishes several messages and waits for all confirms; the first failure is returned.
    /// Messages after a failure may or may not have reached the broker.
    pub async fn publish_all(&self, messages: Vec<Outgoing<'_>>) -> Result<(), PublishError> {
        let mut pending = Vec::with_capacity(messages.len());
        for message in messages {
            pending.push(self.start(message).await?);
        }
        for confirm in pending {
            self.finish(confirm).await?;
        }
        Ok(())
    }

    async fn start(&self, message: Outgoing<'_>) -> Result<(String, lapin::PublisherConfirm), PublishError> {
        let status = self.connection.status();
        if !status.connected() {
            return Err(PublishError::Disconnected);
        }
        if status.blocked() {
            return Err(PublishError::Blocked);
        }
        let channel = self.usable().await?;
        let options = BasicPublishOptions { mandatory: message.mandatory, ..BasicPublishOptions::default() };
        let confirm = tokio::time::timeout(
            self.timeout,
            channel.basic_publish(
                ShortString::from(message.exchange.to_string()),
                ShortString::from(message.routing_key.to_string()),
                options,
                message.body,
                message.properties,
            ),
        )
        .await
        .map_err(|_| PublishError::Timeout(self.timeout))??;
        Ok((message.routing_key.to_string(), confirm))
    }

    async fn finish(&self, (routing_key, confirm): (String, lapin::PublisherConfirm)) -> Result<(), PublishError> {
        let confirmation =
            tokio::time::timeout(self.timeout, confirm).await.map_err(|_| PublishError::Timeout(self.timeout))??;
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_returned)) => Err(PublishError::Unroutable(routing_key)),
            Confirmation::Nack(_) => Err(PublishError::Nacked),
            // Cannot happen on a channel in confirm mode; treat it as not confirmed.
            Confirmation::NotRequested => Err(PublishError::Nacked),
        }
    }

    pub async fn close(&self) {
        let _ = self.current().close(200, ShortString::from("shutting down")).await;
    }
}

/// The longest reply destination the worker keeps (the `outbox.reply_to` column).
pub const MAX_REPLY_TO: usize = 255;

/// Whether `id` is the last part of an API reply queue's name: 32 lowercase hex digits.
pub fn is_reply_queue_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether `name` has the shape of an API reply queue, `<prefix>.api.<32 hex digits>`, whatever
/// the prefix (the relay checks its own prefix too: [`Names::is_api_reply_queue`]).
pub fn looks_like_reply_queue(name: &str) -> bool {
    name.len() <= MAX_REPLY_TO
        && name.rsplit_once(".api.").is_some_and(|(prefix, id)| {
            !prefix.is_empty()
                && prefix.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && is_reply_queue_id(id)
        })
}

/// Properties of a persistent CloudEvents structured message.
pub fn cloud_event_properties(id: &str, event_type: &str) -> BasicProperties {
    BasicProperties::default()
        .with_content_type(ShortString::from("application/cloudevents+json"))
        .with_delivery_mode(PERSISTENT)
        .with_message_id(ShortString::from(id.to_string()))
        .with_type(ShortString::from(event_type.to_string()))
        .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64)
}

/// Adds or replaces a string header.
pub fn set_header(properties: BasicProperties, name: &str, value: impl Into<String>) -> BasicProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(
        ShortString::from(name.to_string()),
        AMQPValue::LongString(LongString::from(value.into().into_bytes())),
    );
    properties.with_headers(headers)
}

/// Adds or replaces an integer header.
pub fn set_int_header(properties: BasicProperties, name: &str, value: i64) -> BasicProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(ShortString::from(name.to_string()), AMQPValue::LongLongInt(value));
    properties.with_headers(headers)
}

/// A header as text, if present.
pub fn header(properties: &BasicProperties, name: &str) -> Option<String> {
    properties.headers().as_ref()?.inner().get(name).and_then(crate::events::envelope::amqp_string)
}

/// A header as a whole number, if present.
pub fn int_header(properties: &BasicProperties, name: &str) -> Option<i64> {
    header(properties, name)?.parse().ok()
}

/// An empty argument table.
pub fn no_arguments() -> FieldTable {
    FieldTable::default()
}
