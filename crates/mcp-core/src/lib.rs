//! Core services of MKWW MCP: the domain types (`Task`, `TaskStatus`, …), the ports that the
//! persistence and integration layers implement (`TaskStore`, `Handler`), and the task
//! orchestrator that runs tasks by priority with retries, leases and timeouts.
//!
//! Core holds the rules; it does no I/O of its own beyond timers.

pub mod backoff;
pub mod credentials;
pub mod events;
pub mod flags;
pub mod followups;
pub mod handler;
pub mod health;
pub mod hooks;
pub mod identity;
pub mod integrations;
pub mod limiter;
pub mod memory;
pub mod orchestrator;
pub mod outbound;
pub mod principal;
pub mod queues;
pub mod revocations;
pub mod routing;
pub mod schedule;
pub mod secrets;
pub mod services;
pub mod settings;
pub mod store;
pub mod task;
pub mod trace;
pub mod vcc;
pub mod vrchat;
pub mod webhooks;
pub mod worker_types;
pub mod workflow;

pub use orchestrator::{
    Handler, HandlerError, HandlerRegistry, Orchestrator, OrchestratorConfig, Origin, TaskContext,
};
pub use store::{
    CancelOutcome, ClaimRequest, Completion, Inserted, Outcome, RetryOutcome, StoreError,
    TaskFilter, TaskStore,
};
pub use task::{Backoff, NewTask, Task, TaskError, TaskStatus};
pub mod stats;
