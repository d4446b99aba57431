//! Children an in-process handler adds to its own workflow (`TaskContext::add_workflow_tasks`)
//! are its task creator's, held to the rules that creator's own creates are: the priority
//! ceiling, the daily quota, the longest timeout, the share key and the key namespace. The node
//! is wired in-process (the binary registers no handler that adds children) over a real SQLite
//! store.

use async_trait::async_trait;
use mcp_core::handler::{Handler, HandlerError, HandlerRegistry, TaskContext};
use mcp_core::principal::{CredentialKind, Principal, Role};
use mcp_core::services::{Creator, TaskLimits, TaskService, WorkflowService};
use mcp_core::workflow::{CreateWorkflow, WorkflowTaskSpec};
use mcp_core::{Orchestrator, OrchestratorConfig, Task, TaskStore};
use mcp_persistence::{SqliteOptions, SqliteTaskStore};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Adds each batch of `payload.batches` to its workflow in turn; its result is what each add
/// answered: the tasks added, or the error.
struct Spawn;

#[async_trait]
impl Handler for Spawn {
    async fn run(&self, ctx: TaskContext) -> Result<Value, HandlerError> {
        let batches: Vec<Vec<WorkflowTaskSpec>> =
            serde_json::from_value(ctx.task.payload["batches"].clone())
                .map_err(|e| HandlerError::permanent(e.to_string()))?;
        let mut answers = Vec::new();
        for batch in batches {
            answers.push(match ctx.add_workflow_tasks(batch).await {
                Ok(tasks) => json!({"added": tasks}),
                Err(error) => json!({"error": error}),
            });
        }
        Ok(Value::Array(answers))
    }
}

async fn finished(store: &Arc<dyn TaskStore>, id: uuid::Uuid) -> Task {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let task = store.get(id).await.unwrap().unwrap();
        if task.status.is_final() {
            return task;
        }
        assert!(Instant::now() < deadline, "never finished: {task:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_handlers_children_follow_the_rules_of_its_tasks_creator() {
    let dir = std::env::temp_dir().join(format!("mcp-children-{}", uuid::Uuid::new_v4()));
    let sqlite = SqliteTaskStore::open(&dir.join("tasks.db"), &SqliteOptions::default())
        .await
        .unwrap();
    sqlite.migrate().await.unwrap();
    let store: Arc<dyn TaskStore> = Arc::new(sqlite.clone());
    let mut handlers = HandlerRegistry::with_builtins();
    handlers.register("spawn", Spawn);
    let orchestrator = Orchestrator::new(store.clone(), handlers, OrchestratorConfig::default());
    let handle = orchestrator.start().await;
    let tasks = Arc::new(TaskService::new(
        orchestrator.clone(),
        Arc::new(sqlite.clone()),
        TaskLimits {
            quota_tasks_per_day: 3,
            priority_ceiling: 10,
            max_timeout_ms_user: 60_000,
            ..TaskLimits::default()
        },
    ));
    let workflows = WorkflowService::new(tasks.clone(), orchestrator.clone());
    orchestrator.serve_children(Arc::new(WorkflowService::new(
        tasks.clone(),
        orchestrator.clone(),
    )));
    // A `user` the hub does not store (a token signed elsewhere): held as a `user`.
    let alice = Principal {
        subject: "alice".into(),
        role: Role::User,
        credential: CredentialKind::AccessToken,
        worker_types: None,
    };
    let spawn = |batches: Value| -> CreateWorkflow {
        serde_json::from_value(json!({"name": "spawn", "tasks": [
            {"key": "parent", "type": "spawn", "payload": {"batches": batches}},
        ]}))
        .unwrap()
    };

    // Above the ceiling: refused as alice's own create is (nothing charged).
    let high = workflows
        .create(
            Creator::Principal(&alice),
            spawn(json!([[{"key": "high", "type": "noop", "priority": 50}]])),
            None,
        )
        .await
        .unwrap();
    let parent = finished(&store, high.tasks[0].id).await;
    let answers = parent.result.unwrap();
    let error = answers[0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("priority 50 is above 10"), "{answers}");

    // In alice's namespace with her longest timeout; then over her quota (3: two workflows of
    // one task each and one child).
    let keyed = workflows
        .create(
            Creator::Principal(&alice),
            spawn(json!([
                [{"key": "ok", "type": "noop", "concurrency_key": "deploy"}],
                [{"key": "over", "type": "noop"}],
            ])),
            None,
        )
        .await
        .unwrap();
    let parent = finished(&store, keyed.tasks[0].id).await;
    let answers = parent.result.unwrap();
    let child = &answers[0]["added"][0];
    assert_eq!(child["created_by"], "alice", "{answers}");
    assert_eq!(child["timeout_ms"], 60_000, "{answers}");
    let stored = store
        .get(child["id"].as_str().unwrap().parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.share_key.as_deref(), Some("alice"));
    // Shown as she gave it, stored in her namespace.
    assert_eq!(stored.concurrency_key.as_deref(), Some("deploy"));
    let [(_, pool), ..] = sqlite.pools();
    let (key,): (String,) = sqlx::query_as("SELECT concurrency_key FROM tasks WHERE id = ?1")
        .bind(stored.id.to_string())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(key, "alice/deploy");
    let error = answers[1]["error"].as_str().unwrap_or_default();
    assert!(error.contains("daily quota of 3 tasks"), "{answers}");

    handle.shutdown().await;
    sqlite.close().await;
    let _ = std::fs::remove_dir_all(dir);
}
