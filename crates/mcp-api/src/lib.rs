//! API layer of MKWW MCP: the axum router with the REST API under `/v1`, health probes, metrics
//! and the generated OpenAPI document. Cross-cutting work (request ids, request logs, rate
//! limits, authentication and permissions, body limits, panic catching, JSON errors) is done by
//! layers, so handlers stay small.

pub mod access;
mod admin;
pub mod auth;
mod bots;
pub mod discord;
mod error;
mod extract;
mod health;
mod hooks;
pub mod integrations;
mod memory;
mod openapi;
mod request_id;
mod session;
mod tasks;
pub mod token;
mod vcc;
mod vrchat;
mod webhooks;
pub mod ws;

pub use admin::check_username;
pub use auth::{Principal, RateLimits, Security, SecurityConfig};
pub use error::{ApiError, ErrorBody, ErrorDetail};
pub use hooks::HooksConfig;
pub use memory::MemoryLimits;
pub use openapi::ApiDoc;
pub use request_id::REQUEST_ID_HEADER;
pub use webhooks::WebhookState;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, header};
use axum::routing::{delete, get, patch, post};
use mcp_core::Orchestrator;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tower_http::set_header::SetResponseHeaderLayer;

/// Limits of the HTTP API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Most tasks in one `POST /v1/tasks/batch`.
    pub max_batch: usize,
    pub default_page_size: u32,
    pub max_page_size: u32,
    pub ws: ws::WsConfig,
    pub memory: MemoryLimits,
    /// `POST /deploy`: repository (`owner/name`) → the tasks that deploy it.
    pub deploy_targets: BTreeMap<String, Vec<mcp_core::task::CreateTask>>,
    /// `POST /ask-gemini`: how long the request waits for its `llm.generate` task.
    pub ask_timeout: Duration,
    /// `POST /v1/discord/interactions`: the public key and the slash commands.
    pub discord: discord::DiscordInteractions,
    /// `POST /v1/hooks/{source}`: the incoming webhook sources.
    pub hooks: HooksConfig,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_body_bytes: 1024 * 1024,
            max_batch: 1000,
            default_page_size: 50,
            max_page_size: 500,
            ws: ws::WsConfig::default(),
            memory: MemoryLimits::default(),
            deploy_targets: BTreeMap::new(),
            ask_timeout: Duration::from_secs(60),
            discord: discord::DiscordInteractions::default(),
            hooks: HooksConfig::default(),
        }
    }
}

/// Renders the Prometheus exposition text of the process's metrics.
pub type MetricsRenderer = Arc<dyn Fn() -> String + Send + Sync>;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub orchestrator: Arc<Orchestrator>,
    pub config: Arc<ApiConfig>,
    pub security: Arc<Security>,
    /// Where every state change is published, and what WebSocket clients subscribe to.
    pub events: Arc<dyn mcp_core::events::EventBus>,
    /// Conversations and messages.
    pub memory: Arc<dyn mcp_core::memory::MemoryStore>,
    /// Integrations of the configuration file and of the API (`/v1/integrations`).
    pub integrations: Arc<integrations::Integrations>,
    /// Outgoing webhooks; `None`: their routes answer 503 `webhooks_unavailable`.
    pub webhooks: Option<WebhookState>,
    /// `None`: no recorder installed (in-process tests); `/metrics` then answers 404.
    pub metrics: Option<MetricsRenderer>,
    /// VRChat's web API through the hub's account; `None`: `/v1/vrchat/*` answer 404
    /// `vrchat_not_configured`.
    pub vrchat: Option<Arc<dyn mcp_core::vrchat::VrchatPort>>,
    /// The VCC service; `None`: `/v1/vcc/*` answer 404 `vcc_not_configured`.
    pub vcc: Option<Arc<dyn mcp_core::vcc::VccPort>>,
    /// The state of the node's dependencies: `/readyz`, `/v1/health`.
    pub health: Arc<mcp_core::health::HealthMonitor>,
    /// Where Discord follow-ups wait for their task; `None`: only in this node's memory.
    pub followups: Option<discord::Followups>,
    /// Cancelled when the server begins to shut down: WebSocket connections close with 1001.
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// The whole HTTP API.
pub fn router(state: AppState) -> Router {
    let max_body = state.config.max_body_bytes;
    let max_import = state.config.memory.max_import_bytes;
    let max_hook = state.config.hooks.max_body_bytes;
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/v1/health", get(health::health))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/metrics", get(health::metrics))
        .route("/v1/auth/login", post(session::login))
        .route("/v1/auth/refresh", post(session::refresh))
        .route("/v1/auth/logout", post(session::logout))
        .route("/v1/auth/me", get(session::me))
        .route("/v1/tasks", post(tasks::create).get(tasks::list))
        .route("/v1/tasks/batch", post(tasks::create_batch))
        .route("/v1/tasks/{id}", get(tasks::get))
        .route("/v1/tasks/{id}/cancel", post(tasks::cancel))
        .route("/v1/tasks/{id}/retry", post(tasks::retry))
        .route("/v1/queues", get(tasks::queues))
        .route("/v1/routes", get(tasks::routes))
        .route(
            "/v1/api-keys",
            post(admin::create_api_key).get(admin::list_api_keys),
        )
        .route("/v1/api-keys/{id}", delete(admin::revoke_api_key))
        .route("/v1/users", post(admin::create_user).get(admin::list_users))
        .route("/v1/users/{id}", patch(admin::update_user))
        .route("/v1/audit", get(admin::audit))
        .route("/v1/ws", get(ws::upgrade))
        .route(
            "/v1/conversations",
            post(memory::create_conversation).get(memory::list_conversations),
        )
        .route(
            "/v1/conversations/import",
            post(memory::import).layer(DefaultBodyLimit::max(max_import)),
        )
        .route(
            "/v1/conversations/{id}",
            get(memory::get_conversation)
                .patch(memory::update_conversation)
                .delete(memory::delete_conversation),
        )
        .route(
            "/v1/conversations/{id}/messages",
            post(memory::post_messages).get(memory::list_messages),
        )
        .route(
            "/v1/conversations/{id}/messages/{message_id}",
            patch(memory::update_message).delete(memory::delete_message),
        )
        .route("/v1/conversations/{id}/context", get(memory::context))
        .route("/v1/conversations/{id}/summary", post(memory::set_summary))
        .route("/v1/conversations/{id}/export", get(memory::export))
        .route("/v1/search/messages", get(memory::search))
        .route("/v1/integrations", get(integrations::list))
        .route(
            "/v1/integrations/{name}",
            get(integrations::get)
                .put(integrations::put)
                .delete(integrations::delete),
        )
        .route("/v1/webhooks", post(webhooks::create).get(webhooks::list))
        .route("/v1/webhooks/{id}", delete(webhooks::delete))
        .route("/v1/webhooks/{id}/deliveries", get(webhooks::deliveries))
        .route(
            "/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver",
            post(webhooks::redeliver),
        )
        .route(
            "/v1/hooks/{source}",
            post(hooks::receive).layer(DefaultBodyLimit::max(max_hook)),
        )
        .route("/v1/discord/interactions", post(discord::interactions))
        .route("/v1/vrchat/status", get(vrchat::status))
        .route("/v1/vrchat/auth/login", post(vrchat::login))
        .route("/v1/vrchat/auth/code", post(vrchat::submit_code))
        .route("/v1/vrchat/users/me", get(vrchat::current_user))
        .route("/v1/vrchat/users/{id}", get(vrchat::user))
        .route("/v1/vrchat/worlds/{id}", get(vrchat::world))
        .route("/v1/vrchat/instances/{location}", get(vrchat::instance))
        .route("/v1/vrchat/friends/online", get(vrchat::friends_online))
        .route(
            "/v1/vcc/projects",
            get(vcc::list_projects).post(vcc::register_project),
        )
        .route(
            "/v1/vcc/projects/{id}",
            get(vcc::get_project).delete(vcc::unregister_project),
        )
        .route(
            "/v1/vcc/repositories",
            get(vcc::list_repositories).post(vcc::add_repository),
        )
        .route(
            "/v1/vcc/repositories/refresh",
            post(vcc::refresh_repositories),
        )
        .route("/v1/vcc/repositories/{id}", delete(vcc::remove_repository))
        .route("/deploy", post(bots::deploy))
        .route("/ask-gemini", post(bots::ask_gemini))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::guard,
        ))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::limit_ip,
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            error::panic_response,
        ))
        // Answers carry credentials and private data: no cache may keep them, and no browser may
        // guess another content type than the one declared.
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(axum::middleware::from_fn(request_id::request_id))
        .with_state(state)
}
