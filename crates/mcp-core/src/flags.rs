//! Feature flags: switches an admin turns on, off, or on for a share of subjects, optionally only
//! for some roles or subjects, without a restart. `Flags::enabled(name, &principal)` is the one
//! way to ask; the answer for a subject is deterministic (a hash bucket of flag and subject), so
//! a rollout grows without anyone flapping in and out.
//!
//! Flags named `integration.<prefix>` switch an integration's task types (`<prefix>.*`) off
//! while they are disabled: the claim loops leave those tasks queued, attempts unspent, as behind
//! an open breaker (`Flags::paused_prefixes`).
//!
//! Like the runtime settings (`crate::settings`), flags live in the `SettingsStore`; every node
//! reads them every `poll_interval` and at once when nudged on `system.flags`.

use crate::principal::{Principal, Role};
use crate::settings::{SettingsStore, Stored, keep_current, nudge};
use crate::store::StoreError;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

/// The bus channel carrying flag changes.
pub const CHANNEL: &str = "system.flags";

/// The name prefix of the flags that switch an integration's task types.
pub const INTEGRATION_PREFIX: &str = "integration.";

/// The longest flag name.
pub const MAX_NAME_LEN: usize = 100;

/// A flag as `PUT /v1/flags/{name}` takes it: `{"enabled": false}`, `{"enabled": true}`, or a
/// rollout such as `{"percentage": 10, "roles": ["user"]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Flag {
    /// The master switch: `false` turns the flag off for everyone. Default `true`.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// When set, the flag is on for this share (0–100) of subjects, each subject always in the
    /// same bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<u8>,
    /// When not empty, the flag is on only for principals of these roles.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<Role>,
    /// Subjects the flag is always on for (while `enabled`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<String>,
}

fn yes() -> bool {
    true
}

impl Flag {
    pub fn check(&self) -> Result<(), String> {
        if self.percentage.is_some_and(|p| p > 100) {
            return Err("`percentage` is between 0 and 100".into());
        }
        if self.subjects.iter().any(|s| s.is_empty() || s.len() > 256) {
            return Err("a subject is 1 to 256 characters".into());
        }
        Ok(())
    }

    /// Whether the flag is on for `subject` of `role` (`None`: the hub itself).
    pub fn evaluate(&self, name: &str, subject: Option<&str>, role: Option<Role>) -> bool {
        if !self.enabled {
            return false;
        }
        if let Some(subject) = subject
            && self.subjects.iter().any(|s| s == subject)
        {
            return true;
        }
        if !self.roles.is_empty() && !role.is_some_and(|r| self.roles.contains(&r)) {
            return false;
        }
        match self.percentage {
            None => true,
            Some(percentage) => {
                subject.is_some_and(|subject| bucket(name, subject) < u32::from(percentage))
            }
        }
    }
}

/// A subject's bucket (0–99) for a flag: FNV-1a of `name`, a zero byte and `subject`, mixed by
/// MurmurHash3's finalizer, modulo 100. The same subject always lands in the same bucket of a
/// flag, and in unrelated buckets of different flags.
pub fn bucket(name: &str, subject: &str) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.bytes().chain([0u8]).chain(subject.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    // MurmurHash3's finalizer: FNV-1a's low bits alone follow the last bytes too closely
    // (`user-1`, `user-2`, …).
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    (hash % 100) as u32
}

/// Checks a flag name: 1 to [`MAX_NAME_LEN`] of `a-z`, `0-9`, `_`, `-`, `.`.
pub fn check_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "a flag name is 1 to {MAX_NAME_LEN} characters of a-z, 0-9, `_`, `-`, `.`"
        ))
    }
}

/// A flag as stored and listed.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct FlagEntry {
    pub name: String,
    #[serde(flatten)]
    pub flag: Flag,
    pub updated_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_by: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum FlagError {
    #[error("{0}")]
    Invalid(String),
    #[error("no flag named `{0}`")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The node's copy of the flags.
pub struct Flags {
    store: Arc<dyn SettingsStore>,
    events: Option<Arc<dyn crate::events::EventBus>>,
    poll_interval: Duration,
    cache: watch::Sender<Arc<BTreeMap<String, FlagEntry>>>,
}

impl std::fmt::Debug for Flags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flags")
            .field("flags", &self.cache.borrow())
            .finish_non_exhaustive()
    }
}

impl Flags {
    pub fn new(
        store: Arc<dyn SettingsStore>,
        events: Option<Arc<dyn crate::events::EventBus>>,
        poll_interval: Duration,
    ) -> Flags {
        Flags {
            store,
            events,
            poll_interval,
            cache: watch::channel(Arc::default()).0,
        }
    }

    /// Whether `name` is on for this principal; an unknown flag is off.
    pub fn enabled(&self, name: &str, principal: &Principal) -> bool {
        self.cache.borrow().get(name).is_some_and(|entry| {
            entry
                .flag
                .evaluate(name, Some(&principal.subject), Some(principal.role))
        })
    }

    /// Whether a switch the hub asks for itself (no principal) is on; `default` when unknown.
    pub fn enabled_for_hub(&self, name: &str, default: bool) -> bool {
        self.cache
            .borrow()
            .get(name)
            .map_or(default, |entry| entry.flag.evaluate(name, None, None))
    }

    /// The task type prefixes switched off by a disabled `integration.<prefix>` flag.
    pub fn paused_prefixes(&self) -> HashSet<String> {
        self.cache
            .borrow()
            .iter()
            .filter_map(|(name, entry)| {
                let prefix = name.strip_prefix(INTEGRATION_PREFIX)?;
                (!entry.flag.enabled).then(|| prefix.to_string())
            })
            .collect()
    }

    pub fn list(&self) -> Vec<FlagEntry> {
        self.cache.borrow().values().cloned().collect()
    }

    /// Sees every change of the flags.
    pub fn watch(&self) -> watch::Receiver<Arc<BTreeMap<String, FlagEntry>>> {
        self.cache.subscribe()
    }

    /// Sets the flag durably, applies it here and announces it on `system.flags`.
    pub async fn put(&self, name: &str, flag: Flag, by: &str) -> Result<FlagEntry, FlagError> {
        check_name(name).map_err(FlagError::Invalid)?;
        flag.check().map_err(FlagError::Invalid)?;
        let stored = Stored {
            name: name.to_string(),
            value: serde_json::to_value(&flag).map_err(|e| FlagError::Invalid(e.to_string()))?,
            updated_at: Utc::now(),
            updated_by: Some(by.to_string()),
        };
        self.store.put_flag(&stored).await?;
        let entry = FlagEntry {
            name: name.to_string(),
            flag,
            updated_at: stored.updated_at,
            updated_by: stored.updated_by,
        };
        self.cache.send_modify(|flags| {
            Arc::make_mut(flags).insert(name.to_string(), entry.clone());
        });
        nudge(
            self.events.as_deref(),
            CHANNEL,
            "flag.changed",
            serde_json::json!({"name": name, "flag": &entry.flag}),
        )
        .await;
        Ok(entry)
    }

    /// Deletes the flag (it is then off, or its default for the hub's own switches).
    pub async fn delete(&self, name: &str) -> Result<(), FlagError> {
        if !self.store.delete_flag(name).await? {
            return Err(FlagError::NotFound(name.to_string()));
        }
        self.cache.send_modify(|flags| {
            Arc::make_mut(flags).remove(name);
        });
        nudge(
            self.events.as_deref(),
            CHANNEL,
            "flag.deleted",
            serde_json::json!({"name": name}),
        )
        .await;
        Ok(())
    }

    /// Reads every flag from the store; `true` when anything changed. A stored flag this version
    /// cannot read is skipped (and logged).
    pub async fn refresh(&self) -> Result<bool, StoreError> {
        let stored = self.store.list_flags().await?;
        let mut flags = BTreeMap::new();
        for s in stored {
            match serde_json::from_value::<Flag>(s.value) {
                Ok(flag) => {
                    flags.insert(
                        s.name.clone(),
                        FlagEntry {
                            name: s.name,
                            flag,
                            updated_at: s.updated_at,
                            updated_by: s.updated_by,
                        },
                    );
                }
                Err(e) => tracing::warn!(flag = %s.name, error = %e, "unreadable flag skipped"),
            }
        }
        Ok(self.cache.send_if_modified(|current| {
            if **current == flags {
                false
            } else {
                *current = Arc::new(flags);
                true
            }
        }))
    }

    /// Keeps the flags current until `stop` (poll plus nudges on `system.flags`).
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
                    if let Err(e) = this.refresh().await {
                        tracing::debug!(error = %e, "cannot read feature flags; keeping the current ones");
                    }
                }
            },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flag(json: serde_json::Value) -> Flag {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_switch_is_on_or_off_for_everyone() {
        let on = flag(serde_json::json!({"enabled": true}));
        let off = flag(serde_json::json!({"enabled": false}));
        for subject in ["ann", "bob"] {
            assert!(on.evaluate("f", Some(subject), Some(Role::User)));
            assert!(!off.evaluate("f", Some(subject), Some(Role::Admin)));
        }
        assert!(on.evaluate("f", None, None));
    }

    #[test]
    fn a_rollout_is_deterministic_per_subject_and_near_its_share() {
        let rollout = flag(serde_json::json!({"percentage": 30}));
        let subjects: Vec<String> = (0..2_000).map(|i| format!("user-{i}")).collect();
        let on: Vec<bool> = subjects
            .iter()
            .map(|s| rollout.evaluate("beta", Some(s.as_str()), Some(Role::User)))
            .collect();
        let again: Vec<bool> = subjects
            .iter()
            .map(|s| rollout.evaluate("beta", Some(s.as_str()), Some(Role::User)))
            .collect();
        assert_eq!(on, again);
        let share = on.iter().filter(|b| **b).count() as f64 / subjects.len() as f64;
        assert!((0.25..0.35).contains(&share), "{share}");
        // Growing the rollout only adds subjects.
        let wider = flag(serde_json::json!({"percentage": 60}));
        for (s, was) in subjects.iter().zip(&on) {
            assert!(!was || wider.evaluate("beta", Some(s.as_str()), Some(Role::User)));
        }
        assert!(!flag(serde_json::json!({"percentage": 0})).evaluate("b", Some("x"), None));
        assert!(flag(serde_json::json!({"percentage": 100})).evaluate("b", Some("x"), None));
    }

    #[test]
    fn targets_roles_and_subjects() {
        let f = flag(serde_json::json!({"roles": ["operator"], "subjects": ["ann"]}));
        assert!(f.evaluate("f", Some("bob"), Some(Role::Operator)));
        assert!(!f.evaluate("f", Some("bob"), Some(Role::User)));
        assert!(f.evaluate("f", Some("ann"), Some(Role::User)));
        assert!(!f.evaluate("f", None, None));
    }

    #[test]
    fn refuses_bad_flags_and_names() {
        assert!(
            flag(serde_json::json!({"percentage": 101}))
                .check()
                .is_err()
        );
        assert!(serde_json::from_value::<Flag>(serde_json::json!({"on": true})).is_err());
        assert!(check_name("integration.discord").is_ok());
        assert!(check_name("Bad Name").is_err());
        assert!(check_name("").is_err());
    }
}
