//! Export a conversation as JSON Lines, and import one back with its ids and times.

use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody};
use crate::request_id;
use crate::state::AppState;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use mcp_core::memory::{Conversation, MessageRole};
use mcp_core::services::memory::{ImportedConversation, NewMessage};
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
    let (conversation, messages) = state.memory.export(&id).await?;
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
    for message in messages {
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
    /// Kept: see `MemoryService::import`.
    #[serde(default)]
    created_by: Option<String>,
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

/// Import a conversation exported as JSON Lines, keeping its ids, times and each message's
/// `created_by` (all or nothing; a message without one is recorded as written by the importer).
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
    let mut messages = Vec::new();
    for (n, line) in lines {
        let value: Value = serde_json::from_str(line).map_err(|e| import_error(n, e))?;
        let (kind, value) = without_type(value);
        if kind.as_deref() != Some("message") {
            return Err(import_error(n, "expected \"type\":\"message\""));
        }
        let m: ImportedMessage = serde_json::from_value(value).map_err(|e| import_error(n, e))?;
        if m.conversation_id.is_some_and(|c| c != imported.id) {
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
        messages.push(mcp_core::services::memory::ImportedMessage {
            message: new,
            created_by: m.created_by,
        });
    }
    let correlation = request_id::current();
    let stored = state
        .memory
        .import(&principal, imported, messages, correlation.as_deref())
        .await?;
    Ok((StatusCode::CREATED, Json(stored)))
}
