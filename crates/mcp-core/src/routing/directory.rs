//! The `WorkerDirectory` port: the cluster-wide record of which external workers are connected
//! to which node, so a task type served by a worker on any node is accepted by every node.
//!
//! Each node publishes its own workers with a time to live and republishes them (with their
//! current load) before it runs out, so the workers of a node that died without a word vanish
//! by themselves. Expiry is reckoned by the store's clock (PostgreSQL's `now()`), never by the
//! nodes', so clock skew between nodes cannot keep a dead node's workers alive or hide a live
//! one's.

use crate::store::StoreError;
use async_trait::async_trait;
use std::time::Duration;

/// One external worker as its node publishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerRegistration {
    /// The worker's id on its node (`worker.register` answers it); unique per node only.
    pub id: u64,
    /// Subject of the credential the worker connected with.
    pub subject: String,
    /// Task types it serves.
    pub types: Vec<String>,
    /// Tasks it runs at once at most.
    pub concurrency: usize,
    /// Tasks it held when its node last published it.
    pub outstanding: usize,
}

/// A live registration and the node its worker is connected to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryEntry {
    pub node: String,
    pub worker: WorkerRegistration,
}

#[async_trait]
pub trait WorkerDirectory: Send + Sync + 'static {
    /// Replaces every registration of `node` with `workers` (none: the node has no workers),
    /// each live for `ttl` from now by the store's clock. One transaction: other nodes never see
    /// the node's workers half-replaced.
    async fn publish_workers(
        &self,
        node: &str,
        workers: &[WorkerRegistration],
        ttl: Duration,
    ) -> Result<(), StoreError>;

    /// Every live registration, by node then worker id.
    async fn live_workers(&self) -> Result<Vec<DirectoryEntry>, StoreError>;

    /// Which of `types` some live worker, on any node, serves.
    async fn served_types(&self, types: &[String]) -> Result<Vec<String>, StoreError>;

    /// Deletes registrations that outlived their time to live; returns how many.
    async fn prune_workers(&self) -> Result<u64, StoreError>;
}
