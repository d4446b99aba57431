//! The REST client: sends a [`DiscordRequest`], waits out rate limits within the task's
//! deadline, and turns Discord's answers and transport failures into handler results.
//!
//! Rate limits: each answer names the bucket of its route (`X-RateLimit-Bucket`, keyed here by
//! method + path with its major parameter), what is left in it (`-Remaining`) and when it refills
//! (`-Reset-After`). A request to an exhausted bucket waits for the reset before it is sent; a 429
//! waits the body's `retry_after` (per bucket, or for every route when `global`) and is sent again
//! within the same attempt, as long as the task's timeout allows. So rate limits slow a task down
//! but do not fail it. Other answers: 2xx succeeds with the JSON body (the message object); 5xx
//! and transport failures are retried; any other 4xx would fail the same way again, so the task
//! goes `dead` at once with Discord's `{"code","message"}` in the error details.

use super::DiscordConfig;
use super::limits::{Limits, header, seconds};
use super::request::DiscordRequest;
use crate::traced::SendTraced;
use mcp_core::HandlerError;
use reqwest::header::AUTHORIZATION;
use reqwest::{Client, StatusCode, Url};
use serde_json::{Map, Value, json};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Most bytes of a non-JSON error body kept in a task's error details.
const MAX_ERROR_BODY: usize = 4096;
/// Used when a 429 carries no readable `retry_after`.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);
/// The shortest wait after a 429, so a server answering `retry_after: 0` is not hammered.
const MIN_RETRY_AFTER: Duration = Duration::from_millis(50);

/// The REST client: base URL, bot token, user agent and the rate-limit state of every bucket.
pub struct DiscordClient {
    http: Client,
    base: String,
    pub(super) bot_token: Option<String>,
    limits: Mutex<Limits>,
}

impl std::fmt::Debug for DiscordClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscordClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}
impl DiscordClient {
    pub fn new(config: DiscordConfig) -> Result<Self, String> {
        let base =
            Url::parse(&config.api_base).map_err(|err| format!("discord_api_base: {err}"))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err("discord_api_base: must be an http(s) URL".into());
        }
        let http = Client::builder()
            .user_agent(config.user_agent.as_str())
            .timeout(config.timeout)
            .build()
            .map_err(|err| err.to_string())?;
        Ok(DiscordClient {
            http,
            base: base.as_str().trim_end_matches('/').to_owned(),
            bot_token: config.bot_token.filter(|t| !t.is_empty()),
            limits: Mutex::new(Limits::default()),
        })
    }

    pub(super) fn globally_limited(&self) -> bool {
        let limits = self.limits.lock().unwrap_or_else(|e| e.into_inner());
        limits.global_until.is_some_and(|t| t > Instant::now())
    }

    fn limits(&self) -> std::sync::MutexGuard<'_, Limits> {
        // The state is a cache of Discord's headers: a panic elsewhere leaves it usable.
        self.limits.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `request`, waiting out rate limits until `deadline`; the JSON answer on a 2xx.
    pub async fn send(
        &self,
        request: &DiscordRequest,
        deadline: Instant,
    ) -> Result<Value, HandlerError> {
        let route = &request.route;
        loop {
            let wait = self.limits().reserve(route, Instant::now());
            if let Some(wait) = wait {
                wait_until(route, wait, deadline).await?;
                continue;
            }
            let mut builder = self
                .http
                .request(
                    request.method.clone(),
                    format!("{}{}", self.base, request.path),
                )
                .json(&request.body);
            if request.bot {
                let token = self.bot_token.as_deref().ok_or_else(|| {
                    HandlerError::permanent(format!("{route}: no discord_bot_token is configured"))
                })?;
                builder = builder.header(AUTHORIZATION, format!("Bot {token}"));
            }
            let response = builder
                .send_traced()
                .await
                .map_err(|err| transport_error(route, err))?;
            let status = response.status();
            let headers = response.headers().clone();
            self.limits().update(route, &headers, Instant::now());
            let bytes = response
                .bytes()
                .await
                .map_err(|err| transport_error(route, err))?;
            let body: Option<Value> = serde_json::from_slice(&bytes).ok();
            tracing::debug!(%route, status = status.as_u16(), "discord answered");

            if status.is_success() {
                return Ok(body.unwrap_or(Value::Null));
            }
            if status == StatusCode::TOO_MANY_REQUESTS {
                let retry_after = body
                    .as_ref()
                    .and_then(|b| b.get("retry_after"))
                    .and_then(Value::as_f64)
                    .and_then(|s| Duration::try_from_secs_f64(s).ok())
                    .or_else(|| header(&headers, "retry-after").and_then(seconds))
                    .unwrap_or(DEFAULT_RETRY_AFTER)
                    .max(MIN_RETRY_AFTER);
                let global = body
                    .as_ref()
                    .and_then(|b| b.get("global"))
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
                    || header(&headers, "x-ratelimit-global") == Some("true");
                tracing::info!(%route, global, retry_after_ms = retry_after.as_millis() as u64, "discord rate limited");
                self.limits()
                    .limited(route, global, retry_after, Instant::now());
                continue;
            }
            return Err(remote_error(route, status, body, &bytes));
        }
    }
}

/// Sleeps `wait`, unless that passes `deadline`: then the attempt ends, retryable, so the task is
/// tried again later rather than killed by its timeout.
async fn wait_until(route: &str, wait: Duration, deadline: Instant) -> Result<(), HandlerError> {
    if Instant::now() + wait > deadline {
        return Err(HandlerError::retryable(format!(
            "{route}: rate limited for {} ms more than the task's timeout allows",
            wait.as_millis()
        ))
        .with_details(json!({"retry_after_secs": wait.as_secs_f64()}))
        .with_retry_after(wait));
    }
    tokio::time::sleep(wait).await;
    Ok(())
}

/// Discord's `{"code","message"}` (with `errors` for invalid form bodies) in the task's error.
fn remote_error(
    route: &str,
    status: StatusCode,
    body: Option<Value>,
    bytes: &[u8],
) -> HandlerError {
    let code = body.as_ref().and_then(|b| b.get("code")).cloned();
    let remote = body
        .as_ref()
        .and_then(|b| b.get("message"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let message = match (&remote, &code) {
        (Some(m), Some(c)) => format!("{route}: Discord answered {status}: {m} (code {c})"),
        (Some(m), None) => format!("{route}: Discord answered {status}: {m}"),
        _ => format!("{route}: Discord answered {status}"),
    };
    let mut details = Map::new();
    details.insert("status".into(), json!(status.as_u16()));
    if let Some(code) = code {
        details.insert("code".into(), code);
    }
    if let Some(remote) = remote {
        details.insert("message".into(), json!(remote));
    }
    match body {
        Some(b) if b.get("errors").is_some() => {
            details.insert("errors".into(), b["errors"].clone());
        }
        Some(_) => {}
        None if !bytes.is_empty() => {
            let cut = &bytes[..bytes.len().min(MAX_ERROR_BODY)];
            details.insert(
                "body".into(),
                json!(String::from_utf8_lossy(cut).into_owned()),
            );
        }
        None => {}
    }
    let error = if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
        HandlerError::retryable(message)
    } else {
        HandlerError::permanent(message)
    };
    error.with_details(Value::Object(details))
}

/// A failure before a full answer was read: worth another attempt (no token appears in it).
fn transport_error(route: &str, err: reqwest::Error) -> HandlerError {
    let kind = if err.is_timeout() {
        "timeout"
    } else if err.is_connect() {
        "connect"
    } else {
        "request"
    };
    let retryable = !err.is_builder();
    crate::http::request_failure(route, err, kind, retryable)
}
