//! The orchestrator against a small in-memory store: what it announces on the event bus.
//! Longer than most files: one in-memory store and the announcement scenarios that share it;
//! splitting them would only spread that store over several files.

use super::*;
use crate::events::{Delivery, Recovery, StreamPosition};
use crate::routing::{DirectoryEntry, WorkerDirectory, WorkerRegistration};
use crate::store::{Candidate, ClaimRequest, Completion, TaskCounts, TaskFilter, admit};
use crate::task::TaskStatus;
use async_trait::async_trait;
use chrono::DateTime;
use serde_json::json;

/// Just enough of a task store to run tasks: insert, claim, complete, get.
#[derive(Default)]
struct Tasks {
    tasks: Mutex<Vec<Task>>,
}

impl Tasks {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Task>> {
        self.tasks.lock().unwrap()
    }
}

#[async_trait]
impl TaskStore for Tasks {
    async fn insert(&self, tasks: &[NewTask]) -> Result<Vec<Inserted>, StoreError> {
        let now = Utc::now();
        let mut held = self.lock();
        Ok(tasks
            .iter()
            .map(|new| {
                let task = Task {
                    id: new.id,
                    task_type: new.task_type.clone(),
                    queue: new.queue.clone(),
                    priority: new.priority,
                    payload: new.payload.clone(),
                    status: TaskStatus::Queued,
                    attempts: 0,
                    max_attempts: new.max_attempts,
                    backoff: new.backoff,
                    run_at: new.run_at.unwrap_or(now),
                    timeout_ms: new.timeout_ms,
                    idempotency_key: new.idempotency_key.clone(),
                    concurrency_key: new.concurrency_key.clone(),
                    concurrency_limit: new.concurrency_limit,
                    correlation_id: new.correlation_id.clone(),
                    created_by: new.created_by.clone(),
                    share_key: new.share_key.clone(),
                    result: None,
                    error: None,
                    created_at: now,
                    started_at: None,
                    finished_at: None,
                    workflow_id: None,
                    workflow_key: None,
                    parents: None,
                    progress: None,
                    traceparent: new.traceparent.clone(),
                };
                held.push(task.clone());
                Inserted {
                    task,
                    created: true,
                }
            })
            .collect())
    }

    async fn get(&self, id: Uuid) -> Result<Option<Task>, StoreError> {
        Ok(self.lock().iter().find(|t| t.id == id).cloned())
    }

    async fn list(&self, _: &TaskFilter) -> Result<Vec<Task>, StoreError> {
        Ok(self.lock().clone())
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<Task>, StoreError> {
        let now = Utc::now();
        let saturated = request.share.saturated();
        let mut held = self.lock();
        let candidates: Vec<Candidate> = held
            .iter()
            .filter(|t| t.status == TaskStatus::Queued && request.types.contains(&t.task_type))
            .filter(|t| t.share_key.as_ref().is_none_or(|k| !saturated.contains(k)))
            .take(request.limit as usize)
            .map(|t| Candidate {
                id: t.id,
                concurrency_key: None,
                concurrency_limit: None,
                share_key: t.share_key.clone(),
            })
            .collect();
        let admitted = admit(&candidates, &HashMap::new(), &request.share);
        Ok(held
            .iter_mut()
            .filter(|t| admitted.contains(&t.id))
            .map(|t| {
                t.status = TaskStatus::Running;
                t.attempts += 1;
                t.started_at = Some(now);
                t.clone()
            })
            .collect())
    }

    async fn complete(&self, _: &str, completions: &[Completion]) -> Result<Vec<Uuid>, StoreError> {
        let now = Utc::now();
        let mut held = self.lock();
        let mut changed = Vec::new();
        for completion in completions {
            if let Some(task) = held
                .iter_mut()
                .find(|t| t.id == completion.id && t.status == TaskStatus::Running)
            {
                *task = announce::settled(task.clone(), completion.outcome.clone(), now);
                changed.push(task.id);
            }
        }
        Ok(changed)
    }

    async fn heartbeat(&self, _: &str, ids: &[Uuid], _: Duration) -> Result<Vec<Uuid>, StoreError> {
        Ok(ids.to_vec())
    }

    async fn release(&self, _: &str, _: &[Uuid]) -> Result<u64, StoreError> {
        Ok(0)
    }

    async fn cancel(&self, _: Uuid) -> Result<CancelOutcome, StoreError> {
        Ok(CancelOutcome::NotFound)
    }

    async fn retry(&self, _: Uuid) -> Result<RetryOutcome, StoreError> {
        Ok(RetryOutcome::NotFound)
    }

    async fn rescue(&self) -> Result<Vec<Task>, StoreError> {
        Ok(Vec::new())
    }

    async fn prune(&self, _: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(0)
    }

    async fn next_run_at(&self, _: &[String]) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(None)
    }

    async fn counts(&self) -> Result<TaskCounts, StoreError> {
        Ok(TaskCounts::new())
    }

    async fn pending(&self) -> Result<u64, StoreError> {
        Ok(self.lock().iter().filter(|t| !t.status.is_final()).count() as u64)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn watch(&self, _: Arc<Notify>) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Everything published on `channel` since offset 0 of its epoch.
async fn history(bus: &LocalBus, channel: &str) -> Vec<Delivery> {
    let epoch = bus.position(channel).await.unwrap().epoch;
    match bus
        .recover(channel, &StreamPosition { offset: 0, epoch })
        .await
        .unwrap()
    {
        Recovery::Recovered(events) => events,
        Recovery::Lost => panic!("history of {channel} lost"),
    }
}

#[tokio::test]
async fn announces_created_started_succeeded_on_tasks_and_on_the_task_channel() {
    let bus = Arc::new(LocalBus::default());
    let orchestrator = Orchestrator::with_events(
        Arc::new(Tasks::default()),
        HandlerRegistry::with_builtins(),
        OrchestratorConfig {
            poll_interval: Duration::from_millis(10),
            ..OrchestratorConfig::default()
        },
        bus.clone(),
    );
    let mut live = bus.subscribe("tasks").await.unwrap();
    let workers = orchestrator.start().await;
    let task = orchestrator
        .prepare(
            CreateTask {
                task_type: "echo".into(),
                payload: Some(json!({"say": "hi"})),
                ..CreateTask::default()
            },
            Origin {
                correlation_id: Some("req-42"),
                created_by: None,
            },
            None,
        )
        .await
        .unwrap();
    // Watched from before it exists (its id is known once prepared).
    let _watching = bus.subscribe(&format!("task:{}", task.id)).await.unwrap();
    let created = orchestrator.insert(&[task]).await.unwrap().remove(0).task;
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let delivery = tokio::time::timeout(Duration::from_secs(5), live.recv())
            .await
            .expect("three events on `tasks`")
            .unwrap();
        seen.push(delivery);
    }
    workers.shutdown().await;

    let types = |events: &[Delivery]| -> Vec<String> {
        events.iter().map(|d| d.event.event_type.clone()).collect()
    };
    let expected = ["task.created", "task.started", "task.succeeded"];
    assert_eq!(types(&seen), expected);
    let on_task = history(&bus, &format!("task:{}", created.id)).await;
    assert_eq!(types(&on_task), expected);
    assert_eq!(
        on_task.iter().map(|d| d.offset).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    for delivery in seen.iter().chain(&on_task) {
        assert_eq!(delivery.event.correlation_id.as_deref(), Some("req-42"));
        assert_eq!(delivery.event.data["id"], json!(created.id));
    }
    let statuses: Vec<_> = on_task
        .iter()
        .map(|d| d.event.data["status"].clone())
        .collect();
    assert_eq!(
        statuses,
        [json!("queued"), json!("running"), json!("succeeded")]
    );
    let done = &on_task[2].event.data;
    assert_eq!(done["result"], json!({"say": "hi"}));
    assert!(done["finished_at"].is_string());
    assert_eq!(orchestrator.events_dropped(), 0);
}

#[tokio::test]
async fn makes_no_events_for_channels_nobody_observes() {
    let bus = Arc::new(LocalBus::default());
    let orchestrator = Orchestrator::with_events(
        Arc::new(Tasks::default()),
        HandlerRegistry::with_builtins(),
        OrchestratorConfig {
            poll_interval: Duration::from_millis(10),
            ..OrchestratorConfig::default()
        },
        bus.clone(),
    );
    let workers = orchestrator.start().await;
    let noop = || CreateTask {
        task_type: "noop".into(),
        ..CreateTask::default()
    };
    let unseen = orchestrator
        .create(noop(), Origin::default())
        .await
        .unwrap()
        .task;
    // Someone starts watching `tasks`: from then on every transition is published there.
    let mut live = bus.subscribe("tasks").await.unwrap();
    let seen = orchestrator
        .create(noop(), Origin::default())
        .await
        .unwrap()
        .task;
    let mut on_tasks = Vec::new();
    while on_tasks.len() < 3 {
        let delivery = tokio::time::timeout(Duration::from_secs(5), live.recv())
            .await
            .expect("events on `tasks`")
            .unwrap();
        if delivery.event.data["id"] == json!(seen.id) {
            on_tasks.push(delivery.event.event_type.clone());
        }
    }
    workers.shutdown().await;
    assert_eq!(on_tasks, ["task.created", "task.started", "task.succeeded"]);
    let never_watched = [unseen.id, seen.id].map(|id| format!("task:{id}"));
    assert_eq!(bus.observed(&never_watched).await.unwrap(), [false, false]);
}

/// A handler whose tasks need longer than the node-wide default.
struct Slow;

#[async_trait]
impl Handler for Slow {
    fn default_timeout_ms(&self) -> Option<u64> {
        Some(3_600_000)
    }

    async fn run(&self, _ctx: TaskContext) -> Result<serde_json::Value, HandlerError> {
        Ok(serde_json::Value::Null)
    }
}

#[tokio::test]
async fn a_handlers_default_timeout_applies_only_when_the_request_names_none() {
    let mut handlers = HandlerRegistry::with_builtins();
    handlers.register("slow", Slow);
    let orchestrator = Orchestrator::new(
        Arc::new(Tasks::default()),
        handlers,
        OrchestratorConfig::default(),
    );
    let prepare = async |task_type: &str, timeout_ms: Option<u64>| {
        orchestrator
            .prepare(
                CreateTask {
                    task_type: task_type.into(),
                    timeout_ms,
                    ..CreateTask::default()
                },
                Origin {
                    correlation_id: None,
                    created_by: None,
                },
                None,
            )
            .await
            .unwrap()
            .timeout_ms
    };
    assert_eq!(prepare("slow", None).await, 3_600_000);
    assert_eq!(prepare("slow", Some(5_000)).await, 5_000);
    assert_eq!(
        prepare("noop", None).await,
        TaskDefaults::default().timeout_ms
    );
}

/// The cluster's worker directory in memory: registrations by node, with a time to live.
#[derive(Default)]
struct Directory {
    nodes: Mutex<HashMap<String, (Vec<WorkerRegistration>, std::time::Instant)>>,
    /// How many times `served_types` was asked.
    lookups: AtomicU64,
}

impl Directory {
    fn nodes(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, (Vec<WorkerRegistration>, std::time::Instant)>>
    {
        self.nodes.lock().unwrap()
    }

    fn workers_of(&self, node: &str) -> Vec<WorkerRegistration> {
        self.nodes()
            .get(node)
            .map(|(workers, _)| workers.clone())
            .unwrap_or_default()
    }
}

#[async_trait]
impl WorkerDirectory for Directory {
    async fn publish_workers(
        &self,
        node: &str,
        workers: &[WorkerRegistration],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let until = std::time::Instant::now() + ttl;
        self.nodes()
            .insert(node.to_owned(), (workers.to_vec(), until));
        Ok(())
    }

    async fn live_workers(&self) -> Result<Vec<DirectoryEntry>, StoreError> {
        let now = std::time::Instant::now();
        let mut live: Vec<DirectoryEntry> = self
            .nodes()
            .iter()
            .filter(|(_, (_, until))| *until > now)
            .flat_map(|(node, (workers, _))| {
                workers.iter().map(|w| DirectoryEntry {
                    node: node.clone(),
                    worker: w.clone(),
                })
            })
            .collect();
        live.sort_by(|a, b| (&a.node, a.worker.id).cmp(&(&b.node, b.worker.id)));
        Ok(live)
    }

    async fn served_types(&self, types: &[String]) -> Result<Vec<String>, StoreError> {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        let live = self.live_workers().await?;
        Ok(types
            .iter()
            .filter(|t| live.iter().any(|e| e.worker.types.contains(t)))
            .cloned()
            .collect())
    }

    async fn prune_workers(&self) -> Result<u64, StoreError> {
        let now = std::time::Instant::now();
        let mut nodes = self.nodes();
        let before = nodes.len();
        nodes.retain(|_, (_, until)| *until > now);
        Ok((before - nodes.len()) as u64)
    }
}

fn bake_worker(id: u64) -> WorkerRegistration {
    WorkerRegistration {
        id,
        subject: "baker".into(),
        types: vec!["unity.bake".into()],
        concurrency: 2,
        outstanding: 1,
    }
}

fn of_type(task_type: &str) -> CreateTask {
    CreateTask {
        task_type: task_type.into(),
        ..CreateTask::default()
    }
}

/// An orchestrator sharing `directory`, with a short lease and directory refresh.
fn clustered(directory: &Arc<Directory>, node: &str) -> Arc<Orchestrator> {
    let orchestrator = Orchestrator::new(
        Arc::new(Tasks::default()),
        HandlerRegistry::with_builtins(),
        OrchestratorConfig {
            node_id: node.into(),
            concurrency: 0,
            lease: Duration::from_millis(300),
            directory_refresh: Duration::from_millis(20),
            ..OrchestratorConfig::default()
        },
    );
    orchestrator.set_worker_directory(directory.clone());
    orchestrator
}

/// Polls `check` every 10 ms until it holds, for at most 5 s.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn accepts_a_type_a_worker_on_another_node_serves_and_asks_the_directory_once() {
    let directory = Arc::new(Directory::default());
    directory
        .publish_workers("b", &[bake_worker(7)], Duration::from_secs(60))
        .await
        .unwrap();
    let a = clustered(&directory, "a");
    let task = a
        .prepare(of_type("unity.bake"), Origin::default(), None)
        .await
        .unwrap();
    assert_eq!(task.task_type, "unity.bake");
    a.prepare(of_type("unity.bake"), Origin::default(), None)
        .await
        .unwrap();
    assert_eq!(
        directory.lookups.load(Ordering::Relaxed),
        1,
        "a type learned from the directory is known from then on"
    );
}

#[tokio::test]
async fn refuses_a_type_nobody_serves_anywhere_unless_worker_task_types_lists_it() {
    let directory = Arc::new(Directory::default());
    let a = clustered(&directory, "a");
    let refused = a
        .prepare(of_type("unity.bake"), Origin::default(), None)
        .await;
    assert!(
        matches!(&refused, Err(OrchestratorError::UnknownType { task_type, index: None }) if task_type == "unity.bake"),
        "{refused:?}"
    );
    let listed = Orchestrator::new(
        Arc::new(Tasks::default()),
        HandlerRegistry::with_builtins(),
        OrchestratorConfig {
            worker_types: vec!["unity.bake".into()],
            ..OrchestratorConfig::default()
        },
    );
    listed.set_worker_directory(directory.clone());
    let before = directory.lookups.load(Ordering::Relaxed);
    listed
        .prepare(of_type("unity.bake"), Origin::default(), None)
        .await
        .unwrap();
    assert_eq!(directory.lookups.load(Ordering::Relaxed), before);
}

#[tokio::test]
async fn a_batch_reports_its_first_error_in_request_order() {
    let directory = Arc::new(Directory::default());
    let a = clustered(&directory, "a");
    let invalid = CreateTask {
        max_attempts: Some(0),
        ..of_type("noop")
    };
    let unknown_first = a
        .prepare_batch(
            [of_type("noop"), of_type("nobody.serves"), invalid.clone()],
            Origin::default(),
        )
        .await;
    assert!(
        matches!(
            unknown_first,
            Err(OrchestratorError::UnknownType { index: Some(1), .. })
        ),
        "{unknown_first:?}"
    );
    let invalid_first = a
        .prepare_batch([invalid, of_type("nobody.serves")], Origin::default())
        .await;
    assert!(
        matches!(
            invalid_first,
            Err(OrchestratorError::Invalid { index: Some(0), .. })
        ),
        "{invalid_first:?}"
    );
    directory
        .publish_workers("b", &[bake_worker(1)], Duration::from_secs(60))
        .await
        .unwrap();
    let prepared = a
        .prepare_batch(
            [
                of_type("unity.bake"),
                of_type("noop"),
                of_type("unity.bake"),
            ],
            Origin::default(),
        )
        .await
        .unwrap();
    assert_eq!(prepared.len(), 3);
}

#[tokio::test]
async fn publishes_its_workers_as_they_come_and_go_and_withdraws_them_on_shutdown() {
    let directory = Arc::new(Directory::default());
    let b = clustered(&directory, "b");
    let a = clustered(&directory, "a");
    let (workers_a, workers_b) = (a.start().await, b.start().await);
    let (worker, _assignments) = b.balancer().register("baker", vec!["unity.bake".into()], 3);
    eventually("b publishes its worker", || {
        directory.workers_of("b").iter().any(|w| w.id == worker)
    })
    .await;
    eventually("a lists b's worker among its routes", || {
        a.routes().iter().any(|r| {
            r.task_type == "unity.bake"
                && r.target == "workers"
                && r.workers.iter().any(|w| w.node == "b" && w.id == worker)
        })
    })
    .await;
    let on_b = b.routes();
    let route = on_b.iter().find(|r| r.task_type == "unity.bake").unwrap();
    assert_eq!(route.workers.len(), 1, "b's own worker once, from memory");
    assert_eq!(route.workers[0].node, "b");
    b.balancer().unregister(worker);
    eventually("b withdraws the worker that left", || {
        directory.workers_of("b").is_empty()
    })
    .await;
    eventually("a forgets it", || !a.served_elsewhere("unity.bake")).await;
    b.balancer().register("baker", vec!["unity.bake".into()], 1);
    eventually("b publishes again", || {
        !directory.workers_of("b").is_empty()
    })
    .await;
    workers_b.shutdown().await;
    assert!(
        directory.workers_of("b").is_empty(),
        "withdrawn on shutdown"
    );
    workers_a.shutdown().await;
}

#[tokio::test]
async fn a_silent_nodes_workers_expire_with_the_lease() {
    let directory = Arc::new(Directory::default());
    let a = clustered(&directory, "a");
    let workers_a = a.start().await;
    // Node b published once and died: nothing republishes its worker.
    directory
        .publish_workers("b", &[bake_worker(1)], Duration::from_millis(300))
        .await
        .unwrap();
    eventually("a learns of b's worker", || {
        a.served_elsewhere("unity.bake")
    })
    .await;
    let learned = tokio::time::Instant::now();
    eventually("b's worker expires", || !a.served_elsewhere("unity.bake")).await;
    assert!(learned.elapsed() < Duration::from_secs(1));
    let refused = a
        .prepare(of_type("unity.bake"), Origin::default(), None)
        .await;
    assert!(
        matches!(refused, Err(OrchestratorError::UnknownType { .. })),
        "{refused:?}"
    );
    workers_a.shutdown().await;
}

#[tokio::test]
async fn a_principal_holds_at_most_its_share_of_the_slots_and_others_still_run() {
    let store = Arc::new(Tasks::default());
    let orchestrator = Orchestrator::new(
        store.clone(),
        HandlerRegistry::with_builtins(),
        OrchestratorConfig {
            concurrency: 4,
            fair_share: 0.5,
            poll_interval: Duration::from_millis(10),
            shutdown_grace: Duration::from_millis(50),
            ..OrchestratorConfig::default()
        },
    );
    assert_eq!(orchestrator.config().share_cap(), 2);
    let long = |share: Option<&str>| {
        let mut task = CreateTask {
            task_type: "sleep".into(),
            payload: Some(json!({"ms": 3_600_000})),
            ..CreateTask::default()
        }
        .validate(&crate::task::TaskDefaults::default(), Utc::now())
        .unwrap();
        task.share_key = share.map(str::to_owned);
        task
    };
    let flood: Vec<NewTask> = (0..6).map(|_| long(Some("mallory"))).collect();
    orchestrator.insert(&flood).await.unwrap();
    let workers = orchestrator.start().await;
    let running = |share: &str| {
        store
            .lock()
            .iter()
            .filter(|t| t.status == TaskStatus::Running && t.share_key.as_deref() == Some(share))
            .count()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while running("mallory") < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "mallory's share never ran"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Another principal, and the hub's own work, still find slots.
    let others = [long(Some("bob")), long(None)];
    orchestrator.insert(&others).await.unwrap();
    while running("bob") < 1
        || store
            .lock()
            .iter()
            .filter(|t| t.status == TaskStatus::Running)
            .count()
            < 4
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the others never ran"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(running("mallory"), 2, "never more than the share");
    workers.shutdown().await;
}

fn service_key(worker_types: Option<&[&str]>) -> crate::principal::Principal {
    crate::principal::Principal {
        subject: "key:abc".into(),
        role: crate::principal::Role::Service,
        credential: crate::principal::CredentialKind::ApiKey,
        worker_types: worker_types.map(|list| list.iter().map(|t| (*t).to_owned()).collect()),
    }
}

#[tokio::test]
async fn refuses_a_worker_for_in_process_types_or_types_outside_its_grant() {
    let orchestrator = Orchestrator::new(
        Arc::new(Tasks::default()),
        HandlerRegistry::with_builtins(),
        OrchestratorConfig::default(),
    );
    let unlimited = service_key(None);
    let renderer = service_key(Some(&["render.*"]));
    let types = |list: &[&str]| list.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>();

    let refused = orchestrator.register_worker(&unlimited, types(&["unity.bake", "echo"]), 1);
    assert_eq!(
        refused.err(),
        Some(WorkerRefusal::InProcess(vec!["echo".into()])),
        "no grant opens an in-process type"
    );
    let refused = orchestrator.register_worker(&renderer, types(&["render.x", "unity.bake"]), 1);
    assert_eq!(
        refused.err(),
        Some(WorkerRefusal::OutsideGrant(vec!["unity.bake".into()]))
    );
    assert!(orchestrator.balancer().registrations().is_empty());

    let (id, _assignments) = orchestrator
        .register_worker(&renderer, types(&["render.x"]), 1)
        .expect("within the grant");
    let (_, _more) = orchestrator
        .register_worker(&unlimited, types(&["unity.bake"]), 1)
        .expect("no grant: any type for workers");
    let registered = orchestrator.balancer().registrations();
    assert_eq!(registered[0].id, id);
    assert_eq!(registered[0].types, types(&["render.x"]));
}

#[tokio::test]
async fn never_hands_an_in_process_task_to_a_worker_that_bypassed_registration() {
    let store = Arc::new(Tasks::default());
    // API-only: no claim loop, so only the remote loop could take the task.
    let orchestrator = Orchestrator::new(
        store.clone(),
        HandlerRegistry::with_builtins(),
        OrchestratorConfig {
            concurrency: 0,
            poll_interval: Duration::from_millis(10),
            // The worker never finishes its task: do not wait for it on shutdown.
            shutdown_grace: Duration::from_millis(50),
            ..OrchestratorConfig::default()
        },
    );
    let workers = orchestrator.start().await;
    let (_, mut assignments) =
        orchestrator
            .balancer()
            .register("intruder", vec!["echo".into(), "unity.bake".into()], 4);
    let echo = orchestrator
        .create(of_type("echo"), Origin::default())
        .await
        .unwrap()
        .task;
    let bake = orchestrator
        .create(of_type("unity.bake"), Origin::default())
        .await
        .unwrap()
        .task;
    // The worker type is handed over; the in-process one, created first, never is.
    let given = tokio::time::timeout(Duration::from_secs(10), assignments.recv())
        .await
        .expect("the worker type is assigned")
        .expect("an assignment");
    assert_eq!(given.task.id, bake.id);
    assert!(assignments.try_recv().is_err(), "echo is not the worker's");
    let queued = store.get(echo.id).await.unwrap().unwrap();
    assert_eq!(queued.status, TaskStatus::Queued);
    workers.shutdown().await;
}

fn with_concurrency(concurrency: usize) -> Arc<Orchestrator> {
    Orchestrator::new(
        Arc::new(Tasks::default()),
        HandlerRegistry::with_builtins(),
        OrchestratorConfig {
            concurrency,
            ..OrchestratorConfig::default()
        },
    )
}

#[tokio::test]
async fn concurrency_resizes_at_once_up_and_as_running_tasks_finish_down() {
    let orchestrator = with_concurrency(2);
    let slots = orchestrator.live.slots.clone();
    orchestrator.set_concurrency(5);
    assert_eq!(slots.available_permits(), 5);
    orchestrator.set_concurrency(1);
    assert_eq!(slots.available_permits(), 1);
    // A running task holds the last slot: going to 0 takes it back when the task ends.
    let running = slots.clone().acquire_owned().await.unwrap();
    orchestrator.set_concurrency(0);
    assert_eq!(orchestrator.concurrency(), 0);
    drop(running);
    eventually("the slot is taken back", || slots.available_permits() == 0).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(slots.available_permits(), 0);
    orchestrator.set_concurrency(3);
    assert_eq!(slots.available_permits(), 3);
}

#[tokio::test]
async fn paused_prefixes_hold_their_task_types_only() {
    let orchestrator = with_concurrency(1);
    orchestrator.set_paused_prefixes(["discord".to_string()].into());
    assert!(orchestrator.is_paused("discord.send_message"));
    assert!(!orchestrator.is_paused("discordx.send"));
    assert!(!orchestrator.is_paused("noop"));
    orchestrator.set_paused_prefixes(Default::default());
    assert!(!orchestrator.is_paused("discord.send_message"));
}
