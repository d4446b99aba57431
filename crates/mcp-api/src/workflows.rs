//! Workflow routes: create a DAG of tasks, read it with every task's state, list, cancel, and
//! add tasks to it from one of its running tasks (external workers' children). The rules are
//! the workflow service's (`mcp_core::services::workflows`).

use crate::access::Access::Requires;
use crate::auth::Principal;
use crate::endpoint::{Endpoint, endpoint};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiQuery, page_limit, parse_cursor};
use crate::request_id;
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use mcp_core::Task;
use mcp_core::principal::Permission;
use mcp_core::services::{Creator, WorkflowService, WorkflowServiceError};
use mcp_core::workflow::{
    AddWorkflowTasks, CreateWorkflow, Workflow, WorkflowDetail, WorkflowTaskSpec,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

/// The routes of this module and who may call them.
pub(crate) fn endpoints() -> Vec<Endpoint<AppState>> {
    vec![
        endpoint(Requires(Permission::WorkflowsCreate), routes!(create)),
        endpoint(Requires(Permission::WorkflowsReadOwn), routes!(list)),
        endpoint(Requires(Permission::WorkflowsReadOwn), routes!(get)),
        endpoint(Requires(Permission::WorkflowsCancelOwn), routes!(cancel)),
        endpoint(Requires(Permission::TasksCreate), routes!(add_tasks)),
    ]
}

/// The service over this node's task service and orchestrator (two `Arc`s: built per call).
fn service(state: &AppState) -> WorkflowService {
    WorkflowService::new(state.tasks.clone(), state.orchestrator.clone())
}

impl From<WorkflowServiceError> for ApiError {
    fn from(e: WorkflowServiceError) -> Self {
        let message = e.to_string();
        match e {
            WorkflowServiceError::Task(e) => e.into(),
            WorkflowServiceError::Invalid(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_workflow",
                message,
            ),
            WorkflowServiceError::NotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "workflow_not_found", message)
            }
            WorkflowServiceError::Forbidden(_) => {
                ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
            }
            WorkflowServiceError::AlreadyFinished { status, .. } => {
                ApiError::new(StatusCode::CONFLICT, "workflow_already_finished", message)
                    .with_details(serde_json::json!({"status": status}))
            }
            WorkflowServiceError::NotRunning { status, .. } => {
                ApiError::new(StatusCode::CONFLICT, "workflow_not_running", message)
                    .with_details(serde_json::json!({"status": status}))
            }
        }
    }
}

/// Create a workflow: its tasks, each with a `key` and the keys it `depends_on`. 201 with the
/// workflow and its tasks (those with dependencies are `waiting`).
#[utoipa::path(post, path = "/v1/workflows", tag = "workflows", request_body = CreateWorkflow,
    responses(
        (status = 201, description = "created", body = WorkflowDetail),
        (status = 400, description = "malformed JSON", body = ErrorBody),
        (status = 422, description = "`invalid_workflow` (cycle, unknown or duplicate key, too many or no tasks), or an invalid task", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<CreateWorkflow>,
) -> Result<(StatusCode, Json<WorkflowDetail>), ApiError> {
    let correlation = request_id::current();
    let detail = service(&state)
        .create(
            Creator::Principal(&principal),
            request,
            correlation.as_deref(),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(detail)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page size (default 50, at most 500).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A page of workflows (without their tasks), newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowList {
    pub workflows: Vec<Workflow>,
    pub next_cursor: Option<String>,
}

/// List the workflows one may see (one's own; every one with `workflows:read:any`), newest
/// first.
#[utoipa::path(get, path = "/v1/workflows", tag = "workflows", params(ListQuery),
    responses(
        (status = 200, description = "a page of workflows", body = WorkflowList),
        (status = 400, description = "bad limit or cursor", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<WorkflowList>, ApiError> {
    let limit = page_limit(&state.config, query.limit)?;
    let before = parse_cursor(query.cursor.as_deref())?;
    let page = service(&state).list(&principal, before, limit).await?;
    Ok(Json(WorkflowList {
        workflows: page.workflows,
        next_cursor: page.next_cursor.map(|id| id.to_string()),
    }))
}

/// Read a workflow with every task's state.
#[utoipa::path(get, path = "/v1/workflows/{id}", tag = "workflows",
    params(("id" = String, Path, description = "workflow id")),
    responses(
        (status = 200, description = "the workflow and its tasks", body = WorkflowDetail),
        (status = 404, description = "no such workflow (or not yours)", body = ErrorBody),
    ))]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<WorkflowDetail>, ApiError> {
    Ok(Json(service(&state).get(&principal, &id).await?))
}

/// Cancel what has not finished of a workflow: waiting and queued tasks never run, running ones
/// are signalled.
#[utoipa::path(post, path = "/v1/workflows/{id}/cancel", tag = "workflows",
    params(("id" = String, Path, description = "workflow id")),
    responses(
        (status = 200, description = "cancelled", body = WorkflowDetail),
        (status = 403, description = "not the workflow's creator", body = ErrorBody),
        (status = 404, description = "no such workflow", body = ErrorBody),
        (status = 409, description = "`workflow_already_finished`", body = ErrorBody),
    ))]
pub async fn cancel(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<WorkflowDetail>, ApiError> {
    Ok(Json(service(&state).cancel(&principal, &id).await?))
}

/// Tasks one of a workflow's running tasks adds to it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddTasks {
    /// The running task of the workflow that adds them (its handler or worker).
    pub task_id: String,
    /// As in a workflow's create body.
    pub tasks: Vec<WorkflowTaskSpec>,
}

/// The tasks added.
#[derive(Debug, Serialize, ToSchema)]
pub struct AddedTasks {
    pub tasks: Vec<Task>,
}

/// Add tasks to a running workflow from one of its running tasks: for its external worker
/// (`tasks:run`) or whoever may see the workflow. `depends_on` may name the workflow's keys.
#[utoipa::path(post, path = "/v1/workflows/{id}/tasks", tag = "workflows",
    params(("id" = String, Path, description = "workflow id")),
    request_body = AddTasks,
    responses(
        (status = 201, description = "added", body = AddedTasks),
        (status = 404, description = "no such workflow", body = ErrorBody),
        (status = 409, description = "`workflow_not_running`", body = ErrorBody),
        (status = 422, description = "`invalid_workflow`, or an invalid task", body = ErrorBody),
    ))]
pub async fn add_tasks(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<AddTasks>,
) -> Result<(StatusCode, Json<AddedTasks>), ApiError> {
    let tasks = service(&state)
        .add_tasks_for(
            &principal,
            &id,
            &request.task_id,
            AddWorkflowTasks {
                tasks: request.tasks,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(AddedTasks { tasks })))
}
