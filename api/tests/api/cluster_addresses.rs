//! `AMQP_URL` with several nodes: the API binary, given a first node where nothing listens and
//! the live one as `host:port` after it, takes commands (202) and wakes a `Prefer: wait` request
//! through its reply queue on the live node.

use std::process::{Command, Stdio};
use std::time::Duration;

use automation_api::auth::Role;
use automation_api::routes::users::{self, NewUser};
use automation_shared::testing::{TestEnv, dead_node_first};
use serde_json::{Value, json};

use crate::support::{PASSWORD, TestWorker};

#[tokio::test]
async fn with_a_dead_first_node_in_amqp_url_the_api_binary_accepts_commands_and_wakes_waiting_requests() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let env = TestEnv::new().await;
    let _worker = TestWorker::start(&env.config).await;
    let (url, dead) = dead_node_first(&env.config.amqp.url, true);
    let port = automation_shared::testing::private_rabbitmq::free_port();
    let log = std::env::temp_dir().join(format!("automation-api-two-nodes-{}.log", uuid::Uuid::new_v4().simple()));
    let file = std::fs::File::create(&log).expect("log");
    let mut api = Command::new(env!("CARGO_BIN_EXE_automation-api"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", env.config.database.url.clone().expect("url"))
        .env("AMQP_URL", &url)
        .env("AUTOMATION_AMQP__PREFIX", &env.config.amqp.prefix)
        .env("AUTOMATION_WORKER__PARTITIONS", env.config.worker.partitions.to_string())
        .env("AUTOMATION_WORKER__RETRY_DELAYS_MS", format!("{:?}", env.config.worker.retry_delays_ms))
        .env("API_PORT", port.to_string())
        .env("LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log"))
        .stderr(file)
        .spawn()
        .expect("the API starts");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().expect("client");
    let started = tokio::time::Instant::now();
    loop {
        if let Ok(r) = client.get(format!("{base}/health/ready")).send().await
            && r.status() == 200
        {
            break;
        }
        let said = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(started.elapsed() < Duration::from_secs(20), "the API did not become ready: {said}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let email = format!("admin-{}@example.com", uuid::Uuid::new_v4().simple());
    users::create(
        &env.pool,
        NewUser { email: email.clone(), name: "admin".into(), role: Role::Admin, password: PASSWORD.into() },
    )
    .await
    .expect("user created");
    let login: Value = client
        .post(format!("{base}/auth/login"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .expect("login answers")
        .json()
        .await
        .expect("json");
    let token = login["accessToken"].as_str().expect("token").to_string();

    let accepted = client
        .post(format!("{base}/auditLogs"))
        .bearer_auth(&token)
        .json(&json!({"entity": "two-nodes", "entityId": "e-1", "action": "hit"}))
        .send()
        .await
        .expect("answer");
    assert_eq!(accepted.status(), 202, "{}", accepted.text().await.unwrap_or_default());
    let waited = client
        .post(format!("{base}/workflows"))
        .bearer_auth(&token)
        .header("prefer", "wait=10")
        .json(&json!({"name": "Through the second node"}))
        .send()
        .await
        .expect("answer");
    let status = waited.status().as_u16();
    let workflow: Value = waited.json().await.unwrap_or_default();
    assert_eq!(status, 200, "the wait was woken: {workflow}");
    assert_eq!(workflow["name"], "Through the second node");
    let applied =
        env.wait_count("select count(*) from audit_log where entity = 'two-nodes'", 1, Duration::from_secs(20)).await;

    let _ = api.kill();
    let _ = api.wait();
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert_eq!(applied, 1, "the 202 was applied once: {said}");
    assert!(said.contains(&format!("127.0.0.1:{dead}")), "the API tried the dead node first and said so: {said}");
    assert!(!said.contains("guest:guest"), "no credentials in the log: {said}");
}
