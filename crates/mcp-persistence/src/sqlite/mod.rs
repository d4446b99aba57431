//! The SQLite store of the embedded default: one file in WAL mode, one writer connection
//! (SQLite serialises writers anyway; one connection makes every claim a single-writer
//! transaction with no busy retries), a pool of readers, a connection that checkpoints the WAL
//! beside the writer (`checkpoints`), migrations embedded from
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

/// WAL frames at which the writer checkpoints the WAL itself, in the commit that reaches them:
/// the bound for when [`checkpoints`] falls behind or has stopped. SQLite's default is 1,000
/// (4 MB), which the writer reached every few hundred tasks under load, each time holding its
/// commit 7–10 ms (copying the pages and syncing both files) while every claim and completion
/// waited: a tenth of `bench workflows`' plain tasks and more of its workflow.
const WRITER_CHECKPOINT_FRAMES: u32 = 10_000;

/// How soon [`checkpoints`] looks again after it found the WAL grown, and at most after it
/// found it unchanged (the wait doubles each time).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);
const CHECKPOINT_IDLE: Duration = Duration::from_secs(2);

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

/// Turns off SQLite's memory statistics for the process, once, before its first connection.
///
/// Why: with them on (the bundled library's default), every allocation SQLite makes takes one
/// process-wide mutex to count itself, and the writer allocates for every column of every row it
/// hands to sqlx (a copy of each value): a claim of 500 tasks is about 14,000 lock round trips,
/// 4-8 % of the writer thread in `perf` under `bench tasks`. Nothing here reads the statistics
/// (`sqlite3_memory_used`) or sets a soft heap limit, which are all they serve.
///
/// `sqlite3_config` may only be called before SQLite initialises itself; if a connection was
/// already opened in this process (an earlier store, a test), it answers `SQLITE_MISUSE` and
/// changes nothing, which is harmless: the statistics only stay on.
fn without_memory_statistics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let off: std::ffi::c_int = 0;
        // SAFETY: `SQLITE_CONFIG_MEMSTATUS` takes one int, which this passes. The stores are
        // this process's only users of SQLite and each opens through here, so `Once` runs this
        // before any connection exists; once SQLite is initialised it refuses the call.
        let rc =
            unsafe { rusqlite::ffi::sqlite3_config(rusqlite::ffi::SQLITE_CONFIG_MEMSTATUS, off) };
        if rc != rusqlite::ffi::SQLITE_OK {
            tracing::debug!(
                rc,
                "SQLite was initialised already: memory statistics stay on"
            );
        }
    });
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
    /// Where tasks go that a read made runnable as it wrote them (`TaskStore::on_released`).
    pub(crate) released: Arc<crate::workflows::Released>,
    /// Stops [`checkpoints`] when the last clone of the store goes.
    checkpointer: Arc<Checkpointer>,
}

/// The connection of [`checkpoints`] and what stops it: closing the store, or dropping its last
/// clone.
struct Checkpointer {
    pool: SqlitePool,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Checkpoints the WAL (`PASSIVE`: it copies what no reader still needs into the database file
/// and never waits for the writer or readers) from a connection of its own, so the writer's
/// commits do not: every [`CHECKPOINT_EVERY`] while the WAL grows, backing off to
/// [`CHECKPOINT_IDLE`] while it does not, until `stop`. The writer restarts the WAL from its
/// start once everything in it was copied, as after its own checkpoints.
async fn checkpoints(pool: SqlitePool, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut wait = CHECKPOINT_EVERY;
    let mut last = None;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep(wait) => {}
        }
        let checkpoint = sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&pool)
            .await;
        match checkpoint {
            // The WAL's frames: grown (or restarted) since the last look, or not.
            Ok((_, frames, _)) => {
                wait = if last == Some(frames) {
                    (wait * 2).min(CHECKPOINT_IDLE)
                } else {
                    CHECKPOINT_EVERY
                };
                last = Some(frames);
            }
            Err(e) => {
                tracing::debug!(error = %e, "checkpointing the WAL failed; the writer's bound holds");
                wait = CHECKPOINT_IDLE;
            }
        }
    }
    pool.close().await;
}

impl SqliteTaskStore {
    /// Opens (creating if needed) the database file at `path`.
    pub async fn open(path: &Path, options: &SqliteOptions) -> Result<Self, StoreError> {
        without_memory_statistics();
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
        // No ping before each acquire (sqlx's default): a connection to a local file does not
        // go stale as a network one does, and the ping is a round trip to the connection's
        // thread, as costly as the statement that follows (a claim, an outcome batch). A
        // connection that did fail would fail its statement, which reports it as any error.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .test_before_acquire(false)
            .connect_with(
                connect
                    .clone()
                    .pragma("wal_autocheckpoint", WRITER_CHECKPOINT_FRAMES.to_string()),
            )
            .await
            .map_err(db_error)?;
        let checkpointing = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .connect_with(connect.clone())
            .await
            .map_err(db_error)?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(checkpoints(checkpointing.clone(), stopped));
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
            released: Arc::default(),
            direct: Arc::new(direct::DirectReads::new(path.to_owned())),
            checkpointer: Arc::new(Checkpointer {
                pool: checkpointing,
                stop,
            }),
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
        let _ = self.checkpointer.stop.send(true);
        self.checkpointer.pool.close().await;
        self.readers.close().await;
        self.writer.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::{SqliteOptions, SqliteTaskStore};
    use std::time::{Duration, Instant};

    /// What the writer commits reaches the database file without the writer checkpointing: a
    /// 3 MB row is 750 WAL frames, far below the writer's own bound, and the file grows to hold
    /// it all the same.
    #[tokio::test]
    async fn the_wal_is_checkpointed_beside_the_writer() {
        let dir = std::env::temp_dir().join(format!("mcp-checkpoint-{}", uuid::Uuid::now_v7()));
        let path = dir.join("db.sqlite");
        let store = SqliteTaskStore::open(&path, &SqliteOptions::default())
            .await
            .unwrap();
        let (bound,): (i64,) = sqlx::query_as("PRAGMA wal_autocheckpoint")
            .fetch_one(&store.writer)
            .await
            .unwrap();
        assert_eq!(bound, i64::from(super::WRITER_CHECKPOINT_FRAMES));
        sqlx::query("CREATE TABLE filler (x BLOB)")
            .execute(&store.writer)
            .await
            .unwrap();
        sqlx::query("INSERT INTO filler VALUES (randomblob(3000000))")
            .execute(&store.writer)
            .await
            .unwrap();
        let size = || std::fs::metadata(&path).map_or(0, |m| m.len());
        let deadline = Instant::now() + Duration::from_secs(10);
        while size() < 3_000_000 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            size() >= 3_000_000,
            "the database file holds {} bytes",
            size()
        );
        store.close().await;
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
