//! The SSRF attacks of issue 12 (item 1), replayed against the real binary over real sockets:
//! a `user` making the hub fetch its own `/metrics`, literal loopback and metadata addresses in
//! every spelling, a name that resolves to loopback, a redirect from an allowed server to
//! loopback, webhooks aimed at NAT64/6to4/compatible forms, and reply bodies kept without a cap.
//! Each must now fail safely: refused, or failed for good without the reply in the task.

mod support;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::{Value, json};
use std::net::SocketAddr;
use support::{Server, call, client_as, connect, request, token, wait_for};

/// What `/metrics` of the hub contains; never to be seen in a task.
const METRICS_MARKER: &str = "http_requests_total";

/// A fake outside server on `ip`: `/to?url=…` redirects there, `/big` answers 200 with 10 000
/// bytes, `/big-error` answers 500 with 10 000 bytes.
async fn fake(ip: &str) -> SocketAddr {
    let app = Router::new()
        .route(
            "/to",
            get(
                |axum::extract::Query(query): axum::extract::Query<Vec<(String, String)>>| async move {
                    let target = query
                        .into_iter()
                        .find(|(k, _)| k == "url")
                        .map(|(_, v)| v)
                        .unwrap_or_default();
                    (StatusCode::FOUND, [(header::LOCATION, target)]).into_response()
                },
            ),
        )
        .route("/big", get(|| async { "x".repeat(10_000) }))
        .route(
            "/big-error",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "e".repeat(10_000)) }),
        );
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn hub_port(server: &Server) -> u16 {
    server
        .base
        .rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .expect("the hub's port")
}

async fn create_as(server: &Server, role: &str, task: Value) -> (u16, Value) {
    call(
        &client_as(role, &format!("{role}-1")),
        "POST",
        server.url("/v1/tasks"),
        Some(task),
    )
    .await
}

fn http_request(url: &str) -> Value {
    json!({"type": "http.request", "max_attempts": 3, "payload": {"url": url}})
}

fn task_id(task: &Value) -> String {
    task["id"].as_str().expect("a task id").to_owned()
}

/// A dead task's error, with a check that no part of the hub's metrics leaked into it.
fn dead_error(task: &Value) -> &Value {
    assert_eq!(task["status"], "dead", "{task}");
    assert!(!task.to_string().contains(METRICS_MARKER), "{task}");
    &task["error"]
}

#[tokio::test]
async fn a_user_may_not_create_http_requests_on_any_edge() {
    let server = Server::start(&[]);
    let attack = http_request(&format!("http://127.0.0.1:{}/metrics", hub_port(&server)));
    let (status, body) = create_as(&server, "user", attack.clone()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );

    let (status, body) = call(
        &client_as("user", "user-1"),
        "POST",
        server.url("/v1/tasks/batch"),
        Some(json!({"tasks": [{"type": "noop"}, http_request("https://example.com/")]})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );

    let mut socket = connect(&server, Some(&token("user", "user-1"))).await;
    let reply = request(
        &mut socket,
        json!({"id": 1, "op": "task.create", "task": http_request("https://example.com/")}),
    )
    .await;
    assert_eq!(reply["error"]["code"], "forbidden", "{reply}");

    // Nothing was created for the user.
    let (status, list) = call(
        &client_as("user", "user-1"),
        "GET",
        server.url("/v1/tasks"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["tasks"], json!([]), "{list}");

    // Other task types stay open to users.
    let (status, body) = create_as(&server, "user", json!({"type": "noop"})).await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn literal_forbidden_addresses_are_refused_at_creation() {
    let server = Server::start(&[]);
    let port = hub_port(&server);
    for url in [
        format!("http://127.0.0.1:{port}/metrics"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        format!("http://[::ffff:127.0.0.1]:{port}/metrics"),
        format!("http://2130706433:{port}/metrics"),
        format!("http://0x7f.1:{port}/metrics"),
        format!("http://127.1:{port}/metrics"),
        format!("http://[::1]:{port}/metrics"),
        format!("http://[::127.0.0.1]:{port}/metrics"),
        format!("http://[64:ff9b::7f00:1]:{port}/metrics"),
        format!("http://[2002:7f00:1::]:{port}/metrics"),
        "http://0.0.0.0/".to_owned(),
        "http://10.0.0.1/".to_owned(),
        "http://100.64.0.1/".to_owned(),
        "http://198.18.0.1/".to_owned(),
        "http://192.0.0.8/".to_owned(),
        "http://240.0.0.1/".to_owned(),
        "http://[fd00::1]/".to_owned(),
        "http://[fe80::1]/".to_owned(),
    ] {
        for role in ["service", "admin"] {
            let (status, body) = create_as(&server, role, http_request(&url)).await;
            assert_eq!(status, 422, "{role} {url}: {body}");
            assert_eq!(
                body["error"]["code"], "destination_forbidden",
                "{url}: {body}"
            );
            assert!(body["error"]["details"]["range"].is_string(), "{body}");
        }
    }
    // A public address passes creation (it is not dialled here: the task is cancelled).
    let (status, body) = create_as(
        &server,
        "service",
        json!({"type": "http.request", "delay_ms": 600000, "payload": {"url": "https://192.0.1.1/"}}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn a_name_resolving_to_loopback_fails_the_task_for_good() {
    let server = Server::start(&[]);
    let url = format!("http://localhost:{}/metrics", hub_port(&server));
    let (status, task) = create_as(&server, "service", http_request(&url)).await;
    assert_eq!(status, 201, "{task}");
    let done = wait_for(&server, &task_id(&task), support::is_final).await;
    let error = dead_error(&done);
    assert_eq!(done["attempts"], 1, "not retried: {done}");
    assert_eq!(error["details"]["error"], "destination_forbidden", "{done}");
    assert_eq!(error["details"]["range"], "loopback", "{done}");
}

#[tokio::test]
async fn a_redirect_to_a_forbidden_address_is_not_followed() {
    // The outside server sits on 127.0.0.2, which the operator allows; the hub's own loopback
    // address stays forbidden.
    let outside = fake("127.0.0.2").await;
    let server = Server::start(&[("MCP_OUTBOUND_ALLOW", r#"["127.0.0.2"]"#.into())]);
    let port = hub_port(&server);
    for target in [
        format!("http://127.0.0.1:{port}/metrics"),
        format!("http://localhost:{port}/metrics"),
        format!("http://[::1]:{port}/metrics"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
    ] {
        let url =
            reqwest::Url::parse_with_params(&format!("http://{outside}/to"), [("url", &target)])
                .unwrap();
        let (status, task) = create_as(&server, "service", http_request(url.as_str())).await;
        assert_eq!(status, 201, "{task}");
        let done = wait_for(&server, &task_id(&task), support::is_final).await;
        let error = dead_error(&done);
        assert_eq!(done["attempts"], 1, "{target}: not retried: {done}");
        assert_eq!(
            error["details"]["error"], "destination_forbidden",
            "{target}: {done}"
        );
    }
}

#[tokio::test]
async fn webhooks_may_not_target_nat64_6to4_or_other_hidden_loopback_forms() {
    let server = Server::start(&[]);
    let admin = client_as("admin", "admin-1");
    for url in [
        "http://[64:ff9b::7f00:1]/hook",
        "http://[64:ff9b::a9fe:a9fe]/hook",
        "http://[2002:7f00:1::]/hook",
        "http://[::127.0.0.1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://198.18.0.1/hook",
        "http://192.0.0.8/hook",
        "http://240.0.0.1/hook",
        "http://2130706433/hook",
        "http://localhost/hook",
    ] {
        let (status, body) = call(
            &admin,
            "POST",
            server.url("/v1/webhooks"),
            Some(json!({"url": url, "events": ["task.*"]})),
        )
        .await;
        assert_eq!(status, 422, "{url}: {body}");
        assert_eq!(
            body["error"]["code"], "destination_forbidden",
            "{url}: {body}"
        );
    }
}

#[tokio::test]
async fn vcc_repositories_may_not_point_at_forbidden_addresses() {
    let server = Server::start(&[]);
    let (status, body) = call(
        &client_as("operator", "ops"),
        "POST",
        server.url("/v1/vcc/repositories"),
        Some(json!({"url": "http://169.254.169.254/index.json"})),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "destination_forbidden", "{body}");
}

#[tokio::test]
async fn reply_bodies_kept_in_results_and_errors_are_capped() {
    let outside = fake("127.0.0.1").await;
    let server = Server::start(&[
        ("MCP_OUTBOUND_ALLOW", r#"["127.0.0.1"]"#.into()),
        ("MCP_HTTP_MAX_BODY_BYTES", "64".into()),
    ]);
    let (status, task) = create_as(
        &server,
        "service",
        http_request(&format!("http://{outside}/big")),
    )
    .await;
    assert_eq!(status, 201, "{task}");
    let done = wait_for(&server, &task_id(&task), support::is_final).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        done["result"]["body"].as_str().map(str::len),
        Some(64),
        "{done}"
    );
    assert_eq!(done["result"]["truncated"], true, "{done}");

    let (status, task) = create_as(
        &server,
        "service",
        json!({"type": "http.request", "max_attempts": 1,
               "payload": {"url": format!("http://{outside}/big-error")}}),
    )
    .await;
    assert_eq!(status, 201, "{task}");
    let done = wait_for(&server, &task_id(&task), support::is_final).await;
    assert_eq!(done["status"], "dead", "{done}");
    let details = &done["error"]["details"];
    assert_eq!(details["status"], 500, "{done}");
    assert_eq!(details["body"].as_str().map(str::len), Some(64), "{done}");
    assert_eq!(details["truncated"], true, "{done}");
}
