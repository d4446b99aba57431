//! Nothing lost in delivery, against real `serve` processes on one fresh PostgreSQL schema: task
//! events reach a webhook exactly once whichever node made them, task and memory events recorded
//! while the only node able to dispatch them is killed are delivered by the next one, and a
//! Discord follow-up owed by a node killed before its task finished is sent by another node.

mod support;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post as route_post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signer, SigningKey};
use rand::RngCore;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{PgSchema, Server, connect, post, request, temp_dir};

/// What a receiver got: `(webhook-id, body)` per request.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(String, Value)>>>);

impl Seen {
    fn all(&self) -> Vec<(String, Value)> {
        self.0.lock().unwrap().clone()
    }

    /// Waits (up to `patience`) until `done` holds for what was received.
    async fn until(
        &self,
        what: &str,
        patience: Duration,
        done: impl Fn(&[(String, Value)]) -> bool,
    ) -> Vec<(String, Value)> {
        let deadline = Instant::now() + patience;
        loop {
            let seen = self.all();
            if done(&seen) {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "never {what}: {} received",
                seen.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn receive(State(seen): State<Seen>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    seen.0.lock().unwrap().push((id, body));
    StatusCode::OK
}

async fn start_receiver() -> (Seen, SocketAddr) {
    let seen = Seen::default();
    let app = Router::new()
        .route("/hook", route_post(receive))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (seen, addr)
}

/// The settings every node of one test shares: the schema, one master key (a webhook secret or
/// an interaction sealed by one node is opened by another), short intervals.
fn cluster_env(schema: &PgSchema, master_key: &str) -> Vec<(&'static str, String)> {
    let mut env = schema.env();
    env.extend([
        ("MCP_MASTER_KEY", master_key.to_owned()),
        ("MCP_WEBHOOKS_ALLOW_PRIVATE", "true".to_owned()),
        ("MCP_WEBHOOK_OUTBOX_REFRESH_MS", "200".to_owned()),
        ("MCP_WEBHOOK_OUTBOX_POLL_MS", "200".to_owned()),
        ("MCP_WEBHOOK_OUTBOX_LEASE_MS", "2000".to_owned()),
        ("MCP_DISCORD_FOLLOWUP_SWEEP_MS", "200".to_owned()),
        ("MCP_LEASE_MS", "1500".to_owned()),
        ("MCP_RESCUE_INTERVAL_MS", "200".to_owned()),
    ]);
    env
}

fn master_key() -> String {
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    STANDARD.encode(key)
}

async fn subscribe(server: &Server, addr: SocketAddr, events: Value) {
    let (status, body) = post(
        server,
        "/v1/webhooks",
        json!({"url": format!("http://{addr}/hook"), "events": events}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
}

/// `(task id, event type)` → the distinct `webhook-id`s it was delivered with.
fn delivered(seen: &[(String, Value)]) -> HashMap<(String, String), HashSet<String>> {
    let mut by_event: HashMap<(String, String), HashSet<String>> = HashMap::new();
    for (id, body) in seen {
        let key = (
            body["data"]["id"].as_str().unwrap_or_default().to_owned(),
            body["type"].as_str().unwrap_or_default().to_owned(),
        );
        by_event.entry(key).or_default().insert(id.clone());
    }
    by_event
}

#[tokio::test]
async fn two_nodes_deliver_each_task_event_exactly_once() {
    let Some(schema) = PgSchema::create().await else {
        return;
    };
    let (seen, addr) = start_receiver().await;
    let env = cluster_env(&schema, &master_key());
    let a = Server::start(&env);
    let b = Server::start(&env);
    subscribe(&a, addr, json!(["task.*"])).await;
    // Node B learns of the webhook at its next refresh (200 ms here).
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut tasks = Vec::new();
    for i in 0..10 {
        let node = if i % 2 == 0 { &a } else { &b };
        let (status, task) = post(node, "/v1/tasks", json!({"type": "noop"})).await;
        assert_eq!(status, 201, "{task}");
        tasks.push(task["id"].as_str().unwrap().to_owned());
    }
    let lifecycle = ["task.created", "task.started", "task.succeeded"];
    let complete = |seen: &[(String, Value)]| {
        let got = delivered(seen);
        tasks.iter().all(|t| {
            lifecycle
                .iter()
                .all(|e| got.contains_key(&(t.clone(), (*e).to_owned())))
        })
    };
    seen.until(
        "every event of every task",
        Duration::from_secs(30),
        complete,
    )
    .await;
    // Let any duplicate that was going to come arrive.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let all = seen.all();
    let got = delivered(&all);
    for task in &tasks {
        for event in lifecycle {
            let ids = &got[&(task.clone(), event.to_owned())];
            assert_eq!(ids.len(), 1, "{event} of {task} delivered as {ids:?}");
        }
    }
    // Exactly one request per event: no node sent one a second time.
    let ours = all
        .iter()
        .filter(|(_, body)| tasks.iter().any(|t| body["data"]["id"] == t.as_str()))
        .count();
    assert_eq!(ours, tasks.len() * lifecycle.len());
    // The receiver gets the event as before: type, the task after the change, time, correlation.
    let (_, sample) = all
        .iter()
        .find(|(_, b)| b["type"] == "task.succeeded")
        .unwrap();
    assert_eq!(sample["data"]["status"], "succeeded");
    assert_eq!(sample["data"]["type"], "noop");
    assert!(sample["at"].is_string() && sample["correlation_id"].is_string());
    drop((a, b));
    schema.drop_schema().await;
}

#[tokio::test]
async fn events_recorded_before_the_dispatching_node_dies_are_delivered_by_the_next() {
    let Some(schema) = PgSchema::create().await else {
        return;
    };
    let (seen, addr) = start_receiver().await;
    let env = cluster_env(&schema, &master_key());
    let mut a = Server::start(&env);
    subscribe(&a, addr, json!(["task.created"])).await;
    // Tasks delayed an hour: their `task.created` is the event to deliver.
    let batch: Vec<Value> = (0..300)
        .map(|i| json!({"type": "noop", "payload": {"i": i}, "delay_ms": 3_600_000}))
        .collect();
    let (status, created) = post(&a, "/v1/tasks/batch", json!({"tasks": batch})).await;
    assert_eq!(status, 201, "{created}");
    a.kill9();
    let ids: HashSet<String> = created["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 300);
    let pending = outbox_len(&schema).await;
    let sent_before = seen.all().len();
    assert!(
        pending > 0,
        "node A delivered everything before it died ({sent_before} sent): nothing left to prove"
    );

    // No node runs now. The next node to start delivers what is left.
    let b = Server::start(&env);
    let all = seen
        .until("every task.created", Duration::from_secs(60), |seen| {
            let got = delivered(seen);
            ids.iter()
                .all(|t| got.contains_key(&(t.clone(), "task.created".to_owned())))
        })
        .await;
    for (key, webhook_ids) in delivered(&all) {
        assert_eq!(webhook_ids.len(), 1, "{key:?} delivered as {webhook_ids:?}");
    }
    eprintln!(
        "outbox after SIGKILL: {pending} events pending, {sent_before} sent by node A; node B sent the rest"
    );
    assert_eq!(outbox_len(&schema).await, 0);
    drop(b);
    schema.drop_schema().await;
}

#[tokio::test]
async fn memory_events_recorded_before_the_dispatching_node_dies_are_delivered_once_by_the_next() {
    let Some(schema) = PgSchema::create().await else {
        return;
    };
    let (seen, addr) = start_receiver().await;
    let env = cluster_env(&schema, &master_key());
    let mut a = Server::start(&env);
    subscribe(&a, addr, json!(["memory.message.created"])).await;
    let (status, conversation) = post(&a, "/v1/conversations", json!({"title": "ops"})).await;
    assert_eq!(status, 201, "{conversation}");
    let id = conversation["id"].as_str().unwrap();
    let batch: Vec<Value> = (0..500)
        .map(|i| json!({"author": "ann", "content": format!("line {i}")}))
        .collect();
    let (status, created) = post(
        &a,
        &format!("/v1/conversations/{id}/messages"),
        json!({"messages": batch}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    // The node that recorded the events dies before it can deliver them all; no node runs.
    a.kill9();
    let ids: HashSet<String> = created["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 500);
    let pending = outbox_len(&schema).await;
    let sent_before = seen.all().len();
    assert!(
        pending > 0,
        "node A delivered everything before it died ({sent_before} sent): nothing left to prove"
    );

    let b = Server::start(&env);
    seen.until(
        "every memory.message.created",
        Duration::from_secs(60),
        |seen| {
            let got = delivered(seen);
            ids.iter()
                .all(|m| got.contains_key(&(m.clone(), "memory.message.created".to_owned())))
        },
    )
    .await;
    // Let any duplicate that was going to come arrive.
    tokio::time::sleep(Duration::from_secs(1)).await;
    // One delivery (one `webhook-id`) per event: a request sent again after node A died
    // mid-attempt carries the same id, which receivers drop.
    let all = seen.all();
    let got = delivered(&all);
    assert_eq!(got.len(), 500, "only the 500 messages' events");
    for (key, webhook_ids) in got {
        assert_eq!(webhook_ids.len(), 1, "{key:?} delivered as {webhook_ids:?}");
    }
    // The receiver gets the event as before: the message, its type, time and correlation id.
    let (_, sample) = &all[0];
    assert_eq!(sample["data"]["conversation_id"], id);
    assert_eq!(sample["data"]["author"], "ann");
    assert!(sample["at"].is_string() && sample["correlation_id"].is_string());
    eprintln!(
        "memory outbox after SIGKILL: {pending} events pending, {sent_before} sent by node A; node B sent the rest"
    );
    assert_eq!(outbox_len(&schema).await, 0);
    drop(b);
    schema.drop_schema().await;
}

async fn outbox_len(schema: &PgSchema) -> i64 {
    let pool = sqlx::PgPool::connect(&schema.url).await.unwrap();
    let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM \"{}\".outbox",
        schema.name
    )))
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    n
}

const APPLICATION_ID: &str = "1100";
const INTERACTION_TOKEN: &str = "aW50ZXJhY3Rpb24.token-1";

async fn fake_discord() -> (SocketAddr, Seen) {
    async fn execute(
        State(seen): State<Seen>,
        Path((id, token)): Path<(String, String)>,
        body: Bytes,
    ) -> axum::Json<Value> {
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        seen.0
            .lock()
            .unwrap()
            .push((format!("/webhooks/{id}/{token}"), body.clone()));
        axum::Json(json!({"id": "3001", "channel_id": "999", "content": body["content"]}))
    }
    let seen = Seen::default();
    let app = Router::new()
        .route("/api/v10/webhooks/{id}/{token}", route_post(execute))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A node whose `/bake` command creates an `unity.bake` task, which only external workers run.
fn discord_node(discord: SocketAddr, key: &SigningKey, env: &[(&'static str, String)]) -> Server {
    let dir = temp_dir();
    let config = format!(
        r#"
discord_api_base = "http://{discord}/api/v10"
discord_public_key = "{public}"
worker_task_types = ["unity.bake"]

[discord.commands.bake]
task = "unity.bake"
include_ids = false
"#,
        public = hex(key.verifying_key().as_bytes()),
    );
    std::fs::write(dir.join("mkww-mcp.toml"), config).unwrap();
    Server::start_in(dir, env)
}

#[tokio::test]
async fn a_followup_is_sent_by_another_node_when_the_first_dies() {
    let Some(schema) = PgSchema::create().await else {
        return;
    };
    let (discord, followups) = fake_discord().await;
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let key = SigningKey::from_bytes(&secret);
    let env = cluster_env(&schema, &master_key());
    let mut a = discord_node(discord, &key, &env);
    let b = discord_node(discord, &key, &env);

    let body = json!({
        "id": "4000", "type": 2, "application_id": APPLICATION_ID, "token": INTERACTION_TOKEN,
        "channel_id": "999", "member": {"user": {"id": "555", "username": "tester"}},
        "data": {"id": "4100", "name": "bake", "type": 1, "options": []},
    })
    .to_string();
    let timestamp = chrono::Utc::now().timestamp().to_string();
    let mut message = timestamp.as_bytes().to_vec();
    message.extend_from_slice(body.as_bytes());
    let response = reqwest::Client::new()
        .post(a.url("/v1/discord/interactions"))
        .header("content-type", "application/json")
        .header("X-Signature-Ed25519", hex(&key.sign(&message).to_bytes()))
        .header("X-Signature-Timestamp", &timestamp)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap(), json!({"type": 5}));
    // Node A, which took the interaction and waits for the task, dies before it is done.
    a.kill9();

    // A worker on node B runs the task.
    let mut worker = connect(&b, Some(&support::token("service", "unity-worker"))).await;
    let reply = request(
        &mut worker,
        json!({"id": "reg", "op": "worker.register", "types": ["unity.bake"], "concurrency": 1}),
    )
    .await;
    assert_eq!(reply["ok"], true, "{reply}");
    let task = loop {
        let frame = support::next(&mut worker).await;
        if frame["op"] == "task.assign" {
            break frame["task"].clone();
        }
    };
    let done = request(
        &mut worker,
        json!({"id": "c", "op": "task.complete", "task_id": task["id"], "result": {"text": "baked by B"}}),
    )
    .await;
    assert_eq!(done["ok"], true, "{done}");

    let sent = followups
        .until("the follow-up", Duration::from_secs(30), |seen| {
            !seen.is_empty()
        })
        .await;
    assert_eq!(
        sent[0].0,
        format!("/webhooks/{APPLICATION_ID}/{INTERACTION_TOKEN}")
    );
    assert_eq!(sent[0].1["content"], "baked by B");
    // Sent once, and forgotten.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(followups.all().len(), 1);
    let pool = sqlx::PgPool::connect(&schema.url).await.unwrap();
    let (left,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM \"{}\".discord_followups",
        schema.name
    )))
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    assert_eq!(left, 0);
    drop(b);
    schema.drop_schema().await;
}
