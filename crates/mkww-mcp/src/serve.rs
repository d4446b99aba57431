//! Wiring: opens the configured store, builds the handler registry and the orchestrator, serves
//! the API, and shuts everything down gracefully on SIGINT/SIGTERM.

use crate::config::{Config, Database};
use anyhow::Context;
use mcp_api::{ApiConfig, AppState};
use mcp_core::task::TaskDefaults;
use mcp_core::{Backoff, HandlerRegistry, Orchestrator, OrchestratorConfig, TaskStore};
use mcp_integrations::Adapter;
use mcp_integrations::http::{HttpAdapter, HttpConfig};
use mcp_persistence::{PgTaskStore, SqliteOptions, SqliteTaskStore};
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

/// Opens the configured database and applies its migrations.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn TaskStore>> {
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
            Ok(Arc::new(store))
        }
        Database::Postgres(url) => {
            let started = tokio::time::Instant::now();
            let store = loop {
                match PgTaskStore::connect(
                    &url,
                    &config.database_schema,
                    config.database_max_connections,
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
            Ok(Arc::new(store))
        }
    }
}

pub fn registry(config: &Config) -> anyhow::Result<HandlerRegistry> {
    let mut registry = HandlerRegistry::with_builtins();
    HttpAdapter::new(HttpConfig {
        default_timeout: Config::ms(config.http_timeout_ms),
        max_body_bytes: config.http_max_body_bytes,
        ..HttpConfig::default()
    })
    .context("cannot build the HTTP client")?
    .register(&mut registry);
    Ok(registry)
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

pub fn api_state(config: &Config, orchestrator: Arc<Orchestrator>) -> AppState {
    AppState {
        orchestrator,
        config: Arc::new(ApiConfig {
            max_body_bytes: config.max_body_bytes,
            max_batch: config.max_batch,
            ..ApiConfig::default()
        }),
    }
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
    let store = open_store(&config).await?;
    let orchestrator = Orchestrator::new(store, registry(&config)?, orchestrator_config(&config));
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
        "listening"
    );
    let app = mcp_api::router(api_state(&config, orchestrator));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("HTTP server failed")?;
    tracing::info!("shutting down: finishing running tasks");
    workers.shutdown().await;
    tracing::info!("stopped");
    Ok(())
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
