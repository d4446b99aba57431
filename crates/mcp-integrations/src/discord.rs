//! Discord: `discord.send_message`, `discord.edit_message` (with the bot token) and
//! `discord.webhook_execute` (a webhook's own token; also how interaction follow-ups are sent),
//! through one REST client that honours Discord's rate limits.
//!
//! Rate limits: each answer names the bucket of its route (`X-RateLimit-Bucket`, keyed here by
//! method + path with its major parameter), what is left in it (`-Remaining`) and when it refills
//! (`-Reset-After`). A request to an exhausted bucket waits for the reset before it is sent; a 429
//! waits the body's `retry_after` (per bucket, or for every route when `global`) and is sent again
//! within the same attempt, as long as the task's timeout allows. So rate limits slow a task down
//! but do not fail it. Other answers: 2xx succeeds with the JSON body (the message object); 5xx
//! and transport failures are retried; any other 4xx would fail the same way again, so the task
//! goes `dead` at once with Discord's `{"code","message"}` in the error details.
//!
//! `docs/integrations.md` has the payload and result schemas.

use crate::{Adapter, AdapterHealth};
use async_trait::async_trait;
use mcp_core::{Handler, HandlerError, HandlerRegistry, TaskContext};
use reqwest::header::{AUTHORIZATION, HeaderMap};
use reqwest::{Client, Method, StatusCode, Url};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Posts a message to a channel (bot token).
pub const SEND_MESSAGE: &str = "discord.send_message";
/// Edits a message of the bot (bot token).
pub const EDIT_MESSAGE: &str = "discord.edit_message";
/// Executes a webhook (its token is in the payload; no bot token needed).
pub const WEBHOOK_EXECUTE: &str = "discord.webhook_execute";
/// Discord's limit on `content`, in characters.
pub const MAX_CONTENT_CHARS: usize = 2000;
/// Discord's limit on `embeds` per message.
pub const MAX_EMBEDS: usize = 10;
/// Most bytes of a non-JSON error body kept in a task's error details.
const MAX_ERROR_BODY: usize = 4096;
/// Used when a 429 carries no readable `retry_after`.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);
/// The shortest wait after a 429, so a server answering `retry_after: 0` is not hammered.
const MIN_RETRY_AFTER: Duration = Duration::from_millis(50);

/// Settings of the Discord adapter.
#[derive(Clone)]
pub struct DiscordConfig {
    /// `https://discord.com/api/v10`, or a test server.
    pub api_base: String,
    /// `None`: `discord.send_message` and `discord.edit_message` are not registered.
    pub bot_token: Option<String>,
    /// Limit of one HTTP call (a task's waits for rate limits are bounded by its own timeout).
    pub timeout: Duration,
    /// Discord asks bots for `DiscordBot ($url, $version)`.
    pub user_agent: String,
}

impl std::fmt::Debug for DiscordConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscordConfig")
            .field("api_base", &self.api_base)
            .field("bot_token", &self.bot_token.as_ref().map(|_| "…"))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Default for DiscordConfig {
    fn default() -> Self {
        DiscordConfig {
            api_base: "https://discord.com/api/v10".into(),
            bot_token: None,
            timeout: Duration::from_secs(30),
            user_agent: concat!(
                "DiscordBot (https://github.com/mkww/mkww-mcp, ",
                env!("CARGO_PKG_VERSION"),
                ")"
            )
            .to_owned(),
        }
    }
}

/// The adapter for Discord: `discord.webhook_execute` always, the bot's task types when a bot
/// token is configured.
#[derive(Debug, Clone)]
pub struct DiscordAdapter {
    client: Arc<DiscordClient>,
}

impl DiscordAdapter {
    pub fn new(config: DiscordConfig) -> Result<Self, String> {
        Ok(DiscordAdapter {
            client: Arc::new(DiscordClient::new(config)?),
        })
    }

    /// The shared client (one rate-limit state for every task type).
    pub fn client(&self) -> Arc<DiscordClient> {
        self.client.clone()
    }
}

#[async_trait]
impl Adapter for DiscordAdapter {
    fn name(&self) -> &str {
        "discord"
    }

    fn task_types(&self) -> Vec<String> {
        let mut types = Vec::new();
        if self.client.bot_token.is_some() {
            types.push(EDIT_MESSAGE.to_owned());
            types.push(SEND_MESSAGE.to_owned());
        }
        types.push(WEBHOOK_EXECUTE.to_owned());
        types
    }

    /// Degraded while a global rate limit is in force; failures show in the tasks' errors.
    async fn health(&self) -> AdapterHealth {
        if self.client.globally_limited() {
            AdapterHealth::Degraded("globally rate limited".into())
        } else {
            AdapterHealth::Healthy
        }
    }

    fn register(&self, registry: &mut HandlerRegistry) {
        for kind in [Kind::Send, Kind::Edit, Kind::Webhook] {
            if kind.needs_bot_token() && self.client.bot_token.is_none() {
                continue;
            }
            registry.register(
                kind.task_type(),
                DiscordTask {
                    kind,
                    client: self.client.clone(),
                },
            );
        }
    }
}

/// One rate-limit bucket, as Discord last described it.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    remaining: u64,
    reset_at: Instant,
}

#[derive(Debug, Default)]
struct Limits {
    /// Route key (`POST /channels/123/messages`) → bucket id from `X-RateLimit-Bucket`.
    route_bucket: HashMap<String, String>,
    /// Bucket id (or the route key, before Discord named one) → its state.
    buckets: HashMap<String, Bucket>,
    /// Set by a global 429: nothing is sent before.
    global_until: Option<Instant>,
}

impl Limits {
    fn bucket_key(&self, route: &str) -> String {
        self.route_bucket
            .get(route)
            .cloned()
            .unwrap_or_else(|| route.to_owned())
    }

    /// How long to wait before sending on `route`, or `None` to send now (taking one request
    /// from the bucket, so concurrent tasks do not overshoot it).
    fn reserve(&mut self, route: &str, now: Instant) -> Option<Duration> {
        if let Some(until) = self.global_until {
            if until > now {
                return Some(until - now);
            }
            self.global_until = None;
        }
        let key = self.bucket_key(route);
        match self.buckets.get_mut(&key) {
            Some(bucket) if bucket.reset_at <= now => {
                self.buckets.remove(&key);
                None
            }
            Some(bucket) if bucket.remaining == 0 => Some(bucket.reset_at - now),
            Some(bucket) => {
                bucket.remaining -= 1;
                None
            }
            None => None,
        }
    }

    /// Records what an answer said about `route`'s bucket.
    fn update(&mut self, route: &str, headers: &HeaderMap, now: Instant) {
        let bucket_id = header(headers, "x-ratelimit-bucket").map(str::to_owned);
        let remaining = header(headers, "x-ratelimit-remaining").and_then(|v| v.parse().ok());
        let reset_after = header(headers, "x-ratelimit-reset-after").and_then(seconds);
        if let Some(id) = &bucket_id {
            self.route_bucket.insert(route.to_owned(), id.clone());
        }
        if let (Some(remaining), Some(reset_after)) = (remaining, reset_after) {
            let key = bucket_id.unwrap_or_else(|| self.bucket_key(route));
            self.buckets.insert(
                key,
                Bucket {
                    remaining,
                    reset_at: now + reset_after,
                },
            );
        }
    }

    /// A 429: nothing on `route` (or anywhere, when `global`) before `wait` has passed.
    fn limited(&mut self, route: &str, global: bool, wait: Duration, now: Instant) {
        if global {
            self.global_until = Some(now + wait);
        } else {
            let key = self.bucket_key(route);
            self.buckets.insert(
                key,
                Bucket {
                    remaining: 0,
                    reset_at: now + wait,
                },
            );
        }
    }
}

/// The REST client: base URL, bot token, user agent and the rate-limit state of every bucket.
pub struct DiscordClient {
    http: Client,
    base: String,
    bot_token: Option<String>,
    limits: Mutex<Limits>,
}

impl std::fmt::Debug for DiscordClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscordClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// One call to make: method, path under the base (which may carry a secret) and the route key
/// (which never does).
#[derive(Debug, Clone, PartialEq)]
pub struct DiscordRequest {
    pub method: Method,
    pub path: String,
    /// Method + path with the major parameter kept and the others replaced by placeholders:
    /// the key rate limits are tracked by, and the name used in messages.
    pub route: String,
    pub body: Value,
    /// Sends `Authorization: Bot …`.
    pub bot: bool,
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

    fn globally_limited(&self) -> bool {
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
                .send()
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
        .with_details(json!({"retry_after_secs": wait.as_secs_f64()})));
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

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// `"1.5"` → 1.5 s; negative or unreadable → `None`.
fn seconds(value: &str) -> Option<Duration> {
    value
        .parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
}

/// Which task type a [`DiscordTask`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Send,
    Edit,
    Webhook,
}

impl Kind {
    fn task_type(self) -> &'static str {
        match self {
            Kind::Send => SEND_MESSAGE,
            Kind::Edit => EDIT_MESSAGE,
            Kind::Webhook => WEBHOOK_EXECUTE,
        }
    }

    fn needs_bot_token(self) -> bool {
        !matches!(self, Kind::Webhook)
    }
}

/// The message fields every task type takes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    #[serde(default)]
    channel_id: Option<String>,
    #[serde(default)]
    message_id: Option<String>,
    #[serde(default)]
    webhook_id: Option<String>,
    #[serde(default)]
    webhook_token: Option<String>,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    embeds: Option<Vec<Value>>,
    #[serde(default)]
    allowed_mentions: Option<Value>,
    /// Webhooks only: the name and avatar shown for this message.
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    avatar_url: Option<String>,
}

/// A snowflake: a decimal id, given as a string (JSON numbers lose its precision).
fn snowflake(field: &str, value: Option<String>) -> Result<String, String> {
    match value {
        Some(id) if !id.is_empty() && id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(id)
        }
        Some(id) => Err(format!(
            "{field}: `{id}` is not a Discord id (a decimal string)"
        )),
        None => Err(format!("{field}: required")),
    }
}

/// Turns a payload into the call it makes; every check happens here, at creation and at run.
pub fn request_for(task_type: &str, payload: &Value) -> Result<DiscordRequest, String> {
    let kind = match task_type {
        SEND_MESSAGE => Kind::Send,
        EDIT_MESSAGE => Kind::Edit,
        WEBHOOK_EXECUTE => Kind::Webhook,
        other => return Err(format!("`{other}` is not a Discord task type")),
    };
    build(kind, payload)
}

fn build(kind: Kind, payload: &Value) -> Result<DiscordRequest, String> {
    let p = Payload::deserialize(payload).map_err(|err| err.to_string())?;
    let mut body = Map::new();
    if let Some(content) = p.content {
        if content.chars().count() > MAX_CONTENT_CHARS {
            return Err(format!("content: at most {MAX_CONTENT_CHARS} characters"));
        }
        body.insert("content".into(), json!(content));
    }
    if let Some(embeds) = p.embeds {
        if embeds.len() > MAX_EMBEDS {
            return Err(format!("embeds: at most {MAX_EMBEDS}"));
        }
        if let Some(i) = embeds.iter().position(|e| !e.is_object()) {
            return Err(format!("embeds[{i}]: must be an object"));
        }
        body.insert("embeds".into(), json!(embeds));
    }
    let has_message = body.get("content").is_some_and(|c| c != "")
        || body
            .get("embeds")
            .and_then(Value::as_array)
            .is_some_and(|e| !e.is_empty());
    if let Some(mentions) = p.allowed_mentions {
        if !mentions.is_object() {
            return Err("allowed_mentions: must be an object".into());
        }
        body.insert("allowed_mentions".into(), mentions);
    }
    let webhook_only = p.webhook_id.is_some()
        || p.webhook_token.is_some()
        || p.username.is_some()
        || p.avatar_url.is_some();
    match kind {
        Kind::Send | Kind::Edit if webhook_only => {
            return Err(
                "webhook_id, webhook_token, username and avatar_url belong to \
                 discord.webhook_execute"
                    .into(),
            );
        }
        Kind::Webhook if p.channel_id.is_some() || p.message_id.is_some() => {
            return Err("channel_id and message_id belong to the bot's task types".into());
        }
        Kind::Send | Kind::Webhook if !has_message => {
            return Err("give a non-empty `content` or `embeds`".into());
        }
        Kind::Edit if body.is_empty() => {
            return Err("give `content`, `embeds` or `allowed_mentions` to change".into());
        }
        _ => {}
    }
    Ok(match kind {
        Kind::Send => {
            let channel = snowflake("channel_id", p.channel_id)?;
            DiscordRequest {
                method: Method::POST,
                path: format!("/channels/{channel}/messages"),
                route: format!("POST /channels/{channel}/messages"),
                body: Value::Object(body),
                bot: true,
            }
        }
        Kind::Edit => {
            let channel = snowflake("channel_id", p.channel_id)?;
            let message = snowflake("message_id", p.message_id)?;
            DiscordRequest {
                method: Method::PATCH,
                path: format!("/channels/{channel}/messages/{message}"),
                route: format!("PATCH /channels/{channel}/messages/{{message_id}}"),
                body: Value::Object(body),
                bot: true,
            }
        }
        Kind::Webhook => {
            let id = snowflake("webhook_id", p.webhook_id)?;
            let token = p.webhook_token.unwrap_or_default();
            let valid_token = !token.is_empty()
                && token.len() <= 512
                && token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !valid_token {
                return Err("webhook_token: required, letters, digits, `-`, `_` and `.`".into());
            }
            if let Some(username) = p.username {
                body.insert("username".into(), json!(username));
            }
            if let Some(avatar_url) = p.avatar_url {
                body.insert("avatar_url".into(), json!(avatar_url));
            }
            // The token is a major parameter too, but a secret: the route key holds its hash.
            DiscordRequest {
                method: Method::POST,
                path: format!("/webhooks/{id}/{token}?wait=true"),
                route: format!("POST /webhooks/{id}/{{token:{:x}}}", fnv1a(&token)),
                body: Value::Object(body),
                bot: false,
            }
        }
    })
}

/// A short, stable stand-in for a secret in route keys and messages.
fn fnv1a(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5_u32, |hash, b| {
        (hash ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The handler of one Discord task type.
#[derive(Debug, Clone)]
struct DiscordTask {
    kind: Kind,
    client: Arc<DiscordClient>,
}

#[async_trait]
impl Handler for DiscordTask {
    fn validate(&self, payload: &Value) -> Result<(), String> {
        build(self.kind, payload).map(|_| ())
    }

    async fn run(&self, ctx: TaskContext) -> Result<Value, HandlerError> {
        let request = build(self.kind, &ctx.task.payload).map_err(HandlerError::permanent)?;
        // The orchestrator drops the attempt at its timeout; waits stop a little short of it.
        let budget = Duration::from_millis(ctx.task.timeout_ms.max(1));
        let deadline = Instant::now() + budget.mul_f64(0.9);
        self.client.send(&request, deadline).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn send_message_posts_to_the_channel() {
        let request = request_for(
            SEND_MESSAGE,
            &json!({"channel_id": "123", "content": "hi", "allowed_mentions": {"parse": []}}),
        )
        .unwrap();
        assert_eq!(request.method, Method::POST);
        assert_eq!(request.path, "/channels/123/messages");
        assert_eq!(
            request.body,
            json!({"content": "hi", "allowed_mentions": {"parse": []}})
        );
        assert!(request.bot);
    }

    #[test]
    fn edit_keys_its_bucket_by_channel_only() {
        let a = request_for(
            EDIT_MESSAGE,
            &json!({"channel_id": "1", "message_id": "2", "content": "x"}),
        )
        .unwrap();
        let b = request_for(
            EDIT_MESSAGE,
            &json!({"channel_id": "1", "message_id": "3", "content": "y"}),
        )
        .unwrap();
        assert_eq!(a.method, Method::PATCH);
        assert_eq!(a.path, "/channels/1/messages/2");
        assert_eq!(a.route, b.route);
    }

    #[test]
    fn webhook_execute_waits_and_keeps_the_token_out_of_the_route() {
        let request = request_for(
            WEBHOOK_EXECUTE,
            &json!({"webhook_id": "9", "webhook_token": "s3cr3t-tok", "content": "hi", "username": "MCP"}),
        )
        .unwrap();
        assert_eq!(request.path, "/webhooks/9/s3cr3t-tok?wait=true");
        assert!(!request.route.contains("s3cr3t"));
        assert!(!request.bot);
        assert_eq!(request.body["username"], "MCP");
    }

    #[test]
    fn rejects_bad_payloads() {
        for (task_type, payload) in [
            (SEND_MESSAGE, json!({"content": "no channel"})),
            (SEND_MESSAGE, json!({"channel_id": 123, "content": "x"})),
            (SEND_MESSAGE, json!({"channel_id": "12a", "content": "x"})),
            (SEND_MESSAGE, json!({"channel_id": "1"})),
            (SEND_MESSAGE, json!({"channel_id": "1", "content": ""})),
            (
                SEND_MESSAGE,
                json!({"channel_id": "1", "content": "x".repeat(2001)}),
            ),
            (SEND_MESSAGE, json!({"channel_id": "1", "embeds": [1]})),
            (
                SEND_MESSAGE,
                json!({"channel_id": "1", "content": "x", "tts": true}),
            ),
            (
                SEND_MESSAGE,
                json!({"channel_id": "1", "content": "x", "webhook_id": "1"}),
            ),
            (EDIT_MESSAGE, json!({"channel_id": "1", "content": "x"})),
            (EDIT_MESSAGE, json!({"channel_id": "1", "message_id": "2"})),
            (WEBHOOK_EXECUTE, json!({"webhook_id": "1", "content": "x"})),
            (
                WEBHOOK_EXECUTE,
                json!({"webhook_id": "1", "webhook_token": "a/b", "content": "x"}),
            ),
            (
                WEBHOOK_EXECUTE,
                json!({"webhook_id": "1", "webhook_token": "t", "channel_id": "1", "content": "x"}),
            ),
        ] {
            assert!(
                request_for(task_type, &payload).is_err(),
                "{task_type} {payload}"
            );
        }
    }

    #[test]
    fn an_exhausted_bucket_waits_for_its_reset() {
        let now = Instant::now();
        let mut limits = Limits::default();
        let route = "POST /channels/1/messages";
        assert_eq!(limits.reserve(route, now), None);
        limits.update(
            route,
            &headers(&[
                ("x-ratelimit-bucket", "abcd"),
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset-after", "0.5"),
            ]),
            now,
        );
        assert_eq!(limits.reserve(route, now), Some(Duration::from_millis(500)));
        assert_eq!(
            limits.reserve(route, now + Duration::from_millis(500)),
            None
        );
    }

    #[test]
    fn a_global_limit_holds_every_route() {
        let now = Instant::now();
        let mut limits = Limits::default();
        limits.limited("a", true, Duration::from_secs(2), now);
        assert_eq!(limits.reserve("b", now), Some(Duration::from_secs(2)));
        assert_eq!(limits.reserve("b", now + Duration::from_secs(2)), None);
    }
}
