//! The workflow model: a named DAG of tasks by key, created at once. A task whose dependencies
//! have not all settled is `waiting`; the store transaction that settles the last one makes it
//! `queued` (so no wake-up is lost between nodes), and hands it its parents' outcomes when it
//! runs. A dead or cancelled dependency cancels its dependents, transitively, unless the workflow
//! says `continue`. See `docs/workflows.md`.

use crate::task::{CreateTask, Task};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use utoipa::ToSchema;
use uuid::Uuid;

/// Most tasks in one workflow (created at once or added by its running tasks).
pub const MAX_WORKFLOW_TASKS: usize = 1_000;
/// The longest workflow name and task key, in bytes.
pub const MAX_WORKFLOW_NAME: usize = 255;

/// What a dead or cancelled dependency does to the tasks that depend on it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Its dependents (and theirs) are cancelled.
    #[default]
    CancelDependents,
    /// Its dependents run anyway; their `parents` show the failure.
    Continue,
}

impl OnFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            OnFailure::CancelDependents => "cancel_dependents",
            OnFailure::Continue => "continue",
        }
    }
}

impl std::str::FromStr for OnFailure {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cancel_dependents" => Ok(OnFailure::CancelDependents),
            "continue" => Ok(OnFailure::Continue),
            other => Err(format!("unknown on_failure `{other}`")),
        }
    }
}

/// Where a workflow is: `running` until every task is final, then `succeeded` (all succeeded),
/// `failed` (some task ended dead or cancelled) or `cancelled` (cancelled as a whole).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowStatus {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl WorkflowStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkflowStatus::Running => "running",
            WorkflowStatus::Succeeded => "succeeded",
            WorkflowStatus::Failed => "failed",
            WorkflowStatus::Cancelled => "cancelled",
        }
    }

    /// The event announcing that a workflow reached this status.
    pub fn event(self) -> &'static str {
        match self {
            WorkflowStatus::Running => "workflow.created",
            WorkflowStatus::Succeeded => "workflow.succeeded",
            WorkflowStatus::Failed => "workflow.failed",
            WorkflowStatus::Cancelled => "workflow.cancelled",
        }
    }
}

impl std::str::FromStr for WorkflowStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            WorkflowStatus::Running,
            WorkflowStatus::Succeeded,
            WorkflowStatus::Failed,
            WorkflowStatus::Cancelled,
        ]
        .into_iter()
        .find(|status| status.as_str() == s)
        .ok_or_else(|| format!("unknown workflow status `{s}`"))
    }
}

/// A workflow as stored (its tasks are read apart).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Workflow {
    pub id: Uuid,
    pub name: String,
    pub status: WorkflowStatus,
    pub on_failure: OnFailure,
    pub created_by: Option<String>,
    pub correlation_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// A workflow with every task's state, in creation order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkflowDetail {
    #[serde(flatten)]
    pub workflow: Workflow,
    pub tasks: Vec<Task>,
}

/// One task of a workflow request: the create body of a task, its key and the keys it waits
/// for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkflowTaskSpec {
    /// Unique within the workflow.
    pub key: String,
    #[serde(default)]
    pub depends_on: Vec<String>,
    #[serde(flatten)]
    pub task: CreateTask,
}

/// `POST /v1/workflows`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWorkflow {
    pub name: String,
    pub tasks: Vec<WorkflowTaskSpec>,
    #[serde(default)]
    pub on_failure: OnFailure,
}

/// Tasks a running workflow task adds to its own workflow: their `depends_on` may name the
/// workflow's existing keys as well as each other's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddWorkflowTasks {
    pub tasks: Vec<WorkflowTaskSpec>,
}

/// A workflow ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewWorkflow {
    pub id: Uuid,
    pub name: String,
    pub on_failure: OnFailure,
    pub created_by: Option<String>,
    pub share_key: Option<String>,
    pub correlation_id: Option<String>,
}

/// A task's place in its workflow, beside its `NewTask` (same order): its key and the ids of
/// the tasks it depends on.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowNode {
    pub key: String,
    pub depends_on: Vec<Uuid>,
}

/// What settling finished tasks of workflows changed, in the transaction that settled them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settled {
    /// The completions recorded (as `TaskStore::complete` returns them).
    pub changed: Vec<Uuid>,
    /// Waiting tasks made runnable.
    pub released: Vec<Task>,
    /// Waiting tasks made runnable and started at once for the node that settled them (see
    /// `TaskStore::release_ready`): `running`, leased to it, for it to run.
    pub started: Vec<Task>,
    /// Waiting tasks cancelled because a dependency failed.
    pub cancelled: Vec<Task>,
    /// Workflows that reached a final status.
    pub finished: Vec<Workflow>,
    /// Whether released dependents were left to write after the transaction (a store writing
    /// a large fan-out in pieces): `TaskStore::release_ready` writes them.
    pub ready: bool,
}

/// What retrying a task of a workflow changed, in one transaction: the task requeued (or why
/// not), the dependents its end had cancelled that wait again, and its workflow if it had
/// finished `failed` and runs again.
#[derive(Debug, Clone)]
pub struct Retried {
    pub outcome: crate::store::RetryOutcome,
    /// Tasks cancelled because of the retried one (directly or through each other) that are
    /// `waiting` again: none of their dependencies stays dead or cancelled.
    pub revived: Vec<Task>,
    /// The workflow, when the retry reopened it (`failed` → `running`).
    pub reopened: Option<Workflow>,
}

/// Filters and cursor for listing workflows, newest first.
#[derive(Debug, Clone, Default)]
pub struct WorkflowFilter {
    pub created_by: Option<String>,
    pub before: Option<Uuid>,
    pub limit: u32,
}

/// A refused workflow: the problem, named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidWorkflow(pub String);

/// Checks the shape of a workflow's tasks: at least one, at most `room`, keys present, unique
/// and short, every `depends_on` naming a key of `tasks` or of `existing`, no task naming itself
/// and no cycle. `room` is how many more tasks the workflow may take.
pub fn check_graph(
    tasks: &[WorkflowTaskSpec],
    existing: &HashSet<String>,
    room: usize,
) -> Result<(), InvalidWorkflow> {
    if tasks.is_empty() {
        return Err(InvalidWorkflow(
            "tasks: a workflow needs at least one task".into(),
        ));
    }
    if tasks.len() > room {
        return Err(InvalidWorkflow(format!(
            "tasks: a workflow holds at most {MAX_WORKFLOW_TASKS} tasks; this would have {}",
            tasks.len() + (MAX_WORKFLOW_TASKS - room)
        )));
    }
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, task) in tasks.iter().enumerate() {
        if task.key.trim().is_empty() {
            return Err(InvalidWorkflow(format!(
                "tasks[{i}].key: must not be empty"
            )));
        }
        if task.key.len() > MAX_WORKFLOW_NAME {
            return Err(InvalidWorkflow(format!(
                "tasks[{i}].key: must be at most {MAX_WORKFLOW_NAME} bytes"
            )));
        }
        if existing.contains(&task.key) || index.insert(task.key.as_str(), i).is_some() {
            return Err(InvalidWorkflow(format!(
                "tasks[{i}].key: duplicate key `{}`",
                task.key
            )));
        }
        if task.task.idempotency_key.is_some() {
            return Err(InvalidWorkflow(format!(
                "tasks[{i}].idempotency_key: not supported inside a workflow"
            )));
        }
    }
    for (i, task) in tasks.iter().enumerate() {
        let mut seen = HashSet::new();
        for dep in &task.depends_on {
            if dep == &task.key {
                return Err(InvalidWorkflow(format!(
                    "tasks[{i}].depends_on: `{dep}` depends on itself"
                )));
            }
            if !index.contains_key(dep.as_str()) && !existing.contains(dep) {
                return Err(InvalidWorkflow(format!(
                    "tasks[{i}].depends_on: unknown key `{dep}`"
                )));
            }
            if !seen.insert(dep) {
                return Err(InvalidWorkflow(format!(
                    "tasks[{i}].depends_on: `{dep}` is named twice"
                )));
            }
        }
    }
    // Kahn's algorithm over the new tasks (existing keys cannot depend on new ones).
    let mut indegree: Vec<usize> = tasks
        .iter()
        .map(|t| {
            t.depends_on
                .iter()
                .filter(|d| index.contains_key(d.as_str()))
                .count()
        })
        .collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); tasks.len()];
    for (i, task) in tasks.iter().enumerate() {
        for dep in &task.depends_on {
            if let Some(&j) = index.get(dep.as_str()) {
                dependents[j].push(i);
            }
        }
    }
    let mut ready: Vec<usize> = (0..tasks.len()).filter(|&i| indegree[i] == 0).collect();
    let mut done = 0;
    while let Some(i) = ready.pop() {
        done += 1;
        for &j in &dependents[i] {
            indegree[j] -= 1;
            if indegree[j] == 0 {
                ready.push(j);
            }
        }
    }
    if done < tasks.len() {
        let mut stuck: Vec<&str> = (0..tasks.len())
            .filter(|&i| indegree[i] > 0)
            .map(|i| tasks[i].key.as_str())
            .collect();
        stuck.sort_unstable();
        return Err(InvalidWorkflow(format!(
            "tasks: a cycle runs through {}",
            stuck
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(())
}

/// Checks a workflow's name.
pub fn check_name(name: &str) -> Result<(), InvalidWorkflow> {
    if name.trim().is_empty() {
        return Err(InvalidWorkflow("name: must not be empty".into()));
    }
    if name.len() > MAX_WORKFLOW_NAME {
        return Err(InvalidWorkflow(format!(
            "name: must be at most {MAX_WORKFLOW_NAME} bytes"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(key: &str, deps: &[&str]) -> WorkflowTaskSpec {
        WorkflowTaskSpec {
            key: key.into(),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            task: CreateTask {
                task_type: "noop".into(),
                ..Default::default()
            },
        }
    }

    fn refused(tasks: &[WorkflowTaskSpec]) -> String {
        check_graph(tasks, &HashSet::new(), MAX_WORKFLOW_TASKS)
            .unwrap_err()
            .0
    }

    #[test]
    fn accepts_a_diamond() {
        let tasks = [
            spec("build", &[]),
            spec("test", &["build"]),
            spec("lint", &["build"]),
            spec("deploy", &["test", "lint"]),
        ];
        assert!(check_graph(&tasks, &HashSet::new(), MAX_WORKFLOW_TASKS).is_ok());
    }

    #[test]
    fn names_each_problem() {
        assert!(refused(&[]).contains("at least one"));
        assert!(refused(&[spec("a", &[]), spec("a", &[])]).contains("duplicate key `a`"));
        assert!(refused(&[spec("a", &["b"])]).contains("unknown key `b`"));
        assert!(refused(&[spec("a", &["a"])]).contains("depends on itself"));
        let cycle = refused(&[
            spec("a", &["c"]),
            spec("b", &["a"]),
            spec("c", &["b"]),
            spec("d", &[]),
        ]);
        assert!(
            cycle.contains("cycle") && cycle.contains("`a`, `b`, `c`"),
            "{cycle}"
        );
        let many: Vec<_> = (0..=MAX_WORKFLOW_TASKS)
            .map(|i| spec(&i.to_string(), &[]))
            .collect();
        assert!(refused(&many).contains("at most 1000"));
    }

    #[test]
    fn added_tasks_may_depend_on_existing_keys_but_not_reuse_them() {
        let existing = HashSet::from(["build".to_owned()]);
        assert!(check_graph(&[spec("extra", &["build"])], &existing, 10).is_ok());
        assert!(check_graph(&[spec("build", &[])], &existing, 10).is_err());
    }
}
