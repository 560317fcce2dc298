//! Automation runs (CONTRACT §7): their states and the queries both binaries use.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{FromRow, MySqlConnection, MySqlExecutor, QueryBuilder};
use utoipa::ToSchema;
use uuid::Uuid;
use uuid::fmt::Hyphenated;

use super::Lock;
use crate::lifecycle::UnknownStatus;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Queued,
    Scheduled,
    Running,
    Succeeded,
    Failed,
    Retrying,
    Cancelled,
}

impl RunState {
    pub const ALL: [RunState; 7] = [
        RunState::Queued,
        RunState::Scheduled,
        RunState::Running,
        RunState::Succeeded,
        RunState::Failed,
        RunState::Retrying,
        RunState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Scheduled => "scheduled",
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Retrying => "retrying",
            RunState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<RunState> {
        RunState::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Nothing happens to a run in these states any more.
    pub fn is_final(self) -> bool {
        matches!(self, RunState::Succeeded | RunState::Failed | RunState::Cancelled)
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for RunState {
    type Error = UnknownStatus;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        RunState::parse(&value).ok_or(UnknownStatus(value))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Run {
    #[serde(skip)]
    pub seq: u64,
    #[sqlx(try_from = "Hyphenated")]
    pub id: Uuid,
    pub automation: String,
    #[schema(value_type = Option<Object>)]
    pub params: Option<Json<Value>>,
    #[sqlx(try_from = "String")]
    pub state: RunState,
    pub attempts: u32,
    pub max_attempts: u32,
    #[schema(value_type = Option<Object>)]
    pub result: Option<Json<Value>>,
    pub error: Option<String>,
    /// Not before this time (a countdown or `runAt`).
    pub run_at: Option<DateTime<Utc>>,
    pub event_id: Option<String>,
    pub schedule_name: Option<String>,
    pub requested_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    /// The W3C trace context of the event that asked for the run: each attempt continues it.
    #[serde(skip)]
    pub traceparent: Option<String>,
    #[serde(skip)]
    pub tracestate: Option<String>,
}

/// The longest trace context values a run keeps (its columns).
pub const MAX_TRACEPARENT: usize = 128;
pub const MAX_TRACESTATE: usize = 512;

macro_rules! select_runs {
    ($rest:literal) => {
        concat!(
            "select seq, id, automation, params, state, attempts, max_attempts, result, error, run_at, event_id, \
             schedule_name, requested_by, created_at, started_at, finished_at, updated_at, traceparent, tracestate \
             from automation_runs ",
            $rest
        )
    };
}
/// The select list with `from`, for queries that add their own filters.
pub const SELECT: &str = select_runs!("");

pub async fn find<'e>(executor: impl MySqlExecutor<'e>, id: Uuid) -> sqlx::Result<Option<Run>> {
    sqlx::query_as(select_runs!("where id = ?")).bind(id.hyphenated()).fetch_optional(executor).await
}

pub async fn find_for_update<'e>(executor: impl MySqlExecutor<'e>, id: Uuid) -> sqlx::Result<Option<Run>> {
    sqlx::query_as(select_runs!("where id = ? for update")).bind(id.hyphenated()).fetch_optional(executor).await
}

pub async fn insert<'e>(executor: impl MySqlExecutor<'e>, r: &Run) -> sqlx::Result<()> {
    sqlx::query(
        "insert into automation_runs (id, automation, params, state, attempts, max_attempts, run_at, event_id, \
         schedule_name, requested_by, created_at, updated_at, traceparent, tracestate) \
         values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(r.id.hyphenated())
    .bind(&r.automation)
    .bind(&r.params)
    .bind(r.state.as_str())
    .bind(r.attempts)
    .bind(r.max_attempts)
    .bind(r.run_at)
    .bind(&r.event_id)
    .bind(&r.schedule_name)
    .bind(&r.requested_by)
    .bind(r.created_at)
    .bind(r.updated_at)
    .bind(&r.traceparent)
    .bind(&r.tracestate)
    .execute(executor)
    .await
    .map(|_| ())
}

/// Writes the mutable part of a run.
pub async fn update<'e>(executor: impl MySqlExecutor<'e>, r: &Run) -> sqlx::Result<()> {
    sqlx::query(
        "update automation_runs set state = ?, attempts = ?, result = ?, error = ?, run_at = ?, started_at = ?, \
         finished_at = ?, updated_at = ? where id = ?",
    )
    .bind(r.state.as_str())
    .bind(r.attempts)
    .bind(&r.result)
    .bind(&r.error)
    .bind(r.run_at)
    .bind(r.started_at)
    .bind(r.finished_at)
    .bind(r.updated_at)
    .bind(r.id.hyphenated())
    .execute(executor)
    .await
    .map(|_| ())
}

/// Loads and locks the runs with these ids.
pub async fn load_many(conn: &mut MySqlConnection, ids: &[Uuid], lock: Lock) -> sqlx::Result<Vec<Run>> {
    super::load_by_ids(conn, SELECT, "id", ids, lock).await
}

/// Inserts new runs in one statement.
pub async fn insert_many(conn: &mut MySqlConnection, rows: &[&Run]) -> sqlx::Result<()> {
    for chunk in rows.chunks(500) {
        let mut insert = QueryBuilder::new(
            "insert into automation_runs (id, automation, params, state, attempts, max_attempts, result, error, run_at, \
             event_id, schedule_name, requested_by, created_at, started_at, finished_at, updated_at, traceparent, \
             tracestate) ",
        );
        insert.push_values(chunk, |mut row, r| {
            row.push_bind(r.id.hyphenated())
                .push_bind(r.automation.clone())
                .push_bind(r.params.clone())
                .push_bind(r.state.as_str())
                .push_bind(r.attempts)
                .push_bind(r.max_attempts)
                .push_bind(r.result.clone())
                .push_bind(r.error.clone())
                .push_bind(r.run_at)
                .push_bind(r.event_id.clone())
                .push_bind(r.schedule_name.clone())
                .push_bind(r.requested_by.clone())
                .push_bind(r.created_at)
                .push_bind(r.started_at)
                .push_bind(r.finished_at)
                .push_bind(r.updated_at)
                .push_bind(r.traceparent.clone())
                .push_bind(r.tracestate.clone());
        });
        insert.build().execute(&mut *conn).await?;
    }
    Ok(())
}
