//! The dead-letter store (CONTRACT §8): each dead message kept whole, with filters for ops.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{FromRow, MySql, MySqlExecutor, MySqlPool, QueryBuilder};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use uuid::fmt::Hyphenated;

/// What ops see in a list (`dlq list --json`, the admin API).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterSummary {
    #[serde(skip)]
    pub seq: u64,
    #[sqlx(try_from = "Hyphenated")]
    pub id: Uuid,
    pub event_id: Option<String>,
    #[serde(rename = "type")]
    #[sqlx(rename = "type")]
    pub event_type: Option<String>,
    pub reason: String,
    /// `poison`, `exhausted` (ran out of attempts) or `delivery_limit` (redelivered too often,
    /// e.g. it crashed the worker each time).
    pub error_kind: String,
    pub origin_queue: Option<String>,
    pub routing_key: String,
    pub attempts: u32,
    pub first_failed_at: DateTime<Utc>,
    pub dead_at: DateTime<Utc>,
    /// `dead`, `replayed` or `discarded`.
    pub state: String,
}

/// One dead letter, whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub summary: DeadLetterSummary,
    pub exchange: Option<String>,
    /// content type, message id, type, user id, headers.
    #[schema(value_type = Object)]
    pub properties: Json<Value>,
    /// The body as it arrived (base64 in JSON answers is not needed: bodies are text or shown
    /// lossily; `dlq show --raw` writes the exact bytes).
    #[serde(skip)]
    pub body: Vec<u8>,
    /// Set when the message was too big to keep whole: the size of its body as it arrived, of
    /// which `body` holds the first [`MAX_STORED_BODY`] bytes. Such a dead letter is not replayed.
    pub body_bytes: Option<u64>,
    /// The failures before it died, oldest first.
    #[schema(value_type = Option<Vec<Object>>)]
    pub history: Option<Json<Value>>,
    pub replay_count: u32,
    pub replayed_at: Option<DateTime<Utc>>,
    pub replayed_by: Option<String>,
    pub discarded_at: Option<DateTime<Utc>>,
    pub discarded_by: Option<String>,
}

impl DeadLetter {
    /// The body as text (lossy for binary bodies).
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A dead message arriving in the store.
#[derive(Debug, Clone)]
pub struct NewDeadLetter {
    /// Set by whoever dead-lettered it, so a redelivered copy is stored once.
    pub id: Uuid,
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub reason: String,
    pub error_kind: String,
    pub origin_queue: Option<String>,
    pub exchange: Option<String>,
    pub routing_key: String,
    pub properties: Value,
    pub body: Vec<u8>,
    /// The body's size as it arrived when `body` is only its prefix.
    pub body_bytes: Option<u64>,
    pub attempts: u32,
    pub history: Option<Value>,
    pub first_failed_at: DateTime<Utc>,
    pub dead_at: DateTime<Utc>,
}

/// The most of a dead message's body the store keeps: every insert stays far below MySQL's
/// `max_allowed_packet` (16 MiB on MariaDB, 64 MiB on MySQL 8), whatever the broker took.
pub const MAX_STORED_BODY: usize = 1024 * 1024;

/// Stores a dead letter; storing the same id again changes nothing. Returns whether it was new.
pub async fn insert<'e>(executor: impl MySqlExecutor<'e>, d: &NewDeadLetter) -> sqlx::Result<bool> {
    let result = sqlx::query(
        "insert into dead_letters (id, event_id, type, reason, error_kind, origin_queue, exchange, routing_key, properties, \
         body, body_bytes, attempts, history, first_failed_at, dead_at) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
         on duplicate key update id = id",
    )
    .bind(d.id.hyphenated())
    .bind(&d.event_id)
    .bind(&d.event_type)
    .bind(&d.reason)
    .bind(&d.error_kind)
    .bind(&d.origin_queue)
    .bind(&d.exchange)
    .bind(&d.routing_key)
    .bind(Json(&d.properties))
    .bind(&d.body)
    .bind(d.body_bytes)
    .bind(d.attempts)
    .bind(d.history.as_ref().map(Json))
    .bind(d.first_failed_at)
    .bind(d.dead_at)
    .execute(executor)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Which dead letters to act on. Every field narrows the selection.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct Filter {
    /// Exact event type, e.g. `approval.decided`.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub event_type: Option<String>,
    /// Text the reason contains, e.g. `schema_invalid`.
    pub reason: Option<String>,
    /// `poison`, `exhausted`, `delivery_limit`.
    pub error_kind: Option<String>,
    /// The queue it died in, e.g. `automation.commands`.
    pub origin_queue: Option<String>,
    /// `dead` (the default for replay and discard), `replayed`, `discarded`.
    pub state: Option<String>,
    /// Died at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Died before this time.
    pub until: Option<DateTime<Utc>>,
}

/// The states a dead letter moves through.
pub const STATES: [&str; 3] = ["dead", "replayed", "discarded"];

impl Filter {
    /// The first field that cannot be used as written, by its API name, and what it must be.
    /// Error kinds, event types and queue names are ASCII identifiers, kept in ASCII columns.
    pub fn invalid_field(&self) -> Option<(&'static str, String)> {
        if let Some(state) = &self.state
            && !STATES.contains(&state.as_str())
        {
            return Some(("state", format!("must be one of {}", STATES.join(", "))));
        }
        let identifiers =
            [("type", &self.event_type), ("errorKind", &self.error_kind), ("originQueue", &self.origin_queue)];
        identifiers
            .into_iter()
            .find(|(_, value)| value.as_deref().is_some_and(|v| !v.is_ascii()))
            .map(|(field, _)| (field, "must be ASCII, as event types, error kinds and queue names are".to_string()))
    }

    fn push_where(&self, query: &mut QueryBuilder<MySql>) {
        query.push(" where 1 = 1");
        if let Some(t) = &self.event_type {
            query.push(" and type = ").push_bind(t.clone());
        }
        if let Some(r) = &self.reason {
            query.push(" and instr(reason, ").push_bind(r.clone()).push(") > 0");
        }
        if let Some(k) = &self.error_kind {
            query.push(" and error_kind = ").push_bind(k.clone());
        }
        if let Some(q) = &self.origin_queue {
            query.push(" and origin_queue = ").push_bind(q.clone());
        }
        if let Some(s) = &self.state {
            query.push(" and state = ").push_bind(s.clone());
        }
        if let Some(since) = self.since {
            query.push(" and dead_at >= ").push_bind(since);
        }
        if let Some(until) = self.until {
            query.push(" and dead_at < ").push_bind(until);
        }
    }
}

const SUMMARY_COLUMNS: &str = "seq, id, event_id, type, reason, error_kind, origin_queue, routing_key, attempts, \
                               first_failed_at, dead_at, state";

/// Newest first; `before` is the `seq` cursor of the previous page's last item.
pub async fn list(
    pool: &MySqlPool,
    filter: &Filter,
    limit: u32,
    before: Option<u64>,
) -> sqlx::Result<Vec<DeadLetterSummary>> {
    let mut query = QueryBuilder::new(format!("select {SUMMARY_COLUMNS} from dead_letters"));
    filter.push_where(&mut query);
    if let Some(before) = before {
        query.push(" and seq < ").push_bind(before);
    }
    query.push(" order by seq desc limit ").push_bind(limit);
    query.build_query_as().fetch_all(pool).await
}

/// Oldest first, for replay in the order things died; `after` is the last `seq` handled.
pub async fn select_for_action(
    pool: &MySqlPool,
    filter: &Filter,
    limit: u32,
    after: u64,
) -> sqlx::Result<Vec<DeadLetter>> {
    let mut query = QueryBuilder::new(format!(
        "select {SUMMARY_COLUMNS}, exchange, properties, body, body_bytes, history, replay_count, replayed_at, replayed_by, \
         discarded_at, discarded_by from dead_letters"
    ));
    filter.push_where(&mut query);
    query.push(" and seq > ").push_bind(after);
    query.push(" order by seq limit ").push_bind(limit);
    query.build_query_as().fetch_all(pool).await
}

/// How many dead letters are in each state, for the gauges.
pub async fn count_by_state(pool: &MySqlPool) -> sqlx::Result<Vec<(String, i64)>> {
    sqlx::query_as("select state, count(*) from dead_letters group by state").fetch_all(pool).await
}

pub async fn count(pool: &MySqlPool, filter: &Filter) -> sqlx::Result<u64> {
    let mut query = QueryBuilder::new("select count(*) from dead_letters");
    filter.push_where(&mut query);
    let n: i64 = query.build_query_scalar().fetch_one(pool).await?;
    Ok(n.max(0) as u64)
}

pub async fn get<'e>(executor: impl MySqlExecutor<'e>, id: Uuid) -> sqlx::Result<Option<DeadLetter>> {
    sqlx::query_as(
        "select seq, id, event_id, type, reason, error_kind, origin_queue, routing_key, attempts, first_failed_at, dead_at, \
         state, exchange, properties, body, body_bytes, history, replay_count, replayed_at, replayed_by, discarded_at, discarded_by \
         from dead_letters where id = ?",
    )
    .bind(id.hyphenated())
    .fetch_optional(executor)
    .await
}

/// Marks a dead letter replayed (after the broker confirmed the republish).
pub async fn mark_replayed<'e>(executor: impl MySqlExecutor<'e>, id: Uuid, by: &str) -> sqlx::Result<bool> {
    let result = sqlx::query(
        "update dead_letters set state = 'replayed', replay_count = replay_count + 1, replayed_at = ?, replayed_by = ? \
         where id = ?",
    )
    .bind(Utc::now())
    .bind(by)
    .bind(id.hyphenated())
    .execute(executor)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Marks a dead letter discarded: kept for the record, never replayed by a filter again.
pub async fn mark_discarded<'e>(executor: impl MySqlExecutor<'e>, id: Uuid, by: &str) -> sqlx::Result<bool> {
    let result =
        sqlx::query("update dead_letters set state = 'discarded', discarded_at = ?, discarded_by = ? where id = ? and state = 'dead'")
            .bind(Utc::now())
            .bind(by)
            .bind(id.hyphenated())
            .execute(executor)
            .await?;
    Ok(result.rows_affected() == 1)
}
