//! One conformance suite for both stores' schedules, paused queues, rate limits per task type
//! and per queue, the flow-control cache each store keeps, and deferred attempts: every case runs against SQLite (a fresh file) and PostgreSQL (a fresh
//! schema in `MCP_TEST_DATABASE_URL`, dropped afterwards). With `CI` set (to any value) an
//! unreachable PostgreSQL fails the suite instead of skipping it.

#[macro_use]
mod common;

use chrono::{DateTime, Duration as Span, TimeZone, Utc};
use common::{Backend, Port, pg_url};
use mcp_core::queues::{QueueLimit, QueueStore, TaskLimit};
use mcp_core::schedule::{Missed, Schedule, ScheduleStore};
use mcp_core::store::ShareLimit;
use mcp_core::task::{CreateTask, TaskDefaults};
use mcp_core::{
    ClaimRequest, Completion, NewTask, Outcome, StoreError, TaskError, TaskStatus, TaskStore,
};
use mcp_persistence::{PgTaskStore, SqliteOptions, SqliteTaskStore};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

ports!(ScheduleStore, QueueStore);

conformance!(
    round_trips_a_schedule_and_refuses_a_taken_name,
    updates_lists_and_deletes_schedules,
    lists_due_schedules_and_the_next_fire_time,
    exactly_one_claimer_advances_a_firing,
    a_paused_queue_starts_nothing_until_resumed,
    a_task_limit_caps_starts_per_window,
    a_queue_limit_caps_starts_of_every_type_in_it,
    a_task_starts_only_with_room_in_its_type_and_its_queue_window,
    a_used_up_window_tells_when_it_reopens,
    the_flow_state_counts_what_limits_hold_back,
    another_nodes_change_applies_here_after_a_refresh,
    a_deferred_attempt_is_rescheduled_without_counting,
);

/// Whole microseconds: both backends keep that precision.
fn at(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(seconds, 123_456_000)
        .single()
        .expect("time")
}

fn schedule(name: &str, next: Option<DateTime<Utc>>) -> Schedule {
    Schedule {
        name: name.into(),
        cron: "*/5 * * * * *".into(),
        timezone: "Europe/Berlin".into(),
        task: json!({"type": "noop", "payload": {"n": 1}}),
        missed: Missed::All,
        max_backfill: 3,
        jitter_ms: 250,
        paused: false,
        next_fire_at: next,
        last_fired_at: None,
        source: "api".into(),
        created_at: at(1_700_000_000),
        updated_at: at(1_700_000_001),
    }
}

fn new_task(task_type: &str, queue: &str) -> NewTask {
    CreateTask {
        task_type: task_type.into(),
        queue: Some(queue.into()),
        ..Default::default()
    }
    .validate(&TaskDefaults::default(), Utc::now())
    .unwrap()
}

fn claim(types: &[&str], limit: u32) -> ClaimRequest {
    ClaimRequest {
        owner: "node-a".into(),
        types: types.iter().map(|t| (*t).to_owned()).collect(),
        limit,
        lease: Duration::from_secs(30),
        share: ShareLimit::default(),
    }
}

/// A second store on the same database: another node.
async fn other_node(backend: &Backend) -> (Arc<dyn TaskStore>, Arc<dyn QueueStore>) {
    match backend {
        Backend::Sqlite(_, dir) => {
            let store = SqliteTaskStore::open(&dir.join("tasks.db"), &SqliteOptions::default())
                .await
                .unwrap();
            (Arc::new(store.clone()), Arc::new(store))
        }
        Backend::Postgres(first) => {
            let store = PgTaskStore::connect(&pg_url(), first.schema(), 4)
                .await
                .unwrap();
            (Arc::new(store.clone()), Arc::new(store))
        }
    }
}

fn ids(tasks: &[mcp_core::Task]) -> Vec<uuid::Uuid> {
    let mut ids: Vec<_> = tasks.iter().map(|t| t.id).collect();
    ids.sort();
    ids
}

mod cases {
    use super::*;

    pub async fn round_trips_a_schedule_and_refuses_a_taken_name(backend: &Backend) {
        let store: Arc<dyn ScheduleStore> = backend.port();
        let s = schedule("nightly", Some(at(1_700_000_100)));
        store.insert_schedule(&s).await.unwrap();
        assert_eq!(store.schedule("nightly").await.unwrap(), Some(s.clone()));
        assert!(store.schedule("other").await.unwrap().is_none());
        assert!(matches!(
            store.insert_schedule(&s).await,
            Err(StoreError::Conflict(_))
        ));
    }

    pub async fn updates_lists_and_deletes_schedules(backend: &Backend) {
        let store: Arc<dyn ScheduleStore> = backend.port();
        store.insert_schedule(&schedule("b", None)).await.unwrap();
        store.insert_schedule(&schedule("a", None)).await.unwrap();
        let mut changed = schedule("a", Some(at(1_700_000_200)));
        changed.cron = "@hourly".into();
        changed.paused = true;
        changed.missed = Missed::Skip;
        assert!(store.update_schedule(&changed).await.unwrap());
        assert!(
            !store
                .update_schedule(&schedule("missing", None))
                .await
                .unwrap()
        );
        let listed = store.list_schedules().await.unwrap();
        assert_eq!(
            listed.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(listed[0], changed);
        assert!(store.delete_schedule("a").await.unwrap());
        assert!(!store.delete_schedule("a").await.unwrap());
        assert_eq!(store.list_schedules().await.unwrap().len(), 1);
    }

    pub async fn lists_due_schedules_and_the_next_fire_time(backend: &Backend) {
        let store: Arc<dyn ScheduleStore> = backend.port();
        assert_eq!(store.next_schedule_at().await.unwrap(), None);
        store
            .insert_schedule(&schedule("late", Some(at(1_000))))
            .await
            .unwrap();
        store
            .insert_schedule(&schedule("later", Some(at(2_000))))
            .await
            .unwrap();
        store
            .insert_schedule(&schedule("future", Some(at(9_000))))
            .await
            .unwrap();
        let mut paused = schedule("paused", Some(at(500)));
        paused.paused = true;
        store.insert_schedule(&paused).await.unwrap();
        store
            .insert_schedule(&schedule("never", None))
            .await
            .unwrap();
        let due = store.due_schedules(at(5_000), 10).await.unwrap();
        assert_eq!(
            due.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["late", "later"]
        );
        assert_eq!(store.due_schedules(at(5_000), 1).await.unwrap().len(), 1);
        assert_eq!(store.next_schedule_at().await.unwrap(), Some(at(1_000)));
    }

    pub async fn exactly_one_claimer_advances_a_firing(backend: &Backend) {
        let store: Arc<dyn ScheduleStore> = backend.port();
        store
            .insert_schedule(&schedule("s", Some(at(1_000))))
            .await
            .unwrap();
        let claims = futures::future::join_all((0..8).map(|_| {
            let store = store.clone();
            async move {
                store
                    .advance_schedule("s", at(1_000), Some(at(1_005)), Some(at(1_000)))
                    .await
                    .unwrap()
            }
        }))
        .await;
        assert_eq!(claims.iter().filter(|won| **won).count(), 1);
        let s = store.schedule("s").await.unwrap().unwrap();
        assert_eq!(s.next_fire_at, Some(at(1_005)));
        assert_eq!(s.last_fired_at, Some(at(1_000)));
        // A stale view (another node advanced it already) claims nothing.
        assert!(
            !store
                .advance_schedule("s", at(1_000), Some(at(1_010)), None)
                .await
                .unwrap()
        );
    }

    pub async fn a_paused_queue_starts_nothing_until_resumed(backend: &Backend) {
        let tasks: Arc<dyn TaskStore> = backend.port();
        let queues: Arc<dyn QueueStore> = backend.port();
        assert!(queues.pause_queue("held").await.unwrap());
        assert!(!queues.pause_queue("held").await.unwrap());
        assert_eq!(queues.paused_queues().await.unwrap(), ["held"]);
        let held = new_task("noop", "held");
        let free = new_task("noop", "free");
        tasks.insert(&[held.clone(), free.clone()]).await.unwrap();
        let claimed = tasks.claim(&claim(&["noop"], 10)).await.unwrap();
        assert_eq!(claimed.iter().map(|t| t.id).collect::<Vec<_>>(), [free.id]);
        assert!(tasks.claim(&claim(&["noop"], 10)).await.unwrap().is_empty());
        let waiting = tasks.get(held.id).await.unwrap().unwrap();
        assert_eq!(waiting.status, TaskStatus::Queued);
        assert_eq!(waiting.attempts, 0);
        assert!(queues.resume_queue("held").await.unwrap());
        assert!(!queues.resume_queue("held").await.unwrap());
        let claimed = tasks.claim(&claim(&["noop"], 10)).await.unwrap();
        assert_eq!(claimed.iter().map(|t| t.id).collect::<Vec<_>>(), [held.id]);
    }

    pub async fn a_task_limit_caps_starts_per_window(backend: &Backend) {
        let tasks: Arc<dyn TaskStore> = backend.port();
        let queues: Arc<dyn QueueStore> = backend.port();
        let limit = TaskLimit {
            task_type: "echo".into(),
            max: 2,
            per_ms: 400,
        };
        queues.put_task_limit(&limit).await.unwrap();
        assert_eq!(queues.task_limits().await.unwrap(), [limit]);
        let limited: Vec<NewTask> = (0..5).map(|_| new_task("echo", "default")).collect();
        let open: Vec<NewTask> = (0..3).map(|_| new_task("noop", "default")).collect();
        tasks.insert(&limited).await.unwrap();
        tasks.insert(&open).await.unwrap();
        let first = tasks.claim(&claim(&["echo", "noop"], 10)).await.unwrap();
        let echoes = first.iter().filter(|t| t.task_type == "echo").count();
        assert_eq!(echoes, 2, "two of the limited type in the first window");
        assert_eq!(first.len(), 5, "the open type is not held back");
        // The window is used up: nothing more of the type until it passes.
        assert!(tasks.claim(&claim(&["echo"], 10)).await.unwrap().is_empty());
        tokio::time::sleep(Duration::from_millis(450)).await;
        assert_eq!(tasks.claim(&claim(&["echo"], 10)).await.unwrap().len(), 2);
        // Without the limit the rest starts at once.
        assert!(queues.delete_task_limit("echo").await.unwrap());
        assert!(!queues.delete_task_limit("echo").await.unwrap());
        assert_eq!(tasks.claim(&claim(&["echo"], 10)).await.unwrap().len(), 1);
    }

    pub async fn a_deferred_attempt_is_rescheduled_without_counting(backend: &Backend) {
        let tasks: Arc<dyn TaskStore> = backend.port();
        let mut task = new_task("noop", "default");
        task.max_attempts = 1;
        tasks.insert(std::slice::from_ref(&task)).await.unwrap();
        let claimed = tasks.claim(&claim(&["noop"], 1)).await.unwrap();
        assert_eq!(claimed[0].attempts, 1);
        let retry_at = Utc::now() + Span::milliseconds(300);
        let error = TaskError {
            message: "429 from upstream".into(),
            attempt: 1,
            details: None,
        };
        let changed = tasks
            .complete(
                "node-a",
                &[Completion {
                    id: task.id,
                    outcome: Outcome::Deferred { error, retry_at },
                }],
            )
            .await
            .unwrap();
        assert_eq!(changed, [task.id]);
        let stored = tasks.get(task.id).await.unwrap().unwrap();
        assert_eq!(stored.status, TaskStatus::Scheduled);
        assert_eq!(stored.attempts, 0);
        assert!(stored.finished_at.is_none());
        assert!(tasks.claim(&claim(&["noop"], 1)).await.unwrap().is_empty());
        tokio::time::sleep(Duration::from_millis(350)).await;
        let again = tasks.claim(&claim(&["noop"], 1)).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].attempts, 1);
    }

    pub async fn a_queue_limit_caps_starts_of_every_type_in_it(backend: &Backend) {
        let tasks: Arc<dyn TaskStore> = backend.port();
        let queues: Arc<dyn QueueStore> = backend.port();
        let limit = QueueLimit {
            queue: "slow".into(),
            max: 2,
            per_ms: 400,
        };
        queues.put_queue_limit(&limit).await.unwrap();
        assert_eq!(queues.queue_limits().await.unwrap(), [limit]);
        let slow = [
            new_task("echo", "slow"),
            new_task("noop", "slow"),
            new_task("echo", "slow"),
            new_task("noop", "slow"),
        ];
        let fast: Vec<NewTask> = (0..3).map(|_| new_task("echo", "fast")).collect();
        tasks.insert(&slow).await.unwrap();
        tasks.insert(&fast).await.unwrap();
        let first = tasks.claim(&claim(&["echo", "noop"], 10)).await.unwrap();
        assert_eq!(
            first.iter().filter(|t| t.queue == "slow").count(),
            2,
            "two of the queue, whatever their type, in the first window"
        );
        assert_eq!(first.len(), 5, "other queues are not held back");
        let held = tasks.get(slow[2].id).await.unwrap().unwrap();
        assert_eq!((held.status, held.attempts), (TaskStatus::Queued, 0));
        assert!(
            tasks
                .claim(&claim(&["echo", "noop"], 10))
                .await
                .unwrap()
                .is_empty()
        );
        tokio::time::sleep(Duration::from_millis(450)).await;
        let second = tasks.claim(&claim(&["echo", "noop"], 10)).await.unwrap();
        let mut rest = vec![slow[2].id, slow[3].id];
        rest.sort();
        assert_eq!(ids(&second), rest);
        // Replacing it keeps its window; removing it frees the queue.
        let later = new_task("noop", "slow");
        tasks.insert(std::slice::from_ref(&later)).await.unwrap();
        assert!(tasks.claim(&claim(&["noop"], 10)).await.unwrap().is_empty());
        assert!(queues.delete_queue_limit("slow").await.unwrap());
        assert!(!queues.delete_queue_limit("slow").await.unwrap());
        assert!(queues.queue_limits().await.unwrap().is_empty());
        assert_eq!(
            ids(&tasks.claim(&claim(&["noop"], 10)).await.unwrap()),
            [later.id]
        );
    }

    pub async fn a_task_starts_only_with_room_in_its_type_and_its_queue_window(backend: &Backend) {
        let tasks: Arc<dyn TaskStore> = backend.port();
        let queues: Arc<dyn QueueStore> = backend.port();
        queues
            .put_task_limit(&TaskLimit {
                task_type: "echo".into(),
                max: 2,
                per_ms: 60_000,
            })
            .await
            .unwrap();
        queues
            .put_queue_limit(&QueueLimit {
                queue: "slow".into(),
                max: 1,
                per_ms: 60_000,
            })
            .await
            .unwrap();
        let mut in_order = Vec::new();
        for (task_type, queue) in [
            ("echo", "slow"),
            ("echo", "slow"),
            ("noop", "slow"),
            ("echo", "fast"),
            ("echo", "fast"),
            ("noop", "fast"),
        ] {
            // One by one: claim order follows `run_at`.
            let task = new_task(task_type, queue);
            tasks.insert(std::slice::from_ref(&task)).await.unwrap();
            in_order.push(task);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let claimed = tasks.claim(&claim(&["echo", "noop"], 10)).await.unwrap();
        // The queue's window takes the first; the type's second start is the first `fast` echo;
        // the `noop` of `fast` is covered by neither.
        let mut expected = vec![in_order[0].id, in_order[3].id, in_order[5].id];
        expected.sort();
        assert_eq!(ids(&claimed), expected);
        assert!(
            tasks
                .claim(&claim(&["echo", "noop"], 10))
                .await
                .unwrap()
                .is_empty()
        );
        for held in [&in_order[1], &in_order[2], &in_order[4]] {
            let held = tasks.get(held.id).await.unwrap().unwrap();
            assert_eq!((held.status, held.attempts), (TaskStatus::Queued, 0));
        }
    }

    pub async fn a_used_up_window_tells_when_it_reopens(backend: &Backend) {
        let tasks: Arc<dyn TaskStore> = backend.port();
        let queues: Arc<dyn QueueStore> = backend.port();
        let types = ["echo".to_owned()];
        queues
            .put_task_limit(&TaskLimit {
                task_type: "echo".into(),
                max: 1,
                per_ms: 30_000,
            })
            .await
            .unwrap();
        tasks
            .insert(&[new_task("echo", "default"), new_task("echo", "default")])
            .await
            .unwrap();
        assert_eq!(tasks.next_run_at(&types).await.unwrap(), None);
        let before = Utc::now();
        assert_eq!(tasks.claim(&claim(&["echo"], 10)).await.unwrap().len(), 1);
        let reopens = tasks
            .next_run_at(&types)
            .await
            .unwrap()
            .expect("a reopen time");
        assert!(
            reopens > before + Span::seconds(29),
            "{reopens} vs {before}"
        );
        assert!(reopens < Utc::now() + Span::seconds(31), "{reopens}");
        // Other types do not wait for it; without the limit, nothing reopens.
        assert_eq!(tasks.next_run_at(&["noop".to_owned()]).await.unwrap(), None);
        assert!(queues.delete_task_limit("echo").await.unwrap());
        assert_eq!(tasks.next_run_at(&types).await.unwrap(), None);
    }

    pub async fn the_flow_state_counts_what_limits_hold_back(backend: &Backend) {
        let tasks: Arc<dyn TaskStore> = backend.port();
        let queues: Arc<dyn QueueStore> = backend.port();
        queues.pause_queue("held").await.unwrap();
        let type_limit = TaskLimit {
            task_type: "echo".into(),
            max: 1,
            per_ms: 60_000,
        };
        let queue_limit = QueueLimit {
            queue: "slow".into(),
            max: 1,
            per_ms: 60_000,
        };
        queues.put_task_limit(&type_limit).await.unwrap();
        queues.put_queue_limit(&queue_limit).await.unwrap();
        tasks
            .insert(&[
                new_task("echo", "a"),
                new_task("echo", "a"),
                new_task("echo", "a"),
                new_task("noop", "slow"),
                new_task("noop", "slow"),
                new_task("echo", "held"),
                new_task("noop", "b"),
            ])
            .await
            .unwrap();
        let state = queues.flow_state().await.unwrap();
        assert!(state.held_back.is_empty(), "no window is used up yet");
        assert_eq!(
            tasks
                .claim(&claim(&["echo", "noop"], 10))
                .await
                .unwrap()
                .len(),
            3,
            "one echo, one of `slow`, the noop of `b`"
        );
        let state = queues.flow_state().await.unwrap();
        assert_eq!(state.paused, ["held"]);
        assert_eq!(state.limits, [type_limit]);
        assert_eq!(state.queue_limits, [queue_limit]);
        assert_eq!(
            state.held_back.into_iter().collect::<Vec<_>>(),
            [("a".to_owned(), 2), ("slow".to_owned(), 1)],
            "paused queues are not counted"
        );
    }

    pub async fn another_nodes_change_applies_here_after_a_refresh(backend: &Backend) {
        let tasks: Arc<dyn TaskStore> = backend.port();
        let queues: Arc<dyn QueueStore> = backend.port();
        let (_, other) = other_node(backend).await;
        tasks
            .insert(&[new_task("noop", "q"), new_task("noop", "q")])
            .await
            .unwrap();
        // The first read fills the cache; from then on a claim reads no flow-control table, and
        // a read tells whether anything changed.
        assert!(queues.refresh_flow().await.unwrap());
        assert!(!queues.refresh_flow().await.unwrap());
        other.pause_queue("q").await.unwrap();
        assert!(
            queues.refresh_flow().await.unwrap(),
            "the pause is new here"
        );
        assert!(tasks.claim(&claim(&["noop"], 10)).await.unwrap().is_empty());
        other.resume_queue("q").await.unwrap();
        other
            .put_queue_limit(&QueueLimit {
                queue: "q".into(),
                max: 1,
                per_ms: 60_000,
            })
            .await
            .unwrap();
        assert!(queues.refresh_flow().await.unwrap());
        assert_eq!(tasks.claim(&claim(&["noop"], 10)).await.unwrap().len(), 1);
        assert!(tasks.claim(&claim(&["noop"], 10)).await.unwrap().is_empty());
        // The counter is the database's: the other node finds the window used up as well.
        let (other_tasks, _) = other_node(backend).await;
        assert!(
            other_tasks
                .claim(&claim(&["noop"], 10))
                .await
                .unwrap()
                .is_empty()
        );
        other.delete_queue_limit("q").await.unwrap();
        assert!(queues.refresh_flow().await.unwrap());
        assert!(!queues.refresh_flow().await.unwrap(), "nothing new");
        assert_eq!(tasks.claim(&claim(&["noop"], 10)).await.unwrap().len(), 1);
    }
}
