//! What both stores share to keep the webhook outbox: the switch saying which events changes
//! record (set by the dispatcher from the webhooks in the database), the SQL that names a task
//! transition's event, and the entries claimed rows become. While no webhook wants a task
//! transition's events, the transition runs exactly as it would without an outbox: no
//! transaction, no extra statement. A memory change runs in a transaction either way and adds
//! its event's rows only when a webhook wants it.

use crate::error::corrupt;
use chrono::{DateTime, Utc};
use mcp_core::events::Event;
use mcp_core::memory::ChangeEvent;
use mcp_core::webhooks::OutboxEntry;
use mcp_core::{StoreError, Task, TaskStatus};
use serde_json::Value;
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

    /// `event`, if some webhook wants its type.
    pub(crate) fn wanted_memory<'a>(
        &self,
        event: Option<ChangeEvent<'a>>,
    ) -> Option<ChangeEvent<'a>> {
        let event = event?;
        self.wanted
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|w| w == event.event_type)
            .then_some(event)
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
            data: serde_json::to_value(&task).map_err(corrupt)?.into(),
            correlation_id,
            at,
        },
        traceparent: task.traceparent,
    })
}

/// A claimed outbox row as the entry the dispatcher delivers: a task event (`task`, the task row
/// as `task_entry` reads it) or a memory event (`data`, as receivers get it).
pub(crate) fn row_entry<T>(
    id: i64,
    event_type: String,
    task: Option<T>,
    data: Option<Value>,
    correlation_id: Option<String>,
    at: DateTime<Utc>,
    task_entry: impl FnOnce(T) -> Result<Task, StoreError>,
) -> Result<OutboxEntry, StoreError> {
    match (task, data) {
        (Some(task), _) => outbox_entry(id, event_type, task_entry(task)?, correlation_id, at),
        (None, Some(data)) => Ok(OutboxEntry {
            id,
            event: Event {
                event_type,
                data: data.into(),
                correlation_id,
                at,
            },
            traceparent: None,
        }),
        (None, None) => Err(corrupt(format!(
            "outbox row {id} has neither task nor data"
        ))),
    }
}

/// The JSON of each item a memory change's event carries, one outbox row each.
pub(crate) fn event_data<T: serde::Serialize>(items: &[T]) -> Result<Vec<String>, StoreError> {
    items
        .iter()
        .map(|item| serde_json::to_string(item).map_err(corrupt))
        .collect()
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
