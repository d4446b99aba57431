//! Workflows on SQLite: a workflow and its tasks inserted in one transaction (those with
//! dependencies deferred, as JSON chunks), and settling (deferred dependents written as rows,
//! dependents released or cancelled, workflows finished) in the transaction that made their
//! dependencies final. The one writer connection orders every settling, so no lock is needed.

use super::SqliteTaskStore;
use super::task_row::{TaskRow, tasks};
use super::tasks::{
    INSERT_CHUNKS, Insert, bind_new_task, chunk_index, complete_sql, completion_batch,
    insert_chunks, insert_values_sql,
};
use crate::codec::{id_text, ids_json, instant, json_array, micros, uuid};
use crate::columns::{TASK_COLUMNS, WORKFLOW_COLUMNS, qualified};
use crate::error::{corrupt, db_error};
use crate::outbox::Transition;
use crate::tasks::inserted_task;
use crate::workflows::{
    CANCELLED_BY_DEPENDENCY, Chunks, DeferredTask, Satisfied, Split, apply, chunk_columns, chunked,
    group_parents, in_favour, in_order, may_retry, outside_dependencies, pack, parent_view,
    reached, revivable, revives, runnable, split, still_waiting, unpack,
};
use chrono::Utc;
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
use std::sync::LazyLock;
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
            write_deferred(&mut tx, holders, Chunks::All, micros(Utc::now())).await?;
        tx.commit().await.map_err(db_error)?;
        self.released.hand_over(runnable(written));
        Ok(())
    }

    pub(super) async fn release_ready_tx(&self) -> Result<Option<Settled>, StoreError> {
        let mut tx = self.writer.begin().await.map_err(db_error)?;
        // The oldest chunk released and not written.
        let taken: Vec<TakenChunk> = sqlx::query_as(
            "DELETE FROM workflow_deferred WHERE (workflow_id, seq) = (
                 SELECT workflow_id, seq FROM workflow_deferred WHERE ready_at IS NOT NULL
                 ORDER BY ready_at, workflow_id, seq LIMIT 1)
             RETURNING workflow_id, packed, tasks",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        if taken.is_empty() {
            tx.rollback().await.map_err(db_error)?;
            return Ok(None);
        }
        let released =
            runnable(write_taken(&mut tx, taken, &Satisfied::Read, micros(Utc::now())).await?);
        tx.commit().await.map_err(db_error)?;
        Ok(Some(Settled {
            released,
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
            sqlx::query_as("SELECT id FROM workflows WHERE id = ?1 AND status = 'running'")
                .bind(id_text(workflow_id))
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_error)?;
        if running.is_none() {
            return Ok(None);
        }
        let at = Utc::now();
        // The new tasks' dependencies are rows, whose edges to them are written.
        let (written, _) =
            write_deferred(&mut tx, &[id_text(workflow_id)], Chunks::All, micros(at)).await?;
        let created = insert_tasks(&mut tx, workflow_id, new, nodes, at).await?;
        // Dependencies that are final already settle the new edges now.
        let parents: Vec<Uuid> = nodes.iter().flat_map(|n| n.depends_on.clone()).collect();
        let mut settled = settle(&mut tx, &parents).await?;
        // Released dependents left to write after their settling that this wrote first.
        settled.released.extend(runnable(written));
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
    ) -> Result<Settled, StoreError> {
        if completions.is_empty() {
            return Ok(Settled::default());
        }
        let batch = completion_batch(completions)?;
        let mut tx = self.writer.begin().await.map_err(db_error)?;
        // As `complete`, then settled in the same transaction: its final tasks, with the
        // status and workflow it returns, so settling does not look them up again.
        let changed: Vec<(String, String, Option<String>)> = sqlx::query_as(complete_sql!(
            "RETURNING tasks.id, tasks.status, tasks.workflow_id"
        ))
        .bind(batch)
        .bind(micros(Utc::now()))
        .bind(owner)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        let mut ids = Vec::with_capacity(changed.len());
        let mut ended = Vec::new();
        for (id, status, workflow) in changed {
            let id = uuid(&id)?;
            let status = TaskStatus::from_str(&status).map_err(corrupt)?;
            if let (true, Some(workflow)) = (status.is_final(), workflow) {
                ended.push((id, status, workflow));
            }
            ids.push(id);
        }
        let mut settled = settle_completed(&mut tx, ended).await?;
        self.commit_recording(tx, &ids, Transition::Settled).await?;
        settled.changed = ids;
        Ok(settled)
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
        write_deferred(&mut tx, &[id_text(id)], Chunks::All, now).await?;
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
                write_deferred(&mut tx, &[workflow], Chunks::All, micros(Utc::now())).await?;
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
        )
        .await?;
        released.extend(runnable(written));
        let dependencies: Vec<(String,)> = sqlx::query_as(
            "SELECT p.status FROM workflow_edges e JOIN tasks p ON p.id = e.depends_on
             WHERE e.task_id = ?1",
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
                     SELECT e.task_id FROM workflow_edges e JOIN tasks t ON t.id = e.task_id
                     WHERE e.depends_on = ?1 AND t.status = 'cancelled'
                       AND json_extract(t.error, '$.details.cancelled_by') IS NOT NULL
                     UNION SELECT e.task_id FROM workflow_edges e JOIN down ON e.depends_on = down.id
                     JOIN tasks t ON t.id = e.task_id
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
                "SELECT e.task_id, e.depends_on, p.status
                 FROM workflow_edges e JOIN tasks p ON p.id = e.depends_on
                 WHERE e.task_id IN (SELECT value FROM json_each(?1))",
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
        // now; the retried one is unsettled again for its dependents.
        let mut waiting: Vec<Uuid> = revived.clone();
        waiting.push(id);
        sqlx::query(
            "UPDATE workflow_edges SET settled = (workflow_edges.depends_on <> ?2
                 AND (p.status = 'succeeded' OR (?3 AND p.status IN ('dead', 'cancelled'))))
             FROM tasks p
             WHERE p.id = workflow_edges.depends_on
               AND workflow_edges.task_id IN (SELECT value FROM json_each(?1))",
        )
        .bind(ids_json(&waiting))
        .bind(id_text(id))
        .bind(policy == OnFailure::Continue)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        let now = micros(Utc::now());
        let row: TaskRow = sqlx::query_as(sql!(
            "UPDATE tasks SET waiting_on = c.n,
                 status = CASE WHEN c.n > 0 THEN 'waiting' ELSE 'queued' END,
                 run_at = ?2, finished_at = NULL,
                 max_attempts = max(max_attempts, attempts + 1)
             FROM (SELECT count(*) AS n FROM workflow_edges
                   WHERE task_id = ?1 AND settled = 0) AS c
             WHERE tasks.id = ?1
             RETURNING {}",
            qualified(TASK_COLUMNS, "tasks")
        ))
        .bind(id_text(id))
        .bind(now)
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
                     finished_at = NULL, error = NULL
                 FROM (SELECT task_id, sum(settled = 0) AS n FROM workflow_edges
                       WHERE task_id IN (SELECT value FROM json_each(?1))
                       GROUP BY task_id) AS c
                 WHERE tasks.id = c.task_id AND tasks.status = 'cancelled'
                 RETURNING {}",
                qualified(TASK_COLUMNS, "tasks")
            ))
            .bind(ids_json(&revived))
            .bind(now)
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
            "SELECT json_group_array(e.task_id), p.workflow_key, p.status, p.result, p.error
                 FROM workflow_edges e JOIN tasks p ON p.id = e.depends_on
                 WHERE e.task_id IN (SELECT value FROM json_each(?1))
                 GROUP BY e.depends_on",
        )
        .bind(ids_json(ids))
        .fetch_all(&self.readers)
        .await
        .map_err(db_error)?;
        let rows = rows
            .into_iter()
            .map(|(dependents, key, status, result, error)| {
                let dependents: Vec<String> = serde_json::from_str(&dependents).map_err(corrupt)?;
                let dependents = dependents
                    .iter()
                    .map(|id| uuid(id))
                    .collect::<Result<Vec<_>, _>>()?;
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

/// The `INSERT` of `rows` edges (`(task_id, depends_on, settled)`), in chunks as tasks are.
fn edges_values_sql(rows: usize) -> &'static str {
    static STATEMENTS: LazyLock<Vec<String>> = LazyLock::new(|| {
        INSERT_CHUNKS
            .iter()
            .map(|&rows| {
                format!(
                    "INSERT INTO workflow_edges (task_id, depends_on, settled) VALUES {}",
                    vec!["(?,?,?)"; rows].join(",")
                )
            })
            .collect()
    });
    &STATEMENTS[chunk_index(rows)]
}

/// Inserts workflow tasks as rows with their edges: a task with dependencies waits on all of
/// them.
async fn insert_tasks(
    tx: &mut Tx,
    workflow_id: Uuid,
    new: &[NewTask],
    nodes: &[WorkflowNode],
    at: chrono::DateTime<Utc>,
) -> Result<Vec<Task>, StoreError> {
    let now = micros(at);
    write_rows(tx, workflow_id, new, nodes, &HashSet::new(), (now, now)).await
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
    // Edges are rows of their own here: a task's dependents are not kept on it.
    let no_dependents = HashMap::new();
    let Split {
        roots,
        root_nodes,
        deferred,
        shown,
    } = split(workflow_id, new, nodes, &no_dependents, instant(now)?);
    let written = write_rows(
        tx,
        workflow_id,
        &roots,
        &root_nodes,
        &HashSet::new(),
        (now, now),
    )
    .await?;
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

/// Writes workflow tasks as rows with their edges, created at `created` and written `now`
/// (microseconds): each waits for its dependencies not `satisfied`, whose edges are settled
/// already. The tasks as written, in input order.
async fn write_rows(
    tx: &mut Tx,
    workflow_id: Uuid,
    new: &[NewTask],
    nodes: &[WorkflowNode],
    satisfied: &HashSet<Uuid>,
    (created, now): (i64, i64),
) -> Result<Vec<Task>, StoreError> {
    let workflow = id_text(workflow_id);
    let tasks: Vec<(&NewTask, &WorkflowNode, i64)> = new
        .iter()
        .zip(nodes)
        .map(|(t, node)| {
            (
                t,
                node,
                i64::from(still_waiting(&node.depends_on, satisfied)),
            )
        })
        .collect();
    for chunk in insert_chunks(&tasks) {
        let mut query = sqlx::query_as::<_, (String,)>(sqlx::AssertSqlSafe(insert_values_sql(
            chunk.len(),
            Insert::Workflow,
        )));
        for (t, node, waiting_on) in chunk {
            query = bind_new_task(query, t, (created, now), *waiting_on > 0)?
                .bind(workflow.as_str())
                .bind(node.key.as_str())
                .bind(*waiting_on);
        }
        sqlx::Executor::execute(&mut **tx, query)
            .await
            .map_err(db_error)?;
    }
    let edges: Vec<(String, String, bool)> = tasks
        .iter()
        .flat_map(|(t, node, _)| {
            node.depends_on
                .iter()
                .map(move |d| (id_text(t.id), id_text(*d), satisfied.contains(d)))
        })
        .collect();
    for chunk in insert_chunks(&edges) {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(edges_values_sql(chunk.len())));
        for (task, dependency, settled) in chunk {
            query = query
                .bind(task.as_str())
                .bind(dependency.as_str())
                .bind(*settled);
        }
        sqlx::Executor::execute(&mut **tx, query)
            .await
            .map_err(db_error)?;
    }
    let created_at = instant(created)?;
    tasks
        .into_iter()
        .map(|(t, node, waiting_on)| {
            let run_at = t.run_at.map_or(created, micros);
            let status = if waiting_on > 0 {
                TaskStatus::Waiting
            } else if run_at > now {
                TaskStatus::Scheduled
            } else {
                TaskStatus::Queued
            };
            let mut task = inserted_task(t, status, instant(run_at)?, created_at);
            task.workflow_id = Some(workflow_id);
            task.workflow_key = Some(node.key.clone());
            Ok(task)
        })
        .collect()
}

/// Writes deferred chunks of `workflows` as rows, `now` (microseconds), each task waiting for
/// its dependencies not yet satisfied: final in its favour. An edge to a satisfied one is
/// written settled, so settling that dependency (now, or later for one cancelled by hand)
/// passes it by; an edge to a failed one is not, so its settling cancels the task.
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
/// The tasks written, and whether chunks were released for later.
async fn write_deferred(
    tx: &mut Tx,
    workflows: &[String],
    chunks: Chunks<'_>,
    now: i64,
) -> Result<(Vec<Task>, bool), StoreError> {
    let (taken, satisfied, released) = match chunks {
        Chunks::All => {
            let taken = sqlx::query_as(
                "DELETE FROM workflow_deferred
                 WHERE workflow_id IN (SELECT value FROM json_each(?1))
                 RETURNING workflow_id, packed, tasks",
            )
            .bind(json_array(workflows.to_vec()))
            .fetch_all(&mut **tx)
            .await
            .map_err(db_error)?;
            (taken, Satisfied::Read, false)
        }
        Chunks::DependingOn(settling) => {
            let hit: Vec<(String, i32, bool)> = sqlx::query_as(
                "SELECT workflow_id, seq, ready_at IS NULL FROM workflow_deferred
                 WHERE workflow_id IN (SELECT value FROM json_each(?1))
                   AND EXISTS (SELECT 1 FROM json_each(workflow_deferred.parents) AS p
                               WHERE p.value IN (SELECT value FROM json_each(?2)))",
            )
            .bind(json_array(workflows.to_vec()))
            .bind(ids_json(settling))
            .fetch_all(&mut **tx)
            .await
            .map_err(db_error)?;
            if hit.is_empty() {
                return Ok((Vec::new(), false));
            }
            let reached = reached(&hit, settling);
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
            let taken = sqlx::query_as(
                "DELETE FROM workflow_deferred
                 WHERE (workflow_id, seq) IN (SELECT value ->> 0, value ->> 1 FROM json_each(?1))
                 RETURNING workflow_id, packed, tasks",
            )
            .bind(pairs(reached.take))
            .fetch_all(&mut **tx)
            .await
            .map_err(db_error)?;
            (taken, reached.satisfied, reached.left)
        }
    };
    Ok((write_taken(tx, taken, &satisfied, now).await?, released))
}

/// A deferred chunk taken to be written: its workflow and its tasks (packed, or JSON as stored
/// before: see [`unpack`]).
type TakenChunk = (String, Option<Vec<u8>>, String);

/// Writes the deferred chunks `taken` as rows (see [`write_deferred`]), written `now`.
async fn write_taken(
    tx: &mut Tx,
    taken: Vec<TakenChunk>,
    known: &Satisfied<String>,
    now: i64,
) -> Result<Vec<Task>, StoreError> {
    if taken.is_empty() {
        return Ok(Vec::new());
    }
    let mut by_workflow: BTreeMap<String, Vec<DeferredTask>> = BTreeMap::new();
    for (workflow, packed, text) in taken {
        let chunk = unpack(packed.as_deref(), Some(&text))?;
        by_workflow.entry(workflow).or_default().extend(chunk);
    }
    let flows: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT id, created_at, on_failure FROM workflows
         WHERE id IN (SELECT value FROM json_each(?1))",
    )
    .bind(json_array(by_workflow.keys().cloned().collect::<Vec<_>>()))
    .fetch_all(&mut **tx)
    .await
    .map_err(db_error)?;
    let mut written = Vec::new();
    for (workflow, created, policy) in flows {
        let Some(deferred) = by_workflow.remove(&workflow) else {
            continue;
        };
        let policy = OnFailure::from_str(&policy).map_err(corrupt)?;
        let (new, nodes): (Vec<NewTask>, Vec<WorkflowNode>) = deferred
            .into_iter()
            .map(|task| {
                let (task, node, _) = task.into_parts();
                (task, node)
            })
            .unzip();
        let satisfied = known
            .or_read(&workflow, satisfied(tx, &new, &nodes, policy))
            .await?;
        let workflow_id = uuid(&workflow)?;
        written
            .extend(write_rows(tx, workflow_id, &new, &nodes, &satisfied, (created, now)).await?);
    }
    Ok(written)
}

/// Of the dependencies of `new` (at their places `nodes`), those satisfied: final in their
/// dependents' favour under `policy`. One written with them is not.
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
    let ended: Vec<(String, String)> = sqlx::query_as(
        "SELECT id, status FROM tasks WHERE id IN (SELECT value FROM json_each(?1))
           AND status IN ('succeeded', 'dead', 'cancelled')",
    )
    .bind(ids_json(&parents))
    .fetch_all(&mut **tx)
    .await
    .map_err(db_error)?;
    let mut satisfied = HashSet::new();
    for (id, status) in ended {
        if in_favour(TaskStatus::from_str(&status).map_err(corrupt)?, policy) {
            satisfied.insert(uuid(&id)?);
        }
    }
    Ok(satisfied)
}

/// Settles the tasks a completion in this transaction made final, given as `(id, status,
/// workflow)`: their workflows' policies read, then [`apply_outcomes`].
async fn settle_completed(
    tx: &mut Tx,
    ended: Vec<(Uuid, TaskStatus, String)>,
) -> Result<Settled, StoreError> {
    if ended.is_empty() {
        return Ok(Settled::default());
    }
    let touched: HashSet<String> = ended.iter().map(|(_, _, w)| w.clone()).collect();
    let policies: Vec<(String, String)> = sqlx::query_as(
        "SELECT id, on_failure FROM workflows WHERE id IN (SELECT value FROM json_each(?1))",
    )
    .bind(json_array(touched.iter().cloned().collect::<Vec<_>>()))
    .fetch_all(&mut **tx)
    .await
    .map_err(db_error)?;
    let policies: HashMap<String, OnFailure> = policies
        .into_iter()
        .map(|(id, policy)| Ok((id, OnFailure::from_str(&policy).map_err(corrupt)?)))
        .collect::<Result<_, StoreError>>()?;
    let outcomes = ended
        .into_iter()
        .filter_map(|(id, status, workflow)| {
            policies
                .get(&workflow)
                .map(|policy| (id, (status, *policy)))
        })
        .collect();
    apply_outcomes(tx, outcomes, touched).await
}

/// Applies the final status of the tasks `ids` (those that are final and in a workflow): their
/// statuses and workflows' policies read, then [`apply_outcomes`].
async fn settle(tx: &mut Tx, ids: &[Uuid]) -> Result<Settled, StoreError> {
    if ids.is_empty() {
        return Ok(Settled::default());
    }
    let parents: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT t.id, t.status, w.on_failure, w.id FROM tasks t
         JOIN workflows w ON w.id = t.workflow_id
         WHERE t.id IN (SELECT value FROM json_each(?1))
           AND t.status IN ('succeeded', 'dead', 'cancelled')",
    )
    .bind(ids_json(ids))
    .fetch_all(&mut **tx)
    .await
    .map_err(db_error)?;
    let mut outcomes = HashMap::new();
    let mut touched: HashSet<String> = HashSet::new();
    for (id, status, policy, workflow) in parents {
        let status = TaskStatus::from_str(&status).map_err(corrupt)?;
        let policy = OnFailure::from_str(&policy).map_err(corrupt)?;
        outcomes.insert(uuid(&id)?, (status, policy));
        touched.insert(workflow);
    }
    apply_outcomes(tx, outcomes, touched).await
}

/// Applies the final status of dependencies (`outcomes`: each one's status and its workflow's
/// policy) to their dependents whose edge has not settled yet: released when none is left to
/// wait for, cancelled with their own dependents when a failed one says so; then finishes the
/// workflows `touched` whose tasks are all final (only those this settling did not just see a
/// task of still open).
async fn apply_outcomes(
    tx: &mut Tx,
    outcomes: HashMap<Uuid, (TaskStatus, OnFailure)>,
    mut touched: HashSet<String>,
) -> Result<Settled, StoreError> {
    let mut settled = Settled::default();
    if outcomes.is_empty() {
        return Ok(settled);
    }
    let final_ids: Vec<Uuid> = outcomes.keys().copied().collect();
    let now = micros(Utc::now());
    // Deferred dependents first, counting what settles now: their edges to it are written
    // settled when it counts in their favour, so the update below passes them by.
    let flows: Vec<String> = touched.iter().cloned().collect();
    let (written, ready) =
        write_deferred(tx, &flows, Chunks::settling(&outcomes, &final_ids), now).await?;
    settled.ready = ready;
    let edges: Vec<(String, String)> = sqlx::query_as(
        "UPDATE workflow_edges SET settled = 1
         WHERE depends_on IN (SELECT value FROM json_each(?1)) AND settled = 0
         RETURNING task_id, depends_on",
    )
    .bind(ids_json(&final_ids))
    .fetch_all(&mut **tx)
    .await
    .map_err(db_error)?;
    let edges = edges
        .into_iter()
        .map(|(child, parent)| Ok((uuid(&child)?, uuid(&parent)?)))
        .collect::<Result<Vec<_>, StoreError>>()?;
    let (counts, cancel) = apply(&edges, &outcomes);
    // Cancelled first, so what the countdown returns is still open at the end.
    if !cancel.is_empty() {
        // Each with the dependency whose end cancels it (`details.cancelled_by`): a retry of
        // that one revives it.
        let seeds: Vec<Value> = cancel
            .into_iter()
            .map(|(child, cause)| json!([id_text(child), id_text(cause)]))
            .collect();
        let rows: Vec<TaskRow> = sqlx::query_as(sql!(
            "WITH RECURSIVE down(id, cause) AS (
                 SELECT c.value ->> 0, c.value ->> 1 FROM json_each(?1) AS c
                 UNION SELECT e.task_id, e.depends_on
                 FROM workflow_edges e JOIN down ON e.depends_on = down.id)
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
        settled.cancelled = tasks(rows)?;
    }
    // A workflow with a task still waiting or just released has not finished.
    let mut open: HashSet<String> = HashSet::new();
    let cancelled: HashSet<Uuid> = settled.cancelled.iter().map(|t| t.id).collect();
    for task in written.into_iter().filter(|t| !cancelled.contains(&t.id)) {
        open.insert(id_text(task.workflow_id.unwrap_or_default()));
        if task.status != TaskStatus::Waiting {
            settled.released.push(task);
        }
    }
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
        for task in tasks(rows)? {
            if let Some(workflow) = task.workflow_id {
                open.insert(id_text(workflow));
            }
            if task.status != TaskStatus::Waiting {
                settled.released.push(task);
            }
        }
    }
    touched.retain(|workflow| !open.contains(workflow));
    if touched.is_empty() {
        return Ok(settled);
    }
    let touched: Vec<String> = touched.into_iter().collect();
    let rows: Vec<WorkflowRow> = sqlx::query_as(sql!(
        "UPDATE workflows SET
             status = CASE WHEN EXISTS (SELECT 1 FROM tasks t WHERE t.workflow_id = workflows.id
                                        AND t.status <> 'succeeded')
                      THEN 'failed' ELSE 'succeeded' END,
             finished_at = ?2
         WHERE id IN (SELECT value FROM json_each(?1)) AND status = 'running'
           AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.workflow_id = workflows.id
                           AND t.status NOT IN ('succeeded', 'dead', 'cancelled'))
           AND NOT EXISTS (SELECT 1 FROM workflow_deferred d WHERE d.workflow_id = workflows.id)
         RETURNING {WORKFLOW_COLUMNS}"
    ))
    .bind(json_array(touched))
    .bind(now)
    .fetch_all(&mut **tx)
    .await
    .map_err(db_error)?;
    settled.finished = workflows(rows)?;
    Ok(settled)
}
