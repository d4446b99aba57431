//! What only the PostgreSQL task store does around its claims: it vacuums the task table once a
//! burn-down drains (so later claims do not walk the dead entries it left), and its LISTEN
//! wake-ups reach the other stores on the schema.

// Only its backends: these cases are PostgreSQL's alone, not `conformance!` ones.
#[allow(unused_macros)]
mod common;

use chrono::Utc;
use common::Backend;
use mcp_core::store::ShareLimit;
use mcp_core::task::{CreateTask, TaskDefaults};
use mcp_core::{ClaimRequest, Completion, NewTask, Outcome, TaskStore};
use mcp_persistence::PgTaskStore;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

const PATIENCE: Duration = Duration::from_secs(20);

fn noop() -> NewTask {
    CreateTask {
        task_type: "noop".into(),
        ..Default::default()
    }
    .validate(&TaskDefaults::default(), Utc::now())
    .expect("valid task")
}

fn claim(limit: u32) -> ClaimRequest {
    ClaimRequest {
        owner: "node-a".into(),
        types: vec!["noop".into()],
        limit,
        lease: Duration::from_secs(30),
        share: ShareLimit::default(),
    }
}

async fn postgres() -> Option<PgTaskStore> {
    match Backend::postgres().await? {
        Backend::Postgres(store) => Some(store),
        Backend::Sqlite(..) => None,
    }
}

/// Manual vacuums of the schema's task table so far.
async fn vacuums(store: &PgTaskStore) -> i64 {
    let (count,): (i64,) = sqlx::query_as(
        "SELECT coalesce(sum(vacuum_count), 0)::int8 FROM pg_stat_user_tables
         WHERE schemaname = $1 AND relname = 'tasks'",
    )
    .bind(store.schema())
    .fetch_one(store.pool())
    .await
    .expect("read vacuum count");
    count
}

#[tokio::test]
async fn a_drained_burn_down_vacuums_the_task_table() {
    let Some(store) = postgres().await else {
        return;
    };
    // Enough for a vacuum once the queue drains (`IDLE_AFTER` in `postgres/vacuum.rs`).
    for _ in 0..11 {
        let tasks: Vec<NewTask> = (0..1_000).map(|_| noop()).collect();
        store.insert(&tasks).await.expect("insert");
    }
    let mut claimed = 0;
    loop {
        // The last claim finds less than it asked for: the backlog is gone.
        let batch = store.claim(&claim(1_000)).await.expect("claim");
        let done: Vec<Completion> = batch
            .iter()
            .map(|t| Completion {
                id: t.id,
                outcome: Outcome::Succeeded(serde_json::Value::Null),
            })
            .collect();
        store.complete("node-a", &done).await.expect("complete");
        claimed += batch.len();
        if batch.len() < 1_000 {
            break;
        }
    }
    assert_eq!(claimed, 11_000);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while vacuums(&store).await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the task table was not vacuumed after a drained burn-down of 11,000 tasks"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    store.drop_schema().await.expect("drop schema");
}

#[tokio::test]
async fn another_stores_insert_wakes_the_listener() {
    let Some(listening) = postgres().await else {
        return;
    };
    let other = PgTaskStore::connect(&common::pg_url(), listening.schema(), 2)
        .await
        .expect("second store on the schema");
    let wake = Arc::new(Notify::new());
    listening.watch(wake.clone()).await.expect("watch");
    // LISTEN is in place once `watch` returns; the insert commits after it.
    other.insert(&[noop()]).await.expect("insert");
    tokio::time::timeout(PATIENCE, wake.notified())
        .await
        .expect("the listener was not woken by another store's insert");
    other.close().await;
    listening.drop_schema().await.expect("drop schema");
}
