use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use quiver_common::bus::Notice;
use quiver_common::domain::{Metric, Plan, ProjectId};
use quiver_common::{ApiError, AppJson};
use quiver_store::{NewProject, Project, ProjectUsage};
use serde::{Deserialize, Serialize};

use crate::ControlPlane;
use crate::session::Session;

pub fn router() -> Router<ControlPlane> {
    Router::new()
        .route("/v1/projects", get(list).post(create))
        .route("/v1/projects/{id}", get(read).patch(update).delete(remove))
}

/// The largest dimension a project may have.
pub const MAX_DIMENSION: u32 = 4096;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateProject {
    pub name: String,
    pub dimension: u32,
    pub metric: Metric,
    #[serde(default = "default_plan")]
    pub plan: String,
}

fn default_plan() -> String {
    "starter".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateProject {
    pub plan: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ProjectView {
    pub id: ProjectId,
    pub name: String,
    pub dimension: u32,
    pub metric: Metric,
    pub plan: String,
    /// The plan's limits.
    pub limits: Plan,
    /// Where the data-plane API of this project is served.
    pub api_base_url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageView>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize)]
pub struct UsageView {
    pub vectors: u64,
    pub namespaces: u64,
}

impl From<ProjectUsage> for UsageView {
    fn from(usage: ProjectUsage) -> Self {
        Self {
            vectors: usage.vectors,
            namespaces: usage.namespaces,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ProjectList {
    pub projects: Vec<ProjectView>,
}

async fn view(state: &ControlPlane, project: Project, with_usage: bool) -> Result<ProjectView, ApiError> {
    let limits = state
        .store
        .plan(&project.plan_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("project {} has unknown plan {}", project.id, project.plan_id))?;
    let usage = if with_usage {
        Some(state.store.project_usage(project.id).await?.into())
    } else {
        None
    };
    Ok(ProjectView {
        id: project.id,
        name: project.name,
        dimension: project.dimension,
        metric: project.metric,
        plan: project.plan_id,
        limits,
        api_base_url: state.settings.api_base_url.clone(),
        usage,
        created_at: project.created_at,
        updated_at: project.updated_at,
    })
}

async fn known_plan(state: &ControlPlane, plan: &str) -> Result<(), ApiError> {
    if state.store.plan(plan).await?.is_some() {
        return Ok(());
    }
    let ids: Vec<String> = state.store.plans().await?.into_iter().map(|p| p.id).collect();
    Err(ApiError::Validation {
        message: format!("unknown plan \"{plan}\": expected one of {}", ids.join(", ")),
        detail: Some("field plan".into()),
    })
}

async fn create(
    State(state): State<ControlPlane>,
    session: Session,
    AppJson(body): AppJson<CreateProject>,
) -> Result<(StatusCode, Json<ProjectView>), ApiError> {
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::Validation {
            message: "the project name must have 1 to 200 characters".into(),
            detail: Some("field name".into()),
        });
    }
    if !(1..=MAX_DIMENSION).contains(&body.dimension) {
        return Err(ApiError::Validation {
            message: format!("dimension {} is out of range: use 1 to {MAX_DIMENSION}", body.dimension),
            detail: Some("field dimension".into()),
        });
    }
    known_plan(&state, &body.plan).await?;
    let project = state
        .store
        .create_project(NewProject {
            owner_id: session.user,
            name: name.to_owned(),
            dimension: body.dimension,
            metric: body.metric,
            plan_id: body.plan,
        })
        .await?;
    tracing::info!(project_id = %project.id, user_id = %session.user, "project created");
    state
        .bus
        .publish(Notice::ProjectChanged { project_id: project.id })
        .await?;
    Ok((StatusCode::CREATED, Json(view(&state, project, true).await?)))
}

async fn list(State(state): State<ControlPlane>, session: Session) -> Result<Json<ProjectList>, ApiError> {
    let mut projects = Vec::new();
    for project in state.store.projects_of(session.user).await? {
        projects.push(view(&state, project, false).await?);
    }
    Ok(Json(ProjectList { projects }))
}

async fn read(
    State(state): State<ControlPlane>,
    session: Session,
    Path(id): Path<String>,
) -> Result<Json<ProjectView>, ApiError> {
    let project = session.owned_project(&state, &id).await?;
    Ok(Json(view(&state, project, true).await?))
}

async fn update(
    State(state): State<ControlPlane>,
    session: Session,
    Path(id): Path<String>,
    AppJson(body): AppJson<UpdateProject>,
) -> Result<Json<ProjectView>, ApiError> {
    let mut project = session.owned_project(&state, &id).await?;
    if let Some(plan) = body.plan {
        known_plan(&state, &plan).await?;
        project = state
            .store
            .set_project_plan(project.id, &plan)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no project {id}")))?;
        tracing::info!(project_id = %project.id, plan = %plan, "plan changed");
        state
            .bus
            .publish(Notice::ProjectChanged { project_id: project.id })
            .await?;
    }
    Ok(Json(view(&state, project, true).await?))
}

async fn remove(
    State(state): State<ControlPlane>,
    session: Session,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let project = session.owned_project(&state, &id).await?;
    state.store.delete_project(project.id).await?;
    tracing::info!(project_id = %project.id, "project deleted");
    state
        .bus
        .publish(Notice::ProjectDeleted { project_id: project.id })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
