//! Replaying and discarding dead letters (CONTRACT §8), for `automation-worker dlq` and the admin
//! API alike.
//!
//! A replay republishes the stored message to the events exchange, with its event id and routing
//! key, waits for the broker's confirm, and only then marks the stored copy replayed: a crash in
//! between leaves it `dead` (and a second replay is harmless, because the inbox applies an event
//! id once). Every replay and discard is audited with who did it.

use std::time::Duration;

use chrono::Utc;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::MySqlPool;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::db::audit::{ActorType, AuditChain, NewRecord};
use crate::db::dead_letters::{self, DeadLetter, Filter};
use crate::messaging::{Names, Origin, Outgoing, PERSISTENT, PublishError, Publisher, SystemUsers};

/// Headers that describe a death; a replayed message starts over without them.
const DEATH_HEADERS: [&str; 12] = [
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
    "x-attempt",
    "x-history",
    "x-first-failed-at",
    "x-dead-at",
    "x-dead-letter-id",
];

/// Counts replays of one message, so a replayed message that dies again is stored anew.
pub const REPLAY_COUNT_HEADER: &str = "x-replay-count";

/// Who acts on dead letters, for the audit log.
#[derive(Debug, Clone)]
pub struct Operator {
    pub id: String,
    pub actor_type: ActorType,
}

/// What happened to each dead letter an action selected.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActionReport {
    /// How many matched the selection.
    pub matched: u64,
    /// How many were replayed (or discarded).
    pub done: u64,
    /// Nothing was changed: the ids that would have been.
    pub dry_run: bool,
    pub ids: Vec<Uuid>,
    /// Those that failed, with why; the rest went through.
    pub failed: Vec<ActionFailure>,
}

impl ActionReport {
    /// Counts one dead letter's outcome: done (`true`), already acted on by someone else
    /// (`false`), or failed with why.
    pub fn record(&mut self, id: Uuid, outcome: anyhow::Result<bool>) {
        match outcome {
            Ok(true) => {
                self.done += 1;
                self.ids.push(id);
            }
            Ok(false) => {}
            Err(error) => self.failed.push(ActionFailure { id, error: format!("{error:#}") }),
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActionFailure {
    pub id: Uuid,
    pub error: String,
}

/// The AMQP properties of a stored message, as it should be published again: as the system
/// (the original `user_id` would make the broker refuse it from another user), with the origin
/// it had, so an outsider's message stays the outsider's.
pub fn replay_properties(dead: &DeadLetter, system: &SystemUsers) -> BasicProperties {
    let stored = &dead.properties.0;
    let text = |key: &str| stored.get(key).and_then(Value::as_str).map(|s| ShortString::from(s.to_string()));
    let mut properties = BasicProperties::default().with_delivery_mode(PERSISTENT);
    if let Some(v) = text("contentType") {
        properties = properties.with_content_type(v);
    }
    if let Some(v) = text("contentEncoding") {
        properties = properties.with_content_encoding(v);
    }
    if let Some(v) = text("messageId") {
        properties = properties.with_message_id(v);
    }
    if let Some(v) = text("correlationId") {
        properties = properties.with_correlation_id(v);
    }
    if let Some(v) = text("type") {
        properties = properties.with_type(v);
    }
    if let Some(v) = text("appId") {
        properties = properties.with_app_id(v);
    }
    if let Some(v) = stored.get("timestamp").and_then(Value::as_u64) {
        properties = properties.with_timestamp(v);
    }
    let mut headers = FieldTable::default();
    for (key, value) in stored.get("headers").and_then(Value::as_object).into_iter().flatten() {
        let lower = key.to_ascii_lowercase();
        // The routing key the replay is published with is the stored one: a header saying
        // otherwise is not carried (the consumer believes it on a system-published copy).
        if DEATH_HEADERS.contains(&lower.as_str())
            || lower.starts_with("x-dead-")
            || lower == "x-error-kind"
            || lower == "x-origin-queue"
            || lower == "x-original-routing-key"
            || lower == "cc"
            || lower == "bcc"
        {
            continue;
        }
        if let Some(value) = value.as_str() {
            headers.insert(
                ShortString::from(key.clone()),
                AMQPValue::LongString(LongString::from(value.as_bytes().to_vec())),
            );
        }
    }
    headers.insert(REPLAY_COUNT_HEADER.into(), AMQPValue::LongLongInt(i64::from(dead.replay_count) + 1));
    let properties = properties.with_headers(headers);
    let as_stored = match text("userId") {
        Some(user) => properties.clone().with_user_id(user),
        None => properties.clone(),
    };
    Origin::of(&as_stored, system).stamp(properties, system)
}

/// Republishes one dead letter and marks it replayed, audited.
pub async fn replay(
    pool: &MySqlPool,
    publisher: &Publisher,
    names: &Names,
    system: &SystemUsers,
    chain: &mut AuditChain,
    dead: &DeadLetter,
    operator: &Operator,
) -> anyhow::Result<()> {
    if let Some(size) = dead.body_bytes {
        anyhow::bail!(
            "only {} of its {size} bytes were kept (the message was too big to store whole); it cannot be replayed",
            dead.body.len()
        );
    }
    let exchange = names.events();
    publisher
        .publish(Outgoing {
            exchange: &exchange,
            routing_key: &dead.summary.routing_key,
            body: &dead.body,
            properties: replay_properties(dead, system),
            mandatory: true,
        })
        .await
        .map_err(|e: PublishError| anyhow::anyhow!("the broker did not take the replay: {e}"))?;
    let mut tx = pool.begin().await?;
    dead_letters::mark_replayed(&mut *tx, dead.summary.id, &operator.id).await?;
    audit_and_commit(tx, chain, dead, operator, "dead_letter.replayed").await
}

/// Marks one dead letter discarded (kept for the record, never replayed by a filter again),
/// audited. Returns whether it was still dead.
pub async fn discard(
    pool: &MySqlPool,
    chain: &mut AuditChain,
    dead: &DeadLetter,
    operator: &Operator,
) -> anyhow::Result<bool> {
    let mut tx = pool.begin().await?;
    if !dead_letters::mark_discarded(&mut *tx, dead.summary.id, &operator.id).await? {
        return Ok(false);
    }
    audit_and_commit(tx, chain, dead, operator, "dead_letter.discarded").await.map(|()| true)
}

/// Writes the audit record of an action on a dead letter and commits.
async fn audit_and_commit(
    mut tx: sqlx::Transaction<'_, sqlx::MySql>,
    chain: &mut AuditChain,
    dead: &DeadLetter,
    operator: &Operator,
    action: &str,
) -> anyhow::Result<()> {
    let mut staged = chain.stage();
    staged.push(NewRecord {
        entity: "dead_letter".into(),
        entity_id: dead.summary.id.to_string(),
        action: action.into(),
        actor_id: Some(operator.id.clone()),
        actor_type: operator.actor_type,
        event_id: dead.summary.event_id.clone(),
        correlation_id: None,
        details: Some(json!({
            "type": dead.summary.event_type,
            "reason": dead.summary.reason,
            "routingKey": dead.summary.routing_key,
            "replayCount": dead.replay_count,
            "at": Utc::now(),
        })),
    });
    let written = async {
        staged.write(&mut tx).await?;
        tx.commit().await
    }
    .await;
    match written {
        Ok(()) => {
            chain.advance(&staged);
            Ok(())
        }
        Err(error) => {
            chain.abandon();
            Err(error.into())
        }
    }
}

/// Selects dead letters: by ids, or by filter (state `dead` unless said otherwise), oldest first.
pub async fn select(
    pool: &MySqlPool,
    ids: &[Uuid],
    filter: &Filter,
    limit: Option<u64>,
) -> sqlx::Result<Vec<DeadLetter>> {
    if !ids.is_empty() {
        let mut found = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(dead) = dead_letters::get(pool, *id).await? {
                found.push(dead);
            }
        }
        return Ok(found);
    }
    let mut filter = filter.clone();
    if filter.state.is_none() {
        filter.state = Some("dead".into());
    }
    let mut selected = Vec::new();
    let mut after = 0;
    loop {
        let page = dead_letters::select_for_action(pool, &filter, 500, after).await?;
        let Some(last) = page.last() else { break };
        after = last.summary.seq;
        selected.extend(page);
        if limit.is_some_and(|l| selected.len() as u64 >= l) {
            selected.truncate(limit.unwrap_or(u64::MAX) as usize);
            break;
        }
    }
    Ok(selected)
}

/// Paces an action at `per_second` (none: as fast as the broker confirms).
pub fn pace(per_second: Option<f64>) -> Option<Duration> {
    per_second.filter(|r| *r > 0.0).map(|r| Duration::from_secs_f64(1.0 / r))
}
