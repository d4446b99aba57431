//! The queue service: pausing and resuming queues and setting rate limits per task type or per
//! queue, with the events that announce them (`queue.paused`, `queue.resumed`,
//! `queue.limit.set`, `queue.limit.removed` on `system.queues`). The stores enforce both where
//! tasks are claimed; this is the one path that changes them.
//!
//! Each store caches the pauses and limits its claim consults (`queues.rs`); `watch` keeps this
//! node's cache current with what other nodes change: a read every `poll` (≤ 1 s, so the bound
//! holds without a bus) and one at once on any event of `system.queues`, the nudge every change
//! publishes. A read that changed the cache wakes the claimers.

use crate::events::{Event, EventBus, Subscription};
use crate::orchestrator::Orchestrator;
use crate::queues::{FlowState, Limit, QueueLimit, QueueStore, TaskLimit};
use crate::store::StoreError;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// The channel of `queue.paused`, `queue.resumed` and `queue.limit.*` events.
pub const QUEUES_CHANNEL: &str = "system.queues";

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("{0}")]
    Invalid(String),
    #[error("no limit is set for task type `{0}`")]
    LimitNotFound(String),
    #[error("no limit is set for queue `{0}`")]
    QueueLimitNotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Store failures while polling, to log a long outage as a handful of lines.
static POLL_FAILURES: AtomicU64 = AtomicU64::new(0);

pub struct QueueService {
    store: Arc<dyn QueueStore>,
    orchestrator: Arc<Orchestrator>,
    events: Arc<dyn EventBus>,
}

impl QueueService {
    pub fn new(
        store: Arc<dyn QueueStore>,
        orchestrator: Arc<Orchestrator>,
        events: Arc<dyn EventBus>,
    ) -> Self {
        QueueService {
            store,
            orchestrator,
            events,
        }
    }

    /// Pauses a queue on every node: its tasks are accepted and stay queued. Idempotent; the
    /// event is published when the state changed.
    pub async fn pause(&self, queue: &str) -> Result<bool, QueueError> {
        check_queue(queue)?;
        let changed = self.store.pause_queue(queue).await?;
        if changed {
            self.announce("queue.paused", json!({"queue": queue, "paused": true}))
                .await;
        }
        Ok(changed)
    }

    /// Resumes a queue; the claimers of this node are woken (the store wakes the others').
    pub async fn resume(&self, queue: &str) -> Result<bool, QueueError> {
        check_queue(queue)?;
        let changed = self.store.resume_queue(queue).await?;
        if changed {
            self.orchestrator.nudge();
            self.announce("queue.resumed", json!({"queue": queue, "paused": false}))
                .await;
        }
        Ok(changed)
    }

    /// Pauses, limits and the tasks each queue's limits hold back now.
    pub async fn flow_state(&self) -> Result<FlowState, QueueError> {
        Ok(self.store.flow_state().await?)
    }

    pub async fn limits(&self) -> Result<Vec<TaskLimit>, QueueError> {
        Ok(self.store.task_limits().await?)
    }

    pub async fn limit(&self, task_type: &str) -> Result<TaskLimit, QueueError> {
        self.store
            .task_limits()
            .await?
            .into_iter()
            .find(|l| l.task_type == task_type)
            .ok_or_else(|| QueueError::LimitNotFound(task_type.to_owned()))
    }

    /// Sets the limit of a task type, cluster-wide.
    pub async fn put_limit(&self, limit: TaskLimit) -> Result<TaskLimit, QueueError> {
        limit.check().map_err(QueueError::Invalid)?;
        self.store.put_task_limit(&limit).await?;
        self.orchestrator.nudge();
        self.announce("queue.limit.set", json!(limit)).await;
        Ok(limit)
    }

    pub async fn delete_limit(&self, task_type: &str) -> Result<(), QueueError> {
        if !self.store.delete_task_limit(task_type).await? {
            return Err(QueueError::LimitNotFound(task_type.to_owned()));
        }
        self.orchestrator.nudge();
        self.announce("queue.limit.removed", json!({"type": task_type}))
            .await;
        Ok(())
    }

    pub async fn queue_limit(&self, queue: &str) -> Result<QueueLimit, QueueError> {
        self.store
            .queue_limits()
            .await?
            .into_iter()
            .find(|l| l.queue == queue)
            .ok_or_else(|| QueueError::QueueLimitNotFound(queue.to_owned()))
    }

    /// Sets the limit of a queue (every type in it together), cluster-wide.
    pub async fn put_queue_limit(&self, limit: QueueLimit) -> Result<QueueLimit, QueueError> {
        limit.check().map_err(QueueError::Invalid)?;
        self.store.put_queue_limit(&limit).await?;
        self.orchestrator.nudge();
        self.announce("queue.limit.set", json!(limit)).await;
        Ok(limit)
    }

    pub async fn delete_queue_limit(&self, queue: &str) -> Result<(), QueueError> {
        if !self.store.delete_queue_limit(queue).await? {
            return Err(QueueError::QueueLimitNotFound(queue.to_owned()));
        }
        self.orchestrator.nudge();
        self.announce("queue.limit.removed", json!({"queue": queue}))
            .await;
        Ok(())
    }

    /// Makes the stored limits those of the configuration's `[[task_limits]]` for the types and
    /// queues it names (limits set through the API for others stay).
    pub async fn apply_limits(&self, limits: &[Limit]) -> Result<(), QueueError> {
        for limit in limits {
            match limit {
                Limit::Type(limit) => {
                    limit.check().map_err(|e| {
                        QueueError::Invalid(format!("task_limits `{}`: {e}", limit.task_type))
                    })?;
                    self.store.put_task_limit(limit).await?;
                }
                Limit::Queue(limit) => {
                    limit.check().map_err(|e| {
                        QueueError::Invalid(format!("task_limits queue `{}`: {e}", limit.queue))
                    })?;
                    self.store.put_queue_limit(limit).await?;
                }
            }
        }
        Ok(())
    }

    /// Keeps this node's cached pauses and limits current until `stop`: a read every `poll`,
    /// and one at once on each event of `system.queues` or bus interruption. A read that
    /// changed the cache wakes the claimers (a queue resumed or a limit lifted elsewhere).
    pub async fn watch(self: Arc<Self>, poll: Duration, stop: CancellationToken) {
        let mut nudges = self.nudges().await;
        let mut tick = tokio::time::interval(poll.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let nudge = tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => None,
                nudge = next_nudge(&mut nudges) => Some(nudge),
            };
            match nudge {
                Some(Err(broadcast::error::RecvError::Closed)) => nudges = None,
                None if nudges.is_none() => nudges = self.nudges().await,
                _ => {}
            }
            match self.store.refresh_flow().await {
                Ok(changed) => {
                    POLL_FAILURES.store(0, Ordering::Relaxed);
                    if changed {
                        self.orchestrator.nudge();
                    }
                }
                Err(e) => {
                    let failures = POLL_FAILURES.fetch_add(1, Ordering::Relaxed) + 1;
                    if failures.is_power_of_two() {
                        tracing::warn!(error = %e, failures,
                            "cannot read paused queues and limits; the cache keeps what it has");
                    }
                }
            }
        }
    }

    async fn nudges(&self) -> Option<Subscription> {
        match self.events.subscribe(QUEUES_CHANNEL).await {
            Ok(subscription) => Some(subscription),
            Err(e) => {
                tracing::debug!(error = %e, "queue nudges unavailable; polling only");
                None
            }
        }
    }

    async fn announce(&self, event_type: &str, data: serde_json::Value) {
        let event = Arc::new(Event::new(event_type, data, None));
        if let Err(e) = self.events.publish(QUEUES_CHANNEL, event).await {
            tracing::warn!(error = %e, event = event_type, "cannot publish a queue change");
        }
    }
}

async fn next_nudge(nudges: &mut Option<Subscription>) -> Result<(), broadcast::error::RecvError> {
    match nudges {
        Some(subscription) => subscription.recv().await.map(|_| ()),
        None => std::future::pending().await,
    }
}

fn check_queue(queue: &str) -> Result<(), QueueError> {
    if queue.is_empty() || queue.len() > 200 {
        return Err(QueueError::Invalid(
            "a queue name is 1 to 200 characters".into(),
        ));
    }
    Ok(())
}
