//! Flow control of the cluster's queues: paused queues and rate limits per task type, and the
//! `QueueStore` port that keeps them. Both are enforced where tasks are claimed, in the stores'
//! claim transaction, so they hold on every node, for in-process handlers and external workers
//! alike, and a held-back task stays queued without spending an attempt.

use crate::store::StoreError;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// At most `max` tasks of `task_type` start per `per_ms` window, cluster-wide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskLimit {
    #[serde(rename = "type")]
    pub task_type: String,
    pub max: u32,
    pub per_ms: u64,
}

/// Bounds of a limit's window (one millisecond to one day).
pub const MAX_LIMIT_WINDOW_MS: u64 = 86_400_000;

impl TaskLimit {
    /// A limit is at least one task in a window of 1 ms to 1 day.
    pub fn check(&self) -> Result<(), String> {
        if self.task_type.is_empty() || self.task_type.len() > 200 {
            return Err("type must be 1 to 200 characters".into());
        }
        if self.max == 0 {
            return Err("max must be at least 1 (pause the queue to start none)".into());
        }
        if self.per_ms == 0 || self.per_ms > MAX_LIMIT_WINDOW_MS {
            return Err(format!(
                "per_ms must be between 1 and {MAX_LIMIT_WINDOW_MS}"
            ));
        }
        Ok(())
    }
}

#[async_trait]
pub trait QueueStore: Send + Sync + 'static {
    /// Pauses a queue: its tasks stay queued on every node. False if it was paused already.
    async fn pause_queue(&self, queue: &str) -> Result<bool, StoreError>;

    /// Resumes a paused queue (and wakes the claimers). False if it was not paused.
    async fn resume_queue(&self, queue: &str) -> Result<bool, StoreError>;

    /// The paused queues, by name.
    async fn paused_queues(&self) -> Result<Vec<String>, StoreError>;

    /// Sets (or replaces) the limit of a task type; its current window carries on.
    async fn put_task_limit(&self, limit: &TaskLimit) -> Result<(), StoreError>;

    /// Every task type's limit, by type.
    async fn task_limits(&self) -> Result<Vec<TaskLimit>, StoreError>;

    /// Removes a task type's limit (and wakes the claimers). False if it had none.
    async fn delete_task_limit(&self, task_type: &str) -> Result<bool, StoreError>;
}
