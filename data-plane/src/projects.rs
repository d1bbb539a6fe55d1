//! The projects this pod serves, cached: every request needs its project (dimension,
//! metric, plan) and none should pay a database round trip for it. Entries are dropped
//! when the bus says a project changed or was deleted.

use std::sync::Arc;
use std::time::Duration;

use quiver_common::ApiError;
use quiver_common::bus::{Bus, BusEvent, Notice};
use quiver_common::domain::ProjectId;
use quiver_store::{Project, Store};

/// A read-through cache of projects.
pub struct Projects {
    store: Arc<dyn Store>,
    cache: moka::future::Cache<ProjectId, Arc<Project>>,
}

impl Projects {
    pub fn new(store: Arc<dyn Store>, bus: &dyn Bus) -> Arc<Self> {
        let projects = Arc::new(Self {
            store,
            cache: moka::future::Cache::builder()
                .max_capacity(100_000)
                // A bound on staleness should a notice be lost.
                .time_to_live(Duration::from_secs(60))
                .support_invalidation_closures()
                .build(),
        });
        let weak = Arc::downgrade(&projects);
        bus.listen(Arc::new(move |event| {
            let Some(projects) = weak.upgrade() else { return };
            match event {
                BusEvent::Notice(Notice::ProjectChanged { project_id } | Notice::ProjectDeleted { project_id }) => {
                    let id = *project_id;
                    if let Err(err) = projects.cache.invalidate_entries_if(move |key, _| *key == id) {
                        tracing::error!(error = %err, "cannot drop a changed project from the cache");
                        projects.cache.invalidate_all();
                    }
                }
                BusEvent::Notice(
                    Notice::KeyRevoked { .. }
                    | Notice::NamespaceChanged { .. }
                    | Notice::NamespaceDeleted { .. }
                    | Notice::LimitsChanged { .. },
                ) => {}
                BusEvent::MayHaveMissed => projects.cache.invalidate_all(),
            }
        }));
        projects
    }

    /// The project, or `None` when it does not exist (any more).
    pub async fn get(&self, id: ProjectId) -> Result<Option<Arc<Project>>, ApiError> {
        if let Some(hit) = self.cache.get(&id).await {
            return Ok(Some(hit));
        }
        let Some(project) = self.store.project(id).await? else {
            return Ok(None);
        };
        let project = Arc::new(project);
        self.cache.insert(id, Arc::clone(&project)).await;
        Ok(Some(project))
    }
}
