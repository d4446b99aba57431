//! `POST /v1/discord/interactions`: Discord's interactions endpoint. Discord signs every request
//! with the application's Ed25519 key, so the route needs no credentials of ours: it checks
//! `X-Signature-Ed25519` over `X-Signature-Timestamp` + the raw body and answers 401 to anything
//! else, as Discord requires.
//!
//! PING → PONG. A slash command maps, by name, to the task type configured in
//! `[discord.commands.<name>]`; the task is created (by `discord:{user id}`), Discord gets a
//! deferred reply at once, and when the task is final a `discord.webhook_execute` task sends the
//! follow-up (`POST /webhooks/{application_id}/{interaction token}`) with its result or error.
//!
//! The follow-up owed is stored (the interaction sealed by the `SecretBox`) before the task is,
//! so it survives the node that took the interaction: this node waits for the task and sends it
//! at once, and [`sweep_followups`], on every node, sends those whose task is final but whose
//! waiter died. Both create the follow-up task with the idempotency key
//! `discord-followup:{task id}`, so it is sent once whoever comes first.

use crate::access::Access::Public;
use crate::endpoint::{Endpoint, endpoint};
use crate::error::{ApiError, ErrorBody};
use crate::request_id;
use crate::state::AppState;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use ed25519_dalek::Signature;
/// The application's public key, as [`parse_public_key`] reads it.
pub use ed25519_dalek::VerifyingKey;
use mcp_core::events::Subscription;
use mcp_core::followups::{FollowupStore, PendingFollowup, SECRET_PURPOSE};
use mcp_core::secrets::SecretBox;
use mcp_core::services::Creator;
use mcp_core::task::CreateTask;
use mcp_core::{Task, TaskStatus};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use utoipa::ToSchema;
use utoipa_axum::routes;
use uuid::Uuid;

/// The routes of this module and who may call them.
pub(crate) fn endpoints() -> Vec<Endpoint<AppState>> {
    vec![
        // Authenticates itself: Discord signs every request with Ed25519.
        endpoint(Public, routes!(interactions)),
    ]
}

/// The task type that sends follow-ups.
pub const FOLLOWUP_TASK_TYPE: &str = "discord.webhook_execute";
/// Discord's limit on a message's `content`.
const MAX_CONTENT_CHARS: usize = 2000;
/// How often the follow-up waiter reads the task besides waking on its events.
const POLL: Duration = Duration::from_millis(500);
/// Discord's interaction tokens are valid this long: a follow-up older than that cannot be sent.
const TOKEN_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// A stored follow-up whose task is not (yet) in the database is left alone this long: the
/// follow-up is stored just before its task.
const TASK_GRACE: Duration = Duration::from_secs(60);
/// Follow-ups a sweep takes at once.
const SWEEP_BATCH: u32 = 100;

/// Where pending follow-ups are kept: the database, the interaction sealed.
#[derive(Clone)]
pub struct Followups {
    pub store: Arc<dyn FollowupStore>,
    pub secrets: Arc<SecretBox>,
}

/// The sealed part of a stored follow-up.
#[derive(Serialize, Deserialize)]
struct SealedInteraction {
    application_id: String,
    token: String,
}

impl Followups {
    async fn save(
        &self,
        task_id: Uuid,
        application_id: &str,
        token: &str,
        created_by: &str,
    ) -> Result<(), String> {
        let plain = serde_json::to_vec(&SealedInteraction {
            application_id: application_id.to_owned(),
            token: token.to_owned(),
        })
        .map_err(|e| e.to_string())?;
        let sealed = self
            .secrets
            .seal(&plain, SECRET_PURPOSE)
            .map_err(|e| e.to_string())?;
        self.store
            .save_followup(&PendingFollowup {
                task_id,
                sealed,
                created_by: created_by.to_owned(),
                created_at: chrono::Utc::now(),
            })
            .await
            .map_err(|e| e.to_string())
    }

    fn open(&self, followup: &PendingFollowup) -> Result<SealedInteraction, String> {
        let plain = self
            .secrets
            .open(&followup.sealed, SECRET_PURPOSE)
            .map_err(|e| e.to_string())?;
        serde_json::from_slice(&plain).map_err(|e| e.to_string())
    }
}

/// Interaction types and callback types (Discord's numbers).
const PING: u64 = 1;
const APPLICATION_COMMAND: u64 = 2;
const PONG: u8 = 1;
const CHANNEL_MESSAGE: u8 = 4;
const DEFERRED_CHANNEL_MESSAGE: u8 = 5;
/// Message flag: only the user who ran the command sees it.
const EPHEMERAL: u64 = 1 << 6;

/// What the interactions endpoint needs.
#[derive(Debug, Clone)]
pub struct DiscordInteractions {
    /// The application's public key; `None`: the endpoint answers 404 `discord_not_configured`.
    pub public_key: Option<VerifyingKey>,
    /// Slash command name → what it runs.
    pub commands: BTreeMap<String, DiscordCommand>,
    /// Signed timestamps further than this from now are refused (replays).
    pub max_clock_skew: Duration,
    /// How long a follow-up waits for its task. Discord's interaction tokens live 15 minutes.
    pub followup_timeout: Duration,
}

impl Default for DiscordInteractions {
    fn default() -> Self {
        DiscordInteractions {
            public_key: None,
            commands: BTreeMap::new(),
            max_clock_skew: Duration::from_secs(300),
            followup_timeout: Duration::from_secs(14 * 60),
        }
    }
}

/// One slash command: `[discord.commands.<name>] task = "llm.generate"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscordCommand {
    /// The task type the command creates.
    pub task: String,
    /// Adds `channel_id`, `user_id` (and `guild_id` in a server) to the payload; off for task
    /// types whose payload takes only the options.
    #[serde(default = "yes")]
    pub include_ids: bool,
}

fn yes() -> bool {
    true
}

/// Reads the application's public key as Discord shows it (64 hex digits).
pub fn parse_public_key(hex: &str) -> Result<VerifyingKey, String> {
    let bytes: [u8; 32] = decode_hex(hex.trim())
        .and_then(|b| b.try_into().ok())
        .ok_or("discord_public_key: expected 64 hex digits")?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| format!("discord_public_key: {e}"))
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The parts of an interaction this endpoint reads (for the OpenAPI document).
#[derive(Debug, Deserialize, ToSchema)]
pub struct Interaction {
    /// 1 PING, 2 APPLICATION_COMMAND.
    #[serde(rename = "type")]
    pub kind: u64,
    #[serde(default)]
    pub application_id: Option<String>,
    #[serde(default)]
    pub token: Option<String>,
    /// The command: `name` and `options`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub data: Option<Value>,
}

/// An interaction response: 1 PONG, 4 a message, 5 deferred.
#[derive(Debug, Serialize, ToSchema)]
pub struct InteractionResponse {
    #[serde(rename = "type")]
    pub kind: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub data: Option<Value>,
}

impl InteractionResponse {
    fn message(content: String) -> Json<InteractionResponse> {
        Json(InteractionResponse {
            kind: CHANNEL_MESSAGE,
            data: Some(
                json!({"content": content, "flags": EPHEMERAL, "allowed_mentions": {"parse": []}}),
            ),
        })
    }
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "invalid_signature", message)
}

/// Checks Discord's signature: Ed25519 over the timestamp followed by the raw body.
fn verify(
    key: &VerifyingKey,
    headers: &HeaderMap,
    body: &[u8],
    max_skew: Duration,
) -> Result<(), ApiError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(signature), Some(timestamp)) = (
        header("x-signature-ed25519"),
        header("x-signature-timestamp"),
    ) else {
        return Err(unauthorized(
            "X-Signature-Ed25519 and X-Signature-Timestamp are required",
        ));
    };
    let signature: [u8; 64] = decode_hex(signature)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| unauthorized("X-Signature-Ed25519 is not 128 hex digits"))?;
    let signed_at: i64 = timestamp
        .parse()
        .map_err(|_| unauthorized("X-Signature-Timestamp is not a Unix time"))?;
    let skew = (chrono::Utc::now().timestamp() - signed_at).unsigned_abs();
    if skew > max_skew.as_secs() {
        return Err(unauthorized("X-Signature-Timestamp is too far from now"));
    }
    let mut message = Vec::with_capacity(timestamp.len() + body.len());
    message.extend_from_slice(timestamp.as_bytes());
    message.extend_from_slice(body);
    key.verify_strict(&message, &Signature::from_bytes(&signature))
        .map_err(|_| unauthorized("the signature does not match"))
}

/// Discord's interactions endpoint (signed by Discord, no credentials of ours).
#[utoipa::path(post, path = "/v1/discord/interactions", tag = "integrations",
    request_body = Interaction,
    params(
        ("X-Signature-Ed25519" = String, Header, description = "hex Ed25519 signature of timestamp + body"),
        ("X-Signature-Timestamp" = String, Header, description = "Unix time the request was signed"),
    ),
    responses(
        (status = 200, description = "PONG (1), a message (4: unknown command, refused payload) or a deferred reply (5)", body = InteractionResponse),
        (status = 401, description = "`invalid_signature`: missing, malformed, stale or wrong signature", body = ErrorBody),
        (status = 404, description = "`discord_not_configured`: no `discord_public_key`", body = ErrorBody),
    ))]
pub async fn interactions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<InteractionResponse>, ApiError> {
    let config = &state.config.discord;
    let key = config.public_key.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "discord_not_configured",
            "no discord_public_key is configured",
        )
    })?;
    verify(key, &headers, &body, config.max_clock_skew)?;
    let raw: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the interaction is not JSON: {e}"),
        )
    })?;
    let interaction = Interaction::deserialize(&raw).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("not an interaction: {e}"),
        )
    })?;
    match interaction.kind {
        PING => Ok(Json(InteractionResponse {
            kind: PONG,
            data: None,
        })),
        APPLICATION_COMMAND => command(&state, &raw, interaction).await,
        other => Ok(InteractionResponse::message(format!(
            "This hub does not handle interactions of type {other}."
        ))),
    }
}

/// A slash command: creates its task and defers, or says why not.
async fn command(
    state: &AppState,
    raw: &Value,
    interaction: Interaction,
) -> Result<Json<InteractionResponse>, ApiError> {
    let data = interaction.data.unwrap_or(Value::Null);
    let name = data["name"].as_str().unwrap_or_default();
    let Some(command) = state.config.discord.commands.get(name) else {
        return Ok(InteractionResponse::message(format!(
            "Unknown command `/{name}`: this hub has no task for it."
        )));
    };
    let user_id = raw["member"]["user"]["id"]
        .as_str()
        .or_else(|| raw["user"]["id"].as_str())
        .unwrap_or("unknown");
    let mut payload = options(&data["options"]);
    if command.include_ids {
        let channel = raw["channel_id"]
            .as_str()
            .or_else(|| raw["channel"]["id"].as_str());
        payload.insert("channel_id".into(), json!(channel));
        payload.insert("user_id".into(), json!(user_id));
        if let Some(guild) = raw["guild_id"].as_str() {
            payload.insert("guild_id".into(), json!(guild));
        }
    }
    let created_by = format!("discord:{user_id}");
    let correlation = request_id::current();
    let create = CreateTask {
        task_type: command.task.clone(),
        payload: Some(Value::Object(payload)),
        ..CreateTask::default()
    };
    let creator = Creator::Internal(&created_by);
    let task = match state
        .tasks
        .prepare_one(creator, create, correlation.as_deref())
        .await
    {
        Ok(task) => task,
        Err(e) => {
            let e = ApiError::from(e);
            return Ok(InteractionResponse::message(format!(
                "`/{name}` was refused: {}",
                e.message
            )));
        }
    };
    let id = task.id;
    let live = match state.events.subscribe(&format!("task:{id}")).await {
        Ok(live) => Some(live),
        Err(e) => {
            tracing::warn!(error = %e, "discord follow-up waits without events");
            None
        }
    };
    let reply_to = interaction.application_id.zip(interaction.token);
    // Stored before the task, so no task can finish without its follow-up on record.
    if let (Some(followups), Some((application, token))) = (&state.followups, &reply_to)
        && let Err(e) = followups.save(id, application, token, &created_by).await
    {
        tracing::warn!(task_id = %id, error = %e, "discord follow-up not stored: only this node can send it");
    }
    if let Err(e) = state.tasks.insert(creator, vec![task]).await {
        if let Some(followups) = &state.followups {
            let _ = followups.store.delete_followup(id).await;
        }
        return Err(e.into());
    }
    tracing::info!(command = name, task_id = %id, %created_by, "discord command queued");
    match reply_to {
        Some((application, token)) => {
            let state = state.clone();
            tokio::spawn(async move {
                followup(&state, id, live, application, token, created_by).await;
            });
        }
        None => {
            tracing::warn!(task_id = %id, "interaction without application_id or token: no follow-up")
        }
    }
    Ok(Json(InteractionResponse {
        kind: DEFERRED_CHANNEL_MESSAGE,
        data: None,
    }))
}

/// The command's options as an object: `name → value`, a subcommand's own options nested under
/// its name.
fn options(list: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    for option in list.as_array().into_iter().flatten() {
        let Some(name) = option["name"].as_str() else {
            continue;
        };
        let value = match option.get("value") {
            Some(value) => value.clone(),
            None => Value::Object(options(&option["options"])),
        };
        out.insert(name.to_owned(), value);
    }
    out
}

/// Waits for the task, then queues the follow-up message. A server that stops first sends none.
async fn followup(
    state: &AppState,
    id: Uuid,
    live: Option<Subscription>,
    application_id: String,
    token: String,
    created_by: String,
) {
    let waited = tokio::select! {
        waited = tokio::time::timeout(state.config.discord.followup_timeout, finished(state, id, live)) => waited,
        _ = state.shutdown.cancelled() => return,
    };
    let content = match waited {
        Ok(Ok(task)) => outcome_text(&task),
        Ok(Err(e)) => {
            tracing::warn!(task_id = %id, error = %e.message, "discord follow-up: cannot read the task");
            return;
        }
        Err(_) => still_running(id),
    };
    if let Err(e) = queue_followup(state, id, &application_id, &token, content, &created_by).await {
        tracing::warn!(task_id = %id, error = %e, "discord follow-up not queued");
    }
}

fn still_running(id: Uuid) -> String {
    format!("Task `{id}` is still running; see the hub for its result.")
}

/// Creates the task that sends the follow-up of task `id`, once (idempotency key
/// `discord-followup:{id}`), then forgets the stored follow-up.
async fn queue_followup(
    state: &AppState,
    id: Uuid,
    application_id: &str,
    token: &str,
    content: String,
    created_by: &str,
) -> Result<(), String> {
    let create = CreateTask {
        task_type: FOLLOWUP_TASK_TYPE.to_owned(),
        payload: Some(json!({
            "webhook_id": application_id,
            "webhook_token": token,
            "content": content,
            "allowed_mentions": {"parse": []},
        })),
        correlation_id: Some(id.to_string()),
        idempotency_key: Some(format!("discord-followup:{id}")),
        ..CreateTask::default()
    };
    state
        .tasks
        .create(Creator::Internal(created_by), create, None)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(followups) = &state.followups {
        followups
            .store
            .delete_followup(id)
            .await
            .map_err(|e| format!("sent, but not forgotten (harmless): {e}"))?;
    }
    Ok(())
}

/// Sends, every `every` until the server stops, the stored follow-ups whose task is final (or
/// that waited `followup_timeout`: "still running"), whichever node took the interaction. Drops
/// those older than an interaction token lives.
pub async fn sweep_followups(state: AppState, every: Duration) {
    let Some(followups) = state.followups.clone() else {
        return;
    };
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if let Err(e) = sweep_once(&state, &followups).await {
            tracing::warn!(error = %e, "discord follow-ups: sweep failed; retrying");
        }
    }
}

async fn sweep_once(state: &AppState, followups: &Followups) -> Result<(), String> {
    let now = chrono::Utc::now();
    let span = |d: Duration| chrono::TimeDelta::from_std(d).unwrap_or(chrono::TimeDelta::MAX);
    let (lifetime, grace) = (span(TOKEN_LIFETIME), span(TASK_GRACE));
    let wait = span(state.config.discord.followup_timeout).min(lifetime);
    let due = followups
        .store
        .due_followups(now - wait, SWEEP_BATCH)
        .await
        .map_err(|e| e.to_string())?;
    for followup in due {
        let id = followup.task_id;
        let age = now - followup.created_at;
        if age > lifetime {
            tracing::warn!(task_id = %id, "discord follow-up expired unsent: its token is no longer valid");
            let _ = followups.store.delete_followup(id).await;
            continue;
        }
        let content = match state.orchestrator.store().get(id).await {
            Ok(Some(task)) if task.status.is_final() => outcome_text(&task),
            Ok(Some(_)) => still_running(id),
            Ok(None) if age < grace => continue,
            Ok(None) => {
                let _ = followups.store.delete_followup(id).await;
                continue;
            }
            Err(e) => return Err(e.to_string()),
        };
        let interaction = match followups.open(&followup) {
            Ok(interaction) => interaction,
            Err(e) => {
                tracing::warn!(task_id = %id, error = %e, "discord follow-up cannot be opened; dropped");
                let _ = followups.store.delete_followup(id).await;
                continue;
            }
        };
        queue_followup(
            state,
            id,
            &interaction.application_id,
            &interaction.token,
            content,
            &followup.created_by,
        )
        .await?;
    }
    Ok(())
}

/// The task once it is final: read on each of its events and every [`POLL`].
async fn finished(
    state: &AppState,
    id: Uuid,
    mut live: Option<Subscription>,
) -> Result<Task, ApiError> {
    loop {
        if let Some(task) = state.orchestrator.store().get(id).await?
            && task.status.is_final()
        {
            return Ok(task);
        }
        match live.as_mut() {
            Some(events) => {
                tokio::select! {
                    received = events.recv() => {
                        if let Err(RecvError::Closed) = received {
                            live = None;
                        }
                    }
                    _ = tokio::time::sleep(POLL) => {}
                }
            }
            None => tokio::time::sleep(POLL).await,
        }
    }
}

/// The follow-up's text: the result's `text` or `response`, else its JSON; or the error.
fn outcome_text(task: &Task) -> String {
    let text = match task.status {
        TaskStatus::Succeeded => {
            let result = task.result.as_ref().unwrap_or(&Value::Null);
            match ["text", "response"]
                .iter()
                .find_map(|field| result.get(field).and_then(Value::as_str))
            {
                Some(text) => text.to_owned(),
                None if result.is_null() => "Done.".to_owned(),
                None => format!("```json\n{result}\n```"),
            }
        }
        status => {
            let reason = task
                .error
                .as_ref()
                .map(|e| e.message.clone())
                .unwrap_or_else(|| "no error recorded".to_owned());
            format!("Task `{}` ended {status}: {reason}", task.id)
        }
    };
    truncate(&text, MAX_CONTENT_CHARS)
}

fn truncate(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max_chars - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_options_and_subcommands() {
        let list = json!([
            {"name": "prompt", "type": 3, "value": "hi"},
            {"name": "deploy", "type": 1, "options": [{"name": "repo", "type": 3, "value": "o/a"}]},
        ]);
        assert_eq!(
            Value::Object(options(&list)),
            json!({"prompt": "hi", "deploy": {"repo": "o/a"}})
        );
        assert!(options(&Value::Null).is_empty());
    }

    #[test]
    fn parses_hex_keys_and_refuses_others() {
        assert!(parse_public_key("zz").is_err());
        assert!(parse_public_key(&"ab".repeat(31)).is_err());
        assert_eq!(decode_hex("0aFF"), Some(vec![10, 255]));
        assert_eq!(decode_hex("0"), None);
        assert_eq!(decode_hex("é0"), None);
    }

    #[test]
    fn long_text_is_cut_to_discords_limit() {
        let long = "x".repeat(3000);
        let cut = truncate(&long, MAX_CONTENT_CHARS);
        assert_eq!(cut.chars().count(), MAX_CONTENT_CHARS);
        assert!(cut.ends_with('…'));
    }
}
