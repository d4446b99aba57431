//! A conversation's messages: add one or a batch, list pages both ways, pin or edit, delete.

use super::rules::{
    NewMessage, body_error, build_message, conflict, conversation_id, conversation_not_found,
    invalid, invalid_cursor, message_not_found,
};
use super::service::{emit, existing};
use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiQuery, page_limit, parse_cursor};
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use mcp_core::memory::{
    InvalidInput, Message, MessagePage, MessagePatch, check_metadata, check_text,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

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
