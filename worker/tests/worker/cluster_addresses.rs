//! `AMQP_URL` with several nodes: a first node where nothing listens (a node that is down) and a
//! live second one. The worker binary and its CLI work through the second (with only the first
//! they would fail), and the worker says that the first was not reachable.

use std::process::{Command, Stdio};
use std::time::Duration;

use automation_shared::testing::{TestEnv, dead_node_first};
use serde_json::json;

#[tokio::test]
async fn with_a_dead_first_node_in_amqp_url_the_worker_and_its_cli_work_through_the_second() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let env = TestEnv::new().await;
    let (url, dead) = dead_node_first(&env.config.amqp.url, false);
    let base = |command: &mut Command| {
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", env.config.database.url.clone().expect("database url"))
            .env("AMQP_URL", &url)
            .env("AUTOMATION_AMQP__PREFIX", &env.config.amqp.prefix)
            .env("AUTOMATION_WORKER__PARTITIONS", env.config.worker.partitions.to_string())
            .env("AUTOMATION_WORKER__RETRY_DELAYS_MS", format!("{:?}", env.config.worker.retry_delays_ms))
            .env("LOG_FORMAT", "json")
            .env("LOG_LEVEL", "info")
            .stdin(Stdio::null());
    };

    let mut topology = Command::new(env!("CARGO_BIN_EXE_automation-worker"));
    base(&mut topology);
    topology.arg("topology");
    let output = tokio::task::spawn_blocking(move || topology.output()).await.expect("joined").expect("the CLI runs");
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{said}");
    assert!(said.contains("declared queues"), "{said}");
    assert!(!said.contains("guest:guest"), "no credentials in what the CLI says: {said}");

    let port = automation_shared::testing::private_rabbitmq::free_port();
    let log = std::env::temp_dir().join(format!("automation-two-nodes-{}.log", uuid::Uuid::new_v4().simple()));
    let file = std::fs::File::create(&log).expect("log file");
    let mut worker = Command::new(env!("CARGO_BIN_EXE_automation-worker"));
    base(&mut worker);
    worker.env("WORKER_PORT", port.to_string()).stdout(file.try_clone().expect("log")).stderr(file);
    let mut child = worker.spawn().expect("the worker starts");

    let event_id = format!("two-nodes-{}", uuid::Uuid::new_v4().simple());
    env.publish_structured(&json!({
        "specversion": "1.0", "id": event_id, "source": "/tests", "type": "audit.recorded",
        "data": {"entity": "two-nodes", "entityId": "e-1", "action": "hit"}
    }))
    .await;
    let outcome = env.wait_processed_within(&event_id, Duration::from_secs(30)).await;
    let _ = child.kill();
    let _ = child.wait();
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert_eq!(outcome, "applied", "{output}");
    assert_eq!(env.count("select count(*) from audit_log where entity = 'two-nodes'").await, 1);
    assert!(
        output.contains("a RabbitMQ node is not reachable") && output.contains(&format!("127.0.0.1:{dead}")),
        "the worker tried the dead node first and said so: {output}"
    );
    assert!(!output.contains("guest:guest"), "no credentials in the log: {output}");
}
