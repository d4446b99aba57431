//! Point reads on the calling thread: a few read-only connections of the store's own, outside
//! sqlx, for the reads the API serves most often and that take microseconds (a task by id).
//!
//! Why: sqlx runs each SQLite connection on a thread of its own, so every query — even one
//! primary-key lookup — is handed to that thread and its rows handed back, two wake-ups and
//! context switches that cost many times the lookup itself (31 % of the server's time under
//! `bench http`, in futex waits and wakes). Here the lookup runs where the request is: a
//! prepared statement (cached per connection), one row, no hand-off.
//!
//! What keeps it safe:
//! - the connections are read-only, on the same file in WAL mode, so they never write, never
//!   take the writer's lock, and see every transaction committed before the read starts, as
//!   the sqlx readers do;
//! - they never wait: `busy_timeout` is 0, so a read that SQLite cannot start at once (rare in
//!   WAL mode, e.g. while the WAL index is rebuilt) fails at once, and so does any other
//!   error: the caller then runs the same read through the sqlx readers, which wait and report
//!   errors as every other read does. The only cost this path can add to a request is a
//!   lookup's worth of blocking;
//! - a statement is reset as soon as its row is read, so no read transaction stays open to hold
//!   back checkpoints.

use rusqlite::{Connection, OpenFlags};
use std::path::PathBuf;
use std::sync::Mutex;

/// Idle connections kept for reuse. A read takes one for microseconds, so two are enough for
/// two cores; a request that finds none opens another, which is kept only while fewer than
/// this are idle.
const IDLE: usize = 4;

/// Prepared statements each connection keeps.
const STATEMENTS: usize = 16;

/// The store's own read-only connections.
#[derive(Debug)]
pub(crate) struct DirectReads {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl DirectReads {
    pub(crate) fn new(path: PathBuf) -> DirectReads {
        DirectReads {
            path,
            idle: Mutex::new(Vec::with_capacity(IDLE)),
        }
    }

    /// Runs `read` on an idle connection (or a new one). Blocking, for microseconds: call it
    /// only for point reads.
    pub(crate) fn read<T>(
        &self,
        read: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let connection = match idle {
            Some(connection) => connection,
            None => self.open()?,
        };
        let result = read(&connection);
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < IDLE {
            idle.push(connection);
        }
        result
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        let connection = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        connection.busy_timeout(std::time::Duration::ZERO)?;
        connection.set_prepared_statement_cache_capacity(STATEMENTS);
        Ok(connection)
    }
}
