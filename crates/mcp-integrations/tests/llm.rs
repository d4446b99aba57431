//! `llm.generate` against a local OpenAI-compatible fake that checks the key, the model and the
//! messages, and answers with completions, rate limits, server errors or nothing at all.

mod common;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use mcp_core::{HandlerError, HandlerRegistry, TaskContext};
use mcp_integrations::{Adapter, LlmAdapter, LlmConfig};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn context(payload: Value) -> TaskContext {
    common::context("llm.generate", payload)
}

const KEY: &str = "sk-test-key";

#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(HeaderMap, Value)>>>);

fn openai_error(status: StatusCode, message: &str, kind: &str) -> Response {
    (
        status,
        Json(json!({"error": {"message": message, "type": kind, "param": null, "code": null}})),
    )
        .into_response()
}

/// Behaves by the last message's content: `rate limit me` → 429, `crash` → 500, `hang` → no
/// answer for a long time, `garbage` → 200 without choices; otherwise a completion echoing it.
async fn completions(
    State(seen): State<Seen>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    seen.0.lock().unwrap().push((headers.clone(), body.clone()));
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(&format!("Bearer {KEY}"))
    {
        return openai_error(
            StatusCode::UNAUTHORIZED,
            "Incorrect API key provided.",
            "invalid_request_error",
        );
    }
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    if model == "no-such-model" {
        return openai_error(
            StatusCode::NOT_FOUND,
            "The model `no-such-model` does not exist",
            "invalid_request_error",
        );
    }
    let last = body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned();
    match last.as_str() {
        "rate limit me" => {
            let mut response = openai_error(
                StatusCode::TOO_MANY_REQUESTS,
                "Rate limit reached for requests",
                "requests",
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, "7".parse().unwrap());
            response
        }
        "crash" => openai_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The server had an error while processing your request.",
            "server_error",
        ),
        "hang" => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            StatusCode::OK.into_response()
        }
        "garbage" => Json(json!({"object": "chat.completion", "choices": []})).into_response(),
        _ => Json(json!({
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1_735_689_600,
            "model": format!("{model}-001"),
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": format!("you said: {last}")},
                "finish_reason": "stop",
            }],
            "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
        }))
        .into_response(),
    }
}

async fn serve() -> (SocketAddr, Seen) {
    let seen = Seen::default();
    let app = Router::new()
        .route("/v1beta/openai/chat/completions", post(completions))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

fn config(addr: SocketAddr) -> LlmConfig {
    LlmConfig {
        api_key: Some(KEY.into()),
        timeout: Duration::from_millis(500),
        ..LlmConfig::new(format!("http://{addr}/v1beta/openai/"), "gemini-test")
    }
}

async fn run(config: LlmConfig, payload: Value) -> Result<Value, HandlerError> {
    let mut registry = HandlerRegistry::default();
    LlmAdapter::new(config).unwrap().register(&mut registry);
    let handler = registry.get("llm.generate").unwrap().clone();
    handler.validate(&payload).expect("a valid payload");
    handler.run(context(payload)).await
}

#[tokio::test]
async fn a_prompt_gets_text_model_and_usage() {
    let (addr, seen) = serve().await;
    let result = run(config(addr), json!({"prompt": "hello"})).await.unwrap();
    assert_eq!(result["text"], "you said: hello");
    assert_eq!(result["model"], "gemini-test-001");
    assert_eq!(result["usage"]["total_tokens"], 9);
    assert_eq!(result["finish_reason"], "stop");
    let (headers, body) = seen.0.lock().unwrap().last().cloned().unwrap();
    assert_eq!(headers["authorization"], format!("Bearer {KEY}"));
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(
        body,
        json!({"model": "gemini-test", "messages": [{"role": "user", "content": "hello"}]})
    );
}

#[tokio::test]
async fn messages_model_and_sampling_are_forwarded() {
    let (addr, seen) = serve().await;
    let result = run(
        config(addr),
        json!({
            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
            "model": "gpt-test", "max_tokens": 64, "temperature": 0.2,
        }),
    )
    .await
    .unwrap();
    assert_eq!(result["model"], "gpt-test-001");
    let (_, body) = seen.0.lock().unwrap().last().cloned().unwrap();
    assert_eq!(body["model"], "gpt-test");
    assert_eq!(body["messages"].as_array().unwrap().len(), 2);
    assert_eq!(body["max_tokens"], 64);
    assert_eq!(body["temperature"], 0.2);
}

#[tokio::test]
async fn client_errors_are_permanent_with_the_remote_message() {
    let (addr, _) = serve().await;
    let err = run(
        LlmConfig {
            api_key: Some("sk-wrong".into()),
            ..config(addr)
        },
        json!({"prompt": "hello"}),
    )
    .await
    .unwrap_err();
    assert!(!err.retryable);
    assert!(
        err.message.contains("401") && err.message.contains("Incorrect API key"),
        "{}",
        err.message
    );
    assert!(!err.message.contains("sk-wrong"));

    let err = run(
        config(addr),
        json!({"prompt": "hello", "model": "no-such-model"}),
    )
    .await
    .unwrap_err();
    assert!(!err.retryable);
    assert!(err.message.contains("does not exist"), "{}", err.message);
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_retried() {
    let (addr, _) = serve().await;
    let err = run(config(addr), json!({"prompt": "rate limit me"}))
        .await
        .unwrap_err();
    assert!(err.retryable);
    let details = err.details.unwrap();
    assert_eq!(details["status"], 429);
    assert_eq!(details["retry_after_secs"], 7);

    let err = run(config(addr), json!({"prompt": "crash"}))
        .await
        .unwrap_err();
    assert!(err.retryable);
    assert!(err.message.contains("500"), "{}", err.message);
}

#[tokio::test]
async fn a_hanging_endpoint_times_out_and_is_retried() {
    let (addr, _) = serve().await;
    let err = run(config(addr), json!({"prompt": "hang"}))
        .await
        .unwrap_err();
    assert!(err.retryable);
    assert_eq!(err.details.unwrap()["error"], "timeout");
}

#[tokio::test]
async fn a_reply_without_a_completion_is_an_error() {
    let (addr, _) = serve().await;
    let err = run(config(addr), json!({"prompt": "garbage"}))
        .await
        .unwrap_err();
    assert!(!err.retryable);
    assert_eq!(err.details.unwrap()["body"]["choices"], json!([]));
}

#[test]
fn refuses_a_base_url_that_is_not_http() {
    assert!(LlmAdapter::new(LlmConfig::new("ftp://x/", "m")).is_err());
    assert!(LlmAdapter::new(LlmConfig::new("not a url", "m")).is_err());
}
