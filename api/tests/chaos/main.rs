//! The fault suite's API scenario (`make chaos`): RabbitMQ restarted while clients write. Every
//! 202 must be applied exactly once; while the broker is away the answer is 503, never a 202.

#![expect(clippy::expect_used, reason = "test support: a failed set-up stops the test with its message")]

#[path = "../api/support.rs"]
#[allow(dead_code, reason = "shared with the api tests; this scenario uses part of it")]
mod support;

use std::collections::HashMap;
use std::time::Duration;

use automation_api::auth::Role;
use automation_shared::testing::TestEnv;
use automation_shared::testing::private_rabbitmq::PrivateRabbitMq;
use reqwest::Method;
use serde_json::json;
use support::{TestApi, TestWorker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_restarted_while_the_api_publishes_gives_503_never_an_unconfirmed_202() {
    let mut rabbit = PrivateRabbitMq::start().await;
    let env = TestEnv::on_broker(&rabbit.url()).await;
    let worker = TestWorker::start(&env.config).await;
    let api = TestApi::start(&env.config).await;
    let service = api.user(Role::Service).await;

    let writing = tokio::time::Duration::from_secs(14);
    let started = tokio::time::Instant::now();
    let clients = (0..4).map(|client| {
        let (api, token) = (&api, service.token.clone());
        async move {
            let mut outcomes = Vec::new();
            let mut n = 0;
            while started.elapsed() < writing {
                let entity_id = format!("api-{client}-{n}");
                n += 1;
                let response = api
                    .request(Method::POST, "/auditLogs", &token)
                    .json(&json!({"entity": "chaos", "entityId": entity_id, "action": "hit"}))
                    .send()
                    .await;
                let status = response.as_ref().map(|r| r.status().as_u16()).unwrap_or(0);
                outcomes.push((entity_id, status));
                if status != 202 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            outcomes
        }
    });
    let restart = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        rabbit.stop().await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        rabbit.restart().await;
    };
    let (outcomes, ()) = tokio::join!(futures_util::future::join_all(clients), restart);
    let outcomes: Vec<(String, u16)> = outcomes.into_iter().flatten().collect();
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    for (_, status) in &outcomes {
        *statuses.entry(*status).or_default() += 1;
    }
    let accepted: Vec<&String> = outcomes.iter().filter(|(_, s)| *s == 202).map(|(e, _)| e).collect();
    let refused = statuses.get(&503).copied().unwrap_or(0);
    let other: usize = statuses.iter().filter(|(s, _)| **s != 202 && **s != 503).map(|(_, n)| n).sum();

    env.wait_count("select count(*) from inbox", accepted.len() as i64, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rows: Vec<(String, i64)> =
        sqlx::query_as("select entity_id, count(*) from audit_log where entity = 'chaos' group by entity_id")
            .fetch_all(&env.pool)
            .await
            .expect("rows");
    let applied: HashMap<String, i64> = rows.into_iter().collect();
    let lost = accepted.iter().filter(|e| !applied.contains_key(e.as_str())).count();
    let duplicated: i64 = applied.values().map(|n| n - 1).sum();
    let applied_despite_503 = outcomes.iter().filter(|(e, s)| *s == 503 && applied.contains_key(e)).count();
    println!(
        "TALLY rabbitmq restarted while the API writes   sent={} confirmed={} applied={} duplicated={duplicated} lost={lost} \
         dead-lettered={} answered-503={refused} other={other} applied-despite-503={applied_despite_503}",
        outcomes.len(),
        accepted.len(),
        accepted.len() - lost,
        env.count("select count(*) from dead_letters").await,
    );
    assert!(refused > 0, "the restart was noticed: {statuses:?}");
    assert_eq!(other, 0, "only 202 or 503: {statuses:?}");
    assert_eq!(lost, 0, "every 202 is applied");
    assert_eq!(duplicated, 0, "nothing is applied twice");
    api.stop().await;
    worker.stop().await;
}
