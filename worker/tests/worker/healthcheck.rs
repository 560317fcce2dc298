//! `automation-worker healthcheck`, the probe a distroless container runs: exit 1 when nothing
//! listens on WORKER_PORT, 0 against the running worker (liveness and readiness).

use std::process::{Command, Stdio};

use automation_shared::testing::TestEnv;
use automation_shared::testing::private_rabbitmq::free_port;

use crate::support::TestWorker;

async fn healthcheck(env: &TestEnv, port: u16, args: &[&str]) -> (i32, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_automation-worker"));
    command
        .arg("healthcheck")
        .args(args)
        .env_clear()
        .env("DATABASE_URL", env.config.database.url.clone().expect("url"))
        .env("AMQP_URL", &env.config.amqp.url)
        .env("WORKER_PORT", port.to_string())
        .stdin(Stdio::null());
    // On a thread of its own: the server under test runs on this test's runtime.
    let output = tokio::task::spawn_blocking(move || command.output()).await.expect("joined").expect("the binary runs");
    (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[tokio::test]
async fn healthcheck_exits_1_when_nothing_listens_and_0_against_the_running_worker() {
    let env = TestEnv::new().await;
    let (code, stderr) = healthcheck(&env, free_port(), &[]).await;
    assert_eq!(code, 1, "nothing listens: {stderr}");
    assert!(stderr.contains("could not connect"), "{stderr}");

    let worker = TestWorker::start(&env.config).await;
    let (code, stderr) = healthcheck(&env, worker.port, &[]).await;
    assert_eq!(code, 0, "{stderr}");
    // Readiness comes once the consumers run.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (code, stderr) = healthcheck(&env, worker.port, &["--ready"]).await;
        if code == 0 {
            break;
        }
        assert_eq!(code, 1, "{stderr}");
        assert!(std::time::Instant::now() < deadline, "never ready: {stderr}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let port = worker.port;
    worker.stop().await.expect("drains");
    let (code, stderr) = healthcheck(&env, port, &[]).await;
    assert_eq!(code, 1, "stopped: {stderr}");
}
