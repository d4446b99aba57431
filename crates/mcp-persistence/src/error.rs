//! How driver errors become the port's `StoreError`: which ones mean the database is away (retry
//! later; they open the database breaker), which a conflict, and what stored data is corrupt.

use mcp_core::StoreError;

/// Maps a driver error onto the port's error: lost connections and a server that is shutting
/// down, crashed or starting are "unavailable" (retry later; they open the database breaker),
/// everything else is a database error.
pub(crate) fn db_error(e: sqlx::Error) -> StoreError {
    match e {
        // The guard in front of the stores probes before it believes this one.
        sqlx::Error::PoolTimedOut => {
            metrics::counter!("mcp_db_pool_acquire_timeouts_total").increment(1);
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

pub(crate) fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

/// A write error, with unique violations reported as `StoreError::Conflict(what)`.
pub(crate) fn conflict_or_db_error(e: sqlx::Error, what: impl FnOnce() -> String) -> StoreError {
    match e {
        sqlx::Error::Database(e) if e.is_unique_violation() => StoreError::Conflict(what()),
        other => db_error(other),
    }
}
