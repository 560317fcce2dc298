//! `GET /aiInsights`: the latest insights `insights.recompute` derived from the data.

use automation_shared::db::insights::{self, Insight};
use axum::Json;
use axum::extract::State;

use crate::app::AppState;
use crate::auth::{AuthUser, Permission};
use crate::problem::{ApiResult, Problem};

#[utoipa::path(
    get, path = "/aiInsights", tag = "insights",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The newest generation of insights (empty before the first recompute)", body = Vec<Insight>),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn latest(State(state): State<AppState>, user: AuthUser) -> ApiResult<Json<Vec<Insight>>> {
    user.require(Permission::Read)?;
    Ok(Json(insights::latest(&state.pool).await?))
}
