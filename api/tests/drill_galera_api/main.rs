//! The API on a 3-node Galera cluster behind HAProxy (part of `make drill-galera`): the node
//! HAProxy sends it to is SIGKILLed while requests flow. Every answer is a 2xx or a `503` with
//! `Retry-After` (never a 500: a failover is not a bug), reads answer again by themselves, and
//! every write answered 202 is applied once by the worker beside it.

#![expect(clippy::expect_used, reason = "test support: a failed set-up stops the test with its message")]

#[path = "../api/support.rs"]
#[allow(dead_code, reason = "the API tests' helpers; the drill uses some of them")]
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use automation_api::auth::Role;
use automation_shared::testing::TestEnv;
use automation_shared::testing::galera::GaleraCluster;
use reqwest::Method;
use serde_json::json;
use sqlx::mysql::MySqlPoolOptions;

use crate::support::{TestApi, TestWorker};

#[tokio::test]
async fn the_api_answers_2xx_or_503_while_its_galera_node_is_killed_and_recovers_by_itself() {
    let mut cluster = GaleraCluster::start().await;
    let mut env = TestEnv::on(&cluster.proxy_url(), &automation_shared::testing::amqp_url()).await;
    let api = TestApi::start(&env.config).await;
    let worker = TestWorker::start(&env.config).await;
    let service = api.user(Role::Service).await;

    let mut answers: BTreeMap<(&str, u16), usize> = BTreeMap::new();
    let mut accepted = 0usize;
    let mut killed: Option<Instant> = None;
    let mut unavailable_after_kill = false;
    let mut reads_back: Option<Duration> = None;
    let started = Instant::now();
    let mut i = 0;
    while killed.is_none_or(|at| reads_back.is_none() || at.elapsed() < Duration::from_secs(8)) {
        assert!(started.elapsed() < Duration::from_secs(120), "reads did not come back within 120 s: {answers:?}");
        let write = api
            .request(Method::POST, "/auditLogs", &service.token)
            .json(&json!({"entity": "galera-api", "entityId": format!("e-{i}"), "action": "hit"}))
            .send()
            .await
            .expect("the API answers");
        let write_status = write.status().as_u16();
        if write_status == 202 {
            accepted += 1;
        }
        let read = api
            .request(Method::GET, "/auditLogs?entity=galera-api&entityId=e-0", &service.token)
            .send()
            .await
            .expect("the API answers");
        let read_status = read.status().as_u16();
        let retry_after = read.headers().get("retry-after").is_some();
        let body = read.text().await.unwrap_or_default();
        *answers.entry(("write", write_status)).or_default() += 1;
        *answers.entry(("read", read_status)).or_default() += 1;
        assert!(matches!(write_status, 202 | 503), "a write answered {write_status}");
        assert!(matches!(read_status, 200 | 503), "a read answered {read_status}: {body}");
        if read_status == 503 {
            assert!(retry_after, "a 503 says when to come back: {body}");
        }
        match killed {
            None if started.elapsed() > Duration::from_secs(2) => {
                cluster.kill(0);
                killed = Some(Instant::now());
            }
            Some(at) => {
                unavailable_after_kill |= read_status == 503;
                if read_status == 200 && reads_back.is_none() && at.elapsed() > Duration::from_millis(100) {
                    reads_back = Some(at.elapsed());
                }
            }
            None => {}
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let url = env.config.database.url.clone().expect("url");
    env.pool = MySqlPoolOptions::new().max_connections(2).connect(&url).await.expect("the proxy answers");
    let applied = env
        .wait_count(
            "select count(distinct entity_id) from audit_log where entity = 'galera-api'",
            accepted as i64,
            Duration::from_secs(60),
        )
        .await as usize;
    let records = env.count("select count(*) from audit_log where entity = 'galera-api'").await as usize;
    let reads_back = reads_back.expect("reads came back");
    println!(
        "TALLY api on galera, its node killed          writes={i} accepted={accepted} applied={applied} duplicated={} \
         answers={answers:?} 503-after-kill={unavailable_after_kill} reads-back-after={:.1}s",
        records - applied,
        reads_back.as_secs_f64()
    );
    assert_eq!(applied, accepted, "every 202 applied");
    assert_eq!(records, applied, "none twice");
    worker.stop().await;
    api.stop().await;
}
