//! Starting in any weather: with RabbitMQ hung (it takes TCP connections and never answers) or
//! away, the worker serves liveness at once and readiness 503 naming the broker, logs each attempt,
//! honours SIGTERM at once, and starts working by itself once the broker answers.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use automation_shared::testing::TestEnv;
use automation_shared::testing::private_rabbitmq::free_port;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};

use crate::support::event;

/// A stand-in for the broker's address: it holds connections without a word until `forward` is
/// set, then passes them to the real broker.
struct Gate {
    port: u16,
    forward: Arc<AtomicBool>,
}

impl Gate {
    async fn start() -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let forward = Arc::new(AtomicBool::new(false));
        let open = forward.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let open = open.clone();
                tokio::spawn(async move {
                    // Hung: accept, say nothing, until opened.
                    while !open.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    if let Ok(mut broker) = TcpStream::connect("127.0.0.1:5672").await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut broker).await;
                    }
                });
            }
        });
        Gate { port, forward }
    }

    fn open(&self) {
        self.forward.store(true, Ordering::Relaxed);
    }
}

struct Process {
    child: Child,
    log: std::path::PathBuf,
}

impl Process {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, and how long until it exited, with its status. (Async: the gate's forwarding
    /// runs on this runtime, and the worker's goodbye goes through it.)
    async fn terminate(&mut self) -> (Duration, std::process::ExitStatus) {
        let started = Instant::now();
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return (started.elapsed(), status);
            }
            assert!(started.elapsed() < Duration::from_secs(10), "still running 10 s after SIGTERM:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_worker(env: &TestEnv, amqp_port: u16, port: u16) -> Process {
    let log = std::env::temp_dir().join(format!("automation-starting-{}.log", uuid::Uuid::new_v4().simple()));
    let file = std::fs::File::create(&log).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_automation-worker"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", env.config.database.url.clone().expect("database url"))
        .env("AMQP_URL", format!("amqp://guest:guest@127.0.0.1:{amqp_port}/%2f"))
        .env("AUTOMATION_AMQP__PREFIX", &env.config.amqp.prefix)
        .env("AUTOMATION_WORKER__PARTITIONS", env.config.worker.partitions.to_string())
        .env("AUTOMATION_WORKER__RETRY_DELAYS_MS", format!("{:?}", env.config.worker.retry_delays_ms))
        .env("WORKER_PORT", port.to_string())
        .env("LOG_FORMAT", "json")
        .env("LOG_LEVEL", "info")
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log"))
        .stderr(file)
        .spawn()
        .expect("the worker starts");
    Process { child, log }
}

async fn probe(port: u16, path: &str) -> Option<(u16, Value)> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().ok()?;
    let response = client.get(format!("http://127.0.0.1:{port}{path}")).send().await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.json().await.unwrap_or(Value::Null)))
}

async fn until<T>(what: &str, within: Duration, mut check: impl AsyncFnMut() -> Option<T>) -> (T, Duration) {
    let started = Instant::now();
    loop {
        if let Some(found) = check().await {
            return (found, started.elapsed());
        }
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn with_the_broker_hung_at_start_the_worker_answers_its_probes_and_starts_once_it_answers() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let env = TestEnv::new().await;
    let gate = Gate::start().await;
    let port = free_port();
    let mut worker = start_worker(&env, gate.port, port);

    let (_, live_after) =
        until("liveness", Duration::from_secs(5), async || probe(port, "/health").await.filter(|(s, _)| *s == 200))
            .await;
    let ((status, ready), _) =
        until("readiness", Duration::from_secs(5), async || probe(port, "/readiness").await).await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["dependencies"]["rabbitmq"]["status"], "unavailable", "{ready}");
    // One line per attempt, naming where and what next (the connect timeout is 10 s).
    let (line, _) = until("an attempt is logged", Duration::from_secs(20), async || {
        worker.log().lines().find(|l| l.contains("RabbitMQ is not reachable")).map(str::to_string)
    })
    .await;
    let line: Value = serde_json::from_str(&line).expect("a JSON log line");
    assert!(line["broker"].as_str().unwrap_or("").contains(&format!("127.0.0.1:{}", gate.port)), "{line}");
    assert!(!line.to_string().contains("guest:guest"), "no password in the logs: {line}");

    // The broker answers: the worker starts and works, by itself.
    gate.open();
    let (_, ready_after) = until("ready once the broker answers", Duration::from_secs(30), async || {
        probe(port, "/readiness").await.filter(|(s, _)| *s == 200)
    })
    .await;
    let e = event("workflow.created", json!({"name": "after the wait"}));
    env.publish_structured(&e).await;
    assert_eq!(env.wait_processed(e["id"].as_str().expect("id")).await, "applied");
    let (stopped_in, status) = worker.terminate().await;
    assert!(status.success(), "{status:?}");
    assert!(!worker.log().contains("panicked"), "{}", worker.log());
    eprintln!(
        "liveness after {live_after:?}, ready {ready_after:?} after the broker answered, stopped in {stopped_in:?}"
    );
}

#[tokio::test]
async fn sigterm_while_waiting_for_a_hung_broker_exits_0_at_once() {
    let env = TestEnv::new().await;
    let gate = Gate::start().await;
    let port = free_port();
    let mut worker = start_worker(&env, gate.port, port);
    until("liveness", Duration::from_secs(5), async || probe(port, "/health").await.filter(|(s, _)| *s == 200)).await;
    let (stopped_in, status) = worker.terminate().await;
    assert!(status.success(), "{status:?}: {}", worker.log());
    assert!(stopped_in < Duration::from_secs(2), "took {stopped_in:?}");
    assert!(!worker.log().contains("panicked"), "{}", worker.log());
}

#[tokio::test]
async fn with_the_database_away_at_start_the_worker_is_alive_not_ready_and_starts_once_it_answers() {
    use automation_shared::testing::private_mariadb::PrivateMariaDb;
    let mut mariadb = PrivateMariaDb::start().await;
    let env = TestEnv::on(&mariadb.url(), &automation_shared::testing::amqp_url()).await;
    mariadb.stop().await;
    let port = free_port();
    let mut worker = start_worker(&env, 5672, port);
    let (_, live_after) =
        until("liveness", Duration::from_secs(5), async || probe(port, "/health").await.filter(|(s, _)| *s == 200))
            .await;
    let ((_, ready), _) = until("readiness names MySQL", Duration::from_secs(15), async || {
        probe(port, "/readiness")
            .await
            .filter(|(s, body)| *s == 503 && body["dependencies"]["mysql"]["status"] == "unavailable")
    })
    .await;
    assert_eq!(ready["dependencies"]["rabbitmq"]["status"], "ok", "{ready}");

    mariadb.restart().await;
    let (_, ready_after) = until("ready once MySQL answers", Duration::from_secs(30), async || {
        probe(port, "/readiness").await.filter(|(s, _)| *s == 200)
    })
    .await;
    // The test's own pool held connections to the server that went away: let it find out.
    for _ in 0..10 {
        let _ = sqlx::query("select 1").execute(&env.pool).await;
    }
    let e = event("workflow.created", json!({"name": "after the database came"}));
    env.publish_structured(&e).await;
    assert_eq!(env.wait_processed_within(e["id"].as_str().expect("id"), Duration::from_secs(30)).await, "applied");
    let (stopped_in, status) = worker.terminate().await;
    assert!(status.success(), "{status:?}");
    assert!(!worker.log().contains("panicked"), "{}", worker.log());
    eprintln!("liveness after {live_after:?}, ready {ready_after:?} after MySQL answered, stopped in {stopped_in:?}");
}

#[tokio::test]
async fn sigterm_while_the_database_is_away_exits_0_at_once() {
    use automation_shared::testing::private_mariadb::PrivateMariaDb;
    let mut mariadb = PrivateMariaDb::start().await;
    let env = TestEnv::on(&mariadb.url(), &automation_shared::testing::amqp_url()).await;
    mariadb.stop().await;
    let port = free_port();
    let mut worker = start_worker(&env, 5672, port);
    until("readiness names MySQL", Duration::from_secs(15), async || {
        probe(port, "/readiness")
            .await
            .filter(|(s, body)| *s == 503 && body["dependencies"]["mysql"]["status"] == "unavailable")
    })
    .await;
    let (stopped_in, status) = worker.terminate().await;
    assert!(status.success(), "{status:?}: {}", worker.log());
    assert!(stopped_in < Duration::from_secs(2), "took {stopped_in:?}: {}", worker.log());
    assert!(!worker.log().contains("panicked"), "{}", worker.log());
    // Back, so the test environment's clean-up finds its database.
    mariadb.restart().await;
}
