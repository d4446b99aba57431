//! Workflows on PostgreSQL: a workflow and its tasks inserted in one transaction (those with
//! dependencies deferred, as JSON chunks), and settling (deferred dependents written as rows,
//! dependents released or cancelled, workflows finished) in the transaction that made their
//! dependencies final. Settling locks the workflows' rows first (in id order), and so does
//! writing deferred tasks for a reader, so two nodes settling the last two tasks of one
//! workflow at once take turns and the second sees the first's outcome: a workflow always
//! finishes, a dependent is always released, a deferred task is written once. Releasing
//! notifies every node's claim loop (delivered at commit).

use super::task_row::{TaskRow, tasks};
use super::tasks::{CompletionColumns, NewTaskColumns, complete_sql, insert_tasks_sql};
use super::{PgTaskStore, outbox};
use crate::codec::{instant, micros};
use crate::columns::{TASK_COLUMNS, WORKFLOW_COLUMNS, qualified};
use crate::error::{corrupt, db_error};
use crate::outbox::Transition;
use crate::tasks::inserted_task;
use crate::workflows::{
    CANCELLED_BY_DEPENDENCY, Chunks, DeferredTask, Ended, Satisfied, Split, Starter, apply,
    chunk_columns, chunked, dependents_of, each_dependents, edges_to, edges_to_earlier, flow_for,
    group_parents, in_favour, in_order, may_retry, outcomes_of, outside_dependencies, pack,
    parent_view, reached, released_and_started, revivable, revives, runnable, split,
    taken_by_workflow,
};
use chrono::{DateTime, Utc};
use mcp_core::store::StartRequest;
use mcp_core::task::Progress;
use mcp_core::workflow::{
    NewWorkflow, OnFailure, Retried, Settled, Workflow, WorkflowDetail, WorkflowFilter,
    WorkflowNode, WorkflowStatus,
};
use mcp_core::{Completion, NewTask, RetryOutcome, StoreError, Task, TaskStatus, TaskStore};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{FromRow, Postgres, Transaction};
use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use uuid::Uuid;

#[derive(FromRow)]
struct WorkflowRow {
    id: Uuid,
    name: String,
    status: String,
    on_failure: String,
    created_by: Option<String>,
    correlation_id: Option<String>,
    created_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
}

impl TryFrom<WorkflowRow> for Workflow {
    type Error = StoreError;
    fn try_from(row: WorkflowRow) -> Result<Workflow, StoreError> {
        Ok(Workflow {
            id: row.id,
            name: row.name,
            status: FromStr::from_str(&row.status).map_err(corrupt)?,
            on_failure: FromStr::from_str(&row.on_failure).map_err(corrupt)?,
            created_by: row.created_by,
            correlation_id: row.correlation_id,
            created_at: row.created_at,
            finished_at: row.finished_at,
        })
    }
}

fn workflows(rows: Vec<WorkflowRow>) -> Result<Vec<Workflow>, StoreError> {
    rows.into_iter().map(Workflow::try_from).collect()
}

type Tx = Transaction<'static, Postgres>;

impl PgTaskStore {
    /// Commits `tx`, recording the events of `transition` on `ids` first if a webhook wants them.
    async fn commit_with(
        &self,
        tx: Tx,
        ids: &[Uuid],
        transition: Transition,
    ) -> Result<(), StoreError> {
        match self.outbox.wanted(transition) {
            Some(wanted) => self.commit_recorded(tx, ids, transition, &wanted).await,
            None => tx.commit().await.map_err(db_error),
        }
    }

    pub(super) async fn insert_workflow_tx(
        &self,
        workflow: &NewWorkflow,
        new: &[NewTask],
        nodes: &[WorkflowNode],
    ) -> Result<(Workflow, Vec<Task>), StoreError> {
        // The outbox records `task.created` from the task's row: while a webhook wants it,
        // every task is a row at once.
        if self.outbox.wanted(Transition::Created).is_some() {
            let (mut tx, stored) = self.begin_workflow(workflow, new, None).await?;
            let created = insert_tasks(&mut tx, workflow.id, new, nodes).await?;
            let ids: Vec<Uuid> = created.iter().map(|t| t.id).collect();
            self.commit_with(tx, &ids, Transition::Created).await?;
            return Ok((stored, created));
        }
        // Created now as PostgreSQL keeps it (microseconds): the deferred tasks' JSON says so
        // before the workflow's row exists.
        let at = instant(micros(Utc::now()))?;
        let dependents = dependents_of(new, nodes);
        let Split {
            roots,
            root_nodes,
            deferred,
            shown,
        } = split(workflow.id, new, nodes, &dependents, at);
        // The deferred tasks are packed while the server stores the workflow and its roots:
        // their CPU work (10,000 tasks: about 11 ms) and those round trips overlap.
        let store_roots = async {
            let (mut tx, stored) = self.begin_workflow(workflow, new, Some(at)).await?;
            let rows = Rows {
                new: &roots,
                nodes: &root_nodes,
                dependents: each_dependents(&roots, &dependents),
                waiting: vec![0; roots.len()],
                created_at: Some(at),
            };
            let written = write_rows(&mut tx, workflow.id, rows, None).await?;
            Ok::<_, StoreError>((tx, stored, written))
        };
        let (stored_roots, packed) = tokio::join!(store_roots, PackedChunks::of(&deferred));
        let (mut tx, stored, written) = stored_roots?;
        packed?.insert(&mut tx, workflow.id).await?;
        let created = in_order(shown, written)?;
        let ids: Vec<Uuid> = created.iter().map(|t| t.id).collect();
        self.commit_with(tx, &ids, Transition::Created).await?;
        Ok((stored, created))
    }

    /// Begins the transaction storing `workflow` of the tasks `new`, created `at` (now when
    /// `None`), and inserts its row.
    async fn begin_workflow(
        &self,
        workflow: &NewWorkflow,
        new: &[NewTask],
        at: Option<DateTime<Utc>>,
    ) -> Result<(Tx, Workflow), StoreError> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let row: WorkflowRow = sqlx::query_as(sql!(
            "INSERT INTO workflows (id, name, status, on_failure, created_by, share_key,
                 correlation_id, created_at, task_ids)
             VALUES ($1, $2, 'running', $3, $4, $5, $6, coalesce($8, now()), $7)
             RETURNING {WORKFLOW_COLUMNS}"
        ))
        .bind(workflow.id)
        .bind(&workflow.name)
        .bind(workflow.on_failure.as_str())
        .bind(workflow.created_by.as_deref())
        .bind(workflow.share_key.as_deref())
        .bind(workflow.correlation_id.as_deref())
        .bind(new.iter().map(|t| t.id).collect::<Vec<_>>())
        .bind(at)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_error)?;
        Ok((tx, Workflow::try_from(row)?))
    }

    /// Writes as rows the deferred tasks of the workflow holding the task `id`, if one does
    /// (before something reads or changes that task).
    pub(super) async fn write_deferred_holding(&self, id: Uuid) -> Result<(), StoreError> {
        let holder: Option<(Uuid,)> =
            sqlx::query_as("SELECT workflow_id FROM workflow_deferred WHERE $1 = ANY(ids) LIMIT 1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_error)?;
        match holder {
            Some((workflow,)) => self.write_holders(&[workflow]).await,
            None => Ok(()),
        }
    }

    /// Writes as rows the deferred tasks of every workflow that has some (before a list reads
    /// `tasks`).
    pub(super) async fn write_all_deferred(&self) -> Result<(), StoreError> {
        self.write_deferred_of(None).await
    }

    /// Writes the deferred tasks of `workflows` (all when `None`) as rows, if they have some.
    async fn write_deferred_of(&self, workflows: Option<&[Uuid]>) -> Result<(), StoreError> {
        let holders: Vec<(Uuid,)> = sqlx::query_as(
            "SELECT DISTINCT workflow_id FROM workflow_deferred
             WHERE $1::uuid[] IS NULL OR workflow_id = ANY($1) ORDER BY 1",
        )
        .bind(workflows)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        if holders.is_empty() {
            return Ok(());
        }
        let holders: Vec<Uuid> = holders.into_iter().map(|(id,)| id).collect();
        self.write_holders(&holders).await
    }

    /// Writes the deferred tasks of the workflows `holders` (in id order) as rows, in a
    /// transaction of its own that locks them first, as settling does (see the module's
    /// comment). They are `waiting` (none of their dependencies settled, or that would have
    /// written them) unless a settling released them for later; those it makes runnable are
    /// handed over to be announced.
    async fn write_holders(&self, holders: &[Uuid]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        lock_workflows(&mut tx, holders).await?;
        let (written, _) = write_deferred(&mut tx, holders, Chunks::All, None).await?;
        let released = runnable(written);
        if !released.is_empty() {
            notify_claimers(&mut tx).await?;
        }
        tx.commit().await.map_err(db_error)?;
        self.released.hand_over(released);
        Ok(())
    }

    pub(super) async fn release_ready_tx(
        &self,
        start: Option<&StartRequest<'_>>,
    ) -> Result<Option<Settled>, StoreError> {
        let flow = flow_for(start, self.flow_view()).await?;
        let mut starter = Starter::of(start, flow.as_deref());
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        // The oldest chunk released and not written, unless another node writes it now.
        let taken: Vec<TakenChunk> = sqlx::query_as(
            "DELETE FROM workflow_deferred d USING workflows w
             WHERE w.id = d.workflow_id AND (d.workflow_id, d.seq) = (
                 SELECT workflow_id, seq FROM workflow_deferred WHERE ready_at IS NOT NULL
                 ORDER BY ready_at, workflow_id, seq LIMIT 1 FOR UPDATE SKIP LOCKED)
             RETURNING d.workflow_id, d.packed, d.tasks, w.created_at, w.on_failure",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        if taken.is_empty() {
            tx.rollback().await.map_err(db_error)?;
            return Ok(None);
        }
        let written = write_taken(&mut tx, taken, &Satisfied::Read, starter.as_mut()).await?;
        let (released, started) = released_and_started(written);
        if !released.is_empty() {
            notify_claimers(&mut tx).await?;
        }
        let ids: Vec<Uuid> = started.iter().map(|t| t.id).collect();
        self.commit_with(tx, &ids, Transition::Started).await?;
        Ok(Some(Settled {
            released,
            started,
            ..Settled::default()
        }))
    }

    pub(super) async fn extend_workflow_tx(
        &self,
        workflow_id: Uuid,
        new: &[NewTask],
        nodes: &[WorkflowNode],
    ) -> Result<Option<Settled>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let running: Option<(String,)> = sqlx::query_as(
            "SELECT on_failure FROM workflows WHERE id = $1 AND status = 'running' FOR UPDATE",
        )
        .bind(workflow_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error)?;
        let Some((policy,)) = running else {
            return Ok(None);
        };
        let policy = OnFailure::from_str(&policy).map_err(corrupt)?;
        // The new tasks' dependencies are rows, to which their dependents are appended.
        let (written, _) = write_deferred(&mut tx, &[workflow_id], Chunks::All, None).await?;
        // Dependencies stored before whose end was applied to their dependents already: it is
        // applied to the new ones here. Those that ended but are not settled yet settle below,
        // for every dependent, the new ones included.
        let parents: Vec<Uuid> = nodes.iter().flat_map(|n| n.depends_on.clone()).collect();
        let ended: Vec<(Uuid, String)> =
            sqlx::query_as("SELECT id, status FROM tasks WHERE id = ANY($1) AND settled")
                .bind(&parents)
                .fetch_all(&mut *tx)
                .await
                .map_err(db_error)?;
        let created = insert_tasks(&mut tx, workflow_id, new, nodes).await?;
        sqlx::query("UPDATE workflows SET task_ids = task_ids || $2 WHERE id = $1")
            .bind(workflow_id)
            .bind(new.iter().map(|t| t.id).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        let mut settled = settle(&mut tx, &parents).await?;
        // Released dependents left to write after their settling that this wrote first.
        let released = runnable(written);
        if !released.is_empty() {
            notify_claimers(&mut tx).await?;
        }
        settled.released.extend(released);
        if !ended.is_empty() {
            let mut outcomes = HashMap::new();
            for (id, status) in ended {
                let status = TaskStatus::from_str(&status).map_err(corrupt)?;
                outcomes.insert(id, (status, policy));
            }
            let edges = edges_to(new, nodes, |parent| outcomes.contains_key(parent));
            let more = apply_edges(
                &mut tx,
                &edges,
                &outcomes,
                HashSet::from([workflow_id]),
                None,
            )
            .await?;
            settled.released.extend(more.released);
            settled.cancelled.extend(more.cancelled);
            settled.finished.extend(more.finished);
        }
        let ids: Vec<Uuid> = created.iter().map(|t| t.id).collect();
        self.commit_with(tx, &ids, Transition::Created).await?;
        Ok(Some(settled))
    }

    pub(super) async fn get_workflow_row(
        &self,
        id: Uuid,
    ) -> Result<Option<WorkflowDetail>, StoreError> {
        self.write_deferred_of(Some(&[id])).await?;
        let row: Option<WorkflowRow> = sqlx::query_as(sql!(
            "SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let rows: Vec<TaskRow> = sqlx::query_as(sql!(
            "SELECT {TASK_COLUMNS} FROM tasks
             WHERE id = ANY((SELECT task_ids FROM workflows WHERE id = $1)::uuid[]) ORDER BY id"
        ))
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(Some(WorkflowDetail {
            workflow: row.try_into()?,
            tasks: tasks(rows)?,
        }))
    }

    pub(super) async fn list_workflow_rows(
        &self,
        filter: &WorkflowFilter,
    ) -> Result<Vec<Workflow>, StoreError> {
        let rows: Vec<WorkflowRow> = sqlx::query_as(sql!(
            "SELECT {WORKFLOW_COLUMNS} FROM workflows
             WHERE ($1::text IS NULL OR created_by = $1) AND ($2::uuid IS NULL OR id < $2)
             ORDER BY id DESC LIMIT $3"
        ))
        .bind(filter.created_by.as_deref())
        .bind(filter.before)
        .bind(i64::from(filter.limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        workflows(rows)
    }

    pub(super) async fn complete_workflow_tx(
        &self,
        owner: &str,
        completions: &[Completion],
        start: Option<&StartRequest<'_>>,
    ) -> Result<Settled, StoreError> {
        if completions.is_empty() {
            return Ok(Settled::default());
        }
        let flow = flow_for(start, self.flow_view()).await?;
        let mut starter = Starter::of(start, flow.as_deref());
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        // As `complete`, then settled in the same transaction.
        let columns = CompletionColumns::of(completions);
        // Its final tasks are marked settled by the completion itself (no second row version),
        // and settled below from what it returns: their workflows and dependents, so settling
        // does not look them up again. One whose dependents counted it already (retried by hand
        // after it ended under `continue`) was settled before, and is left alone: the old flag
        // is written to `settled_before` (every assignment reads the row as the statement found
        // it) and returned from there (`0028_workflow_settled_before.sql`).
        let changed: Vec<CompletedRow> = sqlx::query_as(complete_sql!(
            set: ", settled = t.settled OR c.status IN ('succeeded', 'dead'),
                 settled_before = t.settled",
            "RETURNING t.id, t.status, t.settled_before, t.workflow_id, t.dependents"
        ))
        .bind(columns.ids)
        .bind(columns.statuses)
        .bind(columns.results)
        .bind(columns.errors)
        .bind(columns.run_at)
        .bind(owner)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        let ids: Vec<Uuid> = changed.iter().map(|row| row.0).collect();
        let mut ended = Vec::new();
        for (id, status, was_settled, workflow, dependents) in changed {
            let status = TaskStatus::from_str(&status).map_err(corrupt)?;
            if let (Some(workflow), true, false) = (workflow, status.is_final(), was_settled) {
                ended.push(Ended {
                    id,
                    status,
                    workflow,
                    dependents: dependents.unwrap_or_default(),
                });
            }
        }
        let mut settled = settle_completed(&mut tx, ended, starter.as_mut()).await?;
        // Those it started, recorded as a claim records them.
        let mut recorded = 0;
        if let Some(wanted) = self.outbox.wanted(Transition::Started) {
            let started: Vec<Uuid> = settled.started.iter().map(|t| t.id).collect();
            recorded = outbox::record(&mut tx, &started, Transition::Started, &wanted).await?;
        }
        self.commit_with(tx, &ids, Transition::Settled).await?;
        if recorded > 0 {
            self.outbox.tell();
        }
        settled.changed = ids;
        Ok(settled)
    }

    pub(super) async fn settle_tx(&self, ids: &[Uuid]) -> Result<Settled, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let settled = settle(&mut tx, ids).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(settled)
    }

    pub(super) async fn cancel_workflow_tx(
        &self,
        id: Uuid,
    ) -> Result<Option<(Workflow, Vec<(Task, bool)>)>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let exists: Option<(Uuid,)> =
            sqlx::query_as("SELECT id FROM workflows WHERE id = $1 FOR UPDATE")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_error)?;
        if exists.is_none() {
            return Ok(None);
        }
        write_deferred(&mut tx, &[id], Chunks::All, None).await?;
        let running: Vec<(Uuid,)> = sqlx::query_as(
            "SELECT id FROM tasks
             WHERE id = ANY((SELECT task_ids FROM workflows WHERE id = $1)::uuid[])
               AND status NOT IN ('succeeded', 'dead', 'cancelled')
             ORDER BY id FOR UPDATE",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        let running: Vec<Uuid> = running.into_iter().map(|(id,)| id).collect();
        let was_running: Vec<(Uuid,)> =
            sqlx::query_as("SELECT id FROM tasks WHERE id = ANY($1) AND status = 'running'")
                .bind(&running)
                .fetch_all(&mut *tx)
                .await
                .map_err(db_error)?;
        let was_running: HashSet<Uuid> = was_running.into_iter().map(|(id,)| id).collect();
        let rows: Vec<TaskRow> = sqlx::query_as(sql!(
            "UPDATE tasks SET status = 'cancelled', finished_at = now(),
                 lease_owner = NULL, lease_expires_at = NULL
             WHERE id = ANY($1) AND status NOT IN ('succeeded', 'dead', 'cancelled')
             RETURNING {TASK_COLUMNS}"
        ))
        .bind(&running)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        let cancelled: Vec<(Task, bool)> = rows
            .into_iter()
            .map(|row| {
                let running = was_running.contains(&row.id);
                Task::try_from(row).map(|task| (task, running))
            })
            .collect::<Result<_, _>>()?;
        let row: WorkflowRow = sqlx::query_as(sql!(
            "UPDATE workflows SET status = CASE WHEN status = 'running' THEN 'cancelled'
                     ELSE status END,
                 finished_at = coalesce(finished_at, now())
             WHERE id = $1
             RETURNING {WORKFLOW_COLUMNS}"
        ))
        .bind(id)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_error)?;
        let ids: Vec<Uuid> = cancelled.iter().map(|(t, _)| t.id).collect();
        self.commit_with(tx, &ids, Transition::Cancelled).await?;
        Ok(Some((row.try_into()?, cancelled)))
    }

    pub(super) async fn retry_workflow_task_tx(&self, id: Uuid) -> Result<Retried, StoreError> {
        let plain = |outcome| Retried {
            outcome,
            revived: Vec::new(),
            reopened: None,
        };
        let workflow_of = || async {
            sqlx::query_as::<_, (Option<Uuid>,)>("SELECT workflow_id FROM tasks WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_error)
        };
        // As `get`: a miss may be a deferred workflow task.
        let mut found = workflow_of().await?;
        if found.is_none() {
            self.write_deferred_holding(id).await?;
            found = workflow_of().await?;
        }
        let workflow_id = match found {
            None => return Ok(plain(RetryOutcome::NotFound)),
            Some((None,)) => return Ok(plain(self.retry(id).await?)),
            Some((Some(workflow_id),)) => workflow_id,
        };
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        // The workflow's row first, as settling locks it: see the module's comment.
        let (flow_status, policy): (String, String) =
            sqlx::query_as("SELECT status, on_failure FROM workflows WHERE id = $1 FOR UPDATE")
                .bind(workflow_id)
                .fetch_one(&mut *tx)
                .await
                .map_err(db_error)?;
        let flow_status = WorkflowStatus::from_str(&flow_status).map_err(corrupt)?;
        let policy = OnFailure::from_str(&policy).map_err(corrupt)?;
        // What a retry revives and counts again goes down and up the graph's rows.
        let (written, _) = write_deferred(&mut tx, &[workflow_id], Chunks::All, None).await?;
        let released = runnable(written);
        let (status,): (String,) =
            sqlx::query_as("SELECT status FROM tasks WHERE id = $1 FOR UPDATE")
                .bind(id)
                .fetch_one(&mut *tx)
                .await
                .map_err(db_error)?;
        let status = TaskStatus::from_str(&status).map_err(corrupt)?;
        let dependencies: Vec<(String,)> = sqlx::query_as(
            "SELECT p.status FROM tasks t CROSS JOIN LATERAL unnest(t.depends_on) AS d(id)
             JOIN tasks p ON p.id = d.id
             WHERE t.id = $1",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        let dependencies = dependencies
            .into_iter()
            .map(|(s,)| TaskStatus::from_str(&s).map_err(corrupt))
            .collect::<Result<Vec<_>, _>>()?;
        if !may_retry(status, flow_status, &dependencies, policy) {
            tx.rollback().await.map_err(db_error)?;
            return Ok(plain(match self.get(id).await? {
                Some(task) => RetryOutcome::NotRetryable(task),
                None => RetryOutcome::NotFound,
            }));
        }
        let revived = if revives(status, flow_status, policy) {
            let candidates: Vec<(Uuid,)> = sqlx::query_as(
                "WITH RECURSIVE down(id) AS (
                     SELECT t.id FROM tasks p CROSS JOIN LATERAL unnest(p.dependents) AS d(id)
                     JOIN tasks t ON t.id = d.id
                     WHERE p.id = $1 AND t.status = 'cancelled'
                       AND t.error -> 'details' ? 'cancelled_by'
                     UNION SELECT t.id FROM down JOIN tasks p ON p.id = down.id
                     CROSS JOIN LATERAL unnest(p.dependents) AS d(id)
                     JOIN tasks t ON t.id = d.id
                     WHERE t.status = 'cancelled' AND t.error -> 'details' ? 'cancelled_by')
                 SELECT id FROM down",
            )
            .bind(id)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
            let candidates: Vec<Uuid> = candidates.into_iter().map(|(id,)| id).collect();
            let edges: Vec<(Uuid, Uuid, String)> = sqlx::query_as(
                "SELECT t.id, p.id, p.status
                 FROM tasks t CROSS JOIN LATERAL unnest(t.depends_on) AS d(id)
                 JOIN tasks p ON p.id = d.id
                 WHERE t.id = ANY($1)",
            )
            .bind(&candidates)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
            let edges = edges
                .into_iter()
                .map(|(task, dependency, status)| {
                    Ok((
                        task,
                        dependency,
                        TaskStatus::from_str(&status).map_err(corrupt)?,
                    ))
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            revivable(id, &candidates, &edges)
        } else {
            Vec::new()
        };
        // The dependencies of the retried task and of those it revives count as they stand now;
        // the retried one is unsettled again for those it revives, whose count
        // includes it: its next end applies to them. Under `continue` its dependents counted
        // its end already, and it stays settled for them.
        let row: TaskRow = sqlx::query_as(sql!(
            "UPDATE tasks SET waiting_on = c.n,
                 status = CASE WHEN c.n > 0 THEN 'waiting' ELSE 'queued' END,
                 run_at = now(), finished_at = NULL,
                 max_attempts = greatest(max_attempts, attempts + 1),
                 settled = settled AND NOT $4
             FROM (SELECT {UNSETTLED} AS n
                   FROM tasks t CROSS JOIN LATERAL unnest(t.depends_on) AS d(id)
                   JOIN tasks p ON p.id = d.id WHERE t.id = $1) c
             WHERE tasks.id = $1
             RETURNING {}",
            qualified(TASK_COLUMNS, "tasks")
        ))
        .bind(id)
        .bind(id)
        .bind(policy == OnFailure::Continue)
        .bind(revives(status, flow_status, policy))
        .fetch_one(&mut *tx)
        .await
        .map_err(db_error)?;
        let rows: Vec<TaskRow> = if revived.is_empty() {
            Vec::new()
        } else {
            sqlx::query_as(sql!(
                "UPDATE tasks t SET waiting_on = c.n,
                     status = CASE WHEN c.n > 0 THEN 'waiting'
                                   WHEN t.run_at > now() THEN 'scheduled' ELSE 'queued' END,
                     finished_at = NULL, error = NULL, settled = false
                 FROM (SELECT t.id AS task_id, {UNSETTLED} AS n
                       FROM tasks t CROSS JOIN LATERAL unnest(t.depends_on) AS d(id)
                       JOIN tasks p ON p.id = d.id WHERE t.id = ANY($1) GROUP BY t.id) c
                 WHERE t.id = c.task_id AND t.status = 'cancelled'
                 RETURNING {}",
                qualified(TASK_COLUMNS, "t")
            ))
            .bind(&revived)
            .bind(id)
            .bind(policy == OnFailure::Continue)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?
        };
        let reopened: Option<WorkflowRow> = sqlx::query_as(sql!(
            "UPDATE workflows SET status = 'running', finished_at = NULL
             WHERE id = $1 AND status = 'failed'
             RETURNING {WORKFLOW_COLUMNS}"
        ))
        .bind(workflow_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error)?;
        if !released.is_empty() {
            notify_claimers(&mut tx).await?;
        }
        self.commit_with(tx, &[id], Transition::Requeued).await?;
        self.released.hand_over(released);
        Ok(Retried {
            outcome: RetryOutcome::Requeued(row.try_into()?),
            revived: tasks(rows)?,
            reopened: reopened.map(Workflow::try_from).transpose()?,
        })
    }

    pub(super) async fn parents_of(
        &self,
        ids: &[Uuid],
    ) -> Result<HashMap<Uuid, Value>, StoreError> {
        type ParentRow = (
            Vec<Uuid>,
            Option<String>,
            String,
            Option<Json<Value>>,
            Option<Json<Value>>,
        );
        // One row per dependency, with its dependents among `ids`. Each dependency is read by
        // its key: `OFFSET 0` keeps the planner from flattening the lookup into a hash join over
        // a sequential scan of every task, its choice without statistics (right after a
        // workflow was stored): 1 ms instead of 3 for 500 tasks of a fan-out.
        let rows: Vec<ParentRow> = sqlx::query_as(
            "SELECT c.dependents, p.workflow_key, p.status, p.result, p.error
             FROM (SELECT d.id AS depends_on, array_agg(t.id) AS dependents
                   FROM tasks t CROSS JOIN LATERAL unnest(t.depends_on) AS d(id)
                   WHERE t.id = ANY($1) GROUP BY d.id) c
             CROSS JOIN LATERAL (SELECT workflow_key, status, result, error FROM tasks
                                 WHERE id = c.depends_on OFFSET 0) p",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let rows = rows
            .into_iter()
            .map(|(dependents, key, status, result, error)| {
                (
                    dependents,
                    key.unwrap_or_default(),
                    parent_view(&status, result.map(|j| j.0), error.map(|j| j.0)),
                )
            })
            .collect();
        Ok(group_parents(rows))
    }

    pub(super) async fn set_progress_row(
        &self,
        id: Uuid,
        progress: &Progress,
    ) -> Result<bool, StoreError> {
        let done =
            sqlx::query("UPDATE tasks SET progress = $2 WHERE id = $1 AND status = 'running'")
                .bind(id)
                .bind(Json(progress))
                .execute(&self.pool)
                .await
                .map_err(db_error)?;
        Ok(done.rows_affected() > 0)
    }
}

/// Inserts workflow tasks as rows with their dependencies and dependents: a task with
/// dependencies waits on all of them. Dependencies among `new` are written with the rows; a
/// dependency stored before (a running task adding children) gets the new dependents appended
/// to its own.
async fn insert_tasks(
    tx: &mut Tx,
    workflow_id: Uuid,
    new: &[NewTask],
    nodes: &[WorkflowNode],
) -> Result<Vec<Task>, StoreError> {
    let (children, earlier): (Vec<Uuid>, Vec<Uuid>) =
        edges_to_earlier(new, nodes).into_iter().unzip();
    let dependents = dependents_of(new, nodes);
    let rows = Rows {
        new,
        nodes,
        dependents: each_dependents(new, &dependents),
        waiting: nodes.iter().map(|n| n.depends_on.len() as i32).collect(),
        created_at: None,
    };
    let created = write_rows(tx, workflow_id, rows, None).await?;
    if !children.is_empty() {
        sqlx::query(
            "UPDATE tasks p SET dependents = coalesce(p.dependents, '{}') || c.ids
             FROM (SELECT parent, array_agg(child) AS ids
                   FROM unnest($1::uuid[], $2::uuid[]) AS e(child, parent) GROUP BY parent) c
             WHERE p.id = c.parent",
        )
        .bind(&children)
        .bind(&earlier)
        .execute(&mut **tx)
        .await
        .map_err(db_error)?;
    }
    Ok(created)
}

/// A new workflow's deferred chunks ([`chunked`]) packed to be inserted: each one's ids (and
/// their queues) and dependencies as its slice of flat arrays, and its tasks packed.
struct PackedChunks<'a> {
    ids: Ragged,
    queues: Vec<&'a str>,
    parents: Ragged,
    packed: Vec<Vec<u8>>,
}

impl<'a> PackedChunks<'a> {
    /// Packs `deferred`, letting other work of the task run between chunks (see
    /// `insert_workflow_tx`).
    async fn of(deferred: &'a [DeferredTask<'_>]) -> Result<PackedChunks<'a>, StoreError> {
        let chunks = chunked(deferred);
        let (mut ids, mut parents) = (Vec::new(), Vec::new());
        let mut queues = Vec::with_capacity(deferred.len());
        let mut packed = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            let (its_ids, its_parents, its_queues) = chunk_columns(chunk);
            ids.push(its_ids);
            parents.push(its_parents);
            queues.extend(its_queues);
            packed.push(pack(chunk)?);
            tokio::task::yield_now().await;
        }
        Ok(PackedChunks {
            ids: Ragged::of(ids.iter().map(Vec::as_slice)),
            queues,
            parents: Ragged::of(parents.iter().map(Vec::as_slice)),
            packed,
        })
    }

    /// Inserts the chunks of `workflow_id`, all in one statement (a round trip each was 11 for
    /// a fan-out of 10,000).
    async fn insert(self, tx: &mut Tx, workflow_id: Uuid) -> Result<(), StoreError> {
        if self.packed.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO workflow_deferred (workflow_id, seq, ids, parents, queues, packed)
             SELECT $1, c.seq - 1, $2[c.first:c.last], $5[c.first_parent:c.last_parent],
                    $3[c.first:c.last], c.packed
             FROM unnest($4::int4[], $6::int4[], $7::int4[], $8::int4[], $9::bytea[])
                  WITH ORDINALITY AS c(first, last, first_parent, last_parent, packed, seq)",
        )
        .bind(workflow_id)
        .bind(&self.ids.flat)
        .bind(&self.queues)
        .bind(&self.ids.starts)
        .bind(&self.parents.flat)
        .bind(&self.ids.ends)
        .bind(&self.parents.starts)
        .bind(&self.parents.ends)
        .bind(&self.packed)
        .execute(&mut **tx)
        .await
        .map_err(db_error)?;
        Ok(())
    }
}

/// Workflow tasks to write as rows: each with its place, its dependents and how many of its
/// dependencies it still waits for (none: runnable at once), created at `created_at` (now when
/// `None`).
struct Rows<'a> {
    new: &'a [NewTask],
    nodes: &'a [WorkflowNode],
    dependents: Vec<&'a [Uuid]>,
    waiting: Vec<i32>,
    created_at: Option<DateTime<Utc>>,
}

/// Writes workflow tasks as rows, those `start` takes started for its owner; the tasks as
/// written, in input order.
async fn write_rows(
    tx: &mut Tx,
    workflow_id: Uuid,
    rows: Rows<'_>,
    mut start: Option<&mut Starter<'_>>,
) -> Result<Vec<Task>, StoreError> {
    let Rows {
        new,
        nodes,
        dependents,
        waiting,
        created_at,
    } = rows;
    if new.is_empty() {
        return Ok(Vec::new());
    }
    let depends_on = Ragged::of(nodes.iter().map(|n| n.depends_on.as_slice()));
    let dependents = Ragged::of(dependents);
    let created = created_at.unwrap_or_else(Utc::now);
    let started: Vec<bool> = new
        .iter()
        .zip(&waiting)
        .map(|(task, waits)| {
            *waits == 0
                && start
                    .as_deref_mut()
                    .is_some_and(|start| start.takes(task, task.run_at.unwrap_or(created)))
        })
        .collect();
    let owner = start.as_ref().map(|start| start.owner().to_owned());
    let lease = start.as_ref().map_or(0, |start| {
        i64::try_from(start.lease().as_micros()).unwrap_or(i64::MAX)
    });
    type Stamped = (
        Uuid,
        String,
        DateTime<Utc>,
        DateTime<Utc>,
        Option<DateTime<Utc>>,
    );
    let stamped: Vec<Stamped> = NewTaskColumns::of(new)
        .bind(sqlx::query_as(insert_tasks_sql!(
            status: "CASE WHEN i.st THEN 'running' WHEN i.wo > 0 THEN 'waiting'
                          WHEN i.run_at > now() THEN 'scheduled' ELSE 'queued' END",
            created: "coalesce($25, now())",
            columns: ", workflow_id, workflow_key, waiting_on, depends_on, dependents, attempts,
                     started_at, lease_owner, lease_expires_at",
            values: ", $18, i.wk, i.wo,
                     CASE WHEN i.de >= i.ds THEN ($26::uuid[])[i.ds:i.de] END,
                     CASE WHEN i.te >= i.ts THEN ($27::uuid[])[i.ts:i.te] END,
                     CASE WHEN i.st THEN 1 ELSE 0 END, CASE WHEN i.st THEN now() END,
                     CASE WHEN i.st THEN $29 END,
                     CASE WHEN i.st THEN now() + $30 * interval '1 microsecond' END",
            arrays: ", $19::text[], $20::int4[], $21::int4[], $22::int4[], $23::int4[],
                     $24::int4[], $28::bool[]",
            names: ", wk, wo, ds, de, ts, te, st",
            tail: "RETURNING id, status, run_at, created_at, started_at"
        )))
        .bind(workflow_id)
        .bind(nodes.iter().map(|n| n.key.as_str()).collect::<Vec<_>>())
        .bind(waiting)
        .bind(depends_on.starts)
        .bind(depends_on.ends)
        .bind(dependents.starts)
        .bind(dependents.ends)
        .bind(created_at)
        .bind(depends_on.flat)
        .bind(dependents.flat)
        .bind(started)
        .bind(owner)
        .bind(lease)
        .fetch_all(&mut **tx)
        .await
        .map_err(db_error)?;
    let stamped: HashMap<Uuid, Stamped> = stamped.into_iter().map(|row| (row.0, row)).collect();
    new.iter()
        .zip(nodes)
        .map(|(t, node)| {
            let (_, status, run_at, created_at, started_at) =
                stamped.get(&t.id).ok_or_else(|| {
                    StoreError::Database(format!("workflow task {} was not inserted", t.id))
                })?;
            let status = TaskStatus::from_str(status).map_err(corrupt)?;
            let mut task = inserted_task(t, status, *run_at, *created_at);
            if status == TaskStatus::Running {
                task.attempts = 1;
                task.started_at = *started_at;
            }
            task.workflow_id = Some(workflow_id);
            task.workflow_key = Some(node.key.clone());
            Ok(task)
        })
        .collect()
}

/// A deferred chunk taken to be written: its workflow, its tasks (packed, or JSON as stored
/// before: see [`unpack`]), the workflow's creation and policy.
type TakenChunk = (Uuid, Option<Vec<u8>>, Option<String>, DateTime<Utc>, String);

/// Writes deferred chunks of `workflows` as rows (their rows locked by the caller), each task
/// waiting for its dependencies not yet satisfied: settled, and final in its favour. A
/// dependency that settles in this transaction is settled already (its completion or
/// [`MARK`] set the flag), so its deferred dependents count it here, not in the countdown.
///
/// For dependencies settling ([`Chunks::DependingOn`]) every chunk holding one of their
/// dependents is locked, the first of each workflow is written and the others are released
/// (`ready_at`), for `release_ready` to write next: a large fan-out starts running after its
/// first thousand tasks are written, and the rest are written meanwhile. The lock is what
/// keeps their counts right without the workflow's: a chunk is taken (deleted) before its
/// rows count what has settled, and a settling that reaches it after that waits for the rows
/// to be committed, then counts down on them. A chunk no settling reached before (not
/// released) has no dependency settled but those settling now, all in its favour (or every
/// chunk would be written): its rows count those without reading the others'.
///
/// The tasks written, and those of the chunks reached but left for later (released, and locked
/// until this transaction ends): none is a row yet, and each will count what settles now when
/// it is written, so the countdown passes them by.
async fn write_deferred(
    tx: &mut Tx,
    workflows: &[Uuid],
    chunks: Chunks<'_>,
    start: Option<&mut Starter<'_>>,
) -> Result<(Vec<Task>, HashSet<Uuid>), StoreError> {
    let (taken, satisfied, left) = match chunks {
        Chunks::All => {
            let taken = sqlx::query_as(
                "DELETE FROM workflow_deferred d USING workflows w
                 WHERE w.id = d.workflow_id AND d.workflow_id = ANY($1)
                 RETURNING d.workflow_id, d.packed, d.tasks, w.created_at, w.on_failure",
            )
            .bind(workflows)
            .fetch_all(&mut **tx)
            .await
            .map_err(db_error)?;
            (taken, Satisfied::Read, HashSet::new())
        }
        Chunks::DependingOn(settling) => {
            let found: Vec<(Uuid, i32, bool, Vec<Uuid>)> = sqlx::query_as(
                "SELECT workflow_id, seq, ready_at IS NULL, ids FROM workflow_deferred
                 WHERE workflow_id = ANY($1) AND parents && $2
                 ORDER BY workflow_id, seq FOR UPDATE",
            )
            .bind(workflows)
            .bind(settling)
            .fetch_all(&mut **tx)
            .await
            .map_err(db_error)?;
            if found.is_empty() {
                return Ok((Vec::new(), HashSet::new()));
            }
            let reached = reached(found, settling);
            if !reached.release.is_empty() {
                let (release, seqs): (Vec<Uuid>, Vec<i32>) = reached.release.into_iter().unzip();
                sqlx::query(
                    "UPDATE workflow_deferred SET ready_at = now()
                     WHERE (workflow_id, seq) IN (SELECT * FROM unnest($1::uuid[], $2::int4[]))",
                )
                .bind(&release)
                .bind(&seqs)
                .execute(&mut **tx)
                .await
                .map_err(db_error)?;
            }
            let (ids, seqs): (Vec<Uuid>, Vec<i32>) = reached.take.into_iter().unzip();
            let taken = sqlx::query_as(
                "DELETE FROM workflow_deferred d USING workflows w
                 WHERE w.id = d.workflow_id
                   AND (d.workflow_id, d.seq) IN (SELECT * FROM unnest($1::uuid[], $2::int4[]))
                 RETURNING d.workflow_id, d.packed, d.tasks, w.created_at, w.on_failure",
            )
            .bind(&ids)
            .bind(&seqs)
            .fetch_all(&mut **tx)
            .await
            .map_err(db_error)?;
            (taken, reached.satisfied, reached.left)
        }
    };
    Ok((write_taken(tx, taken, &satisfied, start).await?, left))
}

/// Writes the deferred chunks `taken` as rows (see [`write_deferred`]), those `start` takes
/// started.
async fn write_taken(
    tx: &mut Tx,
    taken: Vec<TakenChunk>,
    known: &Satisfied<Uuid>,
    mut start: Option<&mut Starter<'_>>,
) -> Result<Vec<Task>, StoreError> {
    let by_workflow = taken_by_workflow(taken.iter().map(
        |(workflow, packed, text, created_at, policy)| {
            (
                *workflow,
                *created_at,
                policy.as_str(),
                packed.as_deref(),
                text.as_deref(),
            )
        },
    ))?;
    let mut written = Vec::new();
    for (workflow, (created_at, policy, taken)) in by_workflow {
        let satisfied = known
            .or_read(&workflow, satisfied(tx, &taken.new, &taken.nodes, policy))
            .await?;
        let rows = Rows {
            waiting: taken.waiting(&satisfied),
            new: &taken.new,
            nodes: &taken.nodes,
            dependents: taken.dependents(),
            created_at: Some(created_at),
        };
        written.extend(write_rows(tx, workflow, rows, start.as_deref_mut()).await?);
    }
    Ok(written)
}

/// Of the dependencies of `new` (at their places `nodes`), those satisfied: rows settled and
/// final in their dependents' favour under `policy`. One written with them is not.
async fn satisfied(
    tx: &mut Tx,
    new: &[NewTask],
    nodes: &[WorkflowNode],
    policy: OnFailure,
) -> Result<HashSet<Uuid>, StoreError> {
    let parents = outside_dependencies(new, nodes);
    if parents.is_empty() {
        return Ok(HashSet::new());
    }
    let settled: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT id, status FROM tasks WHERE id = ANY($1) AND settled")
            .bind(&parents)
            .fetch_all(&mut **tx)
            .await
            .map_err(db_error)?;
    let mut satisfied = HashSet::new();
    for (id, status) in settled {
        if in_favour(TaskStatus::from_str(&status).map_err(corrupt)?, policy) {
            satisfied.insert(id);
        }
    }
    Ok(satisfied)
}

/// Wakes every node's claim loop at commit, as the insert trigger does.
async fn notify_claimers(tx: &mut Tx) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify('mcp_tasks.' || current_schema(), '')")
        .execute(&mut **tx)
        .await
        .map_err(db_error)?;
    Ok(())
}

/// Locks the rows of `workflows`, in id order (see the module's comment).
async fn lock_workflows(tx: &mut Tx, workflows: &[Uuid]) -> Result<(), StoreError> {
    sqlx::query("SELECT id FROM workflows WHERE id = ANY($1) ORDER BY id FOR UPDATE")
        .bind(workflows)
        .execute(&mut **tx)
        .await
        .map_err(db_error)?;
    Ok(())
}

/// How many of a task's dependencies (`p`) it still waits for when the task `$2` is retried
/// (`$3`: the workflow continues past failures): the retried one, and any not final in its
/// favour.
const UNSETTLED: &str = "(count(*) FILTER (WHERE p.id = $2 OR NOT (p.status = 'succeeded'
                             OR ($3 AND p.status IN ('dead', 'cancelled')))))::int4";

/// Arrays of ids of different lengths, one per row, as one flat array and each row's bounds in
/// it (from 1, inclusive; none when the end comes before the start): a column of arrays of
/// different lengths cannot travel as one two-dimensional array, and as text literals
/// PostgreSQL parsed every id again (half the cost of a row holding 10,000).
struct Ragged {
    flat: Vec<Uuid>,
    starts: Vec<i32>,
    ends: Vec<i32>,
}

impl Ragged {
    fn of<'a>(rows: impl IntoIterator<Item = &'a [Uuid]>) -> Ragged {
        let mut ragged = Ragged {
            flat: Vec::new(),
            starts: Vec::new(),
            ends: Vec::new(),
        };
        for ids in rows {
            ragged.starts.push(ragged.flat.len() as i32 + 1);
            ragged.flat.extend_from_slice(ids);
            ragged.ends.push(ragged.flat.len() as i32);
        }
        ragged
    }
}

/// What a workflow task's completion returns: id, status, whether it was settled before, its
/// workflow and dependents.
type CompletedRow = (Uuid, String, bool, Option<Uuid>, Option<Vec<Uuid>>);

/// Settles the tasks a completion in this transaction made final: their workflows' rows locked
/// (in id order, see the module's comment), then their outcomes applied along their dependents,
/// as the completion returned them. Their own rows are locked by the completion, so nothing
/// else settles them meanwhile.
async fn settle_completed(
    tx: &mut Tx,
    ended: Vec<Ended<Uuid>>,
    start: Option<&mut Starter<'_>>,
) -> Result<Settled, StoreError> {
    if ended.is_empty() {
        return Ok(Settled::default());
    }
    let mut workflows: Vec<Uuid> = ended.iter().map(|e| e.workflow).collect();
    workflows.sort_unstable();
    workflows.dedup();
    let policies: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT id, on_failure FROM workflows WHERE id = ANY($1) ORDER BY id FOR UPDATE",
    )
    .bind(&workflows)
    .fetch_all(&mut **tx)
    .await
    .map_err(db_error)?;
    let policies: HashMap<Uuid, OnFailure> = policies
        .into_iter()
        .map(|(id, policy)| Ok((id, OnFailure::from_str(&policy).map_err(corrupt)?)))
        .collect::<Result<_, StoreError>>()?;
    let (outcomes, edges) = outcomes_of(ended, &policies);
    apply_edges(tx, &edges, &outcomes, policies.into_keys().collect(), start).await
}

/// Marks the tasks `$1` settled that are not yet (a `RETURNING` clause follows).
const MARK: &str = "UPDATE tasks SET settled = true WHERE id = ANY($1) AND NOT settled";

/// Settles the tasks `ids` that are final and not settled yet (made final outside a
/// completion: cancelled, dead after a rescue; or dependencies of tasks added to a running
/// workflow): marked settled, their outcomes applied to their dependents.
async fn settle(tx: &mut Tx, ids: &[Uuid]) -> Result<Settled, StoreError> {
    if ids.is_empty() {
        return Ok(Settled::default());
    }
    // Locked first, in one order: see the module's comment. The dependencies' rows are ours
    // (this transaction made them final) or committed before the call, so reading them in the
    // statement that may wait for the lock reads them as they are; whether one is settled is
    // decided by the update below, which reads it after the lock.
    let parents: Vec<(Uuid, String, Uuid, String)> = sqlx::query_as(
        "SELECT t.id, t.status, w.id, w.on_failure FROM tasks t
         JOIN workflows w ON w.id = t.workflow_id
         WHERE t.id = ANY($1) AND t.status IN ('succeeded', 'dead', 'cancelled')
           AND NOT t.settled
         ORDER BY w.id FOR UPDATE OF w",
    )
    .bind(ids)
    .fetch_all(&mut **tx)
    .await
    .map_err(db_error)?;
    if parents.is_empty() {
        return Ok(Settled::default());
    }
    let mut outcomes = HashMap::new();
    let mut touched: HashSet<Uuid> = HashSet::new();
    for (id, status, workflow, policy) in parents {
        let status = TaskStatus::from_str(&status).map_err(corrupt)?;
        let policy = OnFailure::from_str(&policy).map_err(corrupt)?;
        outcomes.insert(id, (status, policy));
        touched.insert(workflow);
    }
    let final_ids: Vec<Uuid> = outcomes.keys().copied().collect();
    let rows: Vec<(Uuid, Option<Vec<Uuid>>)> =
        sqlx::query_as(sql!("{MARK} RETURNING id, dependents"))
            .bind(&final_ids)
            .fetch_all(&mut **tx)
            .await
            .map_err(db_error)?;
    let edges: Vec<(Uuid, Uuid)> = rows
        .into_iter()
        .flat_map(|(parent, dependents)| {
            dependents
                .unwrap_or_default()
                .into_iter()
                .map(move |child| (child, parent))
        })
        .collect();
    apply_edges(tx, &edges, &outcomes, touched, None).await
}

/// Applies dependencies' outcomes along `edges` (`(dependent, dependency)`): deferred
/// dependents written as rows (every deferred task of the workflows when a failed one cancels
/// its dependents, which goes down their own), the cancelling of those a failed one cancels,
/// the countdown of the others; then the finish check.
async fn apply_edges(
    tx: &mut Tx,
    edges: &[(Uuid, Uuid)],
    outcomes: &HashMap<Uuid, (TaskStatus, OnFailure)>,
    touched: HashSet<Uuid>,
    start: Option<&mut Starter<'_>>,
) -> Result<Settled, StoreError> {
    let mut settled = Settled::default();
    let workflows: Vec<Uuid> = touched.iter().copied().collect();
    let settling: Vec<Uuid> = outcomes.keys().copied().collect();
    let (written, left) =
        write_deferred(tx, &workflows, Chunks::settling(outcomes, &settling), start).await?;
    settled.ready = !left.is_empty();
    let (mut counts, cancel) = apply(edges, outcomes);
    // Those written now counted what settles now already, and so will those left deferred.
    let written_ids: HashSet<Uuid> = written.iter().map(|t| t.id).collect();
    counts.retain(|child, _| !written_ids.contains(child) && !left.contains(child));
    settled.cancelled = cancel_dependents(tx, cancel).await?;
    let cancelled: HashSet<Uuid> = settled.cancelled.iter().map(|t| t.id).collect();
    let mut counted: Vec<Task> = written
        .into_iter()
        .filter(|t| !cancelled.contains(&t.id))
        .collect();
    if !counts.is_empty() {
        let (children, settled_now): (Vec<Uuid>, Vec<i32>) =
            counts.into_iter().map(|(id, n)| (id, n as i32)).unzip();
        let rows: Vec<TaskRow> = sqlx::query_as(sql!(
            "UPDATE tasks t SET waiting_on = t.waiting_on - c.n,
                 status = CASE WHEN t.waiting_on - c.n > 0 THEN 'waiting'
                               WHEN t.run_at > now() THEN 'scheduled' ELSE 'queued' END
             FROM unnest($1::uuid[], $2::int4[]) AS c(id, n)
             WHERE t.id = c.id AND t.status = 'waiting'
             RETURNING {}",
            qualified(TASK_COLUMNS, "t")
        ))
        .bind(&children)
        .bind(&settled_now)
        .fetch_all(&mut **tx)
        .await
        .map_err(db_error)?;
        counted.extend(tasks(rows)?);
    }
    finish(tx, settled, counted, touched).await
}

/// Records the dependents `counted` (released or still waiting), notifies the claim loops if any
/// was released, and finishes those of the workflows `touched` whose tasks are all final.
async fn finish(
    tx: &mut Tx,
    mut settled: Settled,
    counted: Vec<Task>,
    touched: HashSet<Uuid>,
) -> Result<Settled, StoreError> {
    // A workflow with a task still waiting or just released has not finished.
    let mut open: HashSet<Uuid> = HashSet::new();
    for task in counted {
        if let Some(workflow) = task.workflow_id {
            open.insert(workflow);
        }
        match task.status {
            TaskStatus::Waiting => {}
            TaskStatus::Running => settled.started.push(task),
            _ => settled.released.push(task),
        }
    }
    if !settled.released.is_empty() {
        notify_claimers(tx).await?;
    }
    let maybe_finished: Vec<Uuid> = touched.difference(&open).copied().collect();
    if maybe_finished.is_empty() {
        return Ok(settled);
    }
    // One pass over each workflow's tasks answers both questions (is one still open? did one
    // fail?): it runs when settling saw none open, so mostly on a finished workflow, where
    // a `NOT EXISTS` stops at no task and a second `EXISTS` for the outcome read them again.
    let rows: Vec<WorkflowRow> = sqlx::query_as(sql!(
        "UPDATE workflows SET
             status = CASE WHEN s.failed THEN 'failed' ELSE 'succeeded' END,
             finished_at = now()
         FROM (SELECT w.id,
                      bool_or(t.status NOT IN ('succeeded', 'dead', 'cancelled')) AS open,
                      bool_or(t.status <> 'succeeded') AS failed
               FROM workflows w JOIN tasks t ON t.id = ANY(w.task_ids)
               WHERE w.id = ANY($1) GROUP BY w.id) s
         WHERE workflows.id = s.id AND workflows.status = 'running' AND NOT s.open
           AND NOT EXISTS (SELECT 1 FROM workflow_deferred d WHERE d.workflow_id = s.id)
         RETURNING {}",
        qualified(WORKFLOW_COLUMNS, "workflows")
    ))
    .bind(&maybe_finished)
    .fetch_all(&mut **tx)
    .await
    .map_err(db_error)?;
    settled.finished = workflows(rows)?;
    Ok(settled)
}

/// Cancels the dependents in `cancel`, each with the dependency whose end cancels it
/// (`details.cancelled_by`: a retry of that one revives it), and their own dependents.
async fn cancel_dependents(
    tx: &mut Tx,
    cancel: Vec<(Uuid, Uuid)>,
) -> Result<Vec<Task>, StoreError> {
    if cancel.is_empty() {
        return Ok(Vec::new());
    }
    let (children, causes): (Vec<Uuid>, Vec<Uuid>) = cancel.into_iter().unzip();
    let rows: Vec<TaskRow> = sqlx::query_as(sql!(
        "WITH RECURSIVE down(id, cause) AS (
             SELECT * FROM unnest($1::uuid[], $2::uuid[])
             UNION SELECT d.id, p.id FROM down JOIN tasks p ON p.id = down.id
             CROSS JOIN LATERAL unnest(p.dependents) AS d(id))
         UPDATE tasks SET status = 'cancelled', finished_at = now(),
             error = jsonb_build_object('message', $3::text, 'attempt', attempts,
                 'details', jsonb_build_object('cancelled_by', d.cause))
         FROM (SELECT DISTINCT ON (id) id, cause FROM down ORDER BY id, cause) d
         WHERE tasks.id = d.id AND tasks.status = 'waiting'
         RETURNING {}",
        qualified(TASK_COLUMNS, "tasks")
    ))
    .bind(&children)
    .bind(&causes)
    .bind(CANCELLED_BY_DEPENDENCY)
    .fetch_all(&mut **tx)
    .await
    .map_err(db_error)?;
    tasks(rows)
}
