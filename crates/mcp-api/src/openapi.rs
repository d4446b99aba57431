//! The OpenAPI document, generated from the handlers' annotations and the types they exchange.

use axum::Json;
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(title = "MKWW MCP", description = "The Master Control Program: tasks, routing, memory and integrations for a community ecosystem."),
    paths(
        crate::health::healthz,
        crate::health::readyz,
        crate::tasks::create,
        crate::tasks::create_batch,
        crate::tasks::list,
        crate::tasks::get,
        crate::tasks::cancel,
        crate::tasks::retry,
        crate::tasks::queues,
    ),
    components(schemas(
        mcp_core::Task,
        mcp_core::TaskStatus,
        mcp_core::TaskError,
        mcp_core::Backoff,
        mcp_core::task::CreateTask,
        crate::tasks::CreateBatch,
        crate::tasks::TaskList,
        crate::tasks::QueueCounts,
        crate::error::ErrorBody,
        crate::error::ErrorDetail,
    )),
    tags((name = "tasks", description = "The task orchestrator"), (name = "health", description = "Probes"))
)]
pub struct ApiDoc;

pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
