//! Export a conversation as JSON Lines, and import one back with its ids and times.

use super::rules::{
    IMPORT_CHUNK, NewMessage, build_message, check_participants, check_title, conflict, invalid,
};
use super::service::{emit, existing};
use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use mcp_core::memory::{
    Conversation, ConversationPatch, InvalidInput, MessagePage, MessageRole, Summary,
    check_metadata, check_text,
};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

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
