//! Stored rules: written by `rule.upserted` / `rule.deleted`, read by the engine and the API.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use sqlx::{FromRow, MySqlConnection, MySqlExecutor};
use utoipa::ToSchema;
use uuid::Uuid;
use uuid::fmt::Hyphenated;

use super::Lock;
use crate::rules::engine::StoredRule;
use crate::rules::{RuleAction, RuleDefinition};

/// A rule as clients see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    #[serde(skip)]
    pub seq: u64,
    #[sqlx(try_from = "Hyphenated")]
    pub id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub enabled: bool,
    pub priority: i32,
    #[sqlx(rename = "on_pattern")]
    pub on: String,
    #[sqlx(rename = "condition_source")]
    pub when: String,
    #[sqlx(rename = "actions")]
    #[schema(value_type = Vec<Object>)]
    pub then: Json<Vec<RuleAction>>,
    pub stop_on_match: bool,
    /// Raised by every change; evaluations name the version they ran.
    pub version: u32,
    pub created_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Rule {
    pub fn to_stored(&self) -> StoredRule {
        StoredRule {
            id: self.id,
            version: self.version,
            definition: RuleDefinition {
                id: Some(self.id),
                name: self.name.clone(),
                description: self.description.clone(),
                enabled: self.enabled,
                priority: self.priority,
                on: self.on.clone(),
                when: self.when.clone(),
                then: self.then.0.clone(),
                stop_on_match: self.stop_on_match,
            },
        }
    }
}

macro_rules! select_rules {
    ($rest:literal) => {
        concat!(
            "select seq, id, name, description, enabled, priority, on_pattern, condition_source, actions, stop_on_match, \
             version, created_by, created_at, updated_at from rules ",
            $rest
        )
    };
}
/// The select list with `from`, for queries that add their own filters.
pub const SELECT: &str = select_rules!("");

pub async fn find<'e>(executor: impl MySqlExecutor<'e>, id: Uuid) -> sqlx::Result<Option<Rule>> {
    sqlx::query_as(select_rules!("where id = ?")).bind(id.hyphenated()).fetch_optional(executor).await
}

pub async fn find_for_update<'e>(executor: impl MySqlExecutor<'e>, id: Uuid) -> sqlx::Result<Option<Rule>> {
    sqlx::query_as(select_rules!("where id = ? for update")).bind(id.hyphenated()).fetch_optional(executor).await
}

/// Every enabled rule, for the engine.
pub async fn enabled<'e>(executor: impl MySqlExecutor<'e>) -> sqlx::Result<Vec<StoredRule>> {
    let rows: Vec<Rule> =
        sqlx::query_as(select_rules!("where enabled = true order by priority, id")).fetch_all(executor).await?;
    Ok(rows.iter().map(Rule::to_stored).collect())
}

/// The newest `updated_at` and the number of rules: cheap to ask, changes whenever a rule does.
pub async fn fingerprint<'e>(executor: impl MySqlExecutor<'e>) -> sqlx::Result<(Option<DateTime<Utc>>, i64, i64)> {
    sqlx::query_as("select max(updated_at), count(*), cast(coalesce(sum(version), 0) as signed) from rules")
        .fetch_one(executor)
        .await
}

pub async fn insert<'e>(executor: impl MySqlExecutor<'e>, r: &Rule) -> sqlx::Result<()> {
    sqlx::query(
        "insert into rules (id, name, description, enabled, priority, on_pattern, condition_source, actions, stop_on_match, \
         version, created_by, created_at, updated_at) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(r.id.hyphenated())
    .bind(&r.name)
    .bind(&r.description)
    .bind(r.enabled)
    .bind(r.priority)
    .bind(&r.on)
    .bind(&r.when)
    .bind(&r.then)
    .bind(r.stop_on_match)
    .bind(r.version)
    .bind(&r.created_by)
    .bind(r.created_at)
    .bind(r.updated_at)
    .execute(executor)
    .await
    .map(|_| ())
}

pub async fn update<'e>(executor: impl MySqlExecutor<'e>, r: &Rule) -> sqlx::Result<()> {
    sqlx::query(
        "update rules set name = ?, description = ?, enabled = ?, priority = ?, on_pattern = ?, condition_source = ?, \
         actions = ?, stop_on_match = ?, version = ?, updated_at = ? where id = ?",
    )
    .bind(&r.name)
    .bind(&r.description)
    .bind(r.enabled)
    .bind(r.priority)
    .bind(&r.on)
    .bind(&r.when)
    .bind(&r.then)
    .bind(r.stop_on_match)
    .bind(r.version)
    .bind(r.updated_at)
    .bind(r.id.hyphenated())
    .execute(executor)
    .await
    .map(|_| ())
}

pub async fn delete<'e>(executor: impl MySqlExecutor<'e>, id: Uuid) -> sqlx::Result<bool> {
    let result = sqlx::query("delete from rules where id = ?").bind(id.hyphenated()).execute(executor).await?;
    Ok(result.rows_affected() == 1)
}

/// Loads and locks the rules with these ids.
pub async fn load_many(conn: &mut MySqlConnection, ids: &[Uuid], lock: Lock) -> sqlx::Result<Vec<Rule>> {
    super::load_by_ids(conn, SELECT, "id", ids, lock).await
}
