//! What the adapter tests share: a running task's context, as the orchestrator hands it to a
//! handler.
#![allow(dead_code)]

use mcp_core::{Task, TaskContext};
use serde_json::{Value, json};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// A task of `task_type` in its first attempt, with a 30 s timeout.
pub fn context(task_type: &str, payload: Value) -> TaskContext {
    context_with_timeout(task_type, payload, 30_000)
}

pub fn context_with_timeout(task_type: &str, payload: Value, timeout_ms: u64) -> TaskContext {
    let task: Task = serde_json::from_value(json!({
        "id": "01920000-0000-7000-8000-000000000001",
        "type": task_type,
        "queue": "default",
        "priority": 0,
        "payload": payload,
        "status": "running",
        "attempts": 1,
        "max_attempts": 3,
        "backoff": {"base_ms": 1000, "max_ms": 600000},
        "run_at": "2025-01-01T00:00:00Z",
        "timeout_ms": timeout_ms,
        "idempotency_key": null,
        "concurrency_key": null,
        "concurrency_limit": null,
        "correlation_id": null,
        "result": null,
        "error": null,
        "created_at": "2025-01-01T00:00:00Z",
        "started_at": "2025-01-01T00:00:00Z",
        "finished_at": null,
    }))
    .expect("a task");
    TaskContext {
        task: Arc::new(task),
        cancel: CancellationToken::new(),
    }
}
