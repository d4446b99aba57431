//! The orchestrator against a small in-memory store: what it announces on the event bus.

use super::*;
use crate::events::{Delivery, Recovery, StreamPosition};
use crate::store::{ClaimRequest, Completion, TaskCounts, TaskFilter};
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
                    result: None,
                    error: None,
                    created_at: now,
                    started_at: None,
                    finished_at: None,
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
        Ok(self
            .lock()
            .iter_mut()
            .filter(|t| t.status == TaskStatus::Queued && request.types.contains(&t.task_type))
            .take(request.limit as usize)
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
async fn history(bus: &MemoryBus, channel: &str) -> Vec<Delivery> {
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
    let bus = Arc::new(MemoryBus::default());
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
    let bus = Arc::new(MemoryBus::default());
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

#[test]
fn a_handlers_default_timeout_applies_only_when_the_request_names_none() {
    let mut handlers = HandlerRegistry::with_builtins();
    handlers.register("slow", Slow);
    let orchestrator = Orchestrator::new(
        Arc::new(Tasks::default()),
        handlers,
        OrchestratorConfig::default(),
    );
    let prepare = |task_type: &str, timeout_ms: Option<u64>| {
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
            .unwrap()
            .timeout_ms
    };
    assert_eq!(prepare("slow", None), 3_600_000);
    assert_eq!(prepare("slow", Some(5_000)), 5_000);
    assert_eq!(prepare("noop", None), TaskDefaults::default().timeout_ms);
}
