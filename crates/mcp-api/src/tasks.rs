//! Task routes: create (one or a batch), list, read, cancel, retry, and per-queue counts.

use crate::access::Access::Requires;
use crate::auth::Principal;
use crate::endpoint::{Endpoint, endpoint};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiQuery, page_limit, parse_cursor};
use crate::request_id;
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mcp_core::principal::Permission;
use mcp_core::services::{Creator, TaskQuery, TaskService};
use mcp_core::task::CreateTask;
use mcp_core::{Task, TaskStatus};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

/// The routes of this module and who may call them.
pub(crate) fn endpoints() -> Vec<Endpoint<AppState>> {
    vec![
        endpoint(Requires(Permission::TasksCreate), routes!(create)),
        endpoint(Requires(Permission::TasksReadOwn), routes!(list)),
        endpoint(Requires(Permission::TasksCreate), routes!(create_batch)),
        endpoint(Requires(Permission::TasksReadOwn), routes!(get)),
        endpoint(Requires(Permission::TasksCancelOwn), routes!(cancel)),
        endpoint(Requires(Permission::TasksManage), routes!(retry)),
        endpoint(Requires(Permission::TasksReadAny), routes!(queues)),
        endpoint(Requires(Permission::TasksRun), routes!(routes)),
    ]
}

/// Create a task. 201 with the new task, or 200 with the existing one when the
/// `idempotency_key` was used before.
#[utoipa::path(post, path = "/v1/tasks", tag = "tasks", request_body = CreateTask,
    responses(
        (status = 201, description = "created", body = Task),
        (status = 200, description = "a task with this idempotency_key exists already", body = Task),
        (status = 400, description = "malformed JSON", body = ErrorBody),
        (status = 422, description = "invalid task, unknown type or bad payload", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<CreateTask>,
) -> Result<Response, ApiError> {
    let correlation = request_id::current();
    let inserted = state
        .tasks
        .create(
            Creator::Principal(&principal),
            request,
            correlation.as_deref(),
        )
        .await?;
    let status = if inserted.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut response = (status, Json(&inserted.task)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/tasks/{}", inserted.task.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBatch {
    /// Between 1 and 1000 tasks; all are created or none.
    pub tasks: Vec<CreateTask>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TaskList {
    pub tasks: Vec<Task>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// Create many tasks at once, atomically: if one is invalid, none is created.
#[utoipa::path(post, path = "/v1/tasks/batch", tag = "tasks", request_body = CreateBatch,
    responses(
        (status = 201, description = "created (tasks matching an idempotency_key are the existing ones)", body = TaskList),
        (status = 422, description = "an invalid task, or too many", body = ErrorBody),
    ))]
pub async fn create_batch(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(batch): ApiJson<CreateBatch>,
) -> Result<(StatusCode, Json<TaskList>), ApiError> {
    let correlation = request_id::current();
    let inserted = state
        .tasks
        .create_batch(
            Creator::Principal(&principal),
            batch.tasks,
            correlation.as_deref(),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(TaskList {
            tasks: inserted.into_iter().map(|i| i.task).collect(),
            next_cursor: None,
        }),
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only tasks in this status.
    pub status: Option<String>,
    /// Only tasks of this type.
    #[serde(rename = "type")]
    pub task_type: Option<String>,
    /// Only tasks in this queue.
    pub queue: Option<String>,
    /// Page size (default 50, at most 500).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// List tasks, newest first, with filters and cursor pagination.
#[utoipa::path(get, path = "/v1/tasks", tag = "tasks", params(ListQuery),
    responses(
        (status = 200, description = "a page of tasks", body = TaskList),
        (status = 400, description = "bad filter, limit or cursor", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<TaskList>, ApiError> {
    let limit = page_limit(&state.config, query.limit)?;
    let status = query
        .status
        .as_deref()
        .map(str::parse::<TaskStatus>)
        .transpose()
        .map_err(ApiError::invalid_query)?;
    let before = parse_cursor(query.cursor.as_deref())?;
    let page = state
        .tasks
        .list(
            &principal,
            TaskQuery {
                status,
                task_type: query.task_type,
                queue: query.queue,
                before,
                limit,
            },
        )
        .await?;
    Ok(Json(TaskList {
        tasks: page.tasks,
        next_cursor: page.next_cursor.map(|id| id.to_string()),
    }))
}

/// Read one task.
#[utoipa::path(get, path = "/v1/tasks/{id}", tag = "tasks",
    params(("id" = String, Path, description = "task id")),
    responses(
        (status = 200, description = "the task", body = Task),
        (status = 404, description = "no such task", body = ErrorBody),
    ))]
pub async fn get(
    State(tasks): State<Arc<TaskService>>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<Task>, ApiError> {
    Ok(Json(tasks.get(&principal, &id).await?))
}

/// Cancel a task: a queued one never runs, a running one is signalled and ends `cancelled`.
#[utoipa::path(post, path = "/v1/tasks/{id}/cancel", tag = "tasks",
    params(("id" = String, Path, description = "task id")),
    responses(
        (status = 200, description = "cancelled", body = Task),
        (status = 404, description = "no such task", body = ErrorBody),
        (status = 409, description = "already finished", body = ErrorBody),
    ))]
pub async fn cancel(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<Task>, ApiError> {
    Ok(Json(state.tasks.cancel(&principal, &id).await?))
}

/// Requeue a failed or dead task now (granting one more attempt if it had none left). A
/// workflow's task may also be retried when cancelled; the dependents its end cancelled wait
/// again (docs/workflows.md).
#[utoipa::path(post, path = "/v1/tasks/{id}/retry", tag = "tasks",
    params(("id" = String, Path, description = "task id")),
    responses(
        (status = 200, description = "requeued (a workflow task with unsettled dependencies: waiting)", body = Task),
        (status = 404, description = "no such task", body = ErrorBody),
        (status = 409, description = "`task_not_retryable`: not failed or dead (nor a workflow's cancelled task whose dependencies did not fail)", body = ErrorBody),
    ))]
pub async fn retry(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<Task>, ApiError> {
    Ok(Json(state.tasks.retry(&principal, &id).await?))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QueueCounts {
    /// Task counts per queue, then per status.
    pub queues: BTreeMap<String, BTreeMap<String, u64>>,
    /// Paused queues: their tasks stay queued until resumed.
    pub paused: Vec<String>,
    /// Rate limits per task type: their tasks stay queued while a window is used up.
    pub limits: Vec<mcp_core::queues::TaskLimit>,
    /// Rate limits per queue (all types in it together).
    pub queue_limits: Vec<mcp_core::queues::QueueLimit>,
    /// Per queue, the due tasks a rate limit holds back now (their type's or their queue's
    /// window is used up); queues with none are left out.
    pub held_back: BTreeMap<String, u64>,
}

/// How many tasks each queue holds, per status; the paused queues, the rate limits and how
/// many due tasks they hold back now.
#[utoipa::path(get, path = "/v1/queues", tag = "tasks",
    responses((status = 200, description = "counts", body = QueueCounts)))]
pub async fn queues(State(state): State<AppState>) -> Result<Json<QueueCounts>, ApiError> {
    let counts = state.orchestrator.store().counts().await?;
    let mut queues: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for ((queue, status), n) in counts {
        queues
            .entry(queue)
            .or_default()
            .insert(status.as_str().to_owned(), n);
    }
    let flow = state.queues.flow_state().await?;
    Ok(Json(QueueCounts {
        queues,
        paused: flow.paused,
        limits: flow.limits,
        queue_limits: flow.queue_limits,
        held_back: flow.held_back,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RouteList {
    pub routes: Vec<mcp_core::routing::RouteInfo>,
}

/// Where each task type runs: an in-process handler of this node, or external workers
/// connected to any node of the cluster (each with its `node` and load: current for this node's,
/// as last published for the others'), and the route's circuit breaker on this node.
#[utoipa::path(get, path = "/v1/routes", tag = "tasks",
    responses((status = 200, description = "routes of the cluster, as this node sees them", body = RouteList)))]
pub async fn routes(State(state): State<AppState>) -> Json<RouteList> {
    Json(RouteList {
        routes: state.orchestrator.routes(),
    })
}
