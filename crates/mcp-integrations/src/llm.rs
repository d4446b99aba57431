//! `llm.generate`: one chat completion from an OpenAI-compatible endpoint
//! (`POST {base_url}/chat/completions`) — OpenAI, Gemini's OpenAI-compatible endpoint, or a local
//! server — its text kept as the task's result.
//!
//! A 2xx with a choice succeeds; 408, 429, 5xx and transport failures are retried; any other 4xx
//! (a bad key, an unknown model, a prompt too long) would fail the same way again, so the task
//! goes `dead` at once with the remote message recorded. A 2xx without a usable answer is a
//! malformed reply: permanent, with the body in the error details.
//!
//! Payload: `{"prompt": "…"}` or `{"messages": [{"role", "content"}, …]}`, and optionally
//! `model` (default: the configured one), `max_tokens`, `temperature`.
//! Result: `{"text", "model", "usage"?, "finish_reason"?}`.

use crate::traced::SendTraced;
use crate::{Adapter, AdapterHealth};
use async_trait::async_trait;
use mcp_core::{Handler, HandlerError, HandlerRegistry, TaskContext};
use reqwest::header::{ACCEPT, RETRY_AFTER};
use reqwest::{Client, StatusCode, Url};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The task type this module handles.
pub const TASK_TYPE: &str = "llm.generate";
/// The roles a chat message may have.
const ROLES: [&str; 4] = ["system", "user", "assistant", "developer"];
/// Most bytes of a remote error body kept in a task's error details.
const MAX_ERROR_BODY: usize = 4096;

/// Settings of the LLM adapter.
#[derive(Clone)]
pub struct LlmConfig {
    /// e.g. `https://api.openai.com/v1`, or
    /// `https://generativelanguage.googleapis.com/v1beta/openai`.
    pub base_url: String,
    /// Used when the payload names no `model`.
    pub model: String,
    /// Sent as `Authorization: Bearer …`; `None` for a local server that needs none.
    pub api_key: Option<String>,
    /// Limit of one completion call.
    pub timeout: Duration,
    pub user_agent: String,
    /// Shared with the handler, so the endpoint, model and key can change while running.
    pub live: LlmLive,
}

/// Where `llm.generate` calls, changeable while the server runs (an integration stored through
/// `PUT /v1/integrations/{name}`): every handler built with a clone of it reads it per call.
#[derive(Clone, Default)]
pub struct LlmLive(Arc<RwLock<Option<LlmTarget>>>);

#[derive(Clone)]
struct LlmTarget {
    endpoint: String,
    model: String,
    api_key: Option<String>,
}

impl LlmTarget {
    fn new(base_url: &str, model: &str, api_key: Option<String>) -> Result<LlmTarget, String> {
        let base = Url::parse(base_url).map_err(|err| format!("llm_base_url: {err}"))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err("llm_base_url: must be an http(s) URL".into());
        }
        Ok(LlmTarget {
            endpoint: format!("{}/chat/completions", base.as_str().trim_end_matches('/')),
            model: model.to_owned(),
            api_key: api_key.filter(|k| !k.is_empty()),
        })
    }
}

impl std::fmt::Debug for LlmLive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmLive")
            .field("attached", &self.is_attached())
            .finish_non_exhaustive()
    }
}

impl LlmLive {
    /// Checks the settings and, when a handler uses this holder, points it at them.
    /// `Ok(true)`: in effect for the next call; `Ok(false)`: valid, but no handler is running.
    pub fn set(
        &self,
        base_url: &str,
        model: &str,
        api_key: Option<String>,
    ) -> Result<bool, String> {
        let target = LlmTarget::new(base_url, model, api_key)?;
        let mut current = self.0.write().unwrap_or_else(|e| e.into_inner());
        let attached = current.is_some();
        if attached {
            *current = Some(target);
        }
        Ok(attached)
    }

    /// Whether a running handler reads this holder.
    pub fn is_attached(&self) -> bool {
        self.0.read().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    fn attach(&self, target: LlmTarget) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(target);
    }

    fn target(&self) -> Option<LlmTarget> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl std::fmt::Debug for LlmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmConfig")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl LlmConfig {
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        LlmConfig {
            base_url: base_url.into(),
            model: model.into(),
            api_key: None,
            timeout: Duration::from_secs(60),
            user_agent: concat!("mkww-mcp/", env!("CARGO_PKG_VERSION"), " (llm)").to_owned(),
            live: LlmLive::default(),
        }
    }
}

/// The adapter for an OpenAI-compatible LLM: registers `llm.generate`.
#[derive(Debug, Clone)]
pub struct LlmAdapter {
    handler: LlmGenerate,
}

impl LlmAdapter {
    pub fn new(config: LlmConfig) -> Result<Self, String> {
        let target = LlmTarget::new(&config.base_url, &config.model, config.api_key)?;
        let client = Client::builder()
            .user_agent(config.user_agent.as_str())
            .timeout(config.timeout)
            .build()
            .map_err(|err| err.to_string())?;
        Ok(LlmAdapter {
            handler: LlmGenerate {
                client,
                live: {
                    config.live.attach(target);
                    config.live
                },
            },
        })
    }

    pub fn handler(&self) -> LlmGenerate {
        self.handler.clone()
    }
}

#[async_trait]
impl Adapter for LlmAdapter {
    fn name(&self) -> &str {
        "llm"
    }

    fn task_types(&self) -> Vec<String> {
        vec![TASK_TYPE.to_owned()]
    }

    /// Always healthy: probing would cost tokens; failures show in the tasks' errors.
    async fn health(&self) -> AdapterHealth {
        AdapterHealth::Healthy
    }

    fn register(&self, registry: &mut HandlerRegistry) {
        registry.register(TASK_TYPE, self.handler());
    }
}

/// The handler for `llm.generate`.
#[derive(Clone)]
pub struct LlmGenerate {
    client: Client,
    live: LlmLive,
}

impl std::fmt::Debug for LlmGenerate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let target = self.target();
        f.debug_struct("LlmGenerate")
            .field("endpoint", &target.endpoint)
            .field("model", &target.model)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    messages: Option<Vec<ChatMessage>>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatMessage {
    role: String,
    content: String,
}

impl LlmGenerate {
    /// Where calls go now. The holder was attached when the handler was built.
    fn target(&self) -> LlmTarget {
        self.live.target().unwrap_or_else(|| LlmTarget {
            endpoint: String::new(),
            model: String::new(),
            api_key: None,
        })
    }

    /// The request body for the endpoint, from a checked payload.
    fn request_body(&self, payload: &Value) -> Result<Value, String> {
        let p = Payload::deserialize(payload).map_err(|err| err.to_string())?;
        let messages = match (p.prompt, p.messages) {
            (Some(prompt), None) => {
                if prompt.trim().is_empty() {
                    return Err("prompt: must not be empty".into());
                }
                vec![json!({"role": "user", "content": prompt})]
            }
            (None, Some(messages)) => {
                if messages.is_empty() {
                    return Err("messages: at least one".into());
                }
                let mut out = Vec::with_capacity(messages.len());
                for (i, m) in messages.into_iter().enumerate() {
                    if !ROLES.contains(&m.role.as_str()) {
                        return Err(format!(
                            "messages[{i}].role: `{}` is not one of {}",
                            m.role,
                            ROLES.join(", ")
                        ));
                    }
                    out.push(json!({"role": m.role, "content": m.content}));
                }
                out
            }
            _ => return Err("give either `prompt` or `messages`".into()),
        };
        let model = p
            .model
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| self.target().model);
        let mut body = json!({"model": model, "messages": messages});
        if let Some(max_tokens) = p.max_tokens {
            if max_tokens == 0 {
                return Err("max_tokens: must be at least 1".into());
            }
            body["max_tokens"] = json!(max_tokens);
        }
        if let Some(temperature) = p.temperature {
            if !(0.0..=2.0).contains(&temperature) {
                return Err("temperature: must be between 0 and 2".into());
            }
            body["temperature"] = json!(temperature);
        }
        Ok(body)
    }
}

#[async_trait]
impl Handler for LlmGenerate {
    fn validate(&self, payload: &Value) -> Result<(), String> {
        self.request_body(payload).map(|_| ())
    }

    async fn run(&self, ctx: TaskContext) -> Result<Value, HandlerError> {
        let body = self
            .request_body(&ctx.task.payload)
            .map_err(HandlerError::permanent)?;
        let model = body["model"].as_str().unwrap_or_default().to_owned();
        let target = self.target();
        let mut request = self
            .client
            .post(&target.endpoint)
            .header(ACCEPT, "application/json")
            .json(&body);
        if let Some(key) = &target.api_key {
            request = request.bearer_auth(key);
        }
        // A cancelled task's future is dropped by the orchestrator, which aborts the call.
        let response = request.send_traced().await.map_err(transport_error)?;
        let status = response.status();
        let retry_after: Option<u64> = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        let bytes = response.bytes().await.map_err(transport_error)?;
        let reply: Option<Value> = serde_json::from_slice(&bytes).ok();
        tracing::debug!(task_id = %ctx.task.id, status = status.as_u16(), %model, "llm.generate answered");

        if status.is_success() {
            return match reply.as_ref().and_then(|r| completion(r, &model)) {
                Some(result) => Ok(result),
                None => Err(HandlerError::permanent(format!(
                    "the LLM answered {status} without a completion"
                ))
                .with_details(json!({"status": status.as_u16(), "body": body_of(reply, &bytes)}))),
            };
        }
        let message = match reply.as_ref().and_then(remote_message) {
            Some(remote) => format!("the LLM answered {status}: {remote}"),
            None => format!("the LLM answered {status}"),
        };
        let error = if is_retryable(status) {
            HandlerError::retryable(message)
        } else {
            HandlerError::permanent(message)
        };
        let mut details = json!({"status": status.as_u16(), "body": body_of(reply, &bytes)});
        if let Some(seconds) = retry_after {
            details["retry_after_secs"] = json!(seconds);
        }
        Err(error.with_details(details))
    }
}

/// `{"text","model","usage"?,"finish_reason"?}` from a chat-completions reply, if it has a
/// first choice with text content.
fn completion(reply: &Value, requested_model: &str) -> Option<Value> {
    let choice = reply.get("choices")?.as_array()?.first()?;
    let text = choice.get("message")?.get("content")?.as_str()?;
    let model = reply
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or(requested_model);
    let mut result = json!({"text": text, "model": model});
    if let Some(usage) = reply.get("usage").filter(|u| u.is_object()) {
        result["usage"] = usage.clone();
    }
    if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
        result["finish_reason"] = json!(reason);
    }
    Some(result)
}

/// OpenAI's `{"error":{"message"}}`; Gemini wraps the same in a one-element array.
fn remote_message(reply: &Value) -> Option<String> {
    let reply = match reply {
        Value::Array(items) => items.first()?,
        other => other,
    };
    let error = reply.get("error")?;
    error
        .get("message")
        .and_then(Value::as_str)
        .or_else(|| error.as_str())
        .map(str::to_owned)
}

fn body_of(reply: Option<Value>, bytes: &[u8]) -> Value {
    reply.unwrap_or_else(|| {
        let cut = &bytes[..bytes.len().min(MAX_ERROR_BODY)];
        Value::String(String::from_utf8_lossy(cut).into_owned())
    })
}

fn is_retryable(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
}

/// A failure before a full answer was read: worth another attempt (the key never appears in it).
fn transport_error(err: reqwest::Error) -> HandlerError {
    let kind = if err.is_timeout() {
        "timeout"
    } else if err.is_connect() {
        "connect"
    } else {
        "request"
    };
    let retryable = !err.is_builder();
    crate::http::request_failure("the LLM call", err, kind, retryable)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handler() -> LlmGenerate {
        LlmAdapter::new(LlmConfig::new("http://127.0.0.1:1/v1/", "test-model"))
            .unwrap()
            .handler()
    }

    #[test]
    fn a_prompt_becomes_one_user_message_with_the_configured_model() {
        let body = handler().request_body(&json!({"prompt": "hi"})).unwrap();
        assert_eq!(
            body,
            json!({"model": "test-model", "messages": [{"role": "user", "content": "hi"}]})
        );
        assert_eq!(
            handler().target().endpoint,
            "http://127.0.0.1:1/v1/chat/completions"
        );
    }

    #[test]
    fn a_live_holder_changes_where_the_handler_calls() {
        let live = LlmLive::default();
        assert!(!live.set("http://127.0.0.1:2/v1", "m", None).unwrap());
        let mut config = LlmConfig::new("http://127.0.0.1:1/v1", "test-model");
        config.live = live.clone();
        let handler = LlmAdapter::new(config).unwrap().handler();
        assert!(live.is_attached());
        assert!(
            live.set("http://127.0.0.1:2/v2", "other", Some("k".into()))
                .unwrap()
        );
        assert_eq!(
            handler.target().endpoint,
            "http://127.0.0.1:2/v2/chat/completions"
        );
        assert_eq!(handler.target().api_key.as_deref(), Some("k"));
        let body = handler.request_body(&json!({"prompt": "hi"})).unwrap();
        assert_eq!(body["model"], "other");
        assert!(live.set("ftp://x", "m", None).is_err());
    }

    #[test]
    fn messages_model_and_limits_pass_through() {
        let body = handler()
            .request_body(&json!({
                "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
                "model": "other", "max_tokens": 50, "temperature": 0.5,
            }))
            .unwrap();
        assert_eq!(body["model"], "other");
        assert_eq!(body["messages"][0]["role"], "system");
        assert_eq!(body["max_tokens"], 50);
        assert_eq!(body["temperature"], 0.5);
    }

    #[test]
    fn rejects_bad_payloads() {
        let h = handler();
        for payload in [
            json!({}),
            json!({"prompt": ""}),
            json!({"prompt": "a", "messages": []}),
            json!({"messages": []}),
            json!({"messages": [{"role": "robot", "content": "x"}]}),
            json!({"prompt": "a", "max_tokens": 0}),
            json!({"prompt": "a", "temperature": 3}),
            json!({"prompt": "a", "stream": true}),
        ] {
            assert!(h.validate(&payload).is_err(), "{payload}");
        }
    }

    #[test]
    fn reads_completions_and_remote_errors() {
        let reply = json!({
            "model": "m-1",
            "choices": [{"message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        });
        let result = completion(&reply, "m").unwrap();
        assert_eq!(result["text"], "hello");
        assert_eq!(result["model"], "m-1");
        assert_eq!(result["usage"]["total_tokens"], 2);
        assert!(completion(&json!({"choices": []}), "m").is_none());
        assert_eq!(
            remote_message(&json!({"error": {"message": "bad key"}})).unwrap(),
            "bad key"
        );
        assert_eq!(
            remote_message(&json!([{"error": {"code": 400, "message": "bad model"}}])).unwrap(),
            "bad model"
        );
    }
}
