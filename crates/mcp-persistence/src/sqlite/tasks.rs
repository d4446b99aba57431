//! The `TaskStore` of the SQLite store. Batches of ids and outcomes travel as JSON arrays through
//! `json_each`, so a claim or a batch of outcomes is one statement; new tasks are bound column by
//! column in multi-row `INSERT`s of a few fixed sizes. The one writer connection makes every
//! claim a single-writer transaction.

use super::SqliteTaskStore;
use super::task_row::{TaskRow, tasks};
use crate::codec::{id_text, ids_json, instant, json_array, micros, micros_after, unsigned, uuid};
use crate::columns::TASK_COLUMNS;
use crate::error::{corrupt, db_error};
use crate::outbox::Transition;
use crate::tasks::{
    PRUNE_CHUNK, RESCUE_CHUNK, claim_order, conflicting_keys, in_input_order, inserted_task,
    non_null, task_counts,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mcp_core::store::{Candidate, StartRequest, TaskCounts, admit};
use mcp_core::task::Progress;
use mcp_core::workflow::{
    NewWorkflow, Retried, Settled, Workflow, WorkflowDetail, WorkflowFilter, WorkflowNode,
};
use mcp_core::{
    CancelOutcome, ClaimRequest, Completion, Inserted, NewTask, Outcome, RetryOutcome, StoreError,
    Task, TaskError, TaskFilter, TaskStatus, TaskStore,
};
use rusqlite::OptionalExtension;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tokio::sync::Notify;
use uuid::Uuid;

/// A task by id.
static TASK_BY_ID: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1"));

/// A claim candidate: id, concurrency key and limit, share key.
type CandidateRow = (String, Option<String>, Option<i32>, Option<String>);

impl SqliteTaskStore {
    /// The claim of tasks no limit covers, skipping the queues in `skipped` (the paused ones,
    /// and those a limited claim counted).
    pub(super) async fn claim_open(
        &self,
        request: &ClaimRequest,
        skipped: &[String],
    ) -> Result<Vec<Task>, StoreError> {
        // Share keys at their cap on this node: their tasks are skipped by both paths.
        let saturated = json_array(request.share.saturated());
        let skipped = json_array(skipped.to_vec());
        // Fast path, one statement: while no runnable task has a concurrency key, nothing needs
        // admitting, so start the next tasks in claim order directly (as on PostgreSQL; the
        // partial index `tasks_runnable_keyed` answers the check). When it claims nothing
        // (keyed tasks are waiting, or the queue is empty) the admitting path decides.
        // The clock is read once the claim holds the single writer: a dependent that a
        // completion released while this claim waited behind it must not look started before
        // its parent finished.
        if request.share.fits(request.limit) {
            let fast = |now: DateTime<Utc>| {
                sqlx::query_as::<_, TaskRow>(sql!(
                    "UPDATE tasks SET status = 'running', attempts = attempts + 1, started_at = ?2,
                     lease_owner = ?3, lease_expires_at = ?4
                 WHERE id IN (
                     SELECT id FROM tasks
                     WHERE status IN ('queued', 'scheduled', 'failed') AND run_at <= ?2
                       AND type IN (SELECT value FROM json_each(?1)) AND concurrency_key IS NULL
                       AND queue NOT IN (SELECT value FROM json_each(?7))
                       AND (share_key IS NULL OR share_key NOT IN (SELECT value FROM json_each(?6)))
                       AND NOT EXISTS (
                           SELECT 1 FROM tasks
                           WHERE status IN ('queued', 'scheduled', 'failed')
                             AND concurrency_key IS NOT NULL AND run_at <= ?2)
                     ORDER BY priority DESC, run_at, id
                     LIMIT ?5)
                 RETURNING {TASK_COLUMNS}"
                ))
                .bind(json_array(request.types.clone()))
                .bind(micros(now))
                .bind(&request.owner)
                .bind(micros_after(now, request.lease))
                .bind(i64::from(request.limit))
                .bind(&saturated)
                .bind(&skipped)
            };
            let rows = match self.begin_recording(Transition::Started).await? {
                Some((mut tx, _)) => {
                    let rows = fast(Utc::now())
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(db_error)?;
                    let ids = rows
                        .iter()
                        .map(|r| uuid(&r.id))
                        .collect::<Result<Vec<_>, _>>()?;
                    self.commit_recording(tx, &ids, Transition::Started).await?;
                    rows
                }
                None => {
                    let mut writer = self.writer.acquire().await.map_err(db_error)?;
                    fast(Utc::now())
                        .fetch_all(&mut *writer)
                        .await
                        .map_err(db_error)?
                }
            };
            let mut claimed = tasks(rows)?;
            if !claimed.is_empty() {
                claim_order(&mut claimed);
                return Ok(claimed);
            }
        }
        let mut tx = self.writer.begin().await.map_err(db_error)?;
        let now = Utc::now();
        let candidates: Vec<CandidateRow> = sqlx::query_as(
            "SELECT id, concurrency_key, concurrency_limit, share_key FROM tasks
             WHERE status IN ('queued', 'scheduled', 'failed') AND run_at <= ?1
               AND type IN (SELECT value FROM json_each(?2))
               AND queue NOT IN (SELECT value FROM json_each(?5))
               AND (share_key IS NULL OR share_key NOT IN (SELECT value FROM json_each(?4)))
               AND (concurrency_key IS NULL OR concurrency_key NOT IN (
                     SELECT concurrency_key FROM tasks
                     WHERE status = 'running' AND concurrency_key IS NOT NULL
                     GROUP BY concurrency_key
                     HAVING count(*) >= min(concurrency_limit)))
             ORDER BY priority DESC, run_at, id
             LIMIT ?3",
        )
        .bind(micros(now))
        .bind(json_array(request.types.clone()))
        .bind(i64::from(request.limit))
        .bind(&saturated)
        .bind(&skipped)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        if candidates.is_empty() {
            tx.rollback().await.map_err(db_error)?;
            return Ok(Vec::new());
        }
        let candidates = candidates
            .into_iter()
            .map(|(id, concurrency_key, concurrency_limit, share_key)| {
                Ok(Candidate {
                    id: uuid(&id)?,
                    concurrency_key,
                    concurrency_limit,
                    share_key,
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
            .bind(json_array(keys))
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
            running.extend(counts);
        }
        let ids = admit(&candidates, &running, &request.share);
        let rows: Vec<TaskRow> = sqlx::query_as(sql!(
            "UPDATE tasks SET status = 'running', attempts = attempts + 1, started_at = ?2,
                 lease_owner = ?3, lease_expires_at = ?4
             WHERE id IN (SELECT value FROM json_each(?1))
             RETURNING {TASK_COLUMNS}"
        ))
        .bind(ids_json(&ids))
        .bind(micros(now))
        .bind(&request.owner)
        .bind(micros_after(now, request.lease))
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        let mut claimed = tasks(rows)?;
        let ids: Vec<Uuid> = claimed.iter().map(|t| t.id).collect();
        self.commit_recording(tx, &ids, Transition::Started).await?;
        claim_order(&mut claimed);
        Ok(claimed)
    }

    /// The task `id` if it is a row (when it is not, `get` writes it as one if it is a
    /// deferred workflow task, and reads again).
    async fn get_row(&self, id: Uuid) -> Result<Option<Task>, StoreError> {
        // On this thread first (`direct.rs`); through the pool if that cannot be done at once.
        let mut text = Uuid::encode_buffer();
        let text = &*id.hyphenated().encode_lower(&mut text);
        let direct = self.direct.read(|connection| {
            connection
                .prepare_cached(&TASK_BY_ID)?
                .query_row([text], TaskRow::from_direct)
                .optional()
        });
        let row = match direct {
            Ok(row) => row,
            Err(e) => {
                tracing::debug!(error = %e, "direct read failed; reading through the pool");
                sqlx::query_as(sqlx::AssertSqlSafe(TASK_BY_ID.as_str()))
                    .bind(text)
                    .fetch_optional(&self.readers)
                    .await
                    .map_err(db_error)?
            }
        };
        row.map(Task::try_from).transpose()
    }

    /// Cancels the task `id` if it is a row (when it is not, `cancel` writes it as one if it
    /// is a deferred workflow task, and asks again).
    async fn cancel_row(&self, id: Uuid) -> Result<CancelOutcome, StoreError> {
        let mut tx = self.writer.begin().await.map_err(db_error)?;
        let previous: Option<(String,)> = sqlx::query_as("SELECT status FROM tasks WHERE id = ?1")
            .bind(id_text(id))
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?;
        let Some((previous,)) = previous else {
            return Ok(CancelOutcome::NotFound);
        };
        let previous = TaskStatus::from_str(&previous).map_err(corrupt)?;
        let row: TaskRow = if previous.is_final() {
            sqlx::query_as(sql!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1"))
                .bind(id_text(id))
                .fetch_one(&mut *tx)
                .await
                .map_err(db_error)?
        } else {
            sqlx::query_as(sql!(
                "UPDATE tasks SET status = 'cancelled', finished_at = ?2,
                     lease_owner = NULL, lease_expires_at = NULL
                 WHERE id = ?1
                 RETURNING {TASK_COLUMNS}"
            ))
            .bind(id_text(id))
            .bind(micros(Utc::now()))
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
}

#[async_trait]
impl TaskStore for SqliteTaskStore {
    async fn insert(&self, new: &[NewTask]) -> Result<Vec<Inserted>, StoreError> {
        if new.is_empty() {
            return Ok(Vec::new());
        }
        let at = Utc::now();
        let now = micros(at);
        let mut tx = self.writer.begin().await.map_err(db_error)?;
        let mut inserted: HashSet<Uuid> = HashSet::with_capacity(new.len());
        for chunk in insert_chunks(new) {
            let rows = chunk.len();
            // Only an idempotency key can leave a task out (`ON CONFLICT … DO NOTHING`; any
            // other conflict is an error): without one every task is stored, and the ids need
            // not travel back.
            let keyed = chunk.iter().any(|t| t.idempotency_key.is_some());
            let statement = if keyed { Insert::Keyed } else { Insert::Plain };
            let mut query = sqlx::query_as::<_, (String,)>(sqlx::AssertSqlSafe(insert_values_sql(
                rows, statement,
            )));
            for t in chunk {
                query = bind_new_task(query, t, (now, now), Begins::Due)?;
            }
            if keyed {
                for (id,) in query.fetch_all(&mut *tx).await.map_err(db_error)? {
                    inserted.insert(uuid(&id)?);
                }
            } else {
                let stored = sqlx::Executor::execute(&mut *tx, query)
                    .await
                    .map_err(db_error)?
                    .rows_affected();
                if stored != rows as u64 {
                    return Err(StoreError::Database(format!(
                        "stored {stored} of {rows} tasks without idempotency keys"
                    )));
                }
                inserted.extend(chunk.iter().map(|t| t.id));
            }
        }
        // Everything stored is known here, so the rows need not be read back.
        let created: Vec<Task> = new
            .iter()
            .filter(|t| inserted.contains(&t.id))
            .map(|t| {
                let run_at = t.run_at.unwrap_or(at);
                let status = if run_at > at {
                    TaskStatus::Scheduled
                } else {
                    TaskStatus::Queued
                };
                // Stored with microsecond precision: return what a read would.
                let run_at = instant(micros(run_at)).unwrap_or(run_at);
                inserted_task(t, status, run_at, instant(now).unwrap_or(at))
            })
            .collect();
        let missing_keys = conflicting_keys(new, &created);
        let mut existing = Vec::new();
        if !missing_keys.is_empty() {
            let rows: Vec<TaskRow> = sqlx::query_as(sql!(
                "SELECT {TASK_COLUMNS} FROM tasks
                 WHERE idempotency_key IN (SELECT value FROM json_each(?1))"
            ))
            .bind(json_array(missing_keys))
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
        // A miss may be a deferred workflow task: written as a row, then read. Read again
        // whatever that found, as a completion may have written it in between.
        match self.get_row(id).await? {
            None => {
                self.write_deferred_holding(id).await?;
                self.get_row(id).await
            }
            found => Ok(found),
        }
    }

    async fn list(&self, filter: &TaskFilter) -> Result<Vec<Task>, StoreError> {
        self.write_all_deferred().await?;
        let rows: Vec<TaskRow> = sqlx::query_as(sql!(
            "SELECT {TASK_COLUMNS} FROM tasks
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
        .bind(filter.before.map(id_text))
        .bind(i64::from(filter.limit))
        .bind(filter.created_by.as_deref())
        .fetch_all(&self.readers)
        .await
        .map_err(db_error)?;
        tasks(rows)
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<Task>, StoreError> {
        // Pauses and limits from this node's cache (`limits.rs`): a claim no limit concerns
        // reads no flow-control table.
        let flow = self.flow_view().await?;
        if flow.limits(&request.types) {
            return self.claim_with_limits(request, &flow).await;
        }
        self.claim_open(request, &flow.paused).await
    }

    async fn complete(
        &self,
        owner: &str,
        completions: &[Completion],
    ) -> Result<Vec<Uuid>, StoreError> {
        if completions.is_empty() {
            return Ok(Vec::new());
        }
        let now = micros(Utc::now());
        // The common batch, successes without a result, needs only their ids; others travel
        // as a JSON document with their outcomes.
        let query = if completions.iter().all(plain_success) {
            let ids: Vec<Uuid> = completions.iter().map(|c| c.id).collect();
            sqlx::query_as::<_, (String,)>(succeed_sql!("RETURNING id")).bind(ids_json(&ids))
        } else {
            sqlx::query_as::<_, (String,)>(complete_sql!("RETURNING tasks.id"))
                .bind(completion_batch(completions)?)
        }
        .bind(now)
        .bind(owner);
        let recording = self.begin_recording(Transition::Settled).await?;
        let (changed, tx) = match recording {
            Some((mut tx, _)) => (query.fetch_all(&mut *tx).await.map_err(db_error)?, Some(tx)),
            None => (query.fetch_all(&self.writer).await.map_err(db_error)?, None),
        };
        let changed = changed
            .into_iter()
            .map(|(id,)| uuid(&id))
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
        .bind(micros_after(Utc::now(), lease))
        .fetch_all(&self.writer)
        .await
        .map_err(db_error)?;
        held.into_iter().map(|(id,)| uuid(&id)).collect()
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
                    .map(|(id,)| uuid(&id))
                    .collect::<Result<Vec<_>, _>>()?;
                self.commit_recording(tx, &released, Transition::Requeued)
                    .await?;
                Ok(released.len() as u64)
            }
            None => Ok(query.fetch_all(&self.writer).await.map_err(db_error)?.len() as u64),
        }
    }

    async fn cancel(&self, id: Uuid) -> Result<CancelOutcome, StoreError> {
        // As `get`: a miss may be a deferred workflow task.
        match self.cancel_row(id).await? {
            CancelOutcome::NotFound => {
                self.write_deferred_holding(id).await?;
                self.cancel_row(id).await
            }
            outcome => Ok(outcome),
        }
    }

    async fn retry(&self, id: Uuid) -> Result<RetryOutcome, StoreError> {
        let query = sqlx::query_as::<_, TaskRow>(sql!(
            "UPDATE tasks SET status = 'queued', run_at = ?2, finished_at = NULL,
                 max_attempts = max(max_attempts, attempts + 1)
             WHERE id = ?1 AND status IN ('failed', 'dead')
             RETURNING {TASK_COLUMNS}"
        ))
        .bind(id_text(id))
        .bind(micros(Utc::now()));
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
        let now = micros(Utc::now());
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
             RETURNING {TASK_COLUMNS}"
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
        let bound = id_text(mcp_core::task::first_id_at(before));
        let mut total = 0;
        loop {
            let done = sqlx::query(
                "DELETE FROM tasks WHERE id IN (
                     SELECT id FROM tasks
                     WHERE id < ?3 AND status IN ('succeeded', 'dead', 'cancelled')
                       AND finished_at < ?1
                     LIMIT ?2)",
            )
            .bind(micros(before))
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
        // A used-up window's reopening counts too: its tasks are queued and due already.
        let reopen = self.flow.next_reopen(types);
        let (at,): (Option<i64>,) = sqlx::query_as(
            "SELECT min(run_at) FROM tasks
             WHERE status IN ('scheduled', 'failed')
               AND type IN (SELECT value FROM json_each(?1))
               AND queue NOT IN (SELECT queue FROM queue_pauses)",
        )
        .bind(json_array(types.to_vec()))
        .fetch_one(&self.readers)
        .await
        .map_err(db_error)?;
        Ok(crate::flow::earliest(at.map(instant).transpose()?, reopen))
    }

    async fn counts(&self) -> Result<TaskCounts, StoreError> {
        // A workflow's deferred tasks are `waiting`.
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT queue, status, sum(n) FROM (
                 SELECT queue, status, count(*) AS n FROM tasks GROUP BY queue, status
                 UNION ALL
                 SELECT q.value, 'waiting', count(*) FROM workflow_deferred d, json_each(d.queues) q
                 GROUP BY q.value)
             GROUP BY queue, status",
        )
        .fetch_all(&self.readers)
        .await
        .map_err(db_error)?;
        task_counts(rows)
    }

    async fn minute_stats(
        &self,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<mcp_core::stats::MinuteStats>, StoreError> {
        self.minute_stats_sql(since, until).await
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
        Ok(unsigned(waiting + running))
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

    async fn insert_workflow(
        &self,
        workflow: &NewWorkflow,
        tasks: &[NewTask],
        nodes: &[WorkflowNode],
    ) -> Result<(Workflow, Vec<Task>), StoreError> {
        self.insert_workflow_tx(workflow, tasks, nodes).await
    }

    async fn extend_workflow(
        &self,
        workflow_id: Uuid,
        tasks: &[NewTask],
        nodes: &[WorkflowNode],
    ) -> Result<Option<Settled>, StoreError> {
        self.extend_workflow_tx(workflow_id, tasks, nodes).await
    }

    async fn get_workflow(&self, id: Uuid) -> Result<Option<WorkflowDetail>, StoreError> {
        self.get_workflow_row(id).await
    }

    async fn release_ready(
        &self,
        start: Option<&StartRequest<'_>>,
    ) -> Result<Option<Settled>, StoreError> {
        self.release_ready_tx(start).await
    }

    fn on_released(&self, hook: mcp_core::store::ReleaseHook) {
        self.released.set(hook);
    }

    async fn list_workflows(&self, filter: &WorkflowFilter) -> Result<Vec<Workflow>, StoreError> {
        self.list_workflow_rows(filter).await
    }

    async fn complete_workflow(
        &self,
        owner: &str,
        completions: &[Completion],
        start: Option<&StartRequest<'_>>,
    ) -> Result<Settled, StoreError> {
        self.complete_workflow_tx(owner, completions, start).await
    }

    async fn settle_workflow_tasks(&self, ids: &[Uuid]) -> Result<Settled, StoreError> {
        self.settle_tx(ids).await
    }

    async fn cancel_workflow(
        &self,
        id: Uuid,
    ) -> Result<Option<(Workflow, Vec<(Task, bool)>)>, StoreError> {
        self.cancel_workflow_tx(id).await
    }

    async fn retry_workflow_task(&self, id: Uuid) -> Result<Retried, StoreError> {
        self.retry_workflow_task_tx(id).await
    }

    async fn parents(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, Value>, StoreError> {
        self.parents_of(ids).await
    }

    async fn set_progress(&self, id: Uuid, progress: &Progress) -> Result<bool, StoreError> {
        self.set_progress_row(id, progress).await
    }
}

/// Records finished attempts from [`completion_batch`] (`?1`) at `?2`: only tasks still
/// `running` under the lease of `?3` change, and a deferred attempt (`scheduled` again) gives its
/// attempt back. One statement for `complete` and a workflow's `complete_workflow`, which also
/// reads each new status; `$returning` ends it. The unary `+` keeps SQLite from driving the join
/// from the running-task index (a scan of the batch per running task); the batch drives it, one
/// key lookup per entry.
macro_rules! complete_sql {
    ($returning:literal) => {
        complete_sql!(set: "", $returning)
    };
    // `set` adds assignments (`, column = …`), as a workflow's completion marks its final tasks
    // settled.
    (set: $set:literal, $returning:literal) => {
        concat!(
            "UPDATE tasks SET status = c.value ->> 'status', result = c.value -> 'result',
                 error = c.value -> 'error'",
            $set,
            ",
                 run_at = coalesce(c.value ->> 'run_at', tasks.run_at),
                 attempts = tasks.attempts
                     - CASE WHEN c.value ->> 'status' = 'scheduled' THEN 1 ELSE 0 END,
                 finished_at = CASE WHEN c.value ->> 'status' IN ('failed', 'scheduled') THEN NULL
                                    ELSE ?2 END,
                 lease_owner = NULL, lease_expires_at = NULL
             FROM json_each(?1) AS c
             WHERE tasks.id = c.value ->> 'id' AND +tasks.status = 'running'
               AND +tasks.lease_owner = ?3 ",
            $returning
        )
    };
}
pub(super) use complete_sql;

/// Records successes without a result (see [`plain_success`]) by their ids alone (`?1`, a JSON
/// array) at `?2`, as [`complete_sql`] records any outcome: about a third cheaper for SQLite
/// than reading each entry's fields out of its JSON object. `set` and `$returning` as there.
macro_rules! succeed_sql {
    ($returning:literal) => {
        succeed_sql!(set: "", $returning)
    };
    (set: $set:literal, $returning:literal) => {
        concat!(
            "UPDATE tasks SET status = 'succeeded', result = NULL, error = NULL",
            $set,
            ", finished_at = ?2, lease_owner = NULL, lease_expires_at = NULL
             WHERE id IN (SELECT value FROM json_each(?1)) AND +status = 'running'
               AND +lease_owner = ?3 ",
            $returning
        )
    };
}
pub(super) use succeed_sql;

/// A success without a result: recorded by its id alone ([`succeed_sql`]).
pub(super) fn plain_success(completion: &Completion) -> bool {
    matches!(&completion.outcome, Outcome::Succeeded(value) if value.is_null())
}

/// A finished attempt as one entry of the JSON array [`complete_sql`] reads.
#[derive(serde::Serialize)]
struct CompletionColumns<'a> {
    id: Uuid,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a TaskError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    run_at: Option<i64>,
}

/// Finished attempts as the JSON array [`complete_sql`] reads.
pub(super) fn completion_batch(completions: &[Completion]) -> Result<String, StoreError> {
    let batch: Vec<CompletionColumns<'_>> = completions
        .iter()
        .map(|c| {
            let (result, error, run_at) = match &c.outcome {
                Outcome::Succeeded(value) => (non_null(value), None, None),
                Outcome::Retry { error, retry_at } | Outcome::Deferred { error, retry_at } => {
                    (None, Some(error), Some(micros(*retry_at)))
                }
                Outcome::Dead(error) => (None, Some(error), None),
            };
            CompletionColumns {
                id: c.id,
                status: c.outcome.status().as_str(),
                result,
                error,
                run_at,
            }
        })
        .collect();
    serde_json::to_string(&batch).map_err(corrupt)
}

/// Rows per `INSERT … VALUES` statement of `insert` and of a workflow's tasks: a
/// batch is cut into chunks of these sizes, largest first (1,000 tasks are two statements), so
/// there are never more than twice as many distinct statements as sizes, each prepared once
/// and kept in sqlx's statement cache. Parameters are bound one per column (19 a row, 24 for a
/// workflow's task: 12,000 for the largest, under SQLite's limit of 32,766). Why not one JSON
/// array through `json_each`: reading 19 fields out of every row's JSON object was about a
/// third of the writer thread's time while enqueueing (`perf`, `bench tasks`).
pub(super) const INSERT_CHUNKS: [usize; 5] = [500, 100, 20, 5, 1];

/// `items` cut into chunks of the [`INSERT_CHUNKS`] sizes, largest first.
pub(super) fn insert_chunks<T>(mut items: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        let rows = INSERT_CHUNKS
            .iter()
            .copied()
            .find(|&rows| rows <= items.len())?;
        let (chunk, rest) = items.split_at(rows);
        items = rest;
        Some(chunk)
    })
}

/// The columns [`bind_new_task`] binds, in its order.
const INSERT_COLUMNS: &str = "id, type, queue, priority, payload, status, max_attempts, \
     backoff_base_ms, backoff_max_ms, run_at, timeout_ms, idempotency_key, concurrency_key, \
     concurrency_limit, correlation_id, created_by, created_at, share_key, traceparent";

/// Which `INSERT … VALUES` of new tasks [`insert_values_sql`] makes.
#[derive(Clone, Copy)]
pub(super) enum Insert {
    /// Tasks of no workflow, none with an idempotency key: nothing returned.
    Plain,
    /// Tasks of no workflow, some with an idempotency key: returns the ids stored.
    Keyed,
    /// A workflow's tasks: also its id, each task's key, how many dependencies it waits on,
    /// its dependencies and its dependents (five more parameters a row, after
    /// [`bind_new_task`]'s).
    Workflow,
    /// A workflow's tasks started as they are written (`Settled::started`): as `Workflow`,
    /// then their attempts, start and lease (four more parameters a row).
    WorkflowStarted,
}

/// The `INSERT` of `rows` tasks. A task whose idempotency key is taken is left out, as
/// `insert` promises (any other conflict is an error).
pub(super) fn insert_values_sql(rows: usize, statement: Insert) -> &'static str {
    static STATEMENTS: LazyLock<Vec<[String; 4]>> = LazyLock::new(|| {
        let values = |rows: usize, columns: usize| {
            let row = format!("({})", vec!["?"; columns].join(","));
            vec![row; rows].join(",")
        };
        const CONFLICT: &str =
            "ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING";
        INSERT_CHUNKS
            .iter()
            .map(|&rows| {
                let insert = format!(
                    "INSERT INTO tasks ({INSERT_COLUMNS}) VALUES {} {CONFLICT}",
                    values(rows, 19)
                );
                let workflow = format!(
                    "INSERT INTO tasks ({INSERT_COLUMNS}, workflow_id, workflow_key, waiting_on,
                         depends_on, dependents)
                     VALUES {} {CONFLICT}",
                    values(rows, 24)
                );
                let started = format!(
                    "INSERT INTO tasks ({INSERT_COLUMNS}, workflow_id, workflow_key, waiting_on,
                         depends_on, dependents, attempts, started_at, lease_owner,
                         lease_expires_at)
                     VALUES {} {CONFLICT}",
                    values(rows, 28)
                );
                [
                    insert.clone(),
                    format!("{insert} RETURNING id"),
                    workflow,
                    started,
                ]
            })
            .collect()
    });
    &STATEMENTS[chunk_index(rows)][statement as usize]
}

/// The place of a chunk of `rows` among [`INSERT_CHUNKS`] (and of its statement among those
/// made for each size).
pub(super) fn chunk_index(rows: usize) -> usize {
    INSERT_CHUNKS
        .iter()
        .position(|&n| n == rows)
        .unwrap_or(INSERT_CHUNKS.len() - 1)
}

/// How a new task's row begins.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Begins {
    /// `scheduled` until its `run_at`, else `queued`.
    Due,
    /// `waiting` for dependencies.
    Waiting,
    /// `running`: started as it is written (its attempt and lease bound after).
    Started,
}

/// Binds the columns of one new task created at `created` and written `now` (microseconds), in
/// [`INSERT_COLUMNS`]' order, its status as it `begins`: a due one is `scheduled` until its
/// `run_at` (`created` if it has none), else `queued`. A workflow's deferred task is written
/// after its creation.
pub(super) fn bind_new_task<'q, O>(
    query: sqlx::query::QueryAs<'q, sqlx::Sqlite, O, sqlx::sqlite::SqliteArguments>,
    t: &'q NewTask,
    (created, now): (i64, i64),
    begins: Begins,
) -> Result<sqlx::query::QueryAs<'q, sqlx::Sqlite, O, sqlx::sqlite::SqliteArguments>, StoreError> {
    let run_at = t.run_at.map_or(created, micros);
    let status = match begins {
        Begins::Waiting => "waiting",
        Begins::Started => "running",
        Begins::Due if run_at > now => "scheduled",
        Begins::Due => "queued",
    };
    // Beyond `i64::MAX` only in theory (validation bounds them far lower): kept at the most.
    let signed = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    Ok(query
        .bind(id_text(t.id))
        .bind(t.task_type.as_str())
        .bind(t.queue.as_str())
        .bind(t.priority)
        .bind(serde_json::to_string(&t.payload).map_err(corrupt)?)
        .bind(status)
        .bind(t.max_attempts)
        .bind(signed(t.backoff.base_ms))
        .bind(signed(t.backoff.max_ms))
        .bind(run_at)
        .bind(signed(t.timeout_ms))
        .bind(t.idempotency_key.as_deref())
        .bind(t.concurrency_key.as_deref())
        .bind(t.concurrency_limit)
        .bind(t.correlation_id.as_deref())
        .bind(t.created_by.as_deref())
        .bind(created)
        .bind(t.share_key.as_deref())
        .bind(t.traceparent.as_deref()))
}
