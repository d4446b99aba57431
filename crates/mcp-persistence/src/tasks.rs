//! What both task stores share around their hand-written SQL: how an insert's outcome lines up
//! with its input (idempotency keys), the task an insert returns, claim order, counts and the
//! JSON stored for outcomes.

use crate::codec::unsigned;
use crate::error::corrupt;
use chrono::{DateTime, Utc};
use mcp_core::store::TaskCounts;
use mcp_core::task::{client_key, scoped_key};
use mcp_core::{Inserted, NewTask, StoreError, Task, TaskStatus};
use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use uuid::Uuid;

/// How many finished tasks one prune statement deletes, to keep transactions short.
pub(crate) const PRUNE_CHUNK: i64 = 10_000;
/// How many expired leases one rescue statement takes.
pub(crate) const RESCUE_CHUNK: i64 = 1_000;

/// The idempotency keys of `new` tasks that were not inserted (their key existed already).
pub(crate) fn conflicting_keys<'a>(new: &'a [NewTask], created: &[Task]) -> Vec<&'a str> {
    let created: HashSet<Uuid> = created.iter().map(|t| t.id).collect();
    new.iter()
        .filter(|t| !created.contains(&t.id))
        .filter_map(|t| t.idempotency_key.as_deref())
        .collect()
}

/// Lines up the outcome of an insert with its input: each new task is either among `created`
/// or answered by the `existing` task holding its idempotency key.
pub(crate) fn in_input_order(
    new: &[NewTask],
    created: Vec<Task>,
    existing: Vec<Task>,
) -> Result<Vec<Inserted>, StoreError> {
    let mut created: HashMap<Uuid, Task> = created.into_iter().map(|t| (t.id, t)).collect();
    // By the key as stored (a task shows its creator's key; see `scoped_key`).
    let existing: HashMap<String, Task> = existing
        .into_iter()
        .filter_map(|t| {
            let key = scoped_key(t.share_key.as_deref(), t.idempotency_key.as_deref()?);
            Some((key, t))
        })
        .collect();
    new.iter()
        .map(|t| {
            if let Some(task) = created.remove(&t.id) {
                return Ok(Inserted {
                    task,
                    created: true,
                });
            }
            t.idempotency_key
                .as_ref()
                .and_then(|key| existing.get(key).cloned())
                .map(|task| Inserted {
                    task,
                    created: false,
                })
                .ok_or_else(|| {
                    StoreError::Database(format!(
                        "task {} was neither inserted nor found by its idempotency key",
                        t.id
                    ))
                })
        })
        .collect()
}

/// The task a store just inserted from `new`, built without reading the row back: only what the
/// database decided (`status`, `run_at`, `created_at`) comes from it.
pub(crate) fn inserted_task(
    new: &NewTask,
    status: TaskStatus,
    run_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
) -> Task {
    Task {
        id: new.id,
        task_type: new.task_type.clone(),
        queue: new.queue.clone(),
        priority: new.priority,
        payload: new.payload.clone(),
        status,
        attempts: 0,
        max_attempts: new.max_attempts,
        backoff: new.backoff,
        run_at,
        timeout_ms: new.timeout_ms,
        idempotency_key: new
            .idempotency_key
            .clone()
            .map(|key| client_key(new.share_key.as_deref(), key)),
        concurrency_key: new
            .concurrency_key
            .clone()
            .map(|key| client_key(new.share_key.as_deref(), key)),
        concurrency_limit: new.concurrency_limit,
        correlation_id: new.correlation_id.clone(),
        created_by: new.created_by.clone(),
        share_key: new.share_key.clone(),
        result: None,
        error: None,
        created_at,
        started_at: None,
        finished_at: None,
        workflow_id: None,
        workflow_key: None,
        parents: None,
        progress: None,
        traceparent: new.traceparent.clone(),
    }
}

/// Sorts claimed tasks into claim order: priority (high first), then `run_at`, then id.
pub(crate) fn claim_order(tasks: &mut [Task]) {
    tasks.sort_by(|a, b| (b.priority, a.run_at, a.id).cmp(&(a.priority, b.run_at, b.id)));
}

/// `(queue, status, count)` rows as `TaskCounts`.
pub(crate) fn task_counts(rows: Vec<(String, String, i64)>) -> Result<TaskCounts, StoreError> {
    rows.into_iter()
        .map(|(queue, status, n)| {
            let status = TaskStatus::from_str(&status).map_err(corrupt)?;
            Ok(((queue, status), unsigned(n)))
        })
        .collect()
}

/// `TaskError` as stored JSON.
pub(crate) fn error_json(error: &mcp_core::TaskError) -> serde_json::Value {
    serde_json::to_value(error).unwrap_or(serde_json::Value::Null)
}

/// A handler result of JSON `null` is stored as SQL NULL.
pub(crate) fn non_null(value: &serde_json::Value) -> Option<&serde_json::Value> {
    (!value.is_null()).then_some(value)
}
