//! The core services' settings and backends: the orchestrator's configuration, the rate
//! limiter and the event bus (Redis or in process), outgoing webhook deliveries.

use crate::config::Config;
use anyhow::Context;
use mcp_core::events::{BusConfig, EventBus, LocalBus};
use mcp_core::limiter::{Limiter, LocalLimiter};
use mcp_core::routing::BreakerConfig;
use mcp_core::task::TaskDefaults;
use mcp_core::{Backoff, OrchestratorConfig};
use mcp_integrations::webhooks::WebhookConfig;
use mcp_persistence::{RedisBus, RedisLimiter, RedisOptions};
use std::sync::Arc;
use std::time::Duration;

/// Settings of outgoing webhook deliveries.
pub fn webhook_config(config: &Config) -> WebhookConfig {
    WebhookConfig {
        // Checked when the configuration was loaded; the strictest policy if it were not.
        outbound: config.outbound_policy().unwrap_or_default(),
        timeout: Config::ms(config.webhook_timeout_ms),
        disable_after: (config.webhook_disable_after_days > 0)
            .then(|| chrono::Duration::days(config.webhook_disable_after_days.min(36_500) as i64)),
        max_attempts: config.webhook_max_attempts.max(1),
        ..WebhookConfig::default()
    }
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
        fair_share: config.fair_share_max_fraction,
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
        None => Ok((Arc::new(LocalLimiter::default()), None)),
    }
}

/// The event bus: Redis when configured (events reach the subscribers of every node; this node's
/// only while Redis is away, and until it is first reached), else in process. The Redis handle
/// comes along for the health monitor (`ping`, `mode`).
pub fn event_bus(config: &Config) -> anyhow::Result<(Arc<dyn EventBus>, Option<RedisBus>)> {
    let bus = BusConfig {
        history_size: config.event_history_size,
        history_channel_bytes: config.event_history_channel_bytes,
        history_bytes: config.event_history_bytes,
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
        None => Ok((Arc::new(LocalBus::new(bus)), None)),
    }
}
