//! The one error type of the API: every failure becomes
//! `{"error":{"code":"…","message":"…","request_id":"…"}}` with a stable `code` and the right
//! HTTP status. Nothing else may produce an error response.

use crate::request_id;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use mcp_core::StoreError;
use mcp_core::orchestrator::{OrchestratorError, WorkerRefusal};
use mcp_core::services::{MemoryError, TaskServiceError};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Option<Value>,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: clients branch on it.
    pub code: String,
    /// For people; may change.
    pub message: String,
    /// The `x-request-id` of the call, to find it in the logs.
    pub request_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn internal() -> Self {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "an internal error occurred; it has been logged",
        )
    }

    /// 401 `token_revoked`: the access token was valid but has been revoked (logout, a disabled
    /// user, a role or password change). Log in again.
    pub fn token_revoked() -> Self {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "token_revoked",
            "the access token has been revoked; log in again",
        )
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// 403: a WebSocket upgrade from a browser page whose `Origin` is not allowed.
    pub fn origin_forbidden() -> Self {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "origin_forbidden",
            "this origin may not open a WebSocket to the hub (see `ws_allowed_origins`)",
        )
    }

    pub fn task_not_found(id: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "task_not_found",
            format!("no task with id `{id}`"),
        )
    }

    pub fn invalid_query(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, message = %self.message, "request failed");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                request_id: request_id::current().unwrap_or_default(),
                details: self.details,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(message) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                format!("the database cannot be reached; try again shortly ({message})"),
            )
            // The health monitor probes a down database every few hundred milliseconds.
            .with_retry_after(1),
            StoreError::Conflict(message) => ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("{message} already exists"),
            ),
            StoreError::Database(message) | StoreError::Corrupt(message) => {
                tracing::error!(%message, "store error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "an internal error occurred; it has been logged",
                )
            }
        }
    }
}

impl From<OrchestratorError> for ApiError {
    fn from(e: OrchestratorError) -> Self {
        let message = e.to_string();
        match e {
            OrchestratorError::Invalid { source, index } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_task", message)
                    .with_details(serde_json::json!({"field": source.field, "index": index}))
            }
            OrchestratorError::UnknownType { task_type, index } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown_task_type",
                message,
            )
            .with_details(serde_json::json!({"type": task_type, "index": index})),
            OrchestratorError::InvalidPayload {
                task_type, index, ..
            } => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_payload", message)
                .with_details(serde_json::json!({"type": task_type, "index": index})),
            OrchestratorError::DestinationForbidden { source, index } => {
                ApiError::destination_forbidden(message, &source, index)
            }
            OrchestratorError::Store(e) => e.into(),
        }
    }
}

/// A worker asked to serve types it is not entitled to: in-process types, or types outside its
/// credential's `worker_types`. One code for both; the message names the types and why.
impl From<WorkerRefusal> for ApiError {
    fn from(e: WorkerRefusal) -> Self {
        let types = match &e {
            WorkerRefusal::InProcess(types) | WorkerRefusal::OutsideGrant(types) => types.clone(),
        };
        ApiError::new(
            StatusCode::FORBIDDEN,
            "worker_type_forbidden",
            e.to_string(),
        )
        .with_details(serde_json::json!({"types": types}))
    }
}

impl ApiError {
    /// 422 `destination_forbidden`: a URL a caller supplied names an address the outbound
    /// guard refuses (`mcp_core::outbound`).
    pub fn destination_forbidden(
        message: impl Into<String>,
        forbidden: &mcp_core::outbound::Forbidden,
        index: Option<usize>,
    ) -> ApiError {
        let mut details = serde_json::json!({
            "host": forbidden.host,
            "address": forbidden.ip.to_string(),
            "range": forbidden.range,
        });
        if let Some(index) = index {
            details["index"] = serde_json::json!(index);
        }
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "destination_forbidden",
            message,
        )
        .with_details(details)
    }
}

impl From<TaskServiceError> for ApiError {
    fn from(e: TaskServiceError) -> Self {
        let message = e.to_string();
        match e {
            TaskServiceError::Orchestrator(e) => e.into(),
            TaskServiceError::BatchSize { .. } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_batch_size",
                message,
            ),
            TaskServiceError::QuotaExceeded {
                limit,
                used,
                resets_at,
            } => {
                let wait = (resets_at - chrono::Utc::now()).num_seconds().max(1) as u64;
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", message)
                    .with_details(
                        serde_json::json!({"limit": limit, "used": used, "resets_at": resets_at}),
                    )
                    .with_retry_after(wait)
            }
            TaskServiceError::IdempotencyConflict(_) => {
                ApiError::new(StatusCode::CONFLICT, "idempotency_key_conflict", message)
            }
            TaskServiceError::PriorityTooHigh { index, ceiling, .. } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "priority_too_high",
                message,
            )
            .with_details(
                serde_json::json!({"field": "priority", "index": index, "limit": ceiling}),
            ),
            TaskServiceError::TimeoutTooLong { index, max, .. } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "timeout_too_long",
                message,
            )
            .with_details(serde_json::json!({"field": "timeout_ms", "index": index, "limit": max})),
            TaskServiceError::NotFound(id) => ApiError::task_not_found(&id),
            TaskServiceError::Forbidden(_) => {
                ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
            }
            TaskServiceError::AlreadyFinished { status, .. } => {
                ApiError::new(StatusCode::CONFLICT, "task_already_finished", message)
                    .with_details(serde_json::json!({"status": status}))
            }
            TaskServiceError::NotRetryable { status, .. } => {
                ApiError::new(StatusCode::CONFLICT, "task_not_retryable", message)
                    .with_details(serde_json::json!({"status": status}))
            }
        }
    }
}

impl From<MemoryError> for ApiError {
    fn from(e: MemoryError) -> Self {
        let message = e.to_string();
        match e {
            MemoryError::ConversationNotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "conversation_not_found", message)
            }
            MemoryError::MessageNotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "message_not_found", message)
            }
            MemoryError::Invalid { code, input } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
                    .with_details(serde_json::json!({"field": input.field}))
            }
            MemoryError::TooLarge { field, limit, .. } => {
                let error =
                    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "message_too_large", message);
                match field {
                    Some(field) => {
                        error.with_details(serde_json::json!({"field": field, "limit": limit}))
                    }
                    None => error,
                }
            }
            MemoryError::BatchSize { .. } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_batch_size",
                message,
            ),
            MemoryError::Exists { code, .. } => ApiError::new(StatusCode::CONFLICT, code, message),
            // Who may write what: the caller lacks `memory:write:system`.
            MemoryError::RoleNotAllowed { field, .. } => {
                ApiError::new(StatusCode::FORBIDDEN, "role_not_allowed", message)
                    .with_details(serde_json::json!({"field": field}))
            }
            MemoryError::CreatedAtNotAllowed { field } => {
                ApiError::new(StatusCode::FORBIDDEN, "created_at_not_allowed", message)
                    .with_details(serde_json::json!({"field": field}))
            }
            MemoryError::InvalidCursor => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_cursor", message)
            }
            MemoryError::InvalidQuery(message) => ApiError::invalid_query(message),
            MemoryError::Store(e) => e.into(),
        }
    }
}

pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not accept that method",
    )
}

/// A panic in a handler becomes a 500 with the usual body; the details stay in the log.
pub fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    tracing::error!(panic = what, "handler panicked");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "an internal error occurred; it has been logged",
    )
    .into_response()
}
