//! The Discord task types against a local fake of Discord's REST API that checks the bot token
//! and user agent and answers with Discord's real rate-limit headers, buckets, 429s and errors.

mod common;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{patch, post};
use mcp_core::{HandlerError, HandlerRegistry, TaskContext};
use mcp_integrations::discord::{EDIT_MESSAGE, SEND_MESSAGE, WEBHOOK_EXECUTE};
use mcp_integrations::{Adapter, DiscordAdapter, DiscordConfig};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn context(task_type: &str, payload: Value, timeout_ms: u64) -> TaskContext {
    common::context_with_timeout(task_type, payload, timeout_ms)
}

const BOT_TOKEN: &str = "bot-test-token";
/// Requests per window of the fake's per-channel bucket.
const LIMIT: u32 = 2;
const WINDOW: Duration = Duration::from_millis(300);

/// Channel ids with a behaviour of their own.
const LIMITED_ONCE: &str = "200";
const FORBIDDEN: &str = "300";
const BROKEN: &str = "500";
const GLOBAL_ONCE: &str = "400";

#[derive(Default)]
struct Fake {
    /// Method, path, authorization, user agent, body.
    seen: Vec<(String, String, Option<String>, String, Value)>,
    /// Channel → (window start, requests in it).
    windows: HashMap<String, (Instant, u32)>,
    /// Requests that arrived while their bucket was exhausted: a client that honours the
    /// headers never makes one.
    overshoots: u32,
    /// Channels that already had their one 429.
    limited: Vec<String>,
}

#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Fake>>);

fn rate_headers(response: &mut Response, bucket: &str, remaining: u32, reset_after: Duration) {
    let headers = response.headers_mut();
    let mut set = |name: &'static str, value: String| {
        headers.insert(name, HeaderValue::from_str(&value).unwrap());
    };
    set("x-ratelimit-bucket", bucket.to_owned());
    set("x-ratelimit-limit", LIMIT.to_string());
    set("x-ratelimit-remaining", remaining.to_string());
    set(
        "x-ratelimit-reset-after",
        format!("{:.3}", reset_after.as_secs_f64()),
    );
}

fn message(channel: &str, id: &str, body: &Value) -> Value {
    json!({
        "id": id,
        "channel_id": channel,
        "content": body.get("content").cloned().unwrap_or(json!("")),
        "embeds": body.get("embeds").cloned().unwrap_or(json!([])),
        "author": {"id": "42", "username": "mcp", "bot": true},
    })
}

fn record(fake: &mut Fake, method: &str, path: String, headers: &HeaderMap, body: &Value) {
    let get = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_owned)
    };
    fake.seen.push((
        method.to_owned(),
        path,
        get(header::AUTHORIZATION),
        get(header::USER_AGENT).unwrap_or_default(),
        body.clone(),
    ));
}

/// `POST /channels/{id}/messages` and `PATCH /channels/{id}/messages/{message_id}`: one bucket
/// per channel of [`LIMIT`] requests per [`WINDOW`].
async fn channel_message(
    shared: Shared,
    method: &str,
    channel: String,
    message_id: Option<String>,
    headers: HeaderMap,
    body: Value,
) -> Response {
    let mut fake = shared.0.lock().unwrap();
    let path = match &message_id {
        Some(m) => format!("/channels/{channel}/messages/{m}"),
        None => format!("/channels/{channel}/messages"),
    };
    record(&mut fake, method, path, &headers, &body);
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if auth != Some(&format!("Bot {BOT_TOKEN}")) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"message": "401: Unauthorized", "code": 0})),
        )
            .into_response();
    }
    let now = Instant::now();
    let window = fake.windows.entry(channel.clone()).or_insert((now, 0));
    if now >= window.0 + WINDOW {
        *window = (now, 0);
    }
    let (start, used) = *window;
    let reset_after = (start + WINDOW).saturating_duration_since(now);
    let bucket = format!("bucket-{channel}");
    if used >= LIMIT {
        fake.overshoots += 1;
        let mut response = (
            StatusCode::TOO_MANY_REQUESTS,
            Json(json!({"message": "You are being rate limited.", "retry_after": reset_after.as_secs_f64(), "global": false})),
        )
            .into_response();
        rate_headers(&mut response, &bucket, 0, reset_after);
        return response;
    }
    if channel == GLOBAL_ONCE && !fake.limited.contains(&channel) {
        fake.limited.push(channel.clone());
        let mut response = (
            StatusCode::TOO_MANY_REQUESTS,
            Json(json!({"message": "You are being rate limited.", "retry_after": 0.3, "global": true})),
        )
            .into_response();
        response
            .headers_mut()
            .insert("x-ratelimit-global", HeaderValue::from_static("true"));
        return response;
    }
    if channel == LIMITED_ONCE && !fake.limited.contains(&channel) {
        fake.limited.push(channel.clone());
        let mut response = (
            StatusCode::TOO_MANY_REQUESTS,
            Json(json!({"message": "You are being rate limited.", "retry_after": 0.2, "global": false})),
        )
            .into_response();
        rate_headers(&mut response, &bucket, 0, Duration::from_millis(200));
        response
            .headers_mut()
            .insert("x-ratelimit-scope", HeaderValue::from_static("user"));
        return response;
    }
    if let Some(window) = fake.windows.get_mut(&channel) {
        window.1 += 1;
    }
    let remaining = LIMIT - used - 1;
    let mut response = match channel.as_str() {
        FORBIDDEN => (
            StatusCode::FORBIDDEN,
            Json(json!({"message": "Missing Permissions", "code": 50013})),
        )
            .into_response(),
        BROKEN => (StatusCode::BAD_GATEWAY, "<html>502 Bad Gateway</html>").into_response(),
        _ => {
            let id = message_id.unwrap_or_else(|| format!("9{}", fake.seen.len()));
            Json(message(&channel, &id, &body)).into_response()
        }
    };
    rate_headers(&mut response, &bucket, remaining, reset_after);
    response
}

async fn create_message(
    State(shared): State<Shared>,
    Path(channel): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    channel_message(shared, "POST", channel, None, headers, body).await
}

async fn edit_message(
    State(shared): State<Shared>,
    Path((channel, message_id)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    channel_message(shared, "PATCH", channel, Some(message_id), headers, body).await
}

async fn execute_webhook(
    State(shared): State<Shared>,
    Path((id, token)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let mut fake = shared.0.lock().unwrap();
    record(
        &mut fake,
        "POST",
        format!(
            "/webhooks/{id}/{token}?wait={}",
            query.get("wait").cloned().unwrap_or_default()
        ),
        &headers,
        &body,
    );
    if token != "hook-token" {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"message": "Invalid Webhook Token", "code": 50027})),
        )
            .into_response();
    }
    let mut response = Json(message("77", "8001", &body)).into_response();
    rate_headers(&mut response, "webhook-bucket", 4, Duration::from_secs(2));
    response
}

async fn serve() -> (SocketAddr, Shared) {
    let shared = Shared::default();
    let app = Router::new()
        .route("/api/v10/channels/{channel}/messages", post(create_message))
        .route(
            "/api/v10/channels/{channel}/messages/{message}",
            patch(edit_message),
        )
        .route("/api/v10/webhooks/{id}/{token}", post(execute_webhook))
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, shared)
}

fn config(addr: SocketAddr, token: Option<&str>) -> DiscordConfig {
    DiscordConfig {
        api_base: format!("http://{addr}/api/v10/"),
        bot_token: token.map(str::to_owned),
        ..DiscordConfig::default()
    }
}

fn handlers(config: DiscordConfig) -> HandlerRegistry {
    let mut registry = HandlerRegistry::default();
    DiscordAdapter::new(config).unwrap().register(&mut registry);
    registry
}

async fn run_on(
    registry: &HandlerRegistry,
    task_type: &str,
    payload: Value,
) -> Result<Value, HandlerError> {
    let handler = registry.get(task_type).expect("registered");
    handler.validate(&payload).expect("a valid payload");
    handler.run(context(task_type, payload, 30_000)).await
}

#[tokio::test]
async fn send_message_posts_with_the_bot_token_and_user_agent() {
    let (addr, shared) = serve().await;
    let registry = handlers(config(addr, Some(BOT_TOKEN)));
    let result = run_on(
        &registry,
        SEND_MESSAGE,
        json!({"channel_id": "100", "content": "deployed", "embeds": [{"title": "v1"}], "allowed_mentions": {"parse": []}}),
    )
    .await
    .unwrap();
    assert_eq!(result["channel_id"], "100");
    assert_eq!(result["content"], "deployed");
    let fake = shared.0.lock().unwrap();
    let (method, path, auth, agent, body) = fake.seen.last().unwrap().clone();
    assert_eq!(
        (method.as_str(), path.as_str()),
        ("POST", "/channels/100/messages")
    );
    assert_eq!(auth.as_deref(), Some("Bot bot-test-token"));
    assert!(agent.starts_with("DiscordBot (http"), "{agent}");
    assert_eq!(
        body,
        json!({"content": "deployed", "embeds": [{"title": "v1"}], "allowed_mentions": {"parse": []}})
    );
}

#[tokio::test]
async fn an_exhausted_bucket_waits_for_its_reset_instead_of_a_429() {
    let (addr, shared) = serve().await;
    let registry = handlers(config(addr, Some(BOT_TOKEN)));
    let started = Instant::now();
    for i in 0..=LIMIT {
        run_on(
            &registry,
            SEND_MESSAGE,
            json!({"channel_id": "101", "content": format!("message {i}")}),
        )
        .await
        .unwrap();
    }
    // The third waited for the window to reset, and Discord never had to refuse one.
    assert!(
        started.elapsed() >= WINDOW - Duration::from_millis(50),
        "{:?}",
        started.elapsed()
    );
    let fake = shared.0.lock().unwrap();
    assert_eq!(fake.overshoots, 0);
    assert_eq!(fake.seen.len(), LIMIT as usize + 1);
}

#[tokio::test]
async fn edits_share_the_channels_bucket() {
    let (addr, shared) = serve().await;
    let registry = handlers(config(addr, Some(BOT_TOKEN)));
    for i in 0..=LIMIT {
        let result = run_on(
            &registry,
            EDIT_MESSAGE,
            json!({"channel_id": "102", "message_id": format!("5{i}"), "content": "edited"}),
        )
        .await
        .unwrap();
        assert_eq!(result["id"], format!("5{i}"));
    }
    let fake = shared.0.lock().unwrap();
    assert_eq!(fake.overshoots, 0);
    assert_eq!(fake.seen[0].0, "PATCH");
    assert_eq!(fake.seen[0].1, "/channels/102/messages/50");
}

#[tokio::test]
async fn a_429_is_waited_out_and_the_task_survives() {
    let (addr, shared) = serve().await;
    let registry = handlers(config(addr, Some(BOT_TOKEN)));
    let started = Instant::now();
    let result = run_on(
        &registry,
        SEND_MESSAGE,
        json!({"channel_id": LIMITED_ONCE, "content": "hello"}),
    )
    .await
    .unwrap();
    assert_eq!(result["content"], "hello");
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(shared.0.lock().unwrap().seen.len(), 2);
}

#[tokio::test]
async fn a_global_429_holds_every_route_until_it_passes() {
    let (addr, shared) = serve().await;
    let adapter = DiscordAdapter::new(config(addr, Some(BOT_TOKEN))).unwrap();
    let mut registry = HandlerRegistry::default();
    adapter.register(&mut registry);
    let registry = Arc::new(registry);
    let started = Instant::now();
    let limited = {
        let registry = registry.clone();
        tokio::spawn(async move {
            run_on(
                &registry,
                SEND_MESSAGE,
                json!({"channel_id": GLOBAL_ONCE, "content": "a"}),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!adapter.health().await.is_healthy());
    // Another channel, another bucket: still held by the global limit.
    run_on(
        &registry,
        SEND_MESSAGE,
        json!({"channel_id": "103", "content": "b"}),
    )
    .await
    .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    limited.await.unwrap().unwrap();
    assert!(adapter.health().await.is_healthy());
    assert_eq!(shared.0.lock().unwrap().seen.len(), 3);
}

#[tokio::test]
async fn a_429_longer_than_the_timeout_is_retried_later() {
    let (addr, _) = serve().await;
    let registry = handlers(config(addr, Some(BOT_TOKEN)));
    let handler = registry.get(SEND_MESSAGE).unwrap();
    let payload = json!({"channel_id": LIMITED_ONCE, "content": "hello"});
    // 100 ms of budget cannot hold the 200 ms wait: the attempt ends, retryable.
    let err = handler
        .run(context(SEND_MESSAGE, payload, 100))
        .await
        .unwrap_err();
    assert!(err.retryable, "{}", err.message);
    assert!(err.message.contains("rate limited"), "{}", err.message);
}

#[tokio::test]
async fn missing_permissions_kill_the_task_with_discords_code() {
    let (addr, _) = serve().await;
    let registry = handlers(config(addr, Some(BOT_TOKEN)));
    let err = run_on(
        &registry,
        SEND_MESSAGE,
        json!({"channel_id": FORBIDDEN, "content": "hello"}),
    )
    .await
    .unwrap_err();
    assert!(!err.retryable);
    assert!(
        err.message.contains("403") && err.message.contains("Missing Permissions"),
        "{}",
        err.message
    );
    let details = err.details.unwrap();
    assert_eq!(details["code"], 50013);
    assert_eq!(details["message"], "Missing Permissions");
    assert_eq!(details["status"], 403);
}

#[tokio::test]
async fn server_errors_bad_tokens_and_refused_connections() {
    let (addr, _) = serve().await;
    let registry = handlers(config(addr, Some(BOT_TOKEN)));
    let err = run_on(
        &registry,
        SEND_MESSAGE,
        json!({"channel_id": BROKEN, "content": "x"}),
    )
    .await
    .unwrap_err();
    assert!(err.retryable);
    assert_eq!(err.details.unwrap()["body"], "<html>502 Bad Gateway</html>");

    let revoked = handlers(config(addr, Some("revoked")));
    let err = run_on(
        &revoked,
        SEND_MESSAGE,
        json!({"channel_id": "1", "content": "x"}),
    )
    .await
    .unwrap_err();
    assert!(!err.retryable);
    assert!(!err.message.contains("revoked"));

    let closed = handlers(DiscordConfig {
        api_base: "http://127.0.0.1:1".into(),
        bot_token: Some(BOT_TOKEN.into()),
        ..DiscordConfig::default()
    });
    let err = run_on(
        &closed,
        SEND_MESSAGE,
        json!({"channel_id": "1", "content": "x"}),
    )
    .await
    .unwrap_err();
    assert!(err.retryable);
    assert_eq!(err.details.unwrap()["error"], "connect");
}

#[tokio::test]
async fn webhook_execute_needs_no_bot_token_and_keeps_its_token_secret() {
    let (addr, shared) = serve().await;
    let registry = handlers(config(addr, None));
    let result = run_on(
        &registry,
        WEBHOOK_EXECUTE,
        json!({"webhook_id": "77", "webhook_token": "hook-token", "content": "from a hook", "username": "MCP"}),
    )
    .await
    .unwrap();
    assert_eq!(result["id"], "8001");
    {
        let fake = shared.0.lock().unwrap();
        let (_, path, auth, _, body) = fake.seen.last().unwrap().clone();
        assert_eq!(path, "/webhooks/77/hook-token?wait=true");
        assert_eq!(auth, None);
        assert_eq!(body["username"], "MCP");
    }
    let err = run_on(
        &registry,
        WEBHOOK_EXECUTE,
        json!({"webhook_id": "77", "webhook_token": "wrong-token", "content": "x"}),
    )
    .await
    .unwrap_err();
    assert!(!err.retryable);
    assert_eq!(err.details.as_ref().unwrap()["code"], 50027);
    assert!(!err.message.contains("wrong-token"), "{}", err.message);
}

#[tokio::test]
async fn only_the_webhook_type_exists_without_a_bot_token() {
    let adapter = DiscordAdapter::new(DiscordConfig::default()).unwrap();
    assert_eq!(adapter.task_types(), vec![WEBHOOK_EXECUTE]);
    let mut registry = HandlerRegistry::default();
    adapter.register(&mut registry);
    assert_eq!(registry.types(), vec![WEBHOOK_EXECUTE]);
    let with_token = handlers(DiscordConfig {
        bot_token: Some(BOT_TOKEN.into()),
        ..DiscordConfig::default()
    });
    assert_eq!(
        with_token.types(),
        vec![EDIT_MESSAGE, SEND_MESSAGE, WEBHOOK_EXECUTE]
    );
    assert!(
        DiscordAdapter::new(DiscordConfig {
            api_base: "not a url".into(),
            ..DiscordConfig::default()
        })
        .is_err()
    );
}

#[tokio::test]
async fn payloads_are_checked_at_creation() {
    let registry = handlers(DiscordConfig {
        bot_token: Some(BOT_TOKEN.into()),
        ..DiscordConfig::default()
    });
    let send = registry.get(SEND_MESSAGE).unwrap();
    let err = send.validate(&json!({"content": "x"})).unwrap_err();
    assert!(err.contains("channel_id"), "{err}");
    assert!(send.validate(&json!({"channel_id": "1"})).is_err());
    let edit = registry.get(EDIT_MESSAGE).unwrap();
    assert!(
        edit.validate(&json!({"channel_id": "1", "content": "x"}))
            .is_err()
    );
    let hook = registry.get(WEBHOOK_EXECUTE).unwrap();
    assert!(
        hook.validate(&json!({"webhook_id": "1", "content": "x"}))
            .is_err()
    );
}
