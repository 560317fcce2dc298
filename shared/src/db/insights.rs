//! Insights (CONTRACT §7): each recompute writes a generation; `GET /aiInsights` serves the latest.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{FromRow, MySqlConnection, MySqlExecutor, QueryBuilder};
use utoipa::ToSchema;
use uuid::Uuid;
use uuid::fmt::Hyphenated;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Insight {
    #[sqlx(try_from = "Hyphenated")]
    pub id: Uuid,
    /// `sla_breach`, `turnaround`, `approver_bottleneck`, `anomalous_amount`, `rule_candidate`.
    pub kind: String,
    /// `info`, `low`, `medium`, `high`.
    pub severity: String,
    pub title: String,
    pub summary: String,
    /// The figures and the rows (ids) they come from.
    #[schema(value_type = Object)]
    pub evidence: Json<Value>,
    pub recommendation: String,
    /// A rule `POST /api/v1/rules` accepts as it is.
    #[schema(value_type = Option<Object>)]
    pub suggested_rule: Option<Json<Value>>,
    pub generated_at: DateTime<Utc>,
}

pub async fn insert_generation(conn: &mut MySqlConnection, generation: Uuid, insights: &[Insight]) -> sqlx::Result<()> {
    if insights.is_empty() {
        return Ok(());
    }
    let mut insert = QueryBuilder::new(
        "insert into insights (id, generation_id, kind, severity, title, summary, evidence, recommendation, suggested_rule, generated_at) ",
    );
    insert.push_values(insights, |mut row, i| {
        row.push_bind(i.id.hyphenated())
            .push_bind(generation.hyphenated())
            .push_bind(i.kind.clone())
            .push_bind(i.severity.clone())
            .push_bind(i.title.clone())
            .push_bind(i.summary.clone())
            .push_bind(i.evidence.clone())
            .push_bind(i.recommendation.clone())
            .push_bind(i.suggested_rule.clone())
            .push_bind(i.generated_at);
    });
    insert.build().execute(conn).await.map(|_| ())
}

/// The insights of the newest generation.
pub async fn latest<'e>(executor: impl MySqlExecutor<'e>) -> sqlx::Result<Vec<Insight>> {
    sqlx::query_as(
        "select id, kind, severity, title, summary, evidence, recommendation, suggested_rule, generated_at from insights \
         where generation_id = (select generation_id from insights order by seq desc limit 1) order by seq",
    )
    .fetch_all(executor)
    .await
}
