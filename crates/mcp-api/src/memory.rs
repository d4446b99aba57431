//! Memory routes: conversations (CRUD, export and import as JSON Lines), their messages (one or
//! a batch, pages both ways, pin and edit, delete), ranked full-text search, context windows and
//! summaries. Every change is published on the conversation's channel, `conversation:{id}`.

use crate::access::Access::Requires;
use crate::auth::Principal;
use crate::endpoint::{Endpoint, endpoint};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiQuery, page_limit, parse_cursor};
use crate::request_id;
use crate::state::AppState;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use mcp_core::StoreError;
use mcp_core::memory::{
    Context, Conversation, ConversationFilter, ConversationPatch, InvalidInput, MAX_NAME_BYTES,
    Message, MessagePage, MessagePatch, MessageRole, SearchHit, SearchQuery, SearchRequest,
    Summary, build_context, check_metadata, check_name, check_text, estimate_tokens,
};
use mcp_core::principal::Permission;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;
use uuid::Uuid;

/// The routes of this module and who may call them.
pub(crate) fn endpoints() -> Vec<Endpoint<AppState>> {
    vec![
        endpoint(
            Requires(Permission::MemoryWrite),
            routes!(create_conversation),
        ),
        endpoint(
            Requires(Permission::MemoryRead),
            routes!(list_conversations),
        ),
        endpoint(Requires(Permission::MemoryManage), routes!(import))
            .body_limit(|state| state.config.memory.max_import_bytes),
        endpoint(Requires(Permission::MemoryRead), routes!(get_conversation)),
        endpoint(
            Requires(Permission::MemoryWrite),
            routes!(update_conversation),
        ),
        endpoint(
            Requires(Permission::MemoryManage),
            routes!(delete_conversation),
        ),
        endpoint(Requires(Permission::MemoryWrite), routes!(post_messages)),
        endpoint(Requires(Permission::MemoryRead), routes!(list_messages)),
        endpoint(Requires(Permission::MemoryWrite), routes!(update_message)),
        endpoint(Requires(Permission::MemoryWrite), routes!(delete_message)),
        endpoint(Requires(Permission::MemoryRead), routes!(context)),
        endpoint(Requires(Permission::MemoryWrite), routes!(set_summary)),
        endpoint(Requires(Permission::MemoryRead), routes!(export)),
        endpoint(Requires(Permission::MemoryRead), routes!(search)),
    ]
}

/// Limits of the memory routes.
#[derive(Debug, Clone)]
pub struct MemoryLimits {
    /// Largest message `content`, in bytes (413 `message_too_large` beyond).
    pub max_message_bytes: usize,
    /// Budget used by `/context` when the request names none.
    pub default_context_tokens: u32,
    /// Largest `max_tokens` a context request may ask for.
    pub max_context_tokens: u32,
    /// Largest JSON Lines body `POST /v1/conversations/import` accepts.
    pub max_import_bytes: usize,
    /// Deepest search page: `offset + limit` may not exceed it (ranking every match again for
    /// each deep page is costly; narrow the query instead).
    pub max_search_depth: u32,
}

impl Default for MemoryLimits {
    fn default() -> Self {
        MemoryLimits {
            max_message_bytes: 64 * 1024,
            default_context_tokens: 4_096,
            max_context_tokens: 1_000_000,
            max_import_bytes: 64 * 1024 * 1024,
            // The stores rank at most this many matches of one query.
            max_search_depth: mcp_core::memory::RANKED_MATCHES,
        }
    }
}

/// Most participants of one conversation.
const MAX_PARTICIPANTS: usize = 100;
/// Longest title, in bytes.
const MAX_TITLE_BYTES: usize = 1_024;
/// Messages per store call when importing.
const IMPORT_CHUNK: usize = 1_000;

// ---------------------------------------------------------------------------------------------
// Errors and small helpers

fn conversation_not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "conversation_not_found",
        format!("no conversation with id `{id}`"),
    )
}

fn message_not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "message_not_found",
        format!("no message with id `{id}` in this conversation"),
    )
}

fn invalid(code: &'static str, e: InvalidInput) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, e.to_string())
        .with_details(json!({"field": e.field}))
}

fn conflict(code: &'static str, e: StoreError) -> ApiError {
    match e {
        StoreError::Conflict(what) => {
            ApiError::new(StatusCode::CONFLICT, code, format!("{what} exists already"))
        }
        other => other.into(),
    }
}

fn invalid_cursor() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_cursor",
        "cursor must be a next_cursor returned by this endpoint",
    )
}

fn conversation_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| conversation_not_found(id))
}

async fn existing(state: &AppState, id: &str) -> Result<Conversation, ApiError> {
    state
        .memory
        .conversation(conversation_id(id)?)
        .await?
        .ok_or_else(|| conversation_not_found(id))
}

/// The emit point of the memory service: every change is an event on `conversation:{id}` and on
/// `memory` (every conversation's changes: outgoing webhooks follow it). Publishing is best
/// effort: the change is stored already, and a subscriber that missed the event resyncs through
/// REST.
async fn emit(state: &AppState, conversation_id: Uuid, event_type: &str, data: Value) {
    let event = std::sync::Arc::new(mcp_core::events::Event::new(
        event_type,
        data,
        request_id::current(),
    ));
    for channel in [
        format!("conversation:{conversation_id}"),
        "memory".to_owned(),
    ] {
        if let Err(e) = state.events.publish(&channel, event.clone()).await {
            tracing::warn!(error = %e, %channel, event = event_type, "event not published");
        }
    }
}

/// `Some(None)` for an explicit `null`, `None` for an absent field.
fn nullable<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

// ---------------------------------------------------------------------------------------------
// Conversations

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

fn check_title(title: &str) -> Result<(), InvalidInput> {
    check_text("title", title)?;
    if title.len() > MAX_TITLE_BYTES {
        return Err(InvalidInput::new(
            "title",
            format!("must be at most {MAX_TITLE_BYTES} bytes"),
        ));
    }
    Ok(())
}

fn check_participants(participants: &[String]) -> Result<(), InvalidInput> {
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
    fn into_conversation(self, principal: &Principal) -> Result<Conversation, ApiError> {
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

/// Create a conversation.
#[utoipa::path(post, path = "/v1/conversations", tag = "memory", request_body = CreateConversation,
    responses(
        (status = 201, description = "created", body = Conversation),
        (status = 409, description = "the id is taken (`conversation_exists`)", body = ErrorBody),
        (status = 422, description = "invalid title, participants or metadata", body = ErrorBody),
    ))]
pub async fn create_conversation(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<CreateConversation>,
) -> Result<Response, ApiError> {
    let conversation = request.into_conversation(&principal)?;
    state
        .memory
        .create_conversation(&conversation)
        .await
        .map_err(|e| conflict("conversation_exists", e))?;
    emit(
        &state,
        conversation.id,
        "memory.conversation.created",
        json!(conversation),
    )
    .await;
    let mut response = (StatusCode::CREATED, Json(&conversation)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/conversations/{}", conversation.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ConversationQuery {
    /// Only conversations with this participant.
    pub participant: Option<String>,
    /// Only archived (`true`) or live (`false`) conversations.
    pub archived: Option<bool>,
    /// Page size (default 50, at most 500).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationList {
    pub conversations: Vec<Conversation>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// List conversations, newest first, with filters and cursor pagination.
#[utoipa::path(get, path = "/v1/conversations", tag = "memory", params(ConversationQuery),
    responses(
        (status = 200, description = "a page of conversations", body = ConversationList),
        (status = 400, description = "bad filter, limit or cursor", body = ErrorBody),
    ))]
pub async fn list_conversations(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ConversationQuery>,
) -> Result<Json<ConversationList>, ApiError> {
    let limit = page_limit(&state.config, query.limit)?;
    let mut conversations = state
        .memory
        .list_conversations(&ConversationFilter {
            participant: query.participant,
            archived: query.archived,
            before: parse_cursor(query.cursor.as_deref())?,
            limit: limit + 1,
        })
        .await?;
    let next_cursor = if conversations.len() > limit as usize {
        conversations.truncate(limit as usize);
        conversations.last().map(|c| c.id.to_string())
    } else {
        None
    };
    Ok(Json(ConversationList {
        conversations,
        next_cursor,
    }))
}

/// Read one conversation.
#[utoipa::path(get, path = "/v1/conversations/{id}", tag = "memory",
    params(("id" = String, Path, description = "conversation id")),
    responses(
        (status = 200, description = "the conversation", body = Conversation),
        (status = 404, description = "`conversation_not_found`", body = ErrorBody),
    ))]
pub async fn get_conversation(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Conversation>, ApiError> {
    existing(&state, &id).await.map(Json)
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateConversation {
    /// A new title; `null` clears it.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub title: Option<Option<String>>,
    pub participants: Option<Vec<String>>,
    /// Replaces the metadata object.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// Archive or bring back.
    pub archived: Option<bool>,
}

/// Change a conversation's title, participants, metadata or archived flag.
#[utoipa::path(patch, path = "/v1/conversations/{id}", tag = "memory",
    params(("id" = String, Path, description = "conversation id")),
    request_body = UpdateConversation,
    responses(
        (status = 200, description = "the updated conversation", body = Conversation),
        (status = 404, description = "`conversation_not_found`", body = ErrorBody),
        (status = 422, description = "invalid fields", body = ErrorBody),
    ))]
pub async fn update_conversation(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<UpdateConversation>,
) -> Result<Json<Conversation>, ApiError> {
    let conversation_id = conversation_id(&id)?;
    let check = || -> Result<(), InvalidInput> {
        if let Some(Some(title)) = &request.title {
            check_title(title)?;
        }
        if let Some(participants) = &request.participants {
            check_participants(participants)?;
        }
        if let Some(metadata) = &request.metadata {
            check_metadata("metadata", metadata)?;
        }
        Ok(())
    };
    check().map_err(|e| invalid("invalid_conversation", e))?;
    let patch = ConversationPatch {
        title: request.title,
        participants: request.participants,
        metadata: request.metadata,
        archived: request.archived,
    };
    let conversation = state
        .memory
        .update_conversation(conversation_id, &patch, Utc::now())
        .await?
        .ok_or_else(|| conversation_not_found(&id))?;
    emit(
        &state,
        conversation.id,
        "memory.conversation.updated",
        json!(conversation),
    )
    .await;
    Ok(Json(conversation))
}

/// Delete a conversation and all its messages.
#[utoipa::path(delete, path = "/v1/conversations/{id}", tag = "memory",
    params(("id" = String, Path, description = "conversation id")),
    responses(
        (status = 204, description = "deleted"),
        (status = 404, description = "`conversation_not_found`", body = ErrorBody),
    ))]
pub async fn delete_conversation(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let conversation_id = conversation_id(&id)?;
    if !state.memory.delete_conversation(conversation_id).await? {
        return Err(conversation_not_found(&id));
    }
    emit(
        &state,
        conversation_id,
        "memory.conversation.deleted",
        json!({"id": conversation_id}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------------
// Messages

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

/// One message, or `{"messages": […]}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageBatch {
    pub messages: Vec<NewMessage>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MessageList {
    /// Oldest first.
    pub messages: Vec<Message>,
    /// Continues in the direction of travel: pass it as `before` (pages going back, the
    /// default) or as `after` (pages going forward). `null` when there is no more.
    pub next_cursor: Option<String>,
}

/// Checks a new message against the limits and builds it.
fn build_message(
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

fn body_error(e: serde_json::Error) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
        e.to_string(),
    )
}

/// Add one message (`{"content": …}`) or a batch (`{"messages": […]}`, all or none) to a
/// conversation. New activity brings an archived conversation back.
#[utoipa::path(post, path = "/v1/conversations/{id}/messages", tag = "memory",
    params(("id" = String, Path, description = "conversation id")),
    request_body(content = NewMessage, description = "one message, or `{\"messages\": […]}` (a `MessageBatch`)"),
    responses(
        (status = 201, description = "the message, or `{\"messages\": […]}` for a batch", body = Message),
        (status = 404, description = "`conversation_not_found`", body = ErrorBody),
        (status = 409, description = "a message id is taken (`message_exists`)", body = ErrorBody),
        (status = 413, description = "`message_too_large` or `payload_too_large`", body = ErrorBody),
        (status = 422, description = "invalid message or batch size", body = ErrorBody),
    ))]
pub async fn post_messages(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let conversation_id = conversation_id(&id)?;
    let batch = body.get("messages").is_some();
    let now = Utc::now();
    let messages = if batch {
        let batch = MessageBatch::deserialize(body).map_err(body_error)?;
        let max = state.config.max_batch;
        if batch.messages.is_empty() || batch.messages.len() > max {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_batch_size",
                format!(
                    "a batch holds between 1 and {max} messages; this one has {}",
                    batch.messages.len()
                ),
            ));
        }
        batch
            .messages
            .into_iter()
            .enumerate()
            .map(|(i, m)| build_message(&state, &principal, conversation_id, m, Some(i), now))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        let one = NewMessage::deserialize(body).map_err(body_error)?;
        vec![build_message(
            &state,
            &principal,
            conversation_id,
            one,
            None,
            now,
        )?]
    };
    let latest = messages.iter().map(|m| m.created_at).max().unwrap_or(now);
    let stored = state
        .memory
        .append_messages(conversation_id, &messages, latest.max(now))
        .await
        .map_err(|e| conflict("message_exists", e))?;
    if !stored {
        return Err(conversation_not_found(&id));
    }
    for message in &messages {
        emit(
            &state,
            conversation_id,
            "memory.message.created",
            json!(message),
        )
        .await;
    }
    let body = if batch {
        json!({ "messages": messages })
    } else {
        json!(messages[0])
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct MessageQuery {
    /// The page just before this message id (going back in time).
    pub before: Option<String>,
    /// The page just after this message id (going forward in time).
    pub after: Option<String>,
    /// Page size (default 50, at most 500).
    pub limit: Option<u32>,
}

/// A page of a conversation's messages, oldest first: the newest page by default, then pages
/// going back with `before`, or forward with `after`.
#[utoipa::path(get, path = "/v1/conversations/{id}/messages", tag = "memory",
    params(("id" = String, Path, description = "conversation id"), MessageQuery),
    responses(
        (status = 200, description = "a page of messages", body = MessageList),
        (status = 400, description = "both cursors, or a bad cursor or limit", body = ErrorBody),
        (status = 404, description = "`conversation_not_found`", body = ErrorBody),
    ))]
pub async fn list_messages(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<MessageQuery>,
) -> Result<Json<MessageList>, ApiError> {
    let limit = page_limit(&state.config, query.limit)?;
    let conversation = existing(&state, &id).await?;
    let page = match (
        parse_cursor(query.before.as_deref())?,
        parse_cursor(query.after.as_deref())?,
    ) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid_query(
                "give `before` or `after`, not both",
            ));
        }
        (Some(before), None) => MessagePage::Before(before),
        (None, Some(after)) => MessagePage::After(after),
        (None, None) => MessagePage::Newest,
    };
    if let MessagePage::Before(cursor) | MessagePage::After(cursor) = page
        && state
            .memory
            .message(conversation.id, cursor)
            .await?
            .is_none()
    {
        return Err(invalid_cursor());
    }
    let mut messages = state
        .memory
        .list_messages(conversation.id, page, limit + 1)
        .await?;
    let next_cursor = if messages.len() > limit as usize {
        messages.truncate(limit as usize);
        messages.last().map(|m| m.id.to_string())
    } else {
        None
    };
    if !matches!(page, MessagePage::After(_)) {
        messages.reverse();
    }
    Ok(Json(MessageList {
        messages,
        next_cursor,
    }))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMessage {
    /// New text (re-estimates `tokens`).
    pub content: Option<String>,
    /// Replaces the metadata object.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// Pin or unpin.
    pub pinned: Option<bool>,
}

/// Pin or unpin a message, replace its metadata or edit its content.
#[utoipa::path(patch, path = "/v1/conversations/{id}/messages/{message_id}", tag = "memory",
    params(
        ("id" = String, Path, description = "conversation id"),
        ("message_id" = String, Path, description = "message id"),
    ),
    request_body = UpdateMessage,
    responses(
        (status = 200, description = "the updated message", body = Message),
        (status = 404, description = "`conversation_not_found` or `message_not_found`", body = ErrorBody),
        (status = 413, description = "`message_too_large`", body = ErrorBody),
        (status = 422, description = "invalid fields", body = ErrorBody),
    ))]
pub async fn update_message(
    State(state): State<AppState>,
    Path((id, message_id)): Path<(String, String)>,
    ApiJson(request): ApiJson<UpdateMessage>,
) -> Result<Json<Message>, ApiError> {
    let conversation_id = conversation_id(&id)?;
    let message_uuid = Uuid::parse_str(&message_id).map_err(|_| message_not_found(&message_id))?;
    let max = state.config.memory.max_message_bytes;
    if let Some(content) = &request.content
        && content.len() > max
    {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "message_too_large",
            format!(
                "content is {} bytes; a message holds at most {max}",
                content.len()
            ),
        )
        .with_details(json!({"field": "content", "limit": max})));
    }
    let check = || -> Result<(), InvalidInput> {
        if let Some(content) = &request.content {
            check_text("content", content)?;
        }
        if let Some(metadata) = &request.metadata {
            check_metadata("metadata", metadata)?;
        }
        Ok(())
    };
    check().map_err(|e| invalid("invalid_message", e))?;
    let patch = MessagePatch {
        content: request.content,
        metadata: request.metadata,
        pinned: request.pinned,
    };
    let Some(message) = state
        .memory
        .update_message(conversation_id, message_uuid, &patch, Utc::now())
        .await?
    else {
        existing(&state, &id).await?;
        return Err(message_not_found(&message_id));
    };
    emit(
        &state,
        conversation_id,
        "memory.message.updated",
        json!(message),
    )
    .await;
    Ok(Json(message))
}

/// Delete one message.
#[utoipa::path(delete, path = "/v1/conversations/{id}/messages/{message_id}", tag = "memory",
    params(
        ("id" = String, Path, description = "conversation id"),
        ("message_id" = String, Path, description = "message id"),
    ),
    responses(
        (status = 204, description = "deleted"),
        (status = 404, description = "`conversation_not_found` or `message_not_found`", body = ErrorBody),
    ))]
pub async fn delete_message(
    State(state): State<AppState>,
    Path((id, message_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let conversation_id = conversation_id(&id)?;
    let message_uuid = Uuid::parse_str(&message_id).map_err(|_| message_not_found(&message_id))?;
    if !state
        .memory
        .delete_message(conversation_id, message_uuid, Utc::now())
        .await?
    {
        existing(&state, &id).await?;
        return Err(message_not_found(&message_id));
    }
    emit(
        &state,
        conversation_id,
        "memory.message.deleted",
        json!({"id": message_uuid, "conversation_id": conversation_id}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------------
// Context and summaries

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ContextQuery {
    /// The budget in estimated tokens (default 4096).
    pub max_tokens: Option<u32>,
}

/// What to give a model: the latest summary, the pinned messages, then the newest messages
/// that fit `max_tokens` (estimated as ceil(characters / 4) + 4 per message), oldest first.
#[utoipa::path(get, path = "/v1/conversations/{id}/context", tag = "memory",
    params(("id" = String, Path, description = "conversation id"), ContextQuery),
    responses(
        (status = 200, description = "the context window", body = Context),
        (status = 400, description = "bad max_tokens", body = ErrorBody),
        (status = 404, description = "`conversation_not_found`", body = ErrorBody),
    ))]
pub async fn context(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<ContextQuery>,
) -> Result<Json<Context>, ApiError> {
    let limits = &state.config.memory;
    let max_tokens = query.max_tokens.unwrap_or(limits.default_context_tokens);
    if !(1..=limits.max_context_tokens).contains(&max_tokens) {
        return Err(ApiError::invalid_query(format!(
            "max_tokens must be between 1 and {}",
            limits.max_context_tokens
        )));
    }
    let conversation = existing(&state, &id).await?;
    Ok(Json(
        build_context(state.memory.as_ref(), &conversation, max_tokens).await?,
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetSummary {
    pub text: String,
    /// The newest message the summary covers.
    pub through: Option<Uuid>,
}

/// Store a conversation's summary (what a `memory.summarize` worker does with its result).
#[utoipa::path(post, path = "/v1/conversations/{id}/summary", tag = "memory",
    params(("id" = String, Path, description = "conversation id")),
    request_body = SetSummary,
    responses(
        (status = 200, description = "the conversation with its new summary", body = Conversation),
        (status = 404, description = "`conversation_not_found`", body = ErrorBody),
        (status = 413, description = "`message_too_large`", body = ErrorBody),
    ))]
pub async fn set_summary(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<SetSummary>,
) -> Result<Json<Conversation>, ApiError> {
    let conversation_id = conversation_id(&id)?;
    let max = state.config.memory.max_message_bytes;
    if request.text.len() > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "message_too_large",
            format!("a summary holds at most {max} bytes"),
        ));
    }
    check_text("text", &request.text).map_err(|e| invalid("invalid_summary", e))?;
    let summary = Summary {
        tokens: estimate_tokens(&request.text),
        text: request.text,
        through: request.through,
        updated_at: Utc::now(),
    };
    let conversation = state
        .memory
        .set_summary(conversation_id, &summary)
        .await?
        .ok_or_else(|| conversation_not_found(&id))?;
    emit(
        &state,
        conversation_id,
        "memory.conversation.summarized",
        json!(conversation),
    )
    .await;
    Ok(Json(conversation))
}

// ---------------------------------------------------------------------------------------------
// Search

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SearchParams {
    /// The query: words (all must occur), `"a phrase"`, `-excluded`, `or` between alternatives.
    pub q: String,
    /// Only in this conversation.
    pub conversation_id: Option<Uuid>,
    /// Only by this author.
    pub author: Option<String>,
    /// Only with this role.
    pub role: Option<String>,
    /// Only messages created at or after this instant (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Only messages created before this instant (RFC 3339).
    pub until: Option<DateTime<Utc>>,
    /// Page size (default 50, at most 500).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResults {
    /// Best first: each message with its `snippet` and `rank`.
    pub messages: Vec<SearchHit>,
    /// Pass as `cursor` (with the same query) for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// Ranked cursors are positions in the ranking: `o<offset>`, base64url-encoded so that clients
/// treat them as opaque.
fn encode_offset(offset: u32) -> String {
    URL_SAFE_NO_PAD.encode(format!("o{offset}"))
}

fn decode_offset(cursor: &str) -> Result<u32, ApiError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| invalid_cursor())?;
    std::str::from_utf8(&bytes)
        .ok()
        .and_then(|text| text.strip_prefix('o'))
        .and_then(|n| n.parse().ok())
        .ok_or_else(invalid_cursor)
}

/// Full-text search over every message, ranked, with highlighted snippets.
#[utoipa::path(get, path = "/v1/search/messages", tag = "memory", params(SearchParams),
    responses(
        (status = 200, description = "ranked hits", body = SearchResults),
        (status = 400, description = "`invalid_search_query`, `invalid_query` or `invalid_cursor`", body = ErrorBody),
    ))]
pub async fn search(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<SearchParams>,
) -> Result<Json<SearchResults>, ApiError> {
    let limit = page_limit(&state.config, params.limit)?;
    let query = SearchQuery::parse(&params.q).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_search_query",
            e.to_string(),
        )
    })?;
    let role = params
        .role
        .as_deref()
        .map(str::parse::<MessageRole>)
        .transpose()
        .map_err(ApiError::invalid_query)?;
    let offset = params
        .cursor
        .as_deref()
        .map(decode_offset)
        .transpose()?
        .unwrap_or(0);
    let depth = state.config.memory.max_search_depth;
    if offset.saturating_add(limit) > depth {
        return Err(ApiError::invalid_query(format!(
            "results go {depth} deep at most; narrow the query or its filters"
        )));
    }
    if let Some(author) = &params.author {
        check_text("author", author).map_err(|e| ApiError::invalid_query(e.to_string()))?;
        if author.len() > MAX_NAME_BYTES {
            return Ok(Json(SearchResults {
                messages: Vec::new(),
                next_cursor: None,
            }));
        }
    }
    let mut messages = state
        .memory
        .search(&SearchRequest {
            query,
            conversation_id: params.conversation_id,
            author: params.author,
            role,
            since: params.since,
            until: params.until,
            offset,
            limit: limit + 1,
        })
        .await?;
    let next_cursor = if messages.len() > limit as usize {
        messages.truncate(limit as usize);
        Some(encode_offset(offset + limit))
    } else {
        None
    };
    Ok(Json(SearchResults {
        messages,
        next_cursor,
    }))
}

// ---------------------------------------------------------------------------------------------
// Export and import

/// Export a conversation as JSON Lines: the conversation (`"type":"conversation"`), then every
/// message (`"type":"message"`) oldest first. `POST /v1/conversations/import` reads it back.
#[utoipa::path(get, path = "/v1/conversations/{id}/export", tag = "memory",
    params(("id" = String, Path, description = "conversation id")),
    responses(
        (status = 200, description = "JSON Lines", content_type = "application/x-ndjson", body = String),
        (status = 404, description = "`conversation_not_found`", body = ErrorBody),
    ))]
pub async fn export(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let conversation = existing(&state, &id).await?;
    let mut out = Vec::new();
    let mut line = |value: Value, kind: &str| {
        let mut value = value;
        if let Value::Object(map) = &mut value {
            map.insert("type".into(), Value::from(kind));
        }
        out.extend_from_slice(value.to_string().as_bytes());
        out.push(b'\n');
    };
    line(json!(conversation), "conversation");
    // Walk back from the newest (the index serves both directions), then write oldest first.
    let mut messages = Vec::new();
    let mut page = MessagePage::Newest;
    loop {
        let batch = state
            .memory
            .list_messages(conversation.id, page, IMPORT_CHUNK as u32)
            .await?;
        let done = batch.len() < IMPORT_CHUNK;
        if let Some(last) = batch.last() {
            page = MessagePage::Before(last.id);
        }
        messages.extend(batch);
        if done {
            break;
        }
    }
    for message in messages.into_iter().rev() {
        line(json!(message), "message");
    }
    let mut response = (StatusCode::OK, out).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    if let Ok(disposition) = HeaderValue::from_str(&format!(
        "attachment; filename=\"conversation-{}.jsonl\"",
        conversation.id
    )) {
        response
            .headers_mut()
            .insert(header::CONTENT_DISPOSITION, disposition);
    }
    Ok(response)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportedConversation {
    id: Uuid,
    title: Option<String>,
    #[serde(default)]
    participants: Vec<String>,
    metadata: Option<Value>,
    #[serde(default)]
    archived: bool,
    summary: Option<Summary>,
    created_by: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportedMessage {
    id: Uuid,
    #[serde(default)]
    conversation_id: Option<Uuid>,
    author: String,
    role: MessageRole,
    content: String,
    metadata: Option<Value>,
    #[serde(default)]
    pinned: bool,
    #[serde(default)]
    tokens: Option<u32>,
    created_at: DateTime<Utc>,
}

fn import_error(line: usize, message: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_import",
        format!("line {line}: {message}"),
    )
    .with_details(json!({"line": line}))
}

fn without_type(mut value: Value) -> (Option<String>, Value) {
    let kind = value
        .as_object_mut()
        .and_then(|map| map.remove("type"))
        .and_then(|t| t.as_str().map(str::to_owned));
    (kind, value)
}

/// Import a conversation exported as JSON Lines, keeping its ids and times (all or nothing).
#[utoipa::path(post, path = "/v1/conversations/import", tag = "memory",
    request_body(content = String, description = "JSON Lines as written by export", content_type = "application/x-ndjson"),
    responses(
        (status = 201, description = "the imported conversation", body = Conversation),
        (status = 400, description = "`invalid_import`: a line that does not parse", body = ErrorBody),
        (status = 409, description = "`conversation_exists` or `message_exists`", body = ErrorBody),
        (status = 413, description = "`payload_too_large` or `message_too_large`", body = ErrorBody),
    ))]
pub async fn import(
    State(state): State<AppState>,
    principal: Principal,
    body: Bytes,
) -> Result<(StatusCode, Json<Conversation>), ApiError> {
    let text = std::str::from_utf8(&body).map_err(|e| import_error(0, e))?;
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.trim().is_empty());
    let (n, first) = lines
        .next()
        .ok_or_else(|| import_error(1, "empty: the first line must be the conversation"))?;
    let value: Value = serde_json::from_str(first).map_err(|e| import_error(n, e))?;
    let (kind, value) = without_type(value);
    if kind.as_deref() != Some("conversation") {
        return Err(import_error(
            n,
            "the first line must have \"type\":\"conversation\"",
        ));
    }
    let imported: ImportedConversation =
        serde_json::from_value(value).map_err(|e| import_error(n, e))?;
    let check = || -> Result<(), InvalidInput> {
        if let Some(title) = &imported.title {
            check_title(title)?;
        }
        check_participants(&imported.participants)?;
        if let Some(metadata) = &imported.metadata {
            check_metadata("metadata", metadata)?;
        }
        if let Some(summary) = &imported.summary {
            check_text("summary", &summary.text)?;
        }
        Ok(())
    };
    check().map_err(|e| invalid("invalid_conversation", e))?;
    let conversation = Conversation {
        id: imported.id,
        title: imported.title,
        participants: imported.participants,
        metadata: imported.metadata.unwrap_or_else(|| json!({})),
        archived: imported.archived,
        summary: imported.summary,
        created_by: imported
            .created_by
            .or_else(|| Some(principal.subject.clone())),
        created_at: imported.created_at,
        updated_at: imported.updated_at,
    };
    let mut messages = Vec::new();
    for (n, line) in lines {
        let value: Value = serde_json::from_str(line).map_err(|e| import_error(n, e))?;
        let (kind, value) = without_type(value);
        if kind.as_deref() != Some("message") {
            return Err(import_error(n, "expected \"type\":\"message\""));
        }
        let m: ImportedMessage = serde_json::from_value(value).map_err(|e| import_error(n, e))?;
        if m.conversation_id.is_some_and(|c| c != conversation.id) {
            return Err(import_error(
                n,
                "the message belongs to another conversation",
            ));
        }
        let _ = m.tokens;
        let new = NewMessage {
            id: Some(m.id),
            author: Some(m.author),
            role: Some(m.role),
            content: m.content,
            metadata: m.metadata,
            pinned: m.pinned,
            created_at: Some(m.created_at),
        };
        messages.push(build_message(
            &state,
            &principal,
            conversation.id,
            new,
            None,
            conversation.updated_at,
        )?);
    }
    state
        .memory
        .create_conversation(&conversation)
        .await
        .map_err(|e| conflict("conversation_exists", e))?;
    for chunk in messages.chunks(IMPORT_CHUNK) {
        let appended = state
            .memory
            .append_messages(conversation.id, chunk, conversation.updated_at)
            .await;
        if !matches!(appended, Ok(true)) {
            // All or nothing: take back what was stored.
            if let Err(e) = state.memory.delete_conversation(conversation.id).await {
                tracing::error!(error = %e, id = %conversation.id, "could not undo a failed import");
            }
            return Err(match appended {
                Err(e) => conflict("message_exists", e),
                _ => ApiError::internal(),
            });
        }
    }
    // Appending counts as activity; the imported conversation keeps its own.
    let patch = ConversationPatch {
        archived: Some(conversation.archived),
        ..ConversationPatch::default()
    };
    let stored = state
        .memory
        .update_conversation(conversation.id, &patch, conversation.updated_at)
        .await?
        .ok_or_else(ApiError::internal)?;
    emit(
        &state,
        conversation.id,
        "memory.conversation.created",
        json!(stored),
    )
    .await;
    Ok((StatusCode::CREATED, Json(stored)))
}
