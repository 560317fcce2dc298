//! Two workers writing through two different Galera nodes at once, on the same entities, in the
//! competing layout (both take from one queue, so two events on one workflow are applied at the
//! same moment on two nodes): certification conflicts on purpose. Every event is also published
//! twice, the copies in opposite orders, so both workers race to insert the same inbox key on two
//! nodes. Nothing may be lost, applied twice, or lose an update: each workflow's version grows by
//! exactly the status changes that were applied.

use std::time::{Duration, Instant};

use automation_shared::config::Ordering;
use automation_shared::testing::TestEnv;
use automation_shared::testing::galera::GaleraCluster;
use serde_json::json;

use crate::support::{Tally, WorkerProcess, load_event, publish_audits};

const WORKFLOWS: usize = 8;
const EVENTS: usize = 6000;
const STATUS_CHANGES: usize = 960;

/// Certification failures and brute-force aborts node `n` counted.
async fn conflicts_on(cluster: &GaleraCluster, n: usize) -> i64 {
    let Ok(pool) = sqlx::mysql::MySqlPoolOptions::new().max_connections(1).connect(&cluster.node_url(n)).await else {
        return 0;
    };
    let values: Vec<String> = sqlx::query_scalar(
        "select variable_value from information_schema.global_status \
         where variable_name in ('WSREP_LOCAL_CERT_FAILURES', 'WSREP_LOCAL_BF_ABORTS')",
    )
    .fetch_all(&pool)
    .await
    .unwrap_or_default();
    pool.close().await;
    values.iter().filter_map(|v| v.parse::<i64>().ok()).sum()
}

fn structured(id: &str, event_type: &str, data: serde_json::Value) -> serde_json::Value {
    json!({"specversion": "1.0", "id": id, "source": "/drill", "type": event_type, "data": data})
}

#[tokio::test]
async fn two_workers_through_two_galera_nodes_conflict_on_purpose_and_apply_everything_once() {
    let cluster = GaleraCluster::start().await;
    let mut env = TestEnv::on(&cluster.proxy_url(), &automation_shared::testing::amqp_url()).await;
    env.config.worker.ordering = Ordering::Competing;
    let through = |n: usize| format!("{}/{}", cluster.node_url(n), env.database);
    let (url_a, url_b) = (through(0), through(1));
    let a = WorkerProcess::start(&env.config, &[("DATABASE_URL", url_a.as_str())]);
    let b = WorkerProcess::start(&env.config, &[("DATABASE_URL", url_b.as_str())]);
    a.wait_ready().await;
    b.wait_ready().await;

    let workflows: Vec<uuid::Uuid> = (0..WORKFLOWS).map(|_| uuid::Uuid::new_v4()).collect();
    for (i, workflow) in workflows.iter().enumerate() {
        let id = format!("create-{i}");
        env.publish_structured(&structured(
            &id,
            "workflow.created",
            json!({"workflowId": workflow, "name": format!("w{i}")}),
        ))
        .await;
        env.wait_processed(&id).await;
    }
    let mut created_versions = Vec::new();
    for workflow in &workflows {
        let version: i64 = sqlx::query_scalar("select cast(version as signed) from workflows where id = ?")
            .bind(workflow.to_string())
            .fetch_one(&env.pool)
            .await
            .expect("version");
        created_versions.push(version);
    }
    let conflicts_before = conflicts_on(&cluster, 0).await + conflicts_on(&cluster, 1).await;

    let started = Instant::now();
    let exchange = env.names().events();
    let mut confirmed = 0;
    let mut status_sent = 0;
    for start in (0..EVENTS).step_by(250) {
        let chunk: Vec<(String, Vec<u8>)> = (start..(start + 250).min(EVENTS)).map(load_event).collect();
        let mut reversed = chunk.clone();
        reversed.reverse();
        let first = publish_audits(&env, &exchange, &chunk).await;
        let second = publish_audits(&env, &exchange, &reversed).await;
        if first || second {
            confirmed += chunk.len();
        }
        // Status changes on the same few workflows, in between.
        for _ in 0..STATUS_CHANGES * 250 / EVENTS {
            let workflow = workflows[status_sent % WORKFLOWS];
            let status = if (status_sent / WORKFLOWS).is_multiple_of(2) { "ACTIVE" } else { "PAUSED" };
            let id = format!("status-{status_sent}");
            env.publish_structured(&structured(
                &id,
                "workflow.status_changed",
                json!({"workflowId": workflow, "status": status}),
            ))
            .await;
            status_sent += 1;
        }
    }

    let settled = env
        .wait_count(
            "select count(*) from inbox where event_id like 'status-%'",
            status_sent as i64,
            Duration::from_secs(180),
        )
        .await;
    let applied = env
        .wait_count(
            "select count(distinct entity_id) from audit_log where entity = 'chaos'",
            confirmed as i64,
            Duration::from_secs(180),
        )
        .await;
    let took = started.elapsed();
    let conflicts = conflicts_on(&cluster, 0).await + conflicts_on(&cluster, 1).await - conflicts_before;

    // No lost update: each workflow's version grew by exactly the status changes applied to it.
    let mut lost_updates = Vec::new();
    for (workflow, created) in workflows.iter().zip(&created_versions) {
        let version: i64 = sqlx::query_scalar("select cast(version as signed) from workflows where id = ?")
            .bind(workflow.to_string())
            .fetch_one(&env.pool)
            .await
            .expect("version");
        let changes: i64 = sqlx::query_scalar(
            "select count(*) from audit_log where entity = 'workflow' and entity_id = ? and action = 'workflow.status_changed'",
        )
        .bind(workflow.to_string())
        .fetch_one(&env.pool)
        .await
        .expect("changes");
        if version - created != changes {
            lost_updates.push(format!("{workflow}: version +{} but {changes} changes applied", version - created));
        }
    }
    let status_applied =
        env.count("select count(*) from inbox where event_id like 'status-%' and outcome = 'applied'").await;
    let status_audited = env
        .count("select count(*) from audit_log where entity = 'workflow' and action = 'workflow.status_changed'")
        .await;
    let attempts = env.count("select count(*) from event_attempts").await;
    let tally = Tally::measure(&env, "two workers through two galera nodes", EVENTS, confirmed)
        .await
        .note(format!("copies-each=2 status-changes={status_sent} settled={settled} applied={status_applied}"))
        .note(format!("certification-conflicts={conflicts} attempts-spent={attempts} took={:.1}s", took.as_secs_f64()));
    assert_eq!(applied as usize, confirmed, "{tally}\n{}\n{}", a.log_tail(), b.log_tail());
    assert_eq!(settled as usize, status_sent, "every status change settled once: {tally}");
    assert_eq!(status_applied, status_audited, "every applied status change audited once: {tally}");
    assert!(lost_updates.is_empty(), "lost updates: {lost_updates:?} {tally}");
    assert!(conflicts > 0, "the scenario made no certification conflict: {tally}");
    assert_eq!(tally.dead_lettered, 0, "{tally}");
    assert_eq!(attempts, 0, "certification conflicts spend no attempt: {tally}");
    tally.check();
}
