//! The official CloudEvents SDK (Python `cloudevents` 2.x) as the client: an event made with it
//! in every binding and content mode (RabbitMQ and AMQP bindings over pika, binary and structured;
//! HTTP binary, structured and batched) is applied, and the notifications about them are read back
//! with the same SDK. The client is `scripts/cloudevents-sdk/client.py`; its interpreter is
//! installed by `scripts/cloudevents-sdk/install.sh` (`make deps`), which this test also runs.

use std::path::PathBuf;

use automation_api::auth::Role;
use automation_shared::testing::TestEnv;
use serde_json::Value;

use crate::support::{TestApi, TestWorker};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[tokio::test]
async fn events_made_with_the_cloudevents_sdk_are_applied_in_every_binding_and_mode() {
    let install = tokio::process::Command::new(root().join("scripts/cloudevents-sdk/install.sh"))
        .status()
        .await
        .expect("the installer runs");
    assert!(install.success(), "scripts/cloudevents-sdk/install.sh failed: the SDK comes from PyPI");
    let env = TestEnv::new().await;
    let worker = TestWorker::start(&env.config).await;
    let api = TestApi::start(&env.config).await;
    let admin = api.user(Role::Admin).await;

    let output = tokio::process::Command::new(root().join(".local/cloudevents-sdk/venv/bin/python3"))
        .arg(root().join("scripts/cloudevents-sdk/client.py"))
        .env("AMQP_URL", &env.config.amqp.url)
        .env("EVENTS_EXCHANGE", env.names().events())
        .env("NOTIFICATIONS_EXCHANGE", env.names().notifications())
        .env("API_URL", &api.base)
        .env("TOKEN", &admin.token)
        .env("WAIT_SECONDS", "60")
        .output()
        .await
        .expect("the SDK client runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("the client prints a JSON report ({e}); stderr:\n{stderr}"));
    assert!(output.status.success(), "the SDK client failed: {:#}\n{stderr}", report["failures"]);

    let sent = report["sent"].as_array().expect("sent");
    let modes: Vec<&str> = sent.iter().filter_map(|s| s["mode"].as_str()).collect();
    for mode in [
        "rabbitmq-binary",
        "rabbitmq-structured",
        "amqp-binary",
        "amqp-structured",
        "http-binary",
        "http-structured",
        "http-batch",
    ] {
        assert!(modes.contains(&mode), "{mode} was sent: {modes:?}");
    }
    for event in sent {
        let (mode, workflow) =
            (event["mode"].as_str().unwrap_or_default(), event["workflowId"].as_str().unwrap_or_default());
        let name: Option<String> = sqlx::query_scalar("select name from workflows where id = ?")
            .bind(workflow)
            .fetch_optional(&env.pool)
            .await
            .expect("workflow query");
        assert_eq!(
            name.as_deref(),
            Some(format!("made with the CloudEvents SDK ({mode})").as_str()),
            "the {mode} event created its workflow"
        );
    }
    let notifications = report["notifications"].as_array().expect("notifications");
    assert_eq!(notifications.len(), sent.len(), "the SDK read a notification about each event: {notifications:?}");
    assert!(
        notifications.iter().all(|n| n["type"] == "workflow.created" && n["time"].is_string()),
        "each announced as created, none refused: {notifications:?}"
    );
    assert_eq!(env.count("select count(*) from dead_letters").await, 0, "nothing was refused as unreadable");
    api.stop().await;
    worker.stop().await;
}

/// The HTTP binding's modes, sent wrong: each answer is a 422 naming what is wrong (the header
/// in binary mode).
#[tokio::test]
async fn binding_mistakes_are_answered_422_naming_the_header_or_field() {
    let env = TestEnv::new().await;
    let api = TestApi::start(&env.config).await;
    let admin = api.user(Role::Admin).await;
    let data = serde_json::json!({"workflowId": uuid::Uuid::new_v4(), "name": "binding"});
    let post = || api.request(reqwest::Method::POST, "/api/v1/events", &admin.token);
    let field_of = |body: &Value| body["errors"][0]["field"].as_str().unwrap_or_default().to_string();

    // A binary-mode request with these `ce-*` headers (besides ce-specversion and ce-type).
    let binary = |headers: &[(&'static str, &'static str)]| {
        let mut request = post().header("ce-specversion", "1.0").header("ce-type", "workflow.created");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.json(&data).send()
    };

    // Binary mode without ce-id.
    let r = binary(&[("ce-source", "/spring/orders")]).await.expect("answer");
    let (status, body) = crate::support::json(r).await;
    assert_eq!((status, field_of(&body).as_str()), (422, "ce-id"), "{body}");

    // Broken percent-encoding in a binary header.
    let r = binary(&[("ce-id", "bad%zz"), ("ce-source", "/spring/orders")]).await.expect("answer");
    let (status, body) = crate::support::json(r).await;
    assert_eq!((status, field_of(&body).as_str()), (422, "ce-id"), "{body}");

    // A structured event's media type with an array, a batch's with one object.
    let event = serde_json::json!({"specversion": "1.0", "id": "b-1", "source": "/s", "type": "workflow.created", "data": data});
    for (content_type, body) in [
        ("application/cloudevents+json", serde_json::json!([event])),
        ("application/cloudevents-batch+json", event.clone()),
    ] {
        let r = post().header("content-type", content_type).body(body.to_string()).send().await.expect("answer");
        let (status, answer) = crate::support::json(r).await;
        assert_eq!(status, 422, "{content_type}: {answer}");
    }

    // Percent-encoding is decoded: an id and a source sent encoded are the same event as the
    // same id and source sent plain, so both sends are one event id.
    let send = |id: &'static str, source: &'static str| binary(&[("ce-id", id), ("ce-source", source)]);
    let (status, encoded) =
        crate::support::json(send("order%204711", "%2Fspring%2Forders").await.expect("answer")).await;
    assert_eq!(status, 202, "{encoded}");
    let (status, plain) = crate::support::json(send("order 4711", "/spring/orders").await.expect("answer")).await;
    assert_eq!(status, 202, "{plain}");
    assert_eq!(encoded["eventId"], plain["eventId"], "one event, however its attributes were encoded");
    // Another source's event with that id is another event.
    let (_, other) = crate::support::json(send("order 4711", "/spring/billing").await.expect("answer")).await;
    assert_ne!(other["eventId"], plain["eventId"]);
    api.stop().await;
}
