//! Copies of notifications for a request that waits (`Prefer: wait`): the API names its reply
//! queue as `reply_to`, and the worker sends that event's notifications there too, through the
//! default exchange. Only to an API reply queue of this prefix, only for the system's own
//! events; the notifications exchange gets exactly what it got before.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use automation_shared::messaging::{self, SystemUsers};
use automation_shared::testing::TestEnv;
use futures_util::StreamExt;
use lapin::BasicProperties;
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::{TestWorker, event};

/// A queue the test declares and reads, as an API process does its reply queue.
struct Inbox {
    name: String,
    received: Arc<Mutex<Vec<Value>>>,
}

impl Inbox {
    async fn declare(env: &TestEnv, name: String) -> Inbox {
        let channel = env.connection.create_channel().await.expect("channel");
        channel
            .queue_declare(
                name.clone().into(),
                QueueDeclareOptions { exclusive: true, auto_delete: true, ..QueueDeclareOptions::default() },
                FieldTable::default(),
            )
            .await
            .expect("queue");
        let mut consumer = channel
            .basic_consume(
                name.clone().into(),
                "inbox".into(),
                BasicConsumeOptions { no_ack: true, ..BasicConsumeOptions::default() },
                FieldTable::default(),
            )
            .await
            .expect("consume");
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        tokio::spawn(async move {
            let _channel = channel;
            while let Some(Ok(delivery)) = consumer.next().await {
                sink.lock().expect("lock").push(serde_json::from_slice(&delivery.data).unwrap_or(Value::Null));
            }
        });
        Inbox { name, received }
    }

    fn all(&self) -> Vec<Value> {
        self.received.lock().expect("lock").clone()
    }
}

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
    let waiting = Inbox::declare(&env, names.api_reply_queue()).await;
    let idle = Inbox::declare(&env, names.api_reply_queue()).await;

    let waited = publish(&env, as_the_api(&env, Some(&waiting.name)), &workflow("waited for")).await;
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
    let plain_queue = Inbox::declare(&env, format!("{prefix}.victim")).await;
    let other_prefix = Inbox::declare(&env, format!("other{prefix}.api.{}", Uuid::new_v4().simple())).await;
    let reply_queue = Inbox::declare(&env, names.api_reply_queue()).await;

    let commands = names.work_queue(automation_shared::events::WorkQueue::Commands);
    let mut sent = Vec::new();
    // The system's own events, naming queues that are not API reply queues of this prefix.
    for target in [commands.as_str(), plain_queue.name.as_str(), other_prefix.name.as_str()] {
        sent.push(publish(&env, as_the_api(&env, Some(target)), &workflow(&format!("reply to {target}"))).await);
    }
    // An outside publisher (no user_id the broker vouches for as ours) naming a real one.
    sent.push(publish(&env, structured().with_reply_to(reply_queue.name.clone().into()), &workflow("outsider")).await);
    for id in &sent {
        assert_eq!(env.wait_processed(id).await, "applied");
        tap.wait_caused_by(id).await;
    }
    tap.settle().await;

    for queue in [&plain_queue, &other_prefix, &reply_queue] {
        assert!(queue.all().is_empty(), "{} got {:?}", queue.name, queue.all());
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
