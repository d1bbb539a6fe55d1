//! Publishing each project's effective rate limits (from its plan) through the bus,
//! where every data-plane pod loads them at start and hears of changes.

use quiver_common::bus::{Bus, ProjectLimits};
use quiver_store::{Project, Store};

/// Publishes one project's limits. Failing to publish is logged, not fatal: the plan
/// is already in the store, and pods that have not heard of a project, or heard of
/// limits of another plan than its own, read the plan there. The bus gives up on a
/// Redis that does not answer within `BUS_WAIT`, so an outage holds up the request
/// that publishes only that long.
pub async fn publish(store: &dyn Store, bus: &dyn Bus, project: &Project) {
    let Some(limits) = limits_of(store, project).await else {
        return;
    };
    if let Err(err) = bus.publish_limits(limits).await {
        tracing::warn!(error = %format!("{err:#}"), project_id = %project.id,
            "publishing limits failed; pods read the project's plan from the store");
    }
}

/// Publishes every project's limits: at start, so the bus holds what the store says
/// even after Redis lost its data. It stops at the first failure to reach the bus:
/// Redis is down, and waiting on it once per project would only delay the rest
/// (pods use the plans in the store meanwhile).
pub async fn publish_all(store: &dyn Store, bus: &dyn Bus) -> anyhow::Result<()> {
    let projects = store.all_projects().await?;
    for project in &projects {
        let Some(limits) = limits_of(store, project).await else {
            continue;
        };
        if let Err(err) = bus.publish_limits(limits).await {
            tracing::warn!(error = %format!("{err:#}"), projects = projects.len(),
                "publishing every project's limits failed; pods use the plans in the store");
            return Ok(());
        }
    }
    tracing::info!(projects = projects.len(), "published every project's limits");
    Ok(())
}

/// The limits of the project's plan, or `None` (logged) when the plan cannot be read.
async fn limits_of(store: &dyn Store, project: &Project) -> Option<ProjectLimits> {
    let plan = match store.plan(&project.plan_id).await {
        Ok(Some(plan)) => plan,
        Ok(None) => {
            tracing::error!(project_id = %project.id, plan = %project.plan_id, "project has an unknown plan");
            return None;
        }
        Err(err) => {
            tracing::warn!(error = %err, project_id = %project.id, "reading a plan to publish limits failed");
            return None;
        }
    };
    Some(ProjectLimits {
        project_id: project.id,
        plan_id: plan.id,
        queries_per_minute: plan.queries_per_minute,
        documents_per_minute: plan.documents_per_minute,
    })
}

/// Removes a deleted project's limits.
pub async fn withdraw(bus: &dyn Bus, project: &Project) {
    if let Err(err) = bus.withdraw_limits(project.id).await {
        tracing::warn!(error = %format!("{err:#}"), project_id = %project.id, "withdrawing limits failed");
    }
}
