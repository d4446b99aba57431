//! The replay guard: delivery ids seen recently, in memory, per node.

use super::*;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Delivery ids seen within the replay window. Kept in memory, **per node**: behind a load
/// balancer a replay reaching another node is not caught here (the tasks it would create are
/// still deduplicated by their idempotency key, see [`tasks_for`]).
#[derive(Debug)]
pub struct ReplayGuard {
    window: Duration,
    /// Most ids kept; the oldest are forgotten first beyond it.
    capacity: usize,
    pub(super) seen: Mutex<Seen>,
}

/// Ids with the time each was first seen, and the same in arrival order (for expiry).
#[derive(Debug, Default)]
pub(super) struct Seen {
    pub(super) at: HashMap<String, Instant>,
    order: VecDeque<(Instant, String)>,
}

impl ReplayGuard {
    pub fn new(window: Duration, capacity: usize) -> Self {
        ReplayGuard {
            window,
            capacity: capacity.max(1),
            seen: Mutex::new(Seen::default()),
        }
    }

    /// Records `key` (source and delivery id); `Err(Replay)` if it was seen within the window.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), HookError> {
        let mut guard = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let Seen { at: ids, order } = &mut *guard;
        while let Some((at, _)) = order.front() {
            if now.saturating_duration_since(*at) <= self.window && order.len() < self.capacity {
                break;
            }
            if let Some((at, old)) = order.pop_front()
                && ids.get(&old) == Some(&at)
            {
                ids.remove(&old);
            }
        }
        if ids.contains_key(key) {
            return Err(HookError::Replay(key.to_owned()));
        }
        ids.insert(key.to_owned(), now);
        order.push_back((now, key.to_owned()));
        Ok(())
    }
}
