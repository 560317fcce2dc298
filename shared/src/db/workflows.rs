//! Workflows: the row as clients see it, and the queries both binaries use.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, MySqlExecutor};
use utoipa::ToSchema;
use uuid::Uuid;
use uuid::fmt::Hyphenated;

use crate::lifecycle::WorkflowStatus;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Workflow {
    #[serde(skip)]
    pub seq: u64,
    #[sqlx(try_from = "Hyphenated")]
    pub id: Uuid,
    pub name: String,
    pub description: Option<String>,
    #[sqlx(try_from = "String")]
    #[schema(value_type = String, example = "ACTIVE")]
    pub status: WorkflowStatus,
    /// Hours an approval may stay open before it counts as past its SLA.
    pub approval_sla_hours: Option<u32>,
    /// Raised by every change; send it back as `expectedVersion` to refuse stale updates.
    pub version: u32,
    pub created_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

macro_rules! select_workflows {
    ($rest:literal) => {
        concat!(
            "select seq, id, name, description, status, approval_sla_hours, version, created_by, created_at, updated_at from workflows ",
            $rest
        )
    };
}
/// The select list with `from`, for queries that add their own filters.
pub const SELECT: &str = select_workflows!("");

pub async fn find<'e>(
    executor: impl MySqlExecutor<'e>,
    id: Uuid,
) -> sqlx::Result<Option<Workflow>> {
    sqlx::query_as(select_workflows!("where id = ?"))
        .bind(id.hyphenated())
        .fetch_optional(executor)
        .await
}

/// Reads and locks the row until the transaction ends.
pub async fn find_for_update<'e>(
    executor: impl MySqlExecutor<'e>,
    id: Uuid,
) -> sqlx::Result<Option<Workflow>> {
    sqlx::query_as(select_workflows!("where id = ? for update"))
        .bind(id.hyphenated())
        .fetch_optional(executor)
        .await
}

/// Reads with a shared lock: nobody may change the row until the transaction ends.
pub async fn find_for_share<'e>(
    executor: impl MySqlExecutor<'e>,
    id: Uuid,
) -> sqlx::Result<Option<Workflow>> {
    // `lock in share mode` is spelled the same on MySQL 8 and MariaDB.
    sqlx::query_as(select_workflows!("where id = ? lock in share mode"))
        .bind(id.hyphenated())
        .fetch_optional(executor)
        .await
}

pub async fn insert<'e>(executor: impl MySqlExecutor<'e>, w: &Workflow) -> sqlx::Result<()> {
    sqlx::query(
        "insert into workflows (id, name, description, status, approval_sla_hours, version, created_by, created_at, updated_at) \
         values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(w.id.hyphenated())
    .bind(&w.name)
    .bind(&w.description)
    .bind(w.status.as_str())
    .bind(w.approval_sla_hours)
    .bind(w.version)
    .bind(&w.created_by)
    .bind(w.created_at)
    .bind(w.updated_at)
    .execute(executor)
    .await
    .map(|_| ())
}

pub async fn update_status<'e>(executor: impl MySqlExecutor<'e>, w: &Workflow) -> sqlx::Result<()> {
    sqlx::query("update workflows set status = ?, version = ?, updated_at = ? where id = ?")
        .bind(w.status.as_str())
        .bind(w.version)
        .bind(w.updated_at)
        .bind(w.id.hyphenated())
        .execute(executor)
        .await
        .map(|_| ())
}
