//! The use cases of the hub, one service each: every edge (REST, WebSocket, bots' routes,
//! Discord commands, incoming hooks) calls these rather than the stores, so a rule — validation,
//! quota, visibility, events — is written once.

pub mod memory;
pub mod tasks;

pub use memory::{MemoryError, MemoryLimits, MemoryService};
pub use tasks::{Creator, TaskLimits, TaskPage, TaskQuery, TaskService, TaskServiceError};
