//! What the runtime settings and feature flags change while the orchestrator runs: how many
//! tasks this node runs at once (its claim loop's semaphore, resized) and which task types wait
//! because their integration is switched off (`integration.<prefix>` flags), left queued with
//! their attempts unspent like the tasks of a route whose breaker is open.

use super::Orchestrator;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use tokio::sync::{Semaphore, watch};

pub(super) struct Live {
    /// The claim loop's slots: one permit per task this node's handlers may run at once.
    pub(super) slots: Arc<Semaphore>,
    /// The concurrency the slots are being brought to.
    concurrency: Mutex<usize>,
    /// Task type prefixes (`discord` for `discord.*`) whose tasks are not claimed.
    paused: watch::Sender<Arc<HashSet<String>>>,
}

impl Live {
    pub(super) fn new(concurrency: usize) -> Live {
        Live {
            slots: Arc::new(Semaphore::new(concurrency)),
            concurrency: Mutex::new(concurrency),
            paused: watch::channel(Arc::default()).0,
        }
    }
}

impl Orchestrator {
    /// Changes how many tasks this node's handlers run at once. More slots are usable at once;
    /// fewer take effect as running tasks finish (none is interrupted). A node started with
    /// concurrency 0 is API-only and stays so.
    pub fn set_concurrency(&self, concurrency: usize) {
        let mut current = self
            .live
            .concurrency
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let slots = &self.live.slots;
        if concurrency > *current {
            slots.add_permits(concurrency - *current);
            self.wake.notify_one();
        } else if concurrency < *current {
            let surplus = *current - concurrency;
            let taken = slots.forget_permits(surplus);
            let owed = u32::try_from(surplus - taken).unwrap_or(u32::MAX);
            if owed > 0 {
                // Held by running tasks: taken back as they finish.
                let slots = slots.clone();
                tokio::spawn(async move {
                    if let Ok(permits) = slots.acquire_many_owned(owed).await {
                        permits.forget();
                    }
                });
            }
        }
        *current = concurrency;
    }

    /// The concurrency this node is set to.
    pub fn concurrency(&self) -> usize {
        *self
            .live
            .concurrency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Task types `<prefix>.*` of these prefixes wait, queued, until their prefix is resumed.
    pub fn set_paused_prefixes(&self, prefixes: HashSet<String>) {
        let changed = self.live.paused.send_if_modified(|current| {
            if **current == prefixes {
                false
            } else {
                *current = Arc::new(prefixes);
                true
            }
        });
        if changed {
            // Resumed types may have tasks waiting: look at once.
            self.wake.notify_one();
            self.balancer.changed.notify_waiters();
        }
    }

    /// Whether tasks of this type wait because their integration is switched off.
    pub fn is_paused(&self, task_type: &str) -> bool {
        let paused = self.live.paused.borrow();
        !paused.is_empty()
            && task_type
                .split_once('.')
                .is_some_and(|(prefix, _)| paused.contains(prefix))
    }
}
