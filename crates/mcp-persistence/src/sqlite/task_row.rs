//! A task row as SQLite returns it, and as the outbox stores it (the row as JSON), decoded
//! through the row codec into a `Task`.

use crate::codec::{instant, json, unsigned, uuid};
use crate::error::corrupt;
use mcp_core::task::Progress;
use mcp_core::task::client_key;
use mcp_core::{Backoff, StoreError, Task, TaskError, TaskStatus};
use sqlx::FromRow;
use std::str::FromStr;

/// A task row; also read from the outbox, where it is the row as JSON.
#[derive(FromRow, serde::Deserialize)]
pub(crate) struct TaskRow {
    pub(super) id: String,
    #[sqlx(rename = "type")]
    #[serde(rename = "type")]
    task_type: String,
    queue: String,
    priority: i32,
    payload: String,
    status: String,
    attempts: i32,
    max_attempts: i32,
    backoff_base_ms: i64,
    backoff_max_ms: i64,
    run_at: i64,
    timeout_ms: i64,
    idempotency_key: Option<String>,
    concurrency_key: Option<String>,
    concurrency_limit: Option<i32>,
    correlation_id: Option<String>,
    created_by: Option<String>,
    /// Absent from outbox rows written before it existed.
    #[serde(default)]
    share_key: Option<String>,
    result: Option<String>,
    error: Option<String>,
    created_at: i64,
    started_at: Option<i64>,
    /// Absent from rows written before workflows (outbox rows).
    #[serde(default)]
    workflow_id: Option<String>,
    #[serde(default)]
    workflow_key: Option<String>,
    #[serde(default)]
    progress: Option<String>,
    finished_at: Option<i64>,
    /// Absent from outbox rows written before it existed.
    #[serde(default)]
    traceparent: Option<String>,
}

impl TryFrom<TaskRow> for Task {
    type Error = StoreError;
    fn try_from(row: TaskRow) -> Result<Task, StoreError> {
        Ok(Task {
            id: uuid(&row.id)?,
            task_type: row.task_type,
            queue: row.queue,
            priority: row.priority,
            payload: json(&row.payload)?,
            status: TaskStatus::from_str(&row.status).map_err(corrupt)?,
            attempts: row.attempts,
            max_attempts: row.max_attempts,
            backoff: Backoff {
                base_ms: unsigned(row.backoff_base_ms),
                max_ms: unsigned(row.backoff_max_ms),
            },
            run_at: instant(row.run_at)?,
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
            result: row.result.as_deref().map(json).transpose()?,
            error: row.error.as_deref().map(json::<TaskError>).transpose()?,
            created_at: instant(row.created_at)?,
            started_at: row.started_at.map(instant).transpose()?,
            finished_at: row.finished_at.map(instant).transpose()?,
            workflow_id: row.workflow_id.as_deref().map(uuid).transpose()?,
            workflow_key: row.workflow_key,
            parents: None,
            progress: row.progress.as_deref().map(json::<Progress>).transpose()?,
            traceparent: row.traceparent,
        })
    }
}

impl TaskRow {
    /// The row of a `SELECT {TASK_COLUMNS}` read by a direct connection (`direct.rs`), by
    /// position: the columns in `TASK_COLUMNS`' order (a test below holds the two together).
    pub(super) fn from_direct(row: &rusqlite::Row<'_>) -> rusqlite::Result<TaskRow> {
        Ok(TaskRow {
            id: row.get(0)?,
            task_type: row.get(1)?,
            queue: row.get(2)?,
            priority: row.get(3)?,
            payload: row.get(4)?,
            status: row.get(5)?,
            attempts: row.get(6)?,
            max_attempts: row.get(7)?,
            backoff_base_ms: row.get(8)?,
            backoff_max_ms: row.get(9)?,
            run_at: row.get(10)?,
            timeout_ms: row.get(11)?,
            idempotency_key: row.get(12)?,
            concurrency_key: row.get(13)?,
            concurrency_limit: row.get(14)?,
            correlation_id: row.get(15)?,
            created_by: row.get(16)?,
            result: row.get(17)?,
            error: row.get(18)?,
            created_at: row.get(19)?,
            started_at: row.get(20)?,
            finished_at: row.get(21)?,
            share_key: row.get(22)?,
            workflow_id: row.get(23)?,
            workflow_key: row.get(24)?,
            progress: row.get(25)?,
            traceparent: row.get(26)?,
        })
    }
}

pub(super) fn tasks(rows: Vec<TaskRow>) -> Result<Vec<Task>, StoreError> {
    rows.into_iter().map(Task::try_from).collect()
}

#[cfg(test)]
mod tests {
    use crate::columns::TASK_COLUMNS;

    #[test]
    fn direct_rows_are_read_in_the_order_of_the_task_columns() {
        let columns: Vec<&str> = TASK_COLUMNS.split(',').map(str::trim).collect();
        assert_eq!(
            columns,
            [
                "id",
                "type",
                "queue",
                "priority",
                "payload",
                "status",
                "attempts",
                "max_attempts",
                "backoff_base_ms",
                "backoff_max_ms",
                "run_at",
                "timeout_ms",
                "idempotency_key",
                "concurrency_key",
                "concurrency_limit",
                "correlation_id",
                "created_by",
                "result",
                "error",
                "created_at",
                "started_at",
                "finished_at",
                "share_key",
                "workflow_id",
                "workflow_key",
                "progress",
                "traceparent",
            ],
            "`TaskRow::from_direct` reads by position: change it with the columns"
        );
    }
}
