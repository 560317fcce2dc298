//! Trust at the AMQP door: an outside publisher, with credentials of its own as production gives
//! each service, is held to its routing keys, cannot send what only the system sends, cannot
//! claim to be a rule or anyone else, and no message of its own can break the worker's
//! publishing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use automation_shared::messaging::{self, Outgoing, Publisher, SystemUsers};
use automation_shared::testing::TestEnv;
use automation_shared::testing::publisher_user::PublisherUser;
use lapin::BasicProperties;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::{TestWorker, event};

async fn publisher_of(user: &PublisherUser) -> Publisher {
    let connection =
        messaging::connect_once(&automation_shared::testing::addresses(&user.url), "tests-outside-publisher")
            .await
            .expect("the user connects");
    Publisher::new(Arc::new(connection), Duration::from_secs(5)).await.expect("publisher")
}

fn structured() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/cloudevents+json".into())
        .with_delivery_mode(messaging::PERSISTENT)
}

async fn send(
    publisher: &Publisher,
    env: &TestEnv,
    routing_key: &str,
    properties: BasicProperties,
    body: &Value,
) -> Result<(), messaging::PublishError> {
    let exchange = env.names().events();
    let body = body.to_string();
    publisher
        .publish(Outgoing { exchange: &exchange, routing_key, body: body.as_bytes(), properties, mandatory: false })
        .await
}

async fn dead_letter_reason(env: &TestEnv, event_id: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let reason: Option<String> = sqlx::query_scalar("select reason from dead_letters where event_id = ?")
            .bind(event_id)
            .fetch_optional(&env.pool)
            .await
            .expect("query");
        if let Some(reason) = reason {
            return reason;
        }
        assert!(tokio::time::Instant::now() < deadline, "event {event_id} was never dead-lettered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_publisher_is_held_to_its_routing_keys_and_never_sends_what_only_the_system_sends() {
    let env = TestEnv::new().await;
    let _worker = TestWorker::start(&env.config).await;
    let user = PublisherUser::create(&env.config.amqp.prefix, "^approval\\.");

    // Without user_id, the broker's topic permissions refuse another routing key outright...
    let workflow = event("workflow.created", json!({"workflowId": Uuid::new_v4(), "name": "not yours"}));
    let refused = send(&publisher_of(&user).await, &env, "workflow.created", structured(), &workflow).await;
    assert!(refused.is_err(), "the broker must refuse workflow.created from a publisher held to approval.*");

    // ...and the worker refuses a type smuggled under an allowed routing key.
    let publisher = publisher_of(&user).await;
    send(&publisher, &env, "approval.requested", structured(), &workflow).await.expect("the broker takes it");
    let reason = dead_letter_reason(&env, workflow["id"].as_str().expect("id")).await;
    assert!(reason.starts_with("routing_key_mismatch:"), "{reason}");

    // approval.escalate is the rules' own: no publisher sends it, with or without user_id.
    for properties in [structured(), structured().with_user_id(user.name.clone().into())] {
        let escalate = event(
            "approval.escalate",
            json!({"approvalId": Uuid::new_v4(), "toRole": "admin", "reason": "because I say so"}),
        );
        send(&publisher, &env, "approval.escalate", properties, &escalate).await.expect("the broker takes it");
        let reason = dead_letter_reason(&env, escalate["id"].as_str().expect("id")).await;
        assert!(reason.starts_with("publisher_not_allowed:"), "{reason}");
    }
    assert_eq!(env.count("select count(*) from workflows").await, 0);
}

#[tokio::test]
async fn a_publisher_cannot_claim_to_be_a_rule_or_the_requester() {
    let env = TestEnv::new().await;
    let _worker = TestWorker::start(&env.config).await;
    let user = PublisherUser::create(&env.config.amqp.prefix, ".*");
    let publisher = publisher_of(&user).await;
    let (workflow, approval, requester) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let created = event("workflow.created", json!({"workflowId": workflow, "name": "Purchases"}));
    env.publish_structured(&created).await;
    env.wait_processed(created["id"].as_str().expect("id")).await;
    let requested = event(
        "approval.requested",
        json!({"approvalId": approval, "workflowId": workflow, "title": "mine", "requesterId": requester}),
    );
    env.publish_structured(&requested).await;
    assert_eq!(env.wait_processed(requested["id"].as_str().expect("id")).await, "applied");

    // "A rule decided it, on behalf of the requester": a rule may decide a requester's own
    // request, so the claim would pass segregation of duties if it were believed.
    for properties in [structured(), structured().with_user_id(user.name.clone().into())] {
        let mut forged = event("approval.decided", json!({"approvalId": approval, "status": "APPROVED"}));
        forged["actortype"] = json!("rule");
        forged["actorid"] = json!(requester.to_string());
        send(&publisher, &env, "approval.decided", properties, &forged).await.expect("the broker takes it");
        assert_eq!(env.wait_processed(forged["id"].as_str().expect("id")).await, "rejected");
    }
    let status: String = sqlx::query_scalar("select status from approvals where id = ?")
        .bind(approval.to_string())
        .fetch_one(&env.pool)
        .await
        .expect("approval");
    assert_eq!(status, "PENDING");

    // Claiming to be a user makes it a service acting under that name, as the audit trail says.
    let mut as_user = event("approval.decided", json!({"approvalId": approval, "status": "REJECTED"}));
    as_user["actortype"] = json!("user");
    as_user["actorid"] = json!("an-approver");
    send(&publisher, &env, "approval.decided", structured(), &as_user).await.expect("the broker takes it");
    assert_eq!(env.wait_processed(as_user["id"].as_str().expect("id")).await, "applied");
    let actor: (String, String) =
        sqlx::query_as("select actor_id, actor_type from audit_log where event_id = ? and entity = 'approval'")
            .bind(as_user["id"].as_str().expect("id"))
            .fetch_one(&env.pool)
            .await
            .expect("audit record");
    assert_eq!(actor, ("an-approver".to_string(), "service".to_string()));
}

#[tokio::test]
async fn a_restricted_publisher_with_user_id_is_dead_lettered_and_the_workers_publishing_goes_on() {
    let mut env = TestEnv::new().await;
    let user = PublisherUser::create(&env.config.amqp.prefix, ".*");
    env.config.worker.publishers = BTreeMap::from([(user.name.clone(), vec!["audit.*".to_string()])]);
    let _worker = TestWorker::start(&env.config).await;
    let tap = env.notifications().await;
    let publisher = publisher_of(&user).await;

    // The worker republishes these to the dead-letter exchange (and the allowed one to a retry
    // queue) over its own connection: with the publisher's user_id the broker would close its
    // channel, and from then on nothing the worker publishes would go out.
    let sneaky = event("workflow.created", json!({"name": "sneaky"}));
    let broken = event("audit.recorded", json!({"entity": "", "entityId": "1", "action": "x"}));
    let allowed = event("audit.recorded", json!({"entity": "approval", "entityId": "1", "action": "noted"}));
    for (key, body) in [("workflow.created", &sneaky), ("audit.recorded", &broken)] {
        send(&publisher, &env, key, structured().with_user_id(user.name.clone().into()), body)
            .await
            .expect("the broker takes it");
    }
    let reason = dead_letter_reason(&env, sneaky["id"].as_str().expect("id")).await;
    assert!(reason.starts_with("publisher_not_allowed:"), "{reason}");
    let reason = dead_letter_reason(&env, broken["id"].as_str().expect("id")).await;
    assert!(reason.starts_with("schema_invalid:"), "{reason}");
    send(&publisher, &env, "audit.recorded", structured().with_user_id(user.name.clone().into()), &allowed)
        .await
        .expect("the broker takes it");
    assert_eq!(env.wait_processed(allowed["id"].as_str().expect("id")).await, "applied");

    // The worker still announces what it applies: its publishing channel is whole.
    for i in 0..3 {
        let good = event("workflow.created", json!({"workflowId": Uuid::new_v4(), "name": format!("after {i}")}));
        env.publish_structured(&good).await;
        let id = good["id"].as_str().expect("id");
        assert_eq!(env.wait_processed(id).await, "applied");
        let notification = tap.wait_caused_by(id).await;
        assert_eq!(notification["type"], "workflow.created");
    }
    // The stored copies are the publisher's still: replayed, they would be held to its types.
    let stored: Value = sqlx::query_scalar("select properties from dead_letters where event_id = ?")
        .bind(sneaky["id"].as_str().expect("id"))
        .fetch_one(&env.pool)
        .await
        .map(|p: sqlx::types::Json<Value>| p.0)
        .expect("stored");
    assert_eq!(stored["headers"]["x-automation-origin"], "external", "{stored}");
    assert_eq!(stored["headers"]["x-automation-publisher"], user.name.as_str(), "{stored}");
}

#[tokio::test]
async fn a_channel_the_broker_closed_is_replaced_by_the_next_publish() {
    let env = TestEnv::new().await;
    let publisher = Publisher::new(env.connection.clone(), Duration::from_secs(5)).await.expect("publisher");
    let exchange = env.names().events();
    let message = |properties: BasicProperties| Outgoing {
        exchange: &exchange,
        routing_key: "audit.recorded",
        body: b"{}",
        properties,
        mandatory: false,
    };
    // Another user's user_id: the broker closes the channel (406 PRECONDITION_FAILED).
    let foreign = BasicProperties::default().with_user_id("somebody-else".into());
    assert!(publisher.publish(message(foreign)).await.is_err());
    let ours = BasicProperties::default().with_user_id(SystemUsers::of(&env.config.amqp).own().to_string().into());
    publisher.publish(message(ours.clone())).await.expect("a new channel takes the next message");
    publisher.publish(message(ours)).await.expect("and the one after");
}

#[tokio::test]
async fn an_outsiders_pack_is_kept_whole_and_what_it_says_of_itself_is_not_believed() {
    let env = TestEnv::new().await;
    let _worker = TestWorker::start(&env.config).await;
    let user = PublisherUser::create(&env.config.amqp.prefix, ".*");
    let publisher = publisher_of(&user).await;
    // A "pack" claiming to hold a system-made escalation, with headers of ours forged on it.
    let inner = event("approval.escalate", json!({"approvalId": Uuid::new_v4(), "toRole": "admin", "reason": "r"}));
    let inner_properties = structured().with_user_id(SystemUsers::of(&env.config.amqp).own().to_string().into());
    let inner_body = inner.to_string();
    let (_, body) = automation_worker::pack::pack([("approval.escalate", &inner_properties, inner_body.as_bytes())]);
    let mut headers = lapin::types::FieldTable::default();
    for (name, value) in
        [("x-original-routing-key", "workflow.created"), ("x-dead-reason", "exhausted: database unavailable")]
    {
        headers.insert(name.into(), lapin::types::AMQPValue::LongString(value.as_bytes().to_vec().into()));
    }
    let properties = BasicProperties::default()
        .with_content_type(automation_worker::pack::CONTENT_TYPE.into())
        .with_headers(headers);
    let exchange = env.names().events();
    publisher
        .publish(Outgoing {
            exchange: &exchange,
            routing_key: "approval.requested",
            body: &body,
            properties,
            mandatory: false,
        })
        .await
        .expect("the broker takes it");
    env.wait_count("select count(*) from dead_letters", 1, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows: Vec<(Option<String>, String, String)> =
        sqlx::query_as("select type, routing_key, reason from dead_letters").fetch_all(&env.pool).await.expect("rows");
    assert_eq!(rows.len(), 1, "kept whole, not opened: {rows:?}");
    assert_ne!(rows[0].0.as_deref(), Some("approval.escalate"), "{rows:?}");
    assert_eq!(rows[0].1, "approval.requested", "the routing key it was sent with: {rows:?}");
    assert!(!rows[0].2.contains("database unavailable"), "its own reason, not the forged one: {rows:?}");
}

#[tokio::test]
async fn two_publishers_may_use_one_event_id_under_their_own_sources() {
    let env = TestEnv::new().await;
    let _worker = TestWorker::start(&env.config).await;
    let workflow = Uuid::new_v4();
    let created = event("workflow.created", json!({"workflowId": workflow, "name": "ids per source"}));
    env.publish_structured(&created).await;
    env.wait_processed(created["id"].as_str().expect("id")).await;

    // Both leave the approval id out: each gets an approval of its own, derived from its source
    // and id. The orders service's message comes twice (a redelivery): one effect.
    let requested = |source: &str, title: &str| {
        let mut e = event(
            "approval.requested",
            json!({"workflowId": workflow, "title": title, "requesterId": Uuid::new_v4(), "amount": 10}),
        );
        e["id"] = json!("order-1");
        e["source"] = json!(source);
        e
    };
    let orders = requested("/spring/orders", "from orders");
    let billing = requested("/spring/billing", "from billing");
    env.publish_structured(&orders).await;
    env.publish_structured(&billing).await;
    env.publish_structured(&orders).await;
    env.wait_count("select count(*) from inbox where event_id = 'order-1'", 2, Duration::from_secs(20)).await;

    // The copy is settled before a later event on the orders approval (same entity, in order).
    let ids: Vec<(String, String)> =
        sqlx::query_as("select cast(id as char), title from approvals where workflow_id = ? order by title")
            .bind(workflow.to_string())
            .fetch_all(&env.pool)
            .await
            .expect("approvals");
    assert_eq!(ids.len(), 2, "one approval per source: {ids:?}");
    assert_eq!((ids[0].1.as_str(), ids[1].1.as_str()), ("from billing", "from orders"));
    let decided = event("approval.decided", json!({"approvalId": ids[1].0, "status": "APPROVED"}));
    env.publish_structured(&decided).await;
    assert_eq!(env.wait_processed(decided["id"].as_str().expect("id")).await, "applied");
    assert_eq!(env.count("select count(*) from approvals").await, 2, "the redelivered copy created nothing");
    assert_eq!(env.count("select count(*) from inbox where event_id = 'order-1'").await, 2);

    // The status of an id two sources use: ask for the one you mean.
    let mut conn = env.pool.acquire().await.expect("conn");
    for (source, title) in [("/spring/orders", "from orders"), ("/spring/billing", "from billing")] {
        let status = automation_shared::db::events::status(&mut conn, "order-1", Some(source)).await.expect("status");
        let entity: String = sqlx::query_scalar("select title from approvals where cast(id as char) = ?")
            .bind(status.entity_id.clone().expect("entity id"))
            .fetch_one(&env.pool)
            .await
            .expect("the approval");
        assert_eq!(entity, title, "{source}");
    }
}
