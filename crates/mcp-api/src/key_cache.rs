//! API keys this node has verified, so that a request with a key costs a SHA-256 and a map
//! lookup instead of a store read and a `last_used_at` write (which, on SQLite, waits for the
//! one writer behind every task write).
//!
//! What keeps it safe: an entry is made only from the store's row of a key that matched and was
//! not revoked; it is found by the SHA-256 of the whole key, the same digest the store keeps,
//! so a hit is exactly the store's check; every use still asks the deny-list (`Revocations`),
//! which learns of a revocation at once on the revoking node and within `revocation_poll_ms`
//! (or at once through the bus) on the others — the bound access tokens and WebSockets have —
//! and a revoked entry is dropped there. Nothing else about a key can change (role and worker
//! types are fixed at creation); entries are read again after `TTL` anyway, which is also how
//! often `last_used_at` is written for a key in steady use. The map is bounded: when full it
//! is emptied, and keys are read from the store again.

use mcp_core::principal::Role;
use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How long an entry is trusted before the store is read (and the key's use recorded) again.
pub const TTL: Duration = Duration::from_secs(60);

/// Most keys held; a node serving more distinct keys than this reads some from the store.
pub const CAPACITY: usize = 10_000;

/// What a request needs of a verified key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedKey {
    pub id: Uuid,
    pub prefix: String,
    pub role: Role,
    pub worker_types: Option<Vec<String>>,
}

#[derive(Debug)]
struct Entry {
    key: VerifiedKey,
    verified_at: Instant,
}

/// Verified keys by the hex SHA-256 of the whole key.
#[derive(Debug)]
pub struct KeyCache {
    entries: RwLock<HashMap<String, Entry>>,
    ttl: Duration,
    capacity: usize,
}

impl Default for KeyCache {
    fn default() -> Self {
        KeyCache::new(TTL, CAPACITY)
    }
}

impl KeyCache {
    pub fn new(ttl: Duration, capacity: usize) -> KeyCache {
        KeyCache {
            entries: RwLock::default(),
            ttl,
            capacity: capacity.max(1),
        }
    }

    /// The key whose whole-key digest is `digest`, if verified less than the TTL ago.
    pub fn get(&self, digest: &str) -> Option<VerifiedKey> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries
            .get(digest)
            .filter(|entry| entry.verified_at.elapsed() < self.ttl)
            .map(|entry| entry.key.clone())
    }

    /// Remembers a key the store has just vouched for.
    pub fn insert(&self, digest: String, key: VerifiedKey) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.capacity && !entries.contains_key(&digest) {
            let ttl = self.ttl;
            entries.retain(|_, entry| entry.verified_at.elapsed() < ttl);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(
            digest,
            Entry {
                key,
                verified_at: Instant::now(),
            },
        );
    }

    /// Forgets a key (revoked, or found no longer valid).
    pub fn remove(&self, digest: &str) {
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(digest);
    }

    pub fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> VerifiedKey {
        VerifiedKey {
            id: Uuid::from_bytes([n; 16]),
            prefix: format!("{n:016x}"),
            role: Role::Service,
            worker_types: None,
        }
    }

    #[test]
    fn finds_a_key_only_by_its_whole_digest() {
        let cache = KeyCache::default();
        cache.insert("aa".into(), key(1));
        assert_eq!(cache.get("aa"), Some(key(1)));
        assert_eq!(cache.get("ab"), None);
        cache.remove("aa");
        assert_eq!(cache.get("aa"), None);
    }

    #[test]
    fn forgets_entries_after_the_ttl() {
        let cache = KeyCache::new(Duration::ZERO, 10);
        cache.insert("aa".into(), key(1));
        assert_eq!(cache.get("aa"), None, "a zero TTL trusts nothing");
    }

    #[test]
    fn stays_within_its_capacity() {
        let cache = KeyCache::new(TTL, 3);
        for n in 0..10 {
            cache.insert(format!("{n}"), key(n));
            assert!(cache.len() <= 3);
            assert_eq!(
                cache.get(&format!("{n}")),
                Some(key(n)),
                "the newest is kept"
            );
        }
    }
}
