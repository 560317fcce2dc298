//! `GET /aiInsights`: the latest insights `insights.recompute` derived from the data.

use automation_shared::db::insights::{self, Insight};
use axum::Json;
use axum::extract::State;

use crate::app::AppState;
use crate::auth::{AuthUser, Permission};
use crate::openapi::responses::Secured;
use crate::problem::ApiResult;

/// List the latest insights
///
/// SLA breaches, bottlenecks, turnaround, anomalies and rule candidates from the last recompute.
#[utoipa::path(
    get, path = "/aiInsights", tag = "insights", operation_id = "listInsights",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The newest generation of insights (empty before the first recompute)", body = Vec<Insight>),
        Secured,
    )
)]
pub async fn latest(State(state): State<AppState>, user: AuthUser) -> ApiResult<Json<Vec<Insight>>> {
    user.require(Permission::Read)?;
    Ok(Json(insights::latest(&state.pool).await?))
}
