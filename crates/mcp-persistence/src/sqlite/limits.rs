//! Claiming tasks of rate-limited types (`task_limits`): the claim's write transaction (SQLite
//! has one writer) counts what each limit's current fixed window has started and starts at most
//! the rest.

use super::SqliteTaskStore;
use super::task_row::{TaskRow, tasks};
use crate::codec::{json_array, micros, micros_after};
use crate::columns::TASK_COLUMNS;
use crate::error::db_error;
use crate::outbox::Transition;
use crate::tasks::claim_order;
use chrono::Utc;
use mcp_core::{ClaimRequest, StoreError, Task, TaskStore};

impl SqliteTaskStore {
    /// A claim that involves limited types: those are claimed here within their limits, the
    /// rest through the ordinary claim. `None` when no type of the request is limited.
    pub(super) async fn claim_with_limits(
        &self,
        request: &ClaimRequest,
    ) -> Result<Option<Vec<Task>>, StoreError> {
        let limited: Vec<(String,)> = sqlx::query_as(
            "SELECT type FROM task_limits WHERE type IN (SELECT value FROM json_each(?1))",
        )
        .bind(json_array(request.types.clone()))
        .fetch_all(&self.readers)
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

    async fn claim_limited(
        &self,
        request: &ClaimRequest,
        limited: &[String],
    ) -> Result<Vec<Task>, StoreError> {
        let now = Utc::now();
        let mut tx = self.writer.begin().await.map_err(db_error)?;
        let windows: Vec<(String, i64, i64, bool)> = sqlx::query_as(
            "SELECT type, max, window_count, window_start + per_ms * 1000 <= ?2
             FROM task_limits WHERE type IN (SELECT value FROM json_each(?1)) ORDER BY type",
        )
        .bind(json_array(limited.to_vec()))
        .bind(micros(now))
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        let saturated = json_array(request.share.saturated());
        let mut rows: Vec<TaskRow> = Vec::new();
        for (task_type, max, count, expired) in windows {
            let used = if expired { 0 } else { count };
            let room = (max - used)
                .max(0)
                .min(i64::from(request.limit) - rows.len() as i64);
            if room <= 0 {
                continue;
            }
            let started: Vec<TaskRow> = sqlx::query_as(sql!(
                "UPDATE tasks SET status = 'running', attempts = attempts + 1, started_at = ?2,
                     lease_owner = ?3, lease_expires_at = ?4
                 WHERE id IN (
                     SELECT id FROM tasks
                     WHERE status IN ('queued', 'scheduled', 'failed') AND run_at <= ?2
                       AND type = ?1
                       AND queue NOT IN (SELECT queue FROM queue_pauses)
                       AND (share_key IS NULL OR share_key NOT IN (SELECT value FROM json_each(?6)))
                       AND (concurrency_key IS NULL OR concurrency_key NOT IN (
                             SELECT concurrency_key FROM tasks
                             WHERE status = 'running' AND concurrency_key IS NOT NULL
                             GROUP BY concurrency_key
                             HAVING count(*) >= min(concurrency_limit)))
                     ORDER BY priority DESC, run_at, id
                     LIMIT ?5)
                 RETURNING {TASK_COLUMNS}"
            ))
            .bind(&task_type)
            .bind(micros(now))
            .bind(&request.owner)
            .bind(micros_after(now, request.lease))
            .bind(room)
            .bind(&saturated)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
            if started.is_empty() {
                continue;
            }
            sqlx::query(
                "UPDATE task_limits SET
                     window_start = CASE WHEN ?3 THEN ?4 ELSE window_start END,
                     window_count = CASE WHEN ?3 THEN 0 ELSE window_count END + ?2
                 WHERE type = ?1",
            )
            .bind(&task_type)
            .bind(started.len() as i64)
            .bind(expired)
            .bind(micros(now))
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
            rows.extend(started);
        }
        let mut claimed = tasks(rows)?;
        let ids: Vec<uuid::Uuid> = claimed.iter().map(|t| t.id).collect();
        self.commit_recording(tx, &ids, Transition::Started).await?;
        claim_order(&mut claimed);
        Ok(claimed)
    }
}
