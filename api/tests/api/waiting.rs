//! `Prefer: wait` on several API processes: each is woken through a reply queue of its own that
//! is bound to no exchange, so it receives only the notifications its requests wait for.

use std::process::{Command, Stdio};

use automation_api::auth::Role;
use automation_shared::testing::TestEnv;
use reqwest::Method;
use serde_json::json;

use crate::support::{TestApi, TestWorker, json};

/// The exchanges a queue is bound to (`""` is the default exchange every queue is on).
fn sources_bound_to(queue: &str) -> Vec<String> {
    let output = Command::new("rabbitmqctl")
        .args(["list_bindings", "-q", "--no-table-headers", "source_name", "destination_name"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("rabbitmqctl runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let mut columns = line.split('\t');
            let (source, destination) = (columns.next()?, columns.next()?);
            (destination == queue).then(|| source.to_string())
        })
        .collect()
}

#[tokio::test]
async fn requests_waiting_on_two_api_processes_are_each_woken_through_their_own_unbound_queue() {
    let env = TestEnv::new().await;
    let _worker = TestWorker::start(&env.config).await;
    let tap = env.notifications().await;
    let first = TestApi::start(&env.config).await;
    let second = TestApi::start(&env.config).await;
    let queues: Vec<String> = [&first, &second]
        .map(|api| api.state.broker.publisher_and_reply_queue().expect("connected").1.to_string())
        .to_vec();
    assert_ne!(queues[0], queues[1]);
    for queue in &queues {
        assert!(env.names().is_api_reply_queue(queue), "{queue}");
        assert_eq!(sources_bound_to(queue), [""], "{queue} is on no exchange but the default one");
    }

    let admin = first.user(Role::Admin).await;
    let mut created = Vec::new();
    for (api, name) in [(&first, "Purchases"), (&second, "Travel"), (&first, "Hiring")] {
        let r = api
            .request(Method::POST, "/workflows", &admin.token)
            .header("prefer", "wait=10")
            .json(&json!({"name": name}))
            .send()
            .await
            .expect("answer");
        let (status, workflow) = json(r).await;
        assert_eq!(status, 200, "{workflow}");
        assert_eq!(workflow["name"], name);
        created.push(workflow["id"].as_str().expect("id").to_string());
    }
    // The worker's refusal reaches the waiting process too (an active workflow is never a draft again).
    let (status, problem) = json(
        second
            .request(Method::PATCH, &format!("/workflows/{}", created[0]), &admin.token)
            .header("prefer", "wait=10")
            .json(&json!({"status": "DRAFT"}))
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(problem["code"], "invalid_transition", "{problem}");
    tap.settle().await;
    let announced = tap.all();
    assert_eq!(announced.len(), 4, "one notification per event on the exchange, as before: {announced:?}");
    first.stop().await;
    second.stop().await;
}
