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

#[derive(Debug, Serialize)]
pub struct PlanList {
    pub plans: Vec<Plan>,
}

async fn list(State(state): State<ControlPlane>) -> Result<Json<PlanList>, ApiError> {
    Ok(Json(PlanList {
        plans: state.store.plans().await?,
    }))
}
