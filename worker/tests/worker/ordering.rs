//! Per-entity order: events naming one entity are applied in the order they entered the queue,
//! with two worker instances of two consumers each; an event whose entity is still in flight waits
//! for it; a transient failure holds back its entity's successors, not other entities.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use automation_shared::config::Ordering;
use automation_shared::events::WorkQueue;
use automation_shared::messaging::{Outgoing, cloud_event_properties};
use automation_shared::testing::TestEnv;
use lapin::BasicProperties;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::retries::{create_workflow, lock_workflow};
use crate::support::{TestWorker, event, http_get, plain_event_id};

/// The longest any of these tests waits for the workers to catch up.
const DRAIN: Duration = Duration::from_secs(120);

/// Messages published per `publish_all` (one channel, so the order stays the order sent).
const CHUNK: usize = 500;

/// One message to publish: routing key, body and properties.
struct Message {
    routing_key: String,
    body: Vec<u8>,
    properties: BasicProperties,
}

/// What Spring's `RabbitTemplate` with Jackson sends (as `TestEnv::publish_plain`): the data,
/// a `__TypeId__` header, no message id. The worker derives the id from routing key and body.
fn plain(routing_key: &str, data: &Value) -> Message {
    Message {
        routing_key: routing_key.to_string(),
        body: data.to_string().into_bytes(),
        properties: automation_shared::testing::spring_plain_properties(),
    }
}

/// A CloudEvents structured message.
fn structured(event: &Value) -> Message {
    let event_type = event["type"].as_str().expect("type");
    let id = event["id"].as_str().expect("id");
    Message {
        routing_key: event_type.to_string(),
        body: event.to_string().into_bytes(),
        properties: cloud_event_properties(id, event_type),
    }
}

/// Publishes `messages` back to back on the environment's one publisher channel, in chunks whose
/// confirms are awaited together: the broker takes them in exactly this order.
async fn publish_in_order(env: &TestEnv, messages: &[Message]) {
    let exchange = env.names().events();
    for chunk in messages.chunks(CHUNK) {
        let outgoing = chunk
            .iter()
            .map(|m| Outgoing {
                exchange: &exchange,
                routing_key: &m.routing_key,
                body: &m.body,
                properties: m.properties.clone(),
                mandatory: false,
            })
            .collect();
        env.publisher.publish_all(outgoing).await.expect("the broker confirms every message");
    }
}

/// Every refusal in the inbox: (type, reason code, how many).
async fn refusals(env: &TestEnv) -> Vec<(String, Option<String>, i64)> {
    sqlx::query_as(
        "select type, reason_code, count(*) from inbox where outcome = 'rejected' group by type, reason_code \
         order by type, reason_code",
    )
    .fetch_all(&env.pool)
    .await
    .expect("refusals")
}

/// Waits until the inbox holds `expected` events (applied or refused); fails with what it holds.
async fn wait_inbox(env: &TestEnv, expected: i64) {
    let processed = env.wait_count("select count(*) from inbox", expected, DRAIN).await;
    assert_eq!(
        processed,
        expected,
        "events processed within {DRAIN:?}; refused so far: {:?}; dead letters: {}",
        refusals(env).await,
        env.count("select count(*) from dead_letters").await
    );
}

/// Waits until some event holds its key in the deferral store; fails with `never` after 30 s.
async fn wait_until_a_key_is_held(env: &TestEnv, never: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while env.count("select count(*) from entity_holds").await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "{never}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A deterministic pseudo-random sequence (xorshift), so a failing interleaving can be re-run.
struct Shuffle(u64);

impl Shuffle {
    fn below(&mut self, bound: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % bound.max(1) as u64) as usize
    }
}

#[tokio::test]
async fn a_thousand_request_and_decision_pairs_end_approved() {
    let env = TestEnv::with_partitions(8).await;
    let first = TestWorker::start(&env.config).await;
    let second = TestWorker::start(&env.config).await;
    let workflow = Uuid::new_v4();
    let created = event("workflow.created", json!({"workflowId": workflow, "name": "Purchases"}));
    env.publish_structured(&created).await;
    assert_eq!(env.wait_processed(created["id"].as_str().expect("id")).await, "applied", "the workflow is seeded");

    let (requester, approver) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
    let mut messages = Vec::with_capacity(2_000);
    for i in 0..1_000 {
        let approval = Uuid::new_v4();
        messages.push(plain(
            "approval.requested",
            &json!({"approvalId": approval, "workflowId": workflow, "title": format!("request {i}"),
                    "amount": i as f64 + 0.5, "currency": "EUR", "requesterId": requester}),
        ));
        // Another actor than the requester: nobody decides their own request.
        messages.push(plain(
            "approval.decided",
            &json!({"approvalId": approval, "status": "APPROVED", "reason": "in order", "actorId": approver}),
        ));
    }
    publish_in_order(&env, &messages).await;

    wait_inbox(&env, 2_001).await;
    let refused = refusals(&env).await;
    assert!(refused.is_empty(), "no decision came before its request; refused: {refused:?}");
    assert_eq!(env.count("select count(*) from inbox where outcome = 'rejected'").await, 0);
    assert_eq!(env.count("select count(*) from approvals").await, 1_000, "one approval per request");
    assert_eq!(env.count("select count(*) from approvals where status = 'APPROVED'").await, 1_000);
    assert_eq!(
        env.count("select count(*) from approvals where status = 'APPROVED' and version = 2").await,
        1_000,
        "each approval was decided exactly once, after its request"
    );
    assert_eq!(env.count("select count(*) from dead_letters").await, 0);
    assert_eq!(env.count("select count(*) from event_attempts").await, 0, "nothing left to retry");
    assert_eq!(env.count("select count(*) from deferred_events").await, 0, "nothing is left waiting");
    assert_eq!(env.count("select count(*) from entity_holds").await, 0, "no key is left held");
    // Each plain message was taken as itself, its id derived from its own routing key and body
    // (however the worker moved it between queues).
    let inbox: Vec<String> = sqlx::query_scalar("select event_id from inbox").fetch_all(&env.pool).await.expect("ids");
    let inbox: HashSet<String> = inbox.into_iter().collect();
    let missing = messages
        .iter()
        .map(|m| plain_event_id(&m.routing_key, std::str::from_utf8(&m.body).expect("utf-8")))
        .filter(|id| !inbox.contains(id))
        .count();
    assert_eq!(missing, 0, "plain messages not in the inbox under their derived id");
    first.stop().await.expect("clean stop");
    second.stop().await.expect("clean stop");
}

#[tokio::test]
async fn workflow_status_sequences_are_applied_in_order() {
    const WORKFLOWS: usize = 200;
    let env = TestEnv::with_partitions(8).await;
    let first = TestWorker::start(&env.config).await;
    let second = TestWorker::start(&env.config).await;

    publish_in_order(&env, &status_sequences(WORKFLOWS)).await;

    wait_inbox(&env, (WORKFLOWS * (1 + STEPS.len())) as i64).await;
    assert_every_sequence_applied_in_order(&env, WORKFLOWS).await;
    first.stop().await.expect("clean stop");
    second.stop().await.expect("clean stop");
}

/// Batches smaller than the sequencer's packs: nearly every pack is split across batches, its
/// rest opening the next one; and a worker stopped mid-stream hands its partitions over with
/// packs half applied (their rest comes to the next consumer, what was applied is skipped).
#[tokio::test]
async fn packs_split_across_small_batches_keep_order_and_lose_nothing() {
    const WORKFLOWS: usize = 150;
    let mut env = TestEnv::with_partitions(4).await;
    env.config.worker.batch_size = 7;
    let first = TestWorker::start(&env.config).await;
    let second = TestWorker::start(&env.config).await;

    let messages = status_sequences(WORKFLOWS);
    let total = messages.len() as i64;
    publish_in_order(&env, &messages).await;
    env.wait_count("select count(*) from inbox", total / 4, DRAIN).await;
    first.stop().await.expect("clean stop");
    let third = TestWorker::start(&env.config).await;

    wait_inbox(&env, total).await;
    assert_every_sequence_applied_in_order(&env, WORKFLOWS).await;
    // The workers of this test share one metrics registry (one process).
    let (_, scrape) = http_get(&second.url("/metrics")).await;
    let sample = |name: &str| -> f64 {
        scrape
            .lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in the scrape:\n{scrape}"))
    };
    let (batches, up_to_ten) =
        (sample("automation_worker_batch_size_count"), sample("automation_worker_batch_size_bucket{le=\"10\"}"));
    assert!(batches > 0.0 && batches == up_to_ten, "{batches} batches, {up_to_ten} of them of at most 10 events");
    second.stop().await.expect("clean stop");
    third.stop().await.expect("clean stop");
}

/// Each workflow's moves after `workflow.created`. The PAUSED → COMPLETED is not a move
/// the contract allows (a paused workflow is resumed before it completes), so it resumes first.
const STEPS: [&str; 5] = ["PAUSED", "ACTIVE", "PAUSED", "ACTIVE", "COMPLETED"];

/// `workflows` workflows' creation and five moves each, in order per workflow; the workflows
/// interleaved at random so that one workflow's events sometimes follow each other closely and
/// sometimes lie far apart.
fn status_sequences(workflows: usize) -> Vec<Message> {
    let ids: Vec<Uuid> = (0..workflows).map(|_| Uuid::new_v4()).collect();
    let mut next_step = vec![0_usize; workflows];
    let mut open: Vec<usize> = (0..workflows).collect();
    let mut shuffle = Shuffle(0x9e37_79b9_7f4a_7c15);
    let mut messages = Vec::with_capacity(workflows * (1 + STEPS.len()));
    while !open.is_empty() {
        let pick = shuffle.below(open.len());
        let w = open[pick];
        let step = next_step[w];
        let e = if step == 0 {
            event("workflow.created", json!({"workflowId": ids[w], "name": format!("sequence {w}")}))
        } else {
            event("workflow.status_changed", json!({"workflowId": ids[w], "status": STEPS[step - 1]}))
        };
        messages.push(structured(&e));
        next_step[w] += 1;
        if next_step[w] == 1 + STEPS.len() {
            open.swap_remove(pick);
        }
    }
    messages
}

/// No refusal, every workflow COMPLETED after all five moves, and each one's audit trail shows
/// its moves once each, in the order they were sent.
async fn assert_every_sequence_applied_in_order(env: &TestEnv, workflows: usize) {
    let refused = refusals(env).await;
    assert!(refused.is_empty(), "no status change was applied out of its order; refused: {refused:?}");
    assert_eq!(env.count("select count(*) from workflows").await, workflows as i64);
    assert_eq!(
        env.count("select count(*) from workflows where status = 'COMPLETED' and version = 6").await,
        workflows as i64,
        "every workflow went through all five moves and ended COMPLETED"
    );
    let rows: Vec<(String, String, Option<String>)> =
        sqlx::query_as("select entity_id, action, details from audit_log where entity = 'workflow' order by seq")
            .fetch_all(&env.pool)
            .await
            .expect("audit rows");
    let mut trails: HashMap<String, Vec<String>> = HashMap::new();
    for (workflow, action, details) in rows {
        let step = if action == "workflow.status_changed" {
            let details: Value = serde_json::from_str(details.as_deref().unwrap_or("null")).expect("details");
            details["to"].as_str().unwrap_or("?").to_string()
        } else {
            action
        };
        trails.entry(workflow).or_default().push(step);
    }
    let expected: Vec<String> =
        std::iter::once("workflow.created").chain(STEPS).map(str::to_string).collect::<Vec<_>>();
    let wrong: Vec<_> = trails.iter().filter(|(_, trail)| **trail != expected).take(5).collect();
    assert_eq!(trails.len(), workflows, "every workflow has an audit trail");
    assert!(wrong.is_empty(), "audit trails out of order or applied twice (first 5): {wrong:?}");
    assert_eq!(env.count("select count(*) from dead_letters").await, 0);
}

#[tokio::test]
async fn an_approval_requested_on_a_workflow_created_a_moment_ago_waits_for_it() {
    const WORKFLOWS: usize = 200;
    let env = TestEnv::with_partitions(8).await;
    let first = TestWorker::start(&env.config).await;
    let second = TestWorker::start(&env.config).await;
    let requester = Uuid::new_v4();
    let mut messages = Vec::with_capacity(WORKFLOWS * 2);
    let mut pairs = Vec::with_capacity(WORKFLOWS);
    for i in 0..WORKFLOWS {
        let (workflow, approval) = (Uuid::new_v4(), Uuid::new_v4());
        messages.push(structured(&event(
            "workflow.created",
            json!({"workflowId": workflow, "name": format!("fresh {i}")}),
        )));
        // Right behind its workflow, on another entity: it may reach a consumer first.
        messages.push(structured(&event(
            "approval.requested",
            json!({"approvalId": approval, "workflowId": workflow, "title": format!("request {i}"),
                   "requesterId": requester}),
        )));
        pairs.push((approval.to_string(), workflow.to_string()));
    }
    publish_in_order(&env, &messages).await;

    wait_inbox(&env, (WORKFLOWS * 2) as i64).await;
    let refused = refusals(&env).await;
    assert!(refused.is_empty(), "no request was refused for a workflow still in flight; refused: {refused:?}");
    assert_eq!(env.count("select count(*) from workflows where status = 'ACTIVE'").await, WORKFLOWS as i64);
    assert_eq!(env.count("select count(*) from approvals where status = 'PENDING'").await, WORKFLOWS as i64);
    let stored: Vec<(String, String)> =
        sqlx::query_as("select id, workflow_id from approvals").fetch_all(&env.pool).await.expect("approvals");
    let stored: BTreeMap<String, String> = stored.into_iter().collect();
    let expected: BTreeMap<String, String> = pairs.into_iter().collect();
    assert_eq!(stored, expected, "each approval on its own workflow");
    assert_eq!(env.count("select count(*) from dead_letters").await, 0);
    assert_eq!(env.count("select count(*) from deferred_events").await, 0, "nothing is left waiting");
    assert_eq!(env.count("select count(*) from entity_holds").await, 0, "no key is left held");
    first.stop().await.expect("clean stop");
    second.stop().await.expect("clean stop");
}

#[tokio::test]
async fn an_event_that_names_an_entity_that_never_appears_is_refused_after_the_wait() {
    let mut env = TestEnv::with_partitions(8).await;
    env.config.worker.entity_wait_ms = 1_500;
    let first = TestWorker::start(&env.config).await;
    let second = TestWorker::start(&env.config).await;
    let tap = env.notifications().await;

    let decision = event("approval.decided", json!({"approvalId": Uuid::new_v4(), "status": "APPROVED"}));
    let id = decision["id"].as_str().expect("id").to_string();
    let published = Instant::now();
    env.publish_structured(&decision).await;
    assert_eq!(env.wait_processed_within(&id, Duration::from_secs(15)).await, "rejected", "refused within 15 s");
    let waited = published.elapsed();
    // Refused at once it would take tens of milliseconds; a little slack for the clocks.
    assert!(waited >= Duration::from_millis(1_400), "refused after {waited:?}, before the 1.5 s wait was up");
    let reason_code: Option<String> = sqlx::query_scalar("select reason_code from inbox where event_id = ?")
        .bind(&id)
        .fetch_one(&env.pool)
        .await
        .expect("inbox row");
    assert_eq!(reason_code.as_deref(), Some("not_found"));
    let notice = tap.wait_caused_by(&id).await;
    assert_eq!(notice["type"], "event.rejected");
    assert_eq!(notice["data"]["code"], "not_found");
    assert_eq!(
        env.count_bound("select count(*) from audit_log where event_id = ? and action = 'rejected'", &id).await,
        1,
        "audited as rejected"
    );
    tap.settle().await;
    assert_eq!(tap.caused_by(&id).len(), 1, "announced once");
    assert_eq!(env.count("select count(*) from dead_letters").await, 0);
    first.stop().await.expect("clean stop");
    second.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_successor_waits_behind_an_event_that_failed_transiently() {
    const OTHERS: usize = 32;
    let mut env = TestEnv::with_partitions(8).await;
    env.config.database.lock_wait_timeout_secs = 1;
    let first = TestWorker::start(&env.config).await;
    let second = TestWorker::start(&env.config).await;
    let workflow = create_workflow(&env).await;
    let lock = lock_workflow(&env, workflow).await;

    let paused = event("workflow.status_changed", json!({"workflowId": workflow, "status": "PAUSED"}));
    let active = event("workflow.status_changed", json!({"workflowId": workflow, "status": "ACTIVE"}));
    let (paused_id, active_id) =
        (paused["id"].as_str().expect("id").to_string(), active["id"].as_str().expect("id").to_string());
    // One channel: PAUSED entered the queue first.
    env.publish_structured(&paused).await;
    env.publish_structured(&active).await;

    // PAUSED meets the lock, times out and is set aside for a retry.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut conn = env.pool.acquire().await.expect("conn");
        let status = automation_shared::db::events::status(&mut conn, &paused_id, None).await.expect("status");
        if status.status == automation_shared::events::EventState::Retrying {
            assert!(status.detail.unwrap_or_default().contains("Lock wait timeout"));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "PAUSED never showed as retrying (it is {})", status.status);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let held_since = Instant::now();

    // Other entities keep flowing meanwhile: enough of them that some share the workflow's
    // partition, whichever it is.
    let others: Vec<Value> = (0..OTHERS)
        .map(|i| {
            event("audit.recorded", json!({"entity": "invoice", "entityId": format!("inv-{i}"), "action": "sent"}))
        })
        .collect();
    publish_in_order(&env, &others.iter().map(structured).collect::<Vec<_>>()).await;
    for other in &others {
        assert_eq!(
            env.wait_processed_within(other["id"].as_str().expect("id"), Duration::from_secs(20)).await,
            "applied",
            "an event on another entity is applied while the workflow is locked"
        );
    }
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(held_since.elapsed())).await;
    assert_eq!(
        env.count_bound("select count(*) from inbox where event_id = ?", &active_id).await,
        0,
        "ACTIVE was not taken while PAUSED, before it, waits for its retry"
    );
    assert_eq!(
        env.count_bound("select count(*) from inbox where event_id = ?", &paused_id).await,
        0,
        "PAUSED cannot be applied while the lock is held"
    );
    lock.rollback().await.expect("release the lock");

    assert_eq!(env.wait_processed_within(&paused_id, Duration::from_secs(30)).await, "applied", "PAUSED");
    assert_eq!(env.wait_processed_within(&active_id, Duration::from_secs(30)).await, "applied", "ACTIVE");
    let row: (String, u32) = sqlx::query_as("select status, version from workflows where id = ?")
        .bind(workflow.to_string())
        .fetch_one(&env.pool)
        .await
        .expect("workflow row");
    assert_eq!(row, ("ACTIVE".to_string(), 3), "created, paused, then activated again");
    let trail: Vec<(Option<String>, String)> = sqlx::query_as(
        "select event_id, action from audit_log where entity = 'workflow' and entity_id = ? order by seq",
    )
    .bind(workflow.to_string())
    .fetch_all(&env.pool)
    .await
    .expect("audit trail");
    let trail: Vec<(String, String)> = trail.into_iter().map(|(id, action)| (id.unwrap_or_default(), action)).collect();
    assert_eq!(trail.len(), 3, "{trail:?}");
    assert_eq!(trail[0].1, "workflow.created", "{trail:?}");
    assert_eq!(
        trail[1..].to_vec(),
        vec![
            (paused_id.clone(), "workflow.status_changed".to_string()),
            (active_id.clone(), "workflow.status_changed".to_string())
        ],
        "PAUSED applied before ACTIVE"
    );
    assert_eq!(env.count("select count(*) from inbox where outcome = 'rejected'").await, 0);
    assert_eq!(env.count("select count(*) from dead_letters").await, 0);
    assert_eq!(env.count("select count(*) from event_attempts").await, 0, "the retry bookkeeping is cleared");
    first.stop().await.expect("clean stop");
    second.stop().await.expect("clean stop");
}

#[tokio::test]
async fn competing_ordering_is_still_available() {
    const EVENTS: usize = 50;
    let mut env = TestEnv::new().await;
    env.config.worker.ordering = Ordering::Competing;
    let first = TestWorker::start(&env.config).await;
    let second = TestWorker::start(&env.config).await;

    // The old layout: every consumer of both workers on the one commands queue, none on a
    // partition.
    let expected = 2 * u32::from(env.config.worker.consumers);
    let commands = env.names().work_queue(WorkQueue::Commands);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while env.consumers_on(&commands).await != expected {
        assert!(tokio::time::Instant::now() < deadline, "{expected} consumers never appeared on {commands}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for index in 0..env.config.worker.partitions {
        assert_eq!(env.consumers_on(&env.names().partition(index)).await, 0, "partition {index} is unused");
    }

    let events: Vec<Value> = (0..EVENTS)
        .map(|i| {
            event("audit.recorded", json!({"entity": "invoice", "entityId": format!("inv-{i}"), "action": "sent"}))
        })
        .collect();
    publish_in_order(&env, &events.iter().map(structured).collect::<Vec<_>>()).await;
    wait_inbox(&env, EVENTS as i64).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.count("select count(*) from inbox where outcome = 'applied'").await, EVENTS as i64);
    assert_eq!(env.count("select count(*) from audit_log where entity = 'invoice'").await, EVENTS as i64, "once each");
    assert_eq!(
        env.count("select count(distinct event_id) from audit_log where entity = 'invoice'").await,
        EVENTS as i64
    );
    assert_eq!(env.count("select count(*) from dead_letters").await, 0);
    first.stop().await.expect("clean stop");
    second.stop().await.expect("clean stop");
}

/// Two publishers racing: each decision reaches the queue before the request it decides. The
/// decision waits for its approval, the request passes it (it creates what the decision waits
/// for), and the decision is applied right after: every approval ends APPROVED, none refused.
#[tokio::test]
async fn a_decision_that_overtook_its_request_waits_for_it_and_is_applied_after_it() {
    const PAIRS: usize = 100;
    let env = TestEnv::with_partitions(8).await;
    let first = TestWorker::start(&env.config).await;
    let second = TestWorker::start(&env.config).await;
    let workflow = Uuid::new_v4();
    let created = event("workflow.created", json!({"workflowId": workflow, "name": "racing publishers"}));
    env.publish_structured(&created).await;
    env.wait_processed(created["id"].as_str().expect("id")).await;
    let (requester, approver) = (Uuid::new_v4(), Uuid::new_v4());
    let mut messages = Vec::with_capacity(PAIRS * 2);
    for i in 0..PAIRS {
        let approval = Uuid::new_v4();
        messages.push(plain(
            "approval.decided",
            &json!({"approvalId": approval, "status": "APPROVED", "reason": "raced", "actorId": approver}),
        ));
        messages.push(plain(
            "approval.requested",
            &json!({"approvalId": approval, "workflowId": workflow, "title": format!("raced {i}"),
                    "amount": 10.0, "currency": "EUR", "requesterId": requester, "actorId": requester}),
        ));
    }
    publish_in_order(&env, &messages).await;

    wait_inbox(&env, 1 + (PAIRS * 2) as i64).await;
    assert!(refusals(&env).await.is_empty(), "no decision was refused: {:?}", refusals(&env).await);
    assert_eq!(
        env.count("select count(*) from approvals where status = 'APPROVED' and version = 2").await,
        PAIRS as i64
    );
    assert_eq!(env.count("select count(*) from deferred_events").await, 0, "nothing is left waiting");
    assert_eq!(env.count("select count(*) from entity_holds").await, 0, "no key is left held");
    first.stop().await.expect("clean stop");
    second.stop().await.expect("clean stop");
}

/// A request stored behind its decision passes the decision once that waits for it. Both came
/// while an earlier event on the approval's key (an audit note whose handler panics) was waiting
/// for its next attempt, so both were stored behind it, decision first. Once the note is
/// dead-lettered the decision finds no approval and waits; the request behind it creates the
/// approval, so it goes first, and the decision is applied right after, long before its wait ends.
#[cfg(feature = "fault-injection")]
#[tokio::test]
async fn a_request_stored_behind_its_waiting_decision_passes_it() {
    let mut env = TestEnv::with_partitions(4).await;
    env.config.worker.max_attempts = 2;
    env.config.worker.retry_delays_ms = vec![300];
    env.config.worker.entity_wait_ms = 60_000;
    let worker = TestWorker::start(&env.config).await;
    let workflow = create_workflow(&env).await;
    let approval = Uuid::new_v4();
    let requester = Uuid::new_v4();
    let note = event(
        "audit.recorded",
        json!({"entity": "approval", "entityId": approval.to_string(), "action": automation_worker::faults::PANIC_ACTION}),
    );
    let decided = event("approval.decided", json!({"approvalId": approval, "status": "APPROVED", "reason": "ok"}));
    let requested = event(
        "approval.requested",
        json!({"approvalId": approval, "workflowId": workflow, "title": "stored behind", "amount": 10.0,
               "currency": "EUR", "requesterId": requester}),
    );
    let note_id = note["id"].as_str().expect("id").to_string();
    env.publish_structured(&note).await;
    wait_until_a_key_is_held(&env, "the panicking note never held its key").await;
    publish_in_order(&env, &[structured(&decided), structured(&requested)]).await;

    let started = Instant::now();
    assert_eq!(
        env.wait_processed_within(decided["id"].as_str().expect("id"), Duration::from_secs(20)).await,
        "applied",
        "the decision is applied once the request passed it, not refused when its wait of 60 s ends"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(env.count_bound("select count(*) from dead_letters where event_id = ?", &note_id).await, 1);
    let (status, version): (String, u32) = sqlx::query_as("select status, version from approvals where id = ?")
        .bind(approval.to_string())
        .fetch_one(&env.pool)
        .await
        .expect("approval row");
    assert_eq!((status.as_str(), version), ("APPROVED", 2), "requested, then decided");
    assert!(refusals(&env).await.is_empty(), "{:?}", refusals(&env).await);
    assert_eq!(env.count("select count(*) from deferred_events").await, 0, "nothing is left waiting");
    assert_eq!(env.count("select count(*) from entity_holds").await, 0, "no key is left held");
    worker.stop().await.expect("clean stop");
}

/// The same, when the earlier event held the key for longer than the decision may wait for its
/// approval: the decision's wait ran out while it was queued, yet its request is right behind it,
/// so it waits for that instead of being refused.
#[cfg(feature = "fault-injection")]
#[tokio::test]
async fn a_decision_whose_wait_ran_out_behind_a_retry_still_lets_its_request_pass() {
    let mut env = TestEnv::with_partitions(4).await;
    env.config.worker.max_attempts = 2;
    env.config.worker.retry_delays_ms = vec![2_000];
    env.config.worker.entity_wait_ms = 500;
    let worker = TestWorker::start(&env.config).await;
    let workflow = create_workflow(&env).await;
    let approval = Uuid::new_v4();
    let note = event(
        "audit.recorded",
        json!({"entity": "approval", "entityId": approval.to_string(), "action": automation_worker::faults::PANIC_ACTION}),
    );
    let decided = event("approval.decided", json!({"approvalId": approval, "status": "APPROVED", "reason": "ok"}));
    let requested = event(
        "approval.requested",
        json!({"approvalId": approval, "workflowId": workflow, "title": "queued long", "amount": 10.0,
               "currency": "EUR", "requesterId": Uuid::new_v4()}),
    );
    env.publish_structured(&note).await;
    wait_until_a_key_is_held(&env, "the panicking note never held its key").await;
    publish_in_order(&env, &[structured(&decided), structured(&requested)]).await;
    assert_eq!(
        env.wait_processed_within(decided["id"].as_str().expect("id"), Duration::from_secs(30)).await,
        "applied",
        "the decision waited for the request behind it, though its own 500 ms were spent in the queue"
    );
    let (status, version): (String, u32) = sqlx::query_as("select status, version from approvals where id = ?")
        .bind(approval.to_string())
        .fetch_one(&env.pool)
        .await
        .expect("approval row");
    assert_eq!((status.as_str(), version), ("APPROVED", 2));
    assert!(refusals(&env).await.is_empty(), "{:?}", refusals(&env).await);
    worker.stop().await.expect("clean stop");
}

/// A creator waiting for its next attempt behind a decision that waits for it keeps its retry
/// schedule: it is not tried again on every sweep (each time the decision waits again), which
/// would spend its attempts in seconds and dead-letter the request and, after it, the decision.
#[tokio::test]
async fn a_creator_waiting_for_a_retry_behind_its_decision_keeps_its_schedule() {
    let mut env = TestEnv::with_partitions(4).await;
    env.config.database.lock_wait_timeout_secs = 1;
    env.config.worker.max_attempts = 3;
    env.config.worker.retry_delays_ms = vec![25_000];
    env.config.worker.entity_wait_ms = 120_000;
    let worker = TestWorker::start(&env.config).await;
    let workflow = create_workflow(&env).await;
    let approval = Uuid::new_v4();
    let decided = event("approval.decided", json!({"approvalId": approval, "status": "APPROVED", "reason": "ok"}));
    let requested = event(
        "approval.requested",
        json!({"approvalId": approval, "workflowId": workflow, "title": "locked workflow", "amount": 10.0,
               "currency": "EUR", "requesterId": Uuid::new_v4()}),
    );
    let requested_id = requested["id"].as_str().expect("id").to_string();
    // The decision first: it waits for its approval.
    env.publish_structured(&decided).await;
    wait_until_a_key_is_held(&env, "the decision never waited").await;
    // The request meets a locked workflow, fails, and waits for its next attempt behind it.
    let lock = lock_workflow(&env, workflow).await;
    env.publish_structured(&requested).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while env
        .count_bound("select count(*) from deferred_events where event_id = ? and state = 'retrying'", &requested_id)
        .await
        == 0
    {
        assert!(tokio::time::Instant::now() < deadline, "the request never waited for a retry");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The decision waits again every 200 ms meanwhile; the request must not be tried each time
    // (a try against the lock takes some 4 s: the lock wait, and the batch run again 3 times).
    tokio::time::sleep(Duration::from_secs(12)).await;
    let attempts: Vec<u32> = sqlx::query_scalar("select attempt from deferred_events where event_id = ?")
        .bind(&requested_id)
        .fetch_all(&env.pool)
        .await
        .expect("stored");
    assert_eq!(attempts, vec![2], "still waiting for its second attempt, not tried on every sweep");
    assert_eq!(env.count("select count(*) from dead_letters").await, 0);
    lock.rollback().await.expect("release the lock");
    assert_eq!(
        env.wait_processed_within(decided["id"].as_str().expect("id"), Duration::from_secs(40)).await,
        "applied",
        "once the request's attempt is due it is applied, and the decision after it"
    );
    assert_eq!(env.wait_processed_within(&requested_id, Duration::from_secs(5)).await, "applied");
    worker.stop().await.expect("clean stop");
}

/// A copy of an event that came while the event waited for its next attempt (a redelivery, a
/// sequencer's second publish) is stored behind it. When the event runs out of attempts and is
/// dead-lettered, the copy goes with it: applied later, it would land after the events that
/// followed the original, and the dead letter an operator sees would already be applied.
#[tokio::test]
async fn a_copy_stored_behind_an_event_that_is_dead_lettered_goes_with_it() {
    let mut env = TestEnv::with_partitions(4).await;
    env.config.database.lock_wait_timeout_secs = 1;
    env.config.worker.max_attempts = 2;
    env.config.worker.retry_delays_ms = vec![200];
    let worker = TestWorker::start(&env.config).await;
    let workflow = create_workflow(&env).await;
    let lock = lock_workflow(&env, workflow).await;
    let paused = event("workflow.status_changed", json!({"workflowId": workflow, "status": "PAUSED"}));
    let id = paused["id"].as_str().expect("id").to_string();
    env.publish_structured(&paused).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while env.count_bound("select count(*) from deferred_events where event_id = ?", &id).await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "PAUSED never waited for its next attempt");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The copy: the same message again.
    env.publish_structured(&paused).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while env.count_bound("select count(*) from dead_letters where event_id = ?", &id).await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "PAUSED was never dead-lettered after its two attempts");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    lock.rollback().await.expect("release the lock");
    // What is left behind would now be applied: give it the time.
    let after = event("workflow.status_changed", json!({"workflowId": workflow, "status": "COMPLETED"}));
    env.publish_structured(&after).await;
    assert_eq!(env.wait_processed_within(after["id"].as_str().expect("id"), Duration::from_secs(20)).await, "applied");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        env.count_bound("select count(*) from inbox where event_id = ?", &id).await,
        0,
        "the copy of the dead-lettered PAUSED was not applied"
    );
    let row: (String, u32) = sqlx::query_as("select status, version from workflows where id = ?")
        .bind(workflow.to_string())
        .fetch_one(&env.pool)
        .await
        .expect("workflow row");
    assert_eq!(row, ("COMPLETED".to_string(), 2), "created, then completed; PAUSED only as a dead letter");
    assert_eq!(env.count("select count(*) from deferred_events").await, 0, "nothing is left waiting");
    assert_eq!(env.count("select count(*) from entity_holds").await, 0, "no key is left held");
    worker.stop().await.expect("clean stop");
}
