//! Revocation that reaches every node at once: the deny-list of subjects (tokens issued before a
//! cut-off), sessions (logout) and API keys, kept durably by the `IdentityStore` and cached on
//! each node, so that checking a credential costs a map lookup and no query.
//!
//! The store is the truth; every node reads what was recorded since its last read every
//! `poll_interval` (≤ 1 s, so the bound holds when the bus is down), and at once when another
//! node nudges it on the `system.revocations` channel or when its bus link changes. The node that
//! revokes applies the entry to its own cache before answering. Open WebSocket connections
//! `watch()` the cache and re-check their credential whenever it changes.
//!
//! The list stays bounded: an entry for a subject or a session refuses only access tokens issued
//! up to its `not_before`, and those expire `access_token_ttl` later, so once that has passed
//! (plus a margin) the entry can refuse nothing more. `prune` deletes such entries from the
//! store and drops them from the cache, by one rule; revoked API keys stay (they never expire).

use crate::events::{Event, EventBus, Subscription};
use crate::identity::{IdentityStore, Revocation, RevocationTarget};
use crate::store::StoreError;
use chrono::{DateTime, Utc};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The bus channel on which a node that revoked something nudges the others. Clients can
/// neither subscribe nor publish to it (`ws/policy.rs` refuses `system.*` but named channels).
pub const CHANNEL: &str = "system.revocations";

#[derive(Debug, Clone, Copy)]
pub struct RevocationConfig {
    /// How often every node reads new entries from the store, whatever the bus does.
    pub poll_interval: Duration,
    /// How far before the newest entry seen each read starts again: an entry stamped by the
    /// store's clock becomes visible only when its transaction commits, a moment later.
    pub overlap: Duration,
    /// How long a subject or session entry is kept after its `not_before` (and `recorded_at`):
    /// the access token lifetime plus `PRUNE_MARGIN`, after which every token it could refuse
    /// has expired.
    pub keep_for: Duration,
}

/// What is kept beyond the access token lifetime: the tokens' own leeway (5 s) and the clocks
/// of nodes and database disagreeing, with room to spare.
pub const PRUNE_MARGIN: Duration = Duration::from_secs(5 * 60);

impl Default for RevocationConfig {
    fn default() -> Self {
        RevocationConfig {
            poll_interval: Duration::from_millis(500),
            overlap: Duration::from_secs(10),
            // The default access token lifetime (15 min) plus the margin.
            keep_for: Duration::from_secs(15 * 60) + PRUNE_MARGIN,
        }
    }
}

/// A credential as the deny-list sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// An access token: whose, from which login (if it says), issued at (Unix seconds).
    AccessToken {
        subject: String,
        session: Option<Uuid>,
        issued_at: u64,
    },
    ApiKey {
        id: Uuid,
    },
    /// Nothing this list can revoke (the metrics token).
    Other,
}

/// A subject's cut-off as cached.
#[derive(Debug, Clone, Copy)]
struct SubjectCutoff {
    /// The last second whose tokens are refused (Unix seconds, inclusive).
    second: i64,
    /// The latest `not_before` or `recorded_at` seen for it: what `prune` compares.
    latest: DateTime<Utc>,
}

/// The cached deny-list.
#[derive(Debug, Default)]
pub struct DenyList {
    subjects: HashMap<String, SubjectCutoff>,
    /// Session → the latest `not_before` or `recorded_at` seen for it (for `prune`).
    sessions: HashMap<Uuid, DateTime<Utc>>,
    api_keys: HashSet<Uuid>,
}

impl DenyList {
    /// Adds an entry; `true` when it refuses something it did not refuse before.
    pub fn apply(&mut self, entry: &Revocation) -> bool {
        let latest = entry.not_before.max(entry.recorded_at);
        match &entry.target {
            RevocationTarget::Subject(subject) => {
                // Tokens carry whole seconds, so the cut-off second is refused whole: a token
                // issued in the same second, before the change, must not survive it.
                let second = entry.not_before.timestamp();
                match self.subjects.get_mut(subject) {
                    Some(current) => {
                        current.latest = current.latest.max(latest);
                        if current.second >= second {
                            false
                        } else {
                            current.second = second;
                            true
                        }
                    }
                    None => {
                        self.subjects
                            .insert(subject.clone(), SubjectCutoff { second, latest });
                        true
                    }
                }
            }
            RevocationTarget::Session(id) => match self.sessions.get_mut(id) {
                Some(current) => {
                    *current = (*current).max(latest);
                    false
                }
                None => {
                    self.sessions.insert(*id, latest);
                    true
                }
            },
            RevocationTarget::ApiKey(id) => self.api_keys.insert(*id),
        }
    }

    /// Drops the subject and session entries whose `not_before` and `recorded_at` are both
    /// before `before` (the rule of `IdentityStore::prune_revocations`); returns how many.
    /// API keys stay.
    pub fn prune(&mut self, before: DateTime<Utc>) -> usize {
        let was = self.len();
        self.subjects.retain(|_, cutoff| cutoff.latest >= before);
        self.sessions.retain(|_, latest| *latest >= before);
        was - self.len()
    }

    /// How many entries the list holds.
    pub fn len(&self) -> usize {
        self.subjects.len() + self.sessions.len() + self.api_keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the credential is revoked.
    pub fn refuses(&self, credential: &Credential) -> bool {
        match credential {
            Credential::AccessToken {
                subject,
                session,
                issued_at,
            } => {
                let by_subject = self.subjects.get(subject).is_some_and(|cutoff| {
                    i64::try_from(*issued_at).unwrap_or(i64::MAX) <= cutoff.second
                });
                by_subject || session.is_some_and(|s| self.sessions.contains_key(&s))
            }
            Credential::ApiKey { id } => self.api_keys.contains(id),
            Credential::Other => false,
        }
    }

    /// The last refused second of `subject`'s tokens, if any.
    pub fn cutoff(&self, subject: &str) -> Option<i64> {
        self.subjects.get(subject).map(|cutoff| cutoff.second)
    }
}

/// Store failures while polling, to log a long outage as a handful of lines.
static POLL_FAILURES: AtomicU64 = AtomicU64::new(0);

/// The node's view of the deny-list, and the way to add to it.
pub struct Revocations {
    store: Arc<dyn IdentityStore>,
    events: Option<Arc<dyn EventBus>>,
    config: RevocationConfig,
    list: std::sync::RwLock<DenyList>,
    /// The newest `recorded_at` read so far; `None` before the first entry.
    cursor: tokio::sync::Mutex<Option<DateTime<Utc>>>,
    changed: watch::Sender<u64>,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Revocations {
    pub fn new(
        store: Arc<dyn IdentityStore>,
        events: Option<Arc<dyn EventBus>>,
        config: RevocationConfig,
    ) -> Revocations {
        Revocations {
            store,
            events,
            config,
            list: Default::default(),
            cursor: Default::default(),
            changed: watch::channel(0).0,
        }
    }

    pub fn config(&self) -> RevocationConfig {
        self.config
    }

    /// Records the revocation durably, applies it on this node, and nudges the others.
    pub async fn revoke(
        &self,
        target: RevocationTarget,
        at: DateTime<Utc>,
    ) -> Result<Revocation, StoreError> {
        let entry = self.store.record_revocation(&target, at).await?;
        self.apply(std::slice::from_ref(&entry));
        if let Some(events) = &self.events {
            // Only a nudge: the receivers read the entry from the store, which is the truth.
            let event = Event::new(
                "credential.revoked",
                serde_json::json!({"kind": target.kind()}),
                None,
            );
            if let Err(e) = events.publish(CHANNEL, Arc::new(event)).await {
                tracing::debug!(error = %e, "cannot nudge other nodes; they poll");
            }
        }
        Ok(entry)
    }

    /// Whether the credential has been revoked (as far as this node knows: at most one poll
    /// interval behind the store).
    pub fn is_revoked(&self, credential: &Credential) -> bool {
        self.read().refuses(credential)
    }

    /// The last second whose access tokens for `subject` are refused: a token must be issued
    /// after it to be of any use.
    pub fn cutoff(&self, subject: &str) -> Option<i64> {
        self.read().cutoff(subject)
    }

    /// Changes whenever the deny-list refuses something new.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, DenyList> {
        self.list.read().unwrap_or_else(|e| e.into_inner())
    }

    fn apply(&self, entries: &[Revocation]) -> usize {
        let added = {
            let mut list = self.list.write().unwrap_or_else(|e| e.into_inner());
            entries.iter().filter(|e| list.apply(e)).count()
        };
        if added > 0 {
            self.changed.send_modify(|generation| *generation += 1);
        }
        added
    }

    /// Reads what was recorded since the last read (and a little before, see `overlap`) and
    /// applies it; returns how many entries refused something new.
    pub async fn refresh(&self) -> Result<usize, StoreError> {
        let mut cursor = self.cursor.lock().await;
        let overlap = chrono::Duration::from_std(self.config.overlap)
            .unwrap_or(chrono::Duration::seconds(10));
        let since = cursor.map_or_else(DateTime::<Utc>::default, |c| c - overlap);
        let entries = self.store.revocations_since(since).await?;
        if let Some(newest) = entries.iter().map(|e| e.recorded_at).max() {
            *cursor = Some(cursor.map_or(newest, |c| c.max(newest)));
        }
        Ok(self.apply(&entries))
    }

    /// Forgets the subject and session entries that can refuse nothing any more (recorded and
    /// cut off more than `keep_for` before `now`): deletes them from the store, then drops them
    /// from this node's cache. Returns how many rows the store deleted and how many entries the
    /// cache dropped. The cache is pruned even when the store fails: the rule alone makes it safe.
    pub async fn prune(&self, now: DateTime<Utc>) -> (Result<u64, StoreError>, usize) {
        let keep_for =
            chrono::Duration::from_std(self.config.keep_for).unwrap_or(chrono::Duration::MAX);
        let Some(before) = now.checked_sub_signed(keep_for) else {
            return (Ok(0), 0);
        };
        let deleted = self.store.prune_revocations(before).await;
        let dropped = self
            .list
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .prune(before);
        (deleted, dropped)
    }

    /// How many entries this node's cache holds.
    pub fn cached(&self) -> usize {
        self.read().len()
    }

    async fn refresh_logged(&self) {
        match self.refresh().await {
            Ok(_) => {
                POLL_FAILURES.store(0, Ordering::Relaxed);
            }
            Err(e) => {
                let failures = POLL_FAILURES.fetch_add(1, Ordering::Relaxed) + 1;
                if failures.is_power_of_two() {
                    tracing::warn!(error = %e, failures, "cannot read revocations; the cache keeps what it has");
                }
            }
        }
    }

    async fn nudges(&self) -> Option<Subscription> {
        let events = self.events.as_ref()?;
        match events.subscribe(CHANNEL).await {
            Ok(subscription) => Some(subscription),
            Err(e) => {
                tracing::debug!(error = %e, "revocation nudges unavailable; polling only");
                None
            }
        }
    }

    /// Keeps the cache current until `stop`: a read every `poll_interval`, and one at once on
    /// each nudge or bus interruption (a lagged or refilled subscription).
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut nudges = self.nudges().await;
        let mut tick =
            tokio::time::interval(self.config.poll_interval.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let nudge = tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => None,
                nudge = next_nudge(&mut nudges) => Some(nudge),
            };
            match nudge {
                // The bus is gone (or this node's link to it): subscribe again at the next tick.
                Some(Err(broadcast::error::RecvError::Closed)) => nudges = None,
                None if nudges.is_none() => nudges = self.nudges().await,
                _ => {}
            }
            self.refresh_logged().await;
        }
    }
}

async fn next_nudge(nudges: &mut Option<Subscription>) -> Result<(), broadcast::error::RecvError> {
    match nudges {
        Some(subscription) => subscription.recv().await.map(|_| ()),
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64, millis: u32) -> DateTime<Utc> {
        DateTime::from_timestamp(seconds, millis * 1_000_000).unwrap()
    }

    /// An entry recorded at its cut-off.
    fn entry(target: &RevocationTarget, not_before: DateTime<Utc>) -> Revocation {
        Revocation {
            target: target.clone(),
            not_before,
            recorded_at: not_before,
        }
    }

    fn token(subject: &str, session: Option<Uuid>, issued_at: u64) -> Credential {
        Credential::AccessToken {
            subject: subject.into(),
            session,
            issued_at,
        }
    }

    #[test]
    fn refuses_tokens_issued_up_to_the_cutoff_second() {
        let mut list = DenyList::default();
        assert!(list.apply(&entry(
            &RevocationTarget::Subject("ann".into()),
            at(1_000, 300)
        )));
        assert!(list.refuses(&token("ann", None, 999)));
        assert!(
            list.refuses(&token("ann", None, 1_000)),
            "the same second, possibly before the change"
        );
        assert!(!list.refuses(&token("ann", None, 1_001)));
        assert!(!list.refuses(&token("bob", None, 999)));
        assert_eq!(list.cutoff("ann"), Some(1_000));
    }

    #[test]
    fn a_cutoff_only_moves_later() {
        let mut list = DenyList::default();
        let ann = RevocationTarget::Subject("ann".into());
        assert!(list.apply(&entry(&ann, at(2_000, 0))));
        assert!(
            !list.apply(&entry(&ann, at(1_000, 0))),
            "an older entry changes nothing"
        );
        assert!(
            !list.apply(&entry(&ann, at(2_000, 900))),
            "nor one in the same second"
        );
        assert!(list.refuses(&token("ann", None, 1_500)));
        assert!(list.apply(&entry(&ann, at(3_000, 0))));
        assert!(list.refuses(&token("ann", None, 2_500)));
    }

    #[test]
    fn refuses_every_token_of_a_revoked_session_and_revoked_keys() {
        let mut list = DenyList::default();
        let (gone, kept, key) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        assert!(list.apply(&entry(&RevocationTarget::Session(gone), at(1_000, 0))));
        assert!(!list.apply(&entry(&RevocationTarget::Session(gone), at(1_000, 0))));
        assert!(
            list.refuses(&token("ann", Some(gone), 5_000)),
            "whenever issued"
        );
        assert!(!list.refuses(&token("ann", Some(kept), 5_000)));
        assert!(!list.refuses(&token("ann", None, 5_000)));
        assert!(list.apply(&entry(&RevocationTarget::ApiKey(key), at(1_000, 0))));
        assert!(list.refuses(&Credential::ApiKey { id: key }));
        assert!(!list.refuses(&Credential::ApiKey { id: kept }));
        assert!(!list.refuses(&Credential::Other));
    }

    #[test]
    fn prune_drops_only_subjects_and_sessions_older_than_the_cutoff() {
        let mut list = DenyList::default();
        let (old_session, new_session, key) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let ann = RevocationTarget::Subject("ann".into());
        let bob = RevocationTarget::Subject("bob".into());
        assert!(list.apply(&entry(&ann, at(1_000, 0))));
        assert!(list.apply(&entry(&bob, at(3_000, 0))));
        assert!(list.apply(&entry(
            &RevocationTarget::Session(old_session),
            at(1_000, 0)
        )));
        assert!(list.apply(&entry(
            &RevocationTarget::Session(new_session),
            at(3_000, 0)
        )));
        assert!(list.apply(&entry(&RevocationTarget::ApiKey(key), at(1_000, 0))));
        // An old cut-off recorded again lately (an older `not_before` changes nothing in the
        // store but stamps `recorded_at`) is kept, as the store keeps its row.
        let late = Revocation {
            target: RevocationTarget::Session(old_session),
            not_before: at(1_000, 0),
            recorded_at: at(2_500, 0),
        };
        assert!(!list.apply(&late), "refuses nothing new");
        assert_eq!(list.len(), 5);

        assert_eq!(list.prune(at(2_000, 0)), 1, "only ann");
        assert!(!list.refuses(&token("ann", None, 999)));
        assert_eq!(list.cutoff("ann"), None);
        assert!(list.refuses(&token("bob", None, 2_999)));
        assert!(list.refuses(&token("x", Some(old_session), 999)));

        assert_eq!(list.prune(at(3_000, 1)), 3, "bob and both sessions");
        assert!(!list.refuses(&token("bob", None, 2_999)));
        assert!(!list.refuses(&token("x", Some(new_session), 2_999)));
        assert!(
            list.refuses(&Credential::ApiKey { id: key }),
            "a revoked API key stays refused"
        );
        assert_eq!(list.len(), 1);
        assert_eq!(list.prune(at(1_000_000, 0)), 0);
    }

    #[test]
    fn a_pruned_entry_read_again_refuses_again() {
        let mut list = DenyList::default();
        let ann = RevocationTarget::Subject("ann".into());
        assert!(list.apply(&entry(&ann, at(1_000, 0))));
        assert_eq!(list.prune(at(2_000, 0)), 1);
        assert!(list.apply(&entry(&ann, at(1_000, 0))), "as new");
        assert!(list.refuses(&token("ann", None, 1_000)));
    }

    #[test]
    fn stored_targets_round_trip() {
        for target in [
            RevocationTarget::Subject("ann".into()),
            RevocationTarget::Session(Uuid::new_v4()),
            RevocationTarget::ApiKey(Uuid::new_v4()),
        ] {
            assert_eq!(
                RevocationTarget::parse(target.kind(), &target.key()),
                Some(target)
            );
        }
        assert_eq!(RevocationTarget::parse("session", "not-a-uuid"), None);
        assert_eq!(RevocationTarget::parse("planet", "x"), None);
    }
}
