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

pub(crate) mod config;
mod followups;
pub(crate) mod pending;
mod signature;

pub use config::{DiscordCommand, DiscordInteractions, VerifyingKey, parse_public_key};
pub use followups::{FOLLOWUP_TASK_TYPE, sweep_followups};
pub use pending::Followups;

use crate::access::Access::Public;
use crate::endpoint::{Endpoint, endpoint};
use crate::error::{ApiError, ErrorBody};
use crate::request_id;
use crate::state::AppState;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use mcp_core::services::Creator;
use mcp_core::task::CreateTask;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::ToSchema;
use utoipa_axum::routes;

/// The routes of this module and who may call them.
pub(crate) fn endpoints() -> Vec<Endpoint<AppState>> {
    vec![
        // Authenticates itself: Discord signs every request with Ed25519.
        endpoint(Public, routes!(interactions)),
    ]
}

/// Interaction types and callback types (Discord's numbers).
const PING: u64 = 1;
const APPLICATION_COMMAND: u64 = 2;
const PONG: u8 = 1;
const CHANNEL_MESSAGE: u8 = 4;
const DEFERRED_CHANNEL_MESSAGE: u8 = 5;
/// Message flag: only the user who ran the command sees it.
const EPHEMERAL: u64 = 1 << 6;

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
    signature::verify(key, &headers, &body, config.max_clock_skew)?;
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
                followups::followup(&state, id, live, application, token, created_by).await;
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
}
