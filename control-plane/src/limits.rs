//! Publishing each project's effective rate limits (from its plan) through the bus,
//! where every data-plane pod loads them at start and hears of changes.

use quiver_common::bus::{Bus, ProjectLimits};
use quiver_store::{Project, Store};

/// Publishes one project's limits. Failing to publish is logged, not fatal: pods
/// that have not heard of a project read its plan from the store.
pub async fn publish(store: &dyn Store, bus: &dyn Bus, project: &Project) {
    let plan = match store.plan(&project.plan_id).await {
        Ok(Some(plan)) => plan,
        Ok(None) => {
            tracing::error!(project_id = %project.id, plan = %project.plan_id, "project has an unknown plan");
            return;
        }
        Err(err) => {
            tracing::warn!(error = %err, project_id = %project.id, "reading a plan to publish limits failed");
            return;
        }
    };
    let limits = ProjectLimits {
        project_id: project.id,
        plan_id: plan.id,
        queries_per_minute: plan.queries_per_minute,
        documents_per_minute: plan.documents_per_minute,
    };
    if let Err(err) = bus.publish_limits(limits).await {
        tracing::warn!(error = %format!("{err:#}"), project_id = %project.id, "publishing limits failed");
    }
}

/// Publishes every project's limits: at start, so the bus holds what the store says
/// even after Redis lost its data.
pub async fn publish_all(store: &dyn Store, bus: &dyn Bus) -> anyhow::Result<()> {
    let projects = store.all_projects().await?;
    for project in &projects {
        publish(store, bus, project).await;
    }
    tracing::info!(projects = projects.len(), "published every project's limits");
    Ok(())
}

/// Removes a deleted project's limits.
pub async fn withdraw(bus: &dyn Bus, project: &Project) {
    if let Err(err) = bus.withdraw_limits(project.id).await {
        tracing::warn!(error = %format!("{err:#}"), project_id = %project.id, "withdrawing limits failed");
    }
}
