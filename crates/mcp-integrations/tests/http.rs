//! `http.request` against a real local server: what a task gets back for each kind of answer,
//! and which failures the orchestrator will retry.

mod common;

use axum::Json;
use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{get, post};
use mcp_core::outbound::Policy;
use mcp_core::{Handler, HandlerError, HandlerRegistry, TaskContext};
use mcp_integrations::{Adapter, HttpAdapter, HttpConfig};
use serde_json::{Map, Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

fn context(payload: Value) -> TaskContext {
    common::context("http.request", payload)
}

/// Answers with the request's headers as a JSON object.
async fn echo_headers(headers: HeaderMap) -> Json<Value> {
    let map: Map<String, Value> = headers
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_owned(), Value::String(value))
        })
        .collect();
    Json(Value::Object(map))
}

/// Answers with the same JSON; axum refuses a body not sent as `application/json`.
async fn echo_json(Json(body): Json<Value>) -> Json<Value> {
    Json(body)
}

/// Answers with the same text, and says which content-type it was sent with.
async fn echo_text(headers: HeaderMap, body: String) -> impl axum::response::IntoResponse {
    let received = headers
        .get(header::CONTENT_TYPE)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
        .unwrap_or_default();
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()),
            (
                header::HeaderName::from_static("x-received-content-type"),
                received,
            ),
        ],
        body,
    )
}

/// Answers with the status in the path, a `retry-after` header and a short text body.
async fn status(Path(code): Path<u16>) -> impl axum::response::IntoResponse {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
    (
        status,
        [(header::RETRY_AFTER, "1")],
        format!("status {code}"),
    )
}

async fn problem() -> impl axum::response::IntoResponse {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        [(header::CONTENT_TYPE, "application/problem+json")],
        r#"{"title":"bad input"}"#,
    )
}

async fn big() -> String {
    "0123456789".repeat(10)
}

async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_secs(10)).await;
    "late"
}

/// Redirects to another loopback address, one the tests' policy does not allow.
async fn away() -> impl axum::response::IntoResponse {
    (
        StatusCode::FOUND,
        [(header::LOCATION, "http://127.0.0.2:9/metrics")],
    )
}

/// Starts the test server on a free port and returns its address.
async fn serve() -> SocketAddr {
    let app = Router::new()
        .route("/headers", get(echo_headers))
        .route("/json", post(echo_json))
        .route("/text", post(echo_text))
        .route("/status/{code}", get(status))
        .route("/problem", get(problem))
        .route("/big", get(big))
        .route("/slow", get(slow))
        .route("/away", get(away));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// The defaults, with the outbound guard letting the loopback fake servers through.
fn local_config() -> HttpConfig {
    HttpConfig {
        outbound: Arc::new(Policy::new(false, &["127.0.0.1".into()]).unwrap()),
        ..HttpConfig::default()
    }
}

/// The `http.request` handler, found the way the orchestrator finds it.
fn handler(config: HttpConfig) -> Arc<dyn Handler> {
    let mut registry = HandlerRegistry::default();
    HttpAdapter::new(config).unwrap().register(&mut registry);
    registry.get("http.request").unwrap().clone()
}

async fn run(payload: Value) -> Result<Value, HandlerError> {
    run_with(local_config(), payload).await
}

async fn run_with(config: HttpConfig, payload: Value) -> Result<Value, HandlerError> {
    let handler = handler(config);
    handler
        .validate(&payload)
        .expect("the test payload should be valid");
    handler.run(context(payload)).await
}

#[tokio::test]
async fn get_sends_the_payload_headers_and_the_user_agent() {
    let addr = serve().await;
    let result = run(json!({
        "url": format!("http://{addr}/headers"),
        "headers": {"X-Trace": "abc", "accept": "application/json"},
    }))
    .await
    .unwrap();
    assert_eq!(result["status"], 200);
    assert_eq!(result["headers"]["content-type"], "application/json");
    assert_eq!(result["body"]["x-trace"], "abc");
    assert_eq!(result["body"]["accept"], "application/json");
    let user_agent = result["body"]["user-agent"].as_str().unwrap();
    assert!(user_agent.starts_with("mkww-mcp/"), "{user_agent}");
    assert!(result.get("truncated").is_none());
}

#[tokio::test]
async fn payload_user_agent_replaces_the_default() {
    let addr = serve().await;
    let result = run(json!({
        "url": format!("http://{addr}/headers"),
        "headers": {"user-agent": "custom/1"},
    }))
    .await
    .unwrap();
    assert_eq!(result["body"]["user-agent"], "custom/1");
}

#[tokio::test]
async fn json_body_round_trips() {
    let addr = serve().await;
    let body = json!({"name": "mkww", "tags": ["a", "b"], "n": 3, "nested": {"ok": true}});
    let result = run(json!({
        "method": "POST",
        "url": format!("http://{addr}/json"),
        "body": body,
    }))
    .await
    .unwrap();
    assert_eq!(result["status"], 200);
    assert_eq!(result["body"], body);
}

#[tokio::test]
async fn string_body_is_sent_and_returned_as_text() {
    let addr = serve().await;
    let result = run(json!({
        "method": "POST",
        "url": format!("http://{addr}/text"),
        "body": "{not json} héllo",
    }))
    .await
    .unwrap();
    assert_eq!(result["status"], 200);
    assert_eq!(result["body"], "{not json} héllo");
    assert_eq!(
        result["headers"]["x-received-content-type"],
        "text/plain; charset=utf-8"
    );
}

#[tokio::test]
async fn string_body_is_sent_with_the_payloads_content_type() {
    let addr = serve().await;
    let result = run(json!({
        "method": "POST",
        "url": format!("http://{addr}/text"),
        "headers": {"content-type": "application/x-www-form-urlencoded"},
        "body": "a=1&b=2",
    }))
    .await
    .unwrap();
    assert_eq!(result["body"], "a=1&b=2");
    assert_eq!(
        result["headers"]["x-received-content-type"],
        "application/x-www-form-urlencoded"
    );
}

#[tokio::test]
async fn not_found_is_a_permanent_failure_with_status_and_body() {
    let addr = serve().await;
    let err = run(json!({"url": format!("http://{addr}/status/404")}))
        .await
        .unwrap_err();
    assert!(!err.retryable);
    assert!(err.message.contains("404 Not Found"), "{}", err.message);
    let details = err.details.unwrap();
    assert_eq!(details["status"], 404);
    assert_eq!(details["body"], "status 404");
}

#[tokio::test]
async fn service_unavailable_is_retryable() {
    let addr = serve().await;
    let err = run(json!({"url": format!("http://{addr}/status/503")}))
        .await
        .unwrap_err();
    assert!(err.retryable);
    assert_eq!(err.details.unwrap()["status"], 503);
}

#[tokio::test]
async fn too_many_requests_is_retryable_and_keeps_retry_after() {
    let addr = serve().await;
    let err = run(json!({"url": format!("http://{addr}/status/429")}))
        .await
        .unwrap_err();
    assert!(err.retryable);
    let details = err.details.unwrap();
    assert_eq!(details["status"], 429);
    assert_eq!(details["headers"]["retry-after"], "1");
}

#[tokio::test]
async fn request_timeout_status_is_retryable() {
    let addr = serve().await;
    let err = run(json!({"url": format!("http://{addr}/status/408")}))
        .await
        .unwrap_err();
    assert!(err.retryable);
}

#[tokio::test]
async fn json_error_bodies_are_parsed_in_details() {
    let addr = serve().await;
    let err = run(json!({"url": format!("http://{addr}/problem")}))
        .await
        .unwrap_err();
    assert!(!err.retryable);
    assert_eq!(err.details.unwrap()["body"], json!({"title": "bad input"}));
}

#[tokio::test]
async fn connection_refused_is_retryable() {
    // Bind a port, then free it, so nothing listens there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let err = run(json!({"url": format!("http://{addr}/")}))
        .await
        .unwrap_err();
    assert!(err.retryable);
    assert_eq!(err.details.unwrap()["error"], "connect");
    assert!(err.message.contains(&addr.to_string()), "{}", err.message);
}

#[tokio::test]
async fn payload_timeout_is_a_retryable_failure() {
    let addr = serve().await;
    let err = run(json!({"url": format!("http://{addr}/slow"), "timeout_ms": 100}))
        .await
        .unwrap_err();
    assert!(err.retryable);
    assert_eq!(err.details.unwrap()["error"], "timeout");
}

#[tokio::test]
async fn default_timeout_applies_without_timeout_ms() {
    let addr = serve().await;
    let config = HttpConfig {
        default_timeout: Duration::from_millis(100),
        ..local_config()
    };
    let err = run_with(config, json!({"url": format!("http://{addr}/slow")}))
        .await
        .unwrap_err();
    assert!(err.retryable);
    assert_eq!(err.details.unwrap()["error"], "timeout");
}

#[tokio::test]
async fn long_bodies_are_cut_and_marked_truncated() {
    let addr = serve().await;
    let config = HttpConfig {
        max_body_bytes: 25,
        ..local_config()
    };
    let result = run_with(config, json!({"url": format!("http://{addr}/big")}))
        .await
        .unwrap();
    assert_eq!(result["body"], "0123456789012345678901234");
    assert_eq!(result["truncated"], true);
}

#[tokio::test]
async fn a_body_of_exactly_the_limit_is_not_truncated() {
    let addr = serve().await;
    let config = HttpConfig {
        max_body_bytes: 100,
        ..local_config()
    };
    let result = run_with(config, json!({"url": format!("http://{addr}/big")}))
        .await
        .unwrap();
    assert_eq!(result["body"].as_str().unwrap().len(), 100);
    assert!(result.get("truncated").is_none());
}

#[test]
fn validate_rejects_bad_payloads_with_clear_messages() {
    let handler = handler(local_config());
    let cases = [
        (json!({}), "missing field `url`"),
        (
            json!({"url": "not a url"}),
            "url: `not a url` is not a valid URL",
        ),
        (
            json!({"url": "ftp://example.com/file"}),
            "url: scheme `ftp` is not allowed",
        ),
        (
            json!({"url": "http://example.com/", "method": "FETCH"}),
            "method: `FETCH` is not one of",
        ),
        (
            json!({"url": "http://example.com/", "headers": {"bad header": "x"}}),
            "headers: `bad header` is not a valid header name",
        ),
        (
            json!({"url": "http://example.com/", "headers": {"x-ok": "bad\r\nvalue"}}),
            "headers: the value of `x-ok` is not a valid header value",
        ),
        (
            json!({"url": "http://example.com/", "extra": 1}),
            "unknown field `extra`",
        ),
    ];
    for (payload, expected) in cases {
        let err = handler.validate(&payload).unwrap_err();
        assert!(err.contains(expected), "{payload}: {err}");
    }
}

#[tokio::test]
async fn an_invalid_payload_that_reaches_run_fails_permanently() {
    let handler = handler(local_config());
    let err = handler
        .run(context(json!({"url": "ftp://example.com/"})))
        .await
        .unwrap_err();
    assert!(!err.retryable);
}

#[test]
fn refuses_a_literal_forbidden_address_at_creation() {
    let handler = handler(HttpConfig::default());
    for url in [
        "http://127.0.0.1:9/metrics",
        "http://2130706433/",
        "http://[::ffff:127.0.0.1]/",
        "http://169.254.169.254/latest/meta-data/",
    ] {
        let payload = json!({"url": url});
        assert!(handler.validate(&payload).is_ok(), "{url}");
        let refused = handler.check_destination(&payload).unwrap_err();
        assert!(!refused.range.is_empty(), "{url}");
    }
    assert!(
        handler
            .check_destination(&json!({"url": "https://example.com/"}))
            .is_ok()
    );
}

#[tokio::test]
async fn a_name_resolving_to_loopback_fails_for_good() {
    let addr = serve().await;
    let handler = handler(HttpConfig::default());
    let payload = json!({"url": format!("http://localhost:{}/headers", addr.port())});
    assert!(handler.check_destination(&payload).is_ok());
    let err = handler.run(context(payload)).await.unwrap_err();
    assert!(!err.retryable, "{err:?}");
    let details = err.details.unwrap();
    assert_eq!(details["error"], "destination_forbidden");
    assert_eq!(details["range"], "loopback");
}

#[tokio::test]
async fn a_redirect_to_a_forbidden_address_is_not_followed() {
    let addr = serve().await;
    let err = run(json!({"url": format!("http://{addr}/away")}))
        .await
        .unwrap_err();
    assert!(!err.retryable, "{err:?}");
    assert_eq!(err.details.unwrap()["error"], "destination_forbidden");
    assert!(err.message.contains("127.0.0.2"), "{}", err.message);
}
