//! The OpenAPI document, generated from the handlers' annotations and the types they exchange.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "MKWW MCP", description = "The Master Control Program: tasks, routing, memory and integrations for a community ecosystem."),
    paths(
        crate::health::healthz,
        crate::health::readyz,
        crate::health::metrics,
        crate::openapi::openapi_json,
        crate::session::login,
        crate::session::refresh,
        crate::session::logout,
        crate::session::me,
        crate::tasks::create,
        crate::tasks::create_batch,
        crate::tasks::list,
        crate::tasks::get,
        crate::tasks::cancel,
        crate::tasks::retry,
        crate::tasks::queues,
        crate::tasks::routes,
        crate::admin::create_api_key,
        crate::admin::list_api_keys,
        crate::admin::revoke_api_key,
        crate::admin::create_user,
        crate::admin::list_users,
        crate::admin::update_user,
        crate::admin::audit,
        crate::ws::upgrade,
        crate::memory::create_conversation,
        crate::memory::list_conversations,
        crate::memory::import,
        crate::memory::get_conversation,
        crate::memory::update_conversation,
        crate::memory::delete_conversation,
        crate::memory::post_messages,
        crate::memory::list_messages,
        crate::memory::update_message,
        crate::memory::delete_message,
        crate::memory::context,
        crate::memory::set_summary,
        crate::memory::export,
        crate::memory::search,
        crate::bots::deploy,
        crate::bots::ask_gemini,
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
        crate::tasks::RouteList,
        mcp_core::routing::RouteInfo,
        mcp_core::routing::WorkerInfo,
        mcp_core::routing::BreakerState,
        crate::error::ErrorBody,
        crate::error::ErrorDetail,
        crate::session::LoginRequest,
        crate::session::RefreshRequest,
        crate::session::TokenResponse,
        crate::auth::Principal,
        crate::auth::CredentialKind,
        crate::admin::CreateUser,
        crate::admin::CreatedUser,
        crate::admin::UserList,
        crate::admin::UpdateUser,
        crate::admin::CreateApiKey,
        crate::admin::CreatedApiKey,
        crate::admin::ApiKeyList,
        crate::admin::AuditPage,
        mcp_core::identity::User,
        mcp_core::identity::ApiKey,
        mcp_core::identity::AuditEvent,
        mcp_core::principal::Role,
        mcp_core::memory::Conversation,
        mcp_core::memory::Message,
        mcp_core::memory::MessageRole,
        mcp_core::memory::Summary,
        mcp_core::memory::SearchHit,
        mcp_core::memory::Context,
        mcp_core::memory::SummarizeRequest,
        crate::memory::CreateConversation,
        crate::memory::ConversationList,
        crate::memory::UpdateConversation,
        crate::memory::NewMessage,
        crate::memory::MessageBatch,
        crate::memory::MessageList,
        crate::memory::UpdateMessage,
        crate::memory::SetSummary,
        crate::memory::SearchResults,
        crate::bots::DeployRequest,
        crate::bots::DeployResponse,
        crate::bots::AskRequest,
        crate::bots::AskResponse,
    )),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "tasks", description = "The task orchestrator"),
        (name = "auth", description = "Sessions: login, refresh, logout"),
        (name = "admin", description = "Users, API keys and the audit log"),
        (name = "memory", description = "Conversations, messages, search and context windows"),
        (name = "health", description = "Probes and metrics"),
        (name = "realtime", description = "The WebSocket API"),
        (name = "integrations", description = "The existing bots' routes: deploy triggers and LLM questions"),
    )
)]
pub struct ApiDoc;

/// Every route takes `Authorization: Bearer <access token or API key>` (README's access table
/// says which roles may call which route; probes, login and this document need none).
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "health",
    responses((status = 200, description = "the OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
