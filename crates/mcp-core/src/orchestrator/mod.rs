//! The task orchestrator: validates and enqueues tasks, and on worker nodes claims them in
//! batches, runs them through their handlers under a lease, records the outcome in batches, and
//! keeps the leases alive. Maintenance (rescuing tasks of dead nodes, pruning) runs beside it.

mod announce;
mod directory;
mod flow;
mod live;
mod remote;
mod task_metrics;
#[cfg(test)]
mod tests;
mod worker;

pub use crate::handler::{Handler, HandlerError, HandlerRegistry, TaskContext};
pub use flow::{PROGRESS_INTERVAL, WORKFLOWS};
pub use remote::WorkerRefusal;
pub use worker::WorkerHandle;

use crate::events::{EventBus, LocalBus};
use crate::routing::{Balancer, BreakerChange, BreakerConfig};
use crate::store::{CancelOutcome, Inserted, Outcome, RetryOutcome, StoreError, TaskStore};
use crate::task::{CreateTask, InvalidTask, NewTask, Task, TaskDefaults};
use announce::{Announcement, Announcer};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Every tunable of the orchestrator; the binary fills it from configuration.
#[derive(Debug, Clone)]
pub struct OrchestratorConfig {
    /// Names this node's leases; unique per process.
    pub node_id: String,
    /// Tasks this node runs at once; 0 makes an API-only node that never claims.
    pub concurrency: usize,
    /// Most tasks taken by one claim, and most outcomes written by one statement.
    pub batch_size: usize,
    /// How long a claimed task stays owned without a heartbeat.
    pub lease: Duration,
    /// Fallback poll when no wake-up arrives.
    pub poll_interval: Duration,
    /// How often expired leases are looked for.
    pub rescue_interval: Duration,
    /// How long running tasks may finish on shutdown before their leases are released.
    pub shutdown_grace: Duration,
    /// Finished tasks older than this are deleted; `None` keeps them forever.
    pub retention: Option<Duration>,
    pub defaults: TaskDefaults,
    /// Task types accepted for external workers even while none is connected (`*`: any).
    pub worker_types: Vec<String>,
    /// How often this node re-reads the cluster's worker directory (the workers of other nodes).
    pub directory_refresh: Duration,
    /// The circuit breaker of every route.
    pub breaker: BreakerConfig,
    /// Task events waiting for the event bus at most; beyond, new ones are dropped (and counted)
    /// rather than slowing the workers.
    pub event_queue: usize,
    /// The share of this node's slots (`concurrency`) one `user` or `service` principal's tasks
    /// may hold at once; 0 or 1 (or more): no cap.
    pub fair_share: f64,
}

impl OrchestratorConfig {
    /// Most tasks of one share key this node runs at once; 0: no cap.
    pub fn share_cap(&self) -> u32 {
        if !(self.fair_share > 0.0 && self.fair_share < 1.0) || self.concurrency == 0 {
            return 0;
        }
        // At least one slot, or a principal could run nothing at all on a small node.
        ((self.concurrency as f64 * self.fair_share).floor() as u32).max(1)
    }
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        OrchestratorConfig {
            node_id: format!("node-{}", Uuid::new_v4().simple()),
            concurrency: 64,
            batch_size: 500,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            rescue_interval: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(10),
            retention: Some(Duration::from_secs(7 * 24 * 3600)),
            defaults: TaskDefaults::default(),
            worker_types: Vec::new(),
            directory_refresh: Duration::from_secs(1),
            breaker: BreakerConfig::default(),
            event_queue: 65_536,
            fair_share: 0.0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    #[error("{}{source}", index.map(|i| format!("tasks[{i}].")).unwrap_or_default())]
    Invalid {
        index: Option<usize>,
        source: InvalidTask,
    },
    #[error("{}unknown task type `{task_type}`", index.map(|i| format!("tasks[{i}]: ")).unwrap_or_default())]
    UnknownType {
        index: Option<usize>,
        task_type: String,
    },
    #[error("{}invalid payload for `{task_type}`: {reason}", index.map(|i| format!("tasks[{i}]: ")).unwrap_or_default())]
    InvalidPayload {
        index: Option<usize>,
        task_type: String,
        reason: String,
    },
    #[error("{}{source}", index.map(|i| format!("tasks[{i}]: ")).unwrap_or_default())]
    DestinationForbidden {
        index: Option<usize>,
        source: crate::outbound::Forbidden,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Orchestrator {
    store: Arc<dyn TaskStore>,
    handlers: HandlerRegistry,
    config: OrchestratorConfig,
    /// Signalled when tasks become runnable; the claim loop waits on it.
    wake: Arc<Notify>,
    /// Signalled when settling left released dependents to write (`Settled::ready`); the
    /// release loop waits on it.
    releases: Notify,
    /// Cancellation tokens of the handlers running on this node.
    running: Mutex<HashMap<Uuid, CancellationToken>>,
    /// How many tasks of each share key this node's handlers run now (fair sharing).
    shares: Arc<Mutex<HashMap<String, u32>>>,
    /// Attempt outcomes this node has durably recorded.
    recorded: AtomicU64,
    /// Released dependents this node started as their settling wrote them (no claim).
    started_where_released: AtomicU64,
    /// External workers connected to this node, and every route's breaker.
    balancer: Arc<Balancer>,
    /// The cluster's workers: where this node publishes its own and learns of the others'.
    directory: directory::Directory,
    /// Hands task transitions to the event bus.
    announcer: Announcer,
    /// The database as the health monitor sees it, when the node has one: the rescuer holds
    /// off while it is down and just after it returns (`watch_database`).
    database: std::sync::OnceLock<crate::health::Dependency>,
    progress: flow::ProgressThrottle,
    children: std::sync::OnceLock<Arc<dyn crate::handler::WorkflowChildren>>,
    /// What runtime settings and flags change: concurrency, paused task types.
    live: live::Live,
}

/// Where a create request comes from: stamped on the tasks it creates.
#[derive(Debug, Clone, Copy, Default)]
pub struct Origin<'a> {
    /// Used when the request names no `correlation_id` (the API passes its request id).
    pub correlation_id: Option<&'a str>,
    /// Subject of the principal creating the tasks.
    pub created_by: Option<&'a str>,
}

impl Orchestrator {
    /// An orchestrator announcing task transitions on an in-process bus of its own.
    pub fn new(
        store: Arc<dyn TaskStore>,
        handlers: HandlerRegistry,
        config: OrchestratorConfig,
    ) -> Arc<Self> {
        Self::with_events(store, handlers, config, Arc::new(LocalBus::default()))
    }

    /// An orchestrator announcing task transitions on `events` (channels `tasks` and
    /// `task:{id}`).
    pub fn with_events(
        store: Arc<dyn TaskStore>,
        handlers: HandlerRegistry,
        config: OrchestratorConfig,
        events: Arc<dyn EventBus>,
    ) -> Arc<Self> {
        let config_breaker = config.breaker;
        let concurrency = config.concurrency;
        let node_id = config.node_id.clone();
        let announcer = Announcer::new(events, config.event_queue);
        Arc::new(Orchestrator {
            store,
            handlers,
            config,
            wake: Arc::new(Notify::new()),
            releases: Notify::new(),
            running: Mutex::new(HashMap::new()),
            shares: Arc::default(),
            recorded: AtomicU64::new(0),
            started_where_released: AtomicU64::new(0),
            balancer: Arc::new(Balancer::new(node_id, config_breaker)),
            directory: directory::Directory::default(),
            announcer,
            database: std::sync::OnceLock::new(),
            progress: flow::ProgressThrottle::default(),
            children: std::sync::OnceLock::new(),
            live: live::Live::new(concurrency),
        })
    }

    /// Lets the rescuer see the database's health: after an outage, every lease may have run
    /// out while no node could renew it, so rescuing at once would re-run the tasks of live
    /// nodes; it waits until their heartbeats had a chance to renew.
    pub fn watch_database(&self, database: crate::health::Dependency) {
        let _ = self.database.set(database);
    }

    /// Wakes this node's claim loops: tasks may have become claimable without an insert (a queue
    /// resumed, a rate limit lifted).
    pub fn nudge(&self) {
        self.wake.notify_one();
    }

    /// The bus task transitions are published on.
    pub fn events(&self) -> &Arc<dyn EventBus> {
        self.announcer.bus()
    }

    /// Task events dropped because the bus could not keep up (the tasks are unaffected).
    pub fn events_dropped(&self) -> u64 {
        self.announcer.dropped()
    }

    pub fn store(&self) -> &Arc<dyn TaskStore> {
        &self.store
    }

    pub fn config(&self) -> &OrchestratorConfig {
        &self.config
    }

    pub fn handlers(&self) -> &HandlerRegistry {
        &self.handlers
    }

    pub fn balancer(&self) -> &Arc<Balancer> {
        &self.balancer
    }

    /// Announces a breaker change: a log line, and an event (`breaker.open`,
    /// `breaker.half_open`, `breaker.closed`) on channel `system.breakers`.
    fn emit_breaker(&self, change: &BreakerChange) {
        tracing::warn!(route = %change.route, state = change.state.as_str(), "circuit breaker");
        // 0 closed, 1 half-open, 2 open.
        let level = match change.state {
            crate::routing::BreakerState::Closed => 0.0,
            crate::routing::BreakerState::HalfOpen => 1.0,
            crate::routing::BreakerState::Open => 2.0,
        };
        metrics::gauge!("mcp_breaker_state", "route" => change.route.clone()).set(level);
        let event = Arc::new(crate::events::Event::new(
            format!("breaker.{}", change.state.as_str()),
            serde_json::json!({"route": change.route, "state": change.state}),
            None,
        ));
        let bus = self.announcer.bus().clone();
        tokio::spawn(async move {
            if let Err(e) = bus.publish("system.breakers", event).await {
                tracing::warn!(error = %e, "cannot publish a breaker change");
            }
        });
    }

    /// Whether tasks of `task_type` may be created for external workers, as far as this node
    /// knows without asking the database: a worker here serves it, a worker elsewhere did when
    /// the directory was last read, or `worker_task_types` lists it.
    fn for_workers(&self, task_type: &str) -> bool {
        self.balancer.serves(task_type)
            || self.served_elsewhere(task_type)
            || self
                .config
                .worker_types
                .iter()
                .any(|t| t == "*" || t == task_type)
    }

    /// Validates a create request against the defaults, the registered handlers and the
    /// cluster's workers. A type nothing on this node knows is looked up in the worker directory
    /// before it is refused as unknown.
    pub async fn prepare(
        &self,
        request: CreateTask,
        origin: Origin<'_>,
        index: Option<usize>,
    ) -> Result<NewTask, OrchestratorError> {
        let (task, known) = self.validate(request, origin, index)?;
        if !known {
            self.refuse_unserved(vec![(index, task.task_type.clone())])
                .await?;
        }
        Ok(task)
    }

    /// `prepare` for each request of a batch (errors name the request's index); the directory
    /// is asked at most once for the whole batch.
    pub async fn prepare_batch(
        &self,
        requests: impl IntoIterator<Item = CreateTask>,
        origin: Origin<'_>,
    ) -> Result<Vec<NewTask>, OrchestratorError> {
        let indexed = requests
            .into_iter()
            .enumerate()
            .map(|(i, request)| (Some(i), request));
        self.prepare_indexed(indexed, origin).await
    }

    /// Validates every request; types nothing on this node knows are looked up in the directory
    /// together. The error reported is the first in request order, as if each request were
    /// checked in turn.
    async fn prepare_indexed(
        &self,
        requests: impl IntoIterator<Item = (Option<usize>, CreateTask)>,
        origin: Origin<'_>,
    ) -> Result<Vec<NewTask>, OrchestratorError> {
        let mut tasks = Vec::new();
        // The first request of each type to look up, in request order.
        let mut unknown: Vec<(Option<usize>, String)> = Vec::new();
        for (index, request) in requests {
            match self.validate(request, origin, index) {
                Ok((task, known)) => {
                    if !known && !unknown.iter().any(|(_, t)| *t == task.task_type) {
                        unknown.push((index, task.task_type.clone()));
                    }
                    tasks.push(task);
                }
                Err(e) => {
                    self.refuse_unserved(unknown).await?;
                    return Err(e);
                }
            }
        }
        self.refuse_unserved(unknown).await?;
        Ok(tasks)
    }

    /// Fails with the first of `unknown` that no worker in the cluster serves.
    async fn refuse_unserved(
        &self,
        unknown: Vec<(Option<usize>, String)>,
    ) -> Result<(), OrchestratorError> {
        if unknown.is_empty() {
            return Ok(());
        }
        let types: Vec<String> = unknown.iter().map(|(_, t)| t.clone()).collect();
        let served = self.served_in_cluster(&types).await?;
        match unknown.into_iter().find(|(_, t)| !served.contains(t)) {
            Some((index, task_type)) => Err(OrchestratorError::UnknownType { index, task_type }),
            None => Ok(()),
        }
    }

    /// Checks one request against the defaults and the handlers; `true` beside the task when
    /// its type is known here (a handler, a worker, `worker_task_types`).
    fn validate(
        &self,
        request: CreateTask,
        origin: Origin<'_>,
        index: Option<usize>,
    ) -> Result<(NewTask, bool), OrchestratorError> {
        let mut request = request;
        if request.timeout_ms.is_none() {
            request.timeout_ms = self
                .handlers
                .get(&request.task_type)
                .and_then(|handler| handler.default_timeout_ms());
        }
        let mut task = request
            .validate(&self.config.defaults, Utc::now())
            .map_err(|source| OrchestratorError::Invalid { index, source })?;
        let known = match self.handlers.get(&task.task_type) {
            Some(handler) => {
                handler.validate(&task.payload).map_err(|reason| {
                    OrchestratorError::InvalidPayload {
                        index,
                        task_type: task.task_type.clone(),
                        reason,
                    }
                })?;
                handler
                    .check_destination(&task.payload)
                    .map_err(|source| OrchestratorError::DestinationForbidden { index, source })?;
                true
            }
            None => self.for_workers(&task.task_type),
        };
        if task.correlation_id.is_none() {
            task.correlation_id = origin.correlation_id.map(str::to_owned);
        }
        task.created_by = origin.created_by.map(str::to_owned);
        if crate::trace::enabled() {
            task.traceparent = creation_context(&task);
        }
        Ok((task, known))
    }

    /// The span of one attempt of `task` on this node (none while tracing is off): a child of
    /// the span that created the task, wherever that was.
    pub(crate) fn run_span(&self, task: &Task) -> tracing::Span {
        if !crate::trace::enabled() {
            return tracing::Span::none();
        }
        let span = tracing::info_span!(
            parent: None,
            "task.run",
            otel.kind = "consumer",
            task.id = %task.id,
            task.type = %task.task_type,
            task.attempt = task.attempts,
            mcp.node = %self.config.node_id
        );
        crate::trace::set_parent(&span, task.traceparent.as_deref());
        span
    }

    /// Creates one task. `created` is false when the idempotency key matched an existing task.
    pub async fn create(
        &self,
        request: CreateTask,
        origin: Origin<'_>,
    ) -> Result<Inserted, OrchestratorError> {
        let task = self.prepare(request, origin, None).await?;
        let mut inserted = self.insert(&[task]).await?;
        Ok(inserted.remove(0))
    }

    /// Creates many tasks atomically: if one is invalid, none is created.
    pub async fn create_batch(
        &self,
        requests: Vec<CreateTask>,
        origin: Origin<'_>,
    ) -> Result<Vec<Inserted>, OrchestratorError> {
        let tasks = self.prepare_batch(requests, origin).await?;
        self.insert(&tasks).await
    }

    /// Inserts tasks `prepare` made, atomically; one `Inserted` per task, in order.
    pub async fn insert(&self, tasks: &[NewTask]) -> Result<Vec<Inserted>, OrchestratorError> {
        let inserted = self.store.insert(tasks).await?;
        // Announced before the claim loop wakes, so `task.started` cannot come first.
        for i in inserted.iter().filter(|i| i.created) {
            self.emit("task.created", i.task.clone());
        }
        if inserted.iter().any(|i| i.created) {
            self.wake.notify_one();
        }
        Ok(inserted)
    }

    /// Cancels a task; a handler running it on this node is signalled at once (on another node
    /// it notices at its next heartbeat).
    pub async fn cancel(&self, id: Uuid) -> Result<CancelOutcome, OrchestratorError> {
        let outcome = self.store.cancel(id).await?;
        if let CancelOutcome::Cancelled { task, was_running } = &outcome {
            if *was_running && let Some(token) = self.lock_running().get(&id) {
                token.cancel();
            }
            self.emit("task.cancelled", task.clone());
            if task.workflow_id.is_some() {
                self.settle(vec![task.id]).await;
            }
        }
        Ok(outcome)
    }

    /// Requeues a failed or dead task now (or a cancelled one of a workflow), with the
    /// workflow's tasks its end had cancelled (`retry_workflow_task`).
    pub async fn retry(&self, id: Uuid) -> Result<RetryOutcome, OrchestratorError> {
        let retried = self.store.retry_workflow_task(id).await?;
        if let RetryOutcome::Requeued(task) = &retried.outcome {
            self.wake.notify_one();
            self.emit("task.retrying", task.clone());
        }
        self.announce_revived(&retried);
        Ok(retried.outcome)
    }

    /// How many released dependents this node started as their settling wrote them, without a
    /// claim (`TaskStore::release_ready`), since it started.
    pub fn started_where_released(&self) -> u64 {
        self.started_where_released.load(Ordering::Relaxed)
    }

    /// How many attempt outcomes this node has durably recorded since it started.
    pub fn outcomes_recorded(&self) -> u64 {
        self.recorded.load(Ordering::Relaxed)
    }

    /// Ids of the tasks whose handlers run on this node now.
    pub fn running_ids(&self) -> Vec<Uuid> {
        self.lock_running().keys().copied().collect()
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, CancellationToken>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts and
        // removes), so a poisoned lock is still usable.
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Orchestrator {
    /// The one place task transitions are announced: `task` as it is after the transition.
    fn emit(&self, event: &'static str, task: impl Into<Arc<Task>>) {
        self.announce(event, task.into(), None, Utc::now());
    }

    /// Announces the recorded `outcome` of an attempt on `task` (as it was claimed).
    fn emit_outcome(&self, task: Arc<Task>, outcome: Outcome, at: DateTime<Utc>) {
        let event = match outcome {
            Outcome::Succeeded(_) => "task.succeeded",
            Outcome::Retry { .. } => "task.failed",
            Outcome::Dead(_) => "task.dead",
            Outcome::Deferred { .. } => "task.deferred",
        };
        self.announce(event, task, Some(outcome), at);
    }

    fn announce(
        &self,
        event: &'static str,
        task: Arc<Task>,
        outcome: Option<Outcome>,
        at: DateTime<Utc>,
    ) {
        tracing::debug!(
            event,
            task_id = %task.id,
            task_type = %task.task_type,
            correlation_id = task.correlation_id.as_deref().unwrap_or(""),
            "task transition"
        );
        task_metrics::observe(event, &task, at);
        self.announcer.announce(Announcement {
            event,
            task,
            outcome,
            at,
        });
    }
}

/// The `task.create` span of a task being created, a child of the caller's span (the request,
/// the WebSocket op, the hook…), as the `traceparent` the task keeps.
fn creation_context(task: &NewTask) -> Option<String> {
    let span = tracing::info_span!(
        "task.create",
        task.id = %task.id,
        task.type = %task.task_type,
        task.queue = %task.queue
    );
    crate::trace::traceparent(&span)
}
