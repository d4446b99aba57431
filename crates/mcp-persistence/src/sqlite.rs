//! The SQLite task store of the embedded default: one file in WAL mode, one writer connection
//! (SQLite serialises writers anyway; one connection makes every claim a single-writer
//! transaction with no busy retries) and a pool of readers. Batches travel as JSON arrays
//! through `json_each`, so a claim or a batch of outcomes is one statement.

use crate::outbox::{OutboxSwitch, Transition};
use crate::{
    COLUMNS, claim_order, conflicting_keys, corrupt, db_error, error_json, in_input_order,
    inserted_task, non_null, task_counts,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mcp_core::store::{Candidate, TaskCounts, admit};
use mcp_core::{
    Backoff, CancelOutcome, ClaimRequest, Completion, Inserted, NewTask, Outcome, RetryOutcome,
    StoreError, Task, TaskError, TaskFilter, TaskStatus, TaskStore,
};
use serde_json::{Value, json};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{FromRow, Sqlite, Transaction};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use uuid::Uuid;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

const PRUNE_CHUNK: i64 = 10_000;
const RESCUE_CHUNK: i64 = 1_000;

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
}

pub(crate) fn us(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

pub(crate) fn instant(us: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_micros(us).ok_or_else(|| corrupt(format!("bad instant {us}")))
}

fn ids_json(ids: &[Uuid]) -> String {
    Value::from(ids.iter().map(|id| id.to_string()).collect::<Vec<_>>()).to_string()
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
            .foreign_keys(true);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(connect.clone())
            .await
            .map_err(db_error)?;
        let readers = SqlitePoolOptions::new()
            .max_connections(options.readers.max(1))
            .connect_with(connect.read_only(true))
            .await
            .map_err(db_error)?;
        Ok(SqliteTaskStore {
            writer,
            readers,
            outbox: Arc::default(),
        })
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
            recorded = crate::outbox_sqlite::record(&mut tx, ids, transition, &wanted).await?;
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

/// A task row; also read from the outbox, where it is the row as JSON.
#[derive(FromRow, serde::Deserialize)]
pub(crate) struct TaskRow {
    id: String,
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
    result: Option<String>,
    error: Option<String>,
    created_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
}

fn json_text(text: &str) -> Result<Value, StoreError> {
    serde_json::from_str(text).map_err(corrupt)
}

impl TryFrom<TaskRow> for Task {
    type Error = StoreError;
    fn try_from(row: TaskRow) -> Result<Task, StoreError> {
        Ok(Task {
            id: Uuid::parse_str(&row.id).map_err(corrupt)?,
            task_type: row.task_type,
            queue: row.queue,
            priority: row.priority,
            payload: json_text(&row.payload)?,
            status: TaskStatus::from_str(&row.status).map_err(corrupt)?,
            attempts: row.attempts,
            max_attempts: row.max_attempts,
            backoff: Backoff {
                base_ms: row.backoff_base_ms.max(0) as u64,
                max_ms: row.backoff_max_ms.max(0) as u64,
            },
            run_at: instant(row.run_at)?,
            timeout_ms: row.timeout_ms.max(0) as u64,
            idempotency_key: row.idempotency_key,
            concurrency_key: row.concurrency_key,
            concurrency_limit: row.concurrency_limit,
            correlation_id: row.correlation_id,
            created_by: row.created_by,
            result: row.result.as_deref().map(json_text).transpose()?,
            error: row
                .error
                .as_deref()
                .map(|text| serde_json::from_str::<TaskError>(text).map_err(corrupt))
                .transpose()?,
            created_at: instant(row.created_at)?,
            started_at: row.started_at.map(instant).transpose()?,
            finished_at: row.finished_at.map(instant).transpose()?,
        })
    }
}

fn tasks(rows: Vec<TaskRow>) -> Result<Vec<Task>, StoreError> {
    rows.into_iter().map(Task::try_from).collect()
}

fn lease_end(now: DateTime<Utc>, lease: Duration) -> i64 {
    us(now).saturating_add(lease.as_micros().min(i64::MAX as u128) as i64)
}

#[async_trait]
impl TaskStore for SqliteTaskStore {
    async fn insert(&self, new: &[NewTask]) -> Result<Vec<Inserted>, StoreError> {
        if new.is_empty() {
            return Ok(Vec::new());
        }
        let batch: Vec<Value> = new
            .iter()
            .map(|t| {
                json!({
                    "id": t.id.to_string(),
                    "type": t.task_type,
                    "queue": t.queue,
                    "priority": t.priority,
                    "payload": t.payload,
                    "max_attempts": t.max_attempts,
                    "bb": t.backoff.base_ms,
                    "bm": t.backoff.max_ms,
                    "run_at": t.run_at.map(us),
                    "timeout_ms": t.timeout_ms,
                    "ik": t.idempotency_key,
                    "ck": t.concurrency_key,
                    "cl": t.concurrency_limit,
                    "corr": t.correlation_id,
                    "by": t.created_by,
                })
            })
            .collect();
        let at = Utc::now();
        let now = us(at);
        let mut tx = self.writer.begin().await.map_err(db_error)?;
        let inserted: Vec<(String,)> = sqlx::query_as(
            "INSERT INTO tasks (id, type, queue, priority, payload, status, max_attempts,
                 backoff_base_ms, backoff_max_ms, run_at, timeout_ms, idempotency_key,
                 concurrency_key, concurrency_limit, correlation_id, created_by, created_at)
             SELECT j.value ->> 'id', j.value ->> 'type', j.value ->> 'queue',
                    j.value ->> 'priority', j.value -> 'payload',
                    CASE WHEN coalesce(j.value ->> 'run_at', ?2) > ?2 THEN 'scheduled' ELSE 'queued' END,
                    j.value ->> 'max_attempts', j.value ->> 'bb', j.value ->> 'bm',
                    coalesce(j.value ->> 'run_at', ?2), j.value ->> 'timeout_ms',
                    j.value ->> 'ik', j.value ->> 'ck', j.value ->> 'cl', j.value ->> 'corr',
                    j.value ->> 'by', ?2
             FROM json_each(?1) AS j WHERE true
             ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
             RETURNING id",
        )
        .bind(Value::from(batch).to_string())
        .bind(now)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        // Everything stored is known here, so the rows need not be read back.
        let inserted: HashSet<String> = inserted.into_iter().map(|(id,)| id).collect();
        let created: Vec<Task> = new
            .iter()
            .filter(|t| inserted.contains(&t.id.to_string()))
            .map(|t| {
                let run_at = t.run_at.unwrap_or(at);
                let status = if run_at > at {
                    TaskStatus::Scheduled
                } else {
                    TaskStatus::Queued
                };
                // Stored with microsecond precision: return what a read would.
                let run_at = instant(us(run_at)).unwrap_or(run_at);
                inserted_task(t, status, run_at, instant(now).unwrap_or(at))
            })
            .collect();
        let missing_keys = conflicting_keys(new, &created);
        let mut existing = Vec::new();
        if !missing_keys.is_empty() {
            let rows: Vec<TaskRow> = sqlx::query_as(sql!(
                "SELECT {COLUMNS} FROM tasks
                 WHERE idempotency_key IN (SELECT value FROM json_each(?1))"
            ))
            .bind(Value::from(missing_keys).to_string())
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
            existing = tasks(rows)?;
        }
        let ids: Vec<Uuid> = created.iter().map(|t| t.id).collect();
        self.commit_recording(tx, &ids, Transition::Created).await?;
        in_input_order(new, created, existing)
    }

    async fn get(&self, id: Uuid) -> Result<Option<Task>, StoreError> {
        let row: Option<TaskRow> =
            sqlx::query_as(sql!("SELECT {COLUMNS} FROM tasks WHERE id = ?1"))
                .bind(id.to_string())
                .fetch_optional(&self.readers)
                .await
                .map_err(db_error)?;
        row.map(Task::try_from).transpose()
    }

    async fn list(&self, filter: &TaskFilter) -> Result<Vec<Task>, StoreError> {
        let rows: Vec<TaskRow> = sqlx::query_as(sql!(
            "SELECT {COLUMNS} FROM tasks
             WHERE (?1 IS NULL OR status = ?1)
               AND (?2 IS NULL OR type = ?2)
               AND (?3 IS NULL OR queue = ?3)
               AND (?4 IS NULL OR id < ?4)
               AND (?6 IS NULL OR created_by = ?6)
             ORDER BY id DESC
             LIMIT ?5"
        ))
        .bind(filter.status.map(TaskStatus::as_str))
        .bind(filter.task_type.as_deref())
        .bind(filter.queue.as_deref())
        .bind(filter.before.map(|id| id.to_string()))
        .bind(i64::from(filter.limit))
        .bind(filter.created_by.as_deref())
        .fetch_all(&self.readers)
        .await
        .map_err(db_error)?;
        tasks(rows)
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<Task>, StoreError> {
        let now = Utc::now();
        let mut tx = self.writer.begin().await.map_err(db_error)?;
        let candidates: Vec<(String, Option<String>, Option<i32>)> = sqlx::query_as(
            "SELECT id, concurrency_key, concurrency_limit FROM tasks
             WHERE status IN ('queued', 'scheduled', 'failed') AND run_at <= ?1
               AND type IN (SELECT value FROM json_each(?2))
               AND (concurrency_key IS NULL OR concurrency_key NOT IN (
                     SELECT concurrency_key FROM tasks
                     WHERE status = 'running' AND concurrency_key IS NOT NULL
                     GROUP BY concurrency_key
                     HAVING count(*) >= min(concurrency_limit)))
             ORDER BY priority DESC, run_at, id
             LIMIT ?3",
        )
        .bind(us(now))
        .bind(Value::from(request.types.clone()).to_string())
        .bind(i64::from(request.limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        if candidates.is_empty() {
            tx.rollback().await.map_err(db_error)?;
            return Ok(Vec::new());
        }
        let candidates = candidates
            .into_iter()
            .map(|(id, concurrency_key, concurrency_limit)| {
                Ok(Candidate {
                    id: Uuid::parse_str(&id).map_err(corrupt)?,
                    concurrency_key,
                    concurrency_limit,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let keys: Vec<&str> = candidates
            .iter()
            .filter_map(|c| c.concurrency_key.as_deref())
            .collect();
        let mut running = HashMap::new();
        if !keys.is_empty() {
            // This is the only writer, so nothing can start between this count and the update.
            let counts: Vec<(String, i64)> = sqlx::query_as(
                "SELECT concurrency_key, count(*) FROM tasks
                 WHERE status = 'running'
                   AND concurrency_key IN (SELECT value FROM json_each(?1))
                 GROUP BY concurrency_key",
            )
            .bind(Value::from(keys).to_string())
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
            running.extend(counts);
        }
        let ids = admit(&candidates, &running);
        let rows: Vec<TaskRow> = sqlx::query_as(sql!(
            "UPDATE tasks SET status = 'running', attempts = attempts + 1, started_at = ?2,
                 lease_owner = ?3, lease_expires_at = ?4
             WHERE id IN (SELECT value FROM json_each(?1))
             RETURNING {COLUMNS}"
        ))
        .bind(ids_json(&ids))
        .bind(us(now))
        .bind(&request.owner)
        .bind(lease_end(now, request.lease))
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        let mut claimed = tasks(rows)?;
        let ids: Vec<Uuid> = claimed.iter().map(|t| t.id).collect();
        self.commit_recording(tx, &ids, Transition::Started).await?;
        claim_order(&mut claimed);
        Ok(claimed)
    }

    async fn complete(
        &self,
        owner: &str,
        completions: &[Completion],
    ) -> Result<Vec<Uuid>, StoreError> {
        if completions.is_empty() {
            return Ok(Vec::new());
        }
        let batch: Vec<Value> = completions
            .iter()
            .map(|c| {
                let mut entry =
                    json!({"id": c.id.to_string(), "status": c.outcome.status().as_str()});
                match &c.outcome {
                    Outcome::Succeeded(value) => {
                        if let Some(value) = non_null(value) {
                            entry["result"] = value.clone();
                        }
                    }
                    Outcome::Retry { error, retry_at } => {
                        entry["error"] = error_json(error);
                        entry["run_at"] = us(*retry_at).into();
                    }
                    Outcome::Dead(error) => entry["error"] = error_json(error),
                }
                entry
            })
            .collect();
        // The unary `+` keeps SQLite from driving this join from the running-task index (a
        // scan of the batch per running task); the batch drives it, one key lookup per entry.
        let query = sqlx::query_as::<_, (String,)>(
            "UPDATE tasks SET status = c.value ->> 'status', result = c.value -> 'result',
                 error = c.value -> 'error',
                 run_at = coalesce(c.value ->> 'run_at', tasks.run_at),
                 finished_at = CASE WHEN c.value ->> 'status' = 'failed' THEN NULL ELSE ?2 END,
                 lease_owner = NULL, lease_expires_at = NULL
             FROM json_each(?1) AS c
             WHERE tasks.id = c.value ->> 'id' AND +tasks.status = 'running'
               AND +tasks.lease_owner = ?3
             RETURNING tasks.id",
        )
        .bind(Value::from(batch).to_string())
        .bind(us(Utc::now()))
        .bind(owner);
        let recording = self.begin_recording(Transition::Settled).await?;
        let (changed, tx) = match recording {
            Some((mut tx, _)) => (query.fetch_all(&mut *tx).await.map_err(db_error)?, Some(tx)),
            None => (query.fetch_all(&self.writer).await.map_err(db_error)?, None),
        };
        let changed = changed
            .into_iter()
            .map(|(id,)| Uuid::parse_str(&id).map_err(corrupt))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(tx) = tx {
            self.commit_recording(tx, &changed, Transition::Settled)
                .await?;
        }
        Ok(changed)
    }

    async fn heartbeat(
        &self,
        owner: &str,
        ids: &[Uuid],
        lease: Duration,
    ) -> Result<Vec<Uuid>, StoreError> {
        let held: Vec<(String,)> = sqlx::query_as(
            "UPDATE tasks SET lease_expires_at = ?3
             WHERE id IN (SELECT value FROM json_each(?1)) AND status = 'running'
               AND lease_owner = ?2
             RETURNING id",
        )
        .bind(ids_json(ids))
        .bind(owner)
        .bind(lease_end(Utc::now(), lease))
        .fetch_all(&self.writer)
        .await
        .map_err(db_error)?;
        held.into_iter()
            .map(|(id,)| Uuid::parse_str(&id).map_err(corrupt))
            .collect()
    }

    async fn release(&self, owner: &str, ids: &[Uuid]) -> Result<u64, StoreError> {
        let query = sqlx::query_as::<_, (String,)>(
            "UPDATE tasks SET status = 'queued', attempts = max(attempts - 1, 0),
                 lease_owner = NULL, lease_expires_at = NULL
             WHERE id IN (SELECT value FROM json_each(?1)) AND status = 'running'
               AND lease_owner = ?2
             RETURNING id",
        )
        .bind(ids_json(ids))
        .bind(owner);
        match self.begin_recording(Transition::Requeued).await? {
            Some((mut tx, _)) => {
                let released = query
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(db_error)?
                    .into_iter()
                    .map(|(id,)| Uuid::parse_str(&id).map_err(corrupt))
                    .collect::<Result<Vec<_>, _>>()?;
                self.commit_recording(tx, &released, Transition::Requeued)
                    .await?;
                Ok(released.len() as u64)
            }
            None => Ok(query.fetch_all(&self.writer).await.map_err(db_error)?.len() as u64),
        }
    }

    async fn cancel(&self, id: Uuid) -> Result<CancelOutcome, StoreError> {
        let mut tx = self.writer.begin().await.map_err(db_error)?;
        let previous: Option<(String,)> = sqlx::query_as("SELECT status FROM tasks WHERE id = ?1")
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?;
        let Some((previous,)) = previous else {
            return Ok(CancelOutcome::NotFound);
        };
        let previous = TaskStatus::from_str(&previous).map_err(corrupt)?;
        let row: TaskRow = if previous.is_final() {
            sqlx::query_as(sql!("SELECT {COLUMNS} FROM tasks WHERE id = ?1"))
                .bind(id.to_string())
                .fetch_one(&mut *tx)
                .await
                .map_err(db_error)?
        } else {
            sqlx::query_as(sql!(
                "UPDATE tasks SET status = 'cancelled', finished_at = ?2,
                     lease_owner = NULL, lease_expires_at = NULL
                 WHERE id = ?1
                 RETURNING {COLUMNS}"
            ))
            .bind(id.to_string())
            .bind(us(Utc::now()))
            .fetch_one(&mut *tx)
            .await
            .map_err(db_error)?
        };
        let changed = if previous.is_final() {
            Vec::new()
        } else {
            vec![id]
        };
        self.commit_recording(tx, &changed, Transition::Cancelled)
            .await?;
        let task = Task::try_from(row)?;
        Ok(if previous.is_final() {
            CancelOutcome::AlreadyFinal(task)
        } else {
            CancelOutcome::Cancelled {
                task,
                was_running: previous == TaskStatus::Running,
            }
        })
    }

    async fn retry(&self, id: Uuid) -> Result<RetryOutcome, StoreError> {
        let query = sqlx::query_as::<_, TaskRow>(sql!(
            "UPDATE tasks SET status = 'queued', run_at = ?2, finished_at = NULL,
                 max_attempts = max(max_attempts, attempts + 1)
             WHERE id = ?1 AND status IN ('failed', 'dead')
             RETURNING {COLUMNS}"
        ))
        .bind(id.to_string())
        .bind(us(Utc::now()));
        let row = match self.begin_recording(Transition::Requeued).await? {
            Some((mut tx, _)) => {
                let row = query.fetch_optional(&mut *tx).await.map_err(db_error)?;
                let ids: Vec<Uuid> = row.iter().map(|_| id).collect();
                self.commit_recording(tx, &ids, Transition::Requeued)
                    .await?;
                row
            }
            None => query.fetch_optional(&self.writer).await.map_err(db_error)?,
        };
        match row {
            Some(row) => Ok(RetryOutcome::Requeued(row.try_into()?)),
            None => Ok(match self.get(id).await? {
                Some(task) => RetryOutcome::NotRetryable(task),
                None => RetryOutcome::NotFound,
            }),
        }
    }

    async fn rescue(&self) -> Result<Vec<Task>, StoreError> {
        let now = us(Utc::now());
        let query = sqlx::query_as::<_, TaskRow>(sql!(
            "UPDATE tasks SET
                 status = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'queued' END,
                 finished_at = CASE WHEN attempts >= max_attempts THEN ?1 END,
                 error = json_object(
                     'message', 'lease expired: the node running this attempt stopped responding',
                     'attempt', attempts),
                 lease_owner = NULL, lease_expires_at = NULL
             WHERE id IN (SELECT id FROM tasks
                          WHERE status = 'running' AND lease_expires_at < ?1 LIMIT ?2)
             RETURNING {COLUMNS}"
        ))
        .bind(now)
        .bind(RESCUE_CHUNK);
        match self.begin_recording(Transition::Rescued).await? {
            Some((mut tx, _)) => {
                let rescued = tasks(query.fetch_all(&mut *tx).await.map_err(db_error)?)?;
                let ids: Vec<Uuid> = rescued.iter().map(|t| t.id).collect();
                self.commit_recording(tx, &ids, Transition::Rescued).await?;
                Ok(rescued)
            }
            None => tasks(query.fetch_all(&self.writer).await.map_err(db_error)?),
        }
    }

    async fn prune(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        // Bounded by the primary key: see the PostgreSQL store.
        let bound = mcp_core::task::first_id_at(before).to_string();
        let mut total = 0;
        loop {
            let done = sqlx::query(
                "DELETE FROM tasks WHERE id IN (
                     SELECT id FROM tasks
                     WHERE id < ?3 AND status IN ('succeeded', 'dead', 'cancelled')
                       AND finished_at < ?1
                     LIMIT ?2)",
            )
            .bind(us(before))
            .bind(PRUNE_CHUNK)
            .bind(&bound)
            .execute(&self.writer)
            .await
            .map_err(db_error)?;
            total += done.rows_affected();
            if done.rows_affected() < PRUNE_CHUNK as u64 {
                return Ok(total);
            }
        }
    }

    async fn next_run_at(&self, types: &[String]) -> Result<Option<DateTime<Utc>>, StoreError> {
        let (at,): (Option<i64>,) = sqlx::query_as(
            "SELECT min(run_at) FROM tasks
             WHERE status IN ('scheduled', 'failed')
               AND type IN (SELECT value FROM json_each(?1))",
        )
        .bind(Value::from(types.to_vec()).to_string())
        .fetch_one(&self.readers)
        .await
        .map_err(db_error)?;
        at.map(instant).transpose()
    }

    async fn counts(&self) -> Result<TaskCounts, StoreError> {
        let rows: Vec<(String, String, i64)> =
            sqlx::query_as("SELECT queue, status, count(*) FROM tasks GROUP BY queue, status")
                .fetch_all(&self.readers)
                .await
                .map_err(db_error)?;
        task_counts(rows)
    }

    async fn pending(&self) -> Result<u64, StoreError> {
        let (waiting,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM tasks WHERE status IN ('queued', 'scheduled', 'failed')",
        )
        .fetch_one(&self.readers)
        .await
        .map_err(db_error)?;
        let (running,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM tasks WHERE status = 'running'")
                .fetch_one(&self.readers)
                .await
                .map_err(db_error)?;
        Ok((waiting + running).max(0) as u64)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.readers)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn watch(&self, _wake: Arc<Notify>) -> Result<(), StoreError> {
        // One process owns the file; its orchestrator wakes itself on every insert.
        Ok(())
    }
}
