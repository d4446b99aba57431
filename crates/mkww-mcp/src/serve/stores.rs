//! Opening the configured database (SQLite or PostgreSQL) with its migrations, the ports the
//! rest of the server reaches it through, and the secret box that seals what it stores.

use crate::config::{Config, Database};
use anyhow::Context;
use mcp_core::followups::FollowupStore;
use mcp_core::health::{DATABASE, Dependency, Failure, FnProbe, Guarded, HealthMonitor, Probe};
use mcp_core::identity::IdentityStore;
use mcp_core::integrations::IntegrationStore;
use mcp_core::memory::MemoryStore;
use mcp_core::queues::QueueStore;
use mcp_core::routing::WorkerDirectory;
use mcp_core::schedule::ScheduleStore;
use mcp_core::secrets::SecretBox;
use mcp_core::settings::SettingsStore;
use mcp_core::webhooks::{Outbox, WebhookStore};
use mcp_core::{StoreError, TaskStore};
use mcp_integrations::webhooks::RecordingWebhooks;
use mcp_persistence::{PgTaskStore, SqliteOptions, SqliteTaskStore};
use std::sync::Arc;
use std::time::Duration;

/// How long `serve` keeps trying to reach PostgreSQL at start before giving up.
const CONNECT_PATIENCE: Duration = Duration::from_secs(30);

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
    /// Schedules.
    pub schedules: Arc<dyn ScheduleStore>,
    /// Paused queues and rate limits per task type.
    pub queues: Arc<dyn QueueStore>,
    /// Runtime setting overrides and feature flags.
    pub settings: Arc<dyn SettingsStore>,
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
            + FollowupStore
            + ScheduleStore
            + QueueStore
            + SettingsStore,
    >(
        store: Arc<S>,
        probe: Arc<dyn Probe>,
    ) -> Stores {
        Stores {
            outbox: store.clone(),
            followups: store.clone(),
            schedules: store.clone(),
            queues: store.clone(),
            settings: store.clone(),
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
            schedules: Arc::new(Guarded::new(self.schedules, database.clone())),
            queues: Arc::new(Guarded::new(self.queues, database.clone())),
            settings: Arc::new(Guarded::new(self.settings, database.clone())),
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
            for (name, pool) in store.pools() {
                super::metrics::sample_pool(name, move || {
                    let most = pool.options().get_max_connections();
                    (pool.size(), pool.num_idle(), most)
                });
            }
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
            let pool = store.pool().clone();
            super::metrics::sample_pool("postgres", move || {
                let most = pool.options().get_max_connections();
                (pool.size(), pool.num_idle(), most)
            });
            let store = Arc::new(store);
            // Its own connection: a pool saturated by load must not look like a dead server.
            let probe = database_probe(&store, |s| Box::pin(async move { s.check_server().await }));
            Ok(Stores::of(store, probe))
        }
    }
}

/// The secret box. Sealing secrets needs the master key, so `serve` checks it (or creates it)
/// before serving anything.
pub fn open_secrets(config: &Config) -> anyhow::Result<SecretBox> {
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
    Ok(secrets)
}

/// The configured database behind its breaker and registered with the health monitor (the
/// returned dependency), with changes to the webhooks recorded for the outbox.
pub async fn open_guarded(
    config: &Config,
    health: &Arc<HealthMonitor>,
) -> anyhow::Result<(Stores, Dependency)> {
    let stores = open_store(config).await?;
    let database = health.register(stores.probe.clone());
    let mut stores = stores.guarded(&database);
    // Changes to the webhooks switch the outbox's recording at once on this node.
    stores.webhooks = Arc::new(RecordingWebhooks {
        inner: stores.webhooks.clone(),
        outbox: stores.outbox.clone(),
    });
    Ok((stores, database))
}
