//! The routing service: which task types this node can run, and where. A type resolves to an
//! in-process handler or to external workers connected to this node (over the WebSocket API)
//! that registered it. Work is balanced across workers by least outstanding tasks, round-robin
//! among equals, within each worker's concurrency. Every route has a circuit breaker: while it is
//! open, the route's tasks stay queued instead of spending their attempts. Each node publishes
//! its workers to the cluster's `WorkerDirectory`, so every node knows what the cluster serves.

pub mod breaker;
pub mod directory;

pub use breaker::{Breaker, BreakerConfig, BreakerState};
pub use directory::{DirectoryEntry, WorkerDirectory, WorkerRegistration};

use crate::handler::HandlerError;
use crate::task::Task;
use crate::worker_types;
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tokio::sync::{Notify, mpsc, oneshot};
use utoipa::ToSchema;
use uuid::Uuid;

/// A task handed to an external worker, and where its outcome goes.
#[derive(Debug)]
pub struct Assignment {
    pub task: Arc<Task>,
    pub reply: oneshot::Sender<Result<Value, HandlerError>>,
}

/// One connected worker, as the routes see it.
struct Worker {
    subject: String,
    /// What its credential lets it serve (`None`: every type for workers); checked again at
    /// each assignment, so a task outside it never reaches the worker whatever it registered.
    grant: Option<Vec<String>>,
    types: Vec<String>,
    concurrency: usize,
    outstanding: HashSet<Uuid>,
    assign: mpsc::UnboundedSender<Assignment>,
    /// Tie-break among equally loaded workers: the one picked longest ago goes first.
    last_picked: u64,
}

#[derive(Default)]
struct State {
    workers: HashMap<u64, Worker>,
    breakers: HashMap<String, Breaker>,
    /// Thresholds set at runtime, replacing the configured ones (`Balancer::set_breaker_config`).
    breaker_config: Option<BreakerConfig>,
    /// Last breaker state announced per route, to report half-open transitions too.
    announced: HashMap<String, BreakerState>,
    next_id: u64,
    picks: u64,
}

/// A change worth an event on `system.breakers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BreakerChange {
    pub route: String,
    pub state: BreakerState,
}

/// What `GET /v1/routes` shows of one task type.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct RouteInfo {
    #[serde(rename = "type")]
    pub task_type: String,
    /// `local` (an in-process handler) or `workers`.
    pub target: &'static str,
    pub workers: Vec<WorkerInfo>,
    pub breaker: BreakerState,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct WorkerInfo {
    /// The worker's id on its node.
    pub id: u64,
    /// The node the worker is connected to (and which runs its tasks).
    pub node: String,
    pub subject: String,
    pub concurrency: usize,
    /// Tasks it holds now; for a worker on another node, as that node last published it.
    pub outstanding: usize,
}

pub struct Balancer {
    /// This node's id, named as the node of its workers.
    node: String,
    state: Mutex<State>,
    breaker: BreakerConfig,
    /// Fires when workers come, go or free a slot: the remote claim loop looks again.
    pub changed: Arc<Notify>,
    /// Fires when workers come or go: the node publishes its workers to the cluster at once.
    pub membership: Arc<Notify>,
}

impl Balancer {
    pub fn new(node: impl Into<String>, breaker: BreakerConfig) -> Self {
        Balancer {
            node: node.into(),
            state: Mutex::new(State::default()),
            breaker,
            changed: Arc::new(Notify::new()),
            membership: Arc::new(Notify::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a worker serving `types` with `concurrency` slots, with no limit from its
    /// credential; assignments arrive on the returned receiver. Call `unregister` when it goes.
    pub fn register(
        &self,
        subject: &str,
        types: Vec<String>,
        concurrency: usize,
    ) -> (u64, mpsc::UnboundedReceiver<Assignment>) {
        self.register_granted(subject, None, types, concurrency)
    }

    /// `register` for a worker whose credential may serve only what `grant` covers
    /// (`crate::worker_types` patterns; `None`: no limit). Types outside it are dropped here,
    /// so they are neither claimed for it nor published to the cluster.
    pub fn register_granted(
        &self,
        subject: &str,
        grant: Option<Vec<String>>,
        mut types: Vec<String>,
        concurrency: usize,
    ) -> (u64, mpsc::UnboundedReceiver<Assignment>) {
        types.retain(|t| worker_types::covers(grant.as_deref(), t));
        let (assign, assignments) = mpsc::unbounded_channel();
        let mut state = self.lock();
        state.next_id += 1;
        let id = state.next_id;
        state.workers.insert(
            id,
            Worker {
                subject: subject.to_owned(),
                grant,
                types,
                concurrency: concurrency.max(1),
                outstanding: HashSet::new(),
                assign,
                last_picked: 0,
            },
        );
        drop(state);
        self.changed.notify_one();
        self.membership.notify_one();
        (id, assignments)
    }

    /// Removes a worker; returns the tasks it still held (to be released at once).
    pub fn unregister(&self, worker: u64) -> Vec<Uuid> {
        let removed = self.lock().workers.remove(&worker);
        self.changed.notify_one();
        self.membership.notify_one();
        removed.map_or_else(Vec::new, |w| w.outstanding.into_iter().collect())
    }

    /// This node's workers as the cluster's directory records them, by id.
    pub fn registrations(&self) -> Vec<WorkerRegistration> {
        let mut workers: Vec<WorkerRegistration> = self
            .lock()
            .workers
            .iter()
            .map(|(id, w)| WorkerRegistration {
                id: *id,
                subject: w.subject.clone(),
                types: w.types.clone(),
                concurrency: w.concurrency,
                outstanding: w.outstanding.len(),
            })
            .collect();
        workers.sort_by_key(|w| w.id);
        workers
    }

    /// Whether some worker on this node has registered `task_type`.
    pub fn serves(&self, task_type: &str) -> bool {
        self.lock()
            .workers
            .values()
            .any(|w| w.types.iter().any(|t| t == task_type))
    }

    /// Free worker slots per task type whose breaker admits calls now (each type at most what
    /// its breaker admits).
    pub fn free_slots(&self) -> BTreeMap<String, usize> {
        let now = Instant::now();
        let mut state = self.lock();
        let mut free: BTreeMap<String, usize> = BTreeMap::new();
        for worker in state.workers.values() {
            let slots = worker.concurrency.saturating_sub(worker.outstanding.len());
            for task_type in &worker.types {
                *free.entry(task_type.clone()).or_default() += slots;
            }
        }
        free.retain(|_, n| *n > 0);
        for (task_type, slots) in free.iter_mut() {
            *slots = (*slots).min(self.breaker_mut(&mut state, task_type).admits(now));
        }
        free.retain(|_, n| *n > 0);
        free
    }

    /// Picks the worker for `task` (least outstanding, then least recently picked) and hands it
    /// the task. `None` when no worker has a free slot for its type, or its route's breaker
    /// admits no call now (the caller releases it, its attempt unspent): a breaker that opened
    /// after the caller counted the free slots, while its claim ran, holds the task as well.
    pub fn assign(
        &self,
        task: Arc<Task>,
    ) -> Option<(u64, oneshot::Receiver<Result<Value, HandlerError>>)> {
        let now = Instant::now();
        let mut state = self.lock();
        if self.breaker_mut(&mut state, &task.task_type).admits(now) == 0 {
            return None;
        }
        state.picks += 1;
        let pick = state.picks;
        let (id, worker) = state
            .workers
            .iter_mut()
            .filter(|(_, w)| {
                w.outstanding.len() < w.concurrency
                    && w.types.contains(&task.task_type)
                    && worker_types::covers(w.grant.as_deref(), &task.task_type)
            })
            .min_by_key(|(id, w)| (w.outstanding.len(), w.last_picked, **id))?;
        let (reply, outcome) = oneshot::channel();
        let id = *id;
        worker.outstanding.insert(task.id);
        worker.last_picked = pick;
        let sent = worker.assign.send(Assignment {
            task: task.clone(),
            reply,
        });
        if sent.is_err() {
            worker.outstanding.remove(&task.id);
            return None;
        }
        self.breaker_mut(&mut state, &task.task_type).started(now);
        Some((id, outcome))
    }

    /// The worker is done with a task (whatever the outcome).
    pub fn finished(&self, worker: u64, task_id: Uuid) {
        if let Some(w) = self.lock().workers.get_mut(&worker) {
            w.outstanding.remove(&task_id);
        }
        self.changed.notify_one();
    }

    /// Whether `worker` holds `task_id` now (a worker may only complete what it holds).
    pub fn holds(&self, worker: u64, task_id: Uuid) -> bool {
        self.lock()
            .workers
            .get(&worker)
            .is_some_and(|w| w.outstanding.contains(&task_id))
    }

    /// Whether a worker of `subject` connected to this node holds `task_id` now: an external
    /// worker may act for the tasks it was given (add children to their workflow), no others.
    pub fn held_by(&self, subject: &str, task_id: Uuid) -> bool {
        self.lock()
            .workers
            .values()
            .any(|w| w.subject == subject && w.outstanding.contains(&task_id))
    }

    /// Whether a route's breaker lets calls through now (in-process handlers ask this too).
    pub fn admits(&self, task_type: &str) -> usize {
        let mut state = self.lock();
        self.breaker_mut(&mut state, task_type)
            .admits(Instant::now())
    }

    /// Counts an outcome for a route; returns the breaker change to announce, if any.
    pub fn record(&self, task_type: &str, succeeded: bool) -> Option<BreakerChange> {
        let now = Instant::now();
        let mut state = self.lock();
        let breaker = self.breaker_mut(&mut state, task_type);
        breaker.record(succeeded, now);
        let current = breaker.state(now);
        let change = Self::announce(&mut state, task_type, current);
        if change.is_some() {
            self.changed.notify_one();
        }
        change
    }

    /// Breaker transitions that happened by the passing of time (open → half-open).
    pub fn poll_breakers(&self) -> Vec<BreakerChange> {
        let now = Instant::now();
        let mut state = self.lock();
        let routes: Vec<String> = state.breakers.keys().cloned().collect();
        let mut changes = Vec::new();
        for route in routes {
            let current = self.breaker_mut(&mut state, &route).state(now);
            changes.extend(Self::announce(&mut state, &route, current));
        }
        changes
    }

    fn announce(state: &mut State, route: &str, current: BreakerState) -> Option<BreakerChange> {
        let before = state
            .announced
            .insert(route.to_owned(), current)
            .unwrap_or(BreakerState::Closed);
        (before != current).then(|| BreakerChange {
            route: route.to_owned(),
            state: current,
        })
    }

    fn breaker_mut<'a>(&self, state: &'a mut State, task_type: &str) -> &'a mut Breaker {
        let config = state.breaker_config.unwrap_or(self.breaker);
        state
            .breakers
            .entry(task_type.to_owned())
            .or_insert_with(|| Breaker::new(config))
    }

    /// Gives every route's breaker, present and future, these thresholds (a runtime setting).
    pub fn set_breaker_config(&self, config: BreakerConfig) {
        let mut state = self.lock();
        state.breaker_config = Some(config);
        for breaker in state.breakers.values_mut() {
            breaker.reconfigure(config);
        }
        drop(state);
        self.changed.notify_waiters();
    }

    /// Every route this node knows: local handler types and this node's worker types.
    pub fn routes(&self, local: &[String]) -> Vec<RouteInfo> {
        self.cluster_routes(local, &[])
    }

    /// Every route of the cluster: local handler types, and the worker types of this node's
    /// workers and of `others` (the workers other nodes published). Breakers are this node's.
    pub fn cluster_routes(&self, local: &[String], others: &[DirectoryEntry]) -> Vec<RouteInfo> {
        let now = Instant::now();
        // This node's workers are known first-hand, with their current load.
        let others: Vec<&DirectoryEntry> = others.iter().filter(|e| e.node != self.node).collect();
        let mut state = self.lock();
        let mut types: BTreeMap<String, &'static str> =
            local.iter().map(|t| (t.clone(), "local")).collect();
        let worker_types = state
            .workers
            .values()
            .flat_map(|w| &w.types)
            .chain(others.iter().flat_map(|e| &e.worker.types));
        for t in worker_types {
            types.entry(t.clone()).or_insert("workers");
        }
        let mut routes = Vec::new();
        for (task_type, target) in types {
            let mut workers: Vec<WorkerInfo> = state
                .workers
                .iter()
                .filter(|(_, w)| w.types.contains(&task_type))
                .map(|(id, w)| WorkerInfo {
                    id: *id,
                    node: self.node.clone(),
                    subject: w.subject.clone(),
                    concurrency: w.concurrency,
                    outstanding: w.outstanding.len(),
                })
                .chain(
                    others
                        .iter()
                        .filter(|e| e.worker.types.contains(&task_type))
                        .map(|e| WorkerInfo {
                            id: e.worker.id,
                            node: e.node.clone(),
                            subject: e.worker.subject.clone(),
                            concurrency: e.worker.concurrency,
                            outstanding: e.worker.outstanding,
                        }),
                )
                .collect();
            // This node's first, then by node and id.
            workers.sort_by(|a, b| {
                (a.node != self.node, &a.node, a.id).cmp(&(b.node != self.node, &b.node, b.id))
            });
            let breaker = self.breaker_mut(&mut state, &task_type).state(now);
            routes.push(RouteInfo {
                task_type,
                target,
                workers,
                breaker,
            });
        }
        routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{CreateTask, TaskDefaults};
    use std::time::Duration;

    fn task(task_type: &str) -> Arc<Task> {
        let new = CreateTask {
            task_type: task_type.into(),
            ..Default::default()
        }
        .validate(&TaskDefaults::default(), chrono::Utc::now())
        .unwrap();
        Arc::new(Task {
            id: new.id,
            task_type: new.task_type,
            queue: new.queue,
            priority: 0,
            payload: new.payload,
            status: crate::TaskStatus::Running,
            attempts: 1,
            max_attempts: new.max_attempts,
            backoff: new.backoff,
            run_at: chrono::Utc::now(),
            timeout_ms: new.timeout_ms,
            idempotency_key: None,
            concurrency_key: None,
            concurrency_limit: None,
            correlation_id: None,
            created_by: None,
            share_key: None,
            result: None,
            error: None,
            created_at: chrono::Utc::now(),
            started_at: None,
            finished_at: None,
            workflow_id: None,
            workflow_key: None,
            parents: None,
            progress: None,
            traceparent: None,
        })
    }

    #[test]
    fn an_open_breaker_refuses_the_assignment_of_a_task_claimed_before_it_opened() {
        let balancer = Balancer::new(
            "n1",
            BreakerConfig {
                min_calls: 2,
                open_for: Duration::from_secs(600),
                ..BreakerConfig::default()
            },
        );
        let (_a, _ra) = balancer.register("a", vec!["render".into()], 4);
        // The remote loop counted a free slot while the breaker was closed...
        assert_eq!(balancer.free_slots().get("render"), Some(&4));
        balancer.record("render", false);
        balancer.record("render", false);
        // ...and its claim returned after the breaker opened: the task is not handed out.
        assert!(balancer.assign(task("render")).is_none());
        assert_eq!(balancer.free_slots().get("render"), None);
    }

    #[test]
    fn balances_by_least_outstanding_then_round_robin() {
        let balancer = Balancer::new("n1", BreakerConfig::default());
        let (a, _ra) = balancer.register("a", vec!["render".into()], 2);
        let (b, _rb) = balancer.register("b", vec!["render".into()], 2);
        let first = balancer.assign(task("render")).unwrap().0;
        let second = balancer.assign(task("render")).unwrap().0;
        assert_ne!(first, second, "equals take turns");
        let third = balancer.assign(task("render")).unwrap().0;
        let fourth = balancer.assign(task("render")).unwrap().0;
        assert_ne!(third, fourth);
        assert!(
            balancer.assign(task("render")).is_none(),
            "every slot is taken"
        );
        assert_eq!(balancer.free_slots().get("render"), None);
        let held: Vec<Uuid> = balancer.unregister(a);
        assert_eq!(held.len(), 2, "a worker that leaves gives its tasks back");
        assert!(balancer.assign(task("render")).is_none());
        let _ = b;
    }

    #[test]
    fn prefers_the_least_loaded_worker() {
        let balancer = Balancer::new("n1", BreakerConfig::default());
        let (a, _ra) = balancer.register("a", vec!["t".into()], 4);
        let one = task("t");
        assert_eq!(balancer.assign(one.clone()).unwrap().0, a);
        let (b, _rb) = balancer.register("b", vec!["t".into()], 4);
        assert_eq!(
            balancer.assign(task("t")).unwrap().0,
            b,
            "b has none outstanding"
        );
        balancer.finished(a, one.id);
        assert!(!balancer.holds(a, one.id));
        assert_eq!(balancer.free_slots().get("t"), Some(&7));
    }

    #[test]
    fn never_assigns_a_type_outside_the_workers_grant() {
        let balancer = Balancer::new("n1", BreakerConfig::default());
        let (renderer, _rr) = balancer.register_granted(
            "key:r",
            Some(vec!["render.*".into()]),
            vec!["render.x".into(), "unity.bake".into()],
            4,
        );
        assert!(balancer.serves("render.x"));
        assert!(!balancer.serves("unity.bake"), "dropped at registration");
        assert_eq!(balancer.free_slots().get("unity.bake"), None);
        assert_eq!(
            balancer.registrations()[0].types,
            vec!["render.x".to_owned()]
        );
        assert!(balancer.assign(task("unity.bake")).is_none());
        assert_eq!(balancer.assign(task("render.x")).unwrap().0, renderer);
    }

    #[test]
    fn assignment_checks_the_grant_even_if_the_types_were_tampered_with() {
        let balancer = Balancer::new("n1", BreakerConfig::default());
        let (id, _rx) =
            balancer.register_granted("key:r", Some(vec!["render.*".into()]), vec![], 4);
        // As if registration had been bypassed: the type is in the list but not in the grant.
        if let Some(w) = balancer.lock().workers.get_mut(&id) {
            w.types.push("echo".into());
        }
        assert!(balancer.assign(task("echo")).is_none());
    }

    #[test]
    fn an_open_breaker_admits_nothing_and_is_announced() {
        let balancer = Balancer::new(
            "n1",
            BreakerConfig {
                min_calls: 2,
                ..BreakerConfig::default()
            },
        );
        let (_a, _ra) = balancer.register("a", vec!["flaky".into()], 4);
        assert_eq!(balancer.record("flaky", false), None);
        assert_eq!(
            balancer.record("flaky", false),
            Some(BreakerChange {
                route: "flaky".into(),
                state: BreakerState::Open
            })
        );
        assert_eq!(balancer.admits("flaky"), 0);
        assert!(balancer.free_slots().is_empty(), "its tasks wait");
        let routes = balancer.routes(&["noop".into()]);
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[0].task_type, "flaky");
        assert_eq!(routes[0].breaker, BreakerState::Open);
        assert_eq!(routes[1].target, "local");
    }
}
