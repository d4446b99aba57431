//! The queue service: pausing and resuming queues and setting rate limits per task type, with
//! the events that announce them (`queue.paused`, `queue.resumed` on `system.queues`). The
//! stores enforce both where tasks are claimed; this is the one path that changes them.

use crate::events::{Event, EventBus};
use crate::orchestrator::Orchestrator;
use crate::queues::{QueueStore, TaskLimit};
use crate::store::StoreError;
use serde_json::json;
use std::sync::Arc;

/// The channel of `queue.paused`, `queue.resumed` and `queue.limit.*` events.
pub const QUEUES_CHANNEL: &str = "system.queues";

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("{0}")]
    Invalid(String),
    #[error("no limit is set for task type `{0}`")]
    LimitNotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The flow-control state `GET /v1/queues` shows beside the counts.
#[derive(Debug, Clone, Default)]
pub struct FlowState {
    pub paused: Vec<String>,
    pub limits: Vec<TaskLimit>,
}

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

    pub async fn flow_state(&self) -> Result<FlowState, QueueError> {
        Ok(FlowState {
            paused: self.store.paused_queues().await?,
            limits: self.store.task_limits().await?,
        })
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

    /// Makes the stored limits those of the configuration's `[[task_limits]]` for the types it
    /// names (limits set through the API for other types stay).
    pub async fn apply_limits(&self, limits: &[TaskLimit]) -> Result<(), QueueError> {
        for limit in limits {
            limit.check().map_err(|e| {
                QueueError::Invalid(format!("task_limits `{}`: {e}", limit.task_type))
            })?;
            self.store.put_task_limit(limit).await?;
        }
        Ok(())
    }

    async fn announce(&self, event_type: &str, data: serde_json::Value) {
        let event = Arc::new(Event::new(event_type, data, None));
        if let Err(e) = self.events.publish(QUEUES_CHANNEL, event).await {
            tracing::warn!(error = %e, event = event_type, "cannot publish a queue change");
        }
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
