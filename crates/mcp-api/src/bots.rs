//! The routes the ecosystem's existing bots call, at the paths they already use (no `/v1`):
//! `POST /deploy` enqueues a repository's deploy targets, `POST /ask-gemini` runs one
//! `llm.generate` task and waits for its answer. Both only create tasks, so both need
//! `tasks:create` and count against the daily quota; the tasks stay in the history like any other.

use crate::access::Access::Requires;
use crate::auth::Principal;
use crate::endpoint::{Endpoint, endpoint};
use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiJson;
use crate::request_id;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use mcp_core::TaskStatus;
use mcp_core::principal::Permission;
use mcp_core::services::Creator;
use mcp_core::task::CreateTask;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::routes;
use uuid::Uuid;

/// The routes of this module and who may call them.
pub(crate) fn endpoints() -> Vec<Endpoint<AppState>> {
    vec![
        // The existing bots' routes, at their historical paths.
        endpoint(Requires(Permission::TasksCreate), routes!(deploy)),
        endpoint(Requires(Permission::TasksCreate), routes!(ask_gemini)),
    ]
}

/// The task type `POST /ask-gemini` creates.
pub const LLM_TASK_TYPE: &str = "llm.generate";

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// `owner/name`, a key of the `deploy_targets` configuration.
    pub repo: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeployResponse {
    /// One task per configured target, in the configured order.
    pub tasks: Vec<Uuid>,
}

/// Deploy a repository: one task per configured target (`github.dispatch`, `render.deploy`).
#[utoipa::path(post, path = "/deploy", tag = "integrations", request_body = DeployRequest,
    responses(
        (status = 202, description = "the deploy tasks are queued", body = DeployResponse),
        (status = 404, description = "`unknown_repo`: no deploy targets for this repository", body = ErrorBody),
        (status = 422, description = "`unknown_task_type`: a target's integration is not configured", body = ErrorBody),
    ))]
pub async fn deploy(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<DeployRequest>,
) -> Result<(StatusCode, Json<DeployResponse>), ApiError> {
    let targets = state
        .config
        .deploy_targets
        .get(&request.repo)
        .filter(|targets| !targets.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_repo",
                format!("no deploy targets are configured for `{}`", request.repo),
            )
            .with_details(json!({"repo": request.repo}))
        })?;
    let correlation = request_id::current();
    let inserted = state
        .tasks
        .create_all(
            Creator::Principal(&principal),
            targets.iter().cloned(),
            correlation.as_deref(),
        )
        .await?;
    tracing::info!(repo = %request.repo, tasks = inserted.len(), "deploy queued");
    Ok((
        StatusCode::ACCEPTED,
        Json(DeployResponse {
            tasks: inserted.into_iter().map(|i| i.task.id).collect(),
        }),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AskRequest {
    pub prompt: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AskResponse {
    /// The model's answer.
    pub response: String,
}

/// Ask the configured LLM: runs an `llm.generate` task and waits (up to `ask_timeout_ms`) for it.
#[utoipa::path(post, path = "/ask-gemini", tag = "integrations", request_body = AskRequest,
    responses(
        (status = 200, description = "the answer", body = AskResponse),
        (status = 422, description = "`invalid_payload` (empty prompt), or `unknown_task_type`: no LLM is configured", body = ErrorBody),
        (status = 502, description = "`llm_failed`: the task ended dead or cancelled; details carry its error", body = ErrorBody),
        (status = 504, description = "`llm_timeout`: no answer in time; the task goes on, its id is in the details", body = ErrorBody),
    ))]
pub async fn ask_gemini(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<AskRequest>,
) -> Result<Json<AskResponse>, ApiError> {
    let correlation = request_id::current();
    let creator = Creator::Principal(&principal);
    let create = CreateTask {
        task_type: LLM_TASK_TYPE.to_owned(),
        payload: Some(json!({"prompt": request.prompt})),
        ..CreateTask::default()
    };
    let task = state
        .tasks
        .prepare_one(creator, create, correlation.as_deref())
        .await?;
    let id = task.id;
    // Subscribed before the insert, so no transition can come first. Without a bus, polling
    // alone still finds the outcome.
    let live = match state.events.subscribe(&format!("task:{id}")).await {
        Ok(live) => Some(live),
        Err(e) => {
            tracing::warn!(error = %e, "ask-gemini waits without events");
            None
        }
    };
    state.tasks.insert(creator, vec![task]).await?;
    let timeout = state.config.ask_timeout;
    let task = match tokio::time::timeout(timeout, state.tasks.finished(id, live)).await {
        Ok(task) => task?,
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "llm_timeout",
                format!(
                    "the LLM did not answer within {} ms; task `{id}` goes on",
                    timeout.as_millis()
                ),
            )
            .with_details(json!({"task_id": id})));
        }
    };
    match task.status {
        TaskStatus::Succeeded => {
            let text = task
                .result
                .as_ref()
                .and_then(|r| r.get("text"))
                .and_then(|t| t.as_str())
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_GATEWAY,
                        "llm_failed",
                        "the LLM task succeeded without a `text` result",
                    )
                    .with_details(json!({"task_id": id}))
                })?;
            Ok(Json(AskResponse {
                response: text.to_owned(),
            }))
        }
        status => {
            let message = task
                .error
                .as_ref()
                .map(|e| e.message.clone())
                .unwrap_or_else(|| format!("the task is {status}"));
            Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "llm_failed",
                format!("the LLM task ended {status}: {message}"),
            )
            .with_details(json!({"task_id": id, "status": status, "error": task.error})))
        }
    }
}
