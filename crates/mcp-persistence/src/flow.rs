//! What both SQL stores share for flow control: the cache of paused queues and limited types
//! and queues the claim consults instead of reading their tables (`FlowCache`), the windows of
//! a limited claim and which candidates they admit (`Windows`), and when a used-up window
//! reopens (the hint `next_run_at` adds, so an idle claim loop wakes for it).

use chrono::{DateTime, Utc};
use mcp_core::StoreError;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// The pauses and limits a claim needs to know of, as last read from the database.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct FlowView {
    pub paused: Vec<String>,
    pub limited_types: HashSet<String>,
    pub limited_queues: Vec<String>,
}

impl FlowView {
    /// Builds the view from `(kind, name)` rows: `paused`, `type` or `queue`.
    pub fn from_rows(rows: Vec<(String, String)>) -> FlowView {
        let mut view = FlowView::default();
        for (kind, name) in rows {
            match kind.as_str() {
                "paused" => view.paused.push(name),
                "type" => {
                    view.limited_types.insert(name);
                }
                _ => view.limited_queues.push(name),
            }
        }
        view.paused.sort_unstable();
        view.limited_queues.sort_unstable();
        view
    }

    /// Whether a claim of `types` must go through the limited claim: a queue limit may cover
    /// any type.
    pub fn limits(&self, types: &[String]) -> bool {
        !self.limited_queues.is_empty() || types.iter().any(|t| self.limited_types.contains(t))
    }
}

/// The rows `FlowView::from_rows` reads, in one statement (the same SQL on both backends).
pub(crate) const FLOW_VIEW_SQL: &str = "SELECT 'paused', queue FROM queue_pauses
     UNION ALL SELECT 'type', type FROM task_limits
     UNION ALL SELECT 'queue', queue FROM queue_limits";

/// What a limit applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Scope {
    Type(String),
    Queue(String),
}

/// The two tables of rate limits, alike but for the column they are keyed by: the stores'
/// `QueueStore` methods for limits per type and per queue share one statement each.
#[derive(Debug, Clone, Copy)]
pub(crate) enum LimitTable {
    Types,
    Queues,
}

impl LimitTable {
    /// The table and its key column.
    pub fn names(self) -> (&'static str, &'static str) {
        match self {
            LimitTable::Types => ("task_limits", "type"),
            LimitTable::Queues => ("queue_limits", "queue"),
        }
    }
}

/// A stored limit's `max` and `per_ms`, checked back into their types.
pub(crate) fn checked(max: i32, per_ms: i64) -> Result<(u32, u64), StoreError> {
    Ok((
        u32::try_from(max).map_err(crate::error::corrupt)?,
        u64::try_from(per_ms).map_err(crate::error::corrupt)?,
    ))
}

/// One store's cached `FlowView`, shared by its clones, and the reopen times of windows its
/// claims found used up.
#[derive(Debug, Default)]
pub(crate) struct FlowCache {
    view: RwLock<Arc<FlowView>>,
    loaded: AtomicBool,
    /// Tickets of reads: a read applies only if no later-started read applied first, so a
    /// slow read never brings back what a newer one replaced.
    issued: AtomicU64,
    applied: Mutex<u64>,
    reopens: Mutex<HashMap<Scope, DateTime<Utc>>>,
}

impl FlowCache {
    pub fn view(&self) -> Option<Arc<FlowView>> {
        if !self.loaded.load(Ordering::Acquire) {
            return None;
        }
        Some(self.view.read().unwrap_or_else(|e| e.into_inner()).clone())
    }

    /// A ticket to take before reading the tables for `apply`.
    pub fn ticket(&self) -> u64 {
        self.issued.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Installs a view read under `ticket`; true when it differs from the one it replaces.
    pub fn apply(&self, ticket: u64, view: FlowView) -> bool {
        let mut applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        if ticket <= *applied {
            return false;
        }
        *applied = ticket;
        let mut current = self.view.write().unwrap_or_else(|e| e.into_inner());
        let was_loaded = self.loaded.swap(true, Ordering::AcqRel);
        let changed = !was_loaded || **current != view;
        if changed {
            // Limits gone take their reopen times with them.
            self.reopens
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|scope, _| match scope {
                    Scope::Type(t) => view.limited_types.contains(t),
                    Scope::Queue(q) => view.limited_queues.contains(q),
                });
            *current = Arc::new(view);
        }
        changed
    }

    /// Records what a limited claim found: for each window it locked, when it reopens if it is
    /// used up now (`None`: it has room).
    pub fn note_reopens(&self, windows: impl IntoIterator<Item = (Scope, Option<DateTime<Utc>>)>) {
        let mut reopens = self.reopens.lock().unwrap_or_else(|e| e.into_inner());
        for (scope, at) in windows {
            match at {
                Some(at) => reopens.insert(scope, at),
                None => reopens.remove(&scope),
            };
        }
    }

    /// The earliest reopen time among the windows that may hold back tasks of `types`.
    pub fn next_reopen(&self, types: &[String]) -> Option<DateTime<Utc>> {
        let reopens = self.reopens.lock().unwrap_or_else(|e| e.into_inner());
        reopens
            .iter()
            .filter(|(scope, _)| match scope {
                Scope::Type(t) => types.contains(t),
                Scope::Queue(_) => true,
            })
            .map(|(_, at)| *at)
            .min()
    }
}

/// The earlier of two optional instants.
pub(crate) fn earliest(
    a: Option<DateTime<Utc>>,
    b: Option<DateTime<Utc>>,
) -> Option<DateTime<Utc>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A limit's current window as the claim transaction locked it.
#[derive(Debug)]
pub(crate) struct Window {
    pub scope: Scope,
    pub max: i64,
    /// Starts counted in the window (0 once it has ended).
    pub used: i64,
    /// The window has ended: the first start opens a new one now.
    pub expired: bool,
    pub per_ms: i64,
    /// How long until the window ends, by the database's clock (zero once ended).
    pub remaining: Duration,
    /// Starts this claim added.
    pub started: i64,
}

impl Window {
    fn room(&self) -> i64 {
        (self.max - self.used - self.started).max(0)
    }
}

/// The windows of one limited claim and what they still admit.
#[derive(Debug, Default)]
pub(crate) struct Windows {
    list: Vec<Window>,
    types: HashMap<String, usize>,
    queues: HashMap<String, usize>,
}

impl Windows {
    pub fn new(list: Vec<Window>) -> Windows {
        let mut windows = Windows::default();
        for (i, window) in list.iter().enumerate() {
            match &window.scope {
                Scope::Type(t) => windows.types.insert(t.clone(), i),
                Scope::Queue(q) => windows.queues.insert(q.clone(), i),
            };
        }
        windows.list = list;
        windows
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn list(&self) -> &[Window] {
        &self.list
    }

    pub fn limited_types(&self) -> Vec<String> {
        self.types.keys().cloned().collect()
    }

    pub fn limited_queues(&self) -> Vec<String> {
        self.queues.keys().cloned().collect()
    }

    /// Types and queues whose window has no room left: the candidates' query skips them.
    pub fn full(&self) -> (Vec<String>, Vec<String>) {
        let mut types = Vec::new();
        let mut queues = Vec::new();
        for window in self.list.iter().filter(|w| w.room() == 0) {
            match &window.scope {
                Scope::Type(t) => types.push(t.clone()),
                Scope::Queue(q) => queues.push(q.clone()),
            }
        }
        (types, queues)
    }

    /// Starts a candidate if every window that covers it has room, counting it in each.
    pub fn admit(&mut self, task_type: &str, queue: &str) -> bool {
        let covering: Vec<usize> = [self.types.get(task_type), self.queues.get(queue)]
            .into_iter()
            .flatten()
            .copied()
            .collect();
        if covering.iter().any(|i| self.list[*i].room() == 0) {
            return false;
        }
        for i in covering {
            self.list[i].started += 1;
        }
        true
    }

    /// For each window, when it reopens if this claim leaves it used up (`now` is this node's
    /// clock; the remaining time was the database's).
    pub fn reopens(&self, now: DateTime<Utc>) -> Vec<(Scope, Option<DateTime<Utc>>)> {
        self.list
            .iter()
            .map(|w| {
                let at = (w.room() == 0).then(|| {
                    let left = if w.expired {
                        // Starting tasks opened a new window now.
                        Duration::from_millis(u64::try_from(w.per_ms).unwrap_or(0))
                    } else {
                        w.remaining
                    };
                    now + chrono::Duration::from_std(left).unwrap_or(chrono::Duration::zero())
                });
                (w.scope.clone(), at)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(scope: Scope, max: i64, used: i64) -> Window {
        Window {
            scope,
            max,
            used,
            expired: false,
            per_ms: 1000,
            remaining: Duration::from_millis(300),
            started: 0,
        }
    }

    #[test]
    fn a_candidate_starts_only_with_room_in_every_window_covering_it() {
        let mut windows = Windows::new(vec![
            window(Scope::Type("echo".into()), 3, 0),
            window(Scope::Queue("slow".into()), 1, 0),
        ]);
        assert!(windows.admit("echo", "slow"));
        assert!(!windows.admit("echo", "slow"), "the queue's window is full");
        assert!(!windows.admit("noop", "slow"));
        assert!(windows.admit("echo", "fast"));
        assert_eq!(windows.full(), (vec![], vec!["slow".to_owned()]));
        assert!(windows.admit("echo", "fast"));
        assert!(!windows.admit("echo", "fast"), "the type's window is full");
        assert!(windows.admit("noop", "fast"), "covered by no window");
        let now = Utc::now();
        let reopens = windows.reopens(now);
        assert!(
            reopens
                .iter()
                .all(|(_, at)| *at == Some(now + chrono::Duration::milliseconds(300)))
        );
    }

    #[test]
    fn the_cache_keeps_the_newest_read_and_drops_reopens_of_removed_limits() {
        let cache = FlowCache::default();
        assert!(cache.view().is_none());
        let old = cache.ticket();
        let new = cache.ticket();
        let limited = FlowView::from_rows(vec![("type".into(), "echo".into())]);
        assert!(cache.apply(new, limited.clone()));
        assert!(
            !cache.apply(old, FlowView::default()),
            "an older read is dropped"
        );
        assert!(cache.view().unwrap().limits(&["echo".into()]));
        let at = Utc::now();
        cache.note_reopens([(Scope::Type("echo".into()), Some(at))]);
        assert_eq!(cache.next_reopen(&["echo".into()]), Some(at));
        assert_eq!(cache.next_reopen(&["noop".into()]), None);
        assert!(!cache.apply(cache.ticket(), limited), "unchanged");
        assert!(cache.apply(cache.ticket(), FlowView::default()));
        assert_eq!(cache.next_reopen(&["echo".into()]), None);
    }
}
