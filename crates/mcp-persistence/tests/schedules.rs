//! One conformance suite for both stores' schedules, paused queues, rate limits per task type
//! and deferred attempts: every case runs against SQLite (a fresh file) and PostgreSQL (a fresh
//! schema in `MCP_TEST_DATABASE_URL`, dropped afterwards). With `CI` set (to any value) an
//! unreachable PostgreSQL fails the suite instead of skipping it.

#[macro_use]
mod common;

use chrono::{DateTime, Duration as Span, TimeZone, Utc};
use common::{Backend, Port};
use mcp_core::queues::{QueueStore, TaskLimit};
use mcp_core::schedule::{Missed, Schedule, ScheduleStore};
use mcp_core::store::ShareLimit;
use mcp_core::task::{CreateTask, TaskDefaults};
use mcp_core::{
    ClaimRequest, Completion, NewTask, Outcome, StoreError, TaskError, TaskStatus, TaskStore,
};
use mcp_persistence::{PgTaskStore, SqliteTaskStore};
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
}
