//! Workflows on SQLite: a workflow and its tasks inserted in one transaction (those with
//! dependencies deferred, as JSON chunks), and settling (deferred dependents written as rows,
//! dependents released or cancelled, workflows finished) in the transaction that made their
//! dependencies final. The one writer connection orders every settling, so no lock is needed.

use super::task_row::{TaskRow, tasks};
use super::tasks::{
    Begins, Insert, bind_new_task, complete_sql, completion_batch, insert_chunks,
    insert_values_sql, plain_success, succeed_sql,
};
use super::{SqliteTaskStore, outbox};
use crate::codec::{id_text, ids_json, instant, json_array, micros, micros_after, uuid};
use crate::columns::{TASK_COLUMNS, WORKFLOW_COLUMNS, qualified};
use crate::error::{corrupt, db_error};
use crate::outbox::Transition;
use crate::tasks::inserted_task;
use crate::workflows::{
    CANCELLED_BY_DEPENDENCY, Chunks, Ended, Satisfied, Split, Starter, apply, chunk_columns,
    chunked, dependents_of, each_dependents, edges_to, edges_to_earlier, flow_for, group_parents,
    in_favour, in_order, may_retry, outcomes_of, outside_dependencies, pack, parent_view, reached,
    released_and_started, revivable, revives, runnable, split, taken_by_workflow,
};
use chrono::Utc;
use mcp_core::store::StartRequest;
use mcp_core::task::Progress;
use mcp_core::workflow::{
    NewWorkflow, OnFailure, Retried, Settled, Workflow, WorkflowDetail, WorkflowFilter,
    WorkflowNode, WorkflowStatus,
};
use mcp_core::{Completion, NewTask, RetryOutcome, StoreError, Task, TaskStatus, TaskStore};
use serde_json::{Value, json};
use sqlx::{FromRow, Sqlite, Transaction};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use uuid::Uuid;

#[derive(FromRow)]
struct WorkflowRow {
    id: String,
    name: String,
    status: String,
    on_failure: String,
    created_by: Option<String>,
    correlation_id: Option<String>,
    created_at: i64,
    finished_at: Option<i64>,
}

impl TryFrom<WorkflowRow> for Workflow {
    type Error = StoreError;
    fn try_from(row: WorkflowRow) -> Result<Workflow, StoreError> {
        Ok(Workflow {
            id: uuid(&row.id)?,
            name: row.name,
            status: FromStr::from_str(&row.status).map_err(corrupt)?,
            on_failure: FromStr::from_str(&row.on_failure).map_err(corrupt)?,
            created_by: row.created_by,
            correlation_id: row.correlation_id,
            created_at: instant(row.created_at)?,
            finished_at: row.finished_at.map(instant).transpose()?,
        })
    }
}

fn workflows(rows: Vec<WorkflowRow>) -> Result<Vec<Workflow>, StoreError> {
    rows.into_iter().map(Workflow::try_from).collect()
}

type Tx = Transaction<'static, Sqlite>;

impl SqliteTaskStore {
    pub(super) async fn insert_workflow_tx(
        &self,
        workflow: &NewWorkflow,
        new: &[NewTask],
        nodes: &[WorkflowNode],
    ) -> Result<(Workflow, Vec<Task>), StoreError> {
        let at = Utc::now();
        let now = micros(at);
        let mut tx = self.writer.begin().await.map_err(db_error)?;
        let row: WorkflowRow = sqlx::query_as(sql!(
            "INSERT INTO workflows (id, name, status, on_failure, created_by, share_key,
                 correlation_id, created_at)
             VALUES (?1, ?2, 'running', ?3, ?4, ?5, ?6, ?7)
             RETURNING {WORKFLOW_COLUMNS}"
        ))
        .bind(id_text(workflow.id))
        .bind(&workflow.name)
        .bind(workflow.on_failure.as_str())
        .bind(workflow.created_by.as_deref())
        .bind(workflow.share_key.as_deref())
        .bind(workflow.correlation_id.as_deref())
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_error)?;
        let stored = Workflow::try_from(row)?;
        // The outbox records `task.created` from the task's row: while a webhook wants it,
        // every task is a row at once.
        let created = if self.outbox.wanted(Transition::Created).is_some() {
            insert_tasks(&mut tx, workflow.id, new, nodes, at).await?
        } else {
            insert_deferring(&mut tx, workflow.id, new, nodes, at).await?
        };
        let ids: Vec<Uuid> = created.iter().map(|t| t.id).collect();
        self.commit_recording(tx, &ids, Transition::Created).await?;
        Ok((stored, created))
    }

    /// Writes as rows the deferred tasks of the workflow holding the task `id`, if one does
    /// (before something reads or changes that task).
    pub(super) async fn write_deferred_holding(&self, id: Uuid) -> Result<(), StoreError> {
        let holder: Option<(String,)> = sqlx::query_as(HOLDER_OF_DEFERRED)
            .bind(id_text(id))
            .fetch_optional(&self.readers)
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
    async fn write_deferred_of(&self, workflows: Option<Vec<String>>) -> Result<(), StoreError> {
        let holders: Vec<(String,)> = sqlx::query_as(
            "SELECT DISTINCT workflow_id FROM workflow_deferred
             WHERE ?1 IS NULL OR workflow_id IN (SELECT value FROM json_each(?1))",
        )
        .bind(workflows.map(json_array))
        .fetch_all(&self.readers)
        .await
        .map_err(db_error)?;
        if holders.is_empty() {
            return Ok(());
        }
        let holders: Vec<String> = holders.into_iter().map(|(id,)| id).collect();
        self.write_holders(&holders).await
    }

    /// Writes the deferred tasks of the workflows `holders` as rows. They are `waiting` (none of
    /// their dependencies settled, or that would have written them) unless a settling released
    /// them for later; those it makes runnable are handed over to be announced.
    async fn write_holders(&self, holders: &[String]) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await.map_err(db_error)?;
        let (written, _) =
            write_deferred(&mut tx, holders, Chunks::All, micros(Utc::now()), None).await?;
        tx.commit().await.map_err(db_error)?;
        self.released.hand_over(runnable(written));
        Ok(())
    }

    pub(super) async fn release_ready_tx(
        &self,
        start: Option<&StartRequest<'_>>,
    ) -> Result<Option<Settled>, StoreError> {
        let flow = flow_for(start, self.flow_view()).await?;
        let mut starter = Starter::of(start, flow.as_deref());
        let mut tx = self.writer.begin().await.map_err(db_error)?;
        // The oldest chunk released and not written.
        let taken: Vec<TakenChunk> = sqlx::query_as(sql!(
            "DELETE FROM workflow_deferred WHERE (workflow_id, seq) = (
                 SELECT workflow_id, seq FROM workflow_deferred WHERE ready_at IS NOT NULL
                 ORDER BY ready_at, workflow_id, seq LIMIT 1)
             RETURNING {TAKEN}"
        ))
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        if taken.is_empty() {
            tx.rollback().await.map_err(db_error)?;
            return Ok(None);
        }
        let written = write_taken(
            &mut tx,
            taken,
            &Satisfied::Read,
            micros(Utc::now()),
            starter.as_mut(),
        )
        .await?;
        let (released, started) = released_and_started(written);
        self.commit_started(tx, &started).await?;
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
        let mut tx = self.writer.begin().await.map_err(db_error)?;
        let running: Option<(String,)> =
            sqlx::query_as("SELECT on_failure FROM workflows WHERE id = ?1 AND status = 'running'")
                .bind(id_text(workflow_id))
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_error)?;
        let Some((policy,)) = running else {
            return Ok(None);
        };
        let policy = OnFailure::from_str(&policy).map_err(corrupt)?;
        let at = Utc::now();
        // The new tasks' dependencies are rows, to which their dependents are appended.
        let (written, _) = write_deferred(
            &mut tx,
            &[id_text(workflow_id)],
            Chunks::All,
            micros(at),
            None,
        )
        .await?;
        // Dependencies stored before whose end was applied to their dependents already: it is
        // applied to the new ones here. Those that ended but are not settled yet settle below,
        // for every dependent, the new ones included.
        let parents: Vec<Uuid> = nodes.iter().flat_map(|n| n.depends_on.clone()).collect();
        let ended: Vec<(String, String)> = sqlx::query_as(
            "SELECT id, status FROM tasks
             WHERE id IN (SELECT value FROM json_each(?1)) AND settled",
        )
        .bind(ids_json(&parents))
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        let created = insert_tasks(&mut tx, workflow_id, new, nodes, at).await?;
        let mut settled = settle(&mut tx, &parents).await?;
        // Released dependents left to write after their settling that this wrote first.
        settled.released.extend(runnable(written));
        if !ended.is_empty() {
            let mut outcomes = HashMap::new();
            for (id, status) in ended {
                let status = TaskStatus::from_str(&status).map_err(corrupt)?;
                outcomes.insert(uuid(&id)?, (status, policy));
            }
            let edges = edges_to(new, nodes, |parent| outcomes.contains_key(parent));
            let more = apply_edges(
                &mut tx,
                &edges,
                &outcomes,
                HashSet::from([id_text(workflow_id)]),
                None,
            )
            .await?;
            settled.released.extend(more.released);
            settled.cancelled.extend(more.cancelled);
            settled.finished.extend(more.finished);
        }
        let ids: Vec<Uuid> = created.iter().map(|t| t.id).collect();
        self.commit_recording(tx, &ids, Transition::Created).await?;
        Ok(Some(settled))
    }

    pub(super) async fn get_workflow_row(
        &self,
        id: Uuid,
    ) -> Result<Option<WorkflowDetail>, StoreError> {
        self.write_deferred_of(Some(vec![id_text(id)])).await?;
        let row: Option<WorkflowRow> = sqlx::query_as(sql!(
            "SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE id = ?1"
        ))
        .bind(id_text(id))
        .fetch_optional(&self.readers)
        .await
        .map_err(db_error)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let rows: Vec<TaskRow> = sqlx::query_as(sql!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE workflow_id = ?1 ORDER BY id"
        ))
        .bind(id_text(id))
        .fetch_all(&self.readers)
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
             WHERE (?1 IS NULL OR created_by = ?1) AND (?2 IS NULL OR id < ?2)
             ORDER BY id DESC LIMIT ?3"
        ))
        .bind(filter.created_by.as_deref())
        .bind(filter.before.map(id_text))
        .bind(i64::from(filter.limit))
        .fetch_all(&self.readers)
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
        let mut tx = self.writer.begin().await.map_err(db_error)?;
        // As `complete`, then settled in the same transaction. Its final tasks are marked
        // settled by the completion itself, and settled below from what it returns: their
        // workflows and dependents, so settling does not look them up again. One whose
        // dependents counted it already (retried by hand after it ended under `continue`) was
        // settled before, and is left alone: the old flag is written to `settled_before` (every
        // assignment reads the row as the statement found it) and returned from there. The
        // common batch, successes without a result, goes by their ids alone, as in `complete`.
        let query = if completions.iter().all(plain_success) {
            let ids: Vec<Uuid> = completions.iter().map(|c| c.id).collect();
            sqlx::query_as::<_, CompletedRow>(succeed_sql!(
                set: ", settled = 1, settled_before = settled",
                "RETURNING id, status, settled_before, workflow_id, dependents"
            ))
            .bind(ids_json(&ids))
        } else {
            sqlx::query_as(complete_sql!(
                set: ", settled = tasks.settled OR c.value ->> 'status' IN ('succeeded', 'dead'),
                     settled_before = tasks.settled",
                "RETURNING tasks.id, tasks.status, tasks.settled_before, tasks.workflow_id,
                     tasks.dependents"
            ))
            .bind(completion_batch(completions)?)
        };
        let changed: Vec<CompletedRow> = query
            .bind(micros(Utc::now()))
            .bind(owner)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
        let mut ids = Vec::with_capacity(changed.len());
        let mut ended = Vec::new();
        for (id, status, was_settled, workflow, dependents) in changed {
            let id = uuid(&id)?;
            let status = TaskStatus::from_str(&status).map_err(corrupt)?;
            if let (Some(workflow), true, false) = (workflow, status.is_final(), was_settled) {
                ended.push(Ended {
                    id,
                    status,
                    workflow,
                    dependents: id_list(dependents.as_deref())?,
                });
            }
            ids.push(id);
        }
        let mut settled = settle_completed(&mut tx, ended, starter.as_mut()).await?;
        // Those it started, recorded as a claim records them.
        let mut recorded = 0;
        if let Some(wanted) = self.outbox.wanted(Transition::Started) {
            let started: Vec<Uuid> = settled.started.iter().map(|t| t.id).collect();
            recorded = outbox::record(&mut tx, &started, Transition::Started, &wanted).await?;
        }
        self.commit_recording(tx, &ids, Transition::Settled).await?;
        if recorded > 0 {
            self.outbox.tell();
        }
        settled.changed = ids;
        Ok(settled)
    }

    /// Commits `tx`, which started `started` (recorded for the webhooks that want it).
    async fn commit_started(&self, tx: Tx, started: &[Task]) -> Result<(), StoreError> {
        let ids: Vec<Uuid> = started.iter().map(|t| t.id).collect();
        self.commit_recording(tx, &ids, Transition::Started).await
    }

    pub(super) async fn settle_tx(&self, ids: &[Uuid]) -> Result<Settled, StoreError> {
        let mut tx = self.writer.begin().await.map_err(db_error)?;
        let settled = settle(&mut tx, ids).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(settled)
    }

    pub(super) async fn cancel_workflow_tx(
        &self,
        id: Uuid,
    ) -> Result<Option<(Workflow, Vec<(Task, bool)>)>, StoreError> {
        let mut tx = self.writer.begin().await.map_err(db_error)?;
        let exists: Option<(String,)> = sqlx::query_as("SELECT id FROM workflows WHERE id = ?1")
            .bind(id_text(id))
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?;
        if exists.is_none() {
            return Ok(None);
        }
        let now = micros(Utc::now());
        write_deferred(&mut tx, &[id_text(id)], Chunks::All, now, None).await?;
        let running: Vec<(String,)> =
            sqlx::query_as("SELECT id FROM tasks WHERE workflow_id = ?1 AND status = 'running'")
                .bind(id_text(id))
                .fetch_all(&mut *tx)
                .await
                .map_err(db_error)?;
        let running: HashSet<String> = running.into_iter().map(|(id,)| id).collect();
        let rows: Vec<TaskRow> = sqlx::query_as(sql!(
            "UPDATE tasks SET status = 'cancelled', finished_at = ?2,
                 lease_owner = NULL, lease_expires_at = NULL
             WHERE workflow_id = ?1 AND status NOT IN ('succeeded', 'dead', 'cancelled')
             RETURNING {TASK_COLUMNS}"
        ))
        .bind(id_text(id))
        .bind(now)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        let cancelled: Vec<(Task, bool)> = rows
            .into_iter()
            .map(|row| {
                let was_running = running.contains(&row.id);
                Task::try_from(row).map(|task| (task, was_running))
            })
            .collect::<Result<_, _>>()?;
        let row: WorkflowRow = sqlx::query_as(sql!(
            "UPDATE workflows SET status = CASE WHEN status = 'running' THEN 'cancelled'
                     ELSE status END,
                 finished_at = coalesce(finished_at, ?2)
             WHERE id = ?1
             RETURNING {WORKFLOW_COLUMNS}"
        ))
        .bind(id_text(id))
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_error)?;
        let ids: Vec<Uuid> = cancelled.iter().map(|(t, _)| t.id).collect();
        self.commit_recording(tx, &ids, Transition::Cancelled)
            .await?;
        Ok(Some((row.try_into()?, cancelled)))
    }

    pub(super) async fn retry_workflow_task_tx(&self, id: Uuid) -> Result<Retried, StoreError> {
        let plain = |outcome| Retried {
            outcome,
            revived: Vec::new(),
            reopened: None,
        };
        let mut tx = self.writer.begin().await.map_err(db_error)?;
        let mut found: Option<(Option<String>, String)> = None;
        // Released dependents this writes first, to hand over once committed.
        let mut released = Vec::new();
        // A miss may be a deferred workflow task (in this transaction, the one writer: no
        // completion writes it in between).
        for _ in 0..2 {
            found = sqlx::query_as("SELECT workflow_id, status FROM tasks WHERE id = ?1")
                .bind(id_text(id))
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_error)?;
            let holder: Option<(String,)> = match found {
                Some(_) => None,
                None => sqlx::query_as(HOLDER_OF_DEFERRED)
                    .bind(id_text(id))
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_error)?,
            };
            let Some((workflow,)) = holder else {
                break;
            };
            let (written, _) =
                write_deferred(&mut tx, &[workflow], Chunks::All, micros(Utc::now()), None).await?;
            released.extend(runnable(written));
        }
        let (workflow_id, status) = match found {
            None => return Ok(plain(RetryOutcome::NotFound)),
            Some((None, _)) => {
                tx.rollback().await.map_err(db_error)?;
                return Ok(plain(self.retry(id).await?));
            }
            Some((Some(workflow_id), status)) => (workflow_id, status),
        };
        let status = TaskStatus::from_str(&status).map_err(corrupt)?;
        let (flow_status, policy): (String, String) =
            sqlx::query_as("SELECT status, on_failure FROM workflows WHERE id = ?1")
                .bind(&workflow_id)
                .fetch_one(&mut *tx)
                .await
                .map_err(db_error)?;
        let flow_status = WorkflowStatus::from_str(&flow_status).map_err(corrupt)?;
        let policy = OnFailure::from_str(&policy).map_err(corrupt)?;
        // What a retry revives and counts again goes down and up the graph's rows.
        let (written, _) = write_deferred(
            &mut tx,
            std::slice::from_ref(&workflow_id),
            Chunks::All,
            micros(Utc::now()),
            None,
        )
        .await?;
        released.extend(runnable(written));
        let dependencies: Vec<(String,)> = sqlx::query_as(
            "SELECT p.status FROM tasks t JOIN json_each(t.depends_on) AS d
             JOIN tasks p ON p.id = d.value
             WHERE t.id = ?1",
        )
        .bind(id_text(id))
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
            let candidates: Vec<(String,)> = sqlx::query_as(
                "WITH RECURSIVE down(id) AS (
                     SELECT t.id FROM tasks p JOIN json_each(p.dependents) AS d
                     JOIN tasks t ON t.id = d.value
                     WHERE p.id = ?1 AND t.status = 'cancelled'
                       AND json_extract(t.error, '$.details.cancelled_by') IS NOT NULL
                     UNION SELECT t.id FROM down JOIN tasks p ON p.id = down.id
                     JOIN json_each(p.dependents) AS d JOIN tasks t ON t.id = d.value
                     WHERE t.status = 'cancelled'
                       AND json_extract(t.error, '$.details.cancelled_by') IS NOT NULL)
                 SELECT id FROM down",
            )
            .bind(id_text(id))
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
            let candidates = candidates
                .into_iter()
                .map(|(id,)| uuid(&id))
                .collect::<Result<Vec<_>, _>>()?;
            let edges: Vec<(String, String, String)> = sqlx::query_as(
                "SELECT t.id, d.value, p.status
                 FROM tasks t JOIN json_each(t.depends_on) AS d JOIN tasks p ON p.id = d.value
                 WHERE t.id IN (SELECT value FROM json_each(?1))",
            )
            .bind(ids_json(&candidates))
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
            let edges = edges
                .into_iter()
                .map(|(task, dependency, status)| {
                    Ok((
                        uuid(&task)?,
                        uuid(&dependency)?,
                        TaskStatus::from_str(&status).map_err(corrupt)?,
                    ))
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            revivable(id, &candidates, &edges)
        } else {
            Vec::new()
        };
        // The dependencies of the retried task and of those it revives count as they stand
        // now; the retried one is unsettled again for those it revives, whose count includes
        // it: its next end applies to them. Under `continue` its dependents counted its end
        // already, and it stays settled for them.
        let now = micros(Utc::now());
        let row: TaskRow = sqlx::query_as(sql!(
            "UPDATE tasks SET waiting_on = c.n,
                 status = CASE WHEN c.n > 0 THEN 'waiting' ELSE 'queued' END,
                 run_at = ?2, finished_at = NULL,
                 max_attempts = max(max_attempts, attempts + 1),
                 settled = settled AND NOT ?4
             FROM (SELECT {UNSETTLED} AS n
                   FROM tasks t JOIN json_each(t.depends_on) AS d JOIN tasks p ON p.id = d.value
                   WHERE t.id = ?1) AS c
             WHERE tasks.id = ?1
             RETURNING {}",
            qualified(TASK_COLUMNS, "tasks")
        ))
        .bind(id_text(id))
        .bind(now)
        .bind(policy == OnFailure::Continue)
        .bind(revives(status, flow_status, policy))
        .fetch_one(&mut *tx)
        .await
        .map_err(db_error)?;
        let rows: Vec<TaskRow> = if revived.is_empty() {
            Vec::new()
        } else {
            sqlx::query_as(sql!(
                "UPDATE tasks SET waiting_on = c.n,
                     status = CASE WHEN c.n > 0 THEN 'waiting'
                                   WHEN tasks.run_at > ?2 THEN 'scheduled' ELSE 'queued' END,
                     finished_at = NULL, error = NULL, settled = 0
                 FROM (SELECT t.id AS task_id, {UNSETTLED} AS n
                       FROM tasks t JOIN json_each(t.depends_on) AS d
                       JOIN tasks p ON p.id = d.value
                       WHERE t.id IN (SELECT value FROM json_each(?4)) GROUP BY t.id) AS c
                 WHERE tasks.id = c.task_id AND tasks.status = 'cancelled'
                 RETURNING {}",
                qualified(TASK_COLUMNS, "tasks")
            ))
            .bind(id_text(id))
            .bind(now)
            .bind(policy == OnFailure::Continue)
            .bind(ids_json(&revived))
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?
        };
        let reopened: Option<WorkflowRow> = sqlx::query_as(sql!(
            "UPDATE workflows SET status = 'running', finished_at = NULL
             WHERE id = ?1 AND status = 'failed'
             RETURNING {WORKFLOW_COLUMNS}"
        ))
        .bind(&workflow_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error)?;
        self.commit_recording(tx, &[id], Transition::Requeued)
            .await?;
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
        /// The dependents (a JSON array), the dependency's key, status, result, error.
        type ParentRow = (
            String,
            Option<String>,
            String,
            Option<String>,
            Option<String>,
        );
        // One row per dependency, with its dependents among `ids`.
        let rows: Vec<ParentRow> = sqlx::query_as(
            "SELECT json_group_array(t.id), p.workflow_key, p.status, p.result, p.error
                 FROM tasks t JOIN json_each(t.depends_on) AS d JOIN tasks p ON p.id = d.value
                 WHERE t.id IN (SELECT value FROM json_each(?1))
                 GROUP BY d.value",
        )
        .bind(ids_json(ids))
        .fetch_all(&self.readers)
        .await
        .map_err(db_error)?;
        let rows = rows
            .into_iter()
            .map(|(dependents, key, status, result, error)| {
                let dependents = id_list(Some(&dependents))?;
                let result = result.as_deref().map(crate::codec::json).transpose()?;
                let error = error.as_deref().map(crate::codec::json).transpose()?;
                Ok((
                    dependents,
                    key.unwrap_or_default(),
                    parent_view(&status, result, error),
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(group_parents(rows))
    }

    pub(super) async fn set_progress_row(
        &self,
        id: Uuid,
        progress: &Progress,
    ) -> Result<bool, StoreError> {
        let text = serde_json::to_string(progress).map_err(corrupt)?;
        let done =
            sqlx::query("UPDATE tasks SET progress = ?2 WHERE id = ?1 AND status = 'running'")
                .bind(id_text(id))
                .bind(text)
                .execute(&self.writer)
                .await
                .map_err(db_error)?;
        Ok(done.rows_affected() > 0)
    }
}

/// The workflow whose deferred chunks hold the task `?1`.
const HOLDER_OF_DEFERRED: &str = "SELECT workflow_id FROM workflow_deferred
     WHERE EXISTS (SELECT 1 FROM json_each(workflow_deferred.ids) WHERE value = ?1) LIMIT 1";

/// Unsettled dependencies among those of the tasks `t` joined to their dependencies' rows `p`,
/// for a retry of the task `?1` under the policy `?3` (whether it continues): the retried task
/// itself (its next end applies to those it revives), and those not final in their favour.
const UNSETTLED: &str = "coalesce(sum(p.id = ?1 OR NOT (p.status = 'succeeded'
     OR (?3 AND p.status IN ('dead', 'cancelled')))), 0)";

/// Ids stored as a JSON array (a task's `depends_on` or `dependents`; none when `NULL`).
fn id_list(text: Option<&str>) -> Result<Vec<Uuid>, StoreError> {
    let Some(text) = text else {
        return Ok(Vec::new());
    };
    let ids: Vec<Uuid> = serde_json::from_str(text).map_err(corrupt)?;
    Ok(ids)
}

/// `ids` as a task's `depends_on` or `dependents`: a JSON array, `NULL` for none.
fn id_column(ids: &[Uuid]) -> Option<String> {
    (!ids.is_empty()).then(|| ids_json(ids))
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
    at: chrono::DateTime<Utc>,
) -> Result<Vec<Task>, StoreError> {
    let now = micros(at);
    let mut earlier: BTreeMap<Uuid, Vec<Uuid>> = BTreeMap::new();
    for (child, parent) in edges_to_earlier(new, nodes) {
        earlier.entry(parent).or_default().push(child);
    }
    let dependents = dependents_of(new, nodes);
    let rows = Rows {
        new,
        nodes,
        dependents: each_dependents(new, &dependents),
        waiting: nodes.iter().map(|n| n.depends_on.len() as i32).collect(),
        created: now,
    };
    let created = write_rows(tx, workflow_id, rows, now, None).await?;
    if !earlier.is_empty() {
        let appended: Vec<Value> = earlier
            .into_iter()
            .map(|(parent, children)| json!([id_text(parent), children]))
            .collect();
        sqlx::query(
            "UPDATE tasks SET dependents = (
                 SELECT json_group_array(value) FROM (
                     SELECT value FROM json_each(coalesce(tasks.dependents, '[]'))
                     UNION ALL SELECT value FROM json_each(c.value -> 1)))
             FROM json_each(?1) AS c
             WHERE tasks.id = c.value ->> 0",
        )
        .bind(json_array(appended))
        .execute(&mut **tx)
        .await
        .map_err(db_error)?;
    }
    Ok(created)
}

/// Stores a new workflow's tasks: those without dependencies as rows, runnable; the others
/// deferred, in chunks written as rows when one of their dependencies settles (or something
/// reads them). What it returns is every task as its row will be: the deferred ones `waiting`,
/// created `at` (the workflow's creation).
async fn insert_deferring(
    tx: &mut Tx,
    workflow_id: Uuid,
    new: &[NewTask],
    nodes: &[WorkflowNode],
    at: chrono::DateTime<Utc>,
) -> Result<Vec<Task>, StoreError> {
    let now = micros(at);
    let dependents = dependents_of(new, nodes);
    let Split {
        roots,
        root_nodes,
        deferred,
        shown,
    } = split(workflow_id, new, nodes, &dependents, instant(now)?);
    let rows = Rows {
        new: &roots,
        nodes: &root_nodes,
        dependents: each_dependents(&roots, &dependents),
        waiting: vec![0; roots.len()],
        created: now,
    };
    let written = write_rows(tx, workflow_id, rows, now, None).await?;
    let workflow = id_text(workflow_id);
    for (seq, chunk) in chunked(&deferred).into_iter().enumerate() {
        let (ids, parents, queues) = chunk_columns(chunk);
        sqlx::query(
            "INSERT INTO workflow_deferred (workflow_id, seq, ids, parents, queues, tasks, packed)
             VALUES (?1, ?2, ?3, ?4, ?5, '', ?6)",
        )
        .bind(workflow.as_str())
        .bind(seq as i64)
        .bind(ids_json(&ids))
        .bind(ids_json(&parents))
        .bind(json_array(queues))
        .bind(pack(chunk)?)
        .execute(&mut **tx)
        .await
        .map_err(db_error)?;
    }
    in_order(shown, written)
}

/// Workflow tasks to write as rows: each with its place, its dependents and how many of its
/// dependencies it still waits for (none: runnable at once), created at `created`
/// (microseconds).
struct Rows<'a> {
    new: &'a [NewTask],
    nodes: &'a [WorkflowNode],
    dependents: Vec<&'a [Uuid]>,
    waiting: Vec<i32>,
    created: i64,
}

/// The values of one workflow task's row beyond [`bind_new_task`]'s.
struct RowValues<'a> {
    task: &'a NewTask,
    node: &'a WorkflowNode,
    waiting_on: i32,
    begins: Begins,
    depends_on: Option<String>,
    dependents: Option<String>,
}

/// Writes workflow tasks as rows, written `now` (microseconds), those `start` takes started
/// for its owner; the tasks as written, in input order.
async fn write_rows(
    tx: &mut Tx,
    workflow_id: Uuid,
    rows: Rows<'_>,
    now: i64,
    mut start: Option<&mut Starter<'_>>,
) -> Result<Vec<Task>, StoreError> {
    let Rows {
        new,
        nodes,
        dependents,
        waiting,
        created,
    } = rows;
    let workflow = id_text(workflow_id);
    let created_at = instant(created)?;
    let tasks: Vec<RowValues> = new
        .iter()
        .zip(nodes)
        .zip(dependents.into_iter().zip(waiting))
        .map(|((task, node), (its_dependents, waiting_on))| RowValues {
            task,
            node,
            waiting_on,
            begins: if waiting_on > 0 {
                Begins::Waiting
            } else if let Some(start) = start.as_deref_mut()
                && start.takes(task, task.run_at.unwrap_or(created_at))
            {
                Begins::Started
            } else {
                Begins::Due
            },
            depends_on: id_column(&node.depends_on),
            dependents: id_column(its_dependents),
        })
        .collect();
    // Started: their attempt, its start and its lease.
    let lease = match start {
        Some(start) => Some((
            start.owner().to_owned(),
            micros_after(instant(now)?, start.lease()),
        )),
        None => None,
    };
    let (started, due): (Vec<&RowValues>, Vec<&RowValues>) =
        tasks.iter().partition(|row| row.begins == Begins::Started);
    for (rows, statement) in [(due, Insert::Workflow), (started, Insert::WorkflowStarted)] {
        for chunk in insert_chunks(&rows) {
            let mut query = sqlx::query_as::<_, (String,)>(sqlx::AssertSqlSafe(insert_values_sql(
                chunk.len(),
                statement,
            )));
            for row in chunk {
                query = bind_new_task(query, row.task, (created, now), row.begins)?
                    .bind(workflow.as_str())
                    .bind(row.node.key.as_str())
                    .bind(row.waiting_on)
                    .bind(row.depends_on.as_deref())
                    .bind(row.dependents.as_deref());
                if let (Begins::Started, Some((owner, expires))) = (row.begins, &lease) {
                    query = query.bind(1).bind(now).bind(owner.as_str()).bind(*expires);
                }
            }
            sqlx::Executor::execute(&mut **tx, query)
                .await
                .map_err(db_error)?;
        }
    }
    tasks
        .into_iter()
        .map(|row| {
            let (t, node) = (row.task, row.node);
            let run_at = t.run_at.map_or(created, micros);
            let status = match row.begins {
                Begins::Waiting => TaskStatus::Waiting,
                Begins::Started => TaskStatus::Running,
                Begins::Due if run_at > now => TaskStatus::Scheduled,
                Begins::Due => TaskStatus::Queued,
            };
            let mut task = inserted_task(t, status, instant(run_at)?, created_at);
            if row.begins == Begins::Started {
                task.attempts = 1;
                task.started_at = Some(instant(now)?);
            }
            task.workflow_id = Some(workflow_id);
            task.workflow_key = Some(node.key.clone());
            Ok(task)
        })
        .collect()
}

/// Writes deferred chunks of `workflows` as rows, `now` (microseconds), each task waiting for
/// its dependencies not yet satisfied: settled, and final in its favour. A dependency that
/// settles in this transaction is settled already (its completion or [`MARK`] set the flag),
/// so its deferred dependents count it here, not in the countdown.
///
/// For dependencies settling ([`Chunks::DependingOn`]) the first chunk of each workflow
/// holding one of their dependents is written and the others are released (`ready_at`), for
/// `release_ready` to write next: a large fan-out starts running after its first thousand tasks
/// are written, and the rest are written between its completions. SQLite's one writer keeps
/// the counts right. A chunk no settling reached before (not released) has no dependency
/// final but those settling now, all in its favour (or every chunk would be written), and
/// others that ended since but have not settled yet: its rows count those settling now
/// without reading the others', whose settling counts them down later.
///
/// The tasks written, and those of the chunks reached but left for later (released): none is a
/// row yet, and each will count what settles now when it is written, so the countdown passes
/// them by (a fan-out's root would count down its 9,000 deferred dependents in vain).
async fn write_deferred(
    tx: &mut Tx,
    workflows: &[String],
    chunks: Chunks<'_>,
    now: i64,
    start: Option<&mut Starter<'_>>,
) -> Result<(Vec<Task>, HashSet<Uuid>), StoreError> {
    let (taken, satisfied, left) = match chunks {
        Chunks::All => {
            let taken = sqlx::query_as(sql!(
                "DELETE FROM workflow_deferred
                 WHERE workflow_id IN (SELECT value FROM json_each(?1))
                 RETURNING {TAKEN}"
            ))
            .bind(json_array(workflows.to_vec()))
            .fetch_all(&mut **tx)
            .await
            .map_err(db_error)?;
            (taken, Satisfied::Read, HashSet::new())
        }
        Chunks::DependingOn(settling) => {
            let found: Vec<(String, i32, bool, String)> = sqlx::query_as(
                "SELECT workflow_id, seq, ready_at IS NULL, ids FROM workflow_deferred
                 WHERE workflow_id IN (SELECT value FROM json_each(?1))
                   AND EXISTS (SELECT 1 FROM json_each(workflow_deferred.parents) AS p
                               WHERE p.value IN (SELECT value FROM json_each(?2)))",
            )
            .bind(json_array(workflows.to_vec()))
            .bind(ids_json(settling))
            .fetch_all(&mut **tx)
            .await
            .map_err(db_error)?;
            if found.is_empty() {
                return Ok((Vec::new(), HashSet::new()));
            }
            let found = found
                .into_iter()
                .map(|(workflow, seq, fresh, ids)| Ok((workflow, seq, fresh, id_list(Some(&ids))?)))
                .collect::<Result<Vec<_>, StoreError>>()?;
            let reached = reached(found, settling);
            let pairs = |chunks: Vec<(String, i32)>| {
                let pairs: Vec<Value> = chunks.iter().map(|(w, seq)| json!([w, seq])).collect();
                Value::from(pairs).to_string()
            };
            if !reached.release.is_empty() {
                sqlx::query(
                    "UPDATE workflow_deferred SET ready_at = ?2
                     WHERE (workflow_id, seq) IN
                           (SELECT value ->> 0, value ->> 1 FROM json_each(?1))",
                )
                .bind(pairs(reached.release))
                .bind(now)
                .execute(&mut **tx)
                .await
                .map_err(db_error)?;
            }
            let taken = sqlx::query_as(sql!(
                "DELETE FROM workflow_deferred
                 WHERE (workflow_id, seq) IN (SELECT value ->> 0, value ->> 1 FROM json_each(?1))
                 RETURNING {TAKEN}"
            ))
            .bind(pairs(reached.take))
            .fetch_all(&mut **tx)
            .await
            .map_err(db_error)?;
            (taken, reached.satisfied, reached.left)
        }
    };
    Ok((write_taken(tx, taken, &satisfied, now, start).await?, left))
}

/// What a deferred chunk's `DELETE` returns: its workflow with that workflow's creation time
/// and policy (read here rather than by a statement of their own: one round trip to the writer
/// fewer per chunk), and its tasks.
const TAKEN: &str = "workflow_id,
     (SELECT created_at FROM workflows w WHERE w.id = workflow_deferred.workflow_id),
     (SELECT on_failure FROM workflows w WHERE w.id = workflow_deferred.workflow_id),
     packed, tasks";

/// A deferred chunk taken to be written ([`TAKEN`]): its workflow, that workflow's creation
/// time (microseconds) and policy (none if the workflow is gone), and its tasks (packed, or
/// JSON as stored before: see [`unpack`]).
type TakenChunk = (String, Option<i64>, Option<String>, Option<Vec<u8>>, String);

/// Writes the deferred chunks `taken` as rows (see [`write_deferred`]), written `now`, those
/// `start` takes started.
async fn write_taken(
    tx: &mut Tx,
    taken: Vec<TakenChunk>,
    known: &Satisfied<String>,
    now: i64,
    mut start: Option<&mut Starter<'_>>,
) -> Result<Vec<Task>, StoreError> {
    // Those of a workflow gone are dropped.
    let by_workflow = taken_by_workflow(taken.iter().filter_map(
        |(workflow, created, policy, packed, text)| {
            Some((
                workflow.clone(),
                (*created)?,
                policy.as_deref()?,
                packed.as_deref(),
                Some(text.as_str()),
            ))
        },
    ))?;
    let mut written = Vec::new();
    for (workflow, (created, policy, taken)) in by_workflow {
        let satisfied = known
            .or_read(&workflow, satisfied(tx, &taken.new, &taken.nodes, policy))
            .await?;
        let rows = Rows {
            waiting: taken.waiting(&satisfied),
            new: &taken.new,
            nodes: &taken.nodes,
            dependents: taken.dependents(),
            created,
        };
        written.extend(write_rows(tx, uuid(&workflow)?, rows, now, start.as_deref_mut()).await?);
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
    let settled: Vec<(String, String)> = sqlx::query_as(
        "SELECT id, status FROM tasks WHERE id IN (SELECT value FROM json_each(?1)) AND settled",
    )
    .bind(ids_json(&parents))
    .fetch_all(&mut **tx)
    .await
    .map_err(db_error)?;
    let mut satisfied = HashSet::new();
    for (id, status) in settled {
        if in_favour(TaskStatus::from_str(&status).map_err(corrupt)?, policy) {
            satisfied.insert(uuid(&id)?);
        }
    }
    Ok(satisfied)
}

/// What a workflow task's completion returns: id, status, whether it was settled before, its
/// workflow and dependents (a JSON array).
type CompletedRow = (String, String, bool, Option<String>, Option<String>);

/// Settles the tasks a completion in this transaction made final: their workflows' policies
/// read, then their outcomes applied along their dependents, as the completion returned them.
/// A success counts for its dependents whatever the policy, so a batch of successes only (a
/// fan-out's) does not read them: one round trip to the writer fewer per completion.
async fn settle_completed(
    tx: &mut Tx,
    ended: Vec<Ended<String>>,
    start: Option<&mut Starter<'_>>,
) -> Result<Settled, StoreError> {
    if ended.is_empty() {
        return Ok(Settled::default());
    }
    let touched: HashSet<String> = ended.iter().map(|e| e.workflow.clone()).collect();
    let policies = if ended.iter().all(|e| e.status == TaskStatus::Succeeded) {
        // Not read, and not needed: `in_favour` of a success under either.
        touched
            .into_iter()
            .map(|workflow| (workflow, OnFailure::CancelDependents))
            .collect()
    } else {
        policies_of(tx, touched).await?
    };
    let (outcomes, edges) = outcomes_of(ended, &policies);
    apply_edges(tx, &edges, &outcomes, policies.into_keys().collect(), start).await
}

/// The policies of the workflows `ids` (those that exist).
async fn policies_of(
    tx: &mut Tx,
    ids: HashSet<String>,
) -> Result<HashMap<String, OnFailure>, StoreError> {
    let read: Vec<(String, String)> = sqlx::query_as(
        "SELECT id, on_failure FROM workflows WHERE id IN (SELECT value FROM json_each(?1))",
    )
    .bind(json_array(ids.into_iter().collect::<Vec<_>>()))
    .fetch_all(&mut **tx)
    .await
    .map_err(db_error)?;
    read.into_iter()
        .map(|(id, policy)| Ok((id, OnFailure::from_str(&policy).map_err(corrupt)?)))
        .collect()
}

/// Marks the tasks `?1` settled that are not yet (a `RETURNING` clause follows).
const MARK: &str = "UPDATE tasks SET settled = 1
     WHERE id IN (SELECT value FROM json_each(?1)) AND NOT settled";

/// Settles the tasks `ids` that are final and not settled yet (made final outside a
/// completion: cancelled, dead after a rescue; or dependencies of tasks added to a running
/// workflow): marked settled, their outcomes applied to their dependents.
async fn settle(tx: &mut Tx, ids: &[Uuid]) -> Result<Settled, StoreError> {
    if ids.is_empty() {
        return Ok(Settled::default());
    }
    let parents: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT t.id, t.status, w.id, w.on_failure FROM tasks t
         JOIN workflows w ON w.id = t.workflow_id
         WHERE t.id IN (SELECT value FROM json_each(?1))
           AND t.status IN ('succeeded', 'dead', 'cancelled') AND NOT t.settled",
    )
    .bind(ids_json(ids))
    .fetch_all(&mut **tx)
    .await
    .map_err(db_error)?;
    if parents.is_empty() {
        return Ok(Settled::default());
    }
    let mut outcomes = HashMap::new();
    let mut touched: HashSet<String> = HashSet::new();
    for (id, status, workflow, policy) in parents {
        let status = TaskStatus::from_str(&status).map_err(corrupt)?;
        let policy = OnFailure::from_str(&policy).map_err(corrupt)?;
        outcomes.insert(uuid(&id)?, (status, policy));
        touched.insert(workflow);
    }
    let final_ids: Vec<Uuid> = outcomes.keys().copied().collect();
    let rows: Vec<(String, Option<String>)> =
        sqlx::query_as(sql!("{MARK} RETURNING id, dependents"))
            .bind(ids_json(&final_ids))
            .fetch_all(&mut **tx)
            .await
            .map_err(db_error)?;
    let mut edges: Vec<(Uuid, Uuid)> = Vec::new();
    for (parent, dependents) in rows {
        let parent = uuid(&parent)?;
        edges.extend(
            id_list(dependents.as_deref())?
                .into_iter()
                .map(|child| (child, parent)),
        );
    }
    apply_edges(tx, &edges, &outcomes, touched, None).await
}

/// Applies dependencies' outcomes along `edges` (`(dependent, dependency)`): deferred
/// dependents written as rows (every deferred task of the workflows when a failed one cancels
/// its dependents, which goes down their own), the cancelling of those a failed one cancels,
/// the countdown of the others; then finishes those of the workflows `touched` whose tasks are
/// all final (only those this settling did not just see a task of still open).
async fn apply_edges(
    tx: &mut Tx,
    edges: &[(Uuid, Uuid)],
    outcomes: &HashMap<Uuid, (TaskStatus, OnFailure)>,
    mut touched: HashSet<String>,
    start: Option<&mut Starter<'_>>,
) -> Result<Settled, StoreError> {
    let mut settled = Settled::default();
    let now = micros(Utc::now());
    let flows: Vec<String> = touched.iter().cloned().collect();
    let settling: Vec<Uuid> = outcomes.keys().copied().collect();
    let (written, left) = write_deferred(
        tx,
        &flows,
        Chunks::settling(outcomes, &settling),
        now,
        start,
    )
    .await?;
    settled.ready = !left.is_empty();
    let (mut counts, cancel) = apply(edges, outcomes);
    // Those written now counted what settles now already, and so will those left deferred.
    let written_ids: HashSet<Uuid> = written.iter().map(|t| t.id).collect();
    counts.retain(|child, _| !written_ids.contains(child) && !left.contains(child));
    // Cancelled first, so what the countdown returns is still open at the end.
    settled.cancelled = cancel_dependents(tx, cancel, now).await?;
    // A workflow with a task still waiting or just released has not finished.
    let mut open: HashSet<String> = HashSet::new();
    let cancelled: HashSet<Uuid> = settled.cancelled.iter().map(|t| t.id).collect();
    let mut counted: Vec<Task> = written
        .into_iter()
        .filter(|t| !cancelled.contains(&t.id))
        .collect();
    if !counts.is_empty() {
        let counts: Vec<Value> = counts
            .into_iter()
            .map(|(id, n)| json!([id_text(id), n]))
            .collect();
        let rows: Vec<TaskRow> = sqlx::query_as(sql!(
            "UPDATE tasks SET waiting_on = waiting_on - (c.value ->> 1),
                 status = CASE WHEN waiting_on - (c.value ->> 1) > 0 THEN 'waiting'
                               WHEN run_at > ?2 THEN 'scheduled' ELSE 'queued' END
             FROM json_each(?1) AS c
             WHERE tasks.id = c.value ->> 0 AND tasks.status = 'waiting'
             RETURNING {}",
            qualified(TASK_COLUMNS, "tasks")
        ))
        .bind(json_array(counts))
        .bind(now)
        .fetch_all(&mut **tx)
        .await
        .map_err(db_error)?;
        counted.extend(tasks(rows)?);
    }
    for task in counted {
        open.insert(id_text(task.workflow_id.unwrap_or_default()));
        match task.status {
            TaskStatus::Waiting => {}
            TaskStatus::Running => settled.started.push(task),
            _ => settled.released.push(task),
        }
    }
    touched.retain(|workflow| !open.contains(workflow));
    if touched.is_empty() {
        return Ok(settled);
    }
    let touched: Vec<String> = touched.into_iter().collect();
    // One pass over each workflow's tasks answers both questions (is one still open? did one
    // fail?), as in PostgreSQL: this runs when settling saw none open, so mostly on a finished
    // workflow, where a `NOT EXISTS` for an open task and an `EXISTS` for a failed one each
    // read every task (10,000: 7 ms of the join's phase in `bench workflows`).
    let rows: Vec<WorkflowRow> = sqlx::query_as(sql!(
        "UPDATE workflows SET
             status = CASE WHEN s.failed THEN 'failed' ELSE 'succeeded' END,
             finished_at = ?2
         FROM (SELECT workflow_id,
                      max(status NOT IN ('succeeded', 'dead', 'cancelled')) AS open,
                      max(status <> 'succeeded') AS failed
               FROM tasks WHERE workflow_id IN (SELECT value FROM json_each(?1))
               GROUP BY workflow_id) AS s
         WHERE workflows.id = s.workflow_id AND workflows.status = 'running' AND NOT s.open
           AND NOT EXISTS (SELECT 1 FROM workflow_deferred d WHERE d.workflow_id = workflows.id)
         RETURNING {}",
        qualified(WORKFLOW_COLUMNS, "workflows")
    ))
    .bind(json_array(touched))
    .bind(now)
    .fetch_all(&mut **tx)
    .await
    .map_err(db_error)?;
    settled.finished = workflows(rows)?;
    Ok(settled)
}

/// Cancels the dependents in `cancel`, `now` (microseconds), each with the dependency whose end
/// cancels it (`details.cancelled_by`: a retry of that one revives it), and their own
/// dependents.
async fn cancel_dependents(
    tx: &mut Tx,
    cancel: Vec<(Uuid, Uuid)>,
    now: i64,
) -> Result<Vec<Task>, StoreError> {
    if cancel.is_empty() {
        return Ok(Vec::new());
    }
    let seeds: Vec<Value> = cancel
        .into_iter()
        .map(|(child, cause)| json!([id_text(child), id_text(cause)]))
        .collect();
    let rows: Vec<TaskRow> = sqlx::query_as(sql!(
        "WITH RECURSIVE down(id, cause) AS (
             SELECT c.value ->> 0, c.value ->> 1 FROM json_each(?1) AS c
             UNION SELECT d.value, p.id FROM down JOIN tasks p ON p.id = down.id
             JOIN json_each(p.dependents) AS d)
         UPDATE tasks SET status = 'cancelled', finished_at = ?2,
             error = json_object('message', ?3, 'attempt', attempts,
                 'details', json_object('cancelled_by', d.cause))
         FROM (SELECT id, min(cause) AS cause FROM down GROUP BY id) AS d
         WHERE tasks.id = d.id AND tasks.status = 'waiting'
         RETURNING {}",
        qualified(TASK_COLUMNS, "tasks")
    ))
    .bind(json_array(seeds))
    .bind(now)
    .bind(CANCELLED_BY_DEPENDENCY)
    .fetch_all(&mut **tx)
    .await
    .map_err(db_error)?;
    tasks(rows)
}

#[cfg(test)]
mod tests {
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

    /// A database migrated as far as `0023`, with edges as rows, takes `0024`: each task's
    /// dependencies and dependents become its arrays, and a dependency counts as settled when
    /// all of its edges were.
    #[tokio::test]
    async fn edges_become_each_tasks_dependencies_and_dependents() {
        let dir = std::env::temp_dir().join(format!("mcp-adjacency-{}", uuid::Uuid::now_v7()));
        let before = dir.join("migrations");
        std::fs::create_dir_all(&before).unwrap();
        let all = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
        for entry in std::fs::read_dir(&all).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.as_str() < "0024" {
                std::fs::copy(&path, before.join(&name)).unwrap();
            }
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                SqliteConnectOptions::new()
                    .filename(dir.join("db.sqlite"))
                    .create_if_missing(true),
            )
            .await
            .unwrap();
        sqlx::migrate::Migrator::new(before.as_path())
            .await
            .unwrap()
            .run(&pool)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO tasks (id, type, queue, payload, status, max_attempts, backoff_base_ms,
                 backoff_max_ms, run_at, timeout_ms, created_at, workflow_id, workflow_key)
             SELECT value, 'noop', 'default', 'null', 'succeeded', 1, 1, 1, 0, 1, 0, 'w', value
             FROM json_each('[\"a\", \"b\", \"c\", \"d\"]')",
        )
        .execute(&pool)
        .await
        .unwrap();
        // a → b, a → c, b → d, c → d; d's edge from c is not settled yet.
        sqlx::query(
            "INSERT INTO workflow_edges (task_id, depends_on, settled)
             VALUES ('c', 'a', 1), ('b', 'a', 1), ('d', 'b', 1), ('d', 'c', 0)",
        )
        .execute(&pool)
        .await
        .unwrap();
        super::super::MIGRATOR.run(&pool).await.unwrap();
        let rows: Vec<(String, Option<String>, Option<String>, bool)> =
            sqlx::query_as("SELECT id, depends_on, dependents, settled FROM tasks ORDER BY id")
                .fetch_all(&pool)
                .await
                .unwrap();
        let list = |text: &Option<String>| -> Vec<String> {
            text.as_deref()
                .map_or_else(Vec::new, |t| serde_json::from_str(t).unwrap())
        };
        let rows: Vec<(String, Vec<String>, Vec<String>, bool)> = rows
            .iter()
            .map(|(id, up, down, settled)| (id.clone(), list(up), list(down), *settled))
            .collect();
        let strings = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            rows,
            vec![
                ("a".into(), vec![], strings(&["b", "c"]), true),
                ("b".into(), strings(&["a"]), strings(&["d"]), true),
                ("c".into(), strings(&["a"]), strings(&["d"]), false),
                ("d".into(), strings(&["b", "c"]), vec![], false),
            ]
        );
        let edges: Option<(String,)> =
            sqlx::query_as("SELECT name FROM sqlite_schema WHERE name = 'workflow_edges'")
                .fetch_optional(&pool)
                .await
                .unwrap();
        assert!(edges.is_none());
        pool.close().await;
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
