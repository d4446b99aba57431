//! Outgoing webhooks against the real binary: a local receiver checks every signature exactly as
//! the Standard Webhooks spec says (computed here, independently of the server's code), sees the
//! `task.*` events of a task, a failing receiver gets retries recorded in the delivery log,
//! redelivery resends the same `webhook-id`, DELETE stops deliveries, and private targets are
//! refused unless configuration allows them.

mod support;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post as route_post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{Server, client, get, post, wait_for};

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    body: Value,
    /// The signature matched `v1,base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))`.
    verified: bool,
}

#[derive(Clone)]
struct Receiver {
    /// The secret, set once the webhook exists.
    secret: Arc<Mutex<String>>,
    /// What the receiver answers.
    status: Arc<AtomicU16>,
    seen: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    fn seen(&self) -> Vec<Received> {
        self.seen.lock().unwrap().clone()
    }
}

fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

async fn receive(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let id = header(&headers, "webhook-id");
    let timestamp = header(&headers, "webhook-timestamp");
    let signature = header(&headers, "webhook-signature");
    let secret = receiver.secret.lock().unwrap().clone();
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap_or_default())
        .unwrap_or_default();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(&body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    let fresh = timestamp
        .parse::<i64>()
        .is_ok_and(|t| (chrono::Utc::now().timestamp() - t).abs() < 300);
    let verified = !key.is_empty()
        && fresh
        && signature.split(' ').any(|s| s == expected)
        && header(&headers, "content-type") == "application/json";
    receiver.seen.lock().unwrap().push(Received {
        id,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        verified,
    });
    StatusCode::from_u16(receiver.status.load(Ordering::SeqCst)).unwrap()
}

async fn start_receiver(status: u16) -> (Receiver, SocketAddr) {
    let receiver = Receiver {
        secret: Arc::default(),
        status: Arc::new(AtomicU16::new(status)),
        seen: Arc::default(),
    };
    let app = Router::new()
        .route("/hook", route_post(receive))
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (receiver, addr)
}

fn env(extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("MCP_WEBHOOKS_ALLOW_PRIVATE", "true".to_owned()),
        ("MCP_TASK_BACKOFF_BASE_MS", "20".to_owned()),
        ("MCP_TASK_BACKOFF_MAX_MS", "100".to_owned()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    env
}

async fn subscribe(
    server: &Server,
    receiver: &Receiver,
    addr: SocketAddr,
    events: Value,
) -> String {
    let (status, body) = post(
        server,
        "/v1/webhooks",
        json!({"url": format!("http://{addr}/hook"), "events": events}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let secret = body["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{secret}");
    let key = STANDARD.decode(&secret["whsec_".len()..]).unwrap();
    assert!((24..=32).contains(&key.len()));
    *receiver.secret.lock().unwrap() = secret;
    body["id"].as_str().unwrap().to_owned()
}

async fn run_noop(server: &Server) -> String {
    let (status, task) = post(server, "/v1/tasks", json!({"type": "noop"})).await;
    assert_eq!(status, 201, "{task}");
    let id = task["id"].as_str().unwrap().to_owned();
    wait_for(server, &id, |t| t["status"] == "succeeded").await;
    id
}

/// Waits until `done` holds for what the receiver saw (or fails after 20 s).
async fn until(
    receiver: &Receiver,
    what: &str,
    done: impl Fn(&[Received]) -> bool,
) -> Vec<Received> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = receiver.seen();
        if done(&seen) {
            return seen;
        }
        assert!(Instant::now() < deadline, "never {what}: {seen:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn events_of(seen: &[Received], task: &str) -> Vec<String> {
    seen.iter()
        .filter(|r| r.body["data"]["id"] == task)
        .map(|r| r.body["type"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn deliveries(server: &Server, webhook: &str) -> Vec<Value> {
    let (status, body) = get(server, &format!("/v1/webhooks/{webhook}/deliveries")).await;
    assert_eq!(status, 200, "{body}");
    body["deliveries"].as_array().unwrap().clone()
}

#[tokio::test]
async fn delivers_signed_task_events_redelivers_and_stops_after_delete() {
    let (receiver, addr) = start_receiver(200).await;
    let server = Server::start(&env(&[]));
    let webhook = subscribe(&server, &receiver, addr, json!(["task.*"])).await;
    let (status, list) = get(&server, "/v1/webhooks").await;
    assert_eq!(status, 200);
    assert_eq!(list["webhooks"][0]["id"], webhook.as_str());
    assert!(list["webhooks"][0].get("secret").is_none(), "{list}");
    assert!(list["webhooks"][0].get("secret_sealed").is_none(), "{list}");

    let task = run_noop(&server).await;
    let seen = until(&receiver, "saw the task succeed", |seen| {
        events_of(seen, &task).contains(&"task.succeeded".to_owned())
    })
    .await;
    let types = events_of(&seen, &task);
    assert!(types.contains(&"task.created".to_owned()), "{types:?}");
    assert!(seen.iter().all(|r| r.verified), "bad signature: {seen:?}");
    // A delivery task's own events are not delivered (that would never end).
    assert!(
        seen.iter()
            .all(|r| r.body["data"]["type"] != "webhook.deliver"),
        "{seen:?}"
    );

    // The log shows each delivery succeeded at the first attempt.
    let log = deliveries(&server, &webhook).await;
    let succeeded = log
        .iter()
        .find(|d| {
            d["event_type"] == "task.succeeded" && d["payload"]["data"]["id"] == task.as_str()
        })
        .expect("the task.succeeded delivery is logged")
        .clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut entry = succeeded;
    while entry["status"] != "succeeded" && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let log = deliveries(&server, &webhook).await;
        entry = log.into_iter().find(|d| d["id"] == entry["id"]).unwrap();
    }
    assert_eq!(entry["status"], "succeeded", "{entry}");
    assert_eq!(entry["attempts"], 1);
    assert_eq!(entry["response_code"], 200);
    assert!(entry["delivered_at"].is_string());

    // Redelivery sends the same delivery (same `webhook-id`) again, signed afresh.
    let delivery_id = entry["id"].as_str().unwrap().to_owned();
    let before = receiver
        .seen()
        .iter()
        .filter(|r| r.id == delivery_id)
        .count();
    let (status, body) = post(
        &server,
        &format!("/v1/webhooks/{webhook}/deliveries/{delivery_id}/redeliver"),
        json!({}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let seen = until(&receiver, "saw the redelivery", |seen| {
        seen.iter().filter(|r| r.id == delivery_id).count() > before
    })
    .await;
    assert!(seen.iter().all(|r| r.verified));
    let (status, body) = post(
        &server,
        &format!(
            "/v1/webhooks/{webhook}/deliveries/{}/redeliver",
            uuid::Uuid::now_v7()
        ),
        json!({}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (404, json!("delivery_not_found"))
    );

    // After DELETE, nothing more arrives.
    let response = client()
        .delete(server.url(&format!("/v1/webhooks/{webhook}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let (status, body) = get(&server, &format!("/v1/webhooks/{webhook}/deliveries")).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (404, json!("webhook_not_found"))
    );
    let after = run_noop(&server).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(events_of(&receiver.seen(), &after).is_empty());
}

#[tokio::test]
async fn retries_a_failing_receiver_and_logs_every_attempt() {
    let (receiver, addr) = start_receiver(500).await;
    let server = Server::start(&env(&[("MCP_WEBHOOK_MAX_ATTEMPTS", "3")]));
    let webhook = subscribe(&server, &receiver, addr, json!(["task.succeeded"])).await;
    let task = run_noop(&server).await;
    let seen = until(&receiver, "saw three attempts", |seen| seen.len() >= 3).await;
    assert!(seen.iter().all(|r| r.verified));
    assert!(
        seen.iter().all(|r| r.id == seen[0].id),
        "one delivery id: {seen:?}"
    );
    assert_eq!(events_of(&seen, &task), ["task.succeeded"; 3]);

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = deliveries(&server, &webhook).await;
        assert_eq!(log.len(), 1, "{log:?}");
        let entry = &log[0];
        if entry["attempts"] == 3 {
            assert_eq!(entry["status"], "failed");
            assert_eq!(entry["response_code"], 500);
            assert!(entry["error"].as_str().unwrap().contains("500"), "{entry}");
            assert!(entry["delivered_at"].is_null());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "attempts never reached 3: {entry}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The task gave up after its attempts: no fourth request.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(receiver.seen().len(), 3);

    // Once the receiver recovers, a redelivery succeeds.
    receiver.status.store(204, Ordering::SeqCst);
    let delivery = seen[0].id.clone();
    let (status, body) = post(
        &server,
        &format!("/v1/webhooks/{webhook}/deliveries/{delivery}/redeliver"),
        json!({}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = deliveries(&server, &webhook).await;
        if log[0]["status"] == "succeeded" {
            assert_eq!(log[0]["attempts"], 4);
            assert_eq!(log[0]["response_code"], 204);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "redelivery never succeeded: {log:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn refuses_private_targets_unless_allowed() {
    let server = Server::start(&[]);
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://10.0.0.7/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:8080/hook",
    ] {
        let (status, body) = post(
            &server,
            "/v1/webhooks",
            json!({"url": url, "events": ["task.*"]}),
        )
        .await;
        assert_eq!(status, 422, "{url}: {body}");
        assert_eq!(body["error"]["code"], "destination_forbidden", "{url}");
    }
    for (body, field) in [
        (
            json!({"url": "ftp://example.com/", "events": ["task.*"]}),
            "url",
        ),
        (
            json!({"url": "https://example.com/", "events": []}),
            "events",
        ),
        (
            json!({"url": "https://example.com/", "events": ["Task!"]}),
            "events",
        ),
    ] {
        let (status, reply) = post(&server, "/v1/webhooks", body.clone()).await;
        assert_eq!(status, 422, "{body}: {reply}");
        assert_eq!(reply["error"]["details"]["field"], field, "{reply}");
    }
    let (status, list) = get(&server, "/v1/webhooks").await;
    assert_eq!(status, 200);
    assert_eq!(list["webhooks"], json!([]));
}

#[tokio::test]
async fn delivers_over_postgres_too() {
    let Some(schema) = support::PgSchema::create().await else {
        return;
    };
    let (receiver, addr) = start_receiver(200).await;
    let mut env = env(&[]);
    env.extend(schema.env());
    let server = Server::start(&env);
    let webhook = subscribe(&server, &receiver, addr, json!(["task.succeeded"])).await;
    let task = run_noop(&server).await;
    let seen = until(&receiver, "saw the task succeed", |seen| {
        !events_of(seen, &task).is_empty()
    })
    .await;
    assert!(seen.iter().all(|r| r.verified));
    assert_eq!(events_of(&seen, &task), ["task.succeeded"]);
    let log = deliveries(&server, &webhook).await;
    assert_eq!(log.len(), 1, "{log:?}");
    drop(server);
    schema.drop_schema().await;
}

#[tokio::test]
async fn delivers_memory_events_to_memory_filters() {
    let (receiver, addr) = start_receiver(200).await;
    let server = Server::start(&env(&[]));
    subscribe(&server, &receiver, addr, json!(["memory.*"])).await;
    let (status, conversation) = post(&server, "/v1/conversations", json!({"title": "ops"})).await;
    assert_eq!(status, 201, "{conversation}");
    let id = conversation["id"].as_str().unwrap();
    let (status, body) = post(
        &server,
        &format!("/v1/conversations/{id}/messages"),
        json!({"author": "ann", "content": "the deploy failed"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let seen = until(&receiver, "saw the message event", |seen| {
        seen.iter()
            .any(|r| r.body["type"] == "memory.message.created")
    })
    .await;
    assert!(
        seen.iter().all(|r| r.body["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("memory."))),
        "only memory events: {seen:?}"
    );
}
