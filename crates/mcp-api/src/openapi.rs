//! The OpenAPI document: its info, schemas, tags and security scheme. The paths come from the
//! endpoint declarations (`crate::endpoint`), added when the router is assembled.

use crate::access::Access::Public;
use crate::endpoint::{Endpoint, endpoint};
use crate::state::AppState;
use axum::{Extension, Json};
use std::sync::Arc;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "MKWW MCP", description = "The Master Control Program: tasks, routing, memory and integrations for a community ecosystem."),
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
        crate::health::HealthReport,
        mcp_core::health::DependencyHealth,
        mcp_core::health::HealthState,
        crate::vrchat::VrchatStatus,
        crate::vcc::ProjectList,
        crate::vcc::RepositoryList,
        crate::vcc::RegisterProject,
        crate::vcc::AddRepository,
        mcp_core::vcc::Project,
        mcp_core::vcc::ProjectPackage,
        mcp_core::vcc::ProjectType,
        mcp_core::vcc::RepositoryInfo,
        crate::vrchat::SubmitCode,
        crate::discord::Interaction,
        crate::discord::InteractionResponse,
        crate::error::ErrorDetail,
        crate::session::LoginRequest,
        crate::session::RefreshRequest,
        crate::session::TokenResponse,
        mcp_core::principal::Principal,
        mcp_core::principal::CredentialKind,
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
        crate::integrations::PutIntegration,
        crate::integrations::IntegrationView,
        crate::integrations::IntegrationList,
        crate::integrations::SecretStatus,
        crate::integrations::BreakerSummary,
        crate::hooks::HookAccepted,
        mcp_core::webhooks::Webhook,
        mcp_core::webhooks::WebhookDelivery,
        mcp_core::webhooks::DeliveryStatus,
        crate::webhooks::CreateWebhook,
        crate::webhooks::CreatedWebhook,
        crate::webhooks::WebhookList,
        crate::webhooks::DeliveryList,
        crate::webhooks::Redelivery,
        mcp_core::schedule::Schedule,
        mcp_core::schedule::Missed,
        mcp_core::services::CreateSchedule,
        mcp_core::services::SchedulePatch,
        crate::schedules::ScheduleList,
        crate::schedules::FireTimes,
        mcp_core::queues::TaskLimit,
        crate::queues::QueueState,
        crate::queues::TaskLimitList,
        crate::queues::PutTaskLimit,
        mcp_core::queues::QueueLimit,
        crate::queues::PutQueueLimit,
        mcp_core::task::Progress,
        mcp_core::workflow::Workflow,
        mcp_core::workflow::WorkflowDetail,
        mcp_core::workflow::WorkflowStatus,
        mcp_core::workflow::OnFailure,
        mcp_core::workflow::CreateWorkflow,
        mcp_core::workflow::WorkflowTaskSpec,
        crate::workflows::WorkflowList,
        crate::workflows::AddTasks,
        crate::workflows::AddedTasks,
        crate::mcp::ProtectedResource,
        crate::settings::SettingsView,
        crate::settings::FlagList,
        crate::settings::MyFlags,
        mcp_core::settings::Setting,
        mcp_core::settings::Source,
        mcp_core::flags::Flag,
        mcp_core::flags::FlagEntry,
        crate::stats::TaskStats,
        mcp_core::stats::MinuteStats,
    )),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "tasks", description = "The task orchestrator"),
        (name = "auth", description = "Sessions: login, refresh, logout"),
        (name = "admin", description = "Users, API keys and the audit log"),
        (name = "memory", description = "Conversations, messages, search and context windows"),
        (name = "health", description = "Probes, dependency health and metrics"),
        (name = "realtime", description = "The WebSocket API"),
        (name = "integrations", description = "Integrations (listed with health and breakers, configured by admins) and the existing bots' routes: deploy triggers and LLM questions"),
        (name = "webhooks", description = "Outgoing webhooks: subscriptions, the delivery log, redelivery"),
        (name = "vcc", description = "VCC projects and VPM repositories (package changes, builds and deploys are tasks)"),
        (name = "vrchat", description = "VRChat's web API through the hub's account, and its session"),
        (name = "schedules", description = "Cron schedules that create tasks"),
        (name = "workflows", description = "Workflows: DAGs of tasks whose dependents run when their dependencies succeed"),
        (name = "mcp", description = "The Model Context Protocol endpoint for AI assistants (docs/mcp.md) and its protected-resource metadata"),
        (name = "settings", description = "Runtime settings and feature flags"),
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

pub(crate) fn endpoints() -> Vec<Endpoint<AppState>> {
    vec![endpoint(Public, utoipa_axum::routes!(openapi_json))]
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "health",
    responses((status = 200, description = "the OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn openapi_json(
    Extension(document): Extension<Arc<utoipa::openapi::OpenApi>>,
) -> Json<utoipa::openapi::OpenApi> {
    Json(document.as_ref().clone())
}
