//! End-to-end tests: the real binary, real HTTP, real SQLite files and a real PostgreSQL.

mod support;

use serde_json::{Value, json};
use std::time::Duration;
use support::*;

fn id(task: &Value) -> String {
    task["id"].as_str().expect("task id").to_owned()
}

#[tokio::test]
async fn runs_a_task_through_its_lifecycle() {
    let server = Server::start(&[]);
    let response = client()
        .post(server.url("/v1/tasks"))
        .header("x-request-id", "walkthrough-1")
        .json(&json!({"type": "echo", "payload": {"hello": "world"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["x-request-id"], "walkthrough-1");
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let created: Value = response.json().await.unwrap();
    assert_eq!(location, format!("/v1/tasks/{}", id(&created)));
    assert_eq!(created["status"], "queued");
    assert_eq!(created["queue"], "default");
    assert_eq!(created["max_attempts"], 3);
    assert_eq!(
        created["backoff"],
        json!({"base_ms": 1000, "max_ms": 600000})
    );
    assert_eq!(created["correlation_id"], "walkthrough-1");
    let done = wait_for(&server, &id(&created), is_final).await;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["result"], json!({"hello": "world"}));
    assert_eq!(done["attempts"], 1);
    for field in ["created_at", "started_at", "finished_at", "run_at"] {
        assert!(done[field].is_string(), "{field} missing: {done}");
    }
}

#[tokio::test]
async fn idempotency_key_returns_the_existing_task_with_200() {
    let server = Server::start(&[]);
    let body = json!({"type": "noop", "idempotency_key": "order-42"});
    let (first_status, first) = post(&server, "/v1/tasks", body.clone()).await;
    let (second_status, second) = post(&server, "/v1/tasks", body).await;
    assert_eq!(first_status, 201);
    assert_eq!(second_status, 200);
    assert_eq!(first["id"], second["id"]);
}

#[tokio::test]
async fn creates_batches_and_lists_with_filters_and_cursor() {
    let server = Server::start(&[("MCP_WORKER_CONCURRENCY", "0".into())]);
    let tasks: Vec<Value> = (0..5)
        .map(|i| json!({"type": if i % 2 == 0 { "noop" } else { "echo" }, "queue": "batch"}))
        .collect();
    let (status, created) = post(&server, "/v1/tasks/batch", json!({"tasks": tasks})).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["tasks"].as_array().unwrap().len(), 5);

    let (_, page1) = get(&server, "/v1/tasks?limit=2&queue=batch").await;
    assert_eq!(page1["tasks"].as_array().unwrap().len(), 2);
    let cursor = page1["next_cursor"].as_str().unwrap().to_owned();
    let (_, page2) = get(
        &server,
        &format!("/v1/tasks?limit=2&queue=batch&cursor={cursor}"),
    )
    .await;
    let (_, page3) = get(
        &server,
        &format!(
            "/v1/tasks?limit=2&queue=batch&cursor={}",
            page2["next_cursor"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(page3["tasks"].as_array().unwrap().len(), 1);
    assert!(page3["next_cursor"].is_null());
    let mut seen: Vec<Value> = [&page1, &page2, &page3]
        .iter()
        .flat_map(|p| {
            p["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["id"].clone())
        })
        .collect();
    seen.dedup();
    assert_eq!(seen.len(), 5);

    let (_, echoes) = get(&server, "/v1/tasks?type=echo&status=queued").await;
    assert_eq!(echoes["tasks"].as_array().unwrap().len(), 2);
    let (_, counts) = get(&server, "/v1/queues").await;
    assert_eq!(counts["queues"]["batch"]["queued"], 5);

    // All or nothing: one bad task fails the whole batch.
    let (status, error) = post(
        &server,
        "/v1/tasks/batch",
        json!({"tasks": [{"type": "noop", "queue": "atomic"}, {"type": "nope"}]}),
    )
    .await;
    assert_eq!(status, 422);
    assert_eq!(error["error"]["code"], "unknown_task_type");
    assert_eq!(error["error"]["details"]["index"], 1);
    let (_, atomic) = get(&server, "/v1/tasks?queue=atomic").await;
    assert!(atomic["tasks"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn retries_with_backoff_until_dead_and_can_be_retried_by_hand() {
    let server = Server::start(&[]);
    let backoff = json!({"base_ms": 10, "max_ms": 50});
    let (_, flaky) = post(
        &server,
        "/v1/tasks",
        json!({"type": "fail", "payload": {"times": 2}, "max_attempts": 3, "backoff": backoff}),
    )
    .await;
    let (_, doomed) = post(
        &server,
        "/v1/tasks",
        json!({"type": "fail", "max_attempts": 2, "backoff": backoff}),
    )
    .await;
    let flaky = wait_for(&server, &id(&flaky), is_final).await;
    assert_eq!(flaky["status"], "succeeded");
    assert_eq!(flaky["attempts"], 3);
    let dead = wait_for(&server, &id(&doomed), is_final).await;
    assert_eq!(dead["status"], "dead");
    assert_eq!(dead["attempts"], 2);
    assert_eq!(dead["error"]["attempt"], 2);
    assert!(
        dead["error"]["message"]
            .as_str()
            .unwrap()
            .contains("failing on purpose")
    );

    let (status, requeued) = post(
        &server,
        &format!("/v1/tasks/{}/retry", id(&dead)),
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{requeued}");
    assert_eq!(requeued["status"], "queued");
    let again = wait_for(&server, &id(&dead), |t| t["attempts"] == 3 && is_final(t)).await;
    assert_eq!(again["status"], "dead");

    let (status, error) = post(
        &server,
        &format!("/v1/tasks/{}/retry", id(&flaky)),
        json!({}),
    )
    .await;
    assert_eq!(status, 409);
    assert_eq!(error["error"]["code"], "task_not_retryable");
}

#[tokio::test]
async fn a_timed_out_attempt_counts_as_failed() {
    let server = Server::start(&[]);
    let (_, task) = post(
        &server,
        "/v1/tasks",
        json!({"type": "sleep", "payload": {"ms": 10000}, "timeout_ms": 100, "max_attempts": 1}),
    )
    .await;
    let done = wait_for(&server, &id(&task), is_final).await;
    assert_eq!(done["status"], "dead");
    assert!(
        done["error"]["message"]
            .as_str()
            .unwrap()
            .contains("timed out"),
        "{done}"
    );
}

#[tokio::test]
async fn cancels_queued_and_running_tasks() {
    let server = Server::start(&[]);
    let (_, later) = post(
        &server,
        "/v1/tasks",
        json!({"type": "noop", "delay_ms": 60000}),
    )
    .await;
    assert_eq!(later["status"], "scheduled");
    let (status, cancelled) = post(
        &server,
        &format!("/v1/tasks/{}/cancel", id(&later)),
        json!({}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(cancelled["status"], "cancelled");

    let (_, long) = post(
        &server,
        "/v1/tasks",
        json!({"type": "sleep", "payload": {"ms": 20000}}),
    )
    .await;
    wait_for(&server, &id(&long), |t| t["status"] == "running").await;
    let (status, cancelled) = post(
        &server,
        &format!("/v1/tasks/{}/cancel", id(&long)),
        json!({}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(cancelled["status"], "cancelled");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, after) = get(&server, &format!("/v1/tasks/{}", id(&long))).await;
    assert_eq!(
        after["status"], "cancelled",
        "a cancelled task stays cancelled"
    );

    let (status, error) = post(
        &server,
        &format!("/v1/tasks/{}/cancel", id(&long)),
        json!({}),
    )
    .await;
    assert_eq!(status, 409);
    assert_eq!(error["error"]["code"], "task_already_finished");
}

#[tokio::test]
async fn higher_priority_runs_first() {
    let server = Server::start(&[("MCP_WORKER_CONCURRENCY", "1".into())]);
    let (_, blocker) = post(
        &server,
        "/v1/tasks",
        json!({"type": "sleep", "payload": {"ms": 300}}),
    )
    .await;
    wait_for(&server, &id(&blocker), |t| t["status"] == "running").await;
    let (_, low) = post(
        &server,
        "/v1/tasks",
        json!({"type": "noop", "priority": -5}),
    )
    .await;
    let (_, mid) = post(&server, "/v1/tasks", json!({"type": "noop"})).await;
    let (_, high) = post(
        &server,
        "/v1/tasks",
        json!({"type": "noop", "priority": 10}),
    )
    .await;
    let started = |t: &Value| instant(&t["started_at"]);
    let low = wait_for(&server, &id(&low), is_final).await;
    let mid = wait_for(&server, &id(&mid), is_final).await;
    let high = wait_for(&server, &id(&high), is_final).await;
    assert!(started(&high) < started(&mid) && started(&mid) < started(&low));
}

#[tokio::test]
async fn never_runs_more_than_the_concurrency_limit_per_key() {
    let server = Server::start(&[("MCP_WORKER_CONCURRENCY", "8".into())]);
    let tasks: Vec<Value> = (0..4)
        .map(|_| json!({"type": "sleep", "payload": {"ms": 150}, "concurrency_key": "deploy:web", "concurrency_limit": 1}))
        .collect();
    let (_, created) = post(&server, "/v1/tasks/batch", json!({"tasks": tasks})).await;
    let mut spans = Vec::new();
    for task in created["tasks"].as_array().unwrap() {
        let done = wait_for(&server, &id(task), is_final).await;
        assert_eq!(done["status"], "succeeded");
        spans.push((instant(&done["started_at"]), instant(&done["finished_at"])));
    }
    spans.sort();
    for pair in spans.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "overlapping runs: {pair:?}");
    }
}

#[tokio::test]
async fn answers_are_neither_cached_nor_sniffed() {
    let server = Server::start(&[]);
    let anonymous = reqwest::Client::new();
    let answers = [
        client().get(server.url("/v1/tasks")).send().await.unwrap(),
        anonymous
            .post(server.url("/v1/auth/login"))
            .json(&json!({"username": "nobody", "password": "not-a-password"}))
            .send()
            .await
            .unwrap(),
        anonymous.get(server.url("/v1/tasks")).send().await.unwrap(),
        client()
            .get(server.url("/no/such/route"))
            .send()
            .await
            .unwrap(),
    ];
    let statuses: Vec<u16> = answers.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(statuses, [200, 401, 401, 404]);
    for answer in &answers {
        assert_eq!(answer.headers()["cache-control"], "no-store", "{answer:?}");
        assert_eq!(answer.headers()["x-content-type-options"], "nosniff");
    }
}

#[tokio::test]
async fn bad_input_gets_a_clear_json_error() {
    let server = Server::start(&[("MCP_MAX_BODY_BYTES", "4096".into())]);
    let http = client();
    let send = |request: reqwest::RequestBuilder| async move {
        let response = request
            .header("x-request-id", "bad-1")
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let header = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let body: Value = response.json().await.expect("error body is JSON");
        assert_eq!(body["error"]["request_id"], "bad-1");
        assert_eq!(header, "bad-1");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        (status, body["error"]["code"].as_str().unwrap().to_owned())
    };
    let json_post = |body: &str| {
        http.post(server.url("/v1/tasks"))
            .header("content-type", "application/json")
            .body(body.to_owned())
    };
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (json_post("{\"type\": \"noop\""), 400, "malformed_json"),
        (
            json_post("{\"type\": \"noop\", \"colour\": 1}"),
            422,
            "invalid_request",
        ),
        (json_post("{\"type\": 7}"), 422, "invalid_request"),
        (json_post("{}"), 422, "invalid_request"),
        (
            json_post("{\"type\": \"warp.drive\"}"),
            422,
            "unknown_task_type",
        ),
        (
            json_post("{\"type\": \"sleep\", \"payload\": {}}"),
            422,
            "invalid_payload",
        ),
        (
            json_post("{\"type\": \"noop\", \"max_attempts\": 0}"),
            422,
            "invalid_task",
        ),
        (
            json_post(&format!(
                "{{\"type\": \"echo\", \"payload\": \"{}\"}}",
                "x".repeat(8000)
            )),
            413,
            "payload_too_large",
        ),
        (
            http.post(server.url("/v1/tasks"))
                .body("{\"type\":\"noop\"}"),
            415,
            "unsupported_media_type",
        ),
        (
            http.get(server.url("/v1/tasks/0190a0b0-0000-7000-8000-000000000000")),
            404,
            "task_not_found",
        ),
        (
            http.get(server.url("/v1/tasks/not-a-uuid")),
            404,
            "task_not_found",
        ),
        (
            http.post(server.url("/v1/tasks/not-a-uuid/cancel")),
            404,
            "task_not_found",
        ),
        (
            http.get(server.url("/v1/tasks?status=sleeping")),
            400,
            "invalid_query",
        ),
        (
            http.get(server.url("/v1/tasks?limit=0")),
            400,
            "invalid_query",
        ),
        (
            http.get(server.url("/v1/tasks?limit=abc")),
            400,
            "invalid_query",
        ),
        (
            http.get(server.url("/v1/tasks?cursor=zzz")),
            400,
            "invalid_cursor",
        ),
        (
            http.post(server.url("/v1/tasks/batch"))
                .json(&json!({"tasks": []})),
            422,
            "invalid_batch_size",
        ),
        (http.get(server.url("/v1/nothing-here")), 404, "not_found"),
        (
            http.delete(server.url("/v1/tasks")),
            405,
            "method_not_allowed",
        ),
    ];
    for (request, status, code) in cases {
        assert_eq!(send(request).await, (status, code.to_owned()));
    }
}

#[tokio::test]
async fn serves_probes_and_the_openapi_document() {
    let server = Server::start(&[]);
    assert_eq!(get(&server, "/healthz").await.0, 200);
    let (status, ready) = get(&server, "/readyz").await;
    assert_eq!((status, ready["status"].as_str()), (200, Some("ready")));
    let (status, doc) = get(&server, "/openapi.json").await;
    assert_eq!(status, 200);
    for path in [
        "/v1/tasks",
        "/v1/tasks/batch",
        "/v1/tasks/{id}",
        "/v1/tasks/{id}/cancel",
        "/v1/tasks/{id}/retry",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from OpenAPI"
        );
    }
    assert!(doc["components"]["schemas"]["Task"].is_object());
}

#[tokio::test]
async fn logs_one_json_line_per_request_with_its_request_id() {
    let server = Server::start(&[]);
    let response = client()
        .get(server.url("/healthz"))
        .header("x-request-id", "log-me-7")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let generated = client().get(server.url("/healthz")).send().await.unwrap();
    assert!(
        !generated.headers()["x-request-id"].is_empty(),
        "an id is generated when absent"
    );
    let line = server
        .wait_for_log(|l| l["request_id"] == "log-me-7")
        .expect("request log line");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/healthz");
    assert_eq!(line["status"], 200);
    assert!(line["latency_ms"].is_number());
}

#[tokio::test]
async fn an_api_only_node_never_claims() {
    let server = Server::start(&[("MCP_WORKER_CONCURRENCY", "0".into())]);
    let (_, task) = post(&server, "/v1/tasks", json!({"type": "noop"})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, task) = get(&server, &format!("/v1/tasks/{}", id(&task))).await;
    assert_eq!(task["status"], "queued");
}

#[tokio::test]
async fn graceful_shutdown_releases_unfinished_tasks() {
    let dir = temp_dir();
    let mut server = Server::start_in(dir.clone(), &[("MCP_SHUTDOWN_GRACE_MS", "200".into())]);
    let (_, quick) = post(
        &server,
        "/v1/tasks",
        json!({"type": "sleep", "payload": {"ms": 50}}),
    )
    .await;
    let (_, slow) = post(
        &server,
        "/v1/tasks",
        json!({"type": "sleep", "payload": {"ms": 60000}}),
    )
    .await;
    wait_for(&server, &id(&slow), |t| t["status"] == "running").await;
    assert!(server.terminate().success());
    drop(server);
    let server = Server::start_in(dir, &[("MCP_WORKER_CONCURRENCY", "0".into())]);
    let (_, slow) = get(&server, &format!("/v1/tasks/{}", id(&slow))).await;
    assert_eq!(
        slow["status"], "queued",
        "released for another node: {slow}"
    );
    assert_eq!(
        slow["attempts"], 0,
        "the interrupted attempt is not counted"
    );
    let (_, quick) = get(&server, &format!("/v1/tasks/{}", id(&quick))).await;
    assert_eq!(
        quick["status"], "succeeded",
        "finished within the grace period"
    );
}

#[tokio::test]
async fn http_request_tasks_call_real_servers() {
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(|body: String| async move { format!("got {body}") }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    // The target is a loopback server, which the outbound guard refuses unless allowed.
    let server = Server::start(&[("MCP_OUTBOUND_ALLOW", r#"["127.0.0.1"]"#.into())]);
    let (status, task) = post(
        &server,
        "/v1/tasks",
        json!({"type": "http.request", "payload": {"method": "POST", "url": target, "body": "ping"}}),
    )
    .await;
    assert_eq!(status, 201, "{task}");
    let done = wait_for(&server, &id(&task), is_final).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["result"]["status"], 200);
    assert_eq!(done["result"]["body"], "got ping");
}

#[tokio::test]
async fn postgres_nodes_share_one_queue_and_wake_each_other() {
    let Some(schema) = PgSchema::create().await else {
        return;
    };
    let mut api_env = schema.env();
    api_env.push(("MCP_WORKER_CONCURRENCY", "0".into()));
    let api = Server::start(&api_env);
    let worker = Server::start(&schema.env());
    let (status, task) = post(
        &api,
        "/v1/tasks",
        json!({"type": "echo", "payload": {"n": 1}}),
    )
    .await;
    assert_eq!(status, 201);
    let done = wait_for(&api, &id(&task), is_final).await;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["result"], json!({"n": 1}));
    let (_, same) = get(&worker, &format!("/v1/tasks/{}", id(&task))).await;
    assert_eq!(same["status"], "succeeded");
    drop(api);
    drop(worker);
    schema.drop_schema().await;
}

#[tokio::test]
async fn loses_nothing_when_killed_with_sigkill_on_postgres() {
    let Some(schema) = PgSchema::create().await else {
        return;
    };
    survives_sigkill_mid_run(schema.env()).await;
    schema.drop_schema().await;
}

#[tokio::test]
async fn loses_nothing_when_killed_with_sigkill_on_sqlite() {
    survives_sigkill_mid_run(Vec::new()).await;
}

/// Enqueues 2,000 `sleep` tasks, kills the server with SIGKILL mid-run, starts it again on the
/// same data, and checks that every task ends `succeeded` exactly as it was created.
async fn survives_sigkill_mid_run(mut env: Vec<(&'static str, String)>) {
    env.extend([
        ("MCP_LEASE_MS", "1500".to_string()),
        ("MCP_RESCUE_INTERVAL_MS", "300".to_string()),
        ("MCP_WORKER_CONCURRENCY", "100".to_string()),
        ("MCP_TASK_BACKOFF_BASE_MS", "10".to_string()),
        ("MCP_TASK_BACKOFF_MAX_MS", "100".to_string()),
    ]);
    let dir = temp_dir();
    let mut server = Server::start_in(dir.clone(), &env);
    let mut created = Vec::new();
    for chunk in 0..2 {
        let tasks: Vec<Value> = (0..1000)
            .map(|i| json!({"type": "sleep", "payload": {"ms": 20 + (i % 7)}, "queue": format!("crash-{chunk}")}))
            .collect();
        let (status, batch) = post(&server, "/v1/tasks/batch", json!({"tasks": tasks})).await;
        assert_eq!(status, 201);
        created.extend(batch["tasks"].as_array().unwrap().iter().cloned());
    }
    let succeeded = |counts: &Value| -> u64 {
        ["crash-0", "crash-1"]
            .iter()
            .map(|q| counts["queues"][q]["succeeded"].as_u64().unwrap_or(0))
            .sum()
    };
    // Kill mid-run: some tasks done, some running, most still queued.
    loop {
        let (_, counts) = get(&server, "/v1/queues").await;
        if succeeded(&counts) >= 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill9();
    drop(server);
    let server = Server::start_in(dir, &env);
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let (_, counts) = get(&server, "/v1/queues").await;
        if succeeded(&counts) == 2000 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not all tasks finished: {counts}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for original in &created {
        let (_, task) = get(&server, &format!("/v1/tasks/{}", id(original))).await;
        assert_eq!(task["status"], "succeeded");
        for field in [
            "type",
            "queue",
            "payload",
            "priority",
            "max_attempts",
            "created_at",
        ] {
            assert_eq!(task[field], original[field], "{field} changed");
        }
    }
}

#[test]
fn token_command_prints_a_token_that_verifies() {
    let secret = "s".repeat(48);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_mkww-mcp"))
        .args([
            "token",
            "--role",
            "service",
            "--sub",
            "discord-bot",
            "--ttl",
            "10m",
        ])
        .current_dir(temp_dir())
        .env("MCP_JWT_SECRET", &secret)
        .output()
        .expect("run mkww-mcp token");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8(output.stdout).unwrap();
    let tokens = mcp_api::token::Tokens::hs256(secret.as_bytes(), "mkww-mcp", "mkww-mcp").unwrap();
    let claims = tokens.verify(token.trim()).expect("verifies");
    assert_eq!(claims.sub, "discord-bot");
    assert_eq!(claims.role, mcp_core::principal::Role::Service);
    assert!(claims.exp - claims.iat == 600);

    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_mkww-mcp"))
        .args(["token", "--role", "overlord"])
        .current_dir(temp_dir())
        .output()
        .expect("run mkww-mcp token");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("unknown role"));
}

/// A timestamp of the API as a time: RFC 3339 strings with different numbers of fractional
/// digits do not sort as text.
fn instant(value: &Value) -> chrono::DateTime<chrono::Utc> {
    value
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
        .unwrap_or_else(|| panic!("not a timestamp: {value}"))
}

#[tokio::test]
async fn openapi_command_prints_the_document_the_server_serves() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_mkww-mcp"))
        .arg("openapi")
        .current_dir(temp_dir())
        .output()
        .expect("run mkww-mcp openapi");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed: Value = serde_json::from_slice(&output.stdout).expect("stdout is JSON");
    assert!(printed["paths"]["/v1/tasks"]["post"].is_object());
    assert!(printed["components"]["schemas"]["Task"].is_object());

    let server = Server::start(&[]);
    let (status, served) = get(&server, "/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(
        printed, served,
        "the printed and the served documents differ"
    );
}
