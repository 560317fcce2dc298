//! Worker processes, load, and the tally every scenario prints.

use std::fmt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

use automation_shared::config::Config;
use automation_shared::messaging::{Outgoing, cloud_event_properties};
use automation_shared::testing::TestEnv;
use automation_shared::testing::private_rabbitmq::free_port;
use serde_json::json;

/// The entity every load event records, so effects can be counted.
pub const ENTITY: &str = "chaos";

/// A worker as its own process: it can be killed like a pod.
pub struct WorkerProcess {
    child: Child,
    pub port: u16,
    log: PathBuf,
}

impl WorkerProcess {
    pub fn start(config: &Config, extra: &[(&str, &str)]) -> WorkerProcess {
        // reqwest (the readiness probe) needs rustls's provider chosen once per process.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let port = free_port();
        let log = std::env::temp_dir().join(format!("automation-chaos-worker-{}.log", uuid::Uuid::new_v4().simple()));
        let file = std::fs::File::create(&log).expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_automation-worker"));
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", config.database.url.clone().expect("database url"))
            .env("AMQP_URL", &config.amqp.url)
            .env("AUTOMATION_AMQP__PREFIX", &config.amqp.prefix)
            // The test environment's layout, so its clean-up removes every queue the worker made.
            .env("AUTOMATION_WORKER__PARTITIONS", config.worker.partitions.to_string())
            .env("AUTOMATION_WORKER__ORDERING", config.worker.ordering.as_str())
            .env("WORKER_PORT", port.to_string())
            .env("AUTOMATION_WORKER__RETRY_DELAYS_MS", format!("{:?}", config.worker.retry_delays_ms))
            .env("AUTOMATION_WORKER__MAX_ATTEMPTS", config.worker.max_attempts.to_string())
            .env("AUTOMATION_WORKER__BATCH_TIMEOUT_MS", "5")
            .env("AUTOMATION_WORKER__OUTBOX_SWEEP_MS", "500")
            .env("AUTOMATION_WORKER__SHUTDOWN_GRACE_SECS", "20")
            .env("AUTOMATION_DATABASE__ACQUIRE_TIMEOUT_MS", "2000")
            .env("LOG_FORMAT", "json")
            .env("LOG_LEVEL", "info")
            .stdout(file.try_clone().expect("log"))
            .stderr(file);
        for (key, value) in extra {
            command.env(key, value);
        }
        let child = command.spawn().expect("the worker binary starts");
        WorkerProcess { child, port, log }
    }

    /// SIGKILL: no drain, no goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, as Kubernetes sends on scale-down.
    pub fn terminate(&self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
    }

    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The status of `/readiness` (0 when it does not answer).
    pub async fn readiness(&self) -> u16 {
        match reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}/readiness", self.port))
            .timeout(Duration::from_secs(3))
            .send()
            .await
        {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        }
    }

    pub async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while self.readiness().await != 200 {
            assert!(tokio::time::Instant::now() < deadline, "the worker did not become ready:\n{}", self.log_tail());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The load event number `i`: an audit record of its own, so a double apply shows as two rows.
pub fn load_event(i: usize) -> (String, Vec<u8>) {
    let id = format!("chaos-{i}");
    let body = json!({
        "specversion": "1.0", "id": id, "source": "/chaos", "type": "audit.recorded",
        "data": {"entity": ENTITY, "entityId": format!("e-{i}"), "action": "hit"}
    });
    (id, body.to_string().into_bytes())
}

/// Publishes `audit.recorded` events (id, body) on the publisher's one channel, in order, with
/// confirms: whether the broker confirmed them all.
pub async fn publish_audits(env: &TestEnv, exchange: &str, events: &[(String, Vec<u8>)]) -> bool {
    publish_audits_with(&env.publisher, exchange, events).await
}

/// The same through `publisher`.
pub async fn publish_audits_with(
    publisher: &automation_shared::messaging::Publisher,
    exchange: &str,
    events: &[(String, Vec<u8>)],
) -> bool {
    let messages = events
        .iter()
        .map(|(id, body)| Outgoing {
            exchange,
            routing_key: "audit.recorded",
            body,
            properties: cloud_event_properties(id, "audit.recorded"),
            mandatory: false,
        })
        .collect();
    publisher.publish_all(messages).await.is_ok()
}

/// Publishes load events `range` with confirms; returns how many the broker confirmed.
pub async fn publish_load(env: &TestEnv, range: std::ops::Range<usize>) -> usize {
    let exchange = env.names().events();
    let events: Vec<(String, Vec<u8>)> = range.map(load_event).collect();
    let mut confirmed = 0;
    for chunk in events.chunks(250) {
        if publish_audits(env, &exchange, chunk).await {
            confirmed += chunk.len();
        }
    }
    confirmed
}

/// Waits until `expected` load events are applied; returns how many are.
pub async fn wait_applied(env: &TestEnv, expected: usize, timeout: Duration) -> usize {
    env.wait_count("select count(distinct entity_id) from audit_log where entity = 'chaos'", expected as i64, timeout)
        .await as usize
}

/// What a scenario did, printed for CI's log.
#[derive(Debug, Default)]
pub struct Tally {
    pub scenario: &'static str,
    pub sent: usize,
    pub confirmed: usize,
    pub applied: usize,
    pub duplicated: usize,
    pub lost: usize,
    pub dead_lettered: usize,
    /// Pairs of events on one entity applied in the opposite order to the one they were sent
    /// in; `None` where the scenario does not measure order (its events name distinct entities).
    pub out_of_order: Option<usize>,
    pub notes: Vec<String>,
}

impl Tally {
    /// Counts the load events' effects in MySQL.
    pub async fn measure(env: &TestEnv, scenario: &'static str, sent: usize, confirmed: usize) -> Tally {
        let applied =
            env.count("select count(distinct entity_id) from audit_log where entity = 'chaos'").await as usize;
        let records = env.count("select count(*) from audit_log where entity = 'chaos'").await as usize;
        let dead_lettered = env.count("select count(*) from dead_letters").await as usize;
        Tally {
            scenario,
            sent,
            confirmed,
            applied,
            duplicated: records - applied,
            lost: confirmed.saturating_sub(applied),
            dead_lettered,
            out_of_order: None,
            notes: Vec::new(),
        }
    }

    pub fn note(mut self, note: impl Into<String>) -> Tally {
        self.notes.push(note.into());
        self
    }

    /// Prints the tally and fails on anything lost, applied twice or, where measured, applied out
    /// of order.
    pub fn check(&self) {
        println!("{self}");
        assert_eq!(self.lost, 0, "lost events: {self}");
        assert_eq!(self.duplicated, 0, "events applied twice: {self}");
        if let Some(out_of_order) = self.out_of_order {
            assert_eq!(out_of_order, 0, "events applied out of order: {self}");
        }
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TALLY {:<40} sent={:<6} confirmed={:<6} applied={:<6} duplicated={} lost={} dead-lettered={}",
            self.scenario, self.sent, self.confirmed, self.applied, self.duplicated, self.lost, self.dead_lettered
        )?;
        match self.out_of_order {
            Some(out_of_order) => write!(f, " out-of-order={out_of_order}")?,
            None => write!(f, " out-of-order=unmeasured")?,
        }
        for note in &self.notes {
            write!(f, " {note}")?;
        }
        Ok(())
    }
}

/// A pseudo-random number below `bound`.
pub fn random_below(bound: u64) -> u64 {
    (uuid::Uuid::new_v4().as_u128() % u128::from(bound.max(1))) as u64
}
