//! The loops a node runs beside the API: outgoing webhook dispatch, Discord follow-ups, the
//! VRChat OSC listener, memory retention, revocation pruning and the allocator trim.

use crate::config::Config;
use crate::serve::stores::Stores;
use anyhow::Context;
use mcp_api::AppState;
use mcp_core::memory::MemoryStore;
use mcp_core::revocations::Revocations;
use mcp_core::secrets::SecretBox;
use mcp_integrations::webhooks::{DispatchSettings, Dispatcher};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Outgoing webhooks: their routes, and the dispatcher that turns events into deliveries.
pub fn webhooks(state: &mut AppState, config: &Config, stores: &Stores, secrets: &SecretBox) {
    state.webhooks = Some(mcp_api::WebhookState {
        store: stores.webhooks.clone(),
        secrets: Arc::new(secrets.clone()),
        // Checked when the configuration was loaded; the strictest policy if it were not.
        outbound: config.outbound_policy().unwrap_or_default(),
        max_attempts: config.webhook_max_attempts.max(1),
    });
    tokio::spawn(
        Dispatcher {
            store: stores.webhooks.clone(),
            outbox: stores.outbox.clone(),
            orchestrator: state.orchestrator.clone(),
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
}

/// Discord follow-ups wait in the database; every node sends those whose task is final.
pub fn discord_followups(
    state: &mut AppState,
    config: &Config,
    stores: &Stores,
    secrets: &SecretBox,
) {
    state.followups = Some(mcp_api::discord::Followups {
        store: stores.followups.clone(),
        secrets: Arc::new(secrets.clone()),
    });
    tokio::spawn(mcp_api::discord::sweep_followups(
        state.clone(),
        Config::ms(config.discord_followup_sweep_ms.max(1)),
    ));
}

/// The VRChat OSC listener: incoming avatar parameters become events on `vrchat.osc`.
/// Another program (another hub, an OSC router) may hold the port: the hub runs without the
/// listener then, and says so.
pub async fn osc_listener(
    config: &Config,
    state: &AppState,
    stopping: &CancellationToken,
) -> anyhow::Result<()> {
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
    stop: CancellationToken,
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

/// How often each node prunes the revocation deny-list: the entries it drops have been useless
/// for a while already, so there is no hurry, but a burst of logouts must not pile up for long.
pub const REVOCATION_PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// Keeps the revocation deny-list bounded: once at start (a node reads the whole table when it
/// starts) and then every `every`, until `stop`, deletes from the store and drops from this
/// node's cache the subject and session entries older than the access token lifetime and a
/// margin (`Revocations::prune`). Every node runs it, for its own cache; the delete is
/// idempotent, so nodes racing do no harm.
pub async fn revocation_pruning(
    revocations: Arc<Revocations>,
    every: Duration,
    stop: CancellationToken,
) {
    loop {
        let (deleted, dropped) = revocations.prune(chrono::Utc::now()).await;
        match deleted {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "pruned expired revocations"),
            // Retried at the next pass; the cache is pruned anyway.
            Err(e) => tracing::warn!(error = %e, "revocation pruning: delete failed"),
        }
        if dropped > 0 {
            tracing::debug!(
                dropped,
                cached = revocations.cached(),
                "dropped expired revocations from the cache"
            );
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Gives memory the process freed back to the system, every `every` (zero: never), until `stop`.
///
/// glibc's allocator returns freed memory only from the top of its heaps; what a burst freed in
/// the middle (a flood of WebSocket subscriptions: one ~112 KiB fan-out buffer per channel,
/// interleaved with small allocations that outlive them) stays resident. Measured: 1,200
/// channels took the server from 40 to 164 MiB, still 164 MiB after every client left;
/// `malloc_trim` releases the free pages inside the heaps too. It walks the heaps holding each
/// arena's lock, which at this period costs nothing noticeable. Other platforms' allocators do not
/// need it (and have no `malloc_trim`).
pub async fn allocator_trim(every: Duration, stop: CancellationToken) {
    if every.is_zero() {
        return;
    }
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: `malloc_trim` only releases free memory; it is safe to call at any time from
        // any thread (it takes the allocator's own locks).
        let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
    }
}

/// Applies the file's `[[task_limits]]`, starts keeping this node's cached pauses and limits
/// current, reconciles the file's `[[schedules]]`, and starts this node's scheduler (every node
/// runs one; the store lets one of them claim each firing).
pub async fn scheduling(
    config: &Config,
    state: &AppState,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let limits = config
        .task_limits
        .iter()
        .map(|l| {
            l.limit()
                .map_err(|e| anyhow::anyhow!("task_limits `{}`: {e}", l.subject()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    state
        .queues
        .apply_limits(&limits)
        .await
        .map_err(|e| anyhow::anyhow!("cannot apply task_limits: {e}"))?;
    tokio::spawn(
        state
            .queues
            .clone()
            .watch(Config::ms(config.queue_poll_ms), stop.clone()),
    );
    state
        .schedules
        .reconcile(config.schedules.clone())
        .await
        .map_err(|e| anyhow::anyhow!("cannot reconcile schedules: {e}"))?;
    tokio::spawn(mcp_core::services::scheduler::run(
        state.schedules.clone(),
        stop.clone(),
    ));
    Ok(())
}
