//! What the health monitor probes besides the database: Redis, and the configured integrations
//! through what the runtime knows of them.

use crate::config::Config;
use mcp_core::health::{Failure, FnProbe, HealthConfig, HealthMonitor, Probe};
use mcp_persistence::{RedisBus, RedisLimiter};
use std::sync::Arc;

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
pub fn integration_probes(
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

/// Waits a little for Redis, then has the monitor probe it. A node whose Redis answers starts
/// shared; one whose Redis is away starts anyway, after this short wait, and picks Redis up in
/// the background.
pub async fn watch_redis(
    config: &Config,
    health: &Arc<HealthMonitor>,
    limiter: RedisLimiter,
    bus: RedisBus,
) {
    let patience = Config::ms(config.redis_timeout_ms.max(1)) * 4;
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
