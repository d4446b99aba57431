//! `GET /v1/stats` as the console's Overview reads it: tasks run through the real binary show up
//! in the per-minute series by outcome with pickup latency percentiles, and in the counts per
//! queue; the window is checked; only `tasks:read:any` may read it; and on PostgreSQL every
//! node answers for the whole cluster, from the database.

mod support;

use serde_json::{Value, json};
use support::*;

/// Runs six `echo` tasks and two that die at their first failure, in queue `stats`, to the end.
async fn run_tasks(server: &Server) {
    let mut ids = Vec::new();
    for i in 0..8 {
        let body = if i < 6 {
            json!({"type": "echo", "queue": "stats", "payload": {"i": i}})
        } else {
            json!({"type": "fail", "queue": "stats", "max_attempts": 1})
        };
        let (status, task) = post(server, "/v1/tasks", body).await;
        assert_eq!(status, 201, "{task}");
        ids.push(task["id"].as_str().unwrap().to_owned());
    }
    for id in ids {
        wait_for(server, &id, is_final).await;
    }
}

fn total(stats: &Value, outcome: &str) -> u64 {
    stats["minutes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m[outcome].as_u64().unwrap())
        .sum()
}

/// Checks the statistics of `run_tasks` (`runs` times over).
fn assert_counted(stats: &Value, runs: u64) {
    assert_eq!(stats["window_minutes"], 15, "{stats}");
    let minutes = stats["minutes"].as_array().unwrap();
    assert_eq!(minutes.len(), 15, "{stats}");
    assert_eq!(total(stats, "succeeded"), 6 * runs, "{stats}");
    assert_eq!(total(stats, "dead"), 2 * runs, "{stats}");
    assert_eq!(total(stats, "failed"), 0, "{stats}");
    let busy: Vec<&Value> = minutes
        .iter()
        .filter(|m| m["succeeded"].as_u64() > Some(0))
        .collect();
    assert!(!busy.is_empty(), "{stats}");
    for m in busy {
        let p50 = m["pickup_p50_ms"].as_u64().expect("p50");
        let p95 = m["pickup_p95_ms"].as_u64().expect("p95");
        assert!(p50 <= p95 && p95 < 30_000, "{m}");
    }
    let quiet = minutes
        .iter()
        .find(|m| m["succeeded"] == 0 && m["dead"] == 0 && m["failed"] == 0);
    assert!(
        quiet.is_some_and(|m| m["pickup_p50_ms"].is_null()),
        "{stats}"
    );
    assert_eq!(stats["queues"]["stats"]["succeeded"], 6 * runs, "{stats}");
    assert_eq!(stats["queues"]["stats"]["dead"], 2 * runs, "{stats}");
}

#[tokio::test]
async fn counts_finished_tasks_per_minute_with_pickup_percentiles() {
    let server = Server::start(&[]);
    run_tasks(&server).await;
    let (status, stats) = get(&server, "/v1/stats?window=15m").await;
    assert_eq!(status, 200, "{stats}");
    assert_counted(&stats, 1);
    // The default window is the same 15 minutes.
    let (status, default) = get(&server, "/v1/stats").await;
    assert_eq!(status, 200);
    assert_eq!(default["minutes"].as_array().unwrap().len(), 15);
    let (status, hour) = get(&server, "/v1/stats?window=1h").await;
    assert_eq!(status, 200);
    assert_eq!(hour["minutes"].as_array().unwrap().len(), 60);
    assert_eq!(total(&hour, "succeeded"), 6);
}

#[tokio::test]
async fn rejects_a_bad_window_and_readers_without_tasks_read_any() {
    let server = Server::start(&[]);
    for window in ["0m", "25h", "soon", "-5m"] {
        let response = client()
            .get(server.url(&format!("/v1/stats?window={window}")))
            .header("x-request-id", "stats-1")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 422, "{window}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_request", "{body}");
        assert_eq!(body["error"]["request_id"], "stats-1", "{body}");
    }
    let (status, body) = {
        let r = client()
            .get(server.url("/v1/stats?span=1"))
            .send()
            .await
            .unwrap();
        (r.status(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_query", "{body}");
    for role in ["user", "service"] {
        let response = client_as(role, "someone")
            .get(server.url("/v1/stats"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{role}");
    }
    let response = client_as("operator", "ops")
        .get(server.url("/v1/stats"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn every_node_answers_for_the_whole_cluster_on_postgres() {
    let Some(schema) = PgSchema::create().await else {
        return;
    };
    let a = Server::start(&schema.env());
    let b = Server::start(&schema.env());
    run_tasks(&a).await;
    run_tasks(&b).await;
    for node in [&a, &b] {
        let (status, stats) = get(node, "/v1/stats?window=15m").await;
        assert_eq!(status, 200, "{stats}");
        assert_counted(&stats, 2);
    }
    drop((a, b));
    schema.drop_schema().await;
}
