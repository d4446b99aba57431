//! Tasks for external workers: a second claim loop takes, per task type, as many tasks as the
//! workers connected to this node have free slots (and the route's breaker admits), hands each
//! to a worker through the balancer, and waits for its outcome under the same lease, timeout and
//! cancellation rules as an in-process handler. A worker that disconnects gives its tasks back at
//! once, without spending their attempts.
//!
//! Who may be a worker for what is decided here too: a worker never serves a type that has an
//! in-process handler (its tasks, with their payloads, belong to the hub's own handler), nor a
//! type its credential's `worker_types` does not cover. Registration refuses both; the claim
//! loop and the balancer check again, so a worker that got past registration still gets nothing
//! it is not entitled to.

use super::Orchestrator;
use super::worker::{Finished, StoreRetry};
use crate::HandlerError;
use crate::principal::Principal;
use crate::routing::Assignment;
use crate::store::{ClaimRequest, ShareLimit};
use crate::task::Task;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, warn};

/// How often the loop looks again while nothing signals it (breakers turn half-open by time).
const REMOTE_RECHECK: Duration = Duration::from_millis(500);

/// Why a worker may not register the types it asked for; each names every type at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkerRefusal {
    /// The hub runs these types itself: handing them to a worker would hand it other
    /// principals' tasks (and the credentials in their payloads).
    #[error("{} run in-process on this hub; external workers never serve them", list(.0))]
    InProcess(Vec<String>),
    /// The credential's `worker_types` does not cover these.
    #[error("this credential's `worker_types` does not cover {}", list(.0))]
    OutsideGrant(Vec<String>),
}

fn list(types: &[String]) -> String {
    types
        .iter()
        .map(|t| format!("`{t}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Orchestrator {
    /// Whether an external worker may ever serve `task_type` on this node: not while an
    /// in-process handler runs it.
    pub fn for_external_workers(&self, task_type: &str) -> bool {
        self.handlers.get(task_type).is_none()
    }

    /// Registers `principal` as an external worker serving `types` with `concurrency` slots,
    /// if it is entitled to every one of them; assignments arrive on the returned receiver.
    /// Call the balancer's `unregister` when it goes.
    pub fn register_worker(
        &self,
        principal: &Principal,
        types: Vec<String>,
        concurrency: usize,
    ) -> Result<(u64, mpsc::UnboundedReceiver<Assignment>), WorkerRefusal> {
        let in_process: Vec<String> = types
            .iter()
            .filter(|t| !self.for_external_workers(t))
            .cloned()
            .collect();
        if !in_process.is_empty() {
            return Err(WorkerRefusal::InProcess(in_process));
        }
        let outside: Vec<String> = types
            .iter()
            .filter(|t| !principal.may_serve(t))
            .cloned()
            .collect();
        if !outside.is_empty() {
            return Err(WorkerRefusal::OutsideGrant(outside));
        }
        Ok(self.balancer.register_granted(
            &principal.subject,
            principal.worker_types.clone(),
            types,
            concurrency,
        ))
    }

    pub(super) async fn remote_loop(
        self: Arc<Self>,
        done: mpsc::Sender<Finished>,
        stop: CancellationToken,
    ) {
        let changed = self.balancer.changed.clone();
        let mut retry = StoreRetry::new("claiming tasks for workers");
        loop {
            for change in self.balancer.poll_breakers() {
                self.emit_breaker(&change);
            }
            let mut free = self.balancer.free_slots();
            // In-process types are the claim loop's alone, whatever a worker registered.
            free.retain(|task_type, _| self.for_external_workers(task_type));
            // Switched off by a flag: they wait, queued, as behind an open breaker.
            free.retain(|task_type, _| !self.is_paused(task_type));
            let mut claimed_any = false;
            let mut failed = None;
            for (task_type, slots) in &free {
                let request = ClaimRequest {
                    owner: self.config.node_id.clone(),
                    types: vec![task_type.clone()],
                    limit: (*slots).min(self.config.batch_size) as u32,
                    lease: self.config.lease,
                    // External workers' tasks take the workers' slots, not this node's.
                    share: ShareLimit::default(),
                };
                let tasks = match self.store.claim(&request).await {
                    Ok(tasks) => {
                        retry.succeeded();
                        tasks
                    }
                    Err(e) => {
                        // The database is away: the other types would fail the same way.
                        failed = Some(retry.failed(&e));
                        break;
                    }
                };
                claimed_any |= !tasks.is_empty();
                let mut tasks = tasks;
                self.attach_parents(&mut tasks).await;
                for task in tasks {
                    let task = Arc::new(task);
                    match self.balancer.assign(task.clone()) {
                        Some((worker, outcome)) => {
                            let span = self.run_span(&task);
                            tokio::spawn(
                                self.clone()
                                    .run_remote(task, worker, outcome, done.clone())
                                    .instrument(span),
                            );
                        }
                        // The worker left between counting and assigning: give it back.
                        None => self.give_back(&task).await,
                    }
                }
            }
            if let Some(pause) = failed {
                tokio::select! {
                    _ = tokio::time::sleep(pause) => continue,
                    _ = stop.cancelled() => return,
                }
            }
            if claimed_any {
                continue;
            }
            let types: Vec<String> = free.into_keys().collect();
            tokio::select! {
                _ = changed.notified() => {}
                _ = async {
                    if types.is_empty() {
                        tokio::time::sleep(REMOTE_RECHECK).await
                    } else {
                        self.wait_for_work(&types, &stop).await
                    }
                } => {}
                _ = stop.cancelled() => return,
            }
            if stop.is_cancelled() {
                return;
            }
        }
    }

    async fn run_remote(
        self: Arc<Self>,
        task: Arc<Task>,
        worker: u64,
        outcome: oneshot::Receiver<Result<Value, HandlerError>>,
        done: mpsc::Sender<Finished>,
    ) {
        self.emit("task.started", task.clone());
        let token = CancellationToken::new();
        self.lock_running().insert(task.id, token.clone());
        let timeout = Duration::from_millis(task.timeout_ms);
        let result = tokio::select! {
            reply = tokio::time::timeout(timeout, outcome) => match reply {
                Ok(Ok(result)) => Some(result),
                // The worker disconnected: not the task's fault.
                Ok(Err(_)) => {
                    self.lock_running().remove(&task.id);
                    self.balancer.finished(worker, task.id);
                    self.give_back(&task).await;
                    return;
                }
                Err(_) => Some(Err(HandlerError::retryable(format!(
                    "timed out after {} ms", task.timeout_ms
                )))),
            },
            // Cancelled, lease lost or released on shutdown: already decided elsewhere.
            _ = token.cancelled() => None,
        };
        self.lock_running().remove(&task.id);
        self.balancer.finished(worker, task.id);
        self.flush_progress(task.id).await;
        let Some(result) = result else {
            return;
        };
        if let Some(change) = self.balancer.record(&task.task_type, result.is_ok()) {
            self.emit_breaker(&change);
        }
        self.finish(task, result, done).await;
    }

    /// Requeues a claimed task at once without counting the attempt.
    async fn give_back(&self, task: &Task) {
        if let Err(e) = self.store.release(&self.config.node_id, &[task.id]).await {
            warn!(error = %e, task_id = %task.id, "cannot release; the lease will expire");
        } else {
            self.wake.notify_one();
            self.announce_released(&[task.id]).await;
        }
    }
}
