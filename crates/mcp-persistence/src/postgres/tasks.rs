//! The `TaskStore` of the PostgreSQL store: claims with `FOR UPDATE SKIP LOCKED` in claim order
//! on a partial index, batch writes through `unnest` arrays, wake-ups through LISTEN/NOTIFY, and
//! maintenance elected per run with a transaction-scoped advisory lock.
//! Longer than most files here because it holds the whole task state machine of one backend
//! (insert, claim, complete, heartbeat, release, cancel, retry, rescue, prune), one statement
//! each; splitting it would split the state machine.

use super::PgTaskStore;
use super::task_row::{TaskRow, tasks};
use crate::codec::{millis, unsigned};
use crate::columns::{TASK_COLUMNS, qualified};
use crate::error::{corrupt, db_error};
use crate::outbox::Transition;
use crate::tasks::{
    PRUNE_CHUNK, RESCUE_CHUNK, claim_order, conflicting_keys, error_json, in_input_order,
    inserted_task, non_null, task_counts,
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
    Task, TaskFilter, TaskStatus, TaskStore,
};
use serde_json::Value;
use sqlx::Postgres;
use sqlx::postgres::{PgArguments, PgListener};
use sqlx::query::QueryAs;
use sqlx::types::Json;
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use uuid::Uuid;

/// A claim candidate: id, concurrency key and limit, share key.
type CandidateRow = (Uuid, Option<String>, Option<i32>, Option<String>);

impl PgTaskStore {
    /// The claim of tasks no limit covers, skipping the queues in `skipped` (the paused ones,
    /// and those a limited claim counted).
    pub(super) async fn claim_open(
        &self,
        request: &ClaimRequest,
        skipped: &[String],
    ) -> Result<Vec<Task>, StoreError> {
        // Share keys at their cap on this node: their tasks are skipped by both paths.
        let saturated = request.share.saturated();
        // Fast path, one statement: while no runnable task has a concurrency key, nothing needs
        // admitting, so lock and start the next tasks in claim order directly. When it claims
        // nothing (keyed tasks are waiting, or the queue is empty) the admitting path decides.
        // It is exact for share keys too while no unsaturated key could pass its cap within
        // `limit` tasks (`fits`); otherwise the admitting path counts them.
        // The locked rows are updated by `ctid`, where the lock found them, without a second
        // walk down the primary key; the lock keeps them where they are until the update.
        if request.share.fits(request.limit) {
            let query = sqlx::query_as::<_, TaskRow>(sql!(
                "UPDATE tasks SET status = 'running', attempts = attempts + 1, started_at = now(),
                     lease_owner = $3, lease_expires_at = now() + $4 * interval '1 millisecond'
                 FROM (SELECT ctid FROM tasks
                       WHERE status IN ('queued', 'scheduled', 'failed') AND run_at <= now()
                         AND type = ANY($1) AND concurrency_key IS NULL
                         AND queue <> ALL($6)
                         AND (share_key IS NULL OR share_key <> ALL($5))
                         AND NOT EXISTS (
                             SELECT 1 FROM tasks
                             WHERE status IN ('queued', 'scheduled', 'failed')
                               AND concurrency_key IS NOT NULL AND run_at <= now())
                       ORDER BY priority DESC, run_at, id
                       LIMIT $2
                       FOR UPDATE SKIP LOCKED) AS c
                 WHERE tasks.ctid = c.ctid
                 RETURNING {}",
                qualified(TASK_COLUMNS, "tasks")
            ))
            .bind(&request.types)
            .bind(i64::from(request.limit))
            .bind(&request.owner)
            .bind(millis(request.lease))
            .bind(&saturated)
            .bind(skipped);
            let rows = match self.begin_recording(Transition::Started).await? {
                Some((mut tx, wanted)) => {
                    let rows = query.fetch_all(&mut *tx).await.map_err(db_error)?;
                    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
                    self.commit_recorded(tx, &ids, Transition::Started, &wanted)
                        .await?;
                    rows
                }
                None => query.fetch_all(&self.pool).await.map_err(db_error)?,
            };
            let mut claimed = tasks(rows)?;
            if !claimed.is_empty() {
                claim_order(&mut claimed);
                return Ok(claimed);
            }
        }
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let candidates: Vec<CandidateRow> = sqlx::query_as(
            "SELECT id, concurrency_key, concurrency_limit, share_key FROM tasks
             WHERE status IN ('queued', 'scheduled', 'failed') AND run_at <= now()
               AND type = ANY($1)
               AND queue <> ALL($4)
               AND (share_key IS NULL OR share_key <> ALL($3))
               AND (concurrency_key IS NULL OR concurrency_key NOT IN (
                     SELECT concurrency_key FROM tasks
                     WHERE status = 'running' AND concurrency_key IS NOT NULL
                     GROUP BY concurrency_key
                     HAVING count(*) >= min(concurrency_limit)))
             ORDER BY priority DESC, run_at, id
             LIMIT $2
             FOR UPDATE SKIP LOCKED",
        )
        .bind(&request.types)
        .bind(i64::from(request.limit))
        .bind(&saturated)
        .bind(skipped)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        if candidates.is_empty() {
            tx.rollback().await.map_err(db_error)?;
            return Ok(Vec::new());
        }
        let candidates: Vec<Candidate> = candidates
            .into_iter()
            .map(
                |(id, concurrency_key, concurrency_limit, share_key)| Candidate {
                    id,
                    concurrency_key,
                    concurrency_limit,
                    share_key,
                },
            )
            .collect();
        let mut keys: Vec<&str> = candidates
            .iter()
            .filter_map(|c| c.concurrency_key.as_deref())
            .collect();
        let mut running = HashMap::new();
        if !keys.is_empty() {
            keys.sort_unstable();
            keys.dedup();
            // Serialise claimers per key (in one global order, so they cannot deadlock), then
            // count what runs now: committed claims of other nodes are visible to this statement.
            sqlx::query(
                "SELECT pg_advisory_xact_lock(hashtextextended('mcp_concurrency.' || k, 0))
                 FROM unnest($1::text[]) WITH ORDINALITY AS u(k, n) ORDER BY n",
            )
            .bind(&keys)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
            let counts: Vec<(String, i64)> = sqlx::query_as(
                "SELECT concurrency_key, count(*) FROM tasks
                 WHERE status = 'running' AND concurrency_key = ANY($1)
                 GROUP BY concurrency_key",
            )
            .bind(&keys)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
            running.extend(counts);
        }
        let ids = admit(&candidates, &running, &request.share);
        // `clock_timestamp()`, not `now()` (this transaction's start): a run admitted because
        // another node's completion committed while this claim waited for the key's lock must
        // not look as if it started before that run finished.
        let rows: Vec<TaskRow> = sqlx::query_as(sql!(
            "UPDATE tasks SET status = 'running', attempts = attempts + 1,
                 started_at = clock_timestamp(),
                 lease_owner = $2, lease_expires_at = now() + $3 * interval '1 millisecond'
             FROM unnest($1::uuid[]) AS c(id)
             WHERE tasks.id = c.id
             RETURNING {}",
            qualified(TASK_COLUMNS, "tasks")
        ))
        .bind(&ids)
        .bind(&request.owner)
        .bind(millis(request.lease))
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        match self.outbox.wanted(Transition::Started) {
            Some(wanted) => {
                let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
                self.commit_recorded(tx, &ids, Transition::Started, &wanted)
                    .await?;
            }
            None => tx.commit().await.map_err(db_error)?,
        }
        let mut claimed = tasks(rows)?;
        claim_order(&mut claimed);
        Ok(claimed)
    }

    /// Cancels the task `id` if it is a row (when it is not, `cancel` writes it as one if it
    /// is a deferred workflow task, and asks again).
    async fn cancel_row(&self, id: Uuid) -> Result<CancelOutcome, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let previous: Option<(String,)> =
            sqlx::query_as("SELECT status FROM tasks WHERE id = $1 FOR UPDATE")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_error)?;
        let Some((previous,)) = previous else {
            return Ok(CancelOutcome::NotFound);
        };
        let previous = TaskStatus::from_str(&previous).map_err(corrupt)?;
        if previous.is_final() {
            tx.rollback().await.map_err(db_error)?;
            return match self.get(id).await? {
                Some(task) => Ok(CancelOutcome::AlreadyFinal(task)),
                None => Ok(CancelOutcome::NotFound),
            };
        }
        let row: TaskRow = sqlx::query_as(sql!(
            "UPDATE tasks SET status = 'cancelled', finished_at = now(),
                 lease_owner = NULL, lease_expires_at = NULL
             WHERE id = $1
             RETURNING {TASK_COLUMNS}"
        ))
        .bind(id)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_error)?;
        match self.outbox.wanted(Transition::Cancelled) {
            Some(wanted) => {
                self.commit_recorded(tx, &[id], Transition::Cancelled, &wanted)
                    .await?
            }
            None => tx.commit().await.map_err(db_error)?,
        }
        Ok(CancelOutcome::Cancelled {
            task: row.try_into()?,
            was_running: previous == TaskStatus::Running,
        })
    }
}

#[async_trait]
impl TaskStore for PgTaskStore {
    async fn insert(&self, new: &[NewTask]) -> Result<Vec<Inserted>, StoreError> {
        if new.is_empty() {
            return Ok(Vec::new());
        }
        let query = NewTaskColumns::of(new).bind(sqlx::query_as::<
            _,
            (Uuid, String, DateTime<Utc>, DateTime<Utc>),
        >(insert_tasks_sql!(
            status: "CASE WHEN i.run_at > now() THEN 'scheduled' ELSE 'queued' END",
            created: "now()",
            columns: "",
            values: "",
            arrays: "",
            names: "",
            tail: "ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
                   RETURNING id, status, run_at, created_at"
        )));
        let rows = match self.begin_recording(Transition::Created).await? {
            Some((mut tx, wanted)) => {
                let rows = query.fetch_all(&mut *tx).await.map_err(db_error)?;
                let ids: Vec<Uuid> = rows.iter().map(|r| r.0).collect();
                self.commit_recorded(tx, &ids, Transition::Created, &wanted)
                    .await?;
                rows
            }
            None => query.fetch_all(&self.pool).await.map_err(db_error)?,
        };
        // Only what the database decided is read back; the rest is what was sent.
        let decided: HashMap<Uuid, (String, DateTime<Utc>, DateTime<Utc>)> = rows
            .into_iter()
            .map(|(id, status, run_at, created_at)| (id, (status, run_at, created_at)))
            .collect();
        let created = new
            .iter()
            .filter_map(|t| {
                let (status, run_at, created_at) = decided.get(&t.id)?;
                Some(
                    TaskStatus::from_str(status)
                        .map_err(corrupt)
                        .map(|status| inserted_task(t, status, *run_at, *created_at)),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let missing_keys = conflicting_keys(new, &created);
        let mut existing = Vec::new();
        if !missing_keys.is_empty() {
            let rows: Vec<TaskRow> = sqlx::query_as(sql!(
                "SELECT {TASK_COLUMNS} FROM tasks WHERE idempotency_key = ANY($1)"
            ))
            .bind(&missing_keys)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
            existing = tasks(rows)?;
        }
        in_input_order(new, created, existing)
    }

    async fn get(&self, id: Uuid) -> Result<Option<Task>, StoreError> {
        let read = || async {
            let row: Option<TaskRow> =
                sqlx::query_as(sql!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db_error)?;
            row.map(Task::try_from).transpose()
        };
        // A miss may be a deferred workflow task: written as a row, then read. Read again
        // whatever that found, as a completion may have written it in between.
        match read().await? {
            None => {
                self.write_deferred_holding(id).await?;
                read().await
            }
            found => Ok(found),
        }
    }

    async fn list(&self, filter: &TaskFilter) -> Result<Vec<Task>, StoreError> {
        self.write_all_deferred().await?;
        let rows: Vec<TaskRow> = sqlx::query_as(sql!(
            "SELECT {TASK_COLUMNS} FROM tasks
             WHERE ($1::text IS NULL OR status = $1)
               AND ($2::text IS NULL OR type = $2)
               AND ($3::text IS NULL OR queue = $3)
               AND ($4::uuid IS NULL OR id < $4)
               AND ($6::text IS NULL OR created_by = $6)
             ORDER BY id DESC
             LIMIT $5"
        ))
        .bind(filter.status.map(TaskStatus::as_str))
        .bind(filter.task_type.as_deref())
        .bind(filter.queue.as_deref())
        .bind(filter.before)
        .bind(i64::from(filter.limit))
        .bind(filter.created_by.as_deref())
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        tasks(rows)
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<Task>, StoreError> {
        // Pauses and limits from this node's cache (`limits.rs`): a claim no limit concerns
        // reads no flow-control table.
        let flow = self.flow_view().await?;
        let claimed = if flow.limits(&request.types) {
            self.claim_with_limits(request, &flow).await?
        } else {
            self.claim_open(request, &flow.paused).await?
        };
        self.swept_after_claim(claimed.len(), request.limit);
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
        let columns = CompletionColumns::of(completions);
        let query = sqlx::query_as::<_, (Uuid,)>(complete_sql!("RETURNING t.id"))
            .bind(columns.ids)
            .bind(columns.statuses)
            .bind(columns.results)
            .bind(columns.errors)
            .bind(columns.run_at)
            .bind(owner);
        let changed: Vec<Uuid> = match self.begin_recording(Transition::Settled).await? {
            Some((mut tx, wanted)) => {
                let changed: Vec<Uuid> = query
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(db_error)?
                    .into_iter()
                    .map(|(id,)| id)
                    .collect();
                self.commit_recorded(tx, &changed, Transition::Settled, &wanted)
                    .await?;
                changed
            }
            None => query
                .fetch_all(&self.pool)
                .await
                .map_err(db_error)?
                .into_iter()
                .map(|(id,)| id)
                .collect(),
        };
        Ok(changed)
    }

    async fn heartbeat(
        &self,
        owner: &str,
        ids: &[Uuid],
        lease: Duration,
    ) -> Result<Vec<Uuid>, StoreError> {
        let held: Vec<(Uuid,)> = sqlx::query_as(
            "UPDATE tasks SET lease_expires_at = now() + $3 * interval '1 millisecond'
             WHERE id = ANY($1) AND status = 'running' AND lease_owner = $2
             RETURNING id",
        )
        .bind(ids)
        .bind(owner)
        .bind(millis(lease))
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(held.into_iter().map(|(id,)| id).collect())
    }

    async fn release(&self, owner: &str, ids: &[Uuid]) -> Result<u64, StoreError> {
        let query = sqlx::query_as::<_, (Uuid,)>(
            "UPDATE tasks SET status = 'queued', attempts = greatest(attempts - 1, 0),
                 lease_owner = NULL, lease_expires_at = NULL
             WHERE id = ANY($1) AND status = 'running' AND lease_owner = $2
             RETURNING id",
        )
        .bind(ids)
        .bind(owner);
        let released: Vec<(Uuid,)> = match self.begin_recording(Transition::Requeued).await? {
            Some((mut tx, wanted)) => {
                let released = query.fetch_all(&mut *tx).await.map_err(db_error)?;
                let ids: Vec<Uuid> = released.iter().map(|r| r.0).collect();
                self.commit_recorded(tx, &ids, Transition::Requeued, &wanted)
                    .await?;
                released
            }
            None => query.fetch_all(&self.pool).await.map_err(db_error)?,
        };
        if !released.is_empty() {
            self.notify().await?;
        }
        Ok(released.len() as u64)
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
            "UPDATE tasks SET status = 'queued', run_at = now(), finished_at = NULL,
                 max_attempts = greatest(max_attempts, attempts + 1)
             WHERE id = $1 AND status IN ('failed', 'dead')
             RETURNING {TASK_COLUMNS}"
        ))
        .bind(id);
        let row = match self.begin_recording(Transition::Requeued).await? {
            Some((mut tx, wanted)) => {
                let row = query.fetch_optional(&mut *tx).await.map_err(db_error)?;
                let ids: Vec<Uuid> = row.iter().map(|r| r.id).collect();
                self.commit_recorded(tx, &ids, Transition::Requeued, &wanted)
                    .await?;
                row
            }
            None => query.fetch_optional(&self.pool).await.map_err(db_error)?,
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
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let (leader,): (bool,) = sqlx::query_as(
            "SELECT pg_try_advisory_xact_lock(hashtextextended('mcp_rescue.' || current_schema(), 0))",
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(db_error)?;
        if !leader {
            return Ok(Vec::new());
        }
        let rows: Vec<TaskRow> = sqlx::query_as(sql!(
            "UPDATE tasks SET
                 status = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'queued' END,
                 finished_at = CASE WHEN attempts >= max_attempts THEN now() END,
                 error = jsonb_build_object(
                     'message', 'lease expired: the node running this attempt stopped responding',
                     'attempt', attempts),
                 lease_owner = NULL, lease_expires_at = NULL
             WHERE id IN (SELECT id FROM tasks
                          WHERE status = 'running' AND lease_expires_at < now()
                          LIMIT $1 FOR UPDATE SKIP LOCKED)
             RETURNING {TASK_COLUMNS}"
        ))
        .bind(RESCUE_CHUNK)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        match self.outbox.wanted(Transition::Rescued) {
            Some(wanted) => {
                let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
                self.commit_recorded(tx, &ids, Transition::Rescued, &wanted)
                    .await?;
            }
            None => tx.commit().await.map_err(db_error)?,
        }
        if !rows.is_empty() {
            self.notify().await?;
        }
        tasks(rows)
    }

    async fn prune(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        // A task finished before `before` was created before it too, and ids are UUIDv7 (time
        // ordered), so the primary key bounds the scan; no index on `finished_at` is needed.
        let bound = mcp_core::task::first_id_at(before);
        let mut total = 0;
        loop {
            let done = sqlx::query(
                "DELETE FROM tasks WHERE id IN (
                     SELECT id FROM tasks
                     WHERE id < $3 AND status IN ('succeeded', 'dead', 'cancelled')
                       AND finished_at < $1
                     LIMIT $2)",
            )
            .bind(before)
            .bind(PRUNE_CHUNK)
            .bind(bound)
            .execute(&self.pool)
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
        let (at,): (Option<DateTime<Utc>>,) = sqlx::query_as(
            "SELECT min(run_at) FROM tasks
             WHERE status IN ('scheduled', 'failed') AND type = ANY($1)
               AND queue NOT IN (SELECT queue FROM queue_pauses)",
        )
        .bind(types)
        .fetch_one(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(crate::flow::earliest(at, reopen))
    }

    async fn counts(&self) -> Result<TaskCounts, StoreError> {
        // A workflow's deferred tasks are `waiting`.
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT queue, status, sum(n)::int8 FROM (
                 SELECT queue, status, count(*) AS n FROM tasks GROUP BY queue, status
                 UNION ALL
                 SELECT q.queue, 'waiting', count(*) FROM workflow_deferred d
                 CROSS JOIN LATERAL unnest(d.queues) AS q(queue) GROUP BY q.queue) c
             GROUP BY queue, status",
        )
        .fetch_all(&self.pool)
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
        .fetch_one(&self.pool)
        .await
        .map_err(db_error)?;
        let (running,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM tasks WHERE status = 'running'")
                .fetch_one(&self.pool)
                .await
                .map_err(db_error)?;
        Ok(unsigned(waiting + running))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn watch(&self, wake: Arc<Notify>) -> Result<(), StoreError> {
        let mut listener = PgListener::connect_with(&self.pool)
            .await
            .map_err(db_error)?;
        let channel = self.channel();
        listener.listen(&channel).await.map_err(db_error)?;
        let pool = self.pool.clone();
        let origin = self.origin.clone();
        let task = tokio::spawn(async move {
            while !pool.is_closed() {
                // `recv` reconnects by itself after a lost connection; a wake-up is harmless
                // then, since notifications sent meanwhile were missed.
                match listener.recv().await {
                    // This store's own insert: whoever inserted woke the claim loop already.
                    Ok(notification) if notification.payload() == &*origin => {}
                    Ok(_) => wake.notify_one(),
                    Err(e) => {
                        tracing::warn!(error = %e, "LISTEN connection failed; retrying");
                        wake.notify_one();
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        let previous = self
            .listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(task.abort_handle());
        if let Some(previous) = previous {
            previous.abort();
        }
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

/// Inserts new tasks from the arrays of [`NewTaskColumns`] (`$1`–`$17`, unnested as `i`), one
/// statement for `insert` and a workflow's tasks: `status` is each row's status expression,
/// `created` its creation time's; `columns` and `values` add the caller's own columns, read
/// from `arrays` (`$18`…) unnested beside the shared ones under `names`; `tail` ends the
/// statement.
macro_rules! insert_tasks_sql {
    (status: $status:literal, created: $created:literal, columns: $columns:literal,
     values: $values:literal, arrays: $arrays:literal, names: $names:literal,
     tail: $tail:literal) => {
        concat!(
            "INSERT INTO tasks (id, type, queue, priority, payload, status, max_attempts,
                 backoff_base_ms, backoff_max_ms, run_at, timeout_ms, idempotency_key,
                 concurrency_key, concurrency_limit, correlation_id, created_by, created_at,
                 share_key, traceparent",
            $columns,
            ")
             SELECT i.id, i.type, i.queue, i.priority, i.payload, ",
            $status,
            ", i.max_attempts, i.bb, i.bm, coalesce(i.run_at, now()), i.timeout_ms,
                    i.ik, i.ck, i.cl, i.corr, i.by, ",
            $created,
            ", i.share, i.tp",
            $values,
            "
             FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int4[], $5::jsonb[], $6::int4[],
                         $7::int8[], $8::int8[], $9::timestamptz[], $10::int8[], $11::text[],
                         $12::text[], $13::int4[], $14::text[], $15::text[], $16::text[],
                         $17::text[]",
            $arrays,
            ")
                  AS i(id, type, queue, priority, payload, max_attempts, bb, bm, run_at,
                       timeout_ms, ik, ck, cl, corr, by, share, tp",
            $names,
            ") ",
            $tail
        )
    };
}
pub(super) use insert_tasks_sql;

/// New tasks as the arrays [`insert_tasks_sql`] unnests, bound as `$1`–`$17`.
pub(super) struct NewTaskColumns<'a> {
    ids: Vec<Uuid>,
    types: Vec<&'a str>,
    queues: Vec<&'a str>,
    priorities: Vec<i32>,
    payloads: Vec<Json<&'a Value>>,
    max_attempts: Vec<i32>,
    backoff_base_ms: Vec<i64>,
    backoff_max_ms: Vec<i64>,
    run_at: Vec<Option<DateTime<Utc>>>,
    timeout_ms: Vec<i64>,
    idempotency_keys: Vec<Option<&'a str>>,
    concurrency_keys: Vec<Option<&'a str>>,
    concurrency_limits: Vec<Option<i32>>,
    correlation_ids: Vec<Option<&'a str>>,
    created_by: Vec<Option<&'a str>>,
    share_keys: Vec<Option<&'a str>>,
    traceparents: Vec<Option<&'a str>>,
}

impl<'a> NewTaskColumns<'a> {
    pub fn of(new: &'a [NewTask]) -> Self {
        NewTaskColumns {
            ids: new.iter().map(|t| t.id).collect(),
            types: new.iter().map(|t| t.task_type.as_str()).collect(),
            queues: new.iter().map(|t| t.queue.as_str()).collect(),
            priorities: new.iter().map(|t| t.priority).collect(),
            payloads: new.iter().map(|t| Json(&t.payload)).collect(),
            max_attempts: new.iter().map(|t| t.max_attempts).collect(),
            backoff_base_ms: new.iter().map(|t| t.backoff.base_ms as i64).collect(),
            backoff_max_ms: new.iter().map(|t| t.backoff.max_ms as i64).collect(),
            run_at: new.iter().map(|t| t.run_at).collect(),
            timeout_ms: new.iter().map(|t| t.timeout_ms as i64).collect(),
            idempotency_keys: new.iter().map(|t| t.idempotency_key.as_deref()).collect(),
            concurrency_keys: new.iter().map(|t| t.concurrency_key.as_deref()).collect(),
            concurrency_limits: new.iter().map(|t| t.concurrency_limit).collect(),
            correlation_ids: new.iter().map(|t| t.correlation_id.as_deref()).collect(),
            created_by: new.iter().map(|t| t.created_by.as_deref()).collect(),
            share_keys: new.iter().map(|t| t.share_key.as_deref()).collect(),
            traceparents: new.iter().map(|t| t.traceparent.as_deref()).collect(),
        }
    }

    /// Binds the columns as `$1`–`$17`, in [`insert_tasks_sql`]'s order.
    pub fn bind<O>(
        self,
        query: QueryAs<'a, Postgres, O, PgArguments>,
    ) -> QueryAs<'a, Postgres, O, PgArguments> {
        query
            .bind(self.ids)
            .bind(self.types)
            .bind(self.queues)
            .bind(self.priorities)
            .bind(self.payloads)
            .bind(self.max_attempts)
            .bind(self.backoff_base_ms)
            .bind(self.backoff_max_ms)
            .bind(self.run_at)
            .bind(self.timeout_ms)
            .bind(self.idempotency_keys)
            .bind(self.concurrency_keys)
            .bind(self.concurrency_limits)
            .bind(self.correlation_ids)
            .bind(self.created_by)
            .bind(self.share_keys)
            .bind(self.traceparents)
    }
}

/// Records finished attempts from the columns of [`CompletionColumns`] (`$1`–`$5`): only tasks
/// still `running` under the lease of `$6` change, and a deferred attempt (`scheduled` again)
/// gives its attempt back. One statement for `complete` and a workflow's `complete_workflow`,
/// which also reads each new status; `$returning` ends it.
macro_rules! complete_sql {
    ($returning:literal) => {
        complete_sql!(set: "", $returning)
    };
    // `set` adds assignments (`, column = …`), as a workflow's completion marks its final tasks
    // settled.
    (set: $set:literal, $returning:literal) => {
        concat!(
            "UPDATE tasks t SET status = c.status, result = c.result, error = c.error",
            $set,
            ",
                 run_at = coalesce(c.run_at, t.run_at),
                 attempts = t.attempts - CASE WHEN c.status = 'scheduled' THEN 1 ELSE 0 END,
                 finished_at = CASE WHEN c.status IN ('failed', 'scheduled') THEN NULL
                                    ELSE now() END,
                 lease_owner = NULL, lease_expires_at = NULL
             FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::jsonb[], $5::timestamptz[])
                  AS c(id, status, result, error, run_at)
             WHERE t.id = c.id AND t.status = 'running' AND t.lease_owner = $6 ",
            $returning
        )
    };
}
pub(super) use complete_sql;

/// Finished attempts as the arrays [`complete_sql`] unnests.
pub(super) struct CompletionColumns<'a> {
    pub ids: Vec<Uuid>,
    pub statuses: Vec<&'static str>,
    pub results: Vec<Option<Json<&'a Value>>>,
    pub errors: Vec<Option<Json<Value>>>,
    pub run_at: Vec<Option<DateTime<Utc>>>,
}

impl<'a> CompletionColumns<'a> {
    pub fn of(completions: &'a [Completion]) -> Self {
        let mut columns = CompletionColumns {
            ids: Vec::with_capacity(completions.len()),
            statuses: Vec::with_capacity(completions.len()),
            results: Vec::with_capacity(completions.len()),
            errors: Vec::with_capacity(completions.len()),
            run_at: Vec::with_capacity(completions.len()),
        };
        for c in completions {
            let (result, error, at) = match &c.outcome {
                Outcome::Succeeded(value) => (non_null(value).map(Json), None, None),
                Outcome::Retry { error, retry_at } | Outcome::Deferred { error, retry_at } => {
                    (None, Some(Json(error_json(error))), Some(*retry_at))
                }
                Outcome::Dead(error) => (None, Some(Json(error_json(error))), None),
            };
            columns.ids.push(c.id);
            columns.statuses.push(c.outcome.status().as_str());
            columns.results.push(result);
            columns.errors.push(error);
            columns.run_at.push(at);
        }
        columns
    }
}
