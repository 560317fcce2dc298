//! `automation-api healthcheck`, the probe a distroless container runs: exit 1 when nothing
//! listens on API_PORT, 0 against the running API, 1 for readiness while it is not ready.

use std::process::{Command, Stdio};

use automation_shared::testing::TestEnv;
use automation_shared::testing::private_rabbitmq::free_port;

use crate::support::TestApi;

/// Runs the binary's healthcheck against `port` with only the variables a container would have.
async fn healthcheck(env: &TestEnv, port: u16, args: &[&str]) -> (i32, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_automation-api"));
    command
        .arg("healthcheck")
        .args(args)
        .env_clear()
        .env("DATABASE_URL", env.config.database.url.clone().expect("url"))
        .env("AMQP_URL", &env.config.amqp.url)
        .env("API_HOST", "0.0.0.0")
        .env("API_PORT", port.to_string())
        .stdin(Stdio::null());
    // On a thread of its own: the server under test runs on this test's runtime.
    let output = tokio::task::spawn_blocking(move || command.output()).await.expect("joined").expect("the binary runs");
    (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[tokio::test]
async fn healthcheck_exits_1_when_nothing_listens_and_0_against_the_running_api() {
    let env = TestEnv::new().await;
    let (code, stderr) = healthcheck(&env, free_port(), &[]).await;
    assert_eq!(code, 1, "nothing listens: {stderr}");
    assert!(stderr.contains("could not connect"), "{stderr}");

    let api = TestApi::start(&env.config).await;
    let port: u16 = api.base.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port");
    let (code, stderr) = healthcheck(&env, port, &[]).await;
    assert_eq!(code, 0, "{stderr}");
    let (code, stderr) = healthcheck(&env, port, &["--ready"]).await;
    assert_eq!(code, 0, "ready: {stderr}");
    api.stop().await;
}

#[tokio::test]
async fn healthcheck_ready_exits_1_while_the_api_is_not_ready() {
    let mut env = TestEnv::new().await;
    // A broker address where nothing listens: the API serves, alive and not ready.
    env.config.amqp.url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", free_port());
    let api = TestApi::start_unready(&env.config).await;
    let port: u16 = api.base.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port");
    let (code, stderr) = healthcheck(&env, port, &[]).await;
    assert_eq!(code, 0, "alive: {stderr}");
    let (code, stderr) = healthcheck(&env, port, &["--ready"]).await;
    assert_eq!(code, 1, "not ready: {stderr}");
    assert!(stderr.contains("503"), "{stderr}");
    api.stop().await;
}

#[test]
fn healthcheck_exits_1_not_2_on_a_configuration_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_automation-api"))
        .args(["healthcheck"])
        .env_clear()
        .env("API_PORT", "not-a-port")
        .output()
        .expect("the binary runs");
    assert_eq!(output.status.code(), Some(1), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stderr).contains("API_PORT"));
}
