//! External workers over the socket: `worker.register`, then the `task.*` frames by which a
//! worker reports on the tasks assigned to it. Which types a worker may serve is core's rule
//! (`Orchestrator::register_worker`): never an in-process type, only what its credential's
//! `worker_types` covers; a refusal is `worker_type_forbidden`.

use super::close;
use super::connection::{Closing, Connection, forbidden, reply, ws_error};
use crate::auth::Principal;
use crate::error::ApiError;
use mcp_core::HandlerError;
use mcp_core::principal::Permission;
use mcp_core::worker_types;
use serde_json::{Value, json};
use std::time::Duration;

/// Most task types one worker may register, and the most slots it may ask for.
const MAX_WORKER_TYPES: usize = 100;
const MAX_WORKER_CONCURRENCY: usize = 1000;
/// How long `worker.register` waits for the cluster's worker directory before it answers anyway.
const PUBLISH_PATIENCE: Duration = Duration::from_secs(2);

impl Connection {
    /// Registers this connection as a worker, shares it with the cluster, answers (itself, so
    /// the reply precedes every assignment), then starts forwarding assignments.
    pub(super) async fn register_worker(
        &mut self,
        principal: &Principal,
        types: Vec<String>,
        concurrency: usize,
        reply_id: &Option<Value>,
    ) -> Result<Option<Value>, ApiError> {
        if !principal.can(Permission::TasksRun) {
            return Err(forbidden("tasks:run"));
        }
        if self.worker.is_some() {
            return Err(ws_error(
                "already_registered",
                "this connection is a worker already",
            ));
        }
        if types.is_empty()
            || types.len() > MAX_WORKER_TYPES
            || !types.iter().all(|t| worker_types::valid_type(t))
        {
            return Err(ws_error(
                "invalid_request",
                &format!(
                    "`types`: 1 to {MAX_WORKER_TYPES} task types of letters, digits, `.`, `_`, `-`, `:`"
                ),
            ));
        }
        if !(1..=MAX_WORKER_CONCURRENCY).contains(&concurrency) {
            return Err(ws_error(
                "invalid_request",
                &format!("`concurrency` is between 1 and {MAX_WORKER_CONCURRENCY}"),
            ));
        }
        let (id, mut assignments) = self
            .state
            .orchestrator
            .register_worker(principal, types.clone(), concurrency)
            .map_err(ApiError::from)?;
        self.worker = Some(id);
        // Acknowledged once the cluster knows the worker, so every node accepts its types from
        // the reply on. A database away only delays that: the node keeps publishing.
        let publish = self.state.orchestrator.publish_workers();
        match tokio::time::timeout(PUBLISH_PATIENCE, publish).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "worker known to this node only for now"),
            Err(_) => {
                tracing::warn!("worker known to this node only for now: publishing timed out")
            }
        }
        // The reply goes out before the first assignment (tasks assigned meanwhile wait in the
        // channel), so a client reading up to its reply never skips a `task.assign`.
        self.send(reply(
            reply_id,
            json!({"worker_id": id, "types": types, "concurrency": concurrency}),
        ));
        let pending = self.pending.clone();
        let out = self.out.clone();
        let closing = self.closing.clone();
        self.assignments = Some(tokio::spawn(async move {
            let Some(out) = out else { return };
            while let Some(assignment) = assignments.recv().await {
                let task = &*assignment.task;
                // The worker continues the task's trace from the context it was created in.
                let frame = match &task.traceparent {
                    Some(parent) => {
                        json!({"op": "task.assign", "task": task, "traceparent": parent})
                    }
                    None => json!({"op": "task.assign", "task": task}),
                }
                .to_string();
                pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(assignment.task.id, assignment.reply);
                if out.try_send(frame.into()).is_err() {
                    closing.send_if_modified(|current| {
                        current.get_or_insert(Closing {
                            code: close::SLOW_CONSUMER,
                            reason: "too slow to take assignments",
                        });
                        true
                    });
                    out.nudge();
                    return;
                }
            }
        }));
        Ok(None)
    }

    /// The task id, when this worker holds it.
    pub(super) fn held(&self, task_id: &str) -> Option<uuid::Uuid> {
        let worker = self.worker?;
        let id = uuid::Uuid::parse_str(task_id).ok()?;
        self.state
            .orchestrator
            .balancer()
            .holds(worker, id)
            .then_some(id)
    }

    /// Hands a worker's outcome to the attempt waiting for it, once.
    pub(super) fn settle(
        &mut self,
        task_id: &str,
        outcome: Result<Value, HandlerError>,
    ) -> Result<Option<Value>, ApiError> {
        let reply = self.held(task_id).and_then(|id| {
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id)
        });
        match reply.map(|reply| reply.send(outcome)) {
            Some(Ok(())) => Ok(Some(json!({}))),
            _ => Err(ws_error(
                "task_not_held",
                "this worker does not hold that task (finished, cancelled, timed out or never assigned)",
            )),
        }
    }

    /// A held task's progress (`task.progress`): stored and published by the orchestrator, at
    /// most 10 a second per task (see `Orchestrator::report_progress`).
    pub(super) async fn progress(
        &mut self,
        task_id: &str,
        progress: f64,
        message: Option<String>,
    ) -> Result<Option<Value>, ApiError> {
        let not_held = || ws_error("task_not_held", "this worker does not hold that task");
        let id = self.held(task_id).ok_or_else(not_held)?;
        let report = mcp_core::task::Progress::new(progress, message)
            .map_err(|e| ws_error("invalid_request", &e.to_string()))?;
        match self.state.orchestrator.report_progress(id, report).await? {
            true => Ok(Some(json!({}))),
            false => Err(not_held()),
        }
    }
}
