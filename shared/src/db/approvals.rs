//! Approvals: the row as clients see it, and the queries both binaries use.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{FromRow, MySqlConnection, MySqlExecutor, QueryBuilder};
use utoipa::ToSchema;
use uuid::Uuid;
use uuid::fmt::Hyphenated;

use super::Lock;
use crate::lifecycle::ApprovalStatus;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Approval {
    #[serde(skip)]
    pub seq: u64,
    #[sqlx(try_from = "Hyphenated")]
    pub id: Uuid,
    #[sqlx(try_from = "Hyphenated")]
    pub workflow_id: Uuid,
    pub title: String,
    pub amount: Option<f64>,
    pub currency: Option<String>,
    #[sqlx(try_from = "Hyphenated")]
    pub requester_id: Uuid,
    #[sqlx(try_from = "String")]
    pub status: ApprovalStatus,
    /// Who decided: a user id, or `rule:<id>` when a rule did.
    pub decided_by: Option<String>,
    pub reason: Option<String>,
    /// The role or user an escalation went to.
    pub escalated_to: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub details: Option<Json<Value>>,
    /// Raised by every change; send it back as `expectedVersion` to refuse stale decisions.
    pub version: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub decided_at: Option<DateTime<Utc>>,
    pub escalated_at: Option<DateTime<Utc>>,
}

// DECIMAL does not decode as f64; the cast keeps the column exact and the API simple.
macro_rules! select_approvals {
    ($rest:literal) => {
        concat!(
            "select seq, id, workflow_id, title, cast(amount as double) as amount, currency, requester_id, status, \
             decided_by, reason, escalated_to, details, version, created_at, updated_at, decided_at, escalated_at \
             from approvals ",
            $rest
        )
    };
}
/// The select list with `from`, for queries that add their own filters.
pub const SELECT: &str = select_approvals!("");

pub async fn find<'e>(executor: impl MySqlExecutor<'e>, id: Uuid) -> sqlx::Result<Option<Approval>> {
    sqlx::query_as(select_approvals!("where id = ?")).bind(id.hyphenated()).fetch_optional(executor).await
}

/// Reads and locks the row until the transaction ends.
pub async fn find_for_update<'e>(executor: impl MySqlExecutor<'e>, id: Uuid) -> sqlx::Result<Option<Approval>> {
    sqlx::query_as(select_approvals!("where id = ? for update")).bind(id.hyphenated()).fetch_optional(executor).await
}

pub async fn insert<'e>(executor: impl MySqlExecutor<'e>, a: &Approval) -> sqlx::Result<()> {
    sqlx::query(
        "insert into approvals (id, workflow_id, title, amount, currency, requester_id, status, details, version, \
         created_at, updated_at) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(a.id.hyphenated())
    .bind(a.workflow_id.hyphenated())
    .bind(&a.title)
    .bind(a.amount)
    .bind(&a.currency)
    .bind(a.requester_id.hyphenated())
    .bind(a.status.as_str())
    .bind(&a.details)
    .bind(a.version)
    .bind(a.created_at)
    .bind(a.updated_at)
    .execute(executor)
    .await
    .map(|_| ())
}

/// Writes a decision or an escalation.
pub async fn update_decision<'e>(executor: impl MySqlExecutor<'e>, a: &Approval) -> sqlx::Result<()> {
    sqlx::query(
        "update approvals set status = ?, decided_by = ?, reason = ?, escalated_to = ?, version = ?, updated_at = ?, \
         decided_at = ?, escalated_at = ? where id = ?",
    )
    .bind(a.status.as_str())
    .bind(&a.decided_by)
    .bind(&a.reason)
    .bind(&a.escalated_to)
    .bind(a.version)
    .bind(a.updated_at)
    .bind(a.decided_at)
    .bind(a.escalated_at)
    .bind(a.id.hyphenated())
    .execute(executor)
    .await
    .map(|_| ())
}

/// Loads and locks the approvals with these ids.
pub async fn load_many(conn: &mut MySqlConnection, ids: &[Uuid], lock: Lock) -> sqlx::Result<Vec<Approval>> {
    super::load_by_ids(conn, SELECT, "id", ids, lock).await
}

/// Inserts new approvals in one statement.
pub async fn insert_many(conn: &mut MySqlConnection, rows: &[&Approval]) -> sqlx::Result<()> {
    for chunk in rows.chunks(500) {
        let mut insert = QueryBuilder::new(
            "insert into approvals (id, workflow_id, title, amount, currency, requester_id, status, decided_by, reason, \
             escalated_to, details, version, created_at, updated_at, decided_at, escalated_at) ",
        );
        insert.push_values(chunk, |mut row, a| {
            row.push_bind(a.id.hyphenated())
                .push_bind(a.workflow_id.hyphenated())
                .push_bind(a.title.clone())
                .push_bind(a.amount)
                .push_bind(a.currency.clone())
                .push_bind(a.requester_id.hyphenated())
                .push_bind(a.status.as_str())
                .push_bind(a.decided_by.clone())
                .push_bind(a.reason.clone())
                .push_bind(a.escalated_to.clone())
                .push_bind(a.details.clone())
                .push_bind(a.version)
                .push_bind(a.created_at)
                .push_bind(a.updated_at)
                .push_bind(a.decided_at)
                .push_bind(a.escalated_at);
        });
        insert.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Writes decisions and escalations of changed approvals in one statement.
pub async fn update_many(conn: &mut MySqlConnection, rows: &[&Approval]) -> sqlx::Result<()> {
    for chunk in rows.chunks(100) {
        let mut update = QueryBuilder::new("update approvals set ");
        let id = |a: &Approval| a.id;
        super::push_case(&mut update, "status", chunk, id, |q, a| {
            q.push_bind(a.status.as_str());
        });
        update.push(", ");
        super::push_case(&mut update, "decided_by", chunk, id, |q, a| {
            q.push_bind(a.decided_by.clone());
        });
        update.push(", ");
        super::push_case(&mut update, "reason", chunk, id, |q, a| {
            q.push_bind(a.reason.clone());
        });
        update.push(", ");
        super::push_case(&mut update, "escalated_to", chunk, id, |q, a| {
            q.push_bind(a.escalated_to.clone());
        });
        update.push(", ");
        super::push_case(&mut update, "version", chunk, id, |q, a| {
            q.push_bind(a.version);
        });
        update.push(", ");
        super::push_case(&mut update, "updated_at", chunk, id, |q, a| {
            q.push_bind(a.updated_at);
        });
        update.push(", ");
        super::push_case(&mut update, "decided_at", chunk, id, |q, a| {
            q.push_bind(a.decided_at);
        });
        update.push(", ");
        super::push_case(&mut update, "escalated_at", chunk, id, |q, a| {
            q.push_bind(a.escalated_at);
        });
        super::push_where_ids(&mut update, chunk, id);
        update.build().execute(&mut *conn).await?;
    }
    Ok(())
}
