//! The health monitor: one state per dependency (the database, Redis, each integration), kept
//! fresh by probing on an interval and by the failures callers report the moment they see them.
//! Readiness is answered from this state, never by waiting on a dependency, and the database's
//! state drives the breaker in front of the stores (`guard`), so a lost database costs a caller
//! a fast error instead of a pool timeout, and a call already waiting on a database that went
//! silent (a network black hole: no error, no answer) ends the moment the monitor sees it down.

mod guard;

pub use guard::{Guarded, NO_CONNECTION_IN_TIME};

use crate::events::{Event, EventBus};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

/// The channel health changes are published on.
pub const HEALTH_CHANNEL: &str = "system.health";

/// The dependency name of the database.
pub const DATABASE: &str = "database";

/// What `failing` names while the node drains before a graceful shutdown.
pub const SHUTTING_DOWN: &str = "shutting_down";

/// How a dependency is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    Up,
    /// Answers, but not fully (e.g. an integration whose session needs attention); it still
    /// counts as up for readiness and the gauge.
    Degraded,
    Down,
}

impl HealthState {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Up => "up",
            HealthState::Degraded => "degraded",
            HealthState::Down => "down",
        }
    }
}

/// One dependency as `GET /v1/health` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct DependencyHealth {
    pub name: String,
    pub state: HealthState,
    /// Down ⇒ the node is not ready (the database). A non-critical dependency (Redis, an
    /// integration) has a fallback or only affects its own tasks.
    pub critical: bool,
    /// When the dependency entered `state`.
    pub since: DateTime<Utc>,
    /// The last failure seen (kept after recovery, for the record).
    pub last_error: Option<String>,
    /// When it was last probed; `None` before the first probe.
    pub last_check: Option<DateTime<Utc>>,
}

/// Why a probe did not find its dependency up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub state: HealthState,
    pub message: String,
}

impl Failure {
    pub fn down(message: impl Into<String>) -> Failure {
        Failure {
            state: HealthState::Down,
            message: message.into(),
        }
    }

    pub fn degraded(message: impl Into<String>) -> Failure {
        Failure {
            state: HealthState::Degraded,
            message: message.into(),
        }
    }
}

/// A cheap check of one dependency. The monitor bounds each call by its probe timeout, so a
/// probe may simply await its dependency.
#[async_trait]
pub trait Probe: Send + Sync + 'static {
    fn name(&self) -> &str;
    /// Whether this dependency being down makes the node not ready.
    fn critical(&self) -> bool;
    async fn check(&self) -> Result<(), Failure>;
}

/// A probe made of a closure, so wiring one is a few lines:
/// `FnProbe::new("redis", false, move || { let r = redis.clone(); Box::pin(async move { … }) })`.
pub struct FnProbe<F> {
    name: String,
    critical: bool,
    check: F,
}

impl<F> FnProbe<F>
where
    F: Fn() -> BoxFuture<'static, Result<(), Failure>> + Send + Sync + 'static,
{
    pub fn new(name: impl Into<String>, critical: bool, check: F) -> FnProbe<F> {
        FnProbe {
            name: name.into(),
            critical,
            check,
        }
    }
}

#[async_trait]
impl<F> Probe for FnProbe<F>
where
    F: Fn() -> BoxFuture<'static, Result<(), Failure>> + Send + Sync + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }
    fn critical(&self) -> bool {
        self.critical
    }
    async fn check(&self) -> Result<(), Failure> {
        (self.check)().await
    }
}

/// How often and how patiently dependencies are probed.
#[derive(Debug, Clone, Copy)]
pub struct HealthConfig {
    /// Between probes of a dependency that is up (or degraded).
    pub interval: Duration,
    /// Between probes of a dependency that is down, so its recovery is seen quickly.
    pub down_interval: Duration,
    /// Longest a probe may take; beyond, the dependency counts as down.
    pub probe_timeout: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval: Duration::from_secs(2),
            down_interval: Duration::from_millis(250),
            probe_timeout: Duration::from_secs(1),
        }
    }
}

struct Entry {
    health: DependencyHealth,
    /// Shared with `Dependency` handles: read on every guarded store call, so it is an atomic
    /// rather than behind the lock.
    down: Arc<AtomicBool>,
    /// Wakes this dependency's probe loop early (a caller just reported a failure).
    nudge: Arc<Notify>,
    /// Wakes every call waiting on the dependency when it goes down.
    went_down: Arc<Notify>,
}

/// The node's view of its dependencies.
pub struct HealthMonitor {
    config: HealthConfig,
    entries: Mutex<BTreeMap<String, Entry>>,
    probes: Mutex<Vec<Arc<dyn Probe>>>,
    events: Mutex<Option<Arc<dyn EventBus>>>,
    /// Set once shutdown begins: the node still serves but is no longer ready, so that load
    /// balancers take it out of rotation before it stops accepting.
    draining: AtomicBool,
}

impl Default for HealthMonitor {
    fn default() -> Self {
        HealthMonitor::new(HealthConfig::default())
    }
}

/// A handle on one dependency for the code that uses it: a lock-free "is it down" and the
/// report of what a call saw.
#[derive(Clone)]
pub struct Dependency {
    name: Arc<str>,
    down: Arc<AtomicBool>,
    went_down: Arc<Notify>,
    monitor: Arc<HealthMonitor>,
}

impl Dependency {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the dependency is known to be down now.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    pub fn report_failure(&self, error: &str) {
        self.monitor.report_failure(&self.name, error);
    }

    pub fn report_success(&self) {
        self.monitor.report_success(&self.name);
    }

    /// A caller saw a sign of trouble that may also be load: probe now, change nothing yet.
    pub fn suspect(&self) {
        self.monitor.suspect(&self.name);
    }

    /// The state as the monitor holds it.
    pub fn health(&self) -> Option<DependencyHealth> {
        self.monitor.dependency(&self.name)
    }

    /// Returns once the dependency is down (at once if it is now).
    pub async fn until_down(&self) {
        loop {
            let went_down = self.went_down.notified();
            tokio::pin!(went_down);
            // Registered before the check, so a change in between still wakes it.
            went_down.as_mut().enable();
            if self.is_down() {
                return;
            }
            went_down.await;
        }
    }

    /// How long a call may go unanswered before the probe should look: the probe's own
    /// patience, since a call slower than a probe may allow is the first sign of a silent
    /// dependency.
    pub fn patience(&self) -> Duration {
        self.monitor.config.probe_timeout
    }
}

impl HealthMonitor {
    pub fn new(config: HealthConfig) -> HealthMonitor {
        HealthMonitor {
            config,
            entries: Mutex::new(BTreeMap::new()),
            probes: Mutex::new(Vec::new()),
            events: Mutex::new(None),
            draining: AtomicBool::new(false),
        }
    }

    pub fn config(&self) -> HealthConfig {
        self.config
    }

    /// Publishes every later change on `system.health`.
    pub fn set_events(&self, events: Arc<dyn EventBus>) {
        *lock(&self.events) = Some(events);
    }

    /// Declares a dependency (up until a probe or a caller says otherwise) and returns its
    /// handle. Declaring it again returns the same state.
    pub fn declare(self: &Arc<Self>, name: &str, critical: bool) -> Dependency {
        let mut entries = lock(&self.entries);
        let entry = entries.entry(name.to_owned()).or_insert_with(|| {
            let health = DependencyHealth {
                name: name.to_owned(),
                state: HealthState::Up,
                critical,
                since: Utc::now(),
                last_error: None,
                last_check: None,
            };
            gauge(&health);
            Entry {
                health,
                down: Arc::new(AtomicBool::new(false)),
                nudge: Arc::new(Notify::new()),
                went_down: Arc::new(Notify::new()),
            }
        });
        Dependency {
            name: name.into(),
            down: entry.down.clone(),
            went_down: entry.went_down.clone(),
            monitor: self.clone(),
        }
    }

    /// Adds a probe (declaring its dependency); it runs once `run` is called.
    pub fn register(self: &Arc<Self>, probe: Arc<dyn Probe>) -> Dependency {
        let dependency = self.declare(probe.name(), probe.critical());
        lock(&self.probes).push(probe);
        dependency
    }

    /// Every dependency, by name.
    pub fn snapshot(&self) -> Vec<DependencyHealth> {
        lock(&self.entries)
            .values()
            .map(|e| e.health.clone())
            .collect()
    }

    pub fn dependency(&self, name: &str) -> Option<DependencyHealth> {
        lock(&self.entries).get(name).map(|e| e.health.clone())
    }

    /// The critical dependencies that are down, and `shutting_down` once the node drains:
    /// empty means ready.
    pub fn failing(&self) -> Vec<String> {
        let mut failing: Vec<String> = lock(&self.entries)
            .values()
            .filter(|e| e.health.critical && e.health.state == HealthState::Down)
            .map(|e| e.health.name.clone())
            .collect();
        if self.is_draining() {
            failing.push(SHUTTING_DOWN.to_owned());
        }
        failing
    }

    /// Shutdown has begun: from now on the node is not ready (for good), though it serves.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// A caller saw the dependency fail: it is down from now until a probe finds it back, and
    /// its probe runs again soon.
    pub fn report_failure(&self, name: &str, error: &str) {
        let nudge = self.set(name, Err(Failure::down(error)), false);
        if let Some(nudge) = nudge {
            nudge.notify_one();
        }
    }

    /// A caller saw a sign of trouble that may also be load (no pooled connection free in
    /// time): the probe runs soon and decides.
    pub fn suspect(&self, name: &str) {
        if let Some(entry) = lock(&self.entries).get(name) {
            entry.nudge.notify_one();
        }
    }

    /// A caller saw the dependency work.
    pub fn report_success(&self, name: &str) {
        self.set(name, Ok(()), false);
    }

    /// Records a result; announces a change of state. Returns the entry's nudge when the
    /// state changed.
    fn set(&self, name: &str, result: Result<(), Failure>, probed: bool) -> Option<Arc<Notify>> {
        let now = Utc::now();
        let (changed, nudge) = {
            let mut entries = lock(&self.entries);
            let entry = entries.get_mut(name)?;
            let health = &mut entry.health;
            if probed {
                health.last_check = Some(now);
            }
            let state = match &result {
                Ok(()) => HealthState::Up,
                Err(failure) => {
                    health.last_error = Some(failure.message.clone());
                    failure.state
                }
            };
            if health.state == state {
                return None;
            }
            health.state = state;
            health.since = now;
            entry
                .down
                .store(state == HealthState::Down, Ordering::Release);
            if state == HealthState::Down {
                entry.went_down.notify_waiters();
            }
            (health.clone(), entry.nudge.clone())
        };
        self.announce(&changed, result.err().map(|f| f.message));
        Some(nudge)
    }

    /// A log line, the gauge, and an event on `system.health`.
    fn announce(&self, health: &DependencyHealth, error: Option<String>) {
        let state = health.state.as_str();
        match health.state {
            HealthState::Up => tracing::info!(dependency = %health.name, state, "dependency is up"),
            _ => tracing::warn!(
                dependency = %health.name,
                state,
                error = error.as_deref().unwrap_or(""),
                "dependency is not up"
            ),
        }
        gauge(health);
        let Some(bus) = lock(&self.events).clone() else {
            return;
        };
        let event = Arc::new(Event::new(
            format!("health.{state}"),
            serde_json::json!({
                "dependency": health.name,
                "state": health.state,
                "critical": health.critical,
                "since": health.since,
                "error": error,
            }),
            None,
        ));
        // Publishing may wait on Redis; a health change must never wait for it.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = bus.publish(HEALTH_CHANNEL, event).await {
                    tracing::debug!(error = %e, "cannot publish a health change");
                }
            });
        }
    }

    /// Probes every registered dependency until `stop`: at once, then every `interval`, or
    /// every `down_interval` while it is down.
    pub fn run(self: &Arc<Self>, stop: CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
        // Again now: a metrics recorder installed after `declare` missed the first values.
        for entry in lock(&self.entries).values() {
            gauge(&entry.health);
        }
        let probes = lock(&self.probes).clone();
        probes
            .into_iter()
            .map(|probe| tokio::spawn(self.clone().probe_loop(probe, stop.clone())))
            .collect()
    }

    /// Probes one dependency now and records the result.
    pub async fn probe_once(&self, probe: &dyn Probe) {
        let result = match tokio::time::timeout(self.config.probe_timeout, probe.check()).await {
            Ok(result) => result,
            Err(_) => Err(Failure::down(format!(
                "no answer within {} ms",
                self.config.probe_timeout.as_millis()
            ))),
        };
        self.set(probe.name(), result, true);
    }

    async fn probe_loop(self: Arc<Self>, probe: Arc<dyn Probe>, stop: CancellationToken) {
        let Some(nudge) = lock(&self.entries)
            .get(probe.name())
            .map(|e| e.nudge.clone())
        else {
            return;
        };
        loop {
            tokio::select! {
                _ = self.probe_once(probe.as_ref()) => {}
                _ = stop.cancelled() => return,
            }
            let down = self
                .dependency(probe.name())
                .is_some_and(|h| h.state == HealthState::Down);
            let wait = if down {
                self.config.down_interval
            } else {
                self.config.interval
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                // A caller saw it fail: confirm (or clear) now rather than at the next tick.
                // Nudges coalesce (one stored permit), so many failing callers make one probe.
                _ = nudge.notified() => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}

/// `mcp_dependency_up{dependency}`: 1 up or degraded, 0 down.
fn gauge(health: &DependencyHealth) {
    let up = if health.state == HealthState::Down {
        0.0
    } else {
        1.0
    };
    metrics::gauge!("mcp_dependency_up", "dependency" => health.name.clone()).set(up);
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section is a plain read or assignment: a panic elsewhere cannot leave the
    // data half-changed, so a poisoned lock is still usable.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests;
