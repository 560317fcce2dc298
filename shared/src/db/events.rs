//! Events as the database knows them: the inbox (each event applied or refused exactly once), the
//! attempts of events waiting for a retry, the outbox, and the status clients read.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{FromRow, MySqlConnection, MySqlExecutor, MySqlPool, QueryBuilder};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::events::{EventState, RejectCode};

/// What became of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// A business refusal: recorded, audited, announced, never retried.
    Rejected,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Rejected => "rejected",
        }
    }
}

/// One inbox row.
#[derive(Debug, Clone)]
pub struct InboxEntry {
    pub event_id: String,
    pub event_type: String,
    pub source: String,
    pub actor_id: Option<String>,
    pub actor_type: String,
    pub correlation_id: String,
    pub causation_id: Option<String>,
    pub chain_depth: u32,
    pub outcome: Outcome,
    pub reason_code: Option<RejectCode>,
    pub reason: Option<String>,
    /// What the event changed, so a waiting client can read it back.
    pub entity: Option<String>,
    pub entity_id: Option<String>,
    /// The rule evaluations, when rules ran.
    pub rules: Option<Value>,
    pub received_at: DateTime<Utc>,
    pub processed_at: DateTime<Utc>,
}

/// An event as the inbox knows it: CloudEvents make `source` + `id` unique.
pub type EventRef<'a> = (&'a str, &'a str);

/// Which of `events` (id, source) are already in the inbox.
pub async fn already_processed(
    conn: &mut MySqlConnection,
    events: &[EventRef<'_>],
) -> sqlx::Result<HashSet<(String, String)>> {
    if events.is_empty() {
        return Ok(HashSet::new());
    }
    // By id (the primary key's prefix), then by source here: a row-constructor `in` is not
    // planned as a range on every MySQL and MariaDB version.
    let mut query = QueryBuilder::new("select event_id, source from inbox where event_id in (");
    let mut list = query.separated(", ");
    for (id, _) in events {
        list.push_bind(id.to_string());
    }
    query.push(")");
    let found: Vec<(String, String)> = query.build_query_as().fetch_all(conn).await?;
    Ok(found.into_iter().filter(|(id, source)| events.contains(&(id.as_str(), source.as_str()))).collect())
}

/// Inserts inbox rows. A duplicate key means another worker took one of these events first:
/// the caller rolls back and looks again.
pub async fn insert_inbox(conn: &mut MySqlConnection, entries: &[InboxEntry]) -> sqlx::Result<()> {
    for chunk in super::statement_chunks(entries) {
        let mut insert = QueryBuilder::new(
            "insert into inbox (event_id, type, source, actor_id, actor_type, correlation_id, causation_id, chain_depth, \
             outcome, reason_code, reason, entity, entity_id, rules, received_at, processed_at) ",
        );
        insert.push_values(chunk, |mut row, e| {
            row.push_bind(e.event_id.clone())
                .push_bind(e.event_type.clone())
                .push_bind(e.source.clone())
                .push_bind(e.actor_id.clone())
                .push_bind(e.actor_type.clone())
                .push_bind(e.correlation_id.clone())
                .push_bind(e.causation_id.clone())
                .push_bind(e.chain_depth)
                .push_bind(e.outcome.as_str())
                .push_bind(e.reason_code.map(RejectCode::as_str))
                .push_bind(e.reason.clone())
                .push_bind(e.entity.clone())
                .push_bind(e.entity_id.clone())
                .push_bind(e.rules.clone().map(Json))
                .push_bind(e.received_at)
                .push_bind(e.processed_at);
        });
        insert.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Forgets the retry bookkeeping of events (id, source) that are now processed, and rows an
/// older version wrote for them without a source.
pub async fn clear_attempts(conn: &mut MySqlConnection, events: &[EventRef<'_>]) -> sqlx::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let mut query = QueryBuilder::new("delete from event_attempts where ");
    let mut any = query.separated(" or ");
    for (id, source) in events {
        any.push("(event_id = ").push_bind_unseparated(id.to_string());
        any.push_unseparated(" and source in (").push_bind_unseparated(source.to_string());
        any.push_unseparated(", ''))");
    }
    query.build().execute(conn).await.map(|_| ())
}

/// Notes that an event failed transiently and waits for attempt `attempts + 1`.
pub async fn record_attempt<'e>(
    executor: impl MySqlExecutor<'e>,
    (event_id, source): EventRef<'_>,
    event_type: Option<&str>,
    attempts: u32,
    error_kind: &str,
    error: &str,
    next_attempt_at: Option<DateTime<Utc>>,
) -> sqlx::Result<()> {
    let now = Utc::now();
    sqlx::query(
        "insert into event_attempts (event_id, source, type, attempts, error_kind, last_error, first_failed_at, next_attempt_at, updated_at) \
         values (?, ?, ?, ?, ?, ?, ?, ?, ?) \
         on duplicate key update attempts = greatest(attempts, values(attempts)), error_kind = values(error_kind), \
         last_error = values(last_error), next_attempt_at = values(next_attempt_at), updated_at = values(updated_at)",
    )
    .bind(event_id)
    .bind(source)
    .bind(event_type)
    .bind(attempts)
    .bind(error_kind)
    .bind(error)
    .bind(now)
    .bind(next_attempt_at)
    .bind(now)
    .execute(executor)
    .await
    .map(|_| ())
}

/// Where an outbox message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// The notifications exchange: what the system did.
    Notifications,
    /// The events exchange: follow-up events (rule actions).
    Events,
    /// Straight into the tasks queue: internal messages that start a run.
    Tasks,
}

impl Destination {
    pub fn as_str(self) -> &'static str {
        match self {
            Destination::Notifications => "notifications",
            Destination::Events => "events",
            Destination::Tasks => "tasks",
        }
    }

    pub fn parse(s: &str) -> Option<Destination> {
        match s {
            "notifications" => Some(Destination::Notifications),
            "events" => Some(Destination::Events),
            "tasks" => Some(Destination::Tasks),
            _ => None,
        }
    }
}

/// A message to publish once the transaction that wrote it commits.
#[derive(Debug, Clone)]
pub struct OutboxMessage {
    /// The CloudEvent id: stable, so a republish after a crash can be recognised downstream.
    pub message_id: Uuid,
    pub destination: Destination,
    pub routing_key: String,
    pub body: Vec<u8>,
    /// A notification's second destination: the API reply queue of a request waiting for its
    /// cause (`Envelope::reply_to`), sent a copy through the default exchange.
    pub reply_to: Option<String>,
}

pub async fn insert_outbox(conn: &mut MySqlConnection, messages: &[OutboxMessage]) -> sqlx::Result<()> {
    for chunk in super::statement_chunks(messages) {
        let mut insert =
            QueryBuilder::new("insert into outbox (message_id, destination, routing_key, body, reply_to) ");
        insert.push_values(chunk, |mut row, m| {
            row.push_bind(m.message_id.hyphenated())
                .push_bind(m.destination.as_str())
                .push_bind(m.routing_key.clone())
                .push_bind(m.body.clone())
                .push_bind(m.reply_to.clone());
        });
        insert.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// An outbox row leased for publishing.
#[derive(Debug, Clone, FromRow)]
pub struct OutboxRow {
    pub id: u64,
    pub message_id: String,
    pub destination: String,
    pub routing_key: String,
    pub body: Vec<u8>,
    pub reply_to: Option<String>,
}

/// Leases up to `limit` rows left unpublished for `min_age_secs` (their writer died before
/// publishing them) or whose lease expired, to `owner` for `lease_secs`, oldest first, skipping
/// rows another relay is leasing right now. The transaction is short and publishes nothing, so
/// when two relays deadlock here the loser just tries again.
pub async fn lease_outbox(
    pool: &MySqlPool,
    owner: Uuid,
    limit: u32,
    min_age_secs: u32,
    lease_secs: u32,
) -> sqlx::Result<Vec<OutboxRow>> {
    let mut tx = pool.begin().await?;
    let rows: Vec<OutboxRow> = sqlx::query_as(
        "select id, message_id, destination, routing_key, body, reply_to from outbox \
         where (lease_until is null and created_at < now(6) - interval ? second) or lease_until < now(6) \
         order by id limit ? for update skip locked",
    )
    .bind(min_age_secs)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    if !rows.is_empty() {
        let mut lease = QueryBuilder::new("update outbox set lease_owner = ");
        lease.push_bind(owner.hyphenated());
        lease.push(", lease_until = now(6) + interval ").push_bind(lease_secs).push(" second where id in (");
        let mut ids = lease.separated(", ");
        for row in &rows {
            ids.push_bind(row.id);
        }
        lease.push(")");
        lease.build().execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(rows)
}

/// Deletes published rows that are still leased to `owner`.
pub async fn delete_leased(pool: &MySqlPool, owner: Uuid, ids: &[u64]) -> sqlx::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut query = QueryBuilder::new("delete from outbox where lease_owner = ");
    query.push_bind(owner.hyphenated());
    query.push(" and id in (");
    let mut list = query.separated(", ");
    for id in ids {
        list.push_bind(*id);
    }
    query.push(")");
    query.build().execute(pool).await.map(|_| ())
}

/// The outbox as readiness reports it: rows waiting to be published, and the age in seconds of
/// the oldest.
pub async fn outbox_backlog(pool: &MySqlPool) -> sqlx::Result<(u64, u64)> {
    let (rows, oldest): (i64, Option<i64>) =
        sqlx::query_as("select count(*), timestampdiff(second, min(created_at), current_timestamp(6)) from outbox")
            .fetch_one(pool)
            .await?;
    Ok((rows.max(0) as u64, oldest.unwrap_or(0).max(0) as u64))
}

/// Deletes published rows by message id (the writer's own rows, published right after its
/// commit).
///
/// Through the message id's index, by force: on a small outbox (a few hundred rows, the usual
/// size) MariaDB and MySQL chose a scan of the table for a hundred ids, and a scanning delete
/// locks every row it passes, including the rows a consumer's open transaction has just
/// inserted. The delete then waited for that transaction, and the consumer's next inserts for
/// the delete: batches took five times as long with the database idle (`BENCH_SQL=1 make bench`).
pub async fn delete_published(pool: &MySqlPool, message_ids: &[Uuid]) -> sqlx::Result<()> {
    if message_ids.is_empty() {
        return Ok(());
    }
    // The multi-table form is the one that takes an index hint in both MySQL 8 and MariaDB.
    let mut query = QueryBuilder::new("delete o from outbox as o force index (outbox_message) where o.message_id in (");
    let mut list = query.separated(", ");
    for id in message_ids {
        list.push_bind(id.hyphenated());
    }
    query.push(")");
    query.build().execute(pool).await.map(|_| ())
}

/// The state of an event as `GET /api/v1/events/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventStatus {
    pub event_id: String,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    pub status: EventState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The machine-readable reason of a refusal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason_code: Option<RejectCode>,
    /// Each rule that ran on it: matched or not, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub rules: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processed_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub actor_id: Option<String>,
    /// The entity it changed (`approval`, `workflow`, ...) and its id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entity: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entity_id: Option<String>,
}

impl EventStatus {
    /// Only the id and where it stands: for callers who may not see what the event was.
    pub fn bare(self) -> EventStatus {
        EventStatus {
            event_id: self.event_id,
            event_type: None,
            status: self.status,
            detail: None,
            reason_code: None,
            rules: None,
            processed_at: None,
            actor_id: None,
            entity: None,
            entity_id: None,
        }
    }
}

#[derive(FromRow)]
struct InboxStatusRow {
    #[sqlx(rename = "type")]
    event_type: String,
    outcome: String,
    reason_code: Option<String>,
    reason: Option<String>,
    rules: Option<Json<Value>>,
    processed_at: DateTime<Utc>,
    actor_id: Option<String>,
    entity: Option<String>,
    entity_id: Option<String>,
}

/// A stored refusal code, or `None` for one this build does not know (written by a newer worker
/// during a rolling update): the status still says `rejected`, with its reason.
fn known_code(code: &str) -> Option<RejectCode> {
    let known = RejectCode::parse(code);
    if known.is_none() {
        tracing::warn!(reason_code = %code, "an inbox row holds a refusal code this build does not know");
    }
    known
}

/// Looks the event up in the inbox, then the dead-letter store, then the retry bookkeeping.
/// Not found anywhere means `pending`: published, not processed yet.
///
/// Ids are unique per source: with `source` only that source's event counts; without, the
/// system's own event of that id comes first (an outsider reusing the id of an API event cannot
/// change what its status reads), then the latest.
pub async fn status(conn: &mut MySqlConnection, event_id: &str, source: Option<&str>) -> sqlx::Result<EventStatus> {
    let mut status = EventStatus {
        event_id: event_id.to_string(),
        event_type: None,
        status: EventState::Pending,
        detail: None,
        reason_code: None,
        rules: None,
        processed_at: None,
        actor_id: None,
        entity: None,
        entity_id: None,
    };
    let inbox: Option<InboxStatusRow> = sqlx::query_as(
        "select type, outcome, reason_code, reason, rules, processed_at, actor_id, entity, entity_id from inbox \
         where event_id = ? and (? is null or source = ?) \
         order by source like '/automation-engine%' desc, processed_at desc limit 1",
    )
    .bind(event_id)
    .bind(source)
    .bind(source)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(row) = inbox {
        status.status =
            if row.outcome == Outcome::Rejected.as_str() { EventState::Rejected } else { EventState::Processed };
        status.event_type = Some(row.event_type);
        status.detail = row.reason;
        status.reason_code = row.reason_code.as_deref().and_then(known_code);
        status.rules = row.rules.map(|j| j.0);
        status.processed_at = Some(row.processed_at);
        status.actor_id = row.actor_id;
        status.entity = row.entity;
        status.entity_id = row.entity_id;
        return Ok(status);
    }
    let dead: Option<(Option<String>, String, String)> =
        sqlx::query_as("select type, reason, state from dead_letters where event_id = ? order by seq desc limit 1")
            .bind(event_id)
            .fetch_optional(&mut *conn)
            .await?;
    if let Some((event_type, reason, state)) = dead
        && state != "replayed"
    {
        status.status = EventState::DeadLettered;
        status.event_type = event_type;
        status.detail = Some(reason);
        return Ok(status);
    }
    let retrying: Option<(Option<String>, u32, String)> = sqlx::query_as(
        "select type, attempts, last_error from event_attempts where event_id = ? and (? is null or source = ?) \
             order by source like '/automation-engine%' desc, updated_at desc limit 1",
    )
    .bind(event_id)
    .bind(source)
    .bind(source)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some((event_type, attempts, error)) = retrying {
        status.status = EventState::Retrying;
        status.event_type = event_type;
        status.detail = Some(format!("attempt {attempts} failed: {error}"));
        return Ok(status);
    }
    // Waiting in order, for an entity it names or behind an earlier event on its entity.
    let waiting: Option<(String, String, Option<String>)> = sqlx::query_as(
        "select type, entity_key, detail from deferred_events where event_id = ? \
         and state in ('waiting', 'queued') order by seq limit 1",
    )
    .bind(event_id)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some((event_type, key, detail)) = waiting {
        status.event_type = Some(event_type);
        status.detail = Some(match detail {
            Some(reason) => format!("waiting for what it names to appear: {reason}"),
            None => format!("waiting behind an earlier event on {key}"),
        });
    }
    Ok(status)
}
