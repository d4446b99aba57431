//! Claiming tasks of rate-limited types (`task_limits`), cluster-wide: the claim transaction
//! locks each limit's row (`FOR UPDATE`), so claimers on every node take turns, counts what its
//! current fixed window has started, and starts at most the rest. Enforcing it in the database
//! rather than through the `Limiter` port keeps the count and the start in one transaction: a
//! token taken for a task another node then claims is never lost, and a node without Redis
//! still holds the limit.

use super::PgTaskStore;
use super::task_row::{TaskRow, tasks};
use crate::codec::millis;
use crate::columns::{TASK_COLUMNS, qualified};
use crate::error::db_error;
use crate::outbox::Transition;
use crate::tasks::claim_order;
use mcp_core::{ClaimRequest, StoreError, Task, TaskStore};

impl PgTaskStore {
    /// A claim that involves limited types: those are claimed here within their limits, the
    /// rest through the ordinary claim. `None` when no type of the request is limited (the
    /// ordinary claim then runs as it is).
    pub(super) async fn claim_with_limits(
        &self,
        request: &ClaimRequest,
    ) -> Result<Option<Vec<Task>>, StoreError> {
        let limited: Vec<(String,)> =
            sqlx::query_as("SELECT type FROM task_limits WHERE type = ANY($1)")
                .bind(&request.types)
                .fetch_all(&self.pool)
                .await
                .map_err(db_error)?;
        if limited.is_empty() {
            return Ok(None);
        }
        let limited: Vec<String> = limited.into_iter().map(|(t,)| t).collect();
        let mut claimed = self.claim_limited(request, &limited).await?;
        let open: Vec<String> = request
            .types
            .iter()
            .filter(|t| !limited.contains(t))
            .cloned()
            .collect();
        let room = request.limit.saturating_sub(claimed.len() as u32);
        if room > 0 && !open.is_empty() {
            let rest = ClaimRequest {
                types: open,
                limit: room,
                ..request.clone()
            };
            claimed.extend(TaskStore::claim(self, &rest).await?);
            claim_order(&mut claimed);
        }
        Ok(Some(claimed))
    }

    /// Starts up to `request.limit` tasks of the `limited` types, each within its window.
    async fn claim_limited(
        &self,
        request: &ClaimRequest,
        limited: &[String],
    ) -> Result<Vec<Task>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let windows: Vec<(String, i32, i32, bool)> = sqlx::query_as(
            "SELECT type, max, window_count,
                    window_start + per_ms * interval '1 millisecond' <= now()
             FROM task_limits WHERE type = ANY($1) ORDER BY type FOR UPDATE",
        )
        .bind(limited)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        let saturated = request.share.saturated();
        let mut rows: Vec<TaskRow> = Vec::new();
        for (task_type, max, count, expired) in windows {
            let used = if expired { 0 } else { count };
            let room =
                i64::from((max - used).max(0)).min(i64::from(request.limit) - rows.len() as i64);
            if room <= 0 {
                continue;
            }
            let started: Vec<TaskRow> = sqlx::query_as(sql!(
                "UPDATE tasks SET status = 'running', attempts = attempts + 1,
                     started_at = clock_timestamp(), lease_owner = $3,
                     lease_expires_at = now() + $4 * interval '1 millisecond'
                 FROM (SELECT id FROM tasks
                       WHERE status IN ('queued', 'scheduled', 'failed') AND run_at <= now()
                         AND type = $1
                         AND queue NOT IN (SELECT queue FROM queue_pauses)
                         AND (share_key IS NULL OR share_key <> ALL($5))
                         AND (concurrency_key IS NULL OR concurrency_key NOT IN (
                               SELECT concurrency_key FROM tasks
                               WHERE status = 'running' AND concurrency_key IS NOT NULL
                               GROUP BY concurrency_key
                               HAVING count(*) >= min(concurrency_limit)))
                       ORDER BY priority DESC, run_at, id
                       LIMIT $2
                       FOR UPDATE SKIP LOCKED) AS c
                 WHERE tasks.id = c.id
                 RETURNING {}",
                qualified(TASK_COLUMNS, "tasks")
            ))
            .bind(&task_type)
            .bind(room)
            .bind(&request.owner)
            .bind(millis(request.lease))
            .bind(&saturated)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
            if started.is_empty() {
                continue;
            }
            sqlx::query(
                "UPDATE task_limits SET
                     window_start = CASE WHEN $3 THEN now() ELSE window_start END,
                     window_count = CASE WHEN $3 THEN 0 ELSE window_count END + $2
                 WHERE type = $1",
            )
            .bind(&task_type)
            .bind(started.len() as i32)
            .bind(expired)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
            rows.extend(started);
        }
        match self.outbox.wanted(Transition::Started) {
            Some(wanted) if !rows.is_empty() => {
                let ids: Vec<uuid::Uuid> = rows.iter().map(|r| r.id).collect();
                self.commit_recorded(tx, &ids, Transition::Started, &wanted)
                    .await?;
            }
            _ => tx.commit().await.map_err(db_error)?,
        }
        let mut claimed = tasks(rows)?;
        claim_order(&mut claimed);
        Ok(claimed)
    }
}
