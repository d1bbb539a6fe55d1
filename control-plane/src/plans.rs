use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use quiver_common::ApiError;
use quiver_common::domain::Plan;
use serde::Serialize;

use crate::ControlPlane;

pub fn router() -> Router<ControlPlane> {
    Router::new().route("/v1/plans", get(list))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PlanList {
    pub plans: Vec<Plan>,
}

/// The plan catalog, cheapest first.
#[utoipa::path(
    get,
    operation_id = "list_plans", path = "/v1/plans", tag = "plans", responses((status = 200, body = PlanList)))]
pub async fn list(State(state): State<ControlPlane>) -> Result<Json<PlanList>, ApiError> {
    Ok(Json(PlanList {
        plans: state.store.plans().await?,
    }))
}
