//! Runs made straight in MySQL with their start message on the tasks queue, as the
//! `automation.requested` handler and the outbox relay would leave them: for tests that need the
//! start message in the queue before any worker runs (shared with the fault suite).

use automation_shared::db::runs::{self, Run, RunState};
use automation_shared::events::WorkQueue;
use automation_shared::messaging::{Outgoing, SystemUsers, cloud_event_properties};
use automation_shared::testing::TestEnv;
use automation_worker::tasks;
use chrono::Utc;
use serde_json::Value;
use sqlx::types::Json;
use uuid::Uuid;

/// A `queued` run of `automation` with `params`, stored.
pub async fn queued_run(env: &TestEnv, automation: &str, params: Value) -> Run {
    let now = Utc::now();
    let run = Run {
        seq: 0,
        id: Uuid::new_v4(),
        automation: automation.into(),
        params: Some(Json(params)),
        state: RunState::Queued,
        attempts: 0,
        max_attempts: 5,
        result: None,
        error: None,
        run_at: None,
        event_id: None,
        schedule_name: None,
        requested_by: Some("tests".into()),
        created_at: now,
        started_at: None,
        finished_at: None,
        updated_at: now,
        traceparent: None,
        tracestate: None,
    };
    runs::insert(&env.pool, &run).await.expect("insert the run");
    run
}

/// Publishes the message that starts attempt `attempt` of `run`, as the relay does.
pub async fn publish_start(env: &TestEnv, run: Uuid, attempt: u32) {
    let start = tasks::start_message(run, attempt);
    let queue = env.names().work_queue(WorkQueue::Tasks);
    env.publisher
        .publish(Outgoing {
            exchange: "",
            routing_key: &queue,
            body: &start.body,
            properties: cloud_event_properties(&start.message_id.to_string(), tasks::EXECUTE)
                .with_content_type("application/json".into())
                .with_user_id(SystemUsers::of(&env.config.amqp).own().to_string().into()),
            mandatory: true,
        })
        .await
        .expect("the start message is confirmed");
}

/// The run's state now (the fault suite uses it; the worker suite does not).
pub async fn state_of(env: &TestEnv, run: Uuid) -> Option<RunState> {
    runs::find(&env.pool, run).await.expect("query").map(|r| r.state)
}
