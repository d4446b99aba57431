//! Message building: turns a task's payload into the one Discord call it makes, with every
//! check on it, so a bad payload is refused at creation and never reaches Discord.

use super::{EDIT_MESSAGE, MAX_CONTENT_CHARS, MAX_EMBEDS, SEND_MESSAGE, WEBHOOK_EXECUTE};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Map, Value, json};

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

/// Which task type a [`DiscordTask`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Send,
    Edit,
    Webhook,
}

impl Kind {
    pub(super) fn task_type(self) -> &'static str {
        match self {
            Kind::Send => SEND_MESSAGE,
            Kind::Edit => EDIT_MESSAGE,
            Kind::Webhook => WEBHOOK_EXECUTE,
        }
    }

    pub(super) fn needs_bot_token(self) -> bool {
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

pub(super) fn build(kind: Kind, payload: &Value) -> Result<DiscordRequest, String> {
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

#[cfg(test)]
mod tests {
    use super::request_for;
    use crate::discord::{EDIT_MESSAGE, SEND_MESSAGE, WEBHOOK_EXECUTE};
    use reqwest::Method;
    use serde_json::json;

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
}
