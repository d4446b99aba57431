//! Keeping the claim's walk short with a backlog. A claim reads the runnable-task index in claim
//! order, and every task claimed leaves a dead entry at the front of it until VACUUM removes
//! it: later claims step over those entries (and, while an older snapshot anywhere in the
//! database still sees the old row, visit the heap for each) before the first live one, so a
//! queue burning down N tasks did O(N²) work, and every pickup after it paid for the whole
//! burn-down. Autovacuum is too slow for a queue (it naps a minute between runs, and may be off),
//! so the store vacuums the task table itself: after `BUSY_AFTER` claimed tasks, and as soon as a
//! claim finds the queue drained after `IDLE_AFTER`. One vacuum at a time per node; nodes skip
//! the table while another's vacuum holds it.

use super::PgTaskStore;
use crate::error::db_error;
use mcp_core::StoreError;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Tasks claimed since the last vacuum that start one while claims still fill up: a claim
/// then walks at most this many dead entries (about 2.5 ms per 100,000 on a small machine)
/// against a vacuum that reads the table's changed pages and its indexes once.
const BUSY_AFTER: u64 = 50_000;
/// Tasks claimed since the last vacuum that start one once a claim finds less than it asked
/// for: the backlog is gone, and pickups should not walk what it left. Fewer dead entries cost
/// a claim little (10,000 about a quarter of a millisecond), less than a vacuum of a large
/// table every few seconds would under a steady trickle of tasks.
const IDLE_AFTER: u64 = 10_000;

/// What a store counts towards its next vacuum.
#[derive(Default)]
pub(super) struct Sweeper {
    claimed: AtomicU64,
    running: AtomicBool,
}

impl PgTaskStore {
    /// Brings the task table's planner statistics and visibility map up to date, as autovacuum
    /// would after a while (benchmarks call it after a bulk load).
    pub async fn vacuum_tasks(&self) -> Result<(), StoreError> {
        sqlx::query("VACUUM ANALYZE tasks")
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    /// Counts `claimed` tasks of a claim that asked for `limit`, and starts a vacuum in the
    /// background when one is due.
    pub(super) fn swept_after_claim(&self, claimed: usize, limit: u32) {
        let sweeper = &self.sweeper;
        let total = sweeper
            .claimed
            .fetch_add(claimed as u64, Ordering::Relaxed)
            .saturating_add(claimed as u64);
        let drained = (claimed as u64) < u64::from(limit);
        let due = total >= BUSY_AFTER || (drained && total >= IDLE_AFTER);
        if !due || sweeper.running.swap(true, Ordering::AcqRel) {
            return;
        }
        sweeper.claimed.store(0, Ordering::Relaxed);
        let (pool, sweeper) = (self.pool.clone(), Arc::clone(&self.sweeper));
        tokio::spawn(async move {
            // INDEX_CLEANUP ON: the dead index entries are the point, even when few heap pages
            // hold dead rows. SKIP_LOCKED: another node's vacuum is already doing it.
            if let Err(e) = sqlx::query("VACUUM (SKIP_LOCKED, INDEX_CLEANUP ON) tasks")
                .execute(&pool)
                .await
            {
                tracing::debug!(error = %e, "cannot vacuum the task table");
            }
            sweeper.running.store(false, Ordering::Release);
        });
    }
}
