//! A task row as PostgreSQL returns it, and as the outbox stores it (the row as JSON), checked
//! into a `Task`.

use crate::codec::unsigned;
use crate::error::corrupt;
use chrono::{DateTime, Utc};
use mcp_core::task::Progress;
use mcp_core::task::client_key;
use mcp_core::{Backoff, StoreError, Task, TaskError, TaskStatus};
use serde_json::Value;
use sqlx::FromRow;
use sqlx::types::Json;
use std::str::FromStr;
use uuid::Uuid;

/// A task row; also read from the outbox, where it is the row as JSON.
#[derive(FromRow, serde::Deserialize)]
pub(crate) struct TaskRow {
    pub(super) id: Uuid,
    #[sqlx(rename = "type")]
    #[serde(rename = "type")]
    task_type: String,
    queue: String,
    priority: i32,
    payload: Json<Value>,
    status: String,
    attempts: i32,
    max_attempts: i32,
    backoff_base_ms: i64,
    backoff_max_ms: i64,
    run_at: DateTime<Utc>,
    timeout_ms: i64,
    idempotency_key: Option<String>,
    concurrency_key: Option<String>,
    concurrency_limit: Option<i32>,
    correlation_id: Option<String>,
    created_by: Option<String>,
    /// Absent from outbox rows written before it existed.
    #[serde(default)]
    share_key: Option<String>,
    result: Option<Json<Value>>,
    error: Option<Json<Value>>,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    /// Absent from rows written before workflows (outbox rows).
    #[serde(default)]
    workflow_id: Option<Uuid>,
    #[serde(default)]
    workflow_key: Option<String>,
    #[serde(default)]
    progress: Option<Json<Value>>,
    finished_at: Option<DateTime<Utc>>,
    /// Absent from outbox rows written before it existed.
    #[serde(default)]
    traceparent: Option<String>,
}

impl TryFrom<TaskRow> for Task {
    type Error = StoreError;
    fn try_from(row: TaskRow) -> Result<Task, StoreError> {
        Ok(Task {
            id: row.id,
            task_type: row.task_type,
            queue: row.queue,
            priority: row.priority,
            payload: row.payload.0,
            status: TaskStatus::from_str(&row.status).map_err(corrupt)?,
            attempts: row.attempts,
            max_attempts: row.max_attempts,
            backoff: Backoff {
                base_ms: unsigned(row.backoff_base_ms),
                max_ms: unsigned(row.backoff_max_ms),
            },
            run_at: row.run_at,
            timeout_ms: unsigned(row.timeout_ms),
            // Shown as their creator gave them: see `mcp_core::task::scoped_key`.
            idempotency_key: row
                .idempotency_key
                .map(|key| client_key(row.share_key.as_deref(), key)),
            concurrency_key: row
                .concurrency_key
                .map(|key| client_key(row.share_key.as_deref(), key)),
            concurrency_limit: row.concurrency_limit,
            correlation_id: row.correlation_id,
            created_by: row.created_by,
            share_key: row.share_key,
            result: row.result.map(|j| j.0),
            error: row
                .error
                .map(|j| serde_json::from_value::<TaskError>(j.0))
                .transpose()
                .map_err(corrupt)?,
            created_at: row.created_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
            workflow_id: row.workflow_id,
            workflow_key: row.workflow_key,
            parents: None,
            progress: row
                .progress
                .map(|j| serde_json::from_value::<Progress>(j.0))
                .transpose()
                .map_err(corrupt)?,
            traceparent: row.traceparent,
        })
    }
}

pub(super) fn tasks(rows: Vec<TaskRow>) -> Result<Vec<Task>, StoreError> {
    rows.into_iter().map(Task::try_from).collect()
}
