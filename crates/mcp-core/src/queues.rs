//! Flow control of the cluster's queues: paused queues and rate limits per task type or per
//! queue, and the `QueueStore` port that keeps them. Both are enforced where tasks are claimed,
//! in the stores' claim transaction, so they hold on every node, for in-process handlers and
//! external workers alike, and a held-back task stays queued without spending an attempt.
//!
//! Each store caches which queues are paused and which types and queues are limited, so a claim
//! that none of them concerns reads no flow-control table. Its own changes refresh the cache at
//! once; `QueueStore::refresh_flow` reads what other nodes changed (the queue service calls it
//! every `queue_poll_ms` and when nudged on `system.queues`). The window counters stay in the
//! database, cluster-wide.

use crate::store::StoreError;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// At most `max` tasks of `task_type` start per `per_ms` window, cluster-wide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskLimit {
    #[serde(rename = "type")]
    pub task_type: String,
    pub max: u32,
    pub per_ms: u64,
}

/// At most `max` tasks of `queue`, of any type, start per `per_ms` window, cluster-wide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueLimit {
    pub queue: String,
    pub max: u32,
    pub per_ms: u64,
}

/// Bounds of a limit's window (one millisecond to one day).
pub const MAX_LIMIT_WINDOW_MS: u64 = 86_400_000;

impl TaskLimit {
    /// A limit is at least one task in a window of 1 ms to 1 day.
    pub fn check(&self) -> Result<(), String> {
        check_name("type", &self.task_type)?;
        check_window(self.max, self.per_ms)
    }
}

impl QueueLimit {
    /// A limit is at least one task in a window of 1 ms to 1 day.
    pub fn check(&self) -> Result<(), String> {
        check_name("queue", &self.queue)?;
        check_window(self.max, self.per_ms)
    }
}

fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 200 {
        return Err(format!("{what} must be 1 to 200 characters"));
    }
    Ok(())
}

fn check_window(max: u32, per_ms: u64) -> Result<(), String> {
    if max == 0 {
        return Err("max must be at least 1 (pause the queue to start none)".into());
    }
    if max > i32::MAX as u32 {
        return Err(format!("max must be at most {}", i32::MAX));
    }
    if per_ms == 0 || per_ms > MAX_LIMIT_WINDOW_MS {
        return Err(format!(
            "per_ms must be between 1 and {MAX_LIMIT_WINDOW_MS}"
        ));
    }
    Ok(())
}

/// One `[[task_limits]]` entry of the configuration: a limit on a task type (`type = "…"`) or
/// on a queue (`queue = "…"`), exactly one of the two.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclaredLimit {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub task_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    pub max: u32,
    pub per_ms: u64,
}

/// A checked `DeclaredLimit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Limit {
    Type(TaskLimit),
    Queue(QueueLimit),
}

impl DeclaredLimit {
    /// What the entry limits, for messages: `type x` or `queue y`.
    pub fn subject(&self) -> String {
        match (&self.task_type, &self.queue) {
            (Some(t), None) => format!("type {t}"),
            (None, Some(q)) => format!("queue {q}"),
            _ => "?".into(),
        }
    }

    /// The limit it declares, checked.
    pub fn limit(&self) -> Result<Limit, String> {
        let limit = match (&self.task_type, &self.queue) {
            (Some(task_type), None) => Limit::Type(TaskLimit {
                task_type: task_type.clone(),
                max: self.max,
                per_ms: self.per_ms,
            }),
            (None, Some(queue)) => Limit::Queue(QueueLimit {
                queue: queue.clone(),
                max: self.max,
                per_ms: self.per_ms,
            }),
            _ => return Err("name either `type` or `queue`".into()),
        };
        match &limit {
            Limit::Type(l) => l.check()?,
            Limit::Queue(l) => l.check()?,
        }
        Ok(limit)
    }
}

/// The flow-control state of the cluster, as the store holds it now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlowState {
    pub paused: Vec<String>,
    pub limits: Vec<TaskLimit>,
    pub queue_limits: Vec<QueueLimit>,
    /// Per queue, the due tasks a limit holds back now (its type's or its queue's window is
    /// used up); queues with none are left out.
    pub held_back: BTreeMap<String, u64>,
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

    /// Sets (or replaces) the limit of a queue; its current window carries on.
    async fn put_queue_limit(&self, limit: &QueueLimit) -> Result<(), StoreError>;

    /// Every queue's limit, by queue.
    async fn queue_limits(&self) -> Result<Vec<QueueLimit>, StoreError>;

    /// Removes a queue's limit (and wakes the claimers). False if it had none.
    async fn delete_queue_limit(&self, queue: &str) -> Result<bool, StoreError>;

    /// Pauses, limits and what the limits hold back now, in one read.
    async fn flow_state(&self) -> Result<FlowState, StoreError>;

    /// Reads the pauses and limits into the cache the claim consults; true when it changed.
    async fn refresh_flow(&self) -> Result<bool, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declared(task_type: Option<&str>, queue: Option<&str>) -> DeclaredLimit {
        DeclaredLimit {
            task_type: task_type.map(str::to_owned),
            queue: queue.map(str::to_owned),
            max: 2,
            per_ms: 1000,
        }
    }

    #[test]
    fn a_declared_limit_names_a_type_or_a_queue() {
        assert!(matches!(
            declared(Some("echo"), None).limit(),
            Ok(Limit::Type(TaskLimit { .. }))
        ));
        assert!(matches!(
            declared(None, Some("reports")).limit(),
            Ok(Limit::Queue(QueueLimit { .. }))
        ));
        assert!(declared(None, None).limit().is_err());
        assert!(declared(Some("echo"), Some("reports")).limit().is_err());
        let toml: DeclaredLimit =
            serde_json::from_value(serde_json::json!({"queue": "q", "max": 1, "per_ms": 5}))
                .unwrap();
        assert_eq!(toml.queue.as_deref(), Some("q"));
    }

    #[test]
    fn a_limit_needs_room_and_a_window() {
        let limit = |max, per_ms| QueueLimit {
            queue: "q".into(),
            max,
            per_ms,
        };
        assert!(limit(1, 1).check().is_ok());
        assert!(limit(0, 1).check().is_err());
        assert!(limit(1, 0).check().is_err());
        assert!(limit(1, MAX_LIMIT_WINDOW_MS + 1).check().is_err());
        assert!(limit(u32::MAX, 1).check().is_err());
    }
}
