//! What every handler can reach: the shared state of the API and its configuration. It sits
//! below the handler modules so they depend on it and not on `lib.rs`, which assembles them.

use crate::auth::Security;
use crate::discord::config::DiscordInteractions;
use crate::discord::pending::Followups;
use crate::hooks::config::HooksConfig;
use crate::ws::config::WsConfig;
use mcp_core::Orchestrator;
use mcp_core::integrations::{IntegrationRuntime, IntegrationStore};
use mcp_core::secrets::SecretBox;
use mcp_core::webhooks::WebhookStore;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Limits of the HTTP API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Longest a request's body may take to arrive (408 `request_timeout` beyond).
    pub body_timeout: Duration,
    pub default_page_size: u32,
    pub max_page_size: u32,
    pub ws: WsConfig,
    /// `POST /deploy`: repository (`owner/name`) → the tasks that deploy it.
    pub deploy_targets: BTreeMap<String, Vec<mcp_core::task::CreateTask>>,
    /// `POST /ask-gemini`: how long the request waits for its `llm.generate` task.
    pub ask_timeout: Duration,
    /// `POST /v1/discord/interactions`: the public key and the slash commands.
    pub discord: DiscordInteractions,
    /// `POST /v1/hooks/{source}`: the incoming webhook sources.
    pub hooks: HooksConfig,
    /// `/mcp`: allowed hosts and origins, the public URL, the longest wait.
    pub mcp: crate::mcp::McpConfig,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_body_bytes: 1024 * 1024,
            body_timeout: Duration::from_secs(60),
            default_page_size: 50,
            max_page_size: 500,
            ws: WsConfig::default(),
            deploy_targets: BTreeMap::new(),
            ask_timeout: Duration::from_secs(60),
            discord: DiscordInteractions::default(),
            hooks: HooksConfig::default(),
            mcp: crate::mcp::McpConfig::default(),
        }
    }
}

/// Renders the Prometheus exposition text of the process's metrics.
pub type MetricsRenderer = Arc<dyn Fn() -> String + Send + Sync>;

/// What every handler can reach, behind one reference count: axum clones the router's state
/// for every request it serves, and a clone of [`AppStateParts`] is some 20 reference counts
/// (one a cancellation token whose clone takes a lock), each dropped again when the request
/// ends: 8-9 % of the server's time under `bench http`, on `/healthz` too. Fields read through
/// `Deref`; `DerefMut` copies the parts first if they are shared (`Arc::make_mut`), so changing
/// one clone never changes another, as when `AppState` was the parts themselves.
#[derive(Clone)]
pub struct AppState(Arc<AppStateParts>);

impl AppState {
    pub fn new(parts: AppStateParts) -> AppState {
        AppState(Arc::new(parts))
    }
}

impl From<AppStateParts> for AppState {
    fn from(parts: AppStateParts) -> AppState {
        AppState::new(parts)
    }
}

impl std::ops::Deref for AppState {
    type Target = AppStateParts;

    fn deref(&self) -> &AppStateParts {
        &self.0
    }
}

impl std::ops::DerefMut for AppState {
    fn deref_mut(&mut self) -> &mut AppStateParts {
        Arc::make_mut(&mut self.0)
    }
}

/// The fields of [`AppState`].
#[derive(Clone)]
pub struct AppStateParts {
    pub orchestrator: Arc<Orchestrator>,
    /// Every creation, read, list, cancel and retry of a task goes through it.
    pub tasks: Arc<mcp_core::services::TaskService>,
    pub config: Arc<ApiConfig>,
    pub security: Arc<Security>,
    /// Where every state change is published, and what WebSocket clients subscribe to.
    pub events: Arc<dyn mcp_core::events::EventBus>,
    /// Every use of conversations and their messages goes through it.
    pub memory: Arc<mcp_core::services::MemoryService>,
    /// Integrations of the configuration file and of the API (`/v1/integrations`).
    pub integrations: Arc<Integrations>,
    /// Outgoing webhooks; `None`: their routes answer 503 `webhooks_unavailable`.
    pub webhooks: Option<WebhookState>,
    /// `None`: no recorder installed (in-process tests); `/metrics` then answers 404.
    pub metrics: Option<MetricsRenderer>,
    /// VRChat's web API through the hub's account; `None`: `/v1/vrchat/*` answer 404
    /// `vrchat_not_configured`.
    pub vrchat: Option<Arc<dyn mcp_core::vrchat::VrchatPort>>,
    /// The VCC service; `None`: `/v1/vcc/*` answer 404 `vcc_not_configured`.
    pub vcc: Option<Arc<dyn mcp_core::vcc::VccPort>>,
    /// Runtime settings; `None`: `/v1/settings` answers 503 `settings_unavailable`.
    pub settings: Option<Arc<mcp_core::settings::Settings>>,
    /// Feature flags; `None`: `/v1/flags` answers 503 `settings_unavailable`.
    pub flags: Option<Arc<mcp_core::flags::Flags>>,
    /// The state of the node's dependencies: `/readyz`, `/v1/health`.
    pub health: Arc<mcp_core::health::HealthMonitor>,
    /// Where Discord follow-ups wait for their task; `None`: only in this node's memory.
    pub followups: Option<Followups>,
    /// Cancelled when the server begins to shut down: WebSocket connections close with 1001.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// The channels each principal's WebSocket connections hold on this node.
    pub ws_channels: Arc<crate::ws::ChannelClaims>,
    /// This node's WebSocket subscribers by channel, each channel with one forwarder.
    pub ws_fanout: Arc<crate::ws::Fanout>,
    /// Every use of schedules goes through it.
    pub schedules: Arc<mcp_core::services::ScheduleService>,
    /// Paused queues and rate limits per task type.
    pub queues: Arc<mcp_core::services::QueueService>,
}

/// The task service alone, for the hottest reads: extracting it costs one reference count, and
/// the handler holds nothing else of the state.
impl axum::extract::FromRef<AppState> for Arc<mcp_core::services::TaskService> {
    fn from_ref(state: &AppState) -> Self {
        state.tasks.clone()
    }
}

/// An integration of the configuration file, described without its secrets.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfiguredIntegration {
    pub name: String,
    pub kind: String,
    /// Non-secret settings (base URLs, model, service names).
    pub settings: Value,
    /// The names of the secrets it has (`token`, `api_key`, …).
    pub secrets: Vec<String>,
}

/// What the integration routes work with. The default has no store: the routes answer 503
/// `integrations_unavailable` and list only the configuration file's integrations.
#[derive(Clone, Default)]
pub struct Integrations {
    pub store: Option<Arc<dyn IntegrationStore>>,
    /// Seals secrets at rest; without it nothing can be stored.
    pub secrets: Option<SecretBox>,
    /// The configuration file's integrations, read-only.
    pub configured: Vec<ConfiguredIntegration>,
    /// Health checks and live updates of the running adapters; `None`: stored integrations take
    /// effect at the next start and health is `unknown`.
    pub runtime: Option<Arc<dyn IntegrationRuntime>>,
}

/// What the webhook routes need.
#[derive(Clone)]
pub struct WebhookState {
    pub store: Arc<dyn WebhookStore>,
    pub secrets: Arc<SecretBox>,
    /// The outbound guard's policy (`outbound_allow_private`, `outbound_allow`): which targets
    /// a webhook may have.
    pub outbound: Arc<mcp_core::outbound::Policy>,
    /// Attempts of each delivery task.
    pub max_attempts: i32,
}
