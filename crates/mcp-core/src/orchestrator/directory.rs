//! This node's side of the cluster's worker directory. The node publishes its external workers
//! at once when one comes or goes and every third of the lease with their load, each live for a
//! lease, so a node that dies takes its workers out of the cluster within the lease. It keeps a
//! copy of what the other nodes published, refreshed every `directory_refresh`: task creation
//! asks that copy whether anyone serves a type, and only on a miss the directory itself (a
//! worker registered a moment ago on another node counts at once).

use super::Orchestrator;
use crate::routing::{DirectoryEntry, RouteInfo, WorkerDirectory};
use crate::store::StoreError;
use std::collections::HashSet;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// How long a stopping node tries to take its workers out of the directory; if the database
/// is away they expire with the lease instead.
const LEAVE_PATIENCE: Duration = Duration::from_secs(1);

/// The directory port and this node's copy of the other nodes' workers.
#[derive(Default)]
pub(super) struct Directory {
    port: OnceLock<Arc<dyn WorkerDirectory>>,
    others: RwLock<Others>,
    /// One publication at a time, each from a fresh snapshot taken under this lock, so an older
    /// snapshot never lands after a newer one.
    publishing: tokio::sync::Mutex<()>,
}

/// What the other nodes published, as last read.
#[derive(Default)]
struct Others {
    workers: Vec<DirectoryEntry>,
    types: HashSet<String>,
}

impl Directory {
    fn others(&self) -> std::sync::RwLockReadGuard<'_, Others> {
        // Replaced whole under the lock, so a poisoned lock still holds a consistent value.
        self.others.read().unwrap_or_else(|e| e.into_inner())
    }

    fn replace(&self, workers: Vec<DirectoryEntry>) {
        let types = workers
            .iter()
            .flat_map(|e| e.worker.types.iter().cloned())
            .collect();
        *self.others.write().unwrap_or_else(|e| e.into_inner()) = Others { workers, types };
    }

    fn learn(&self, types: &[String]) {
        let mut others = self.others.write().unwrap_or_else(|e| e.into_inner());
        others.types.extend(types.iter().cloned());
    }
}

impl Orchestrator {
    /// Shares this node's workers with the cluster through `directory` (set once, before
    /// `start`; without one, only this node's workers count).
    pub fn set_worker_directory(&self, directory: Arc<dyn WorkerDirectory>) {
        if self.directory.port.set(directory).is_err() {
            warn!("the worker directory was set already; keeping the first");
        }
    }

    /// Whether a worker on another node serves `task_type`, as last read from the directory.
    pub(super) fn served_elsewhere(&self, task_type: &str) -> bool {
        self.directory.others().types.contains(task_type)
    }

    /// Which of `types` some worker in the cluster serves, asked of the directory itself.
    pub(super) async fn served_in_cluster(
        &self,
        types: &[String],
    ) -> Result<Vec<String>, StoreError> {
        let Some(port) = self.directory.port.get() else {
            return Ok(Vec::new());
        };
        let served = port.served_types(types).await?;
        self.directory.learn(&served);
        Ok(served)
    }

    /// Publishes this node's workers as they are now, live for a lease. A worker's registration
    /// is acknowledged after this, so every node accepts its types from then on.
    pub async fn publish_workers(&self) -> Result<(), StoreError> {
        let Some(port) = self.directory.port.get() else {
            return Ok(());
        };
        let _one_at_a_time = self.directory.publishing.lock().await;
        let workers = self.balancer.registrations();
        port.publish_workers(&self.config.node_id, &workers, self.config.lease)
            .await
    }

    /// Every route of the cluster: this node's handlers and workers (with their current load)
    /// and the other nodes' workers (with the load they last published).
    pub fn routes(&self) -> Vec<RouteInfo> {
        let local = self.handlers.types();
        self.balancer
            .cluster_routes(&local, &self.directory.others().workers)
    }

    /// Reads what the other nodes published into this node's copy.
    async fn refresh_directory(&self, port: &dyn WorkerDirectory) -> Result<(), StoreError> {
        let mut workers = port.live_workers().await?;
        workers.retain(|e| e.node != self.config.node_id);
        self.directory.replace(workers);
        Ok(())
    }

    /// Publishes this node's workers (when they change, and every third of the lease), refreshes
    /// the copy of the others', prunes expired registrations, and on `stop` takes this node's
    /// workers out of the directory.
    pub(super) async fn directory_loop(self: Arc<Self>, stop: CancellationToken) {
        let Some(port) = self.directory.port.get().cloned() else {
            return;
        };
        let membership = self.balancer.membership.clone();
        let mut publish = tokio::time::interval(self.config.lease / 3);
        let mut refresh = tokio::time::interval(self.config.directory_refresh);
        publish.set_missed_tick_behavior(MissedTickBehavior::Delay);
        refresh.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = publish.tick() => {
                    let published = async {
                        self.publish_workers().await?;
                        // Every node prunes; deleting what expired is idempotent.
                        port.prune_workers().await.map(drop)
                    };
                    match until_stopped(&stop, published).await {
                        Some(Ok(())) => {}
                        Some(Err(e)) => warn!(error = %e, "cannot publish this node's workers"),
                        None => break,
                    }
                }
                _ = membership.notified() => match until_stopped(&stop, self.publish_workers()).await {
                    Some(Ok(())) => {}
                    Some(Err(e)) => warn!(error = %e, "cannot publish this node's workers"),
                    None => break,
                },
                _ = refresh.tick() => match until_stopped(&stop, self.refresh_directory(port.as_ref())).await {
                    Some(Ok(())) => {}
                    Some(Err(e)) => warn!(error = %e, "cannot read the cluster's workers"),
                    None => break,
                },
                _ = stop.cancelled() => break,
            }
        }
        let leave = async {
            let _one_at_a_time = self.directory.publishing.lock().await;
            port.publish_workers(&self.config.node_id, &[], self.config.lease)
                .await
        };
        match tokio::time::timeout(LEAVE_PATIENCE, leave).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "cannot withdraw this node's workers; they expire"),
            Err(_) => warn!("withdrawing this node's workers timed out; they expire"),
        }
    }
}

/// `work`'s output, or `None` when `stop` fires first (a slow database never holds up a stop).
async fn until_stopped<T>(stop: &CancellationToken, work: impl Future<Output = T>) -> Option<T> {
    tokio::select! {
        out = work => Some(out),
        _ = stop.cancelled() => None,
    }
}
