//! Held entity keys and the events queued behind them (docs/architecture.md, "Ordering"): the
//! rows that keep per-entity order while an event waits for an entity it names or for another
//! attempt after a transient failure.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{FromRow, MySqlConnection, MySqlPool, QueryBuilder};

/// Why a deferred event waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeferredState {
    /// For an entity it names that does not exist yet.
    Waiting,
    /// Behind an earlier event on its key.
    Queued,
    /// For another attempt after a transient failure.
    Retrying,
}

impl DeferredState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeferredState::Waiting => "waiting",
            DeferredState::Queued => "queued",
            DeferredState::Retrying => "retrying",
        }
    }
}

/// An event to queue behind its key.
#[derive(Debug, Clone)]
pub struct NewDeferred {
    pub entity_key: String,
    /// The key's partition (recorded on the hold).
    pub partition: u16,
    pub event_id: String,
    pub event_type: String,
    pub routing_key: String,
    /// The AMQP properties, as lapin serialises them: restored exactly.
    pub properties: serde_json::Value,
    pub body: Vec<u8>,
    pub attempt: u32,
    pub state: DeferredState,
    pub detail: Option<String>,
    pub not_before: DateTime<Utc>,
    pub wait_until: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
}

/// A deferred event as stored.
#[derive(Debug, Clone, FromRow)]
pub struct Deferred {
    pub seq: u64,
    pub entity_key: String,
    pub event_id: String,
    #[sqlx(rename = "type")]
    pub event_type: String,
    pub routing_key: String,
    pub properties: Json<serde_json::Value>,
    pub body: Vec<u8>,
    pub attempt: u32,
    pub state: String,
    pub detail: Option<String>,
    pub not_before: DateTime<Utc>,
    pub wait_until: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
}

/// A held key, and why its first event waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub entity_key: String,
    /// The first event waits for an entity (`true`) rather than for another attempt.
    pub waiting: bool,
}

/// Which of `keys` are held, locking those holds until the transaction ends (in key order, so
/// concurrent transactions lock them in the same order).
pub async fn lock_held(conn: &mut MySqlConnection, keys: &[&str]) -> sqlx::Result<Vec<Hold>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let mut query = QueryBuilder::new("select entity_key, state from entity_holds where entity_key in (");
    let mut separated = query.separated(", ");
    for key in keys {
        separated.push_bind(*key);
    }
    query.push(") order by entity_key for update");
    let rows: Vec<(String, String)> = query.build_query_as().fetch_all(&mut *conn).await?;
    Ok(rows
        .into_iter()
        .map(|(entity_key, state)| Hold { entity_key, waiting: state == DeferredState::Waiting.as_str() })
        .collect())
}

/// Holds `entity_key`s that were not held (due at `not_before`, for the reason of their first
/// event), and queues `events` behind their keys, in order.
pub async fn insert(
    conn: &mut MySqlConnection,
    new_holds: &[(&str, u16, DateTime<Utc>, DeferredState)],
    events: &[NewDeferred],
) -> sqlx::Result<()> {
    if !new_holds.is_empty() {
        let mut insert = QueryBuilder::new("insert into entity_holds (entity_key, `partition`, not_before, state) ");
        insert.push_values(new_holds, |mut row, (key, partition, not_before, state)| {
            row.push_bind(*key).push_bind(*partition).push_bind(*not_before).push_bind(state.as_str());
        });
        insert.build().execute(&mut *conn).await?;
    }
    for chunk in events.chunks(200) {
        let mut insert = QueryBuilder::new(
            "insert into deferred_events (entity_key, event_id, type, routing_key, properties, body, attempt, state, \
             detail, not_before, wait_until, received_at) ",
        );
        insert.push_values(chunk, |mut row, e| {
            row.push_bind(e.entity_key.clone())
                .push_bind(e.event_id.clone())
                .push_bind(e.event_type.clone())
                .push_bind(e.routing_key.clone())
                .push_bind(Json(e.properties.clone()))
                .push_bind(e.body.clone())
                .push_bind(e.attempt)
                .push_bind(e.state.as_str())
                .push_bind(e.detail.clone())
                .push_bind(e.not_before)
                .push_bind(e.wait_until)
                .push_bind(e.received_at);
        });
        insert.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Which of `partitions` have a held key.
pub async fn held_partitions(pool: &MySqlPool, partitions: &[u16]) -> sqlx::Result<std::collections::HashSet<u16>> {
    if partitions.is_empty() {
        return Ok(Default::default());
    }
    let mut query = QueryBuilder::new("select distinct `partition` from entity_holds where `partition` in (");
    let mut separated = query.separated(", ");
    for partition in partitions {
        separated.push_bind(*partition);
    }
    query.push(")");
    let rows: Vec<u16> = query.build_query_scalar().fetch_all(pool).await?;
    Ok(rows.into_iter().collect())
}

/// Held keys whose first event is due, oldest first.
pub async fn due_keys(pool: &MySqlPool, limit: u32) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar("select entity_key from entity_holds where not_before <= ? order by not_before limit ?")
        .bind(Utc::now())
        .bind(limit)
        .fetch_all(pool)
        .await
}

/// The first `limit` events queued behind `keys`, in order (per key, a prefix of its queue: the
/// rest waits for the next sweep).
pub async fn queued(conn: &mut MySqlConnection, keys: &[&str], limit: u32) -> sqlx::Result<Vec<Deferred>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let mut query = QueryBuilder::new(
        "select seq, entity_key, event_id, type, routing_key, properties, body, attempt, state, detail, not_before, \
         wait_until, received_at from deferred_events where entity_key in (",
    );
    let mut separated = query.separated(", ");
    for key in keys {
        separated.push_bind(*key);
    }
    query.push(") order by seq limit ");
    query.push_bind(limit);
    query.build_query_as().fetch_all(&mut *conn).await
}

/// The other events stored behind `entity_key` under `event_id` (copies of the event `seq`, or
/// another source's event that happens to use the same id: the caller tells them apart).
pub async fn same_id(
    conn: &mut MySqlConnection,
    entity_key: &str,
    event_id: &str,
    seq: u64,
) -> sqlx::Result<Vec<Deferred>> {
    sqlx::query_as(
        "select seq, entity_key, event_id, type, routing_key, properties, body, attempt, state, detail, not_before, \
         wait_until, received_at from deferred_events where entity_key = ? and event_id = ? and seq <> ? order by seq",
    )
    .bind(entity_key)
    .bind(event_id)
    .bind(seq)
    .fetch_all(&mut *conn)
    .await
}

/// Removes the deferred events `seqs` (applied, refused, duplicates or dead-lettered).
pub async fn remove(conn: &mut MySqlConnection, seqs: &[u64]) -> sqlx::Result<()> {
    for chunk in seqs.chunks(500) {
        let mut delete = QueryBuilder::new("delete from deferred_events where seq in (");
        let mut separated = delete.separated(", ");
        for seq in chunk {
            separated.push_bind(*seq);
        }
        delete.push(")");
        delete.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Puts a deferred event off again: its due time, state and detail, and (after a failed
/// attempt) its next attempt and the properties that carry its history.
pub async fn postpone(
    conn: &mut MySqlConnection,
    seq: u64,
    attempt: Option<u32>,
    state: DeferredState,
    detail: Option<&str>,
    not_before: DateTime<Utc>,
    properties: Option<&serde_json::Value>,
) -> sqlx::Result<()> {
    sqlx::query(
        "update deferred_events set attempt = coalesce(?, attempt), state = ?, detail = ?, not_before = ?, \
         properties = coalesce(?, properties) where seq = ?",
    )
    .bind(attempt)
    .bind(state.as_str())
    .bind(detail)
    .bind(not_before)
    .bind(properties.map(|p| Json(p.clone())))
    .bind(seq)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Which of the deferred events `seqs` are still stored.
pub async fn present(conn: &mut MySqlConnection, seqs: &[u64]) -> sqlx::Result<std::collections::HashSet<u64>> {
    if seqs.is_empty() {
        return Ok(Default::default());
    }
    let mut query = QueryBuilder::new("select seq from deferred_events where seq in (");
    let mut separated = query.separated(", ");
    for seq in seqs {
        separated.push_bind(*seq);
    }
    query.push(")");
    let rows: Vec<u64> = query.build_query_scalar().fetch_all(&mut *conn).await?;
    Ok(rows.into_iter().collect())
}

/// Holds `key` if it is not held yet (locking the hold), and queues one event behind it: what a
/// transiently failing event does outside its batch.
pub async fn hold_and_queue(conn: &mut MySqlConnection, event: &NewDeferred) -> sqlx::Result<()> {
    let held = lock_held(conn, &[event.entity_key.as_str()]).await?;
    let new_hold = [(event.entity_key.as_str(), event.partition, event.not_before, event.state)];
    insert(conn, if held.is_empty() { &new_hold } else { &[] }, std::slice::from_ref(event)).await
}

/// After the events of `keys` changed: a key with nothing queued is released, the others are
/// due when their first event is.
pub async fn refresh_holds(conn: &mut MySqlConnection, keys: &[&str]) -> sqlx::Result<()> {
    for key in keys {
        let head: Option<(DateTime<Utc>, String)> =
            sqlx::query_as("select not_before, state from deferred_events where entity_key = ? order by seq limit 1")
                .bind(*key)
                .fetch_optional(&mut *conn)
                .await?;
        match head {
            Some((not_before, state)) => {
                sqlx::query("update entity_holds set not_before = ?, state = ? where entity_key = ?")
                    .bind(not_before)
                    .bind(state)
                    .bind(*key)
                    .execute(&mut *conn)
                    .await?;
            }
            None => {
                sqlx::query("delete from entity_holds where entity_key = ?").bind(*key).execute(&mut *conn).await?;
            }
        }
    }
    Ok(())
}

/// How many events wait behind held keys (a gauge for `/metrics` and the readiness detail).
pub async fn backlog(pool: &MySqlPool) -> sqlx::Result<i64> {
    sqlx::query_scalar("select count(*) from deferred_events").fetch_one(pool).await
}
