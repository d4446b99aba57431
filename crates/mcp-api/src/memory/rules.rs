//! What a valid conversation and message are: the limits, the checks, the errors they answer
//! with, and building a conversation or a message from a request. Kept in one place so the
//! rules can move into core's memory service as a whole.

use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::AppState;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use mcp_core::StoreError;
use mcp_core::memory::{
    Conversation, InvalidInput, Message, MessageRole, check_metadata, check_name, check_text,
    estimate_tokens,
};
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};
use utoipa::ToSchema;
use uuid::Uuid;
/// Most participants of one conversation.
pub(super) const MAX_PARTICIPANTS: usize = 100;
/// Longest title, in bytes.
pub(super) const MAX_TITLE_BYTES: usize = 1_024;
/// Messages per store call when importing.
pub(super) const IMPORT_CHUNK: usize = 1_000;

// ---------------------------------------------------------------------------------------------
// Errors and small helpers

pub(super) fn conversation_not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "conversation_not_found",
        format!("no conversation with id `{id}`"),
    )
}

pub(super) fn message_not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "message_not_found",
        format!("no message with id `{id}` in this conversation"),
    )
}

pub(super) fn invalid(code: &'static str, e: InvalidInput) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, e.to_string())
        .with_details(json!({"field": e.field}))
}

pub(super) fn conflict(code: &'static str, e: StoreError) -> ApiError {
    match e {
        StoreError::Conflict(what) => {
            ApiError::new(StatusCode::CONFLICT, code, format!("{what} exists already"))
        }
        other => other.into(),
    }
}

pub(super) fn invalid_cursor() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_cursor",
        "cursor must be a next_cursor returned by this endpoint",
    )
}

pub(super) fn conversation_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| conversation_not_found(id))
}

/// `Some(None)` for an explicit `null`, `None` for an absent field.
pub(super) fn nullable<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateConversation {
    /// A UUID of the caller's choosing (default: a new UUIDv7).
    pub id: Option<Uuid>,
    pub title: Option<String>,
    #[serde(default)]
    pub participants: Vec<String>,
    /// A JSON object (default `{}`).
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

pub(super) fn check_title(title: &str) -> Result<(), InvalidInput> {
    check_text("title", title)?;
    if title.len() > MAX_TITLE_BYTES {
        return Err(InvalidInput::new(
            "title",
            format!("must be at most {MAX_TITLE_BYTES} bytes"),
        ));
    }
    Ok(())
}

pub(super) fn check_participants(participants: &[String]) -> Result<(), InvalidInput> {
    if participants.len() > MAX_PARTICIPANTS {
        return Err(InvalidInput::new(
            "participants",
            format!("at most {MAX_PARTICIPANTS} participants"),
        ));
    }
    participants
        .iter()
        .enumerate()
        .try_for_each(|(i, p)| check_name(&format!("participants[{i}]"), p))
}

impl CreateConversation {
    pub(super) fn into_conversation(self, principal: &Principal) -> Result<Conversation, ApiError> {
        let check = || -> Result<(), InvalidInput> {
            if let Some(title) = &self.title {
                check_title(title)?;
            }
            check_participants(&self.participants)?;
            if let Some(metadata) = &self.metadata {
                check_metadata("metadata", metadata)?;
            }
            Ok(())
        };
        check().map_err(|e| invalid("invalid_conversation", e))?;
        let now = Utc::now();
        Ok(Conversation {
            id: self.id.unwrap_or_else(Uuid::now_v7),
            title: self.title,
            participants: self.participants,
            metadata: self.metadata.unwrap_or_else(|| json!({})),
            archived: false,
            summary: None,
            created_by: Some(principal.subject.clone()),
            created_at: now,
            updated_at: now,
        })
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMessage {
    /// A UUID of the caller's choosing, e.g. to make retries safe (default: a new UUIDv7).
    pub id: Option<Uuid>,
    /// Who wrote it (default: the caller's subject).
    pub author: Option<String>,
    /// Default `user`.
    pub role: Option<MessageRole>,
    pub content: String,
    /// A JSON object (default `{}`).
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    #[serde(default)]
    pub pinned: bool,
    /// When it was written, if not now (bridged or imported history).
    pub created_at: Option<DateTime<Utc>>,
}

/// Checks a new message against the limits and builds it.
pub(super) fn build_message(
    state: &AppState,
    principal: &Principal,
    conversation_id: Uuid,
    new: NewMessage,
    index: Option<usize>,
    now: DateTime<Utc>,
) -> Result<Message, ApiError> {
    let field = |name: &str| match index {
        Some(i) => format!("messages[{i}].{name}"),
        None => name.to_owned(),
    };
    let max = state.config.memory.max_message_bytes;
    if new.content.len() > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "message_too_large",
            format!(
                "{} is {} bytes; a message holds at most {max}",
                field("content"),
                new.content.len()
            ),
        )
        .with_details(json!({"field": field("content"), "limit": max})));
    }
    let author = new.author.unwrap_or_else(|| principal.subject.clone());
    let check = || -> Result<(), InvalidInput> {
        check_text(&field("content"), &new.content)?;
        check_name(&field("author"), &author)?;
        if let Some(metadata) = &new.metadata {
            check_metadata(&field("metadata"), metadata)?;
        }
        Ok(())
    };
    check().map_err(|e| invalid("invalid_message", e))?;
    Ok(Message {
        id: new.id.unwrap_or_else(Uuid::now_v7),
        conversation_id,
        author,
        role: new.role.unwrap_or(MessageRole::User),
        tokens: estimate_tokens(&new.content),
        content: new.content,
        metadata: new.metadata.unwrap_or_else(|| json!({})),
        pinned: new.pinned,
        created_at: new.created_at.unwrap_or(now),
    })
}

pub(super) fn body_error(e: serde_json::Error) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
        e.to_string(),
    )
}
