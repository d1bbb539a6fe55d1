use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use quiver_common::AppPath;
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

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProject {
    #[schema(min_length = 1, max_length = 200, example = "shop search")]
    pub name: String,
    /// The length of every vector in the project.
    #[schema(minimum = 1, maximum = 4096, example = 768)]
    pub dimension: u32,
    pub metric: Metric,
    /// A plan id from `GET /v1/plans`.
    #[serde(default = "default_plan")]
    #[schema(default = "starter", example = "developer")]
    pub plan: String,
}

fn default_plan() -> String {
    "starter".into()
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProject {
    pub plan: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
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

#[derive(Debug, Serialize, utoipa::ToSchema)]
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

#[derive(Debug, Serialize, utoipa::ToSchema)]
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

/// Create a project.
#[utoipa::path(
    post,
    operation_id = "create_project",
    path = "/v1/projects",
    tag = "projects",
    security(("session" = [])),
    request_body = CreateProject,
    responses(
        (status = 201, body = ProjectView),
        (status = 400, description = "bad name, dimension, metric or plan", body = quiver_common::error::ErrorEnvelope),
        (status = 401, description = "no valid session", body = quiver_common::error::ErrorEnvelope),
    )
)]
pub async fn create(
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
    crate::limits::publish(state.store.as_ref(), state.bus.as_ref(), &project).await;
    Ok((StatusCode::CREATED, Json(view(&state, project, true).await?)))
}

/// The caller's projects.
#[utoipa::path(
    get,
    operation_id = "list_projects",
    path = "/v1/projects",
    tag = "projects",
    security(("session" = [])),
    responses((status = 200, body = ProjectList), (status = 401, body = quiver_common::error::ErrorEnvelope))
)]
pub async fn list(State(state): State<ControlPlane>, session: Session) -> Result<Json<ProjectList>, ApiError> {
    let mut projects = Vec::new();
    for project in state.store.projects_of(session.user).await? {
        projects.push(view(&state, project, false).await?);
    }
    Ok(Json(ProjectList { projects }))
}

/// A project with its limits, usage and data-plane URL.
#[utoipa::path(
    get,
    operation_id = "get_project",
    path = "/v1/projects/{id}",
    tag = "projects",
    security(("session" = [])),
    params(("id" = String, Path, description = "project id")),
    responses((status = 200, body = ProjectView), (status = 401, body = quiver_common::error::ErrorEnvelope), (status = 404, body = quiver_common::error::ErrorEnvelope))
)]
pub async fn read(
    State(state): State<ControlPlane>,
    session: Session,
    AppPath(id): AppPath<String>,
) -> Result<Json<ProjectView>, ApiError> {
    let project = session.owned_project(&state, &id).await?;
    Ok(Json(view(&state, project, true).await?))
}

/// Change a project's plan.
#[utoipa::path(
    patch,
    operation_id = "update_project",
    path = "/v1/projects/{id}",
    tag = "projects",
    security(("session" = [])),
    params(("id" = String, Path, description = "project id")),
    request_body = UpdateProject,
    responses(
        (status = 200, body = ProjectView),
        (status = 400, description = "unknown plan", body = quiver_common::error::ErrorEnvelope),
        (status = 401, body = quiver_common::error::ErrorEnvelope),
        (status = 404, body = quiver_common::error::ErrorEnvelope),
    )
)]
pub async fn update(
    State(state): State<ControlPlane>,
    session: Session,
    AppPath(id): AppPath<String>,
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
        // The change is made: the limits go out first, and neither announcement failing
        // undoes it (pods read the project again within a minute, and a plan whose
        // limits did not reach them wins over the limits they have).
        crate::limits::publish(state.store.as_ref(), state.bus.as_ref(), &project).await;
        if let Err(err) = state
            .bus
            .publish(Notice::ProjectChanged { project_id: project.id })
            .await
        {
            tracing::warn!(error = %format!("{err:#}"), project_id = %project.id, "announcing a plan change failed");
        }
    }
    Ok(Json(view(&state, project, true).await?))
}

/// Delete a project with its keys, namespaces and records.
#[utoipa::path(
    delete,
    operation_id = "delete_project",
    path = "/v1/projects/{id}",
    tag = "projects",
    security(("session" = [])),
    params(("id" = String, Path, description = "project id")),
    responses((status = 204, description = "deleted"), (status = 401, body = quiver_common::error::ErrorEnvelope), (status = 404, body = quiver_common::error::ErrorEnvelope))
)]
pub async fn remove(
    State(state): State<ControlPlane>,
    session: Session,
    AppPath(id): AppPath<String>,
) -> Result<StatusCode, ApiError> {
    let project = session.owned_project(&state, &id).await?;
    state.store.delete_project(project.id).await?;
    tracing::info!(project_id = %project.id, "project deleted");
    crate::limits::withdraw(state.bus.as_ref(), &project).await;
    // The project is gone from the store: its keys no longer pass a pod's check once
    // their cache entry ends. The notice only makes pods drop them at once.
    if let Err(err) = state
        .bus
        .publish(Notice::ProjectDeleted { project_id: project.id })
        .await
    {
        tracing::warn!(error = %format!("{err:#}"), project_id = %project.id, "announcing a project's deletion failed");
    }
    Ok(StatusCode::NO_CONTENT)
}
