//! A conversation's messages: add one or a batch, list pages both ways, pin or edit, delete.

use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiQuery, page_limit, parse_cursor};
use crate::request_id;
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use mcp_core::memory::Message;
use mcp_core::services::memory::{MessageCursor, NewMessage, UpdateMessage};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

fn body_error(e: serde_json::Error) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
        e.to_string(),
    )
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

/// Add one message (`{"content": …}`) or a batch (`{"messages": […]}`, all or none) to a
/// conversation. New activity brings an archived conversation back.
#[utoipa::path(post, path = "/v1/conversations/{id}/messages", tag = "memory",
    params(("id" = String, Path, description = "conversation id")),
    request_body(content = NewMessage, description = "one message, or `{\"messages\": […]}` (a `MessageBatch`)"),
    responses(
        (status = 201, description = "the message, or `{\"messages\": […]}` for a batch", body = Message),
        (status = 404, description = "`conversation_not_found`", body = ErrorBody),
        (status = 409, description = "a message id is taken (`message_exists`)", body = ErrorBody),
        (status = 403, description = "`role_not_allowed` (role `system` or `tool`) or `created_at_not_allowed`: both need `memory:write:system` (operators, admins, services)", body = ErrorBody),
        (status = 413, description = "`message_too_large` or `payload_too_large`", body = ErrorBody),
        (status = 422, description = "invalid message or batch size", body = ErrorBody),
    ))]
pub async fn post_messages(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let batch = body.get("messages").is_some();
    let new = if batch {
        MessageBatch::deserialize(body)
            .map_err(body_error)?
            .messages
    } else {
        vec![NewMessage::deserialize(body).map_err(body_error)?]
    };
    let correlation = request_id::current();
    let messages = state
        .memory
        .append_messages(&principal, &id, new, batch, correlation.as_deref())
        .await?;
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
    let cursor = match (
        parse_cursor(query.before.as_deref()),
        parse_cursor(query.after.as_deref()),
    ) {
        (Ok(before), Ok(after)) => MessageCursor { before, after },
        // A conversation that does not exist is named first, as for any other request.
        (Err(e), _) | (_, Err(e)) => {
            state.memory.conversation(&id).await?;
            return Err(e);
        }
    };
    let (messages, next) = state.memory.list_messages(&id, cursor, limit).await?;
    Ok(Json(MessageList {
        messages,
        next_cursor: next.map(|id| id.to_string()),
    }))
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
    let correlation = request_id::current();
    Ok(Json(
        state
            .memory
            .update_message(&id, &message_id, request, correlation.as_deref())
            .await?,
    ))
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
    let correlation = request_id::current();
    state
        .memory
        .delete_message(&id, &message_id, correlation.as_deref())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
