//! What only PostgreSQL's workflows meet: two nodes settling the last two dependencies of one
//! deferred task at the same moment, with a reader writing that task as a row meanwhile. Each
//! settling locks the workflow's row, and so does the reader: the task is written once and
//! released once, whatever the order.

// Only its backends: these cases are PostgreSQL's alone, not `conformance!` ones.
#[allow(unused_macros)]
mod common;

use chrono::Utc;
use common::Backend;
use mcp_core::store::ShareLimit;
use mcp_core::task::{CreateTask, TaskDefaults};
use mcp_core::workflow::{NewWorkflow, OnFailure, WorkflowNode, WorkflowStatus};
use mcp_core::{ClaimRequest, Completion, NewTask, Outcome, TaskStatus, TaskStore};
use mcp_persistence::PgTaskStore;
use std::time::Duration;
use uuid::Uuid;

fn noop() -> NewTask {
    CreateTask {
        task_type: "noop".into(),
        ..Default::default()
    }
    .validate(&TaskDefaults::default(), Utc::now())
    .expect("valid task")
}

fn claim(owner: &str) -> ClaimRequest {
    ClaimRequest {
        owner: owner.into(),
        types: vec!["noop".into()],
        limit: 1,
        lease: Duration::from_secs(30),
        share: ShareLimit::default(),
    }
}

fn succeeded(id: Uuid) -> Completion {
    Completion {
        id,
        outcome: Outcome::Succeeded(serde_json::Value::Null),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_settling_a_deferred_join_release_it_once() {
    let Some(Backend::Postgres(node_a)) = Backend::postgres().await else {
        return;
    };
    let node_b = PgTaskStore::connect(&common::pg_url(), node_a.schema(), 4)
        .await
        .expect("second node on the schema");
    for round in 0..30 {
        let tasks: Vec<NewTask> = (0..3).map(|_| noop()).collect();
        let join = tasks[2].id;
        let nodes = vec![
            WorkflowNode {
                key: "left".into(),
                depends_on: vec![],
            },
            WorkflowNode {
                key: "right".into(),
                depends_on: vec![],
            },
            WorkflowNode {
                key: "join".into(),
                depends_on: vec![tasks[0].id, tasks[1].id],
            },
        ];
        let flow = NewWorkflow {
            id: Uuid::now_v7(),
            name: "race".into(),
            on_failure: OnFailure::CancelDependents,
            created_by: None,
            share_key: None,
            correlation_id: None,
        };
        node_a
            .insert_workflow(&flow, &tasks, &nodes)
            .await
            .expect("insert the workflow");
        let left = node_a.claim(&claim("node-a")).await.expect("claim");
        let right = node_b.claim(&claim("node-b")).await.expect("claim");
        assert_eq!((left.len(), right.len()), (1, 1), "round {round}");
        // Both roots settle at once; every other round a reader asks for the join meanwhile,
        // which writes it as a row if it is still deferred.
        let read = async {
            if round % 2 == 0 {
                let task = node_b.get(join).await.expect("read the join");
                assert!(task.is_some(), "round {round}: the join is not found");
            }
        };
        let (on_a, on_b) = ([succeeded(left[0].id)], [succeeded(right[0].id)]);
        let (from_a, from_b, ()) = tokio::join!(
            node_a.complete_workflow("node-a", &on_a),
            node_b.complete_workflow("node-b", &on_b),
            read
        );
        let released: Vec<Uuid> = [from_a.expect("settle on a"), from_b.expect("settle on b")]
            .iter()
            .flat_map(|settled| settled.released.iter().map(|t| t.id))
            .collect();
        assert_eq!(released, vec![join], "round {round}");
        let task = node_a.get(join).await.expect("get").expect("the join");
        assert_eq!(task.status, TaskStatus::Queued, "round {round}");
        let last = node_b.claim(&claim("node-b")).await.expect("claim");
        assert_eq!(
            last.iter().map(|t| t.id).collect::<Vec<_>>(),
            vec![join],
            "round {round}"
        );
        let settled = node_b
            .complete_workflow("node-b", &[succeeded(join)])
            .await
            .expect("settle the join");
        assert_eq!(settled.finished.len(), 1, "round {round}");
        assert_eq!(settled.finished[0].status, WorkflowStatus::Succeeded);
    }
    node_b.close().await;
    node_a.drop_schema().await.expect("drop schema");
}

/// A fan-out wider than one chunk on a running node: the root's transaction writes the first
/// chunk of its dependents and releases the rest, which the node's release loop writes at once
/// (not at its next sweep: the rescue interval here outlasts the wait), and the join runs last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_writes_the_released_rest_of_a_wide_fan_out_at_once() {
    use mcp_core::{HandlerRegistry, Orchestrator, OrchestratorConfig};
    use std::sync::Arc;
    let Some(Backend::Postgres(store)) = Backend::postgres().await else {
        return;
    };
    const FAN: usize = 2_500;
    let tasks: Vec<NewTask> = (0..FAN + 2).map(|_| noop()).collect();
    let (root, join) = (tasks[0].id, tasks[FAN + 1].id);
    let fan: Vec<Uuid> = tasks[1..=FAN].iter().map(|t| t.id).collect();
    let nodes: Vec<WorkflowNode> = (0..FAN + 2)
        .map(|i| WorkflowNode {
            key: format!("t{i}"),
            depends_on: match i {
                0 => vec![],
                i if i == FAN + 1 => fan.clone(),
                _ => vec![root],
            },
        })
        .collect();
    let flow = NewWorkflow {
        id: Uuid::now_v7(),
        name: "wide".into(),
        on_failure: OnFailure::CancelDependents,
        created_by: None,
        share_key: None,
        correlation_id: None,
    };
    let shared: Arc<dyn TaskStore> = Arc::new(store.clone());
    let orchestrator = Orchestrator::new(
        shared.clone(),
        HandlerRegistry::with_builtins(),
        OrchestratorConfig {
            concurrency: 200,
            rescue_interval: Duration::from_secs(300),
            ..OrchestratorConfig::default()
        },
    );
    let handle = orchestrator.start().await;
    orchestrator
        .insert_workflow(&flow, &tasks, &nodes)
        .await
        .expect("insert the workflow");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let detail = loop {
        let detail = shared
            .get_workflow(flow.id)
            .await
            .expect("read the workflow")
            .expect("the workflow");
        if detail.workflow.status != WorkflowStatus::Running {
            break detail;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the workflow did not finish within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(detail.workflow.status, WorkflowStatus::Succeeded);
    assert_eq!(detail.tasks.len(), FAN + 2);
    let joined = detail
        .tasks
        .iter()
        .find(|t| t.id == join)
        .expect("the join");
    let last_of_fan = detail
        .tasks
        .iter()
        .filter(|t| t.id != join)
        .filter_map(|t| t.finished_at)
        .max()
        .expect("finished");
    assert!(joined.started_at.expect("started") >= last_of_fan);
    handle.shutdown().await;
    store.drop_schema().await.expect("drop schema");
}
