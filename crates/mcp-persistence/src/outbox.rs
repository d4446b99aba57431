//! What both task stores share to keep the webhook outbox: the switch saying which task events
//! transitions record (set by the dispatcher from the webhooks in the database), and the SQL that
//! names a transition's event. While no webhook wants a transition's events, the transition runs
//! exactly as it would without an outbox: no transaction, no extra statement.

use crate::error::corrupt;
use chrono::{DateTime, Utc};
use mcp_core::events::Event;
use mcp_core::webhooks::OutboxEntry;
use mcp_core::{StoreError, Task, TaskStatus};
use std::sync::{Arc, RwLock};
use tokio::sync::Notify;

/// A kind of transition, and so the events it can make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transition {
    Created,
    Started,
    /// An attempt's outcome: succeeded, failed (to be retried) or dead.
    Settled,
    Cancelled,
    /// Queued again by hand or because its node let go of it.
    Requeued,
    /// A lease that expired: queued again or dead.
    Rescued,
}

impl Transition {
    fn events(self) -> &'static [&'static str] {
        match self {
            Transition::Created => &["task.created"],
            Transition::Started => &["task.started"],
            Transition::Settled => &["task.succeeded", "task.failed", "task.dead"],
            Transition::Cancelled => &["task.cancelled"],
            Transition::Requeued => &["task.retrying"],
            Transition::Rescued => &["task.retrying", "task.dead"],
        }
    }

    /// Whether every row of the transition makes `task.created` (else the new status decides).
    pub(crate) fn creates(self) -> bool {
        self == Transition::Created
    }
}

/// The event a transition to a status makes (the same names the orchestrator publishes);
/// An insert makes `task.created` instead, whatever the status.
pub(crate) const EVENT_OF_STATUS: &str = "CASE status
        WHEN 'running' THEN 'task.started'
        WHEN 'succeeded' THEN 'task.succeeded'
        WHEN 'failed' THEN 'task.failed'
        WHEN 'dead' THEN 'task.dead'
        WHEN 'cancelled' THEN 'task.cancelled'
        ELSE 'task.retrying' END";

/// Which task events transitions record, and who to tell when they did.
#[derive(Default)]
pub(crate) struct OutboxSwitch {
    wanted: RwLock<Arc<Vec<String>>>,
    recorded: Arc<Notify>,
}

impl OutboxSwitch {
    pub(crate) fn set(&self, events: Vec<String>) {
        *self.wanted.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(events);
    }

    /// The wanted event types, if any of them is one `transition` can make.
    pub(crate) fn wanted(&self, transition: Transition) -> Option<Arc<Vec<String>>> {
        let wanted = self
            .wanted
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        wanted
            .iter()
            .any(|w| transition.events().contains(&w.as_str()))
            .then_some(wanted)
    }

    pub(crate) fn recorded(&self) -> Arc<Notify> {
        self.recorded.clone()
    }

    pub(crate) fn tell(&self) {
        self.recorded.notify_waiters();
        self.recorded.notify_one();
    }
}

/// A claimed outbox row as the entry the dispatcher delivers: the event carries the task as it
/// was when the transition committed.
pub(crate) fn outbox_entry(
    id: i64,
    event_type: String,
    task: Task,
    correlation_id: Option<String>,
    at: DateTime<Utc>,
) -> Result<OutboxEntry, StoreError> {
    Ok(OutboxEntry {
        id,
        event: Event {
            event_type,
            data: serde_json::to_value(&task).map_err(corrupt)?,
            correlation_id,
            at,
        },
    })
}

/// The statuses after which a task changes no more.
pub(crate) fn final_statuses() -> Vec<&'static str> {
    [
        TaskStatus::Succeeded,
        TaskStatus::Dead,
        TaskStatus::Cancelled,
    ]
    .iter()
    .map(|s| s.as_str())
    .collect()
}
