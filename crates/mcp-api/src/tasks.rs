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
use chrono::Utc;
use mcp_core::principal::Permission;
use mcp_core::task::CreateTask;
use mcp_core::{
    CancelOutcome, Inserted, NewTask, Origin, RetryOutcome, Task, TaskFilter, TaskStatus,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;
use uuid::Uuid;

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

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::task_not_found(id))
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
    let origin = Origin {
        correlation_id: correlation.as_deref(),
        created_by: Some(&principal.subject),
    };
    let task = state.orchestrator.prepare(request, origin, None).await?;
    let inserted = insert(&state, &principal, vec![task])
        .await?
        .into_iter()
        .next()
        .ok_or_else(ApiError::internal)?;
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
    let max = state.config.max_batch;
    if batch.tasks.is_empty() || batch.tasks.len() > max {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_batch_size",
            format!(
                "a batch holds between 1 and {max} tasks; this one has {}",
                batch.tasks.len()
            ),
        ));
    }
    let correlation = request_id::current();
    let origin = Origin {
        correlation_id: correlation.as_deref(),
        created_by: Some(&principal.subject),
    };
    let tasks = state
        .orchestrator
        .prepare_batch(batch.tasks, origin)
        .await?;
    let inserted = insert(&state, &principal, tasks).await?;
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
    let mut tasks = state
        .orchestrator
        .store()
        .list(&TaskFilter {
            status,
            task_type: query.task_type,
            queue: query.queue,
            created_by: (!principal.can(Permission::TasksReadAny))
                .then(|| principal.subject.clone()),
            before,
            limit: limit + 1,
        })
        .await?;
    let next_cursor = if tasks.len() > limit as usize {
        tasks.truncate(limit as usize);
        tasks.last().map(|t| t.id.to_string())
    } else {
        None
    };
    Ok(Json(TaskList { tasks, next_cursor }))
}

/// Read one task.
#[utoipa::path(get, path = "/v1/tasks/{id}", tag = "tasks",
    params(("id" = String, Path, description = "task id")),
    responses(
        (status = 200, description = "the task", body = Task),
        (status = 404, description = "no such task", body = ErrorBody),
    ))]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<Task>, ApiError> {
    Ok(Json(visible_task(&state, &principal, &id).await?))
}

/// Whether `principal` may see `task`: its own, or any with `tasks:read:any`.
pub(crate) fn may_see(principal: &Principal, task: &Task) -> bool {
    principal.can(Permission::TasksReadAny)
        || task.created_by.as_deref() == Some(principal.subject.as_str())
}

/// The task, if it exists and `principal` may see it; else 404 (a task one may not see is
/// indistinguishable from one that does not exist).
async fn visible_task(state: &AppState, principal: &Principal, id: &str) -> Result<Task, ApiError> {
    let task_id = parse_id(id)?;
    match state.orchestrator.store().get(task_id).await? {
        Some(task) if may_see(principal, &task) => Ok(task),
        _ => Err(ApiError::task_not_found(id)),
    }
}

/// Charges the daily quota, then inserts. A task that matched another principal's
/// idempotency key is refused rather than shown.
pub(crate) async fn insert(
    state: &AppState,
    principal: &Principal,
    tasks: Vec<NewTask>,
) -> Result<Vec<Inserted>, ApiError> {
    charge_quota(state, principal, tasks.len() as u64).await?;
    let inserted = state.orchestrator.insert(&tasks).await?;
    if let Some(hidden) = inserted
        .iter()
        .find(|i| !i.created && !may_see(principal, &i.task))
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_key_conflict",
            format!(
                "the idempotency_key `{}` is used by a task you cannot see; pick another",
                hidden.task.idempotency_key.as_deref().unwrap_or_default()
            ),
        ));
    }
    Ok(inserted)
}

/// Counts `n` tasks against the principal's daily quota (roles that have one).
async fn charge_quota(state: &AppState, principal: &Principal, n: u64) -> Result<(), ApiError> {
    let limit = state.security.config.quota_tasks_per_day;
    if limit == 0 || !principal.role.has_quota() {
        return Ok(());
    }
    let now = Utc::now();
    let today = now.date_naive();
    let usage = state
        .security
        .identities
        .consume_quota(&principal.subject, today, n, limit)
        .await?;
    if usage.granted {
        return Ok(());
    }
    let midnight = today
        .succ_opt()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .unwrap_or(now);
    let wait = (midnight - now).num_seconds().max(1) as u64;
    Err(ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "quota_exceeded",
        format!("the daily quota of {limit} tasks is used up; it resets at 00:00 UTC"),
    )
    .with_details(serde_json::json!({"limit": limit, "used": usage.used, "resets_at": midnight}))
    .with_retry_after(wait))
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
    cancel_task(&state, &principal, &id).await.map(Json)
}

/// Cancels a task the principal may cancel (REST and WebSocket).
pub(crate) async fn cancel_task(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> Result<Task, ApiError> {
    let task_id = parse_id(id)?;
    if !principal.can(Permission::TasksManage) {
        let task = visible_task(state, principal, id).await?;
        if task.created_by.as_deref() != Some(principal.subject.as_str()) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "only the task's creator (or an operator) may cancel it",
            ));
        }
    }
    match state.orchestrator.cancel(task_id).await? {
        CancelOutcome::Cancelled { task, .. } => Ok(task),
        CancelOutcome::NotFound => Err(ApiError::task_not_found(id)),
        CancelOutcome::AlreadyFinal(task) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "task_already_finished",
            format!("task `{id}` is {} and cannot be cancelled", task.status),
        )
        .with_details(serde_json::json!({"status": task.status}))),
    }
}

/// Requeue a failed or dead task now (granting one more attempt if it had none left).
#[utoipa::path(post, path = "/v1/tasks/{id}/retry", tag = "tasks",
    params(("id" = String, Path, description = "task id")),
    responses(
        (status = 200, description = "requeued", body = Task),
        (status = 404, description = "no such task", body = ErrorBody),
        (status = 409, description = "not failed or dead", body = ErrorBody),
    ))]
pub async fn retry(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Task>, ApiError> {
    match state.orchestrator.retry(parse_id(&id)?).await? {
        RetryOutcome::Requeued(task) => Ok(Json(task)),
        RetryOutcome::NotFound => Err(ApiError::task_not_found(&id)),
        RetryOutcome::NotRetryable(task) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "task_not_retryable",
            format!(
                "task `{id}` is {}; only failed or dead tasks can be retried",
                task.status
            ),
        )
        .with_details(serde_json::json!({"status": task.status}))),
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QueueCounts {
    /// Task counts per queue, then per status.
    pub queues: BTreeMap<String, BTreeMap<String, u64>>,
}

/// How many tasks each queue holds, per status.
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
    Ok(Json(QueueCounts { queues }))
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
