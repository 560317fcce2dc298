//! The audit log is tamper-evident: `automation-worker audit verify` passes on an untouched log and
//! names every change and removal.

use automation_shared::db::audit;
use automation_shared::testing::TestEnv;
use serde_json::json;

use crate::support::{TestWorker, event};

async fn verify(env: &TestEnv) -> audit::VerifyReport {
    audit::verify(&env.pool, env.config.audit.key.as_deref(), |_| {}).await.expect("verify runs")
}

#[tokio::test]
async fn verify_passes_untouched_and_names_changed_and_removed_records() {
    let mut env = TestEnv::new().await;
    env.config.audit.key = Some("an audit key for the test".into());
    let worker = TestWorker::start(&env.config).await;
    let mut last = String::new();
    for i in 0..12 {
        let e = event(
            "audit.recorded",
            json!({"entity": "invoice", "entityId": format!("inv-{i}"), "action": "exported", "details": {"n": i, "by": "test"}}),
        );
        env.publish_structured(&e).await;
        last = e["id"].as_str().expect("id").to_string();
    }
    env.wait_processed(&last).await;
    worker.stop().await.expect("clean stop");
    assert!(audit::seal(&env.pool, env.config.audit.key.as_deref()).await.expect("seal").is_some());

    let report = verify(&env).await;
    assert!(report.is_intact(), "{:?}", report.problems);
    assert_eq!(report.records, 12);
    assert_eq!(report.seals, 1);

    // The CLI says the same, with its exit status.
    let binary = env!("CARGO_BIN_EXE_automation-worker");
    let run = || {
        std::process::Command::new(binary)
            .args(["audit", "verify", "--json"])
            .env("DATABASE_URL", env.config.database.url.clone().expect("url"))
            .env("AUTOMATION_AUDIT__KEY", "an audit key for the test")
            .output()
            .expect("runs")
    };
    assert!(run().status.success());

    // A changed record.
    sqlx::query("update audit_log set details = '{\"n\":99,\"by\":\"test\"}' where entity_id = 'inv-3'")
        .execute(&env.pool)
        .await
        .expect("tamper");
    let report = verify(&env).await;
    assert!(report.problems.iter().any(|p| p.contains("content was changed")), "{:?}", report.problems);
    let output = run();
    assert!(!output.status.success(), "verify exits non-zero on tampering");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json report");
    assert!(!json["problems"].as_array().expect("problems").is_empty());

    // A record removed from the middle of a chain.
    sqlx::query("delete from audit_log where entity_id = 'inv-6'").execute(&env.pool).await.expect("tamper");
    let report = verify(&env).await;
    assert!(report.problems.iter().any(|p| p.contains("were removed")), "{:?}", report.problems);

    // The newest record removed: only the seal knows it was there.
    sqlx::query("delete from audit_log order by seq desc limit 1").execute(&env.pool).await.expect("tamper");
    let report = verify(&env).await;
    assert!(report.problems.iter().any(|p| p.contains("no longer present")), "{:?}", report.problems);
}
