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
            node_a.complete_workflow("node-a", &on_a, None),
            node_b.complete_workflow("node-b", &on_b, None),
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
            .complete_workflow("node-b", &[succeeded(join)], None)
            .await
            .expect("settle the join");
        assert_eq!(settled.finished.len(), 1, "round {round}");
        assert_eq!(settled.finished[0].status, WorkflowStatus::Succeeded);
    }
    node_b.close().await;
    node_a.drop_schema().await.expect("drop schema");
}
