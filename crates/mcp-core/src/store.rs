//! The `TaskStore` port: everything the orchestrator and the API need from durable storage.
//! `mcp-persistence` implements it for SQLite and PostgreSQL; both pass one conformance suite.
//!
//! Every state transition is one statement or one transaction, so a crash between two calls
//! never leaves a task half-moved.

use crate::task::{NewTask, Progress, Task, TaskError, TaskStatus};
use crate::workflow::{
    NewWorkflow, Retried, Settled, Workflow, WorkflowDetail, WorkflowFilter, WorkflowNode,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Database(String),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    /// A unique value (username, key prefix) is already taken.
    #[error("already exists: {0}")]
    Conflict(String),
}

/// The result of inserting one task.
#[derive(Debug, Clone)]
pub struct Inserted {
    pub task: Task,
    /// `false` when a task with the same idempotency key already existed and is returned instead.
    pub created: bool,
}

/// Filters and cursor for listing tasks, newest first.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub status: Option<TaskStatus>,
    pub task_type: Option<String>,
    pub queue: Option<String>,
    /// Only tasks created by this subject.
    pub created_by: Option<String>,
    /// Only tasks older than this id (the previous page's last id).
    pub before: Option<Uuid>,
    pub limit: u32,
}

/// Which tasks a node wants to run now.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    /// The node that will hold the leases.
    pub owner: String,
    /// Only these task types (the ones this node has handlers for).
    pub types: Vec<String>,
    pub limit: u32,
    pub lease: Duration,
    /// The cap on tasks per share key on this node (fair sharing between tenants).
    pub share: ShareLimit,
}

/// What lets a settling start the released dependents it writes as rows for the node that
/// settles them, instead of queueing them for a claim (`TaskStore::release_ready`).
pub struct StartRequest<'a> {
    /// The claim that node would make now: which tasks it runs, for whom, with what lease. Its
    /// `limit` is the most one settling starts.
    pub claim: ClaimRequest,
    /// Takes one of the node's free slots for a task about to start; `false` when none is
    /// left. Slots are taken as tasks are chosen, so a settling that starts none takes none.
    pub slot: &'a (dyn Fn() -> bool + Send + Sync),
}

impl std::fmt::Debug for StartRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartRequest")
            .field("claim", &self.claim)
            .finish_non_exhaustive()
    }
}

/// Fair sharing between tenants: most tasks of one share key (a `user` or `service` creator)
/// running at once on the claiming node, and how many each runs there now. A claim never starts
/// a task whose key would then run more than `cap` here; tasks without a share key (operators,
/// admins, the hub itself) are not counted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShareLimit {
    /// 0: no cap.
    pub cap: u32,
    /// Tasks of each share key the claiming node runs now (keys with none may be left out).
    pub running: HashMap<String, u32>,
}

impl ShareLimit {
    /// The share keys already at their cap: a claim skips their tasks in SQL, so they never
    /// fill a claim's window ahead of everyone else's.
    pub fn saturated(&self) -> Vec<String> {
        if self.cap == 0 {
            return Vec::new();
        }
        let mut keys: Vec<String> = self
            .running
            .iter()
            .filter(|(_, n)| **n >= self.cap)
            .map(|(k, _)| k.clone())
            .collect();
        keys.sort_unstable();
        keys
    }

    /// Whether any `limit` tasks a claim may take, skipping the saturated keys, keep every key
    /// within its cap: then a claim needs no per-key admission (the stores' fast path).
    pub fn fits(&self, limit: u32) -> bool {
        if self.cap == 0 {
            return true;
        }
        let busiest = self
            .running
            .values()
            .copied()
            .filter(|n| *n < self.cap)
            .max()
            .unwrap_or(0);
        limit <= self.cap - busiest
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Succeeded(Value),
    /// Failed with attempts left: runs again at `retry_at`.
    Retry {
        error: TaskError,
        retry_at: DateTime<Utc>,
    },
    /// Failed for good.
    Dead(TaskError),
    /// A remote service asked to be called again later (a 429 with `Retry-After`): `scheduled`
    /// again for `retry_at`, and the attempt does not count.
    Deferred {
        error: TaskError,
        retry_at: DateTime<Utc>,
    },
}

impl Outcome {
    pub fn status(&self) -> TaskStatus {
        match self {
            Outcome::Succeeded(_) => TaskStatus::Succeeded,
            Outcome::Retry { .. } => TaskStatus::Failed,
            Outcome::Dead(_) => TaskStatus::Dead,
            Outcome::Deferred { .. } => TaskStatus::Scheduled,
        }
    }
}

/// One finished attempt to record.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub id: Uuid,
    pub outcome: Outcome,
}

#[derive(Debug, Clone)]
pub enum CancelOutcome {
    NotFound,
    /// Already succeeded, dead or cancelled: nothing changed.
    AlreadyFinal(Task),
    /// Now cancelled. `was_running` says a handler may still be running and must be signalled.
    Cancelled {
        task: Task,
        was_running: bool,
    },
}

#[derive(Debug, Clone)]
pub enum RetryOutcome {
    NotFound,
    /// Only `failed` and `dead` tasks can be retried by hand.
    NotRetryable(Task),
    Requeued(Task),
}

/// Counts of tasks per queue and status.
pub type TaskCounts = HashMap<(String, TaskStatus), u64>;

#[async_trait]
pub trait TaskStore: Send + Sync + 'static {
    /// Inserts tasks in order. A task whose idempotency key exists already is not inserted; the
    /// existing task is returned with `created: false`.
    async fn insert(&self, tasks: &[NewTask]) -> Result<Vec<Inserted>, StoreError>;

    async fn get(&self, id: Uuid) -> Result<Option<Task>, StoreError>;

    async fn list(&self, filter: &TaskFilter) -> Result<Vec<Task>, StoreError>;

    /// Atomically moves up to `limit` runnable tasks (queued, or scheduled/failed whose `run_at`
    /// passed; highest priority, then earliest `run_at`, then oldest) to `running` under a lease,
    /// increments their attempts and returns them. Never starts more tasks sharing a
    /// `concurrency_key` than its `concurrency_limit`, counting those running on any node, nor
    /// more tasks of one share key than `share` allows this node. Tasks of a saturated share key
    /// are skipped by the query itself, so they never hold back the tasks behind them; a claim
    /// may return fewer than `limit` when one key reaches its cap within it.
    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<Task>, StoreError>;

    /// Records finished attempts. Only tasks still `running` under `owner`'s lease change (a task
    /// cancelled or rescued meanwhile is left alone); returns the ids of the tasks that changed.
    /// (Ids only: the caller holds the tasks already, and a batch is the hottest write there is.)
    async fn complete(
        &self,
        owner: &str,
        completions: &[Completion],
    ) -> Result<Vec<Uuid>, StoreError>;

    /// Extends the leases of `ids` held by `owner`; returns the ids still held.
    async fn heartbeat(
        &self,
        owner: &str,
        ids: &[Uuid],
        lease: Duration,
    ) -> Result<Vec<Uuid>, StoreError>;

    /// Gives back running tasks without counting the attempt (graceful shutdown).
    async fn release(&self, owner: &str, ids: &[Uuid]) -> Result<u64, StoreError>;

    async fn cancel(&self, id: Uuid) -> Result<CancelOutcome, StoreError>;

    /// Requeues a failed or dead task now, granting it one more attempt if it had none left.
    async fn retry(&self, id: Uuid) -> Result<RetryOutcome, StoreError>;

    /// Requeues running tasks whose lease expired (their node died); a task with no attempts
    /// left becomes `dead`. Returns the tasks rescued.
    async fn rescue(&self) -> Result<Vec<Task>, StoreError>;

    /// Deletes finished tasks that finished before `before`; returns how many.
    async fn prune(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;

    /// The earliest `run_at` among tasks waiting for their time (scheduled or failed), so the
    /// orchestrator can sleep exactly until then.
    async fn next_run_at(&self, types: &[String]) -> Result<Option<DateTime<Utc>>, StoreError>;

    async fn counts(&self) -> Result<TaskCounts, StoreError>;

    /// Per minute of `[since, until)` (whole minutes), the tasks that finished by outcome and
    /// their pickup latency percentiles, cluster-wide (`crate::stats`); minutes with nothing in
    /// them are left out. The default refuses, for stores (test doubles) without statistics.
    async fn minute_stats(
        &self,
        _since: DateTime<Utc>,
        _until: DateTime<Utc>,
    ) -> Result<Vec<crate::stats::MinuteStats>, StoreError> {
        Err(StoreError::Database(
            "this store keeps no statistics".into(),
        ))
    }

    /// How many tasks are not finished yet (scheduled, queued, running or failed-and-waiting).
    /// Cheap: it reads only the partial indexes of unfinished tasks.
    async fn pending(&self) -> Result<u64, StoreError>;

    /// Cheap reachability check for readiness probes.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Starts forwarding "new tasks" signals from other processes (PostgreSQL LISTEN) to `wake`.
    /// Stores with a single process (SQLite) need do nothing: the orchestrator wakes itself.
    async fn watch(&self, wake: Arc<Notify>) -> Result<(), StoreError>;

    // Workflows (`workflow.rs`). The defaults refuse, for stores (test doubles) without them.

    /// Inserts a workflow and its tasks in one transaction: `nodes[i]` places `tasks[i]` in it.
    /// A task with dependencies is `waiting`, counting the dependencies not yet settled.
    async fn insert_workflow(
        &self,
        _workflow: &NewWorkflow,
        _tasks: &[NewTask],
        _nodes: &[WorkflowNode],
    ) -> Result<(Workflow, Vec<Task>), StoreError> {
        Err(no_workflows())
    }

    /// Adds tasks to a running workflow (a running task's children), in one transaction;
    /// `None` when the workflow is not running any more. Dependencies already settled count as
    /// such (and one that failed under `cancel_dependents` cancels the new task at once).
    async fn extend_workflow(
        &self,
        _workflow_id: Uuid,
        _tasks: &[NewTask],
        _nodes: &[WorkflowNode],
    ) -> Result<Option<Settled>, StoreError> {
        Err(no_workflows())
    }

    /// A workflow with its tasks in creation order.
    async fn get_workflow(&self, _id: Uuid) -> Result<Option<WorkflowDetail>, StoreError> {
        Err(no_workflows())
    }

    /// Workflows newest first.
    async fn list_workflows(&self, _filter: &WorkflowFilter) -> Result<Vec<Workflow>, StoreError> {
        Err(no_workflows())
    }

    /// `complete` for tasks of workflows, and in the same transaction what their outcomes mean
    /// for the rest: dependents whose last dependency settled become `queued` (a successful
    /// dependency, or a failed one under `continue`), those of a dead one under
    /// `cancel_dependents` are cancelled transitively, and workflows whose tasks are all final
    /// finish. Other nodes' claim loops are woken.
    ///
    /// With `start`, dependents written as rows here that the completing node's claim would
    /// take start at once for it, as far as it has slots free, instead of being queued
    /// (`Settled::started`; see [`release_ready`]).
    ///
    /// [`release_ready`]: TaskStore::release_ready
    async fn complete_workflow(
        &self,
        _owner: &str,
        _completions: &[Completion],
        _start: Option<&StartRequest<'_>>,
    ) -> Result<Settled, StoreError> {
        Err(no_workflows())
    }

    /// Settles the dependents of workflow tasks that became final outside `complete_workflow`
    /// (cancelled one by one, dead after a rescue). Idempotent.
    async fn settle_workflow_tasks(&self, _ids: &[Uuid]) -> Result<Settled, StoreError> {
        Err(no_workflows())
    }

    /// `retry`, and for a task of a workflow more: a `failed` or `dead` one, or a `cancelled`
    /// one none of whose dependencies ended dead or cancelled (under `cancel_dependents`), goes
    /// back to `queued` (`waiting` while dependencies are unsettled). In the same transaction
    /// the dependents its end cancelled (and theirs) wait again, unless another dependency of
    /// theirs stays dead or cancelled, and a `failed` workflow runs again. In a cancelled
    /// workflow only the task itself is retried, as `retry` does. The default (stores without
    /// workflows) is `retry`.
    async fn retry_workflow_task(&self, id: Uuid) -> Result<Retried, StoreError> {
        Ok(Retried {
            outcome: self.retry(id).await?,
            revived: Vec::new(),
            reopened: None,
        })
    }

    /// Cancels every unfinished task of a workflow and the workflow itself, in one transaction.
    /// `None` when there is no such workflow; the tasks returned were cancelled by this call,
    /// with whether each was running.
    async fn cancel_workflow(
        &self,
        _id: Uuid,
    ) -> Result<Option<(Workflow, Vec<(Task, bool)>)>, StoreError> {
        Err(no_workflows())
    }

    /// The outcomes of the dependencies of each task in `ids`, by key:
    /// `{"build": {"status": "succeeded", "result": …}}` (or `"error"` for a failed one).
    async fn parents(&self, _ids: &[Uuid]) -> Result<HashMap<Uuid, Value>, StoreError> {
        Err(no_workflows())
    }

    /// Writes one piece of the dependents that settling released and left to write after its
    /// transaction (see `Settled::ready`), from any node: the tasks it made runnable as
    /// `released`. `None` when none is left. Stores that write them at once have none.
    ///
    /// With `start`, those of them this node's claim would take are written `running`, leased
    /// to it, and returned as `started` instead, as long as it has slots free: the node runs
    /// them without claiming them, as Temporal's eager activity dispatch does. Only tasks no
    /// flow control concerns qualify: due now, of one of the claim's types, in no paused or
    /// limited queue, of no limited type, without a concurrency key, and without a share key
    /// while the claim caps shares.
    async fn release_ready(
        &self,
        _start: Option<&StartRequest<'_>>,
    ) -> Result<Option<Settled>, StoreError> {
        Ok(None)
    }

    /// Where the store hands tasks that a read made runnable as it wrote them (it reached
    /// released dependents before `release_ready` did): the orchestrator announces them.
    fn on_released(&self, _hook: ReleaseHook) {}

    /// Stores the latest progress of a running task; `false` when it is not running.
    async fn set_progress(&self, _id: Uuid, _progress: &Progress) -> Result<bool, StoreError> {
        Err(no_workflows())
    }
}

/// Takes tasks a store made runnable outside the calls that return them (see
/// `TaskStore::on_released`).
pub type ReleaseHook = Arc<dyn Fn(Vec<Task>) + Send + Sync>;

fn no_workflows() -> StoreError {
    StoreError::Database("this store keeps no workflows".into())
}

/// Given claim candidates (in claim order), how many tasks run per concurrency key (anywhere)
/// and the share limit (this node), picks the ones that may start. Shared by the stores so both
/// apply the same rule.
pub fn admit(
    candidates: &[Candidate],
    running: &HashMap<String, i64>,
    share: &ShareLimit,
) -> Vec<Uuid> {
    let mut started: HashMap<&str, i64> = HashMap::new();
    let mut shared: HashMap<&str, u32> = HashMap::new();
    candidates
        .iter()
        .filter(|c| match (&c.share_key, share.cap) {
            (Some(key), cap) if cap > 0 => {
                let now = share.running.get(key).copied().unwrap_or(0);
                let extra = shared.entry(key.as_str()).or_insert(0);
                // Counted before the concurrency key decides: a task refused here and admitted
                // there would be counted against a slot it does not take, which only errs on
                // the side of the cap.
                if now + *extra < cap {
                    *extra += 1;
                    true
                } else {
                    false
                }
            }
            _ => true,
        })
        .filter(|c| match &c.concurrency_key {
            None => true,
            Some(key) => {
                let limit = i64::from(c.concurrency_limit.unwrap_or(1));
                let now = running.get(key).copied().unwrap_or(0);
                let extra = started.entry(key.as_str()).or_insert(0);
                if now + *extra < limit {
                    *extra += 1;
                    true
                } else {
                    false
                }
            }
        })
        .map(|c| c.id)
        .collect()
}

/// A runnable task considered by a claim.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: Uuid,
    pub concurrency_key: Option<String>,
    pub concurrency_limit: Option<i32>,
    pub share_key: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(key: Option<&str>, limit: i32) -> Candidate {
        Candidate {
            id: Uuid::now_v7(),
            concurrency_key: key.map(str::to_owned),
            concurrency_limit: key.map(|_| limit),
            share_key: None,
        }
    }

    fn shared(owner: &str) -> Candidate {
        Candidate {
            share_key: Some(owner.to_owned()),
            ..candidate(None, 0)
        }
    }

    #[test]
    fn admits_up_to_the_limit_per_key() {
        let cands = vec![
            candidate(Some("a"), 2),
            candidate(None, 0),
            candidate(Some("a"), 2),
            candidate(Some("a"), 2),
            candidate(Some("b"), 1),
        ];
        let running = HashMap::from([("b".to_owned(), 1)]);
        let admitted = admit(&cands, &running, &ShareLimit::default());
        assert_eq!(admitted, vec![cands[0].id, cands[1].id, cands[2].id]);
    }

    #[test]
    fn admits_a_share_key_up_to_its_cap_on_this_node() {
        let cands = vec![
            shared("alice"),
            shared("alice"),
            shared("bob"),
            shared("alice"),
            candidate(None, 0),
        ];
        let share = ShareLimit {
            cap: 2,
            running: HashMap::from([("alice".to_owned(), 1)]),
        };
        let admitted = admit(&cands, &HashMap::new(), &share);
        assert_eq!(admitted, vec![cands[0].id, cands[2].id, cands[4].id]);
        // No cap: everything.
        assert_eq!(
            admit(&cands, &HashMap::new(), &ShareLimit::default()).len(),
            5
        );
    }

    #[test]
    fn saturated_keys_and_the_fast_path_bound() {
        let share = ShareLimit {
            cap: 4,
            running: HashMap::from([("a".to_owned(), 4), ("b".to_owned(), 1)]),
        };
        assert_eq!(share.saturated(), vec!["a".to_owned()]);
        // b may take 3 more: a claim of 3 cannot overshoot, a claim of 4 could.
        assert!(share.fits(3));
        assert!(!share.fits(4));
        assert!(ShareLimit::default().fits(u32::MAX));
        assert!(ShareLimit::default().saturated().is_empty());
    }
}
