//! Persistence layer of MKWW MCP: the `TaskStore` port of `mcp-core` implemented for
//! PostgreSQL (cluster) and SQLite (embedded default), each with its own embedded migrations.
//! Both pass the same conformance suite in `tests/`.

/// SQL assembled only from this crate's constants and identifiers it has checked, never from
/// client input, so it may be run as a dynamic string.
macro_rules! sql {
    ($($arg:tt)*) => {
        sqlx::AssertSqlSafe(format!($($arg)*))
    };
}

mod postgres;
mod sqlite;

pub use postgres::PgTaskStore;
pub use sqlite::{SqliteOptions, SqliteTaskStore};

use mcp_core::StoreError;

/// Maps a driver error onto the port's error: lost connections are "unavailable" (retry later),
/// everything else is a database error.
pub(crate) fn db_error(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
        other => StoreError::Database(other.to_string()),
    }
}

/// The task columns both stores read, in one order.
pub(crate) const COLUMNS: &str = "id, type, queue, priority, payload, status, attempts, \
    max_attempts, backoff_base_ms, backoff_max_ms, run_at, timeout_ms, idempotency_key, \
    concurrency_key, concurrency_limit, correlation_id, result, error, created_at, started_at, \
    finished_at";

/// `COLUMNS` qualified by a table name, for statements that join.
pub(crate) fn qualified(table: &str) -> String {
    COLUMNS
        .split(", ")
        .map(|c| format!("{table}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

/// `TaskError` as stored JSON.
pub(crate) fn error_json(error: &mcp_core::TaskError) -> serde_json::Value {
    serde_json::to_value(error).unwrap_or(serde_json::Value::Null)
}

/// A handler result of JSON `null` is stored as SQL NULL.
pub(crate) fn non_null(value: &serde_json::Value) -> Option<&serde_json::Value> {
    (!value.is_null()).then_some(value)
}
