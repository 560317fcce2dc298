//! What a Spring service's generated classes send: the bodies Jackson wrote from the classes
//! quicktype made out of `schemas/events/*.json` (committed under `schemas/examples/jackson/`,
//! kept current by `make check-interfaces`), published through the real broker as
//! `RabbitTemplate` with `Jackson2JsonMessageConverter` sends them. Every one is taken: applied or
//! refused for a business reason, none dead-lettered as unreadable.

use std::time::Duration;

use automation_shared::events::EventType;
use automation_shared::testing::{TestEnv, spring_plain_properties};
use lapin::types::ShortString;
use serde_json::Value;

use crate::support::TestWorker;

#[tokio::test]
async fn the_jackson_output_of_the_generated_classes_is_taken_through_the_broker() {
    let mut env = TestEnv::new().await;
    // The examples name entities of one another only in part: what they name and is not there is
    // refused `not_found` after this wait.
    env.config.worker.entity_wait_ms = 300;
    let worker = TestWorker::start(&env.config).await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/examples/jackson");
    let mut sent = Vec::new();
    // In an order where what is created comes before what refers to it.
    for event_type in EventType::ALL {
        let path = dir.join(format!("{}.json", event_type.as_str()));
        let body = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let event: Value = serde_json::from_slice(&body).expect("JSON");
        assert!(event["time"].is_string() && event["subject"].is_null(), "Jackson's nulls are in the body: {event}");
        let mut properties = spring_plain_properties();
        // Internal types come only from the system's own connection (a rule's or a task's).
        if !event_type.sent_from_outside() {
            properties = properties.with_user_id(ShortString::from(
                automation_shared::messaging::SystemUsers::of(&env.config.amqp).own().to_string(),
            ));
        }
        env.publish(event_type.as_str(), properties, &body).await;
        sent.push((event_type, event["id"].as_str().expect("id").to_string()));
    }
    for (event_type, id) in &sent {
        let outcome = env.wait_processed_within(id, Duration::from_secs(30)).await;
        assert!(
            outcome == "applied" || outcome == "rejected",
            "{event_type}: {outcome}; dead letters: {:?}",
            sqlx::query_scalar::<_, String>("select reason from dead_letters").fetch_all(&env.pool).await
        );
    }
    assert_eq!(env.count("select count(*) from dead_letters").await, 0, "none was unreadable");
    let applied: Vec<String> = sqlx::query_scalar("select type from inbox where outcome = 'applied' order by type")
        .fetch_all(&env.pool)
        .await
        .expect("inbox");
    for taken in ["audit.recorded", "rule.upserted", "workflow.created"] {
        assert!(applied.iter().any(|t| t == taken), "{taken} applied: {applied:?}");
    }
    worker.stop().await.expect("clean stop");
}
