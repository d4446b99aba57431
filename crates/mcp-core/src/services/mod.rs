//! The use cases of the hub, one service each: every edge (REST, WebSocket, bots' routes,
//! Discord commands, incoming hooks) calls these rather than the stores, so a rule — validation,
//! quota, visibility, events — is written once.

pub mod memory;
pub mod queues;
pub mod scheduler;
pub mod schedules;
pub mod tasks;
pub mod workflows;

/// Trims a page read with one row more than `limit` back to `limit` rows; `true` when that extra
/// row was there, i.e. another page follows.
pub(crate) fn trim_page<T>(rows: &mut Vec<T>, limit: usize) -> bool {
    let more = rows.len() > limit;
    rows.truncate(limit);
    more
}

pub use memory::{MemoryError, MemoryLimits, MemoryService};
pub use queues::{QueueError, QueueService};
pub use schedules::{
    CreateSchedule, ScheduleError, SchedulePatch, ScheduleService, SchedulerConfig,
};
pub use tasks::{Creator, TaskLimits, TaskPage, TaskQuery, TaskService, TaskServiceError};
pub use workflows::{WorkflowPage, WorkflowService, WorkflowServiceError};
