//! Wiring: opens the configured store, builds the handler registry and the orchestrator, serves
//! the API, and shuts everything down gracefully on SIGINT/SIGTERM.

use crate::config::{Config, Database};
use crate::integrations::{LiveIntegrations, SealedSessionFile};
use anyhow::Context;
use mcp_api::MemoryLimits;
use mcp_api::token::parse_ttl;
use mcp_api::ws::WsConfig;
use mcp_api::{
    ApiConfig, AppState, HooksConfig, MetricsRenderer, RateLimits, Security, SecurityConfig,
};
use mcp_core::credentials;
use mcp_core::events::{BusConfig, EventBus, MemoryBus};
use mcp_core::followups::FollowupStore;
use mcp_core::health::{DATABASE, Dependency, Failure, FnProbe, Guarded, HealthConfig};
use mcp_core::health::{HealthMonitor, Probe};
use mcp_core::identity::{AuditEvent, IdentityStore, User};
use mcp_core::integrations::IntegrationStore;
use mcp_core::limiter::{Limiter, MemoryLimiter, Quota};
use mcp_core::memory::{MemoryStore, SUMMARIZE_TASK, Summarizer};
use mcp_core::principal::Role;
use mcp_core::routing::{BreakerConfig, WorkerDirectory};
use mcp_core::secrets::SecretBox;
use mcp_core::task::TaskDefaults;
use mcp_core::webhooks::{DELIVER_TASK, Outbox, WebhookStore};
use mcp_core::{Backoff, HandlerRegistry, Orchestrator, OrchestratorConfig, StoreError, TaskStore};
use mcp_integrations::Adapter;
use mcp_integrations::http::{HttpAdapter, HttpConfig};
use mcp_integrations::vcc::{VccAdapter, VccConfig, VccService};
use mcp_integrations::webhooks::{
    DeliverHandler, DispatchSettings, Dispatcher, RecordingWebhooks, WebhookConfig,
};
use mcp_integrations::{DeployAdapter, DeployConfig, LlmAdapter, LlmConfig};
use mcp_integrations::{DiscordAdapter, DiscordConfig};
use mcp_integrations::{OscAdapter, OscConfig};
use mcp_integrations::{VrchatAdapter, VrchatClient, VrchatConfig};
use mcp_persistence::{
    PgTaskStore, RedisBus, RedisLimiter, RedisOptions, SqliteOptions, SqliteTaskStore,
};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

/// How long `serve` keeps trying to reach PostgreSQL at start before giving up.
const CONNECT_PATIENCE: Duration = Duration::from_secs(30);

pub fn init_logging(config: &Config) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = if config.log_format == "pretty" {
        builder.try_init()
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    };
}

/// The database, through the ports that use it.
#[derive(Clone)]
pub struct Stores {
    pub tasks: Arc<dyn TaskStore>,
    pub identities: Arc<dyn IdentityStore>,
    pub memory: Arc<dyn MemoryStore>,
    pub integrations: Arc<dyn IntegrationStore>,
    pub webhooks: Arc<dyn WebhookStore>,
    pub workers: Arc<dyn WorkerDirectory>,
    /// The health monitor's probe of the database, past the breaker.
    pub probe: Arc<dyn Probe>,
    /// The webhook outbox the task transitions write.
    pub outbox: Arc<dyn Outbox>,
    /// Pending Discord follow-ups.
    pub followups: Arc<dyn FollowupStore>,
}

impl Stores {
    fn of<
        S: TaskStore
            + IdentityStore
            + MemoryStore
            + IntegrationStore
            + WebhookStore
            + WorkerDirectory
            + Outbox
            + FollowupStore,
    >(
        store: Arc<S>,
        probe: Arc<dyn Probe>,
    ) -> Stores {
        Stores {
            outbox: store.clone(),
            followups: store.clone(),
            tasks: store.clone(),
            workers: store.clone(),
            identities: store.clone(),
            integrations: store.clone(),
            webhooks: store.clone(),
            memory: store,
            probe,
        }
    }

    /// The same ports behind the database's breaker: while `database` is down they answer
    /// `Unavailable` at once (503 `database_unavailable`) instead of waiting on the pool.
    pub fn guarded(self, database: &Dependency) -> Stores {
        Stores {
            tasks: Arc::new(Guarded::new(self.tasks, database.clone())),
            identities: Arc::new(Guarded::new(self.identities, database.clone())),
            memory: Arc::new(Guarded::new(self.memory, database.clone())),
            integrations: Arc::new(Guarded::new(self.integrations, database.clone())),
            webhooks: Arc::new(Guarded::new(self.webhooks, database.clone())),
            workers: Arc::new(Guarded::new(self.workers, database.clone())),
            outbox: Arc::new(Guarded::new(self.outbox, database.clone())),
            followups: Arc::new(Guarded::new(self.followups, database.clone())),
            probe: self.probe,
        }
    }
}

/// A database probe from a check of the store's.
fn database_probe<S, F>(store: &Arc<S>, check: F) -> Arc<dyn Probe>
where
    S: Send + Sync + 'static,
    F: Fn(Arc<S>) -> futures::future::BoxFuture<'static, Result<(), StoreError>>
        + Send
        + Sync
        + 'static,
{
    let store = store.clone();
    Arc::new(FnProbe::new(DATABASE, true, move || {
        let checked = check(store.clone());
        Box::pin(async move { checked.await.map_err(|e| Failure::down(e.to_string())) })
    }))
}

/// How the health monitor probes.
pub fn health_config(config: &Config) -> HealthConfig {
    HealthConfig {
        interval: Config::ms(config.health_interval_ms.max(10)),
        down_interval: Config::ms(config.health_down_interval_ms.max(10)),
        probe_timeout: Config::ms(config.health_probe_timeout_ms.max(10)),
    }
}

/// The configuration file's integrations as non-critical dependencies, probed through what the
/// runtime already knows of them (no calls to the outside systems: those cost tokens or rate
/// limits, and their failures show in the tasks and breakers).
fn integration_probes(
    configured: &[mcp_api::integrations::ConfiguredIntegration],
    runtime: &Arc<crate::integrations::Runtime>,
) -> Vec<Arc<dyn Probe>> {
    use mcp_core::integrations::IntegrationRuntime;
    configured
        .iter()
        .map(|integration| {
            let (name, kind) = (integration.name.clone(), integration.kind.clone());
            let runtime = runtime.clone();
            let probe: Arc<dyn Probe> = Arc::new(FnProbe::new(
                format!("integration.{name}"),
                false,
                move || {
                    let (runtime, name, kind) = (runtime.clone(), name.clone(), kind.clone());
                    Box::pin(async move {
                        let health = runtime.health(&name, &kind).await;
                        let reason = || {
                            health
                                .as_ref()
                                .and_then(|h| h["reason"].as_str())
                                .unwrap_or("")
                                .to_owned()
                        };
                        match health.as_ref().and_then(|h| h["state"].as_str()) {
                            Some("degraded") => Err(Failure::degraded(reason())),
                            Some("down") => Err(Failure::down(reason())),
                            _ => Ok(()),
                        }
                    })
                },
            ));
            probe
        })
        .collect()
}

/// Settings of outgoing webhook deliveries.
pub fn webhook_config(config: &Config) -> WebhookConfig {
    WebhookConfig {
        allow_private: config.webhooks_allow_private,
        timeout: Config::ms(config.webhook_timeout_ms),
        disable_after: (config.webhook_disable_after_days > 0)
            .then(|| chrono::Duration::days(config.webhook_disable_after_days.min(36_500) as i64)),
        max_attempts: config.webhook_max_attempts.max(1),
        ..WebhookConfig::default()
    }
}

/// Opens the configured database and applies its migrations.
pub async fn open_store(config: &Config) -> anyhow::Result<Stores> {
    match config.database()? {
        Database::Sqlite(path) => {
            let options = SqliteOptions {
                synchronous_full: config.sqlite_synchronous == "full",
                ..SqliteOptions::default()
            };
            let store = SqliteTaskStore::open(&path, &options)
                .await
                .with_context(|| format!("cannot open SQLite database {}", path.display()))?;
            store.migrate().await?;
            tracing::info!(path = %path.display(), "using SQLite");
            let store = Arc::new(store);
            let probe = database_probe(&store, |s| Box::pin(async move { s.ping().await }));
            Ok(Stores::of(store, probe))
        }
        Database::Postgres(url) => {
            let started = tokio::time::Instant::now();
            let store = loop {
                match PgTaskStore::connect_with(
                    &url,
                    &config.database_schema,
                    config.database_max_connections,
                    Config::ms(config.database_acquire_timeout_ms.max(1)),
                )
                .await
                {
                    Ok(store) => break store,
                    Err(e) if started.elapsed() < CONNECT_PATIENCE => {
                        tracing::warn!(error = %e, "PostgreSQL not reachable yet; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(e) => return Err(e).context("cannot connect to PostgreSQL"),
                }
            };
            store.migrate().await?;
            tracing::info!(schema = %config.database_schema, "using PostgreSQL");
            let store = Arc::new(store);
            // Its own connection: a pool saturated by load must not look like a dead server.
            let probe = database_probe(&store, |s| Box::pin(async move { s.check_server().await }));
            Ok(Stores::of(store, probe))
        }
    }
}

/// The clients of adapters that the API also reaches directly.
#[derive(Default)]
pub struct AdapterClients {
    pub vrchat: Option<Arc<VrchatClient>>,
    pub vcc: Option<VccService>,
}

/// The handlers of the configured adapters. `live` is shared with the `llm.generate` and
/// `github.dispatch` handlers, so stored integrations change them while running.
pub fn registry(
    config: &Config,
    live: &LiveIntegrations,
    events: &Arc<dyn EventBus>,
    secrets: &SecretBox,
) -> anyhow::Result<(HandlerRegistry, AdapterClients)> {
    let mut registry = HandlerRegistry::with_builtins();
    let mut clients = AdapterClients::default();
    HttpAdapter::new(HttpConfig {
        default_timeout: Config::ms(config.http_timeout_ms),
        max_body_bytes: config.http_max_body_bytes,
        ..HttpConfig::default()
    })
    .context("cannot build the HTTP client")?
    .register(&mut registry);
    // Deploy triggers and the LLM exist only when configured; otherwise their task types are
    // unknown (422 `unknown_task_type`).
    DeployAdapter::new(DeployConfig {
        github_api_base: config.github_api_base.clone(),
        github_token: config.github_token.clone().filter(|t| !t.is_empty()),
        render_deploy_hooks: config.render_deploy_hooks.clone(),
        timeout: Config::ms(config.http_timeout_ms),
        github_live: live.github.clone(),
        ..DeployConfig::default()
    })
    .map_err(anyhow::Error::msg)
    .context("cannot set up the deploy triggers")?
    .register(&mut registry);
    if let Some(base_url) = config.llm_base_url.as_deref().filter(|u| !u.is_empty()) {
        LlmAdapter::new(LlmConfig {
            api_key: config.llm_api_key.clone(),
            timeout: Config::ms(config.llm_timeout_ms),
            live: live.llm.clone(),
            ..LlmConfig::new(base_url, &config.llm_model)
        })
        .map_err(anyhow::Error::msg)
        .context("cannot set up the LLM")?
        .register(&mut registry);
    }
    // `discord.webhook_execute` needs no credentials (it also sends interaction follow-ups);
    // the bot's task types exist only with a bot token.
    DiscordAdapter::new(DiscordConfig {
        api_base: config.discord_api_base.clone(),
        bot_token: config.discord_bot_token.clone().filter(|t| !t.is_empty()),
        timeout: Config::ms(config.http_timeout_ms),
        ..DiscordConfig::default()
    })
    .map_err(anyhow::Error::msg)
    .context("cannot set up Discord")?
    .register(&mut registry);
    // VRChat OSC: UDP datagrams to a VRChat client, so it needs nothing to be offered.
    let target = config.vrchat_osc_send.parse().with_context(|| {
        format!(
            "vrchat_osc_send `{}` is not an address",
            config.vrchat_osc_send
        )
    })?;
    OscAdapter::new(OscConfig {
        target,
        ..OscConfig::default()
    })
    .register(&mut registry);
    // VRChat's web API, with an account only.
    if let (Some(username), Some(password)) = (
        config.vrchat_username.as_deref().filter(|u| !u.is_empty()),
        config.vrchat_password.as_deref().filter(|p| !p.is_empty()),
    ) {
        let adapter = VrchatAdapter::new(VrchatConfig {
            api_base: config.vrchat_api_base.clone(),
            totp_secret: config.vrchat_totp_secret.clone().filter(|s| !s.is_empty()),
            user_agent: mcp_integrations::vrchat::user_agent(&config.vrchat_contact),
            timeout: Config::ms(config.http_timeout_ms),
            keeper: Some(Arc::new(SealedSessionFile {
                path: config.data_dir.join("vrchat-session"),
                secrets: secrets.clone(),
                username: username.to_owned(),
            })),
            ..VrchatConfig::new(username, password)
        })
        .map_err(anyhow::Error::msg)
        .context("cannot set up the VRChat client")?;
        adapter.register(&mut registry);
        clients.vrchat = Some(adapter.client());
    }
    // VCC: projects live on this node's disk, under the configured roots.
    let vcc = VccService::new(VccConfig {
        roots: config.vcc_roots(),
        projects: config.vcc_projects.clone(),
        repositories: config.vcc_repositories.clone(),
        settings_file: config.vcc_settings_file(),
        state_file: config.data_dir.join("vcc.json"),
        build_command: config.vcc_build_command.clone(),
        deploy_command: config.vcc_deploy_command.clone(),
        command_timeout: Config::ms(config.vcc_command_timeout_ms),
        ..VccConfig::default()
    })
    .map_err(|e| anyhow::anyhow!("cannot set up VCC: {e}"))?;
    VccAdapter::new(vcc.clone())
        .with_events(events.clone())
        .register(&mut registry);
    clients.vcc = Some(vcc);
    Ok((registry, clients))
}

pub fn orchestrator_config(config: &Config) -> OrchestratorConfig {
    OrchestratorConfig {
        concurrency: config.worker_concurrency,
        batch_size: config.worker_batch_size,
        lease: Config::ms(config.lease_ms),
        poll_interval: Config::ms(config.poll_interval_ms),
        rescue_interval: Config::ms(config.rescue_interval_ms),
        shutdown_grace: Config::ms(config.shutdown_grace_ms),
        retention: (config.task_retention_hours > 0)
            .then(|| Duration::from_secs(config.task_retention_hours * 3600)),
        worker_types: config.worker_task_types.clone(),
        directory_refresh: Config::ms(config.worker_directory_refresh_ms),
        event_queue: config.event_queue.max(1),
        breaker: BreakerConfig {
            window: Config::ms(config.breaker_window_ms),
            min_calls: config.breaker_min_calls.max(1),
            failure_rate: config.breaker_failure_rate.clamp(0.0, 1.0),
            open_for: Config::ms(config.breaker_open_ms),
            probes: config.breaker_probes.max(1),
        },
        defaults: TaskDefaults {
            max_attempts: config.task_max_attempts,
            timeout_ms: config.task_timeout_ms,
            backoff: Backoff {
                base_ms: config.task_backoff_base_ms,
                max_ms: config.task_backoff_max_ms,
            },
        },
        ..OrchestratorConfig::default()
    }
}

pub fn api_state(
    config: &Config,
    orchestrator: Arc<Orchestrator>,
    security: Security,
    events: Arc<dyn EventBus>,
    memory: Arc<dyn MemoryStore>,
    metrics: Option<MetricsRenderer>,
) -> AppState {
    AppState {
        orchestrator,
        config: Arc::new(ApiConfig {
            max_body_bytes: config.max_body_bytes,
            max_batch: config.max_batch,
            ws: WsConfig {
                auth_timeout: Config::ms(config.ws_auth_timeout_ms),
                ping_interval: Config::ms(config.ws_ping_interval_ms.max(100)),
                idle_timeout: Config::ms(config.ws_idle_timeout_ms),
                send_queue: config.ws_send_queue.max(1),
                max_frame_bytes: config.ws_max_frame_bytes,
                max_subscriptions: config.ws_max_subscriptions,
                ops_per_second: config.ws_ops_per_second.max(1),
                refresh_notice: Config::ms(config.ws_refresh_notice_ms),
                open_namespaces: config.ws_open_namespaces.clone(),
            },
            memory: MemoryLimits {
                max_message_bytes: config.memory_max_message_bytes,
                default_context_tokens: config.memory_context_tokens,
                max_import_bytes: config.memory_max_import_bytes,
                ..MemoryLimits::default()
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
        metrics,
        // `serve` sets the node's monitor; without one every dependency counts as up.
        health: Arc::default(),
        shutdown: tokio_util::sync::CancellationToken::new(),
    }
}

/// How this node reaches Redis: timeouts and backoff from the configuration.
fn redis_options(config: &Config) -> RedisOptions {
    RedisOptions {
        timeout: Config::ms(config.redis_timeout_ms.max(1)),
        retry_max: Config::ms(config.redis_retry_max_ms.max(100)),
    }
}

/// The rate limiter: Redis when configured (limits shared by every node; per node while Redis is
/// away, and until it is first reached), else memory. The Redis handle comes along for the
/// health monitor (`ping`, `mode`).
pub fn limiter(config: &Config) -> anyhow::Result<(Arc<dyn Limiter>, Option<RedisLimiter>)> {
    match config.redis_url.as_deref().filter(|url| !url.is_empty()) {
        Some(url) => {
            let limiter = RedisLimiter::start(
                url,
                &format!("{}:ratelimit:", config.redis_prefix),
                redis_options(config),
            )
            .context("redis_url")?;
            Ok((Arc::new(limiter.clone()), Some(limiter)))
        }
        None => Ok((Arc::new(MemoryLimiter::default()), None)),
    }
}

/// The event bus: Redis when configured (events reach the subscribers of every node; this node's
/// only while Redis is away, and until it is first reached), else in process. The Redis handle
/// comes along for the health monitor (`ping`, `mode`).
pub fn event_bus(config: &Config) -> anyhow::Result<(Arc<dyn EventBus>, Option<RedisBus>)> {
    let bus = BusConfig {
        history_size: config.event_history_size,
        history_ttl: Duration::from_secs(config.event_history_ttl_secs),
        buffer: config.event_buffer.max(1),
        max_channels: config.event_max_channels.max(1),
    };
    match config.redis_url.as_deref().filter(|url| !url.is_empty()) {
        Some(url) => {
            let events = RedisBus::start(
                url,
                &format!("{}:", config.redis_prefix),
                bus,
                redis_options(config),
            )
            .context("redis_url")?;
            Ok((Arc::new(events.clone()), Some(events)))
        }
        None => Ok((Arc::new(MemoryBus::new(bus)), None)),
    }
}

/// Authentication, permissions and limits, from the configuration.
pub fn security(
    config: &Config,
    identities: Arc<dyn IdentityStore>,
    limiter: Arc<dyn Limiter>,
) -> anyhow::Result<Security> {
    let minute = Quota::per_minute;
    Ok(Security {
        identities,
        tokens: config.tokens()?,
        limiter,
        config: SecurityConfig {
            access_ttl: parse_ttl(&config.access_token_ttl)
                .map_err(anyhow::Error::msg)
                .context("access_token_ttl")?,
            refresh_ttl: parse_ttl(&config.refresh_token_ttl)
                .map_err(anyhow::Error::msg)
                .context("refresh_token_ttl")?,
            trusted_proxies: config.trusted_proxies()?,
            limits: RateLimits {
                ip: minute(config.rate_limit_ip_per_minute),
                auth: minute(config.rate_limit_auth_per_minute),
                login: minute(config.rate_limit_login_per_minute),
                read: minute(config.rate_limit_read_per_minute),
                write: minute(config.rate_limit_write_per_minute),
            },
            quota_tasks_per_day: config.quota_tasks_per_day,
            metrics_token: config.metrics_token.clone().filter(|t| !t.is_empty()),
        },
    })
}

/// Installs the Prometheus recorder (once per process).
fn metrics_renderer() -> Option<MetricsRenderer> {
    match metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder() {
        Ok(handle) => Some(Arc::new(move || handle.render())),
        Err(e) => {
            tracing::warn!(error = %e, "metrics disabled");
            None
        }
    }
}

/// On the first start of an embedded server (no users yet), creates `admin` with a generated
/// password and prints the credentials once. A cluster's first admin is made with
/// `mkww-mcp user create`.
async fn bootstrap_admin(config: &Config, identities: &dyn IdentityStore) -> anyhow::Result<()> {
    if identities.count_users().await? > 0 {
        return Ok(());
    }
    if !matches!(config.database()?, Database::Sqlite(_)) {
        tracing::warn!(
            "no users yet: create the first admin with `mkww-mcp user create NAME --role admin`"
        );
        return Ok(());
    }
    let password = credentials::generate_password();
    let user = new_user("admin", Role::Admin, &password)?;
    match identities.create_user(&user).await {
        Ok(()) => {
            eprintln!(
                "\n  First start: created the administrator account.\n    username: admin\n    \
                 password: {password}\n  It is shown only now. Log in with POST /v1/auth/login; \
                 change it with PATCH /v1/users/{}.\n",
                user.id
            );
            tracing::warn!(
                username = "admin",
                "created the first administrator account"
            );
            Ok(())
        }
        // Another process made one first.
        Err(StoreError::Conflict(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A user record with `password` hashed.
fn new_user(username: &str, role: Role, password: &str) -> anyhow::Result<User> {
    mcp_api::check_username(username).map_err(|e| anyhow::anyhow!(e.message))?;
    let now = chrono::Utc::now();
    Ok(User {
        id: uuid::Uuid::now_v7(),
        username: username.to_owned(),
        role,
        password_hash: credentials::hash_password(password)?,
        disabled: false,
        created_at: now,
        updated_at: now,
    })
}

/// `mkww-mcp user create`: the password comes from stdin (`--password-stdin`) or is generated
/// and printed once.
pub async fn create_user(
    file: Option<&Path>,
    username: &str,
    role: Role,
    password_stdin: bool,
) -> anyhow::Result<()> {
    let config = Config::load(file)?;
    init_logging(&config);
    let (password, generated) = if password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("cannot read the password from stdin")?;
        (line.trim_end_matches(['\r', '\n']).to_owned(), false)
    } else {
        (credentials::generate_password(), true)
    };
    let user = new_user(username, role, &password)?;
    let stores = open_store(&config).await?;
    match stores.identities.create_user(&user).await {
        Ok(()) => {}
        Err(StoreError::Conflict(_)) => anyhow::bail!("the username `{username}` is taken"),
        Err(e) => return Err(e.into()),
    }
    stores
        .identities
        .append_audit(&AuditEvent {
            id: uuid::Uuid::now_v7(),
            at: chrono::Utc::now(),
            action: "user.created".into(),
            principal: Some("cli".into()),
            ip: None,
            request_id: None,
            details: serde_json::json!({"user": username, "role": role}),
        })
        .await?;
    println!("created user `{username}` ({role}), id {}", user.id);
    if generated {
        println!("password: {password}");
    }
    Ok(())
}

pub async fn serve(file: Option<&Path>, listen: Option<String>) -> anyhow::Result<()> {
    let mut config = Config::load(file)?;
    if let Some(listen) = listen {
        config.listen = listen;
    }
    init_logging(&config);
    // Sealing secrets needs the master key; check it (or create it) before serving anything.
    let secrets = config.secret_box()?;
    if config.master_key.is_none() && matches!(config.database()?, Database::Postgres(_)) {
        tracing::warn!(
            "no master_key configured: this node generated its own in data_dir; nodes of a \
             cluster must share one (MCP_MASTER_KEY)"
        );
    }
    tracing::info!(
        key_id = secrets.current_key_id(),
        "secrets at rest are sealed"
    );
    let health = Arc::new(HealthMonitor::new(health_config(&config)));
    let stores = open_store(&config).await?;
    let database = health.register(stores.probe.clone());
    let mut stores = stores.guarded(&database);
    // Changes to the webhooks switch the outbox's recording at once on this node.
    stores.webhooks = Arc::new(RecordingWebhooks {
        inner: stores.webhooks.clone(),
        outbox: stores.outbox.clone(),
    });
    bootstrap_admin(&config, stores.identities.as_ref()).await?;
    // Neither needs Redis to serve: both are local to this node until it answers (for the
    // health monitor, `redis_limiter` and `redis_bus` say how they reach it).
    let (limiter, redis_limiter) = limiter(&config)?;
    let security = security(&config, stores.identities.clone(), limiter)?;
    // Integrations stored through the API apply over the file's settings.
    let file_config = config.clone();
    crate::integrations::merge_stored(&mut config, stores.integrations.as_ref(), &secrets).await?;
    let live = LiveIntegrations::default();
    let (events, redis_bus) = event_bus(&config)?;
    health.set_events(events.clone());
    // A node whose Redis answers starts shared; one whose Redis is away starts anyway, after
    // this short wait, and picks Redis up in the background.
    let patience = Config::ms(config.redis_timeout_ms.max(1)) * 4;
    if let (Some(limiter), Some(bus)) = (redis_limiter, redis_bus) {
        let (limits, shared) = tokio::join!(limiter.ready(patience), bus.ready(patience));
        tracing::info!(
            limits = limits.as_str(),
            events = shared.as_str(),
            "Redis configured"
        );
        // Not critical: limits and events fall back to this node while Redis is away. Each
        // `ping` answers at once while its side runs locally.
        health.register(Arc::new(FnProbe::new("redis", false, move || {
            let (limiter, bus) = (limiter.clone(), bus.clone());
            Box::pin(async move {
                limiter.ping().await.map_err(Failure::down)?;
                bus.ping().await.map_err(Failure::down)
            })
        })));
    }
    let (mut handlers, clients) = registry(&config, &live, &events, &secrets)?;
    if config.memory_builtin_summarizer {
        handlers.register(
            SUMMARIZE_TASK,
            Summarizer {
                store: stores.memory.clone(),
            },
        );
    }
    handlers.register(
        DELIVER_TASK,
        DeliverHandler {
            store: stores.webhooks.clone(),
            secrets: Arc::new(secrets.clone()),
            config: webhook_config(&config),
        },
    );
    let orchestrator = Orchestrator::with_events(
        stores.tasks,
        handlers,
        orchestrator_config(&config),
        events.clone(),
    );
    orchestrator.set_worker_directory(stores.workers.clone());
    orchestrator.watch_database(database.clone());
    let workers = orchestrator.start().await;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(
        addr = %addr,
        node_id = %orchestrator.config().node_id,
        concurrency = config.worker_concurrency,
        version = env!("CARGO_PKG_VERSION"),
        tls = config.tls_cert.is_some(),
        "listening"
    );
    let mut state = api_state(
        &config,
        orchestrator,
        security,
        events,
        stores.memory.clone(),
        metrics_renderer(),
    );
    state.vrchat = clients
        .vrchat
        .clone()
        .map(|client| client as Arc<dyn mcp_core::vrchat::VrchatPort>);
    if let Some(vcc) = &clients.vcc
        && config.vcc_watch_debounce_ms > 0
    {
        vcc.watch(
            Config::ms(config.vcc_watch_debounce_ms),
            state.events.clone(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("cannot watch VCC projects: {e}"))?;
    }
    state.vcc = clients
        .vcc
        .clone()
        .map(|vcc| Arc::new(vcc) as Arc<dyn mcp_core::vcc::VccPort>);
    // Outgoing webhooks: their routes, and the dispatcher that turns events into deliveries.
    state.webhooks = Some(mcp_api::WebhookState {
        store: stores.webhooks.clone(),
        secrets: Arc::new(secrets.clone()),
        allow_private: config.webhooks_allow_private,
        max_attempts: config.webhook_max_attempts.max(1),
    });
    tokio::spawn(
        Dispatcher {
            store: stores.webhooks.clone(),
            outbox: stores.outbox.clone(),
            orchestrator: state.orchestrator.clone(),
            events: state.events.clone(),
            max_attempts: config.webhook_max_attempts.max(1),
            settings: DispatchSettings {
                refresh: Config::ms(config.webhook_outbox_refresh_ms.max(1)),
                poll: Config::ms(config.webhook_outbox_poll_ms.max(1)),
                lease: Config::ms(config.webhook_outbox_lease_ms.max(100)),
                ..DispatchSettings::default()
            },
        }
        .run(state.shutdown.clone()),
    );
    // Discord follow-ups wait in the database; every node sends those whose task is final.
    state.followups = Some(mcp_api::discord::Followups {
        store: stores.followups.clone(),
        secrets: Arc::new(secrets.clone()),
    });
    tokio::spawn(mcp_api::discord::sweep_followups(
        state.clone(),
        Config::ms(config.discord_followup_sweep_ms.max(1)),
    ));
    let configured = crate::integrations::configured(&file_config);
    let runtime = Arc::new(crate::integrations::Runtime {
        file: file_config,
        live,
        vrchat: clients.vrchat,
        vcc: clients.vcc,
    });
    for probe in integration_probes(&configured, &runtime) {
        health.register(probe);
    }
    state.integrations = Arc::new(mcp_api::integrations::Integrations {
        store: Some(stores.integrations.clone()),
        secrets: Some(secrets),
        configured,
        runtime: Some(runtime),
    });
    let stopping = state.shutdown.clone();
    let probing = tokio_util::sync::CancellationToken::new();
    let probes = health.run(probing.clone());
    state.health = health;
    // The VRChat OSC listener: incoming avatar parameters become events on `vrchat.osc`.
    // Another program (another hub, an OSC router) may hold the port: the hub runs without the
    // listener then, and says so.
    if !config.vrchat_osc_listen.is_empty() {
        let addr = config.vrchat_osc_listen.parse().with_context(|| {
            format!(
                "vrchat_osc_listen `{}` is not an address",
                config.vrchat_osc_listen
            )
        })?;
        match mcp_integrations::osc::bind_listener(addr).await {
            Ok((socket, local)) => {
                tracing::info!(addr = %local, "listening for VRChat OSC");
                tokio::spawn(mcp_integrations::osc::run_listener(
                    socket,
                    state.events.clone(),
                    stopping.clone(),
                ));
            }
            Err(e) => tracing::warn!(
                addr = %addr,
                error = %e,
                "cannot listen for VRChat OSC; running without the listener"
            ),
        }
    }
    let retention = tokio::spawn(memory_retention(
        stores.memory.clone(),
        MemoryRetention::of(&config),
        stopping.clone(),
    ));
    let app = mcp_api::router(state);
    let stop = || {
        let stopping = stopping.clone();
        async move {
            shutdown_signal().await;
            stopping.cancel();
        }
    };
    match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => {
            crate::tls::serve_tls(listener, app, cert, key, stop()).await?;
        }
        _ => axum::serve(
            // No Nagle delay: WebSocket frames and small replies go out at once.
            axum::serve::ListenerExt::tap_io(listener, |tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                }
            }),
            // The peer address feeds per-IP rate limits and the audit log.
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(stop())
        .await
        .context("HTTP server failed")?,
    }
    tracing::info!("shutting down: finishing running tasks");
    stopping.cancel();
    let _ = retention.await;
    workers.shutdown().await;
    probing.cancel();
    for probe in probes {
        let _ = probe.await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// When the memory retention pass archives and deletes idle conversations.
#[derive(Debug, Clone, Copy)]
pub struct MemoryRetention {
    pub archive_after: Option<chrono::Duration>,
    pub delete_after: Option<chrono::Duration>,
    pub interval: Duration,
}

impl MemoryRetention {
    pub fn of(config: &Config) -> MemoryRetention {
        let days = |n: u64| (n > 0).then(|| chrono::Duration::days(n.min(365_000) as i64));
        MemoryRetention {
            archive_after: days(config.memory_archive_after_days),
            delete_after: days(config.memory_delete_after_days),
            interval: Config::ms(config.memory_retention_interval_ms),
        }
    }
}

/// The memory maintenance loop: archives conversations idle past `archive_after`, deletes those
/// idle past `delete_after`, once at start and then every `interval`, until `stop`. Every node
/// runs it; both statements are idempotent, so nodes racing do no harm.
pub async fn memory_retention(
    memory: Arc<dyn MemoryStore>,
    retention: MemoryRetention,
    stop: tokio_util::sync::CancellationToken,
) {
    if retention.archive_after.is_none() && retention.delete_after.is_none() {
        return;
    }
    loop {
        let now = chrono::Utc::now();
        if let Some(after) = retention.delete_after {
            match memory.delete_idle(now - after).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "deleted idle conversations"),
                Err(e) => tracing::warn!(error = %e, "memory retention: delete failed"),
            }
        }
        if let Some(after) = retention.archive_after {
            match memory.archive_idle(now - after).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(archived = n, "archived idle conversations"),
                Err(e) => tracing::warn!(error = %e, "memory retention: archive failed"),
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(retention.interval) => {}
        }
    }
}

pub async fn migrate(file: Option<&Path>) -> anyhow::Result<()> {
    let config = Config::load(file)?;
    init_logging(&config);
    open_store(&config).await?;
    tracing::info!("migrations applied");
    Ok(())
}

/// Prints a token for `mkww-mcp token`.
pub fn token(
    file: Option<&Path>,
    role: mcp_core::principal::Role,
    sub: &str,
    ttl: Duration,
) -> anyhow::Result<()> {
    let config = Config::load(file)?;
    let token = config.tokens()?.issue(sub, role, ttl)?;
    println!("{token}");
    Ok(())
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
}
