//! The SQLite store of the embedded default: one file in WAL mode, one writer connection
//! (SQLite serialises writers anyway; one connection makes every claim a single-writer
//! transaction with no busy retries) and a pool of readers, migrations embedded from
//! `migrations/sqlite`; the hottest point reads skip sqlx's per-connection threads
//! (`direct.rs`). This file opens the file and keeps what every transition shares
//! (recording outbox events before a commit); each port's SQL is in its own file beside it.

mod direct;
mod identity;
mod integrations;
mod limits;
mod memory;
mod outbox;
mod schedules;
mod settings;
mod stats;
mod task_row;
mod tasks;
mod webhooks;
mod workers;
mod workflows;

pub(crate) use task_row::TaskRow;

use crate::error::db_error;
use crate::outbox::{OutboxSwitch, Transition};
use mcp_core::StoreError;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Rows sqlx's connection thread may queue for the reading task (sqlx's default is 50). Above
/// the largest batch a claim or an outcome write returns, so the thread runs a statement to its
/// end without waiting: with a full queue every further row costs a thread hand-off.
const ROW_BUFFER: usize = 4_096;

/// How the SQLite file is opened.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// `FULL` syncs the WAL on every commit (survives power loss); `NORMAL` (the default)
    /// survives a killed process but may lose the last commits on power loss.
    pub synchronous_full: bool,
    pub readers: u32,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            synchronous_full: false,
            readers: 4,
        }
    }
}

#[derive(Clone)]
pub struct SqliteTaskStore {
    pub(crate) writer: SqlitePool,
    pub(crate) readers: SqlitePool,
    /// Which task events transitions record in the webhook outbox.
    pub(crate) outbox: Arc<OutboxSwitch>,
    /// Paused queues and limited types and queues, as the claim consults them (`limits.rs`).
    pub(crate) flow: Arc<crate::flow::FlowCache>,
    /// Read-only connections for point reads on the calling thread (`direct.rs`).
    pub(crate) direct: Arc<direct::DirectReads>,
}

impl SqliteTaskStore {
    /// Opens (creating if needed) the database file at `path`.
    pub async fn open(path: &Path, options: &SqliteOptions) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let connect = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(if options.synchronous_full {
                SqliteSynchronous::Full
            } else {
                SqliteSynchronous::Normal
            })
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            .row_buffer_size(ROW_BUFFER);
        // No ping before each use (sqlx's default): an open file does not go away while idle, and
        // each ping is a hand-off to the connection's thread and back before every statement.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .test_before_acquire(false)
            .connect_with(connect.clone())
            .await
            .map_err(db_error)?;
        let readers = SqlitePoolOptions::new()
            .max_connections(options.readers.max(1))
            .test_before_acquire(false)
            .connect_with(connect.read_only(true))
            .await
            .map_err(db_error)?;
        Ok(SqliteTaskStore {
            writer,
            readers,
            outbox: Arc::default(),
            flow: Arc::default(),
            direct: Arc::new(direct::DirectReads::new(path.to_owned())),
        })
    }

    /// The writer's pool and the readers' pool, by name (for the pool metrics).
    pub fn pools(&self) -> [(&'static str, SqlitePool); 2] {
        [
            ("sqlite_writer", self.writer.clone()),
            ("sqlite_readers", self.readers.clone()),
        ]
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR
            .run(&self.writer)
            .await
            .map_err(|e| StoreError::Database(format!("migration failed: {e}")))
    }

    /// A transaction if some webhook wants the events of `transition` (with what they want);
    /// see the PostgreSQL store.
    async fn begin_recording(
        &self,
        transition: Transition,
    ) -> Result<Option<(Transaction<'static, Sqlite>, Arc<Vec<String>>)>, StoreError> {
        match self.outbox.wanted(transition) {
            Some(wanted) => Ok(Some((self.writer.begin().await.map_err(db_error)?, wanted))),
            None => Ok(None),
        }
    }

    /// Records the events of `transition` on `ids` in `tx` if some webhook wants them, then
    /// commits.
    async fn commit_recording(
        &self,
        mut tx: Transaction<'static, Sqlite>,
        ids: &[Uuid],
        transition: Transition,
    ) -> Result<(), StoreError> {
        let mut recorded = 0;
        if let Some(wanted) = self.outbox.wanted(transition) {
            recorded = outbox::record(&mut tx, ids, transition, &wanted).await?;
        }
        tx.commit().await.map_err(db_error)?;
        if recorded > 0 {
            self.outbox.tell();
        }
        Ok(())
    }

    pub async fn close(&self) {
        self.readers.close().await;
        self.writer.close().await;
    }
}
