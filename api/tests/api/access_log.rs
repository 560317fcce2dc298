//! The access log in each of its modes (`AUTOMATION_API__ACCESS_LOG`), as an operator reads it
//! in the JSON lines.

use std::time::Duration;

use automation_api::auth::Role;
use automation_shared::config::AccessLog;
use automation_shared::telemetry;
use automation_shared::testing::TestEnv;
use automation_shared::traces::Export;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{Captured, TestApi};

fn with_message(lines: &[Value], message: &str) -> Vec<Value> {
    lines.iter().filter(|l| l["message"] == message).cloned().collect()
}

fn total(summaries: &[Value], field: &str) -> u64 {
    summaries.iter().map(|s| s[field].as_u64().unwrap_or(0)).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_requests_are_summed_up_per_interval_and_a_slow_one_gets_its_own_line() {
    let mut env = TestEnv::new().await;
    env.config.api.access_log_interval_secs = 1;
    env.config.api.access_log_slow_ms = 500;
    assert_eq!(env.config.api.access_log, AccessLog::Summary, "the default");
    let logs = Captured::default();
    let _traces = telemetry::init_tracing_with(&env.config, "automation-api", &Export::Off, true, logs.clone());
    let api = TestApi::start(&env.config).await;
    let admin = api.user(Role::Admin).await;
    // Past the interval the start-up's requests are in.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    logs.clear();

    for _ in 0..20 {
        assert_eq!(api.client.get(api.url("/health")).send().await.expect("answer").status(), 200);
    }
    for _ in 0..3 {
        assert_eq!(api.client.get(api.url("/no-such-route")).send().await.expect("answer").status(), 404);
    }
    // No worker runs: the wait runs out after a second and answers 202, a slow request.
    let r = api
        .request(Method::POST, "/workflows", &admin.token)
        .header("prefer", "wait=1")
        .json(&json!({"name": "Purchases"}))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 202);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let summaries = loop {
        let summaries = with_message(&logs.lines(), "requests served");
        if total(&summaries, "requests") >= 24 {
            break summaries;
        }
        assert!(tokio::time::Instant::now() < deadline, "no summary of 24 requests: {summaries:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(total(&summaries, "requests"), 24, "{summaries:?}");
    assert_eq!(total(&summaries, "status_2xx"), 21, "{summaries:?}");
    assert_eq!(total(&summaries, "status_4xx"), 3, "{summaries:?}");
    assert_eq!(total(&summaries, "status_5xx"), 0, "{summaries:?}");
    let slowest = summaries.iter().filter_map(|s| s["latency_max_ms"].as_f64()).fold(0.0, f64::max);
    assert!(slowest >= 900.0, "the wait is the slowest: {summaries:?}");
    for summary in &summaries {
        assert!(summary["latency_p50_ms"].as_f64().is_some() && summary["latency_p99_ms"].as_f64().is_some());
    }

    let lines = logs.lines();
    let own = with_message(&lines, "request served");
    assert_eq!(own.len(), 1, "only the slow request has a line of its own: {own:?}");
    assert_eq!(own[0]["http.route"], "/workflows", "{own:?}");
    assert_eq!(own[0]["http.response.status_code"], 202, "{own:?}");
    assert_eq!(own[0]["slow"], true, "{own:?}");
    assert!(own[0]["request_id"].as_str().is_some_and(|id| !id.is_empty()), "{own:?}");
    assert!(with_message(&lines, "event published").is_empty(), "at DEBUG unless the access log is `all`");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_access_log_mode_writes_what_it_says() {
    let env = TestEnv::new().await;
    let logs = Captured::default();
    let _traces = telemetry::init_tracing_with(&env.config, "automation-api", &Export::Off, true, logs.clone());
    // No broker: readiness answers 503, a server error.
    let mut config = env.config.clone();
    config.amqp.url =
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", automation_shared::testing::private_rabbitmq::free_port());
    for mode in [AccessLog::Summary, AccessLog::Errors, AccessLog::All, AccessLog::Off] {
        config.api.access_log = mode;
        let api = TestApi::start_unready(&config).await;
        logs.clear();
        for (path, status) in [("/health", 200), ("/no-such-route", 404), ("/health/ready", 503)] {
            assert_eq!(api.client.get(api.url(path)).send().await.expect("answer").status(), status, "{path}");
        }
        // The stop writes the last interval's summary.
        api.stop().await;
        let lines = logs.lines();
        let statuses: Vec<u64> = with_message(&lines, "request served")
            .iter()
            .filter_map(|l| l["http.response.status_code"].as_u64())
            .collect();
        let summaries = with_message(&lines, "requests served");
        match mode {
            AccessLog::Summary => {
                assert_eq!(statuses, [503], "{mode:?}: a line for the 5xx only");
                assert_eq!(total(&summaries, "requests"), 3, "{summaries:?}");
                assert_eq!(
                    ["status_2xx", "status_4xx", "status_5xx"].map(|f| total(&summaries, f)),
                    [1, 1, 1],
                    "{summaries:?}"
                );
            }
            AccessLog::Errors => {
                assert_eq!(statuses, [404, 503], "{mode:?}");
                assert!(summaries.is_empty(), "{mode:?}: {summaries:?}");
            }
            AccessLog::All => {
                assert_eq!(statuses, [200, 404, 503], "{mode:?}");
                assert!(summaries.is_empty(), "{mode:?}: {summaries:?}");
                let line = &with_message(&lines, "request served")[0];
                assert_eq!(line["path"], "/health", "{line}");
                assert!(line["latency_ms"].as_f64().is_some(), "{line}");
            }
            AccessLog::Off => {
                assert!(statuses.is_empty() && summaries.is_empty(), "{mode:?}: {lines:?}");
            }
        }
    }
}
