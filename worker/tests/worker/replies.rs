//! Copies of notifications for a request that waits (`Prefer: wait`): the API names its reply
//! queue as `reply_to`, and the worker sends that event's notifications there too, through the
//! default exchange. Only to an API reply queue of this prefix, only for the system's own
//! events; the notifications exchange gets exactly what it got before.

use std::time::Duration;

use automation_shared::messaging::{self, SystemUsers};
use automation_shared::testing::{NotificationTap, TestEnv};
use lapin::BasicProperties;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::{TestWorker, event};

fn structured() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/cloudevents+json".into())
        .with_delivery_mode(messaging::PERSISTENT)
}

/// The properties the API publishes with: the system's own (`user_id`), and `reply_to` when a
/// request waits.
fn as_the_api(env: &TestEnv, reply_to: Option<&str>) -> BasicProperties {
    let properties = structured().with_user_id(SystemUsers::of(&env.config.amqp).own().to_string().into());
    match reply_to {
        Some(queue) => properties.with_reply_to(queue.into()),
        None => properties,
    }
}

fn workflow(name: &str) -> Value {
    event("workflow.created", json!({"workflowId": Uuid::new_v4(), "name": name}))
}

async fn publish(env: &TestEnv, properties: BasicProperties, event: &Value) -> String {
    env.publish("workflow.created", properties, event.to_string().as_bytes()).await;
    event["id"].as_str().expect("id").to_string()
}

#[tokio::test]
async fn a_waiting_requests_event_is_announced_to_its_reply_queue_and_to_the_exchange_only_once() {
    let env = TestEnv::new().await;
    let _worker = TestWorker::start(&env.config).await;
    let tap = env.notifications().await;
    let names = env.names();
    let waiting = NotificationTap::unbound(&env.connection, names.api_reply_queue()).await;
    let idle = NotificationTap::unbound(&env.connection, names.api_reply_queue()).await;

    let waited = publish(&env, as_the_api(&env, Some(waiting.queue())), &workflow("waited for")).await;
    let not_waited = publish(&env, as_the_api(&env, None), &workflow("not waited for")).await;
    let from_spring = publish(&env, structured(), &workflow("from a Spring service")).await;
    for id in [&waited, &not_waited, &from_spring] {
        assert_eq!(env.wait_processed(id).await, "applied");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while waiting.all().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no copy reached the waiting queue");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in [&waited, &not_waited, &from_spring] {
        tap.wait_caused_by(id).await;
    }
    tap.settle().await;

    let copies = waiting.all();
    assert_eq!(copies.len(), 1, "the waited-for event's notification only: {copies:?}");
    assert_eq!(copies[0]["causationid"], waited.as_str());
    assert_eq!(copies[0]["type"], "workflow.created");
    assert_eq!(copies[0], tap.caused_by(&waited)[0], "the same CloudEvent as on the exchange");
    assert!(idle.all().is_empty(), "a queue nobody named gets nothing: {:?}", idle.all());
    for id in [&waited, &not_waited, &from_spring] {
        assert_eq!(tap.caused_by(id).len(), 1, "exactly one notification on the exchange for {id}");
    }
}

#[tokio::test]
async fn no_publisher_can_have_the_worker_send_copies_anywhere_but_an_api_reply_queue() {
    let env = TestEnv::new().await;
    let _worker = TestWorker::start(&env.config).await;
    let tap = env.notifications().await;
    let names = env.names();
    let prefix = names.prefix().to_string();
    let plain_queue = NotificationTap::unbound(&env.connection, format!("{prefix}.victim")).await;
    let other_prefix =
        NotificationTap::unbound(&env.connection, format!("other{prefix}.api.{}", Uuid::new_v4().simple())).await;
    let reply_queue = NotificationTap::unbound(&env.connection, names.api_reply_queue()).await;

    let commands = names.work_queue(automation_shared::events::WorkQueue::Commands);
    let mut sent = Vec::new();
    // The system's own events, naming queues that are not API reply queues of this prefix.
    for target in [commands.as_str(), plain_queue.queue(), other_prefix.queue()] {
        sent.push(publish(&env, as_the_api(&env, Some(target)), &workflow(&format!("reply to {target}"))).await);
    }
    // An outside publisher (no user_id the broker vouches for as ours) naming a real one.
    sent.push(publish(&env, structured().with_reply_to(reply_queue.queue().into()), &workflow("outsider")).await);
    for id in &sent {
        assert_eq!(env.wait_processed(id).await, "applied");
        tap.wait_caused_by(id).await;
    }
    tap.settle().await;

    for queue in [&plain_queue, &other_prefix, &reply_queue] {
        assert!(queue.all().is_empty(), "{} got {:?}", queue.queue(), queue.all());
    }
    // A copy in the commands queue would have been taken as a new workflow.created.
    let workflows: i64 =
        sqlx::query_scalar("select count(*) from workflows").fetch_one(&env.pool).await.expect("count");
    assert_eq!(workflows, sent.len() as i64, "nothing but the events sent was applied");
    let inbox: i64 = sqlx::query_scalar("select count(*) from inbox").fetch_one(&env.pool).await.expect("count");
    assert_eq!(inbox, sent.len() as i64, "nothing else reached the worker");
    for id in &sent {
        assert_eq!(tap.caused_by(id).len(), 1, "announced on the exchange as ever");
    }
}
