//! The cluster's promises under races, proved with two real nodes on one PostgreSQL schema:
//! an idempotency key creates one task however many nodes receive it at once, a concurrency key
//! never lets two runs overlap across nodes, a refresh token rotates once however many nodes are
//! asked to rotate it at the same moment, and a node killed in the middle of a batch, with its
//! handlers and its workers busy, loses no task.

mod support;

use chrono::{DateTime, Utc};
use futures::future::join_all;
use serde_json::{Value, json};
use support::*;

/// Two nodes on one fresh schema, each running tasks in-process. `None`: PostgreSQL is not
/// reachable and this is not CI (the support module fails the test in CI).
async fn two_nodes(extra: &[(&str, String)]) -> Option<(PgSchema, Server, Server)> {
    let schema = PgSchema::create().await?;
    let mut env = schema.env();
    env.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
    let a = Server::start(&env);
    let b = Server::start(&env);
    Some((schema, a, b))
}

async fn post_as(
    client: &reqwest::Client,
    server: &Server,
    path: &str,
    body: &Value,
) -> (u16, Value) {
    call(client, "POST", server.url(path), Some(body.clone())).await
}

fn instant(task: &Value, field: &str) -> DateTime<Utc> {
    task[field]
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| panic!("`{field}` is a timestamp: {task}"))
}

#[tokio::test]
async fn one_idempotency_key_creates_one_task_across_two_nodes() {
    let Some((schema, a, b)) = two_nodes(&[]).await else {
        return;
    };
    let client = client();
    let body = json!({"type": "noop", "idempotency_key": "race-1"});
    // 24 creates at once, alternating between the nodes.
    let answers = join_all((0..24).map(|i| {
        let server = if i % 2 == 0 { &a } else { &b };
        post_as(&client, server, "/v1/tasks", &body)
    }))
    .await;
    let created = answers.iter().filter(|(status, _)| *status == 201).count();
    let replayed = answers.iter().filter(|(status, _)| *status == 200).count();
    assert_eq!((created, replayed), (1, 23), "{answers:?}");
    let ids: std::collections::HashSet<&str> = answers
        .iter()
        .map(|(_, task)| task["id"].as_str().expect("a task"))
        .collect();
    assert_eq!(ids.len(), 1, "every answer names the same task: {ids:?}");
    let (status, page) = get(&a, "/v1/tasks?limit=100").await;
    assert_eq!(status, 200);
    assert_eq!(page["tasks"].as_array().map(Vec::len), Some(1), "{page}");
    drop((a, b));
    schema.drop_schema().await;
}

#[tokio::test]
async fn a_concurrency_key_never_overlaps_runs_across_two_nodes() {
    let Some((schema, a, b)) = two_nodes(&[]).await else {
        return;
    };
    let client = &client();
    let creates = (0..16).map(|i| {
        let server = if i % 2 == 0 { &a } else { &b };
        let body = json!({
            "type": "sleep",
            "payload": {"ms": 30},
            "concurrency_key": "deploy:web",
        });
        async move { post_as(client, server, "/v1/tasks", &body).await }
    });
    let mut ids = Vec::new();
    for (status, task) in join_all(creates).await {
        assert_eq!(status, 201, "{task}");
        ids.push(task["id"].as_str().expect("id").to_owned());
    }
    let mut runs = Vec::new();
    for id in &ids {
        let task = wait_for(&a, id, is_final).await;
        assert_eq!(task["status"], "succeeded", "{task}");
        runs.push((instant(&task, "started_at"), instant(&task, "finished_at")));
    }
    runs.sort();
    for pair in runs.windows(2) {
        let ((_, finished), (started, _)) = (pair[0], pair[1]);
        assert!(
            started >= finished,
            "a run started at {started} before the previous one finished at {finished}"
        );
    }
    drop((a, b));
    schema.drop_schema().await;
}

#[tokio::test]
async fn a_refresh_token_rotates_once_when_two_nodes_race() {
    let Some((schema, a, b)) = two_nodes(&[]).await else {
        return;
    };
    let (status, body) = post(
        &a,
        "/v1/users",
        json!({"username": "racer", "role": "user", "password": "racer-password-123"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let anonymous = reqwest::Client::new();
    let (status, tokens) = post_as(
        &anonymous,
        &b,
        "/v1/auth/login",
        &json!({"username": "racer", "password": "racer-password-123"}),
    )
    .await;
    assert_eq!(status, 200, "{tokens}");
    let refresh = json!({"refresh_token": tokens["refresh_token"]});
    let answers = join_all((0..12).map(|i| {
        let server = if i % 2 == 0 { &a } else { &b };
        post_as(&anonymous, server, "/v1/auth/refresh", &refresh)
    }))
    .await;
    let rotated: Vec<&Value> = answers
        .iter()
        .filter(|(status, _)| *status == 200)
        .map(|(_, body)| body)
        .collect();
    assert_eq!(rotated.len(), 1, "exactly one rotation wins: {answers:?}");
    for (status, body) in answers.iter().filter(|(status, _)| *status != 200) {
        assert_eq!(*status, 401, "{body}");
        assert!(
            matches!(
                body["error"]["code"].as_str(),
                Some("refresh_token_reused" | "invalid_refresh_token")
            ),
            "{body}"
        );
    }
    // The losers presented a used token: theft is assumed and the family, winner included, is
    // revoked. Revocation is durable, so the next rotation fails on either node.
    let winner = json!({"refresh_token": rotated[0]["refresh_token"]});
    for server in [&a, &b] {
        let (status, body) = post_as(&anonymous, server, "/v1/auth/refresh", &winner).await;
        assert_eq!(status, 401, "{body}");
    }
    drop((a, b));
    schema.drop_schema().await;
}

#[tokio::test]
async fn a_node_killed_mid_batch_with_busy_workers_loses_no_task() {
    let short_leases = [
        ("MCP_LEASE_MS", "1500".to_owned()),
        ("MCP_RESCUE_INTERVAL_MS", "200".to_owned()),
        ("MCP_WORKER_CONCURRENCY", "8".to_owned()),
    ];
    let Some((schema, a, mut b)) = two_nodes(&short_leases).await else {
        return;
    };
    // A worker on B holds render tasks while both nodes run a batch of sleeps in-process.
    let mut worker_b = connect(&b, Some(&token("service", "worker-b"))).await;
    let reply = request(
        &mut worker_b,
        json!({"id": "reg", "op": "worker.register", "types": ["render.deploy"], "concurrency": 4}),
    )
    .await;
    assert_eq!(reply["ok"], true, "{reply}");
    let mut batch: Vec<Value> = (0..48)
        .map(|_| json!({"type": "sleep", "payload": {"ms": 400}}))
        .collect();
    batch.extend((0..6).map(|_| json!({"type": "render.deploy"})));
    let (status, created) = post(&a, "/v1/tasks/batch", json!({"tasks": batch})).await;
    assert_eq!(status, 201, "{created}");
    let ids: Vec<String> = created["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| t["id"].as_str().expect("id").to_owned())
        .collect();
    // B is busy: its worker holds a task, and the batch runs on both nodes' handlers.
    assigned(&mut worker_b).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (_, running) = get(&b, "/v1/tasks?status=running&type=sleep&limit=500").await;
        if running["tasks"].as_array().is_some_and(|t| !t.is_empty()) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "B never ran a sleep");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    b.kill9();
    // A worker on A takes over the render tasks, those B's worker held included once rescued.
    let mut worker_a = connect(&a, Some(&token("service", "worker-a"))).await;
    let reply = request(
        &mut worker_a,
        json!({"id": "reg", "op": "worker.register", "types": ["render.deploy"], "concurrency": 6}),
    )
    .await;
    assert_eq!(reply["ok"], true, "{reply}");
    // All six at once (its concurrency): those still queued, then those B's worker held, once
    // their lease has expired and the rescuer has requeued them.
    let mut held = Vec::new();
    for _ in 0..6 {
        held.push(assigned(&mut worker_a).await);
    }
    for (n, task) in held.iter().enumerate() {
        let reply = request(
            &mut worker_a,
            json!({"id": n, "op": "task.complete", "task_id": task["id"], "result": {}}),
        )
        .await;
        assert_eq!(reply["ok"], true, "{reply}");
    }
    for id in &ids {
        let task = wait_for(&a, id, is_final).await;
        assert_eq!(task["status"], "succeeded", "{task}");
    }
    drop((a, b));
    schema.drop_schema().await;
}
