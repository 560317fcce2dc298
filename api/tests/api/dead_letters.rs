//! The dead-letter store through the admin API.

use std::time::Duration;

use automation_api::auth::Role;
use automation_shared::testing::TestEnv;
use reqwest::Method;
use serde_json::json;

use crate::support::{TestApi, TestWorker, json};

#[tokio::test]
async fn an_admin_lists_shows_and_replays_a_dead_letter_after_its_cause_is_fixed() {
    let mut env = TestEnv::new().await;
    env.config.worker.max_message_bytes = 4096;
    let strict = TestWorker::start(&env.config).await;
    let api = TestApi::start(&env.config).await;
    let admin = api.user(Role::Admin).await;
    let viewer = api.user(Role::Viewer).await;

    let event = json!({"specversion": "1.0", "id": "big-1", "source": "/tests", "type": "workflow.created",
                       "data": {"workflowId": uuid::Uuid::new_v4(), "name": "Big", "description": "x".repeat(4000)}});
    env.publish_structured(&event).await;
    env.publish("workflow.created", lapin::BasicProperties::default(), b"{broken").await;
    assert_eq!(env.wait_count("select count(*) from dead_letters", 2, Duration::from_secs(20)).await, 2);

    assert_eq!(
        api.request(Method::GET, "/api/v1/admin/dead-letters", &viewer.token).send().await.expect("answer").status(),
        403
    );
    let (status, listed) = json(
        api.request(Method::GET, "/api/v1/admin/dead-letters?reason=too_large", &admin.token)
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    let entry = &listed[0];
    assert_eq!(entry["eventId"], "big-1");
    assert_eq!(entry["errorKind"], "poison");
    let id = entry["id"].as_str().expect("id").to_string();
    let (status, whole) = json(
        api.request(Method::GET, &format!("/api/v1/admin/dead-letters/{id}"), &admin.token)
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!(status, 200);
    assert!(whole["body"].as_str().unwrap_or_default().contains("\"big-1\""));

    // A dry run changes nothing.
    let (status, report) = json(
        api.request(Method::POST, "/api/v1/admin/dead-letters/replay", &admin.token)
            .json(&json!({"all": true, "dryRun": true}))
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!((status, report["matched"].as_u64(), report["done"].as_u64()), (200, Some(2), Some(0)));

    // The cause is fixed: a worker with the default size limit.
    drop(strict);
    env.config.worker.max_message_bytes = 256 * 1024;
    let _worker = TestWorker::start(&env.config).await;
    let (status, report) = json(
        api.request(Method::POST, "/api/v1/admin/dead-letters/replay", &admin.token)
            .json(&json!({"ids": [id]}))
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!((status, report["done"].as_u64()), (200, Some(1)), "{report}");
    assert_eq!(env.wait_processed("big-1").await, "applied");
    assert_eq!(env.count("select count(*) from workflows where name = 'Big'").await, 1);
    assert_eq!(
        env.count_bound(
            "select count(*) from audit_log where action = 'dead_letter.replayed' and actor_id = ?",
            &admin.id
        )
        .await,
        1
    );

    // The broken one can only be discarded.
    let (status, report) = json(
        api.request(Method::POST, "/api/v1/admin/dead-letters/discard", &admin.token)
            .json(&json!({"filter": {"reason": "invalid_json"}}))
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!((status, report["done"].as_u64()), (200, Some(1)));
    let (status, problem) = json(
        api.request(Method::POST, "/api/v1/admin/dead-letters/discard", &admin.token)
            .json(&json!({}))
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!(status, 422, "a selection is required: {problem}");
}

/// Found by `make fuzz-api`: a non-ASCII filter on an ASCII column was a database error (500).
#[tokio::test]
async fn filters_that_cannot_be_used_as_written_are_422_naming_the_field() {
    let env = TestEnv::new().await;
    let api = TestApi::start(&env.config).await;
    let admin = api.user(Role::Admin).await;
    let cases = [
        ("/api/v1/admin/dead-letters?errorKind=%C3%86", "errorKind"),
        ("/api/v1/admin/dead-letters?state=buried", "state"),
        ("/api/v1/admin/dead-letters?type=approval.d%C3%A9cided", "type"),
        ("/api/v1/admin/dead-letters?originQueue=%F0%9F%90%87", "originQueue"),
        ("/api/v1/automation/runs?automation=webhook.c%C3%A0ll", "automation"),
    ];
    for (path, field) in cases {
        let (status, problem) = json(api.request(Method::GET, path, &admin.token).send().await.expect("answer")).await;
        assert_eq!((status, problem["errors"][0]["field"].as_str()), (422, Some(field)), "{path}: {problem}");
    }
    let (status, problem) = json(
        api.request(Method::POST, "/api/v1/admin/dead-letters/replay", &admin.token)
            .json(&json!({"filter": {"errorKind": "pöison"}, "dryRun": true}))
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!((status, problem["errors"][0]["field"].as_str()), (422, Some("filter.errorKind")), "{problem}");
    let (status, _) = json(
        api.request(Method::GET, "/api/v1/admin/dead-letters?errorKind=delivery_limit&state=replayed", &admin.token)
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!(status, 200, "valid filters still answer");
}
