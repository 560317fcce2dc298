//! Every kind of message that cannot be taken is dead-lettered at once with its reason, and the
//! worker goes on with the good ones.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use automation_shared::messaging::{self, Outgoing, Publisher};
use automation_shared::testing::TestEnv;
use automation_shared::testing::publisher_user::PublisherUser;
use lapin::BasicProperties;
use serde_json::json;
use uuid::Uuid;

use crate::support::{TestWorker, event, http_get};

#[tokio::test]
async fn each_kind_of_poison_is_dead_lettered_with_its_reason_while_good_events_flow() {
    let mut env = TestEnv::new().await;
    env.config.worker.max_message_bytes = 4096;
    // The broker checks `user_id` against the connection's user: a publisher of its own.
    let user = PublisherUser::create(&env.config.amqp.prefix, ".*");
    env.config.worker.publishers = BTreeMap::from([(user.name.clone(), vec!["audit.*".to_string()])]);
    let worker = TestWorker::start(&env.config).await;
    let json_props = || BasicProperties::default().with_content_type("application/json".into());
    let cloud_props = || BasicProperties::default().with_content_type("application/cloudevents+json".into());

    let cases: Vec<(&str, BasicProperties, Vec<u8>, &str)> = vec![
        ("workflow.created", json_props(), b"{\"name\": ".to_vec(), "invalid_json"),
        ("workflow.created", json_props(), vec![0x7b, 0xff, 0xfe, 0x7d], "not_utf8"),
        (
            "workflow.created",
            BasicProperties::default().with_content_type("application/x-java-serialized-object".into()),
            vec![0xac, 0xed, 0x00, 0x05, 0x73, 0x72],
            "java_serialized",
        ),
        ("workflow.archived", json_props(), br#"{"name":"x"}"#.to_vec(), "unknown_type"),
        ("approval.requested", json_props(), br#"{"workflowId":"not-a-uuid","title":"t"}"#.to_vec(), "schema_invalid"),
        ("workflow.created", json_props(), format!(r#"{{"name":"{}"}}"#, "x".repeat(5000)).into_bytes(), "too_large"),
        (
            "workflow.created",
            cloud_props(),
            br#"{"specversion":"1.0","source":"/s","type":"workflow.created","data":{}}"#.to_vec(),
            "invalid_cloudevent",
        ),
        (
            "workflow.created",
            json_props().with_user_id(user.name.clone().into()),
            br#"{"name":"sneaky"}"#.to_vec(),
            "publisher_not_allowed",
        ),
    ];
    let connection =
        messaging::connect_once(&automation_shared::testing::addresses(&user.url), "tests-outside-publisher")
            .await
            .expect("the user connects");
    let outsider = Publisher::new(Arc::new(connection), Duration::from_secs(5)).await.expect("publisher");
    let exchange = env.names().events();
    for (routing_key, properties, body, _) in &cases {
        outsider
            .publish(Outgoing {
                exchange: &exchange,
                routing_key,
                body,
                properties: properties.clone(),
                mandatory: false,
            })
            .await
            .expect("the broker takes it");
    }
    let good = event("workflow.created", json!({"workflowId": Uuid::new_v4(), "name": "still flowing"}));
    env.publish_structured(&good).await;
    assert_eq!(env.wait_processed(good["id"].as_str().expect("id")).await, "applied");

    let stored = env.wait_count("select count(*) from dead_letters", cases.len() as i64, Duration::from_secs(20)).await;
    assert_eq!(stored, cases.len() as i64);
    let rows: Vec<(String, String, String, String)> =
        sqlx::query_as("select reason, error_kind, origin_queue, state from dead_letters")
            .fetch_all(&env.pool)
            .await
            .expect("rows");
    for (_, _, _, code) in &cases {
        let row = rows
            .iter()
            .find(|r| r.0.starts_with(&format!("{code}:")))
            .unwrap_or_else(|| panic!("no dead letter for {code}: {rows:#?}"));
        assert_eq!(row.1, "poison");
        assert_eq!(row.2, format!("{}.commands", env.config.amqp.prefix));
        assert_eq!(row.3, "dead");
    }
    let schema: String = sqlx::query_scalar("select reason from dead_letters where reason like 'schema_invalid%'")
        .fetch_one(&env.pool)
        .await
        .expect("row");
    assert!(schema.contains("data.workflowId"), "the reason names the field: {schema}");
    // Kept whole: the body is byte for byte what was sent.
    let body: Vec<u8> = sqlx::query_scalar("select body from dead_letters where reason like 'not_utf8%'")
        .fetch_one(&env.pool)
        .await
        .expect("row");
    assert_eq!(body, vec![0x7b, 0xff, 0xfe, 0x7d]);
    assert_eq!(env.count("select count(*) from inbox").await, 1, "nothing poisonous was applied");
    let (status, _) = http_get(&worker.url("/readiness")).await;
    assert_eq!(status, 200, "the worker is still ready");
    worker.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_message_too_big_to_store_whole_is_kept_as_a_prefix_and_the_intake_goes_on() {
    use automation_shared::db::audit::{ActorType, AuditChain};
    use automation_shared::db::dead_letters::{self as rows, MAX_STORED_BODY};
    use automation_shared::dead_letters::{self as actions, Operator};
    use automation_shared::messaging::SystemUsers;

    let env = TestEnv::new().await;
    let _worker = TestWorker::start(&env.config).await;
    let json_props = || BasicProperties::default().with_content_type("application/json".into());
    // 17 MiB: RabbitMQ takes it (its limit is 128 MiB), MariaDB's max_allowed_packet (16 MiB)
    // would not take it in one insert.
    let size = 17 * 1024 * 1024;
    let mut big = br#"{"name":""#.to_vec();
    big.resize(size - 2, b'x');
    big.extend_from_slice(br#""}"#);
    env.publish("workflow.created", json_props(), &big).await;
    // A dead letter behind it is stored too.
    env.publish("workflow.created", json_props(), b"{\"name\": ").await;
    env.wait_count("select count(*) from dead_letters", 2, Duration::from_secs(60)).await;

    let (id, kept, bytes, reason): (String, i64, Option<u64>, String) =
        sqlx::query_as("select id, length(body), body_bytes, reason from dead_letters where reason like 'too_large%'")
            .fetch_one(&env.pool)
            .await
            .expect("the big one is stored");
    assert_eq!(kept as usize, MAX_STORED_BODY, "a prefix of the body is kept");
    assert_eq!(bytes, Some(size as u64), "with the size it arrived with");
    assert!(reason.contains(&size.to_string()), "{reason}");
    assert_eq!(env.count("select count(*) from dead_letters where reason like 'invalid_json%'").await, 1);

    // What is kept is not the message: it is never replayed.
    let dead = rows::get(&env.pool, id.parse().expect("uuid")).await.expect("query").expect("row");
    let mut chain = AuditChain::new(None);
    let operator = Operator { id: "tests".into(), actor_type: ActorType::User };
    let system = SystemUsers::of(&env.config.amqp);
    let refused = actions::replay(&env.pool, &env.publisher, &env.names(), &system, &mut chain, &dead, &operator)
        .await
        .expect_err("a prefix is not replayed");
    assert!(refused.to_string().contains("cannot be replayed"), "{refused}");
}

#[tokio::test]
async fn a_dead_letter_the_broker_made_is_stored_and_counted() {
    let env = TestEnv::new().await;
    // Expired in its queue before any worker ran: RabbitMQ itself dead-letters it.
    let e = event("workflow.created", json!({"name": "expired"}));
    let properties = BasicProperties::default()
        .with_content_type("application/cloudevents+json".into())
        .with_delivery_mode(messaging::PERSISTENT)
        .with_expiration("1".into());
    env.publish("workflow.created", properties, e.to_string().as_bytes()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let worker = TestWorker::start(&env.config).await;
    env.wait_count("select count(*) from dead_letters", 1, Duration::from_secs(20)).await;
    let (kind, event_id): (String, Option<String>) =
        sqlx::query_as("select error_kind, event_id from dead_letters").fetch_one(&env.pool).await.expect("row");
    assert_eq!((kind.as_str(), event_id.as_deref()), ("expired", e["id"].as_str()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, scrape) = http_get(&worker.url("/metrics")).await;
        let counted = scrape.lines().any(|l| {
            l.starts_with("automation_worker_dead_lettered_total{")
                && l.contains("kind=\"expired\"")
                && l.contains("reason=\"broker\"")
                && l.ends_with(" 1")
        });
        if counted {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the broker's dead letter is counted:\n{scrape}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker.stop().await.expect("clean stop");
}
