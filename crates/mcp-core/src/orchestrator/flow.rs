//! The orchestrator's side of workflows and progress: inserting a workflow, handing a workflow
//! task its parents' outcomes, announcing what settling a dependency changed (tasks released or
//! cancelled, workflows finished), cancelling a workflow, and progress reports, stored and
//! published at most [`PROGRESS_INTERVAL`] apart per task (the latest is never lost: a report
//! inside the interval is written when it ends).

use super::{Orchestrator, OrchestratorError};
use crate::events::Event;
use crate::handler::TaskReporter;
use crate::store::StoreError;
use crate::task::{NewTask, Progress, Task};
use crate::workflow::{NewWorkflow, Retried, Settled, Workflow, WorkflowNode};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::warn;
use uuid::Uuid;

/// The shortest time between two progress reports of one task that are stored and published:
/// at most 10 a second.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
/// The channel of every workflow's events; each workflow also has `workflow:{id}`.
pub const WORKFLOWS: &str = "workflows";

/// Per task: when its progress was last written, and the report waiting for the interval to end.
#[derive(Default)]
pub(super) struct ProgressThrottle {
    tasks: Mutex<HashMap<Uuid, Throttled>>,
}

struct Throttled {
    last: Instant,
    /// A report that came within the interval; written when it ends (by the task that holds it).
    pending: Option<Progress>,
    /// Held while a report is written and published, and while a held one is taken for it: the
    /// writes of one task's reports (direct, at the interval's end, the flush at the end of the
    /// attempt) go out one at a time, in the order they were reported. Without it a flush could
    /// store and publish 1.0 while an earlier 0.99 was still on its way, and 0.99 came last.
    writer: Arc<tokio::sync::Mutex<()>>,
}

impl Orchestrator {
    /// Stores a workflow and its tasks, then announces them and wakes the claim loop. The tasks
    /// are those the announcer was handed: a caller that needs its own copies makes them.
    pub async fn insert_workflow(
        &self,
        workflow: &NewWorkflow,
        tasks: &[NewTask],
        nodes: &[WorkflowNode],
    ) -> Result<(Workflow, Vec<Arc<Task>>), OrchestratorError> {
        let (stored, created) = self.store.insert_workflow(workflow, tasks, nodes).await?;
        self.emit_workflow(&stored);
        // Announced before the claim loop is woken (a task's `task.created` comes before its
        // `task.started`), shared with the announcer rather than copied: a large workflow's
        // tasks were copied one by one before its first task could start (10,000: 7–12 ms).
        let created: Vec<Arc<Task>> = created.into_iter().map(Arc::new).collect();
        for task in &created {
            self.emit("task.created", task.clone());
        }
        self.wake.notify_one();
        Ok((stored, created))
    }

    /// Adds tasks to a running workflow; `None` when it is not running.
    pub async fn extend_workflow(
        &self,
        workflow_id: Uuid,
        tasks: &[NewTask],
        nodes: &[WorkflowNode],
    ) -> Result<Option<Vec<Task>>, OrchestratorError> {
        let Some(settled) = self
            .store
            .extend_workflow(workflow_id, tasks, nodes)
            .await?
        else {
            return Ok(None);
        };
        let ids: std::collections::HashSet<Uuid> = tasks.iter().map(|t| t.id).collect();
        let created = self
            .store
            .get_workflow(workflow_id)
            .await?
            .map(|detail| {
                detail
                    .tasks
                    .into_iter()
                    .filter(|t| ids.contains(&t.id))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        for task in &created {
            self.emit("task.created", task.clone());
        }
        self.announce_settled(settled);
        self.wake.notify_one();
        Ok(Some(created))
    }

    /// Cancels what has not finished of a workflow; `None` when there is none.
    pub async fn cancel_workflow(
        &self,
        id: Uuid,
    ) -> Result<Option<(Workflow, usize)>, OrchestratorError> {
        let Some((workflow, cancelled)) = self.store.cancel_workflow(id).await? else {
            return Ok(None);
        };
        let count = cancelled.len();
        for (task, was_running) in cancelled {
            if was_running && let Some(token) = self.lock_running().get(&task.id) {
                token.cancel();
            }
            self.emit("task.cancelled", task);
        }
        if count > 0 {
            self.emit_workflow(&workflow);
        }
        Ok(Some((workflow, count)))
    }

    /// Fills `parents` of the claimed workflow tasks that have dependencies, for external
    /// workers (`task.assign` carries them; in-process handlers read them when they ask, see
    /// `TaskContext::parents`). A task whose parents cannot be read runs without them (logged).
    pub(super) async fn attach_parents(&self, tasks: &mut [Task]) {
        let ids: Vec<Uuid> = tasks
            .iter()
            .filter(|t| t.workflow_id.is_some())
            .map(|t| t.id)
            .collect();
        if ids.is_empty() {
            return;
        }
        match self.store.parents(&ids).await {
            Ok(mut parents) => {
                for task in tasks.iter_mut() {
                    if let Some(p) = parents.remove(&task.id) {
                        task.parents = Some(p);
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot read the parents of workflow tasks"),
        }
    }

    /// Settles the dependents of workflow tasks that became final outside a completion (cancel,
    /// rescue), and announces what changed. A failure is logged: the maintenance loop settles
    /// again.
    pub(super) async fn settle(&self, ids: Vec<Uuid>) {
        if ids.is_empty() {
            return;
        }
        match self.store.settle_workflow_tasks(&ids).await {
            Ok(settled) => self.announce_settled(settled),
            Err(e) => warn!(error = %e, "cannot settle the dependents of workflow tasks"),
        }
    }

    /// Announces dependents released or cancelled and workflows finished; wakes the claim loop
    /// for released ones (the store woke the other nodes).
    pub(super) fn announce_settled(&self, settled: Settled) {
        let released = !settled.released.is_empty();
        for task in settled.released {
            self.emit("task.queued", task);
        }
        for task in settled.cancelled {
            self.emit("task.cancelled", task);
        }
        for workflow in &settled.finished {
            self.emit_workflow(workflow);
        }
        if released {
            self.wake.notify_one();
        }
        if settled.ready {
            self.releases.notify_one();
        }
    }

    /// Announces what a retry revived: dependents waiting again (`task.waiting`) and the
    /// workflow running again (`workflow.reopened`).
    pub(super) fn announce_revived(&self, retried: &Retried) {
        for task in &retried.revived {
            self.emit("task.waiting", task.clone());
        }
        if let Some(workflow) = &retried.reopened {
            self.emit_workflow_as("workflow.reopened", workflow);
        }
    }

    /// Publishes `workflow.{status}` (`created` while running) on `workflow:{id}` and
    /// `workflows`.
    pub(super) fn emit_workflow(&self, workflow: &Workflow) {
        self.emit_workflow_as(workflow.status.event(), workflow);
    }

    /// Publishes `event` about `workflow` on `workflow:{id}` and `workflows`.
    fn emit_workflow_as(&self, event: &'static str, workflow: &Workflow) {
        let data = serde_json::to_value(workflow).unwrap_or_default();
        let event = Arc::new(Event::new(event, data, workflow.correlation_id.clone()));
        let bus = self.announcer.bus().clone();
        let channel = format!("workflow:{}", workflow.id);
        tokio::spawn(async move {
            for channel in [channel.as_str(), WORKFLOWS] {
                if let Err(e) = bus.publish(channel, event.clone()).await {
                    warn!(error = %e, channel, "cannot publish a workflow event");
                }
            }
        });
    }

    /// Records a progress report of a running task: stored and published as `task.progress` on
    /// `task:{id}` at once unless one was within [`PROGRESS_INTERVAL`]; then it is the one
    /// written when the interval ends (a later report replaces it). `false`: the task is not
    /// running (anywhere).
    pub async fn report_progress(
        self: &Arc<Self>,
        id: Uuid,
        progress: Progress,
    ) -> Result<bool, StoreError> {
        // `None`: write it now; `Some(timer)`: held, and the first report held starts the timer
        // that writes the latest when the interval ends.
        let (held, writer) = {
            let mut tasks = self
                .progress
                .tasks
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            match tasks.get_mut(&id) {
                Some(entry) if now.duration_since(entry.last) < PROGRESS_INTERVAL => {
                    let first = entry.pending.is_none();
                    entry.pending = Some(progress.clone());
                    let timer = first.then(|| PROGRESS_INTERVAL - now.duration_since(entry.last));
                    (Some(timer), entry.writer.clone())
                }
                // The interval is over: this report is written now, and one held before it is
                // dropped (it is older).
                Some(entry) => {
                    entry.last = now;
                    entry.pending = None;
                    (None, entry.writer.clone())
                }
                None => {
                    let writer = Arc::new(tokio::sync::Mutex::new(()));
                    tasks.insert(
                        id,
                        Throttled {
                            last: now,
                            pending: None,
                            writer: writer.clone(),
                        },
                    );
                    (None, writer)
                }
            }
        };
        if let Some(timer) = held {
            let Some(wait) = timer else {
                return Ok(true);
            };
            let this = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                let _writing = writer.lock().await;
                let latest = {
                    let mut tasks = this
                        .progress
                        .tasks
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    tasks.get_mut(&id).and_then(|entry| {
                        entry.last = Instant::now();
                        entry.pending.take()
                    })
                };
                if let Some(latest) = latest
                    && let Err(e) = this.write_progress(id, &latest).await
                {
                    warn!(error = %e, task_id = %id, "cannot store a task's progress");
                }
            });
            return Ok(true);
        }
        let _writing = writer.lock().await;
        self.write_progress(id, &progress).await
    }

    async fn write_progress(&self, id: Uuid, progress: &Progress) -> Result<bool, StoreError> {
        if !self.store.set_progress(id, progress).await? {
            self.forget_progress(id);
            return Ok(false);
        }
        let data = serde_json::json!({
            "task_id": id,
            "progress": progress.progress,
            "message": progress.message,
            "at": progress.at,
        });
        let event = Arc::new(Event::new("task.progress", data, None));
        if let Err(e) = self.events().publish(&format!("task:{id}"), event).await {
            warn!(error = %e, task_id = %id, "cannot publish a task's progress");
        }
        Ok(true)
    }

    /// Drops a task's throttle.
    fn forget_progress(&self, id: Uuid) {
        let mut tasks = self
            .progress
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        tasks.remove(&id);
    }

    /// At the end of an attempt, before its outcome is recorded: writes the report still held
    /// back by the throttle, so the last one reported is the one stored, and drops the throttle.
    pub(super) async fn flush_progress(&self, id: Uuid) {
        let held = {
            let mut tasks = self
                .progress
                .tasks
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            tasks.remove(&id)
        };
        let Some(Throttled {
            pending: Some(latest),
            writer,
            ..
        }) = held
        else {
            return;
        };
        // After any write still on its way: this report is the latest.
        let _writing = writer.lock().await;
        if let Err(e) = self.write_progress(id, &latest).await {
            warn!(error = %e, task_id = %id, "cannot store a task's progress");
        }
    }
}

/// What a handler's context reports through (`TaskContext::progress`).
pub(super) struct Reporter {
    pub orchestrator: Arc<Orchestrator>,
}

#[async_trait::async_trait]
impl TaskReporter for Reporter {
    async fn progress(&self, id: Uuid, progress: Progress) -> Result<bool, String> {
        self.orchestrator
            .report_progress(id, progress)
            .await
            .map_err(|e| e.to_string())
    }

    async fn parents(&self, id: Uuid) -> Option<serde_json::Value> {
        match self.orchestrator.store.parents(&[id]).await {
            Ok(mut parents) => parents.remove(&id),
            Err(e) => {
                warn!(error = %e, task_id = %id, "cannot read the parents of a workflow task");
                None
            }
        }
    }

    async fn add_tasks(
        &self,
        parent: Arc<Task>,
        tasks: Vec<crate::workflow::WorkflowTaskSpec>,
    ) -> Result<Vec<Task>, String> {
        let Some(children) = self.orchestrator.children.get() else {
            return Err("this node adds no workflow tasks (no workflow service)".into());
        };
        children.add_children(&parent, tasks).await
    }
}

impl Orchestrator {
    /// Lets running handlers add tasks to their workflow through `children` (set once, when
    /// the node is wired).
    pub fn serve_children(&self, children: Arc<dyn crate::handler::WorkflowChildren>) {
        let _ = self.children.set(children);
    }
}
