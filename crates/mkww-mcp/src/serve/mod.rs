//! `mkww-mcp serve`: opens the configured store, builds the handler registry and the
//! orchestrator, serves the API, and shuts everything down gracefully on SIGINT/SIGTERM.
//!
//! `serve` below is the order things start in; each step lives in the file named after its job.

pub mod adapters;
pub mod admin;
pub mod api;
pub mod background;
pub mod connections;
pub mod health;
pub mod http;
pub mod metrics;
pub mod runtime;
pub mod services;
pub mod stores;
pub mod tls;

use crate::config::Config;
use crate::integrations::LiveIntegrations;
use crate::logging::init_logging;
use mcp_core::Orchestrator;
use mcp_core::health::HealthMonitor;
use std::path::Path;
use std::sync::Arc;

pub async fn serve(file: Option<&Path>, listen: Option<String>) -> anyhow::Result<()> {
    let mut config = Config::load(file)?;
    if let Some(listen) = listen {
        config.listen = listen;
    }
    init_logging(&config);
    // First, so that every metric handle taken from here on records.
    let metrics = api::metrics_renderer();
    let secrets = stores::open_secrets(&config)?;
    let health = Arc::new(HealthMonitor::new(health::health_config(&config)));
    let (stores, database) = stores::open_guarded(&config, &health).await?;
    admin::bootstrap_admin(&config, stores.identities.as_ref()).await?;
    // Neither needs Redis to serve: both are local to this node until it answers (for the
    // health monitor, `redis_limiter` and `redis_bus` say how they reach it).
    let (limiter, redis_limiter) = services::limiter(&config)?;
    // Integrations stored through the API apply over the file's settings.
    let file_config = config.clone();
    crate::integrations::merge_stored(&mut config, stores.integrations.as_ref(), &secrets).await?;
    let live = LiveIntegrations::default();
    let (events, redis_bus) = services::event_bus(&config)?;
    // Read once before serving, so that nothing revoked before this node started gets in.
    let revocations = api::revocations(&config, stores.identities.clone(), Some(events.clone()));
    if let Err(e) = revocations.refresh().await {
        tracing::warn!(error = %e, "cannot read revocations yet; they are read again every poll");
    }
    let security = api::security(
        &config,
        stores.identities.clone(),
        limiter,
        revocations.clone(),
    )?;
    health.set_events(events.clone());
    if let (Some(limiter), Some(bus)) = (redis_limiter, redis_bus) {
        health::watch_redis(&config, &health, limiter, bus).await;
    }
    let (handlers, clients) = adapters::handlers(&config, &live, &events, &secrets, &stores)?;
    let orchestrator = Orchestrator::with_events(
        stores.tasks.clone(),
        handlers,
        services::orchestrator_config(&config),
        events.clone(),
    );
    orchestrator.set_worker_directory(stores.workers.clone());
    orchestrator.watch_database(database.clone());
    // Read before claiming: an integration switched off by a flag must not run a task first.
    let dynamic = runtime::open(&config, file, stores.settings.clone(), events.clone()).await;
    orchestrator.set_paused_prefixes(dynamic.flags.paused_prefixes());
    let workers = orchestrator.start().await;
    let listener = http::bind(&config, &orchestrator).await?;
    let mut state = api::api_state(
        &config,
        orchestrator,
        security,
        events,
        stores.memory.clone(),
        metrics,
        (stores.schedules.clone(), stores.queues.clone()),
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
    background::webhooks(&mut state, &config, &stores, &secrets);
    background::discord_followups(&mut state, &config, &stores, &secrets);
    let configured = crate::integrations::configured(&file_config);
    let runtime = Arc::new(crate::integrations::Runtime {
        file: file_config,
        live,
        vrchat: clients.vrchat,
        vcc: clients.vcc,
    });
    for probe in health::integration_probes(&configured, &runtime) {
        health.register(probe);
    }
    state.integrations = Arc::new(mcp_api::integrations::Integrations {
        store: Some(stores.integrations.clone()),
        secrets: Some(secrets),
        configured,
        runtime: Some(runtime),
    });
    let stopping = state.shutdown.clone();
    // Once the listener has closed, the node claims no new task; running ones finish below.
    tokio::spawn({
        let (closed, claiming) = (stopping.clone(), workers.claiming());
        async move {
            closed.cancelled().await;
            claiming.cancel();
        }
    });
    state.settings = Some(dynamic.settings.clone());
    state.flags = Some(dynamic.flags.clone());
    dynamic.start(
        runtime::Targets {
            orchestrator: state.orchestrator.clone(),
            limits: state.security.config.limits.clone(),
            tasks: state.tasks.clone(),
        },
        &stopping,
    );
    let probing = tokio_util::sync::CancellationToken::new();
    let probes = health.run(probing.clone());
    state.health = health.clone();
    tokio::spawn(revocations.clone().run(stopping.clone()));
    tokio::spawn(background::revocation_pruning(
        revocations,
        background::REVOCATION_PRUNE_INTERVAL,
        stopping.clone(),
    ));
    background::osc_listener(&config, &state, &stopping).await?;
    background::scheduling(&config, &state, &stopping).await?;
    let retention = tokio::spawn(background::memory_retention(
        stores.memory.clone(),
        background::MemoryRetention::of(&config),
        stopping.clone(),
    ));
    tokio::spawn(background::allocator_trim(
        Config::ms(config.allocator_trim_interval_ms),
        stopping.clone(),
    ));
    http::run(
        listener,
        mcp_api::router(state),
        &config,
        &health,
        &stopping,
    )
    .await?;
    tracing::info!("shutting down: finishing running tasks");
    stopping.cancel();
    let _ = retention.await;
    workers.shutdown().await;
    probing.cancel();
    for probe in probes {
        let _ = probe.await;
    }
    tracing::info!("stopped");
    crate::telemetry::shutdown();
    Ok(())
}
