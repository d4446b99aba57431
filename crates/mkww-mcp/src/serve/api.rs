//! The API's state built from the configuration: its limits, the security guard (tokens,
//! rate limits, quotas) and the metrics renderer.

use crate::config::Config;
use anyhow::Context;
use mcp_api::token::parse_ttl;
use mcp_api::ws::WsConfig;
use mcp_api::{
    ApiConfig, AppState, AppStateParts, HooksConfig, LiveLimits, MetricsRenderer, RateLimits,
    Security, SecurityConfig,
};
use mcp_core::Orchestrator;
use mcp_core::events::EventBus;
use mcp_core::identity::IdentityStore;
use mcp_core::limiter::{Limiter, Quota};
use mcp_core::memory::MemoryStore;
use mcp_core::queues::QueueStore;
use mcp_core::revocations::{PRUNE_MARGIN, RevocationConfig, Revocations};
use mcp_core::schedule::ScheduleStore;
use mcp_core::services::{MemoryLimits, MemoryService, TaskLimits, TaskService};
use mcp_core::services::{QueueService, ScheduleService, SchedulerConfig};
use std::sync::Arc;
use std::time::Duration;

pub fn api_state(
    config: &Config,
    orchestrator: Arc<Orchestrator>,
    security: Security,
    events: Arc<dyn EventBus>,
    memory: Arc<dyn MemoryStore>,
    metrics: Option<MetricsRenderer>,
    flow: (Arc<dyn ScheduleStore>, Arc<dyn QueueStore>),
) -> AppState {
    let tasks = Arc::new(TaskService::new(
        orchestrator.clone(),
        security.identities.clone(),
        TaskLimits {
            max_batch: config.max_batch,
            quota_tasks_per_day: security.config.quota_tasks_per_day,
            priority_ceiling: config.task_priority_ceiling,
            max_timeout_ms_user: config.max_task_timeout_ms_user,
            max_timeout_ms_service: config.max_task_timeout_ms_service,
        },
    ));
    let (schedules, queues) = flow;
    let schedules = Arc::new(ScheduleService::new(
        schedules,
        tasks.clone(),
        events.clone(),
        SchedulerConfig {
            grace: Config::ms(config.schedule_grace_ms),
            poll: Config::ms(config.schedule_poll_ms),
        },
    ));
    let queues = Arc::new(QueueService::new(
        queues,
        orchestrator.clone(),
        events.clone(),
    ));
    // Running handlers add their children to their workflow through the workflow service.
    orchestrator.serve_children(Arc::new(mcp_core::services::WorkflowService::new(
        tasks.clone(),
        orchestrator.clone(),
    )));
    let memory = Arc::new(MemoryService::new(
        memory,
        events.clone(),
        MemoryLimits {
            max_message_bytes: config.memory_max_message_bytes,
            default_context_tokens: config.memory_context_tokens,
            max_import_bytes: config.memory_max_import_bytes,
            max_batch: config.max_batch,
            ..MemoryLimits::default()
        },
    ));
    AppState::new(AppStateParts {
        orchestrator,
        tasks,
        config: Arc::new(ApiConfig {
            max_body_bytes: config.max_body_bytes,
            body_timeout: Config::ms(config.http_body_timeout_ms),
            ws: WsConfig {
                auth_timeout: Config::ms(config.ws_auth_timeout_ms),
                ping_interval: Config::ms(config.ws_ping_interval_ms.max(100)),
                idle_timeout: Config::ms(config.ws_idle_timeout_ms),
                send_queue: config.ws_send_queue.max(1),
                max_frame_bytes: config.ws_max_frame_bytes,
                max_subscriptions: config.ws_max_subscriptions,
                max_channels_per_principal: config.ws_max_channels_per_principal,
                max_publish_bytes: config.ws_max_publish_bytes,
                publish_per_minute: config.ws_publish_per_minute.max(1),
                allowed_origins: config.ws_allowed_origins.clone(),
                ops_per_second: config.ws_ops_per_second.max(1),
                refresh_notice: Config::ms(config.ws_refresh_notice_ms),
                open_namespaces: config.ws_open_namespaces.clone(),
            },
            deploy_targets: config
                .deploy_targets
                .iter()
                .map(|(repo, targets)| {
                    let tasks = targets.iter().map(|target| target.task(repo)).collect();
                    (repo.clone(), tasks)
                })
                .collect(),
            ask_timeout: Config::ms(config.ask_timeout_ms),
            discord: mcp_api::discord::DiscordInteractions {
                // Checked when the configuration was loaded.
                public_key: config.discord_public_key().ok().flatten(),
                commands: config.discord.commands.clone(),
                ..Default::default()
            },
            hooks: HooksConfig::new(
                Arc::new(mcp_integrations::hooks::HookSources::new(
                    config.hooks.clone(),
                    Duration::from_secs(config.hooks_tolerance_secs),
                )),
                config.hooks_max_body_bytes,
            ),
            mcp: config.mcp(),
            ..ApiConfig::default()
        }),
        security: Arc::new(security),
        events,
        memory,
        // `serve` sets the store, the SecretBox and the runtime.
        integrations: Arc::default(),
        webhooks: None,
        followups: None,
        vrchat: None,
        vcc: None,
        // `serve` sets both.
        settings: None,
        flags: None,
        metrics,
        // `serve` sets the node's monitor; without one every dependency counts as up.
        health: Arc::default(),
        shutdown: tokio_util::sync::CancellationToken::new(),
        ws_channels: Arc::default(),
        ws_fanout: Arc::new(
            mcp_api::ws::Fanout::new(config.ws_fanout_threads).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot start the WebSocket fan-out's threads; it shares the node's runtime");
                mcp_api::ws::Fanout::default()
            }),
        ),
        schedules,
        queues,
    })
}

/// The node's deny-list of revoked credentials, nudged through `events` when given.
pub fn revocations(
    config: &Config,
    identities: Arc<dyn IdentityStore>,
    events: Option<Arc<dyn EventBus>>,
) -> Arc<Revocations> {
    Arc::new(Revocations::new(
        identities,
        events,
        RevocationConfig {
            poll_interval: Config::ms(config.revocation_poll_ms),
            // An unreadable lifetime keeps every entry (and `security` refuses to start).
            keep_for: parse_ttl(&config.access_token_ttl)
                .map_or(Duration::MAX, |ttl| ttl.saturating_add(PRUNE_MARGIN)),
            ..RevocationConfig::default()
        },
    ))
}

/// Authentication, permissions and limits, from the configuration.
pub fn security(
    config: &Config,
    identities: Arc<dyn IdentityStore>,
    limiter: Arc<dyn Limiter>,
    revocations: Arc<Revocations>,
) -> anyhow::Result<Security> {
    Ok(Security {
        identities,
        tokens: config.tokens()?,
        limiter,
        revocations,
        api_keys: mcp_api::key_cache::KeyCache::default(),
        config: SecurityConfig {
            access_ttl: parse_ttl(&config.access_token_ttl)
                .map_err(anyhow::Error::msg)
                .context("access_token_ttl")?,
            refresh_ttl: parse_ttl(&config.refresh_token_ttl)
                .map_err(anyhow::Error::msg)
                .context("refresh_token_ttl")?,
            trusted_proxies: config.trusted_proxies()?,
            limits: LiveLimits::new(rate_limits(config)),
            quota_tasks_per_day: config.quota_tasks_per_day,
            metrics_token: config.metrics_token.clone().filter(|t| !t.is_empty()),
        },
    })
}

/// The per-minute rate limits of the configuration.
pub fn rate_limits(config: &Config) -> RateLimits {
    let minute = Quota::per_minute;
    RateLimits {
        ip: minute(config.rate_limit_ip_per_minute),
        auth: minute(config.rate_limit_auth_per_minute),
        login: minute(config.rate_limit_login_per_minute),
        login_username: minute(config.rate_limit_login_username_per_minute),
        read: minute(config.rate_limit_read_per_minute),
        write: minute(config.rate_limit_write_per_minute),
    }
}

/// Installs the Prometheus recorder (once per process), before anything records: a handle
/// taken earlier would stay a no-op.
pub fn metrics_renderer() -> Option<MetricsRenderer> {
    let installed = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(super::metrics::BUCKETS)
        .and_then(|builder| builder.install_recorder());
    match installed {
        Ok(handle) => {
            super::metrics::describe();
            Some(Arc::new(move || handle.render()))
        }
        Err(e) => {
            tracing::warn!(error = %e, "metrics disabled");
            None
        }
    }
}
