//! Queue flow control: pausing and resuming queues, rate limits per task type
//! (`/v1/task-limits/{type}`) and per queue (`/v1/queues/{queue}/limit`, a sub-resource of the
//! queue like its pause). The queue service (`mcp_core::services::queues`) changes them; the
//! stores enforce them at claim time on every node. Counts with the paused and limited state
//! and what the limits hold back are `GET /v1/queues` (`tasks.rs`).

use crate::access::Access::Requires;
use crate::endpoint::{Endpoint, endpoint};
use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiJson;
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use mcp_core::principal::Permission;
use mcp_core::queues::{QueueLimit, TaskLimit};
use mcp_core::services::QueueError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::routes;

/// The routes of this module and who may call them.
pub(crate) fn endpoints() -> Vec<Endpoint<AppState>> {
    vec![
        endpoint(Requires(Permission::TasksManage), routes!(pause)),
        endpoint(Requires(Permission::TasksManage), routes!(resume)),
        endpoint(Requires(Permission::TasksReadAny), routes!(list_limits)),
        endpoint(Requires(Permission::TasksReadAny), routes!(get_limit)),
        endpoint(Requires(Permission::TasksManage), routes!(put_limit)),
        endpoint(Requires(Permission::TasksManage), routes!(delete_limit)),
        endpoint(Requires(Permission::TasksReadAny), routes!(get_queue_limit)),
        endpoint(Requires(Permission::TasksManage), routes!(put_queue_limit)),
        endpoint(
            Requires(Permission::TasksManage),
            routes!(delete_queue_limit),
        ),
    ]
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        let message = e.to_string();
        match e {
            QueueError::Invalid(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
            }
            QueueError::LimitNotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "task_limit_not_found", message)
            }
            QueueError::QueueLimitNotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "queue_limit_not_found", message)
            }
            QueueError::Store(e) => e.into(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QueueState {
    pub queue: String,
    pub paused: bool,
    /// False when the queue already was in that state.
    pub changed: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TaskLimitList {
    pub limits: Vec<TaskLimit>,
}

/// `PUT /v1/task-limits/{type}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutTaskLimit {
    /// Most tasks of the type started per window, cluster-wide (at least 1).
    pub max: u32,
    /// The window, in milliseconds (1 to 86 400 000).
    pub per_ms: u64,
}

/// `PUT /v1/queues/{queue}/limit`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutQueueLimit {
    /// Most tasks of the queue, of any type, started per window, cluster-wide (at least 1).
    pub max: u32,
    /// The window, in milliseconds (1 to 86 400 000).
    pub per_ms: u64,
}

/// Pause a queue on every node: its tasks are accepted and stay queued, attempts unspent.
/// Survives restarts; announced as `queue.paused` on `system.queues`.
#[utoipa::path(post, path = "/v1/queues/{queue}/pause", tag = "tasks",
    params(("queue" = String, Path, description = "queue name")),
    responses(
        (status = 200, description = "paused", body = QueueState),
        (status = 422, description = "invalid queue name", body = ErrorBody),
    ))]
pub async fn pause(
    State(state): State<AppState>,
    Path(queue): Path<String>,
) -> Result<Json<QueueState>, ApiError> {
    let changed = state.queues.pause(&queue).await?;
    Ok(Json(QueueState {
        queue,
        paused: true,
        changed,
    }))
}

/// Resume a paused queue; announced as `queue.resumed`.
#[utoipa::path(post, path = "/v1/queues/{queue}/resume", tag = "tasks",
    params(("queue" = String, Path, description = "queue name")),
    responses(
        (status = 200, description = "resumed", body = QueueState),
        (status = 422, description = "invalid queue name", body = ErrorBody),
    ))]
pub async fn resume(
    State(state): State<AppState>,
    Path(queue): Path<String>,
) -> Result<Json<QueueState>, ApiError> {
    let changed = state.queues.resume(&queue).await?;
    Ok(Json(QueueState {
        queue,
        paused: false,
        changed,
    }))
}

/// Every task type's rate limit.
#[utoipa::path(get, path = "/v1/task-limits", tag = "tasks",
    responses((status = 200, description = "limits", body = TaskLimitList)))]
pub async fn list_limits(State(state): State<AppState>) -> Result<Json<TaskLimitList>, ApiError> {
    Ok(Json(TaskLimitList {
        limits: state.queues.limits().await?,
    }))
}

#[utoipa::path(get, path = "/v1/task-limits/{type}", tag = "tasks",
    params(("type" = String, Path, description = "task type")),
    responses(
        (status = 200, description = "the limit", body = TaskLimit),
        (status = 404, description = "no limit for this type", body = ErrorBody),
    ))]
pub async fn get_limit(
    State(state): State<AppState>,
    Path(task_type): Path<String>,
) -> Result<Json<TaskLimit>, ApiError> {
    Ok(Json(state.queues.limit(&task_type).await?))
}

/// Set a task type's rate limit, cluster-wide: at most `max` tasks of it start per `per_ms`.
#[utoipa::path(put, path = "/v1/task-limits/{type}", tag = "tasks", request_body = PutTaskLimit,
    params(("type" = String, Path, description = "task type")),
    responses(
        (status = 200, description = "set", body = TaskLimit),
        (status = 422, description = "invalid limit", body = ErrorBody),
    ))]
pub async fn put_limit(
    State(state): State<AppState>,
    Path(task_type): Path<String>,
    ApiJson(body): ApiJson<PutTaskLimit>,
) -> Result<Json<TaskLimit>, ApiError> {
    let limit = TaskLimit {
        task_type,
        max: body.max,
        per_ms: body.per_ms,
    };
    Ok(Json(state.queues.put_limit(limit).await?))
}

#[utoipa::path(delete, path = "/v1/task-limits/{type}", tag = "tasks",
    params(("type" = String, Path, description = "task type")),
    responses(
        (status = 204, description = "removed"),
        (status = 404, description = "no limit for this type", body = ErrorBody),
    ))]
pub async fn delete_limit(
    State(state): State<AppState>,
    Path(task_type): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.queues.delete_limit(&task_type).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A queue's rate limit.
#[utoipa::path(get, path = "/v1/queues/{queue}/limit", tag = "tasks",
    params(("queue" = String, Path, description = "queue name")),
    responses(
        (status = 200, description = "the limit", body = QueueLimit),
        (status = 404, description = "no limit for this queue", body = ErrorBody),
    ))]
pub async fn get_queue_limit(
    State(state): State<AppState>,
    Path(queue): Path<String>,
) -> Result<Json<QueueLimit>, ApiError> {
    Ok(Json(state.queues.queue_limit(&queue).await?))
}

/// Set a queue's rate limit, cluster-wide: at most `max` of its tasks, whatever their type,
/// start per `per_ms` (a task type's own limit applies as well). Announced as
/// `queue.limit.set`.
#[utoipa::path(put, path = "/v1/queues/{queue}/limit", tag = "tasks", request_body = PutQueueLimit,
    params(("queue" = String, Path, description = "queue name")),
    responses(
        (status = 200, description = "set", body = QueueLimit),
        (status = 422, description = "invalid limit", body = ErrorBody),
    ))]
pub async fn put_queue_limit(
    State(state): State<AppState>,
    Path(queue): Path<String>,
    ApiJson(body): ApiJson<PutQueueLimit>,
) -> Result<Json<QueueLimit>, ApiError> {
    let limit = QueueLimit {
        queue,
        max: body.max,
        per_ms: body.per_ms,
    };
    Ok(Json(state.queues.put_queue_limit(limit).await?))
}

/// Remove a queue's rate limit; announced as `queue.limit.removed`.
#[utoipa::path(delete, path = "/v1/queues/{queue}/limit", tag = "tasks",
    params(("queue" = String, Path, description = "queue name")),
    responses(
        (status = 204, description = "removed"),
        (status = 404, description = "no limit for this queue", body = ErrorBody),
    ))]
pub async fn delete_queue_limit(
    State(state): State<AppState>,
    Path(queue): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.queues.delete_queue_limit(&queue).await?;
    Ok(StatusCode::NO_CONTENT)
}
