//! The task metrics, kept from the transitions the orchestrator announces: how long a task
//! waited between becoming due and starting, how long an attempt ran, and how attempts ended,
//! by task type (`docs/operations.md`, "Metrics").
//!
//! The handles of a type are made once and kept, so a transition costs a read lock and a few
//! atomic operations, no allocation. Past `MAX_TYPES` distinct types the rest share the label
//! `other`: task types come from clients and external workers, and a series per invented type
//! would grow without bound.

use crate::task::Task;
use chrono::{DateTime, Utc};
use metrics::{Counter, Histogram};
use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};

/// Most task types with series of their own.
const MAX_TYPES: usize = 200;

/// The label of the types past `MAX_TYPES`.
const OTHER: &str = "other";

/// One task type's handles.
struct ByType {
    waited: Histogram,
    ran: Histogram,
    succeeded: Counter,
    failed: Counter,
    dead: Counter,
    cancelled: Counter,
}

impl ByType {
    fn new(task_type: &str) -> ByType {
        let outcome = |outcome: &'static str| {
            metrics::counter!("mcp_task_outcomes_total",
                "type" => task_type.to_owned(), "outcome" => outcome)
        };
        ByType {
            waited: metrics::histogram!("mcp_task_queue_wait_seconds", "type" => task_type.to_owned()),
            ran: metrics::histogram!("mcp_task_run_duration_seconds", "type" => task_type.to_owned()),
            succeeded: outcome("succeeded"),
            failed: outcome("failed"),
            dead: outcome("dead"),
            cancelled: outcome("cancelled"),
        }
    }
}

fn table() -> &'static RwLock<HashMap<String, ByType>> {
    static TABLE: OnceLock<RwLock<HashMap<String, ByType>>> = OnceLock::new();
    TABLE.get_or_init(|| RwLock::new(HashMap::new()))
}

/// Runs `record` with the handles of `task_type`, making them on its first transition.
fn with_type(task_type: &str, record: impl FnOnce(&ByType)) {
    {
        let table = table().read().unwrap_or_else(|e| e.into_inner());
        if let Some(handles) = table.get(task_type) {
            return record(handles);
        }
        if table.len() >= MAX_TYPES
            && let Some(other) = table.get(OTHER)
        {
            return record(other);
        }
    }
    let mut table = table().write().unwrap_or_else(|e| e.into_inner());
    let key = if table.len() >= MAX_TYPES {
        OTHER
    } else {
        task_type
    };
    let handles = table
        .entry(key.to_owned())
        .or_insert_with(|| ByType::new(key));
    record(handles);
}

/// Seconds from `from` to `to`, never negative (clocks of nodes and database may differ).
fn seconds(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from)
        .num_microseconds()
        .map_or(0.0, |us| us.max(0) as f64 / 1e6)
}

/// Records what the transition `event` of `task` at `at` says.
pub(super) fn observe(event: &str, task: &Task, at: DateTime<Utc>) {
    let ran = |handles: &ByType| {
        if let Some(started) = task.started_at {
            handles.ran.record(seconds(started, at));
        }
    };
    match event {
        // Due since `run_at` (creation, delay or retry backoff), started now.
        "task.started" => with_type(&task.task_type, |h| {
            h.waited.record(seconds(task.run_at, at))
        }),
        "task.succeeded" => with_type(&task.task_type, |h| {
            h.succeeded.increment(1);
            ran(h);
        }),
        "task.failed" => with_type(&task.task_type, |h| {
            h.failed.increment(1);
            ran(h);
        }),
        "task.dead" => with_type(&task.task_type, |h| {
            h.dead.increment(1);
            ran(h);
        }),
        "task.cancelled" => with_type(&task.task_type, |h| h.cancelled.increment(1)),
        _ => {}
    }
}
