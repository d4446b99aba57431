//! Tasks for external workers: a second claim loop takes, per task type, as many tasks as the
//! workers connected to this node have free slots (and the route's breaker admits), hands each
//! to a worker through the balancer, and waits for its outcome under the same lease, timeout and
//! cancellation rules as an in-process handler. A worker that disconnects gives its tasks back at
//! once, without spending their attempts.

use super::Orchestrator;
use super::worker::{Finished, StoreRetry};
use crate::HandlerError;
use crate::store::{ClaimRequest, ShareLimit};
use crate::task::Task;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// How often the loop looks again while nothing signals it (breakers turn half-open by time).
const REMOTE_RECHECK: Duration = Duration::from_millis(500);

impl Orchestrator {
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
            let free = self.balancer.free_slots();
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
                for task in tasks {
                    let task = Arc::new(task);
                    match self.balancer.assign(task.clone()) {
                        Some((worker, outcome)) => {
                            tokio::spawn(self.clone().run_remote(
                                task,
                                worker,
                                outcome,
                                done.clone(),
                            ));
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
