//! Discord's interactions endpoint against the real binary: interactions signed with a key pair
//! made here, slash commands mapped to tasks in the server's `mkww-mcp.toml`, and follow-ups
//! received by a fake Discord API this test starts.

mod support;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::routing::post as route_post;
use ed25519_dalek::{Signer, SigningKey};
use rand::RngCore;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{Server, get, temp_dir};

const APPLICATION_ID: &str = "1100";
const INTERACTION_TOKEN: &str = "aW50ZXJhY3Rpb24.token-1";

/// Follow-ups the fake received: path (with query) and body.
#[derive(Clone, Default)]
struct Followups(Arc<Mutex<Vec<(String, Value)>>>);

impl Followups {
    /// Waits (up to 30 s) for the `n`th follow-up.
    async fn nth(&self, n: usize) -> (String, Value) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(found) = self.0.lock().unwrap().get(n).cloned() {
                return found;
            }
            assert!(Instant::now() < deadline, "no follow-up arrived");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn webhook(
    State(seen): State<Followups>,
    Path((id, token)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    Json(body): Json<Value>,
) -> Json<Value> {
    let wait = query.get("wait").cloned().unwrap_or_default();
    seen.0
        .lock()
        .unwrap()
        .push((format!("/webhooks/{id}/{token}?wait={wait}"), body.clone()));
    Json(json!({"id": "3001", "channel_id": "999", "content": body["content"]}))
}

async fn fake_discord() -> (SocketAddr, Followups) {
    let seen = Followups::default();
    let app = Router::new()
        .route("/api/v10/webhooks/{id}/{token}", route_post(webhook))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn key_pair() -> SigningKey {
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    SigningKey::from_bytes(&secret)
}

/// A server that trusts `key`'s public half, with `/echo` and `/fail` mapped to tasks.
fn start(addr: SocketAddr, key: &SigningKey) -> Server {
    let dir = temp_dir();
    let config = format!(
        r#"
discord_api_base = "http://{addr}/api/v10"
discord_public_key = "{public}"
task_max_attempts = 1

[discord.commands.echo]
task = "echo"

[discord.commands.fail]
task = "fail"
include_ids = false
"#,
        public = hex(key.verifying_key().as_bytes()),
    );
    std::fs::write(dir.join("mkww-mcp.toml"), config).unwrap();
    Server::start_in(dir, &[])
}

fn now() -> String {
    chrono::Utc::now().timestamp().to_string()
}

/// Sends `body` signed by `key` at `timestamp`.
async fn send(server: &Server, key: &SigningKey, timestamp: &str, body: &str) -> (u16, Value) {
    let mut message = timestamp.as_bytes().to_vec();
    message.extend_from_slice(body.as_bytes());
    let signature = hex(&key.sign(&message).to_bytes());
    send_raw(server, Some(&signature), Some(timestamp), body).await
}

async fn send_raw(
    server: &Server,
    signature: Option<&str>,
    timestamp: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(server.url("/v1/discord/interactions"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(signature) = signature {
        request = request.header("X-Signature-Ed25519", signature);
    }
    if let Some(timestamp) = timestamp {
        request = request.header("X-Signature-Timestamp", timestamp);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn slash_command(name: &str, options: Value) -> String {
    json!({
        "id": "4000",
        "type": 2,
        "application_id": APPLICATION_ID,
        "token": INTERACTION_TOKEN,
        "guild_id": "700",
        "channel_id": "999",
        "member": {"user": {"id": "555", "username": "tester"}},
        "data": {"id": "4100", "name": name, "type": 1, "options": options},
    })
    .to_string()
}

#[tokio::test]
async fn ping_is_answered_with_pong() {
    let (addr, _) = fake_discord().await;
    let key = key_pair();
    let server = start(addr, &key);
    let ping = json!({"id": "1", "type": 1, "application_id": APPLICATION_ID}).to_string();
    let (status, body) = send(&server, &key, &now(), &ping).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"type": 1}));
}

#[tokio::test]
async fn bad_or_missing_signatures_are_401() {
    let (addr, _) = fake_discord().await;
    let key = key_pair();
    let server = start(addr, &key);
    let ping = json!({"id": "1", "type": 1}).to_string();

    // Signed by another key.
    let (status, body) = send(&server, &key_pair(), &now(), &ping).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "invalid_signature");

    // A valid signature over another body.
    let timestamp = now();
    let mut message = timestamp.as_bytes().to_vec();
    message.extend_from_slice(ping.as_bytes());
    let signature = hex(&key.sign(&message).to_bytes());
    let tampered = json!({"id": "1", "type": 2}).to_string();
    let (status, _) = send_raw(&server, Some(&signature), Some(&timestamp), &tampered).await;
    assert_eq!(status, 401);

    // No headers, a malformed signature, a stale timestamp.
    let (status, _) = send_raw(&server, None, None, &ping).await;
    assert_eq!(status, 401);
    let (status, _) = send_raw(&server, Some("zz"), Some(&timestamp), &ping).await;
    assert_eq!(status, 401);
    let stale = (chrono::Utc::now().timestamp() - 3600).to_string();
    let (status, _) = send(&server, &key, &stale, &ping).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn a_slash_command_defers_then_follows_up_with_the_result() {
    let (addr, followups) = fake_discord().await;
    let key = key_pair();
    let server = start(addr, &key);
    let body = slash_command(
        "echo",
        json!([{"name": "text", "type": 3, "value": "hello"}]),
    );
    let (status, reply) = send(&server, &key, &now(), &body).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply, json!({"type": 5}));

    let (path, message) = followups.nth(0).await;
    assert_eq!(
        path,
        format!("/webhooks/{APPLICATION_ID}/{INTERACTION_TOKEN}?wait=true")
    );
    assert_eq!(message["content"], "hello");
    assert_eq!(message["allowed_mentions"], json!({"parse": []}));

    let (_, page) = get(&server, "/v1/tasks?type=echo").await;
    let task = &page["tasks"][0];
    assert_eq!(task["created_by"], "discord:555");
    assert_eq!(
        task["payload"],
        json!({"text": "hello", "channel_id": "999", "user_id": "555", "guild_id": "700"})
    );
}

#[tokio::test]
async fn a_failed_command_follows_up_with_the_error() {
    let (addr, followups) = fake_discord().await;
    let key = key_pair();
    let server = start(addr, &key);
    let body = slash_command(
        "fail",
        json!([{"name": "message", "type": 3, "value": "boom"}]),
    );
    let (status, reply) = send(&server, &key, &now(), &body).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["type"], 5);
    let (_, message) = followups.nth(0).await;
    let content = message["content"].as_str().unwrap();
    assert!(
        content.contains("dead") && content.contains("boom"),
        "{content}"
    );
}

#[tokio::test]
async fn unknown_commands_and_refused_payloads_answer_with_a_message() {
    let (addr, followups) = fake_discord().await;
    let key = key_pair();
    let server = start(addr, &key);
    let (status, reply) = send(&server, &key, &now(), &slash_command("nope", json!([]))).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["type"], 4);
    assert!(
        reply["data"]["content"]
            .as_str()
            .unwrap()
            .contains("Unknown command `/nope`"),
        "{reply}"
    );
    // `fail` takes no `colour`: refused at creation, said at once, no task.
    let body = slash_command(
        "fail",
        json!([{"name": "colour", "type": 3, "value": "red"}]),
    );
    let (status, reply) = send(&server, &key, &now(), &body).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["type"], 4);
    assert!(
        reply["data"]["content"]
            .as_str()
            .unwrap()
            .contains("refused"),
        "{reply}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(followups.0.lock().unwrap().is_empty());
}
