//! Conversations: create, list, read, change and delete one; its context window and summary.

use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiQuery, page_limit, parse_cursor};
use crate::request_id;
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mcp_core::memory::{Context, Conversation, ConversationFilter};
use mcp_core::services::memory::{CreateConversation, UpdateConversation};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

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
    let conversation = state
        .memory
        .create_conversation(&principal, request, request_id::current().as_deref())
        .await?;
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
    let (conversations, next) = state
        .memory
        .list_conversations(ConversationFilter {
            participant: query.participant,
            archived: query.archived,
            before: parse_cursor(query.cursor.as_deref())?,
            limit,
        })
        .await?;
    Ok(Json(ConversationList {
        conversations,
        next_cursor: next.map(|id| id.to_string()),
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
    Ok(Json(state.memory.conversation(&id).await?))
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
    let correlation = request_id::current();
    Ok(Json(
        state
            .memory
            .update_conversation(&id, request, correlation.as_deref())
            .await?,
    ))
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
    let correlation = request_id::current();
    state
        .memory
        .delete_conversation(&id, correlation.as_deref())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

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
    Ok(Json(state.memory.context(&id, query.max_tokens).await?))
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
    let correlation = request_id::current();
    Ok(Json(
        state
            .memory
            .set_summary(&id, request.text, request.through, correlation.as_deref())
            .await?,
    ))
}
