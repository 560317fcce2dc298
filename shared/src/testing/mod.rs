//! Test support (feature `testing`): each test gets its own database and its own broker prefix
//! on the real local MariaDB and RabbitMQ, removed again when the test ends, pass or fail.
//!
//! `TEST_DATABASE_URL` (default `mysql://root@127.0.0.1:3306`) and `TEST_AMQP_URL` (default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`) point elsewhere.

#![expect(clippy::expect_used, reason = "test support: a failed set-up stops the test with its message")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Connection};
use serde_json::Value;
use sqlx::MySqlPool;
use sqlx::mysql::MySqlPoolOptions;
use tokio::sync::Notify;

use crate::config::{Config, DEFAULT_PARTITIONS};
use crate::db::MIGRATOR;
use crate::messaging::topology::{self, TopologySettings};
use crate::messaging::{self, Names, Outgoing, Publisher};

pub fn database_server_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

pub fn amqp_url() -> String {
    std::env::var("TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// The nodes of a test's `AMQP_URL` (one URL, or a cluster's list).
pub fn addresses(url: &str) -> messaging::Addresses {
    messaging::Addresses::parse(url).expect("a valid AMQP_URL")
}

/// `url` with a node where nothing listens put first: `(the list, the dead node's port)`. With
/// `shorthand` the live node follows as `host:port`, else as a full URL.
pub fn dead_node_first(url: &str, shorthand: bool) -> (String, u16) {
    let live: lapin::uri::AMQPUri = url.parse().expect("a single AMQP URL");
    let mut dead = live.clone();
    dead.authority.port = private_rabbitmq::free_port();
    let second = if shorthand { format!("{}:{}", live.authority.host, live.authority.port) } else { url.to_string() };
    (format!("{dead},{second}"), dead.authority.port)
}

/// Short retry delays, so retry paths run in seconds.
pub const TEST_RETRY_DELAYS_MS: [u64; 3] = [200, 400, 800];

/// A database and a broker prefix of the test's own.
pub struct TestEnv {
    pub config: Config,
    pub pool: MySqlPool,
    pub database: String,
    pub connection: Arc<Connection>,
    pub publisher: Publisher,
    cleanup: Option<Cleanup>,
}

struct Cleanup {
    /// What `on` declared: a test may change the retry delays or the partitions after.
    declared: crate::config::WorkerConfig,
    database: String,
    database_server: String,
    prefix: String,
    amqp: String,
}

impl TestEnv {
    pub async fn new() -> TestEnv {
        TestEnv::on_broker(&amqp_url()).await
    }

    /// The same, on another broker (a private node the test may stop).
    pub async fn on_broker(amqp: &str) -> TestEnv {
        TestEnv::on(&database_server_url(), amqp).await
    }

    /// The same, on another database server and broker (private ones the test may stop).
    pub async fn on(database_server: &str, amqp: &str) -> TestEnv {
        let suffix = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let database = format!("t_{suffix}");
        let prefix = format!("t{suffix}");
        let server =
            MySqlPoolOptions::new().max_connections(1).connect(database_server).await.expect("MariaDB answers");
        sqlx::query(sqlx::AssertSqlSafe(format!("create database `{database}`")))
            .execute(&server)
            .await
            .expect("create database");
        server.close().await;

        let mut config = Config::default();
        config.database.url = Some(format!("{database_server}/{database}"));
        config.database.max_connections = 8;
        config.amqp.url = amqp.to_string();
        config.amqp.prefix = prefix.clone();
        config.amqp.publish_timeout_ms = 5_000;
        config.worker.retry_delays_ms = TEST_RETRY_DELAYS_MS.to_vec();
        config.worker.batch_timeout_ms = 5;
        config.worker.outbox_sweep_ms = 200;
        // Fewer partition queues than in production: each test declares its own topology.
        config.worker.partitions = 4;
        config.worker.port = 0;
        config.api.port = 0;

        let pool = crate::db::connect(&config.database).await.expect("connect to the test database");
        MIGRATOR.run(&pool).await.expect("migrations apply");
        let connection = Arc::new(
            messaging::connect(&addresses(&config.amqp.url), "automation-tests").await.expect("RabbitMQ answers"),
        );
        let settings = TopologySettings::of(&config.worker);
        topology::declare(&connection, &Names::new(prefix.clone()), &settings).await.expect("topology");
        let publisher = Publisher::new(connection.clone(), Duration::from_secs(5)).await.expect("publisher");
        let declared = config.worker.clone();
        TestEnv {
            config,
            pool,
            database: database.clone(),
            connection,
            publisher,
            cleanup: Some(Cleanup {
                declared,
                database,
                database_server: database_server.to_string(),
                prefix,
                amqp: amqp.to_string(),
            }),
        }
    }

    /// A test environment whose workers use `partitions` partitions (the worker declares the
    /// ones `new` did not; the clean-up removes them).
    pub async fn with_partitions(partitions: u16) -> TestEnv {
        let mut env = TestEnv::new().await;
        env.config.worker.partitions = partitions;
        env
    }

    pub fn names(&self) -> Names {
        Names::new(self.config.amqp.prefix.clone())
    }

    /// Publishes to the events exchange and waits for the confirm.
    pub async fn publish(&self, routing_key: &str, properties: BasicProperties, body: &[u8]) {
        let exchange = self.names().events();
        self.publisher
            .publish(Outgoing { exchange: &exchange, routing_key, body, properties, mandatory: false })
            .await
            .expect("the broker confirms");
    }

    /// A CloudEvents structured message.
    pub async fn publish_structured(&self, event: &Value) {
        let routing_key = event["type"].as_str().unwrap_or_default().to_string();
        let properties = BasicProperties::default()
            .with_content_type("application/cloudevents+json".into())
            .with_delivery_mode(messaging::PERSISTENT);
        self.publish(&routing_key, properties, event.to_string().as_bytes()).await;
    }

    /// A CloudEvents binary message: the attributes as headers under `prefix`.
    pub async fn publish_binary(&self, event: &Value, prefix: &str) {
        let mut headers = FieldTable::default();
        for (key, value) in event.as_object().into_iter().flatten() {
            if key == "data" {
                continue;
            }
            let text = value.as_str().map(str::to_string).unwrap_or_else(|| value.to_string());
            headers.insert(
                ShortString::from(format!("{prefix}{key}")),
                AMQPValue::LongString(LongString::from(text.into_bytes())),
            );
        }
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(messaging::PERSISTENT)
            .with_headers(headers);
        let routing_key = event["type"].as_str().unwrap_or_default().to_string();
        self.publish(&routing_key, properties, event["data"].to_string().as_bytes()).await;
    }

    /// What Spring's `RabbitTemplate` with Jackson sends: the data, a `__TypeId__` header, no
    /// message id.
    pub async fn publish_plain(&self, routing_key: &str, data: &Value) {
        self.publish(routing_key, spring_plain_properties(), data.to_string().as_bytes()).await;
    }

    /// Starts collecting every notification.
    pub async fn notifications(&self) -> NotificationTap {
        NotificationTap::start(&self.connection, &self.names()).await
    }

    /// Waits until the event is in the inbox; returns its outcome.
    pub async fn wait_processed(&self, event_id: &str) -> String {
        self.wait_processed_within(event_id, Duration::from_secs(20)).await
    }

    pub async fn wait_processed_within(&self, event_id: &str, timeout: Duration) -> String {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let outcome: Option<String> = sqlx::query_scalar("select outcome from inbox where event_id = ?")
                .bind(event_id)
                .fetch_optional(&self.pool)
                .await
                .expect("query");
            if let Some(outcome) = outcome {
                return outcome;
            }
            assert!(tokio::time::Instant::now() < deadline, "event {event_id} was not processed within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until `sql` (a count) reaches `expected`; returns the last count.
    pub async fn wait_count(&self, sql: &'static str, expected: i64, timeout: Duration) -> i64 {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut n = 0;
        loop {
            // A database a test restarts fails the first query on each old connection: keep asking.
            if let Ok(count) = sqlx::query_scalar::<_, i64>(sql).fetch_one(&self.pool).await {
                n = count;
            }
            if n >= expected || tokio::time::Instant::now() >= deadline {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.expect("count query")
    }

    /// How many consumers `queue` has right now, asked on a connection of its own (the
    /// environment's may still be recovering from a broker restart, and a passive declare of a
    /// missing queue closes its channel).
    pub async fn consumers_on(&self, queue: &str) -> u32 {
        let connection = messaging::connect_once(&addresses(&self.config.amqp.url), "test consumer count")
            .await
            .expect("the broker takes a connection");
        let channel = connection.create_channel().await.expect("channel");
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() },
                FieldTable::default(),
            )
            .await
            .expect("the queue exists");
        let _ = connection.close(200, "ok".into()).await;
        declared.consumer_count()
    }

    pub async fn count_bound(&self, sql: &'static str, value: &str) -> i64 {
        sqlx::query_scalar(sql).bind(value).fetch_one(&self.pool).await.expect("count query")
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let Some(cleanup) = self.cleanup.take() else {
            return;
        };
        let worker_config = self.config.worker.clone();
        // Drop cannot await, and may run while the test's runtime unwinds: clean up from a
        // thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(server) = MySqlPoolOptions::new().max_connections(1).connect(&cleanup.database_server).await {
                    // The test's own workers may still hold a transaction open on a runtime this
                    // join now blocks: end their sessions, or the drop would wait for their
                    // metadata locks for ever.
                    let sessions: Vec<u64> =
                        sqlx::query_scalar("select id from information_schema.processlist where db = ?")
                            .bind(&cleanup.database)
                            .fetch_all(&server)
                            .await
                            .unwrap_or_default();
                    for session in sessions {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(format!("kill {session}"))).execute(&server).await;
                    }
                    let _ = sqlx::query("set session lock_wait_timeout = 10").execute(&server).await;
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("drop database if exists `{}`", cleanup.database)))
                        .execute(&server)
                        .await;
                    server.close().await;
                }
                if let Ok(connection) = messaging::connect(&addresses(&cleanup.amqp), "automation-tests-cleanup").await
                {
                    let names = Names::new(cleanup.prefix);
                    // A worker process started from this environment may have used the default
                    // layout: remove the most partitions any of them could have declared.
                    let mut widest = worker_config.clone();
                    widest.partitions = [worker_config.partitions, cleanup.declared.partitions, DEFAULT_PARTITIONS]
                        .into_iter()
                        .max()
                        .unwrap_or(DEFAULT_PARTITIONS);
                    let _ = topology::delete(&connection, &names, &TopologySettings::of(&widest)).await;
                    let _ = topology::delete(&connection, &names, &TopologySettings::of(&cleanup.declared)).await;
                    // ...and the retry queues of the default delays, which such a process declares.
                    widest.retry_delays_ms = crate::config::WorkerConfig::default().retry_delays_ms;
                    let _ = topology::delete(&connection, &names, &TopologySettings::of(&widest)).await;
                    let _ = connection.close(200, "cleaned up".into()).await;
                }
            });
        })
        .join();
    }
}

/// The properties of what Spring's `RabbitTemplate` with Jackson sends: JSON, a `__TypeId__`
/// header, no message id.
pub fn spring_plain_properties() -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert("__TypeId__".into(), AMQPValue::LongString(LongString::from(b"com.example.Event".to_vec())));
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("UTF-8".into())
        .with_delivery_mode(messaging::PERSISTENT)
        .with_headers(headers)
}

/// Collects the notifications published under a prefix, or what arrives on one queue.
pub struct NotificationTap {
    queue: String,
    received: Arc<Mutex<Vec<Value>>>,
    arrived: Arc<Notify>,
}

impl NotificationTap {
    async fn start(connection: &Connection, names: &Names) -> NotificationTap {
        let queue = format!("{}.tap.{}", names.prefix(), uuid::Uuid::new_v4().simple());
        let channel = Self::declare(connection, &queue).await;
        channel
            .queue_bind(
                queue.clone().into(),
                names.notifications().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind tap");
        Self::consume(channel, queue).await
    }

    /// What arrives on an exclusive queue named `queue`, bound to nothing: as an API process's
    /// reply queue, which only what is sent to it by name reaches.
    pub async fn unbound(connection: &Connection, queue: String) -> NotificationTap {
        let channel = Self::declare(connection, &queue).await;
        Self::consume(channel, queue).await
    }

    /// The queue it reads.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    async fn declare(connection: &Connection, queue: &str) -> lapin::Channel {
        let channel = connection.create_channel().await.expect("channel");
        channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions { exclusive: true, auto_delete: true, ..QueueDeclareOptions::default() },
                FieldTable::default(),
            )
            .await
            .expect("tap queue");
        channel
    }

    async fn consume(channel: lapin::Channel, queue: String) -> NotificationTap {
        let mut consumer = channel
            .basic_consume(queue.clone().into(), "tap".into(), BasicConsumeOptions::default(), FieldTable::default())
            .await
            .expect("consume");
        let received = Arc::new(Mutex::new(Vec::new()));
        let arrived = Arc::new(Notify::new());
        let (sink, signal) = (received.clone(), arrived.clone());
        tokio::spawn(async move {
            let _channel = channel;
            while let Some(Ok(delivery)) = consumer.next().await {
                if let Ok(value) = serde_json::from_slice::<Value>(&delivery.data) {
                    sink.lock().expect("lock").push(value);
                    signal.notify_waiters();
                }
                let _ = delivery.acker.ack(BasicAckOptions::default()).await;
            }
        });
        NotificationTap { queue, received, arrived }
    }

    pub fn all(&self) -> Vec<Value> {
        self.received.lock().expect("lock").clone()
    }

    /// Notifications caused by `event_id`.
    pub fn caused_by(&self, event_id: &str) -> Vec<Value> {
        self.all().into_iter().filter(|n| n["causationid"] == event_id).collect()
    }

    /// Waits for the first notification caused by `event_id`.
    pub async fn wait_caused_by(&self, event_id: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let notified = self.arrived.notified();
            if let Some(found) = self.caused_by(event_id).into_iter().next() {
                return found;
            }
            assert!(tokio::time::Instant::now() < deadline, "no notification caused by {event_id} within 20 s");
            let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
        }
    }

    /// Gives stragglers (a duplicate that should not come) time to arrive.
    pub async fn settle(&self) {
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
}

pub mod private_mariadb;
pub mod private_rabbitmq;
pub mod publisher_user;
pub mod rabbitmq_cluster;

/// What `promtool check metrics` says about a scrape: nothing, if it is clean.
pub fn promtool_check(scrape: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs (make deps installs it: Debian's prometheus package)");
    child.stdin.take().expect("stdin").write_all(scrape.as_bytes()).expect("write");
    let output = child.wait_with_output().expect("promtool ends");
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    if output.status.success() { String::new() } else { said }
}
