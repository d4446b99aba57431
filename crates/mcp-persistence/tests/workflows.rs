//! The workflow methods of both task stores: inserting a DAG, settling dependencies in the
//! completing transaction (release, cascade cancel, `continue`), finishing, cancelling, parents
//! and progress. Every case runs on SQLite and PostgreSQL.

#[macro_use]
mod common;

use chrono::Utc;
use mcp_core::store::{ShareLimit, StartRequest, TaskFilter};
use mcp_core::task::{CreateTask, Progress, TaskDefaults};
use mcp_core::workflow::{NewWorkflow, OnFailure, WorkflowFilter, WorkflowNode, WorkflowStatus};
use mcp_core::{
    ClaimRequest, Completion, NewTask, Outcome, RetryOutcome, Task, TaskError, TaskStatus,
    TaskStore,
};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

conformance!(
    inserts_a_dag_with_waiting_dependents,
    the_last_dependency_releases_a_dependent_in_its_transaction,
    a_dead_dependency_cancels_its_dependents_transitively,
    continue_releases_dependents_of_a_failed_task,
    settling_twice_changes_nothing,
    cancels_what_has_not_finished,
    extends_a_running_workflow,
    lists_workflows_by_creator_with_a_cursor,
    stores_progress_of_running_tasks_only,
    retrying_a_task_revives_the_dependents_its_end_cancelled,
    a_retried_cancelled_task_waits_for_unfinished_dependencies,
    a_retried_dependency_under_continue_counts_once,
    waiting_tasks_read_alike_everywhere,
    a_root_releases_a_wide_fan_out,
    a_fan_in_waits_for_every_one_of_a_wide_fan,
    a_waiting_task_cancelled_by_hand_cancels_its_dependents,
    a_node_writes_the_released_rest_of_a_wide_fan_out_at_once,
    released_dependents_start_for_the_node_with_free_slots,
);

mod cases {
    use super::*;

    const OWNER: &str = "node-a";

    fn new_task(task_type: &str) -> NewTask {
        let mut task = CreateTask {
            task_type: task_type.into(),
            ..Default::default()
        }
        .validate(&TaskDefaults::default(), Utc::now())
        .unwrap();
        task.created_by = Some("alice".into());
        task
    }

    fn workflow(on_failure: OnFailure) -> NewWorkflow {
        NewWorkflow {
            id: Uuid::now_v7(),
            name: "release".into(),
            on_failure,
            created_by: Some("alice".into()),
            share_key: None,
            correlation_id: Some("req-1".into()),
        }
    }

    /// Inserts `(key, depends_on)` as noop tasks; returns the workflow id and the ids by key.
    async fn dag(
        store: &Arc<dyn TaskStore>,
        on_failure: OnFailure,
        graph: &[(&str, &[&str])],
    ) -> (Uuid, std::collections::HashMap<String, Uuid>) {
        let tasks: Vec<NewTask> = graph.iter().map(|_| new_task("noop")).collect();
        let ids: std::collections::HashMap<String, Uuid> = graph
            .iter()
            .zip(&tasks)
            .map(|((key, _), t)| (key.to_string(), t.id))
            .collect();
        let nodes: Vec<WorkflowNode> = graph
            .iter()
            .map(|(key, deps)| WorkflowNode {
                key: key.to_string(),
                depends_on: deps.iter().map(|d| ids[*d]).collect(),
            })
            .collect();
        let flow = workflow(on_failure);
        store.insert_workflow(&flow, &tasks, &nodes).await.unwrap();
        (flow.id, ids)
    }

    /// A fan-out/fan-in of noop tasks: a root (`t0`), `fan` tasks depending on it, and a join
    /// (`t{fan + 1}`) depending on all of those.
    fn fan_out(fan: usize) -> (Vec<NewTask>, Vec<WorkflowNode>) {
        let tasks: Vec<NewTask> = (0..fan + 2).map(|_| new_task("noop")).collect();
        let middle: Vec<Uuid> = tasks[1..=fan].iter().map(|t| t.id).collect();
        let nodes = (0..fan + 2)
            .map(|i| WorkflowNode {
                key: format!("t{i}"),
                depends_on: match i {
                    0 => vec![],
                    i if i == fan + 1 => middle.clone(),
                    _ => vec![tasks[0].id],
                },
            })
            .collect();
        (tasks, nodes)
    }

    async fn claim_all(store: &Arc<dyn TaskStore>) -> Vec<Task> {
        store
            .claim(&ClaimRequest {
                owner: OWNER.into(),
                types: vec!["noop".into()],
                limit: 100,
                lease: Duration::from_secs(30),
                share: ShareLimit::default(),
            })
            .await
            .unwrap()
    }

    fn succeeded(id: Uuid, value: serde_json::Value) -> Completion {
        Completion {
            id,
            outcome: Outcome::Succeeded(value),
        }
    }

    fn dead(id: Uuid) -> Completion {
        Completion {
            id,
            outcome: Outcome::Dead(TaskError {
                message: "boom".into(),
                attempt: 1,
                details: None,
            }),
        }
    }

    async fn status(store: &Arc<dyn TaskStore>, id: Uuid) -> TaskStatus {
        store.get(id).await.unwrap().unwrap().status
    }

    pub async fn inserts_a_dag_with_waiting_dependents(store: Arc<dyn TaskStore>) {
        let (id, ids) = dag(
            &store,
            OnFailure::CancelDependents,
            &[
                ("build", &[]),
                ("test", &["build"]),
                ("deploy", &["build", "test"]),
            ],
        )
        .await;
        let detail = store.get_workflow(id).await.unwrap().unwrap();
        assert_eq!(detail.workflow.status, WorkflowStatus::Running);
        assert_eq!(detail.workflow.name, "release");
        assert_eq!(detail.workflow.created_by.as_deref(), Some("alice"));
        assert_eq!(detail.workflow.correlation_id.as_deref(), Some("req-1"));
        assert_eq!(detail.tasks.len(), 3);
        let build = store.get(ids["build"]).await.unwrap().unwrap();
        assert_eq!(build.status, TaskStatus::Queued);
        assert_eq!(build.workflow_id, Some(id));
        assert_eq!(build.workflow_key.as_deref(), Some("build"));
        assert_eq!(status(&store, ids["test"]).await, TaskStatus::Waiting);
        // Only the root is claimable.
        let claimed = claim_all(&store).await;
        assert_eq!(
            claimed.iter().map(|t| t.id).collect::<Vec<_>>(),
            vec![ids["build"]]
        );
        assert!(store.get_workflow(Uuid::now_v7()).await.unwrap().is_none());
    }

    pub async fn the_last_dependency_releases_a_dependent_in_its_transaction(
        store: Arc<dyn TaskStore>,
    ) {
        let (id, ids) = dag(
            &store,
            OnFailure::CancelDependents,
            &[("a", &[]), ("b", &[]), ("join", &["a", "b"])],
        )
        .await;
        let claimed = claim_all(&store).await;
        assert_eq!(claimed.len(), 2);
        let settled = store
            .complete_workflow(OWNER, &[succeeded(ids["a"], json!({"n": 1}))], None)
            .await
            .unwrap();
        assert_eq!(settled.changed, vec![ids["a"]]);
        assert!(settled.released.is_empty(), "b has not finished");
        assert_eq!(status(&store, ids["join"]).await, TaskStatus::Waiting);
        let settled = store
            .complete_workflow(OWNER, &[succeeded(ids["b"], json!(null))], None)
            .await
            .unwrap();
        assert_eq!(settled.released.len(), 1);
        assert_eq!(settled.released[0].id, ids["join"]);
        assert_eq!(settled.released[0].status, TaskStatus::Queued);
        let join = claim_all(&store).await;
        assert_eq!(join.len(), 1);
        let parents = store.parents(&[ids["join"]]).await.unwrap();
        assert_eq!(
            parents[&ids["join"]],
            json!({"a": {"status": "succeeded", "result": {"n": 1}}, "b": {"status": "succeeded"}})
        );
        let settled = store
            .complete_workflow(OWNER, &[succeeded(ids["join"], json!({}))], None)
            .await
            .unwrap();
        assert_eq!(settled.finished.len(), 1);
        assert_eq!(settled.finished[0].status, WorkflowStatus::Succeeded);
        let detail = store.get_workflow(id).await.unwrap().unwrap();
        assert_eq!(detail.workflow.status, WorkflowStatus::Succeeded);
        assert!(detail.workflow.finished_at.is_some());
    }

    pub async fn a_dead_dependency_cancels_its_dependents_transitively(store: Arc<dyn TaskStore>) {
        let (id, ids) = dag(
            &store,
            OnFailure::CancelDependents,
            &[("a", &[]), ("b", &["a"]), ("c", &["b"]), ("side", &[])],
        )
        .await;
        claim_all(&store).await;
        let settled = store
            .complete_workflow(OWNER, &[dead(ids["a"])], None)
            .await
            .unwrap();
        let mut cancelled: Vec<Uuid> = settled.cancelled.iter().map(|t| t.id).collect();
        cancelled.sort();
        let mut expected = vec![ids["b"], ids["c"]];
        expected.sort();
        assert_eq!(cancelled, expected);
        assert!(settled.finished.is_empty(), "`side` still runs");
        let c = store.get(ids["c"]).await.unwrap().unwrap();
        assert_eq!(c.status, TaskStatus::Cancelled);
        assert!(c.error.unwrap().message.contains("dependency"));
        let settled = store
            .complete_workflow(OWNER, &[succeeded(ids["side"], json!(null))], None)
            .await
            .unwrap();
        assert_eq!(settled.finished.len(), 1);
        assert_eq!(settled.finished[0].status, WorkflowStatus::Failed);
        assert_eq!(
            store
                .get_workflow(id)
                .await
                .unwrap()
                .unwrap()
                .workflow
                .status,
            WorkflowStatus::Failed
        );
    }

    pub async fn continue_releases_dependents_of_a_failed_task(store: Arc<dyn TaskStore>) {
        let (_, ids) = dag(&store, OnFailure::Continue, &[("a", &[]), ("b", &["a"])]).await;
        claim_all(&store).await;
        let settled = store
            .complete_workflow(OWNER, &[dead(ids["a"])], None)
            .await
            .unwrap();
        assert_eq!(settled.released.len(), 1);
        assert!(settled.cancelled.is_empty());
        let parents = store.parents(&[ids["b"]]).await.unwrap();
        assert_eq!(parents[&ids["b"]]["a"]["status"], "dead");
        assert_eq!(parents[&ids["b"]]["a"]["error"]["message"], "boom");
    }

    pub async fn settling_twice_changes_nothing(store: Arc<dyn TaskStore>) {
        let (_, ids) = dag(
            &store,
            OnFailure::Continue,
            &[("a", &[]), ("b", &[]), ("join", &["a", "b"])],
        )
        .await;
        claim_all(&store).await;
        store
            .complete_workflow(OWNER, &[succeeded(ids["a"], json!(null))], None)
            .await
            .unwrap();
        // A second settling of `a` (a retried call) must not count it twice.
        let again = store.settle_workflow_tasks(&[ids["a"]]).await.unwrap();
        assert!(again.released.is_empty());
        assert_eq!(status(&store, ids["join"]).await, TaskStatus::Waiting);
        // A cancelled task settles through `settle_workflow_tasks`.
        store.cancel(ids["b"]).await.unwrap();
        let settled = store.settle_workflow_tasks(&[ids["b"]]).await.unwrap();
        assert_eq!(settled.released.len(), 1, "continue: join runs anyway");
    }

    pub async fn cancels_what_has_not_finished(store: Arc<dyn TaskStore>) {
        let (id, ids) = dag(
            &store,
            OnFailure::CancelDependents,
            &[("a", &[]), ("b", &["a"]), ("done", &[])],
        )
        .await;
        claim_all(&store).await;
        store
            .complete_workflow(OWNER, &[succeeded(ids["done"], json!(null))], None)
            .await
            .unwrap();
        let (workflow, cancelled) = store.cancel_workflow(id).await.unwrap().unwrap();
        assert_eq!(workflow.status, WorkflowStatus::Cancelled);
        let mut got: Vec<(Uuid, bool)> = cancelled.iter().map(|(t, r)| (t.id, *r)).collect();
        got.sort();
        let mut expected = vec![(ids["a"], true), (ids["b"], false)];
        expected.sort();
        assert_eq!(got, expected);
        assert_eq!(status(&store, ids["done"]).await, TaskStatus::Succeeded);
        // The running task's outcome comes too late to change anything.
        let late = store
            .complete_workflow(OWNER, &[succeeded(ids["a"], json!(null))], None)
            .await
            .unwrap();
        assert!(late.changed.is_empty());
        assert!(
            store
                .cancel_workflow(Uuid::now_v7())
                .await
                .unwrap()
                .is_none()
        );
    }

    pub async fn extends_a_running_workflow(store: Arc<dyn TaskStore>) {
        let (id, ids) = dag(
            &store,
            OnFailure::CancelDependents,
            &[("a", &[]), ("b", &["a"])],
        )
        .await;
        claim_all(&store).await;
        store
            .complete_workflow(OWNER, &[succeeded(ids["a"], json!(null))], None)
            .await
            .unwrap();
        // A child of `b` that also depends on the finished `a`: it waits for `b` only.
        let child = new_task("noop");
        let node = WorkflowNode {
            key: "child".into(),
            depends_on: vec![ids["a"], ids["b"]],
        };
        store
            .extend_workflow(id, std::slice::from_ref(&child), &[node])
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status(&store, child.id).await, TaskStatus::Waiting);
        claim_all(&store).await;
        let settled = store
            .complete_workflow(OWNER, &[succeeded(ids["b"], json!(null))], None)
            .await
            .unwrap();
        assert_eq!(settled.released.len(), 1);
        assert_eq!(settled.released[0].id, child.id);
        claim_all(&store).await;
        let settled = store
            .complete_workflow(OWNER, &[succeeded(child.id, json!(null))], None)
            .await
            .unwrap();
        assert_eq!(settled.finished.len(), 1);
        // A finished workflow takes no more tasks.
        let late = new_task("noop");
        let node = WorkflowNode {
            key: "late".into(),
            depends_on: vec![],
        };
        assert!(
            store
                .extend_workflow(id, &[late], &[node])
                .await
                .unwrap()
                .is_none()
        );
    }

    pub async fn lists_workflows_by_creator_with_a_cursor(store: Arc<dyn TaskStore>) {
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(dag(&store, OnFailure::Continue, &[("a", &[])]).await.0);
        }
        let mut other = workflow(OnFailure::Continue);
        other.created_by = Some("bob".into());
        store
            .insert_workflow(
                &other,
                &[new_task("noop")],
                &[WorkflowNode {
                    key: "a".into(),
                    depends_on: vec![],
                }],
            )
            .await
            .unwrap();
        let page = store
            .list_workflows(&WorkflowFilter {
                created_by: Some("alice".into()),
                before: None,
                limit: 2,
            })
            .await
            .unwrap();
        assert_eq!(
            page.iter().map(|w| w.id).collect::<Vec<_>>(),
            vec![ids[2], ids[1]]
        );
        let rest = store
            .list_workflows(&WorkflowFilter {
                created_by: Some("alice".into()),
                before: Some(ids[1]),
                limit: 2,
            })
            .await
            .unwrap();
        assert_eq!(rest.iter().map(|w| w.id).collect::<Vec<_>>(), vec![ids[0]]);
        let all = store
            .list_workflows(&WorkflowFilter {
                created_by: None,
                before: None,
                limit: 10,
            })
            .await
            .unwrap();
        assert_eq!(all.len(), 4);
    }

    pub async fn stores_progress_of_running_tasks_only(store: Arc<dyn TaskStore>) {
        let task = new_task("noop");
        store.insert(std::slice::from_ref(&task)).await.unwrap();
        let report = Progress::new(0.25, Some("a quarter".into())).unwrap();
        assert!(
            !store.set_progress(task.id, &report).await.unwrap(),
            "queued"
        );
        claim_all(&store).await;
        assert!(store.set_progress(task.id, &report).await.unwrap());
        let stored = store.get(task.id).await.unwrap().unwrap();
        let progress = stored.progress.unwrap();
        assert_eq!(progress.progress, 0.25);
        assert_eq!(progress.message.as_deref(), Some("a quarter"));
    }

    /// Why a task was cancelled: the dependency its error names, if any.
    async fn cancelled_by(store: &Arc<dyn TaskStore>, id: Uuid) -> Option<String> {
        let task = store.get(id).await.unwrap().unwrap();
        assert_eq!(task.status, TaskStatus::Cancelled);
        task.error?.details?["cancelled_by"]
            .as_str()
            .map(str::to_owned)
    }

    fn sorted(mut ids: Vec<Uuid>) -> Vec<Uuid> {
        ids.sort();
        ids
    }

    pub async fn retrying_a_task_revives_the_dependents_its_end_cancelled(
        store: Arc<dyn TaskStore>,
    ) {
        // a → b → c; (a, other) → join; a → manual (cancelled by hand first); side alone.
        let (id, ids) = dag(
            &store,
            OnFailure::CancelDependents,
            &[
                ("a", &[]),
                ("b", &["a"]),
                ("c", &["b"]),
                ("other", &[]),
                ("join", &["a", "other"]),
                ("manual", &["a"]),
                ("side", &[]),
            ],
        )
        .await;
        claim_all(&store).await;
        store.cancel(ids["manual"]).await.unwrap();
        store.settle_workflow_tasks(&[ids["manual"]]).await.unwrap();
        let settled = store
            .complete_workflow(OWNER, &[dead(ids["a"])], None)
            .await
            .unwrap();
        assert_eq!(
            sorted(settled.cancelled.iter().map(|t| t.id).collect()),
            sorted(vec![ids["b"], ids["c"], ids["join"]])
        );
        // Each records the dependency whose end cancelled it; the one cancelled by hand none.
        assert_eq!(
            cancelled_by(&store, ids["b"]).await,
            Some(ids["a"].to_string())
        );
        assert_eq!(
            cancelled_by(&store, ids["c"]).await,
            Some(ids["b"].to_string())
        );
        assert_eq!(cancelled_by(&store, ids["manual"]).await, None);
        // A cancelled task whose dependency failed is not retried by itself: it would wait for
        // ever. Its dependency's retry revives it.
        assert!(matches!(
            store.retry_workflow_task(ids["c"]).await.unwrap().outcome,
            RetryOutcome::NotRetryable(_)
        ));
        store
            .complete_workflow(OWNER, &[dead(ids["other"])], None)
            .await
            .unwrap();
        let settled = store
            .complete_workflow(OWNER, &[succeeded(ids["side"], json!(null))], None)
            .await
            .unwrap();
        assert_eq!(settled.finished[0].status, WorkflowStatus::Failed);

        let retried = store.retry_workflow_task(ids["a"]).await.unwrap();
        let RetryOutcome::Requeued(a) = retried.outcome else {
            panic!("a was not requeued: {:?}", retried.outcome);
        };
        assert_eq!(a.status, TaskStatus::Queued);
        // b and c wait again; join stays cancelled (`other` is still dead), and so does the
        // task cancelled by hand.
        assert_eq!(
            sorted(retried.revived.iter().map(|t| t.id).collect()),
            sorted(vec![ids["b"], ids["c"]])
        );
        assert!(
            retried
                .revived
                .iter()
                .all(|t| t.status == TaskStatus::Waiting && t.error.is_none())
        );
        assert_eq!(status(&store, ids["join"]).await, TaskStatus::Cancelled);
        assert_eq!(status(&store, ids["manual"]).await, TaskStatus::Cancelled);
        let reopened = retried.reopened.expect("the failed workflow runs again");
        assert_eq!(reopened.status, WorkflowStatus::Running);
        assert!(reopened.finished_at.is_none());

        // They run in order again when their dependencies succeed.
        assert_eq!(
            claim_all(&store)
                .await
                .iter()
                .map(|t| t.id)
                .collect::<Vec<_>>(),
            vec![ids["a"]]
        );
        let settled = store
            .complete_workflow(OWNER, &[succeeded(ids["a"], json!(null))], None)
            .await
            .unwrap();
        assert_eq!(
            settled.released.iter().map(|t| t.id).collect::<Vec<_>>(),
            vec![ids["b"]]
        );
        claim_all(&store).await;
        let settled = store
            .complete_workflow(OWNER, &[succeeded(ids["b"], json!(null))], None)
            .await
            .unwrap();
        assert_eq!(
            settled.released.iter().map(|t| t.id).collect::<Vec<_>>(),
            vec![ids["c"]]
        );
        claim_all(&store).await;
        let settled = store
            .complete_workflow(OWNER, &[succeeded(ids["c"], json!(null))], None)
            .await
            .unwrap();
        assert_eq!(settled.finished[0].status, WorkflowStatus::Failed);

        // Retrying the other dead dependency revives the join, which now waits for it alone.
        let retried = store.retry_workflow_task(ids["other"]).await.unwrap();
        assert_eq!(
            retried.revived.iter().map(|t| t.id).collect::<Vec<_>>(),
            vec![ids["join"]]
        );
        assert!(retried.reopened.is_some());
        claim_all(&store).await;
        let settled = store
            .complete_workflow(OWNER, &[succeeded(ids["other"], json!(null))], None)
            .await
            .unwrap();
        assert_eq!(
            settled.released.iter().map(|t| t.id).collect::<Vec<_>>(),
            vec![ids["join"]]
        );
        // The task cancelled by hand may be retried now that its dependency succeeded.
        let retried = store.retry_workflow_task(ids["manual"]).await.unwrap();
        let RetryOutcome::Requeued(manual) = retried.outcome else {
            panic!("manual was not requeued: {:?}", retried.outcome);
        };
        assert_eq!(manual.status, TaskStatus::Queued);
        claim_all(&store).await;
        let settled = store
            .complete_workflow(
                OWNER,
                &[
                    succeeded(ids["join"], json!(null)),
                    succeeded(ids["manual"], json!(null)),
                ],
                None,
            )
            .await
            .unwrap();
        assert_eq!(settled.finished.len(), 1);
        assert_eq!(settled.finished[0].status, WorkflowStatus::Succeeded);
        let detail = store.get_workflow(id).await.unwrap().unwrap();
        assert!(
            detail
                .tasks
                .iter()
                .all(|t| t.status == TaskStatus::Succeeded)
        );
    }

    pub async fn a_retried_cancelled_task_waits_for_unfinished_dependencies(
        store: Arc<dyn TaskStore>,
    ) {
        let (id, ids) = dag(
            &store,
            OnFailure::CancelDependents,
            &[("a", &[]), ("b", &["a"]), ("c", &["b"])],
        )
        .await;
        claim_all(&store).await;
        // Cancelled by hand while `a` runs: `c` is cancelled because of it.
        store.cancel(ids["b"]).await.unwrap();
        store.settle_workflow_tasks(&[ids["b"]]).await.unwrap();
        assert_eq!(
            cancelled_by(&store, ids["c"]).await,
            Some(ids["b"].to_string())
        );
        let retried = store.retry_workflow_task(ids["b"]).await.unwrap();
        let RetryOutcome::Requeued(b) = retried.outcome else {
            panic!("b was not requeued: {:?}", retried.outcome);
        };
        assert_eq!(b.status, TaskStatus::Waiting, "a still runs");
        assert_eq!(
            retried.revived.iter().map(|t| t.id).collect::<Vec<_>>(),
            vec![ids["c"]]
        );
        assert!(retried.reopened.is_none(), "the workflow never stopped");
        let settled = store
            .complete_workflow(OWNER, &[succeeded(ids["a"], json!(null))], None)
            .await
            .unwrap();
        assert_eq!(
            settled.released.iter().map(|t| t.id).collect::<Vec<_>>(),
            vec![ids["b"]]
        );
        // A cancelled workflow's tasks stay as its cancel left them.
        store.cancel_workflow(id).await.unwrap();
        assert!(matches!(
            store.retry_workflow_task(ids["b"]).await.unwrap().outcome,
            RetryOutcome::NotRetryable(_)
        ));
        // A task outside any workflow is retried as `retry` does.
        let plain = new_task("noop");
        store.insert(std::slice::from_ref(&plain)).await.unwrap();
        assert!(matches!(
            store.retry_workflow_task(plain.id).await.unwrap().outcome,
            RetryOutcome::NotRetryable(_)
        ));
        assert!(matches!(
            store
                .retry_workflow_task(Uuid::now_v7())
                .await
                .unwrap()
                .outcome,
            RetryOutcome::NotFound
        ));
    }

    pub async fn a_retried_dependency_under_continue_counts_once(store: Arc<dyn TaskStore>) {
        let (_, ids) = dag(
            &store,
            OnFailure::Continue,
            &[("a", &[]), ("b", &[]), ("join", &["a", "b"])],
        )
        .await;
        claim_all(&store).await;
        // `a` dies: under `continue` the join counts it and waits for `b` alone.
        store
            .complete_workflow(OWNER, &[dead(ids["a"])], None)
            .await
            .unwrap();
        // Retried by hand, `a` succeeds this time: the join counted its end already.
        let retried = store.retry_workflow_task(ids["a"]).await.unwrap();
        assert!(matches!(retried.outcome, RetryOutcome::Requeued(_)));
        let claimed = claim_all(&store).await;
        assert_eq!(
            claimed.iter().map(|t| t.id).collect::<Vec<_>>(),
            vec![ids["a"]]
        );
        let settled = store
            .complete_workflow(OWNER, &[succeeded(ids["a"], json!(1))], None)
            .await
            .unwrap();
        assert!(settled.released.is_empty(), "b has not finished");
        assert_eq!(status(&store, ids["join"]).await, TaskStatus::Waiting);
        let settled = store
            .complete_workflow(OWNER, &[succeeded(ids["b"], json!(2))], None)
            .await
            .unwrap();
        assert_eq!(
            settled.released.iter().map(|t| t.id).collect::<Vec<_>>(),
            vec![ids["join"]]
        );
    }

    /// Tasks with dependencies read as `waiting` wherever tasks are read before any of their
    /// dependencies ran (PostgreSQL keeps them out of `tasks` until then): each as the
    /// workflow's creation returned it, in the counts and in the list; and a running workflow
    /// takes children of them.
    pub async fn waiting_tasks_read_alike_everywhere(store: Arc<dyn TaskStore>) {
        let tasks: Vec<NewTask> = (0..3).map(|_| new_task("noop")).collect();
        let nodes: Vec<WorkflowNode> = ["a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(i, key)| WorkflowNode {
                key: key.to_string(),
                depends_on: if i == 0 {
                    vec![]
                } else {
                    vec![tasks[i - 1].id]
                },
            })
            .collect();
        let flow = workflow(OnFailure::CancelDependents);
        let (_, created) = store.insert_workflow(&flow, &tasks, &nodes).await.unwrap();
        assert_eq!(
            created.iter().map(|t| t.status).collect::<Vec<_>>(),
            vec![TaskStatus::Queued, TaskStatus::Waiting, TaskStatus::Waiting]
        );
        let counts = store.counts().await.unwrap();
        assert_eq!(counts[&("default".to_string(), TaskStatus::Waiting)], 2);
        assert_eq!(counts[&("default".to_string(), TaskStatus::Queued)], 1);
        let c = store.get(created[2].id).await.unwrap().unwrap();
        assert_eq!(c.status, TaskStatus::Waiting);
        assert_eq!(c.created_at, created[2].created_at);
        assert_eq!(c.run_at, created[2].run_at);
        assert_eq!(c.workflow_id, Some(flow.id));
        assert_eq!(c.workflow_key.as_deref(), Some("c"));
        assert_eq!(c.created_by.as_deref(), Some("alice"));
        let waiting = store
            .list(&TaskFilter {
                status: Some(TaskStatus::Waiting),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        let mut listed: Vec<Uuid> = waiting.iter().map(|t| t.id).collect();
        listed.sort();
        let mut expected = vec![tasks[1].id, tasks[2].id];
        expected.sort();
        assert_eq!(listed, expected);
        // A child of the last one, added before anything ran, runs after it.
        let child = new_task("noop");
        let node = WorkflowNode {
            key: "child".into(),
            depends_on: vec![tasks[2].id],
        };
        store
            .extend_workflow(flow.id, std::slice::from_ref(&child), &[node])
            .await
            .unwrap()
            .unwrap();
        for (i, task) in tasks.iter().enumerate() {
            let claimed = claim_all(&store).await;
            assert_eq!(claimed.len(), 1, "step {i}");
            assert_eq!(claimed[0].id, task.id);
            let settled = store
                .complete_workflow(OWNER, &[succeeded(task.id, json!(null))], None)
                .await
                .unwrap();
            assert_eq!(settled.released.len(), 1, "step {i}");
        }
        assert_eq!(status(&store, child.id).await, TaskStatus::Queued);
    }

    /// A node with free slots that settles a dependency starts the dependents it releases that
    /// its claim would take, up to its free slots: written `running`, leased to it, never
    /// claimed again; it completes them as claimed ones. The others (another type, a
    /// concurrency key, due later, beyond the slots) are queued for any claim.
    pub async fn released_dependents_start_for_the_node_with_free_slots(store: Arc<dyn TaskStore>) {
        const FAN: usize = 1_600;
        let (mut tasks, nodes) = fan_out(FAN);
        tasks[1].task_type = "other".into();
        tasks[2].concurrency_key = Some("deploys".into());
        tasks[2].concurrency_limit = Some(1);
        tasks[3].run_at = Some(Utc::now() + chrono::Duration::hours(1));
        let (root, join) = (tasks[0].id, tasks[FAN + 1].id);
        let flow = workflow(OnFailure::CancelDependents);
        store.insert_workflow(&flow, &tasks, &nodes).await.unwrap();
        assert_eq!(claim_all(&store).await.len(), 1);
        let claim = ClaimRequest {
            owner: OWNER.into(),
            types: vec!["noop".into()],
            limit: 1_000,
            lease: Duration::from_secs(30),
            share: ShareLimit::default(),
        };
        // 100 slots free, each taken as a task starts.
        let free = std::sync::atomic::AtomicU32::new(100);
        let slot = || {
            free.fetch_update(
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
                |n| n.checked_sub(1),
            )
            .is_ok()
        };
        let start = StartRequest {
            claim: claim.clone(),
            slot: &slot,
        };
        let settled = store
            .complete_workflow(OWNER, &[succeeded(root, json!(null))], Some(&start))
            .await
            .unwrap();
        let mut started = settled.started.clone();
        let mut released = settled.released.clone();
        assert_eq!(started.len(), 100, "as many as the free slots");
        // The rest of the fan, written later (a store writing it in pieces), with slots
        // enough: at most the claim's limit at once.
        let start = StartRequest {
            claim,
            slot: &|| true,
        };
        while let Some(more) = store.release_ready(Some(&start)).await.unwrap() {
            assert!(more.started.len() <= 1_000);
            started.extend(more.started);
            released.extend(more.released);
        }
        assert_eq!(started.len() + released.len(), FAN);
        let queued: Vec<Uuid> = released
            .iter()
            .filter(|t| t.status == TaskStatus::Queued)
            .map(|t| t.id)
            .collect();
        assert!(queued.contains(&tasks[1].id), "another type is queued");
        assert!(queued.contains(&tasks[2].id), "a concurrency key is queued");
        let later = released.iter().find(|t| t.id == tasks[3].id).unwrap();
        assert_eq!(later.status, TaskStatus::Scheduled, "due later");
        for task in &started {
            assert_eq!(task.status, TaskStatus::Running);
            assert_eq!(task.attempts, 1);
            assert!(task.started_at.is_some());
            let stored = store.get(task.id).await.unwrap().unwrap();
            assert_eq!(stored.status, TaskStatus::Running, "as returned");
            assert_eq!(stored.attempts, 1);
            assert_eq!(stored.started_at, task.started_at);
        }
        // Leased to the node: its heartbeats hold them.
        let ids: Vec<Uuid> = started.iter().map(|t| t.id).collect();
        let held = store
            .heartbeat(OWNER, &ids, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(held.len(), ids.len());
        // Never claimed again; the queued ones are.
        let mut claimed = Vec::new();
        loop {
            let batch = claim_all(&store).await;
            if batch.is_empty() {
                break;
            }
            claimed.extend(batch.into_iter().map(|t| t.id));
        }
        assert!(claimed.iter().all(|id| !ids.contains(id)));
        assert_eq!(
            claimed.len(),
            released.len() - 2,
            "all but another type's and the one due later"
        );
        // Completed as claimed ones; the join waits for those two.
        let outcomes: Vec<Completion> = ids
            .iter()
            .chain(&claimed)
            .map(|id| succeeded(*id, json!(null)))
            .collect();
        let settled = store
            .complete_workflow(OWNER, &outcomes, None)
            .await
            .unwrap();
        assert_eq!(settled.changed.len(), outcomes.len());
        assert_eq!(status(&store, join).await, TaskStatus::Waiting);
    }

    /// A root with more dependents than one stored piece holds (1,000) releases them all when
    /// it succeeds, in its completion's transaction, each as it was created; the join of all
    /// of them runs last.
    pub async fn a_root_releases_a_wide_fan_out(store: Arc<dyn TaskStore>) {
        // Three chunks of deferred tasks, on a store that defers them.
        const FAN: usize = 2_500;
        let (tasks, nodes) = fan_out(FAN);
        let (root, join) = (tasks[0].id, tasks[FAN + 1].id);
        let fan: Vec<Uuid> = tasks[1..=FAN].iter().map(|t| t.id).collect();
        let flow = workflow(OnFailure::CancelDependents);
        let (_, created) = store.insert_workflow(&flow, &tasks, &nodes).await.unwrap();
        let handed: Arc<std::sync::Mutex<Vec<Task>>> = Arc::default();
        let to = handed.clone();
        store.on_released(Arc::new(move |tasks| to.lock().unwrap().extend(tasks)));
        let claimed = claim_all(&store).await;
        assert_eq!(claimed.len(), 1);
        let settled = store
            .complete_workflow(OWNER, &[succeeded(root, json!({"built": true}))], None)
            .await
            .unwrap();
        // Released in the root's transaction: all of the fan, or (a store writing it in
        // pieces) its first part, the rest left for `release_ready`.
        let mut released = settled.released.clone();
        assert_eq!(released.len() < FAN, settled.ready);
        assert!(!released.is_empty());
        // A piece left for later is written by `release_ready` (any node's release loop)...
        let later = store.release_ready(None).await.unwrap();
        assert_eq!(later.is_some(), settled.ready);
        released.extend(later.map(|more| more.released).unwrap_or_default());
        // ... and a read of a task still left writes it (with the rest of its workflow), and
        // hands the runnable ones over to be announced.
        assert_eq!(status(&store, fan[FAN - 1]).await, TaskStatus::Queued);
        released.extend(handed.lock().unwrap().drain(..));
        assert!(store.release_ready(None).await.unwrap().is_none());
        assert!(released.iter().all(|t| t.status == TaskStatus::Queued));
        let mut released: Vec<Uuid> = released.iter().map(|t| t.id).collect();
        released.sort();
        let mut expected = fan.clone();
        expected.sort();
        assert_eq!(released, expected);
        let last = store.get(fan[FAN - 1]).await.unwrap().unwrap();
        assert_eq!(last.created_at, created[FAN].created_at);
        assert_eq!(
            last.workflow_key.as_deref(),
            Some(format!("t{FAN}").as_str())
        );
        assert_eq!(status(&store, join).await, TaskStatus::Waiting);
        let parents = store.parents(&[fan[0]]).await.unwrap();
        assert_eq!(parents[&fan[0]]["t0"]["result"], json!({"built": true}));
        let mut done = 0;
        while done < FAN {
            let batch = claim_all(&store).await;
            assert!(!batch.is_empty(), "{done} of the fan ran");
            assert!(batch.iter().all(|t| t.id != join));
            let outcomes: Vec<Completion> =
                batch.iter().map(|t| succeeded(t.id, json!(null))).collect();
            store
                .complete_workflow(OWNER, &outcomes, None)
                .await
                .unwrap();
            done += batch.len();
        }
        let last = claim_all(&store).await;
        assert_eq!(last.iter().map(|t| t.id).collect::<Vec<_>>(), vec![join]);
        let settled = store
            .complete_workflow(OWNER, &[succeeded(join, json!(null))], None)
            .await
            .unwrap();
        assert_eq!(settled.finished.len(), 1);
        assert_eq!(settled.finished[0].status, WorkflowStatus::Succeeded);
    }

    /// The join of a wide fan-out runs once every task of the fan succeeded, not before, when
    /// the fan's first completion writes it: whether no settling reached it before (it waits
    /// for the fan alone) or the root's settling released it (it waits for the root too).
    pub async fn a_fan_in_waits_for_every_one_of_a_wide_fan(store: Arc<dyn TaskStore>) {
        const FAN: usize = 1_200;
        for join_waits_for_root in [false, true] {
            let (tasks, mut nodes) = fan_out(FAN);
            let (root, join) = (tasks[0].id, tasks[FAN + 1].id);
            if join_waits_for_root {
                nodes[FAN + 1].depends_on.push(root);
            }
            let flow = workflow(OnFailure::CancelDependents);
            store.insert_workflow(&flow, &tasks, &nodes).await.unwrap();
            assert_eq!(claim_all(&store).await.len(), 1);
            store
                .complete_workflow(OWNER, &[succeeded(root, json!(null))], None)
                .await
                .unwrap();
            let mut done = 0;
            loop {
                // What a settling left for later is written now, as a node's release loop
                // would: after the fan's first completion wrote the join (with what it waits
                // for read when the root released it).
                if done > 0 {
                    while store.release_ready(None).await.unwrap().is_some() {}
                }
                let batch = claim_all(&store).await;
                if done == FAN {
                    assert_eq!(batch.iter().map(|t| t.id).collect::<Vec<_>>(), vec![join]);
                    break;
                }
                assert!(!batch.is_empty(), "{done} of the fan ran");
                assert!(
                    batch.iter().all(|t| t.id != join),
                    "the join ran after {done}"
                );
                let outcomes: Vec<Completion> =
                    batch.iter().map(|t| succeeded(t.id, json!(null))).collect();
                let settled = store
                    .complete_workflow(OWNER, &outcomes, None)
                    .await
                    .unwrap();
                done += batch.len();
                let released: Vec<Uuid> = settled.released.iter().map(|t| t.id).collect();
                assert_eq!(released.contains(&join), done == FAN, "after {done}");
            }
        }
    }

    /// A task cancelled by hand before its dependencies ran cancels its own dependents when
    /// settled; the rest of the workflow runs on.
    pub async fn a_waiting_task_cancelled_by_hand_cancels_its_dependents(
        store: Arc<dyn TaskStore>,
    ) {
        let (id, ids) = dag(
            &store,
            OnFailure::CancelDependents,
            &[("a", &[]), ("b", &["a"]), ("c", &["b"]), ("d", &["a"])],
        )
        .await;
        match store.cancel(ids["b"]).await.unwrap() {
            mcp_core::store::CancelOutcome::Cancelled { task, was_running } => {
                assert_eq!(task.id, ids["b"]);
                assert!(!was_running);
            }
            other => panic!("b was not cancelled: {other:?}"),
        }
        let settled = store.settle_workflow_tasks(&[ids["b"]]).await.unwrap();
        assert_eq!(
            settled.cancelled.iter().map(|t| t.id).collect::<Vec<_>>(),
            vec![ids["c"]]
        );
        claim_all(&store).await;
        let settled = store
            .complete_workflow(OWNER, &[succeeded(ids["a"], json!(null))], None)
            .await
            .unwrap();
        assert_eq!(
            settled.released.iter().map(|t| t.id).collect::<Vec<_>>(),
            vec![ids["d"]]
        );
        claim_all(&store).await;
        let settled = store
            .complete_workflow(OWNER, &[succeeded(ids["d"], json!(null))], None)
            .await
            .unwrap();
        assert_eq!(settled.finished.len(), 1);
        assert_eq!(settled.finished[0].status, WorkflowStatus::Failed);
        let detail = store.get_workflow(id).await.unwrap().unwrap();
        assert_eq!(detail.tasks.len(), 4);
    }

    /// A fan-out wider than one chunk on a running node: the root's transaction writes the first
    /// chunk of its dependents and releases the rest, which the node's release loop writes at once
    /// (not at its next sweep: the rescue interval here outlasts the wait), and the join runs last.
    pub async fn a_node_writes_the_released_rest_of_a_wide_fan_out_at_once(
        store: Arc<dyn TaskStore>,
    ) {
        use mcp_core::{HandlerRegistry, Orchestrator, OrchestratorConfig};
        const FAN: usize = 2_500;
        let (tasks, nodes) = fan_out(FAN);
        let join = tasks[FAN + 1].id;
        let flow = workflow(OnFailure::CancelDependents);
        let shared = store.clone();
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
        // Polled through the list, which reads workflows only: a read of the workflow's tasks
        // would write its deferred ones itself.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let listed = shared
                .list_workflows(&WorkflowFilter {
                    limit: 10,
                    ..WorkflowFilter::default()
                })
                .await
                .expect("list workflows");
            let this = listed.iter().find(|w| w.id == flow.id).expect("listed");
            if this.status != WorkflowStatus::Running {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the workflow did not finish within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let detail = shared
            .get_workflow(flow.id)
            .await
            .expect("read the workflow")
            .expect("the workflow");
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
    }
}
