//! Persistence layer of MKWW MCP: the `TaskStore` port of `mcp-core` implemented for
//! PostgreSQL (cluster) and SQLite (embedded default), each with its own embedded migrations,
//! and the Redis side of the cluster (the shared rate limiter and event bus, each falling back
//! to this node while Redis is away). Both task stores pass the same conformance suite in
//! `tests/`.

/// SQL assembled only from this crate's constants and identifiers it has checked, never from
/// client input, so it may be run as a dynamic string.
macro_rules! sql {
    ($($arg:tt)*) => {
        sqlx::AssertSqlSafe(format!($($arg)*))
    };
}

mod identity_postgres;
mod identity_sqlite;
mod integrations_postgres;
mod integrations_sqlite;
mod memory_postgres;
mod memory_sqlite;
mod outbox;
mod outbox_postgres;
mod outbox_sqlite;
mod postgres;
mod redis_bus;
mod redis_limiter;
mod redis_link;
mod sqlite;
mod webhooks_postgres;
mod webhooks_sqlite;
mod workers;
mod workers_postgres;
mod workers_sqlite;

pub use postgres::PgTaskStore;
pub use redis_bus::RedisBus;
pub use redis_limiter::RedisLimiter;
pub use redis_link::{RedisMode, RedisOptions};
pub use sqlite::{SqliteOptions, SqliteTaskStore};

use chrono::{DateTime, Utc};
use mcp_core::store::TaskCounts;
use mcp_core::{Inserted, NewTask, StoreError, Task, TaskStatus};
use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use uuid::Uuid;

/// Maps a driver error onto the port's error: lost connections and a server that is shutting
/// down, crashed or starting are "unavailable" (retry later; they open the database breaker),
/// everything else is a database error.
pub(crate) fn db_error(e: sqlx::Error) -> StoreError {
    match e {
        // The guard in front of the stores probes before it believes this one.
        sqlx::Error::PoolTimedOut => {
            StoreError::Unavailable(mcp_core::health::NO_CONNECTION_IN_TIME.to_owned())
        }
        sqlx::Error::Io(_)
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
        sqlx::Error::Database(ref db) if db.code().as_deref().is_some_and(unavailable_code) => {
            StoreError::Unavailable(e.to_string())
        }
        other => StoreError::Database(other.to_string()),
    }
}

/// SQLSTATEs that say the server, not the statement, is the problem: class 08 (connection
/// exception), 57P01 (admin shutdown: `pg_ctl stop`), 57P02 (crash shutdown), 57P03 (cannot
/// connect now: starting up or recovering), 53300 (too many connections).
fn unavailable_code(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300")
}

/// The task columns both stores read, in one order.
pub(crate) const COLUMNS: &str = "id, type, queue, priority, payload, status, attempts, \
    max_attempts, backoff_base_ms, backoff_max_ms, run_at, timeout_ms, idempotency_key, \
    concurrency_key, concurrency_limit, correlation_id, created_by, result, error, created_at, started_at, \
    finished_at";

/// `COLUMNS` qualified by a table name, for statements that join.
pub(crate) fn qualified(table: &str) -> String {
    COLUMNS
        .split(", ")
        .map(|c| format!("{table}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

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
    let existing: HashMap<String, Task> = existing
        .into_iter()
        .filter_map(|t| t.idempotency_key.clone().map(|key| (key, t)))
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
        idempotency_key: new.idempotency_key.clone(),
        concurrency_key: new.concurrency_key.clone(),
        concurrency_limit: new.concurrency_limit,
        correlation_id: new.correlation_id.clone(),
        created_by: new.created_by.clone(),
        result: None,
        error: None,
        created_at,
        started_at: None,
        finished_at: None,
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
            Ok(((queue, status), n.max(0) as u64))
        })
        .collect()
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

/// A write error, with unique violations reported as `StoreError::Conflict(what)`.
pub(crate) fn conflict_or_db_error(e: sqlx::Error, what: impl FnOnce() -> String) -> StoreError {
    match e {
        sqlx::Error::Database(e) if e.is_unique_violation() => StoreError::Conflict(what()),
        other => db_error(other),
    }
}

/// A stored role name as a `Role`.
pub(crate) fn role(name: &str) -> Result<mcp_core::principal::Role, StoreError> {
    mcp_core::principal::Role::from_str(name).map_err(corrupt)
}

/// A count for an `i64` column; counts beyond `i64::MAX` saturate.
pub(crate) fn count_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Why a refresh token that could not be rotated was refused. A revoked token is `Dead` (its
/// family has been dealt with already); an unrevoked token that was used before is `Reused`,
/// even if it has expired since, because its reappearance betrays a theft while the rest of the
/// family may still be alive; an unused, unrevoked one can only have expired, so it is `Dead`.
pub(crate) fn refused_rotation(
    token: Option<mcp_core::identity::RefreshToken>,
) -> mcp_core::identity::Rotation {
    use mcp_core::identity::Rotation;
    match token {
        None => Rotation::Unknown,
        Some(token) if token.revoked_at.is_some() => Rotation::Dead { token },
        Some(token) if token.used_at.is_some() => Rotation::Reused { token },
        Some(token) => Rotation::Dead { token },
    }
}
