//! Workflows: the row as clients see it, and the queries both binaries use.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, MySqlConnection, MySqlExecutor, QueryBuilder};
use utoipa::ToSchema;
use uuid::Uuid;
use uuid::fmt::Hyphenated;

use super::Lock;
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

pub async fn find<'e>(executor: impl MySqlExecutor<'e>, id: Uuid) -> sqlx::Result<Option<Workflow>> {
    sqlx::query_as(select_workflows!("where id = ?")).bind(id.hyphenated()).fetch_optional(executor).await
}

/// Reads and locks the row until the transaction ends.
pub async fn find_for_update<'e>(executor: impl MySqlExecutor<'e>, id: Uuid) -> sqlx::Result<Option<Workflow>> {
    sqlx::query_as(select_workflows!("where id = ? for update")).bind(id.hyphenated()).fetch_optional(executor).await
}

/// Reads with a shared lock: nobody may change the row until the transaction ends.
pub async fn find_for_share<'e>(executor: impl MySqlExecutor<'e>, id: Uuid) -> sqlx::Result<Option<Workflow>> {
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

/// Loads and locks the workflows with these ids.
pub async fn load_many(conn: &mut MySqlConnection, ids: &[Uuid], lock: Lock) -> sqlx::Result<Vec<Workflow>> {
    super::load_by_ids(conn, SELECT, "id", ids, lock).await
}

/// Inserts new workflows in one statement.
pub async fn insert_many(conn: &mut MySqlConnection, rows: &[&Workflow]) -> sqlx::Result<()> {
    for chunk in rows.chunks(500) {
        let mut insert = QueryBuilder::new(
            "insert into workflows (id, name, description, status, approval_sla_hours, version, created_by, created_at, updated_at) ",
        );
        insert.push_values(chunk, |mut row, w| {
            row.push_bind(w.id.hyphenated())
                .push_bind(w.name.clone())
                .push_bind(w.description.clone())
                .push_bind(w.status.as_str())
                .push_bind(w.approval_sla_hours)
                .push_bind(w.version)
                .push_bind(w.created_by.clone())
                .push_bind(w.created_at)
                .push_bind(w.updated_at);
        });
        insert.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Writes the status and version of changed workflows in one statement.
pub async fn update_many(conn: &mut MySqlConnection, rows: &[&Workflow]) -> sqlx::Result<()> {
    for chunk in rows.chunks(200) {
        let mut update = QueryBuilder::new("update workflows set ");
        super::push_case(
            &mut update,
            "status",
            chunk,
            |w| w.id,
            |q, w| {
                q.push_bind(w.status.as_str());
            },
        );
        update.push(", ");
        super::push_case(
            &mut update,
            "version",
            chunk,
            |w| w.id,
            |q, w| {
                q.push_bind(w.version);
            },
        );
        update.push(", ");
        super::push_case(
            &mut update,
            "updated_at",
            chunk,
            |w| w.id,
            |q, w| {
                q.push_bind(w.updated_at);
            },
        );
        super::push_where_ids(&mut update, chunk, |w| w.id);
        update.build().execute(&mut *conn).await?;
    }
    Ok(())
}
