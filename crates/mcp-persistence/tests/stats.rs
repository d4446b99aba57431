//! One conformance suite for both stores' task statistics (`TaskStore::minute_stats`): every
//! case runs against SQLite (a fresh file) and PostgreSQL (a fresh schema in
//! `MCP_TEST_DATABASE_URL`, dropped afterwards). With `CI` set (to any value) an unreachable
//! PostgreSQL fails the suite instead of skipping it.

#[macro_use]
mod common;

use chrono::{DateTime, Duration as Span, DurationRound, Utc};
use mcp_core::store::ShareLimit;
use mcp_core::task::{CreateTask, TaskDefaults};
use mcp_core::{ClaimRequest, Completion, Outcome, TaskError, TaskStore};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

conformance!(
    counts_outcomes_and_pickup_percentiles_per_minute,
    leaves_out_tasks_finished_outside_the_window,
);

mod cases {
    use super::*;

    const OWNER: &str = "node-a";

    fn failure(message: &str) -> TaskError {
        TaskError {
            message: message.into(),
            attempt: 1,
            details: None,
        }
    }

    fn claim_request(limit: u32) -> ClaimRequest {
        ClaimRequest {
            owner: OWNER.into(),
            types: vec!["noop".into()],
            limit,
            lease: Duration::from_secs(30),
            share: ShareLimit::default(),
        }
    }

    fn minute(at: DateTime<Utc>) -> DateTime<Utc> {
        at.duration_trunc(Span::minutes(1)).unwrap()
    }

    /// Ten tasks due `i` seconds ago (i = 1..=10), claimed now: their pickup latency is about
    /// `i` seconds. The latest-due one fails (to retry), the next dies, the rest succeed.
    async fn run_ten(store: &Arc<dyn TaskStore>) -> DateTime<Utc> {
        let now = Utc::now();
        let tasks: Vec<_> = (1..=10)
            .map(|i| {
                let mut t = CreateTask {
                    task_type: "noop".into(),
                    ..Default::default()
                }
                .validate(&TaskDefaults::default(), now)
                .unwrap();
                t.run_at = Some(now - Span::seconds(i));
                t
            })
            .collect();
        store.insert(&tasks).await.unwrap();
        let claimed = store.claim(&claim_request(10)).await.unwrap();
        assert_eq!(claimed.len(), 10);
        let completions: Vec<Completion> = claimed
            .iter()
            .enumerate()
            .map(|(n, t)| Completion {
                id: t.id,
                outcome: match n {
                    0 => Outcome::Retry {
                        error: failure("again"),
                        retry_at: Utc::now() + Span::minutes(5),
                    },
                    1 => Outcome::Dead(failure("gone")),
                    _ => Outcome::Succeeded(json!(n)),
                },
            })
            .collect();
        store.complete(OWNER, &completions).await.unwrap();
        now
    }

    pub async fn counts_outcomes_and_pickup_percentiles_per_minute(store: Arc<dyn TaskStore>) {
        let now = run_ten(&store).await;
        let since = minute(now) - Span::minutes(5);
        let until = minute(Utc::now()) + Span::minutes(1);
        let minutes = store.minute_stats(since, until).await.unwrap();
        assert!(!minutes.is_empty() && minutes.len() <= 2, "{minutes:?}");
        assert!(minutes.windows(2).all(|w| w[0].minute < w[1].minute));
        assert!(minutes.iter().all(|m| minute(m.minute) == m.minute));
        let total =
            |f: fn(&mcp_core::stats::MinuteStats) -> u64| minutes.iter().map(f).sum::<u64>();
        assert_eq!(total(|m| m.succeeded), 8);
        assert_eq!(total(|m| m.failed), 1);
        assert_eq!(total(|m| m.dead), 1);
        // The nine finished tasks waited about 1 s to 9 s (the failed one is not counted: its
        // `run_at` is its retry time now): nearest rank 5 of 9 and 9 of 9.
        let finished = minutes.iter().find(|m| m.succeeded > 0).unwrap();
        let p50 = finished.pickup_p50_ms.unwrap();
        let p95 = finished.pickup_p95_ms.unwrap();
        assert!((5_000..5_900).contains(&p50), "p50 {p50}");
        assert!((9_000..9_900).contains(&p95), "p95 {p95}");
    }

    pub async fn leaves_out_tasks_finished_outside_the_window(store: Arc<dyn TaskStore>) {
        let now = run_ten(&store).await;
        let before = minute(now) - Span::minutes(10);
        let earlier = store
            .minute_stats(before, before + Span::minutes(5))
            .await
            .unwrap();
        assert_eq!(earlier, vec![]);
        let later = minute(now) + Span::minutes(2);
        let after = store
            .minute_stats(later, later + Span::minutes(5))
            .await
            .unwrap();
        assert_eq!(after, vec![]);
    }
}
