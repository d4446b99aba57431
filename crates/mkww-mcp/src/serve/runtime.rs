//! Runtime settings and feature flags on this node: reading them before serving, keeping them
//! current (poll plus bus nudges, in core), applying every change to the running components,
//! and reloading the configuration file on SIGHUP.
//!
//! Precedence, weakest first: default < file < environment < runtime override. SIGHUP re-reads
//! the file and the environment, so a file change shows for every dynamic key without a runtime
//! override at once; a key with one keeps it until it is removed (`PATCH` with `null`), and then
//! the reloaded value applies. Keys that are not dynamic take a restart: a SIGHUP that changed
//! them says so in the log.

use crate::config::Config;
use crate::config::dynamic::{self, Schema};
use mcp_api::LiveLimits;
use mcp_core::Orchestrator;
use mcp_core::events::EventBus;
use mcp_core::flags::Flags;
use mcp_core::services::TaskService;
use mcp_core::settings::{Effective, Settings, SettingsStore, Source};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The node's runtime settings and flags, and what they need to reload.
pub struct Runtime {
    pub settings: Arc<Settings>,
    pub flags: Arc<Flags>,
    schema: Arc<Schema>,
    /// The file `serve` was given, if any (else `mkww-mcp.toml` when present).
    given: Option<PathBuf>,
    /// The file read, for the sources.
    file: PathBuf,
}

/// Builds the settings and flags and reads them once, so that nothing set at runtime before
/// this node started is missed while it serves.
pub async fn open(
    config: &Config,
    file: Option<&Path>,
    store: Arc<dyn SettingsStore>,
    events: Arc<dyn EventBus>,
) -> Runtime {
    let file_given = file;
    let file = dynamic::file_path(file);
    let schema = Arc::new(Schema::new(config.clone()));
    let poll = Config::ms(config.settings_poll_ms);
    let settings = Arc::new(Settings::new(
        store.clone(),
        Some(events.clone()),
        schema.clone(),
        config.dynamic_values(&Config::sources(&file)),
        poll,
    ));
    let flags = Arc::new(Flags::new(store, Some(events), poll));
    if let Err(e) = settings.refresh().await {
        tracing::warn!(error = %e, "cannot read runtime settings yet; they are read again every poll");
    }
    if let Err(e) = flags.refresh().await {
        tracing::warn!(error = %e, "cannot read feature flags yet; they are read again every poll");
    }
    Runtime {
        settings,
        flags,
        schema,
        given: file_given.map(Path::to_path_buf),
        file,
    }
}

/// The running components the settings and flags change.
#[derive(Clone)]
pub struct Targets {
    pub orchestrator: Arc<Orchestrator>,
    pub limits: LiveLimits,
    pub tasks: Arc<TaskService>,
}

impl Runtime {
    /// Keeps settings and flags current and applied until `stop`; reloads the file on SIGHUP.
    pub fn start(&self, targets: Targets, stop: &CancellationToken) {
        tokio::spawn(self.settings.clone().run(stop.child_token()));
        tokio::spawn(self.flags.clone().run(stop.child_token()));
        tokio::spawn(apply_settings(
            self.settings.clone(),
            self.schema.clone(),
            Arc::new(targets.clone()),
            stop.clone(),
        ));
        tokio::spawn(apply_flags(
            self.flags.clone(),
            targets.orchestrator.clone(),
            stop.clone(),
        ));
        // Listening now: from here on SIGHUP reloads instead of ending the process.
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(hangups) => {
                tokio::spawn(reload_on_hangup(
                    hangups,
                    self.settings.clone(),
                    self.schema.clone(),
                    (self.given.clone(), self.file.clone()),
                    stop.clone(),
                ));
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; the configuration file is read at start only")
            }
        }
    }
}

/// Applies the effective settings at once and after every change.
async fn apply_settings(
    settings: Arc<Settings>,
    schema: Arc<Schema>,
    targets: Arc<Targets>,
    stop: CancellationToken,
) {
    let mut changes = settings.watch_to_apply();
    let started_with = targets.orchestrator.concurrency();
    let mut applied: Option<Config> = None;
    loop {
        let effective = changes.borrow_and_update().clone();
        applied = Some(apply(
            &effective,
            &schema,
            &targets,
            applied.as_ref(),
            started_with,
        ));
        settings.applied(effective);
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = stop.cancelled() => return,
        }
    }
}

/// Applies `effective` over the loaded configuration; returns what is now in force.
fn apply(
    effective: &Effective,
    schema: &Schema,
    targets: &Targets,
    before: Option<&Config>,
    started_with: usize,
) -> Config {
    let values = effective
        .iter()
        .map(|(key, setting)| (key.clone(), setting.value.clone()))
        .collect();
    let base = schema.base();
    let config = match base.with_values(&values) {
        Ok(config) => config,
        Err(e) => {
            // Checked when set; a file reloaded beneath an override could still clash.
            tracing::error!(error = %format!("{e:#}"), "runtime settings not applied");
            return before.cloned().unwrap_or(base);
        }
    };
    targets.limits.set(super::api::rate_limits(&config));
    targets
        .tasks
        .set_quota_tasks_per_day(config.quota_tasks_per_day);
    if started_with > 0 {
        targets
            .orchestrator
            .set_concurrency(config.worker_concurrency);
    } else if config.worker_concurrency > 0 {
        tracing::warn!(
            "worker_concurrency: this node started API-only (0) and stays so until restarted"
        );
    }
    targets
        .orchestrator
        .balancer()
        .set_breaker_config(super::services::orchestrator_config(&config).breaker);
    if let Err(e) = config.apply_outbound_rules() {
        tracing::error!(error = %format!("{e:#}"), "outbound rules not applied");
    }
    // At start the subscriber already has its filter (from `RUST_LOG` when set): only a
    // runtime value or a change replaces it.
    let log_changed = match before {
        Some(before) => before.log_level != config.log_level,
        None => effective
            .get("log_level")
            .is_some_and(|s| s.source == Source::Runtime),
    };
    if log_changed && let Err(e) = crate::logging::set_log_filter(&config.log_level) {
        tracing::warn!(error = %e, "cannot change the log filter");
    }
    if before.is_some() {
        tracing::info!("runtime settings applied");
    }
    config
}

/// Pauses the task types of integrations switched off by a flag, and resumes them.
async fn apply_flags(flags: Arc<Flags>, orchestrator: Arc<Orchestrator>, stop: CancellationToken) {
    let mut changes = flags.watch();
    loop {
        changes.borrow_and_update();
        let paused = flags.paused_prefixes();
        if !paused.is_empty() {
            tracing::info!(?paused, "integrations switched off by flags");
        }
        orchestrator.set_paused_prefixes(paused);
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = stop.cancelled() => return,
        }
    }
}

/// On SIGHUP: reads the file and environment again and applies their dynamic values beneath
/// any runtime override. A file that no longer loads changes nothing.
async fn reload_on_hangup(
    mut hangups: tokio::signal::unix::Signal,
    settings: Arc<Settings>,
    schema: Arc<Schema>,
    (given, file): (Option<PathBuf>, PathBuf),
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = hangups.recv() => {}
            _ = stop.cancelled() => return,
        }
        let loaded = Config::load(given.as_deref());
        let config = match loaded {
            Ok(config) => config,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "SIGHUP: configuration not reloaded");
                continue;
            }
        };
        let before = schema.base();
        let (old, new) = (before.values(), config.values());
        let restart: Vec<&String> = new
            .iter()
            .filter(|(key, value)| {
                !dynamic::DYNAMIC.contains(&key.as_str())
                    && key.as_str() != "listen"
                    && old.get(*key) != Some(*value)
            })
            .map(|(key, _)| key)
            .collect();
        if !restart.is_empty() {
            tracing::warn!(keys = ?restart, "SIGHUP: these keys changed but take a restart");
        }
        let values = config.dynamic_values(&Config::sources(&file));
        schema.set_base(config);
        settings.reload(values);
        tracing::info!(file = %file.display(), "SIGHUP: configuration reloaded");
        // Let a burst of signals settle.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
