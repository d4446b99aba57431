//! One conformance suite for both task stores: every case runs against SQLite (a fresh file) and
//! PostgreSQL (a fresh schema in `MCP_TEST_DATABASE_URL`, dropped afterwards). With `CI` set (to any value) an
//! unreachable PostgreSQL fails the suite instead of skipping it.

#[macro_use]
mod common;

use chrono::{Duration as Span, Utc};
use mcp_core::store::ShareLimit;
use mcp_core::task::{CreateTask, TaskDefaults};
use mcp_core::{
    CancelOutcome, ClaimRequest, Completion, NewTask, Outcome, RetryOutcome, TaskError, TaskFilter,
    TaskStatus, TaskStore,
};
use serde_json::json;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

conformance!(
    round_trips_every_field,
    claims_by_priority_then_run_at_then_creation,
    delayed_tasks_wait_for_their_time,
    idempotency_key_returns_the_first_task,
    inserts_large_batches_in_order_with_keys_anywhere,
    never_runs_more_than_the_concurrency_limit,
    records_success_retry_and_death,
    ignores_outcomes_for_tasks_it_no_longer_owns,
    records_successes_without_a_result_only_under_its_lease,
    heartbeat_extends_leases_and_reports_lost_ones,
    rescues_tasks_whose_lease_expired,
    release_requeues_without_spending_an_attempt,
    cancels_only_unfinished_tasks,
    retry_requeues_dead_tasks_with_one_more_attempt,
    lists_with_filters_and_cursor,
    prunes_old_finished_tasks,
    reports_the_next_due_task,
    concurrent_claimers_never_share_a_task,
    only_claims_types_it_serves,
    never_runs_more_of_one_share_key_than_its_cap,
    saturated_share_keys_do_not_hold_back_the_tasks_behind_them,
    keys_of_a_share_live_in_its_namespace_and_read_as_given,
);

mod cases {
    use super::*;

    const OWNER: &str = "node-a";

    pub fn new_task(task_type: &str) -> NewTask {
        CreateTask {
            task_type: task_type.into(),
            ..Default::default()
        }
        .validate(&TaskDefaults::default(), Utc::now())
        .unwrap()
    }

    fn claim_request(limit: u32) -> ClaimRequest {
        ClaimRequest {
            owner: OWNER.into(),
            types: vec!["noop".into(), "echo".into()],
            limit,
            lease: Duration::from_secs(30),
            share: ShareLimit::default(),
        }
    }

    /// A task of a `user` or `service` principal, as the task service stores it.
    fn tenant_task(owner: &str, priority: i32) -> NewTask {
        let mut t = new_task("noop");
        t.priority = priority;
        t.created_by = Some(owner.into());
        t.share_key = Some(owner.into());
        t
    }

    fn shared_claim(limit: u32, cap: u32, running: &[(&str, u32)]) -> ClaimRequest {
        ClaimRequest {
            share: ShareLimit {
                cap,
                running: running.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect(),
            },
            ..claim_request(limit)
        }
    }

    async fn insert(store: &Arc<dyn TaskStore>, tasks: Vec<NewTask>) -> Vec<uuid::Uuid> {
        store
            .insert(&tasks)
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.task.id)
            .collect()
    }

    fn failure(message: &str) -> TaskError {
        TaskError {
            message: message.into(),
            attempt: 1,
            details: None,
        }
    }

    pub async fn round_trips_every_field(store: Arc<dyn TaskStore>) {
        let mut task = new_task("echo");
        task.queue = "q1".into();
        task.priority = -4;
        task.payload = json!({"text": "héllo", "n": [1, 2.5, null], "nested": {"ok": true}});
        task.max_attempts = 7;
        task.timeout_ms = 1234;
        task.idempotency_key = Some("idem-1".into());
        task.concurrency_key = Some("conc".into());
        task.concurrency_limit = Some(3);
        task.correlation_id = Some("req-1".into());
        task.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
        let inserted = store.insert(std::slice::from_ref(&task)).await.unwrap();
        assert!(inserted[0].created);
        let stored = store.get(task.id).await.unwrap().unwrap();
        assert_eq!(stored, inserted[0].task);
        assert_eq!(stored.task_type, "echo");
        assert_eq!(stored.queue, "q1");
        assert_eq!(stored.priority, -4);
        assert_eq!(stored.payload, task.payload);
        assert_eq!(stored.status, TaskStatus::Queued);
        assert_eq!(stored.attempts, 0);
        assert_eq!(stored.max_attempts, 7);
        assert_eq!(stored.backoff, task.backoff);
        assert_eq!(stored.timeout_ms, 1234);
        assert_eq!(stored.idempotency_key.as_deref(), Some("idem-1"));
        assert_eq!(stored.concurrency_key.as_deref(), Some("conc"));
        assert_eq!(stored.concurrency_limit, Some(3));
        assert_eq!(stored.correlation_id.as_deref(), Some("req-1"));
        assert_eq!(stored.traceparent, task.traceparent);
        assert!(stored.result.is_none() && stored.error.is_none() && stored.started_at.is_none());
        let claimed = store.claim(&claim_request(1)).await.unwrap();
        assert_eq!(
            claimed[0].traceparent, task.traceparent,
            "a claim reads it too"
        );
        assert!(store.get(uuid::Uuid::now_v7()).await.unwrap().is_none());
    }

    pub async fn claims_by_priority_then_run_at_then_creation(store: Arc<dyn TaskStore>) {
        let past = Utc::now() - Span::seconds(10);
        let mut low = new_task("noop");
        low.priority = -1;
        let mut high = new_task("noop");
        high.priority = 5;
        let plain_first = new_task("noop");
        let plain_second = new_task("noop");
        let mut plain_earlier = new_task("noop");
        plain_earlier.run_at = Some(past);
        let ids = insert(
            &store,
            vec![low, plain_first, high, plain_second, plain_earlier],
        )
        .await;
        let mut order = Vec::new();
        for _ in 0..5 {
            let claimed = store.claim(&claim_request(1)).await.unwrap();
            assert_eq!(claimed.len(), 1);
            assert_eq!(claimed[0].status, TaskStatus::Running);
            assert_eq!(claimed[0].attempts, 1);
            assert!(claimed[0].started_at.is_some());
            order.push(claimed[0].id);
        }
        assert_eq!(order, vec![ids[2], ids[4], ids[1], ids[3], ids[0]]);
        assert!(store.claim(&claim_request(10)).await.unwrap().is_empty());
    }

    pub async fn delayed_tasks_wait_for_their_time(store: Arc<dyn TaskStore>) {
        let mut later = new_task("noop");
        later.run_at = Some(Utc::now() + Span::hours(1));
        let mut soon = new_task("noop");
        // Two seconds: room for the first claim on a loaded machine, before `soon` is due.
        let due = Utc::now() + Span::seconds(2);
        soon.run_at = Some(due);
        let ids = insert(&store, vec![later, soon]).await;
        assert_eq!(
            store.get(ids[0]).await.unwrap().unwrap().status,
            TaskStatus::Scheduled
        );
        // Whatever a claim returns, it returns at or after `soon`'s time, and only `soon`.
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let mut claimed = store.claim(&claim_request(10)).await.unwrap();
        while claimed.is_empty() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            claimed = store.claim(&claim_request(10)).await.unwrap();
        }
        assert!(Utc::now() >= due, "claimed before its time");
        assert_eq!(
            claimed.iter().map(|t| t.id).collect::<Vec<_>>(),
            vec![ids[1]]
        );
    }

    pub async fn idempotency_key_returns_the_first_task(store: Arc<dyn TaskStore>) {
        let mut first = new_task("noop");
        first.idempotency_key = Some("same".into());
        let mut again = new_task("echo");
        again.idempotency_key = Some("same".into());
        let inserted = store.insert(&[first.clone()]).await.unwrap();
        assert!(inserted[0].created);
        let second = store.insert(&[again.clone()]).await.unwrap();
        assert!(!second[0].created);
        assert_eq!(second[0].task.id, first.id);
        assert_eq!(second[0].task.task_type, "noop");
        // Within one batch too: the first occurrence wins.
        let mut a = new_task("noop");
        a.idempotency_key = Some("batch".into());
        let mut b = new_task("noop");
        b.idempotency_key = Some("batch".into());
        let plain = new_task("noop");
        let batch = store.insert(&[a.clone(), plain.clone(), b]).await.unwrap();
        assert!(batch[0].created && batch[1].created && !batch[2].created);
        assert_eq!(batch[2].task.id, a.id);
        assert_eq!(batch[1].task.id, plain.id);
    }

    /// A batch larger than any one statement a store may cut it into (SQLite: chunks of fixed
    /// sizes), with keyed tasks in different chunks, a key repeated across chunks and one
    /// already stored: every task comes back in input order, each key's first task wins.
    pub async fn inserts_large_batches_in_order_with_keys_anywhere(store: Arc<dyn TaskStore>) {
        let mut stored = new_task("noop");
        stored.idempotency_key = Some("old".into());
        store.insert(&[stored.clone()]).await.unwrap();
        let mut batch: Vec<NewTask> = (0..1_234).map(|_| new_task("noop")).collect();
        batch[3].idempotency_key = Some("k".into());
        batch[700].idempotency_key = Some("k".into());
        batch[1_200].idempotency_key = Some("old".into());
        batch[1_233].idempotency_key = Some("last".into());
        batch[9].run_at = Some(Utc::now() + Span::hours(1));
        let inserted = store.insert(&batch).await.unwrap();
        assert_eq!(inserted.len(), batch.len());
        for (i, (got, sent)) in inserted.iter().zip(&batch).enumerate() {
            match i {
                700 => assert!(!got.created && got.task.id == batch[3].id, "{i}"),
                1_200 => assert!(!got.created && got.task.id == stored.id, "{i}"),
                _ => assert!(got.created && got.task.id == sent.id, "{i}"),
            }
        }
        assert_eq!(inserted[9].task.status, TaskStatus::Scheduled);
        assert_eq!(inserted[10].task.status, TaskStatus::Queued);
        let read = store.get(batch[1_233].id).await.unwrap().unwrap();
        assert_eq!(read.idempotency_key.as_deref(), Some("last"));
        assert_eq!(read.payload, batch[1_233].payload);
        assert_eq!(store.pending().await.unwrap(), 1 + 1_234 - 2);
    }

    pub async fn never_runs_more_than_the_concurrency_limit(store: Arc<dyn TaskStore>) {
        let keyed = |limit| {
            let mut t = new_task("noop");
            t.concurrency_key = Some("k".into());
            t.concurrency_limit = Some(limit);
            t
        };
        insert(&store, vec![keyed(2), keyed(2), keyed(2), new_task("noop")]).await;
        let claimed = store.claim(&claim_request(10)).await.unwrap();
        assert_eq!(claimed.len(), 3, "two keyed tasks and the free one");
        assert_eq!(
            claimed
                .iter()
                .filter(|t| t.concurrency_key.is_some())
                .count(),
            2
        );
        assert!(store.claim(&claim_request(10)).await.unwrap().is_empty());
        let one = claimed
            .iter()
            .find(|t| t.concurrency_key.is_some())
            .unwrap();
        store
            .complete(
                OWNER,
                &[Completion {
                    id: one.id,
                    outcome: Outcome::Succeeded(json!(null)),
                }],
            )
            .await
            .unwrap();
        let next = store.claim(&claim_request(10)).await.unwrap();
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].concurrency_key.as_deref(), Some("k"));
    }

    pub async fn never_runs_more_of_one_share_key_than_its_cap(store: Arc<dyn TaskStore>) {
        let mut admin = new_task("noop");
        admin.created_by = Some("root".into());
        insert(
            &store,
            vec![
                tenant_task("alice", 9),
                tenant_task("alice", 9),
                tenant_task("alice", 9),
                admin,
            ],
        )
        .await;
        // One batch larger than the cap: alice gets two, the admin's task the third slot.
        let claimed = store.claim(&shared_claim(10, 2, &[])).await.unwrap();
        let alices = claimed
            .iter()
            .filter(|t| t.share_key.as_deref() == Some("alice"))
            .count();
        assert_eq!((claimed.len(), alices), (3, 2));
        // At her cap, her last task waits; with one of hers done, it may start.
        let full = shared_claim(10, 2, &[("alice", 2)]);
        assert!(store.claim(&full).await.unwrap().is_empty());
        let next = store
            .claim(&shared_claim(10, 2, &[("alice", 1)]))
            .await
            .unwrap();
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].share_key.as_deref(), Some("alice"));
    }

    pub async fn saturated_share_keys_do_not_hold_back_the_tasks_behind_them(
        store: Arc<dyn TaskStore>,
    ) {
        let mut tasks: Vec<NewTask> = (0..5).map(|_| tenant_task("mallory", 10)).collect();
        let admin = new_task("noop");
        tasks.push(admin.clone());
        insert(&store, tasks).await;
        // A claim of one, behind five of mallory's higher-priority tasks: on the fast path
        // (fits) and on the admitting path (does not fit) alike, the admin's task is next.
        let fast = store
            .claim(&shared_claim(1, 2, &[("mallory", 2)]))
            .await
            .unwrap();
        assert_eq!(
            fast.iter().map(|t| t.id).collect::<Vec<_>>(),
            vec![admin.id]
        );
        let mut late = new_task("noop");
        late.priority = -1;
        insert(&store, vec![late.clone()]).await;
        let admitting = store
            .claim(&shared_claim(10, 2, &[("mallory", 2), ("bob", 1)]))
            .await
            .unwrap();
        assert_eq!(
            admitting.iter().map(|t| t.id).collect::<Vec<_>>(),
            vec![late.id]
        );
        // Without a cap they all run.
        assert_eq!(store.claim(&claim_request(10)).await.unwrap().len(), 5);
    }

    pub async fn keys_of_a_share_live_in_its_namespace_and_read_as_given(
        store: Arc<dyn TaskStore>,
    ) {
        // As the task service stores a tenant's keys: `{subject}/{key}`.
        let mut mine = tenant_task("alice", 0);
        mine.idempotency_key = Some("alice/order-1".into());
        mine.concurrency_key = Some("alice/deploy:web".into());
        mine.concurrency_limit = Some(1);
        let first = store.insert(&[mine.clone()]).await.unwrap().remove(0);
        assert!(first.created);
        assert_eq!(first.task.idempotency_key.as_deref(), Some("order-1"));
        assert_eq!(first.task.concurrency_key.as_deref(), Some("deploy:web"));
        assert_eq!(first.task.share_key.as_deref(), Some("alice"));
        let stored = store.get(mine.id).await.unwrap().unwrap();
        assert_eq!(stored.idempotency_key.as_deref(), Some("order-1"));
        assert_eq!(stored.concurrency_key.as_deref(), Some("deploy:web"));
        assert_eq!(stored.share_key.as_deref(), Some("alice"));
        // The same key again answers with her task; a global key of the same text is another.
        let mut again = tenant_task("alice", 0);
        again.idempotency_key = Some("alice/order-1".into());
        let mut global = new_task("noop");
        global.idempotency_key = Some("order-1".into());
        let both = store.insert(&[again, global]).await.unwrap();
        assert!(!both[0].created && both[0].task.id == mine.id);
        assert!(both[1].created);
        assert_eq!(both[1].task.idempotency_key.as_deref(), Some("order-1"));
        assert_eq!(both[1].task.share_key, None);
    }

    pub async fn records_success_retry_and_death(store: Arc<dyn TaskStore>) {
        insert(
            &store,
            vec![new_task("noop"), new_task("noop"), new_task("noop")],
        )
        .await;
        let claimed = store.claim(&claim_request(3)).await.unwrap();
        let retry_at = Utc::now() + Span::minutes(5);
        let changed = store
            .complete(
                OWNER,
                &[
                    Completion {
                        id: claimed[0].id,
                        outcome: Outcome::Succeeded(json!({"answer": 42})),
                    },
                    Completion {
                        id: claimed[1].id,
                        outcome: Outcome::Retry {
                            error: failure("try again"),
                            retry_at,
                        },
                    },
                    Completion {
                        id: claimed[2].id,
                        outcome: Outcome::Dead(failure("gone")),
                    },
                ],
            )
            .await
            .unwrap();
        assert_eq!(changed.len(), 3);
        assert!(claimed.iter().all(|t| changed.contains(&t.id)));
        let ok = store.get(claimed[0].id).await.unwrap().unwrap();
        assert_eq!(ok.status, TaskStatus::Succeeded);
        assert_eq!(ok.result, Some(json!({"answer": 42})));
        assert!(ok.finished_at.is_some());
        let retrying = store.get(claimed[1].id).await.unwrap().unwrap();
        assert_eq!(retrying.status, TaskStatus::Failed);
        assert_eq!(retrying.error.as_ref().unwrap().message, "try again");
        assert!((retrying.run_at - retry_at).num_milliseconds().abs() < 2);
        assert!(retrying.finished_at.is_none());
        let dead = store.get(claimed[2].id).await.unwrap().unwrap();
        assert_eq!(dead.status, TaskStatus::Dead);
        assert_eq!(dead.error.as_ref().unwrap().message, "gone");
        // The retrying task is not runnable before its time.
        assert!(store.claim(&claim_request(10)).await.unwrap().is_empty());
    }

    pub async fn ignores_outcomes_for_tasks_it_no_longer_owns(store: Arc<dyn TaskStore>) {
        let ids = insert(&store, vec![new_task("noop"), new_task("noop")]).await;
        store.claim(&claim_request(2)).await.unwrap();
        assert!(matches!(
            store.cancel(ids[0]).await.unwrap(),
            CancelOutcome::Cancelled {
                was_running: true,
                ..
            }
        ));
        let success = |id| Completion {
            id,
            outcome: Outcome::Succeeded(json!(1)),
        };
        let changed = store.complete(OWNER, &[success(ids[0])]).await.unwrap();
        assert!(changed.is_empty());
        assert_eq!(
            store.get(ids[0]).await.unwrap().unwrap().status,
            TaskStatus::Cancelled
        );
        let changed = store.complete("node-b", &[success(ids[1])]).await.unwrap();
        assert!(changed.is_empty());
        assert_eq!(
            store.get(ids[1]).await.unwrap().unwrap().status,
            TaskStatus::Running
        );
    }

    /// The common outcome, success with no result, may take a shorter path in a store: it keeps
    /// the same rules.
    pub async fn records_successes_without_a_result_only_under_its_lease(
        store: Arc<dyn TaskStore>,
    ) {
        let ids = insert(
            &store,
            vec![new_task("noop"), new_task("noop"), new_task("noop")],
        )
        .await;
        store.claim(&claim_request(3)).await.unwrap();
        store.cancel(ids[0]).await.unwrap();
        let successes = |ids: &[uuid::Uuid]| -> Vec<Completion> {
            ids.iter()
                .map(|id| Completion {
                    id: *id,
                    outcome: Outcome::Succeeded(json!(null)),
                })
                .collect()
        };
        assert!(
            store
                .complete("node-b", &successes(&ids))
                .await
                .unwrap()
                .is_empty()
        );
        let changed: HashSet<_> = store
            .complete(OWNER, &successes(&ids))
            .await
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(changed, HashSet::from([ids[1], ids[2]]));
        for id in &ids[1..] {
            let task = store.get(*id).await.unwrap().unwrap();
            assert_eq!(task.status, TaskStatus::Succeeded);
            assert_eq!((task.result, task.error), (None, None));
            assert!(task.finished_at.is_some());
        }
        assert_eq!(
            store.get(ids[0]).await.unwrap().unwrap().status,
            TaskStatus::Cancelled
        );
        // Recorded once: a second write changes nothing.
        assert!(
            store
                .complete(OWNER, &successes(&ids))
                .await
                .unwrap()
                .is_empty()
        );
    }

    pub async fn heartbeat_extends_leases_and_reports_lost_ones(store: Arc<dyn TaskStore>) {
        let ids = insert(&store, vec![new_task("noop"), new_task("noop")]).await;
        let mut request = claim_request(2);
        request.lease = Duration::from_millis(200);
        store.claim(&request).await.unwrap();
        store.cancel(ids[1]).await.unwrap();
        let held = store
            .heartbeat(OWNER, &ids, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(held, vec![ids[0]]);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            store.rescue().await.unwrap().is_empty(),
            "the lease was extended"
        );
        assert!(
            store
                .heartbeat("node-b", &ids, Duration::from_secs(30))
                .await
                .unwrap()
                .is_empty()
        );
    }

    pub async fn rescues_tasks_whose_lease_expired(store: Arc<dyn TaskStore>) {
        let mut last_chance = new_task("noop");
        last_chance.max_attempts = 1;
        let ids = insert(&store, vec![new_task("noop"), last_chance]).await;
        let mut request = claim_request(2);
        request.lease = Duration::from_millis(50);
        store.claim(&request).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        let rescued = store.rescue().await.unwrap();
        assert_eq!(rescued.len(), 2);
        let requeued = store.get(ids[0]).await.unwrap().unwrap();
        assert_eq!(requeued.status, TaskStatus::Queued);
        assert!(requeued.error.unwrap().message.contains("lease expired"));
        assert_eq!(
            store.get(ids[1]).await.unwrap().unwrap().status,
            TaskStatus::Dead
        );
        let again = store.claim(&claim_request(2)).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].attempts, 2);
    }

    pub async fn release_requeues_without_spending_an_attempt(store: Arc<dyn TaskStore>) {
        let ids = insert(&store, vec![new_task("noop")]).await;
        store.claim(&claim_request(1)).await.unwrap();
        assert_eq!(store.release(OWNER, &ids).await.unwrap(), 1);
        let task = store.get(ids[0]).await.unwrap().unwrap();
        assert_eq!(task.status, TaskStatus::Queued);
        assert_eq!(task.attempts, 0);
        assert_eq!(store.claim(&claim_request(1)).await.unwrap()[0].attempts, 1);
    }

    pub async fn cancels_only_unfinished_tasks(store: Arc<dyn TaskStore>) {
        let ids = insert(&store, vec![new_task("noop"), new_task("noop")]).await;
        match store.cancel(ids[0]).await.unwrap() {
            CancelOutcome::Cancelled { task, was_running } => {
                assert!(!was_running);
                assert_eq!(task.status, TaskStatus::Cancelled);
                assert!(task.finished_at.is_some());
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            store.cancel(ids[0]).await.unwrap(),
            CancelOutcome::AlreadyFinal(_)
        ));
        assert!(matches!(
            store.cancel(uuid::Uuid::now_v7()).await.unwrap(),
            CancelOutcome::NotFound
        ));
        // A cancelled task is never claimed.
        let claimed = store.claim(&claim_request(10)).await.unwrap();
        assert_eq!(
            claimed.iter().map(|t| t.id).collect::<Vec<_>>(),
            vec![ids[1]]
        );
    }

    pub async fn retry_requeues_dead_tasks_with_one_more_attempt(store: Arc<dyn TaskStore>) {
        let mut task = new_task("noop");
        task.max_attempts = 1;
        let ids = insert(&store, vec![task, new_task("noop")]).await;
        assert!(matches!(
            store.retry(ids[1]).await.unwrap(),
            RetryOutcome::NotRetryable(_)
        ));
        let claimed = store.claim(&claim_request(1)).await.unwrap();
        store
            .complete(
                OWNER,
                &[Completion {
                    id: claimed[0].id,
                    outcome: Outcome::Dead(failure("boom")),
                }],
            )
            .await
            .unwrap();
        match store.retry(ids[0]).await.unwrap() {
            RetryOutcome::Requeued(task) => {
                assert_eq!(task.status, TaskStatus::Queued);
                assert_eq!(task.max_attempts, 2);
                assert!(task.finished_at.is_none());
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            store.retry(uuid::Uuid::now_v7()).await.unwrap(),
            RetryOutcome::NotFound
        ));
    }

    pub async fn lists_with_filters_and_cursor(store: Arc<dyn TaskStore>) {
        let mut tasks = Vec::new();
        for i in 0..5 {
            let mut t = new_task(if i % 2 == 0 { "noop" } else { "echo" });
            t.queue = if i < 3 { "a".into() } else { "b".into() };
            t.created_by = (i == 3).then(|| "alice".to_string());
            tasks.push(t);
        }
        let ids = insert(&store, tasks).await;
        let all = store
            .list(&TaskFilter {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            all.iter().map(|t| t.id).collect::<Vec<_>>(),
            ids.iter().rev().copied().collect::<Vec<_>>(),
            "newest first"
        );
        let page1 = store
            .list(&TaskFilter {
                limit: 2,
                ..Default::default()
            })
            .await
            .unwrap();
        let page2 = store
            .list(&TaskFilter {
                limit: 2,
                before: Some(page1[1].id),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            page2.iter().map(|t| t.id).collect::<Vec<_>>(),
            vec![ids[2], ids[1]]
        );
        let echo_in_a = store
            .list(&TaskFilter {
                limit: 10,
                task_type: Some("echo".into()),
                queue: Some("a".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            echo_in_a.iter().map(|t| t.id).collect::<Vec<_>>(),
            vec![ids[1]]
        );
        let alices = store
            .list(&TaskFilter {
                limit: 10,
                created_by: Some("alice".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            alices.iter().map(|t| t.id).collect::<Vec<_>>(),
            vec![ids[3]]
        );
        assert_eq!(
            alices[0].created_by.as_deref(),
            Some("alice"),
            "stored as given"
        );
        store.cancel(ids[4]).await.unwrap();
        let cancelled = store
            .list(&TaskFilter {
                limit: 10,
                status: Some(TaskStatus::Cancelled),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(cancelled.len(), 1);
        let counts = store.counts().await.unwrap();
        assert_eq!(counts.get(&("a".to_string(), TaskStatus::Queued)), Some(&3));
        assert_eq!(
            counts.get(&("b".to_string(), TaskStatus::Cancelled)),
            Some(&1)
        );
        assert_eq!(store.pending().await.unwrap(), 4);
        store.claim(&claim_request(1)).await.unwrap();
        assert_eq!(
            store.pending().await.unwrap(),
            4,
            "running tasks are pending too"
        );
    }

    pub async fn prunes_old_finished_tasks(store: Arc<dyn TaskStore>) {
        let ids = insert(&store, vec![new_task("noop"), new_task("noop")]).await;
        store.cancel(ids[0]).await.unwrap();
        assert_eq!(store.prune(Utc::now() - Span::hours(1)).await.unwrap(), 0);
        assert_eq!(store.prune(Utc::now() + Span::seconds(1)).await.unwrap(), 1);
        assert!(store.get(ids[0]).await.unwrap().is_none());
        assert!(
            store.get(ids[1]).await.unwrap().is_some(),
            "unfinished tasks stay"
        );
    }

    pub async fn reports_the_next_due_task(store: Arc<dyn TaskStore>) {
        let types = vec!["noop".to_string()];
        assert_eq!(store.next_run_at(&types).await.unwrap(), None);
        let at = Utc::now() + Span::minutes(10);
        let mut later = new_task("noop");
        later.run_at = Some(at);
        let mut other_type = new_task("echo");
        other_type.run_at = Some(Utc::now() + Span::minutes(1));
        insert(&store, vec![later, other_type]).await;
        let next = store.next_run_at(&types).await.unwrap().unwrap();
        assert!((next - at).num_milliseconds().abs() < 2);
    }

    pub async fn concurrent_claimers_never_share_a_task(store: Arc<dyn TaskStore>) {
        let tasks: Vec<_> = (0..400).map(|_| new_task("noop")).collect();
        insert(&store, tasks).await;
        let mut claimers = Vec::new();
        for n in 0..4 {
            let store = store.clone();
            claimers.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                // Each round takes at least one task until none is left; the bound only turns
                // a store that hands out tasks forever into a failure.
                for _ in 0..10_000 {
                    let mut request = claim_request(25);
                    request.owner = format!("node-{n}");
                    let claimed = store.claim(&request).await.unwrap();
                    if claimed.is_empty() {
                        return mine;
                    }
                    mine.extend(claimed.into_iter().map(|t| t.id));
                }
                panic!("the store kept handing out tasks");
            }));
        }
        let mut seen = HashSet::new();
        for claimer in claimers {
            for id in claimer.await.unwrap() {
                assert!(seen.insert(id), "task {id} claimed twice");
            }
        }
        assert_eq!(seen.len(), 400);
    }

    pub async fn only_claims_types_it_serves(store: Arc<dyn TaskStore>) {
        insert(&store, vec![new_task("render.deploy")]).await;
        assert!(store.claim(&claim_request(10)).await.unwrap().is_empty());
        let mut request = claim_request(10);
        request.types = vec!["render.deploy".into()];
        assert_eq!(store.claim(&request).await.unwrap().len(), 1);
    }
}
