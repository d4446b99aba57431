//! Incoming webhooks against the real binary: sources and rules named in the server's
//! `mkww-mcp.toml`, deliveries signed as GitHub and Standard Webhooks senders sign them.

mod support;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures::{SinkExt, StreamExt};
use mcp_integrations::hooks::hmac_sha256;
use serde_json::{Value, json};
use std::time::Duration;
use support::{Server, get, temp_dir, token};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const GITHUB_SECRET: &str = "gh-e2e-secret";
const STANDARD_KEY: &[u8] = b"standard-webhooks-e2e-key-32byte";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A server with a GitHub source `gh` (push → `hooked.build`), a Standard Webhooks source
/// `std` (`invoice.paid` → `hooked.invoice`) and a generic HMAC source `ci` (every event →
/// `hooked.build`); both task types are served by external workers, so the tasks stay queued
/// for inspection.
fn start() -> Server {
    let dir = temp_dir();
    let config = format!(
        r#"
worker_task_types = ["hooked.build", "hooked.invoice"]
hooks_max_body_bytes = 4096

[hooks.gh]
kind = "github"
secret = "{GITHUB_SECRET}"
[[hooks.gh.rules]]
event = "push"
task = "hooked.build"
payload = {{ reason = "push" }}
payload_from = {{ repo = "/repository/full_name", sha = "/after" }}

[hooks.std]
kind = "standard"
secret = "whsec_{key}"
[[hooks.std.rules]]
event = "invoice.paid"
task = "hooked.invoice"
payload_from = {{ invoice = "/data/id" }}

[hooks.ci]
kind = "hmac"
secret = "ci-secret"
header = "X-Signature"
encoding = "base64"
prefix = "sha256="
event_header = "X-Event"
id_header = "X-Delivery"
[[hooks.ci.rules]]
event = "*"
task = "hooked.build"
payload_from = {{ whole = "" }}
"#,
        key = BASE64.encode(STANDARD_KEY)
    );
    std::fs::write(dir.join("mkww-mcp.toml"), config).unwrap();
    Server::start_in(dir, &[])
}

async fn github_hook(
    server: &Server,
    delivery: &str,
    body: &str,
    signature: Option<String>,
) -> (u16, Value) {
    let signature = signature.unwrap_or_else(|| {
        format!(
            "sha256={}",
            hex(&hmac_sha256(GITHUB_SECRET.as_bytes(), &[body.as_bytes()]))
        )
    });
    let response = reqwest::Client::new()
        .post(server.url("/v1/hooks/gh"))
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", signature)
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn standard_hook(server: &Server, id: &str, timestamp: i64, body: &str) -> (u16, Value) {
    let ts = timestamp.to_string();
    let signature = BASE64.encode(hmac_sha256(
        STANDARD_KEY,
        &[id.as_bytes(), b".", ts.as_bytes(), b".", body.as_bytes()],
    ));
    let response = reqwest::Client::new()
        .post(server.url("/v1/hooks/std"))
        .header("webhook-id", id)
        .header("webhook-timestamp", ts)
        .header("webhook-signature", format!("v1,{signature}"))
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn task_count(server: &Server) -> usize {
    let (status, list) = get(server, "/v1/tasks").await;
    assert_eq!(status, 200, "{list}");
    list["tasks"].as_array().unwrap().len()
}

#[tokio::test]
async fn a_github_signed_push_creates_the_configured_task_and_an_event() {
    let server = start();
    let mut request = (server.base.replacen("http://", "ws://", 1) + "/v1/ws")
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token("operator", "ops"))
            .parse()
            .unwrap(),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    socket
        .send(Message::Text(
            json!({"id": 1, "op": "subscribe", "channel": "hooks:gh"})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    // Subscribed before the hook arrives: an event published earlier would not be seen.
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("the subscription reply within 10 s")
            .expect("open")
            .expect("a frame");
        if let Message::Text(text) = frame {
            let frame: Value = serde_json::from_str(&text).unwrap();
            if frame["id"] == 1 {
                assert_eq!(frame["ok"], true, "{frame}");
                break;
            }
        }
    }

    let body = json!({"after": "abc123", "repository": {"full_name": "owner/app"}}).to_string();
    let (status, accepted) = github_hook(&server, "delivery-1", &body, None).await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["event"], "hook.gh.push");
    let ids = accepted["tasks"].as_array().unwrap();
    assert_eq!(ids.len(), 1);

    let (_, task) = get(&server, &format!("/v1/tasks/{}", ids[0].as_str().unwrap())).await;
    assert_eq!(task["type"], "hooked.build", "{task}");
    assert_eq!(
        task["payload"],
        json!({"reason": "push", "repo": "owner/app", "sha": "abc123"})
    );
    assert_eq!(task["created_by"], "hook:gh", "{task}");

    let event = loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("an event within 10 s")
            .expect("open")
            .expect("a frame");
        if let Message::Text(text) = frame {
            let frame: Value = serde_json::from_str(&text).unwrap();
            if frame["op"] == "event" {
                break frame;
            }
            if frame["id"] == 1 {
                assert_eq!(frame["ok"], true, "{frame}");
            }
        }
    };
    assert_eq!(event["channel"], "hooks:gh");
    assert_eq!(event["event"]["type"], "hook.gh.push");
    assert_eq!(event["event"]["data"]["delivery"], "delivery-1");
    assert_eq!(event["event"]["data"]["body"]["after"], "abc123");
    assert_eq!(event["event"]["data"]["tasks"], accepted["tasks"]);
}

#[tokio::test]
async fn rejects_bad_signatures_and_replays_without_storing_anything() {
    let server = start();
    let body = json!({"after": "x", "repository": {"full_name": "o/r"}}).to_string();
    let wrong = format!(
        "sha256={}",
        hex(&hmac_sha256(b"not-the-secret", &[body.as_bytes()]))
    );
    let (status, error) = github_hook(&server, "d-bad", &body, Some(wrong)).await;
    assert_eq!(status, 401, "{error}");
    assert_eq!(error["error"]["code"], "invalid_signature");
    let (status, _) = github_hook(&server, "d-bad", &body, Some("garbage".into())).await;
    assert_eq!(status, 401);
    assert_eq!(task_count(&server).await, 0, "nothing is stored");

    // The bad attempts did not consume the delivery id; the signed one goes through once.
    let (status, _) = github_hook(&server, "d-bad", &body, None).await;
    assert_eq!(status, 202);
    let (status, error) = github_hook(&server, "d-bad", &body, None).await;
    assert_eq!(status, 401, "a replayed delivery is refused: {error}");
    assert_eq!(error["error"]["code"], "invalid_signature");
    assert_eq!(task_count(&server).await, 1);
}

#[tokio::test]
async fn standard_webhooks_are_verified_within_the_tolerance() {
    let server = start();
    let body = json!({"type": "invoice.paid", "data": {"id": "in_1"}}).to_string();
    let now = chrono::Utc::now().timestamp();
    let (status, error) = standard_hook(&server, "msg_stale", now - 600, &body).await;
    assert_eq!(status, 401, "a stale timestamp is refused: {error}");
    assert_eq!(error["error"]["code"], "invalid_signature");
    let (status, error) = standard_hook(&server, "msg_future", now + 600, &body).await;
    assert_eq!(status, 401, "{error}");
    assert_eq!(task_count(&server).await, 0);

    let (status, accepted) = standard_hook(&server, "msg_1", now, &body).await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["event"], "hook.std.invoice.paid");
    let id = accepted["tasks"][0].as_str().unwrap();
    let (_, task) = get(&server, &format!("/v1/tasks/{id}")).await;
    assert_eq!(task["payload"], json!({"invoice": "in_1"}));
    let (status, _) = standard_hook(&server, "msg_1", now, &body).await;
    assert_eq!(status, 401, "replayed");

    // An event no rule matches is accepted, published, and makes no task.
    let other = json!({"type": "invoice.created"}).to_string();
    let (status, accepted) = standard_hook(&server, "msg_2", now, &other).await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["tasks"], json!([]));
}

#[tokio::test]
async fn refuses_unknown_sources_and_oversize_bodies() {
    let server = start();
    let response = reqwest::Client::new()
        .post(server.url("/v1/hooks/nobody"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "unknown_hook_source");

    let big = "x".repeat(8192);
    let (status, error) = github_hook(&server, "d-big", &big, None).await;
    assert_eq!(status, 413, "{error}");
    assert_eq!(error["error"]["code"], "payload_too_large");
    assert_eq!(task_count(&server).await, 0);
}

#[tokio::test]
async fn a_generic_hmac_header_is_verified_with_its_prefix_and_encoding() {
    let server = start();
    let body = r#"{"build":7}"#;
    let mac = BASE64.encode(hmac_sha256(b"ci-secret", &[body.as_bytes()]));
    let send = |signature: String, delivery: &'static str| {
        reqwest::Client::new()
            .post(server.url("/v1/hooks/ci"))
            .header("x-signature", signature)
            .header("x-event", "build.done")
            .header("x-delivery", delivery)
            .body(body)
            .send()
    };
    let response = send(mac.clone(), "c-1").await.unwrap();
    assert_eq!(response.status().as_u16(), 401, "the prefix is required");
    let response = send(format!("sha256={mac}"), "c-1").await.unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let accepted: Value = response.json().await.unwrap();
    assert_eq!(accepted["event"], "hook.ci.build.done");
    let id = accepted["tasks"][0].as_str().unwrap();
    let (_, task) = get(&server, &format!("/v1/tasks/{id}")).await;
    assert_eq!(task["payload"], json!({"whole": {"build": 7}}));
}
