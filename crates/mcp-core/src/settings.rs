//! Runtime settings: a defined set of configuration keys (rate limits, quotas, the log filter,
//! worker concurrency, breaker thresholds, …) that change without a restart, and the
//! `SettingsStore` port that keeps the runtime overrides of a cluster (and its feature flags,
//! `crate::flags`).
//!
//! Each key has one effective value and one source: the default, the configuration file, the
//! environment, or `runtime` (an override set through `PATCH /v1/settings`). A runtime override
//! wins over everything until it is removed (`null`); reloading the file (SIGHUP) changes the
//! values beneath it. Which keys exist, which are dynamic and what a valid combination is are the
//! binary's knowledge (it owns the configuration), handed in as a [`SettingsSchema`].
//!
//! The store is the truth: every node reads the overrides every `poll_interval` (≤ 1 s, so the
//! bound holds when the bus is down) and at once when another node nudges it on
//! `system.settings`, exactly as `crate::revocations` does. Components follow the effective
//! values through `watch()`.

use crate::events::{Event, EventBus, Subscription};
use crate::store::StoreError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

/// The bus channel on which a node that changed a setting nudges the others.
pub const CHANNEL: &str = "system.settings";

/// Where an effective value comes from, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Default,
    File,
    Env,
    Runtime,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Default => "default",
            Source::File => "file",
            Source::Env => "env",
            Source::Runtime => "runtime",
        }
    }
}

/// One key as `GET /v1/settings` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Setting {
    #[schema(value_type = Object)]
    pub value: Value,
    pub source: Source,
    /// The value beneath a runtime override (default, file or environment).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub configured: Option<Value>,
}

/// Key → effective value, for every dynamic key.
pub type Effective = BTreeMap<String, Setting>;

/// A value kept by the store: a runtime setting override or a feature flag.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub name: String,
    pub value: Value,
    pub updated_at: DateTime<Utc>,
    /// Subject of who set it.
    pub updated_by: Option<String>,
}

/// Keeps the runtime setting overrides and the feature flags of the cluster.
#[async_trait]
pub trait SettingsStore: Send + Sync + 'static {
    /// Every runtime override, by name.
    async fn list_settings(&self) -> Result<Vec<Stored>, StoreError>;
    /// Sets `put` and removes `remove`, in one transaction.
    async fn write_settings(&self, put: &[Stored], remove: &[String]) -> Result<(), StoreError>;
    /// Every feature flag, by name.
    async fn list_flags(&self) -> Result<Vec<Stored>, StoreError>;
    /// Inserts or replaces the flag of that name.
    async fn put_flag(&self, flag: &Stored) -> Result<(), StoreError>;
    /// `false` when there was none of that name.
    async fn delete_flag(&self, name: &str) -> Result<bool, StoreError>;
}

/// What a key is to the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// Changeable at runtime.
    Dynamic,
    /// A configuration key that takes a restart.
    Static,
    Unknown,
}

/// The binary's knowledge of its configuration.
pub trait SettingsSchema: Send + Sync + 'static {
    fn kind(&self, key: &str) -> KeyKind;
    /// Whether these values (every dynamic key's) make a valid configuration; the message says
    /// what is wrong.
    fn check(&self, values: &BTreeMap<String, Value>) -> Result<(), String>;
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("`{0}` is not a configuration key")]
    Unknown(String),
    #[error("`{0}` cannot change at runtime: change the configuration and restart")]
    NotDynamic(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Store failures while polling, to log a long outage as a handful of lines.
static POLL_FAILURES: AtomicU64 = AtomicU64::new(0);

/// The node's effective settings, and the way to change them.
pub struct Settings {
    store: Arc<dyn SettingsStore>,
    events: Option<Arc<dyn EventBus>>,
    schema: Arc<dyn SettingsSchema>,
    poll_interval: Duration,
    /// The dynamic keys' values from default, file and environment.
    configured: std::sync::Mutex<BTreeMap<String, (Value, Source)>>,
    /// The runtime overrides as last read from the store.
    overrides: std::sync::Mutex<BTreeMap<String, Value>>,
    effective: watch::Sender<Arc<Effective>>,
    /// The effective values the node's components last put in force (see
    /// [`Settings::applied`]); `None` while nothing applies them.
    applied: watch::Sender<Option<Arc<Effective>>>,
}

/// How long a change waits for this node's components to put it in force before `patch`
/// returns anyway (they apply a change in microseconds; this bounds a stuck applier).
const APPLY_WAIT: Duration = Duration::from_secs(2);

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("effective", &self.effective.borrow())
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// `configured`: every dynamic key with its value and source before runtime overrides.
    pub fn new(
        store: Arc<dyn SettingsStore>,
        events: Option<Arc<dyn EventBus>>,
        schema: Arc<dyn SettingsSchema>,
        configured: BTreeMap<String, (Value, Source)>,
        poll_interval: Duration,
    ) -> Settings {
        let settings = Settings {
            store,
            events,
            schema,
            poll_interval,
            configured: std::sync::Mutex::new(configured),
            overrides: Default::default(),
            effective: watch::channel(Arc::new(Effective::new())).0,
            applied: watch::channel(None).0,
        };
        settings.recompute();
        settings
    }

    /// The effective value of every dynamic key.
    pub fn effective(&self) -> Arc<Effective> {
        self.effective.borrow().clone()
    }

    /// Sees every change of the effective values.
    pub fn watch(&self) -> watch::Receiver<Arc<Effective>> {
        self.effective.subscribe()
    }

    /// As [`Settings::watch`], for the one that puts the values in force on this node: from
    /// now on a change waits for it to say so ([`Settings::applied`]) before `patch` returns,
    /// so the caller's next request meets the change.
    pub fn watch_to_apply(&self) -> watch::Receiver<Arc<Effective>> {
        let changes = self.effective.subscribe();
        self.applied.send_if_modified(|applied| {
            // Nothing in force yet: an empty set equals no effective values.
            applied.get_or_insert_with(|| Arc::new(Effective::new()));
            false
        });
        changes
    }

    /// Tells that the node's components now run with `effective` (what
    /// [`Settings::watch_to_apply`] showed them).
    pub fn applied(&self, effective: Arc<Effective>) {
        self.applied.send_replace(Some(effective));
    }

    /// Waits (at most [`APPLY_WAIT`]) until the components have caught up with the effective
    /// values, when something applies them.
    async fn in_force(&self) {
        let mut applied = self.applied.subscribe();
        let caught_up = applied.wait_for(|applied| {
            applied
                .as_ref()
                .is_none_or(|applied| **applied == *self.effective())
        });
        if tokio::time::timeout(APPLY_WAIT, caught_up).await.is_err() {
            tracing::warn!("runtime settings changed but not applied yet on this node");
        }
    }

    /// Replaces the configured values (a reloaded file); runtime overrides stay on top.
    pub fn reload(&self, configured: BTreeMap<String, (Value, Source)>) {
        *lock(&self.configured) = configured;
        self.recompute();
    }

    /// Sets (a value) or removes (`null`) runtime overrides, all or none: every key must be
    /// dynamic and the result a valid configuration. Recorded durably, in force on this node
    /// before it returns (see [`Settings::applied`]), and nudged to the others.
    pub async fn patch(
        &self,
        changes: &BTreeMap<String, Value>,
        by: &str,
    ) -> Result<Arc<Effective>, SettingsError> {
        for key in changes.keys() {
            match self.schema.kind(key) {
                KeyKind::Dynamic => {}
                KeyKind::Static => return Err(SettingsError::NotDynamic(key.clone())),
                KeyKind::Unknown => return Err(SettingsError::Unknown(key.clone())),
            }
        }
        let mut values: BTreeMap<String, Value> = self
            .effective()
            .iter()
            .map(|(k, s)| (k.clone(), s.value.clone()))
            .collect();
        let configured = lock(&self.configured).clone();
        for (key, value) in changes {
            let value = match value {
                Value::Null => configured
                    .get(key)
                    .map(|(v, _)| v.clone())
                    .unwrap_or(Value::Null),
                value => value.clone(),
            };
            values.insert(key.clone(), value);
        }
        self.schema.check(&values).map_err(SettingsError::Invalid)?;
        let now = Utc::now();
        let (remove, put): (Vec<_>, Vec<_>) = changes.iter().partition(|(_, v)| v.is_null());
        let put: Vec<Stored> = put
            .into_iter()
            .map(|(k, v)| Stored {
                name: k.clone(),
                value: v.clone(),
                updated_at: now,
                updated_by: Some(by.to_string()),
            })
            .collect();
        let remove: Vec<String> = remove.into_iter().map(|(k, _)| k.clone()).collect();
        self.store.write_settings(&put, &remove).await?;
        {
            let mut overrides = lock(&self.overrides);
            for stored in &put {
                overrides.insert(stored.name.clone(), stored.value.clone());
            }
            for key in &remove {
                overrides.remove(key);
            }
        }
        self.recompute();
        self.in_force().await;
        nudge(
            self.events.as_deref(),
            CHANNEL,
            "settings.changed",
            serde_json::json!({"keys": changes.keys().collect::<Vec<_>>()}),
        )
        .await;
        Ok(self.effective())
    }

    /// Reads the overrides from the store and applies them; `true` when anything changed.
    pub async fn refresh(&self) -> Result<bool, StoreError> {
        let stored = self.store.list_settings().await?;
        let overrides: BTreeMap<String, Value> = stored
            .into_iter()
            // A key this version does not know or no longer changes at runtime is left alone.
            .filter(|s| self.schema.kind(&s.name) == KeyKind::Dynamic)
            .map(|s| (s.name, s.value))
            .collect();
        {
            let mut current = lock(&self.overrides);
            if *current == overrides {
                return Ok(false);
            }
            *current = overrides;
        }
        Ok(self.recompute())
    }

    /// Rebuilds the effective values; `true` when they changed.
    fn recompute(&self) -> bool {
        let configured = lock(&self.configured).clone();
        let overrides = lock(&self.overrides).clone();
        let mut effective = Effective::new();
        for (key, (value, source)) in configured {
            let setting = match overrides.get(&key) {
                Some(runtime) => Setting {
                    value: runtime.clone(),
                    source: Source::Runtime,
                    configured: Some(value),
                },
                None => Setting {
                    value,
                    source,
                    configured: None,
                },
            };
            effective.insert(key, setting);
        }
        self.effective.send_if_modified(|current| {
            if **current == effective {
                false
            } else {
                *current = Arc::new(effective);
                true
            }
        })
    }

    /// Keeps the overrides current until `stop`: a read every `poll_interval`, and one at once
    /// on each nudge or bus interruption.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let this = self.clone();
        keep_current(
            self.events.clone(),
            CHANNEL,
            self.poll_interval,
            stop,
            move || {
                let this = this.clone();
                async move {
                    match this.refresh().await {
                        Ok(_) => POLL_FAILURES.store(0, Ordering::Relaxed),
                        Err(e) => {
                            let failures = POLL_FAILURES.fetch_add(1, Ordering::Relaxed) + 1;
                            if failures.is_power_of_two() {
                                tracing::warn!(error = %e, failures, "cannot read runtime settings; keeping the current ones");
                            }
                        }
                    }
                }
            },
        )
        .await
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Publishes a nudge; only a nudge: the receivers read the store, which is the truth.
pub(crate) async fn nudge(
    events: Option<&dyn EventBus>,
    channel: &str,
    event_type: &str,
    data: Value,
) {
    if let Some(events) = events {
        let event = Event::new(event_type, data, None);
        if let Err(e) = events.publish(channel, Arc::new(event)).await {
            tracing::debug!(error = %e, channel, "cannot nudge other nodes; they poll");
        }
    }
}

/// Calls `refresh` every `interval` and at once on each nudge on `channel` (or bus
/// interruption), until `stop`: the loop of `crate::revocations`, shared by settings and flags.
pub(crate) async fn keep_current<F, Fut>(
    events: Option<Arc<dyn EventBus>>,
    channel: &'static str,
    interval: Duration,
    stop: CancellationToken,
    refresh: F,
) where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    async fn subscribe(events: &Option<Arc<dyn EventBus>>, channel: &str) -> Option<Subscription> {
        match events.as_ref()?.subscribe(channel).await {
            Ok(subscription) => Some(subscription),
            Err(e) => {
                tracing::debug!(error = %e, channel, "nudges unavailable; polling only");
                None
            }
        }
    }
    async fn next(nudges: &mut Option<Subscription>) -> Result<(), broadcast::error::RecvError> {
        match nudges {
            Some(subscription) => subscription.recv().await.map(|_| ()),
            None => std::future::pending().await,
        }
    }
    let mut nudges = subscribe(&events, channel).await;
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let nudge = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => None,
            nudge = next(&mut nudges) => Some(nudge),
        };
        match nudge {
            Some(Err(broadcast::error::RecvError::Closed)) => nudges = None,
            None if nudges.is_none() => nudges = subscribe(&events, channel).await,
            _ => {}
        }
        refresh().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Memory {
        settings: std::sync::Mutex<BTreeMap<String, Value>>,
    }

    #[async_trait]
    impl SettingsStore for Memory {
        async fn list_settings(&self) -> Result<Vec<Stored>, StoreError> {
            Ok(lock(&self.settings)
                .iter()
                .map(|(k, v)| Stored {
                    name: k.clone(),
                    value: v.clone(),
                    updated_at: Utc::now(),
                    updated_by: None,
                })
                .collect())
        }
        async fn write_settings(
            &self,
            put: &[Stored],
            remove: &[String],
        ) -> Result<(), StoreError> {
            let mut settings = lock(&self.settings);
            for s in put {
                settings.insert(s.name.clone(), s.value.clone());
            }
            for k in remove {
                settings.remove(k);
            }
            Ok(())
        }
        async fn list_flags(&self) -> Result<Vec<Stored>, StoreError> {
            Ok(Vec::new())
        }
        async fn put_flag(&self, _: &Stored) -> Result<(), StoreError> {
            Ok(())
        }
        async fn delete_flag(&self, _: &str) -> Result<bool, StoreError> {
            Ok(false)
        }
    }

    struct Schema;
    impl SettingsSchema for Schema {
        fn kind(&self, key: &str) -> KeyKind {
            match key {
                "rate" => KeyKind::Dynamic,
                "listen" => KeyKind::Static,
                _ => KeyKind::Unknown,
            }
        }
        fn check(&self, values: &BTreeMap<String, Value>) -> Result<(), String> {
            match values.get("rate").and_then(Value::as_u64) {
                Some(_) => Ok(()),
                None => Err("rate must be a whole number".into()),
            }
        }
    }

    fn settings(store: Arc<Memory>) -> Settings {
        Settings::new(
            store,
            None,
            Arc::new(Schema),
            BTreeMap::from([("rate".into(), (Value::from(10), Source::File))]),
            Duration::from_millis(100),
        )
    }

    #[tokio::test]
    async fn a_runtime_override_wins_until_removed() {
        let store = Arc::new(Memory::default());
        let settings = settings(store.clone());
        assert_eq!(settings.effective()["rate"].source, Source::File);
        let effective = settings
            .patch(&BTreeMap::from([("rate".into(), Value::from(5))]), "admin")
            .await
            .unwrap();
        assert_eq!(effective["rate"].value, Value::from(5));
        assert_eq!(effective["rate"].source, Source::Runtime);
        assert_eq!(effective["rate"].configured, Some(Value::from(10)));
        settings.reload(BTreeMap::from([(
            "rate".into(),
            (Value::from(20), Source::Env),
        )]));
        assert_eq!(settings.effective()["rate"].value, Value::from(5));
        settings
            .patch(&BTreeMap::from([("rate".into(), Value::Null)]), "admin")
            .await
            .unwrap();
        assert_eq!(settings.effective()["rate"].value, Value::from(20));
        assert_eq!(settings.effective()["rate"].source, Source::Env);
    }

    #[tokio::test]
    async fn refuses_static_unknown_and_invalid_keys_whole() {
        let store = Arc::new(Memory::default());
        let settings = settings(store.clone());
        let patch = |k: &str, v: Value| BTreeMap::from([(k.to_string(), v)]);
        assert!(matches!(
            settings
                .patch(&patch("listen", Value::from("x")), "a")
                .await,
            Err(SettingsError::NotDynamic(_))
        ));
        assert!(matches!(
            settings.patch(&patch("nope", Value::from(1)), "a").await,
            Err(SettingsError::Unknown(_))
        ));
        assert!(matches!(
            settings
                .patch(&patch("rate", Value::from("fast")), "a")
                .await,
            Err(SettingsError::Invalid(_))
        ));
        assert!(lock(&store.settings).is_empty());
    }

    #[tokio::test]
    async fn another_nodes_change_is_read_from_the_store() {
        let store = Arc::new(Memory::default());
        let a = settings(store.clone());
        let b = settings(store.clone());
        let seen = b.watch();
        a.patch(&BTreeMap::from([("rate".into(), Value::from(3))]), "admin")
            .await
            .unwrap();
        assert!(b.refresh().await.unwrap());
        assert!(seen.has_changed().unwrap());
        assert_eq!(b.effective()["rate"].value, Value::from(3));
        assert!(!b.refresh().await.unwrap(), "nothing new");
    }

    #[tokio::test]
    async fn a_change_returns_once_the_applier_put_it_in_force() {
        let settings = Arc::new(settings(Arc::new(Memory::default())));
        // An applier as the binary runs one, slow to put each change in force.
        let in_force = Arc::new(std::sync::Mutex::new(Value::Null));
        let mut changes = settings.watch_to_apply();
        let (applier, put) = (settings.clone(), in_force.clone());
        tokio::spawn(async move {
            loop {
                let effective = changes.borrow_and_update().clone();
                tokio::time::sleep(Duration::from_millis(50)).await;
                *lock(&put) = effective["rate"].value.clone();
                applier.applied(effective);
                if changes.changed().await.is_err() {
                    return;
                }
            }
        });
        settings
            .patch(&BTreeMap::from([("rate".into(), Value::from(7))]), "admin")
            .await
            .unwrap();
        assert_eq!(*lock(&in_force), Value::from(7));
    }
}
