//! Flow control in the PostgreSQL store: the `QueueStore` (paused queues, rate limits per task
//! type and per queue, in the tables of `migrations/postgres/0014_schedules.sql` and
//! `0020_queue_limits.sql`), the cache of them the claim consults (`crate::flow`), and the claim
//! of tasks some limit covers.
//!
//! That claim locks each covering limit's row (`FOR UPDATE`, types then queues, by name, so
//! claimers on every node take turns without deadlocking), counts what its current fixed window
//! has started, and starts a task only while every window covering it (its type's, its queue's)
//! has room. Enforcing it in the database rather than through the `Limiter` port keeps the
//! count and the start in one transaction: a token taken for a task another node then claims is
//! never lost, and a node without Redis still holds the limit. Changing a pause or limit here
//! refreshes this node's cache at once and wakes every node's claimers.

use super::PgTaskStore;
use super::task_row::{TaskRow, tasks};
use crate::codec::millis;
use crate::columns::{TASK_COLUMNS, qualified};
use crate::error::{corrupt, db_error};
use crate::flow::{FLOW_VIEW_SQL, FlowView, LimitTable, Scope, Window, Windows, checked};
use crate::outbox::Transition;
use crate::tasks::claim_order;
use async_trait::async_trait;
use chrono::Utc;
use mcp_core::queues::{FlowState, QueueLimit, QueueStore, TaskLimit};
use mcp_core::{ClaimRequest, StoreError, Task};
use sqlx::{Postgres, Transaction};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// A limit's row as the claim locks it: name, max, count, per_ms, ended, ms left.
type WindowRow = (String, i32, i32, i64, bool, f64);

/// The window columns of `task_limits` and `queue_limits` after the key.
const WINDOW_COLUMNS: &str = "max, window_count, per_ms,
     window_start + per_ms * interval '1 millisecond' <= now(),
     greatest(extract(epoch FROM window_start + per_ms * interval '1 millisecond' - now()) * 1000,
              0)::float8";

impl PgTaskStore {
    /// The cached pauses and limits, read on first use.
    pub(super) async fn flow_view(&self) -> Result<Arc<FlowView>, StoreError> {
        if let Some(view) = self.flow.view() {
            return Ok(view);
        }
        self.read_flow().await?;
        self.flow
            .view()
            .ok_or_else(|| StoreError::Database("the flow-control cache did not load".into()))
    }

    async fn read_flow(&self) -> Result<bool, StoreError> {
        let ticket = self.flow.ticket();
        let rows: Vec<(String, String)> = sqlx::query_as(FLOW_VIEW_SQL)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(self.flow.apply(ticket, FlowView::from_rows(rows)))
    }

    /// A claim some limit may concern: tasks a window covers are claimed here within their
    /// windows, the rest through the ordinary claim.
    pub(super) async fn claim_with_limits(
        &self,
        request: &ClaimRequest,
        view: &FlowView,
    ) -> Result<Vec<Task>, StoreError> {
        let (mut claimed, windows) = self.claim_limited(request, view).await?;
        let limited = windows.limited_types();
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
            let mut skipped = view.paused.clone();
            skipped.extend(windows.limited_queues());
            claimed.extend(self.claim_open(&rest, &skipped).await?);
            claim_order(&mut claimed);
        }
        Ok(claimed)
    }

    /// Starts up to `request.limit` tasks that a limit covers, each within every window
    /// covering it; returns them and the windows, which the rest of the claim skips.
    async fn claim_limited(
        &self,
        request: &ClaimRequest,
        view: &FlowView,
    ) -> Result<(Vec<Task>, Windows), StoreError> {
        let types: Vec<String> = request
            .types
            .iter()
            .filter(|t| view.limited_types.contains(*t))
            .cloned()
            .collect();
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let mut list = Vec::new();
        if !types.is_empty() {
            let rows: Vec<WindowRow> = sqlx::query_as(sql!(
                "SELECT type, {WINDOW_COLUMNS} FROM task_limits
                 WHERE type = ANY($1) ORDER BY type FOR UPDATE"
            ))
            .bind(&types)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
            list.extend(
                rows.into_iter()
                    .map(|r| window(Scope::Type(r.0.clone()), r)),
            );
        }
        if !view.limited_queues.is_empty() {
            let rows: Vec<WindowRow> = sqlx::query_as(sql!(
                "SELECT queue, {WINDOW_COLUMNS} FROM queue_limits
                 WHERE queue = ANY($1) ORDER BY queue FOR UPDATE"
            ))
            .bind(&view.limited_queues)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
            list.extend(
                rows.into_iter()
                    .map(|r| window(Scope::Queue(r.0.clone()), r)),
            );
        }
        let mut windows = Windows::new(list);
        if windows.is_empty() {
            // Removed since the cache was read: nothing to count.
            tx.rollback().await.map_err(db_error)?;
            return Ok((Vec::new(), windows));
        }
        let admitted = self
            .admit_limited(&mut tx, request, view, &mut windows)
            .await?;
        let rows: Vec<TaskRow> = if admitted.is_empty() {
            Vec::new()
        } else {
            // `clock_timestamp()`: the start is when the row lock was won, not when the
            // transaction began.
            let rows = sqlx::query_as(sql!(
                "UPDATE tasks SET status = 'running', attempts = attempts + 1,
                     started_at = clock_timestamp(), lease_owner = $2,
                     lease_expires_at = now() + $3 * interval '1 millisecond'
                 FROM unnest($1::uuid[]) AS c(id)
                 WHERE tasks.id = c.id
                 RETURNING {}",
                qualified(TASK_COLUMNS, "tasks")
            ))
            .bind(&admitted)
            .bind(&request.owner)
            .bind(millis(request.lease))
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
            count_starts(&mut tx, &windows).await?;
            rows
        };
        match self.outbox.wanted(Transition::Started) {
            Some(wanted) if !rows.is_empty() => {
                let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
                self.commit_recorded(tx, &ids, Transition::Started, &wanted)
                    .await?;
            }
            _ => tx.commit().await.map_err(db_error)?,
        }
        self.flow.note_reopens(windows.reopens(Utc::now()));
        let mut claimed = tasks(rows)?;
        claim_order(&mut claimed);
        Ok((claimed, windows))
    }

    /// Picks, in claim order, the due tasks the windows admit. Candidates of windows already
    /// full are skipped in SQL; when a window fills midway, the tasks it turned away are
    /// skipped by the next look, so this looks at most once more than there are windows.
    async fn admit_limited(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        request: &ClaimRequest,
        view: &FlowView,
        windows: &mut Windows,
    ) -> Result<Vec<Uuid>, StoreError> {
        let limited_types = windows.limited_types();
        let limited_queues = windows.limited_queues();
        let saturated = request.share.saturated();
        let mut admitted: Vec<Uuid> = Vec::new();
        loop {
            let want = (request.limit as usize).saturating_sub(admitted.len());
            if want == 0 {
                break;
            }
            let (full_types, full_queues) = windows.full();
            let mut skipped = view.paused.clone();
            skipped.extend(full_queues);
            let candidates: Vec<(Uuid, String, String)> = sqlx::query_as(
                "SELECT id, type, queue FROM tasks
                 WHERE status IN ('queued', 'scheduled', 'failed') AND run_at <= now()
                   AND type = ANY($1) AND type <> ALL($2) AND queue <> ALL($3)
                   AND (type = ANY($4) OR queue = ANY($5))
                   AND id <> ALL($6)
                   AND (share_key IS NULL OR share_key <> ALL($7))
                   AND (concurrency_key IS NULL OR concurrency_key NOT IN (
                         SELECT concurrency_key FROM tasks
                         WHERE status = 'running' AND concurrency_key IS NOT NULL
                         GROUP BY concurrency_key
                         HAVING count(*) >= min(concurrency_limit)))
                 ORDER BY priority DESC, run_at, id
                 LIMIT $8
                 FOR UPDATE SKIP LOCKED",
            )
            .bind(&request.types)
            .bind(&full_types)
            .bind(&skipped)
            .bind(&limited_types)
            .bind(&limited_queues)
            .bind(&admitted)
            .bind(&saturated)
            .bind(want as i64)
            .fetch_all(&mut **tx)
            .await
            .map_err(db_error)?;
            let found = candidates.len();
            for (id, task_type, queue) in candidates {
                if admitted.len() < request.limit as usize && windows.admit(&task_type, &queue) {
                    admitted.push(id);
                }
            }
            if found < want {
                break;
            }
        }
        Ok(admitted)
    }
}

fn window(scope: Scope, (_, max, count, per_ms, expired, left_ms): WindowRow) -> Window {
    Window {
        scope,
        max: i64::from(max),
        used: if expired { 0 } else { i64::from(count) },
        expired,
        per_ms,
        remaining: Duration::from_secs_f64(left_ms.max(0.0) / 1000.0),
        started: 0,
    }
}

/// Adds this claim's starts to each window (a window that had ended starts again now).
async fn count_starts(
    tx: &mut Transaction<'static, Postgres>,
    windows: &Windows,
) -> Result<(), StoreError> {
    for w in windows.list().iter().filter(|w| w.started > 0) {
        let (table, key, name) = match &w.scope {
            Scope::Type(t) => ("task_limits", "type", t),
            Scope::Queue(q) => ("queue_limits", "queue", q),
        };
        sqlx::query(sql!(
            "UPDATE {table} SET
                 window_start = CASE WHEN $3 THEN now() ELSE window_start END,
                 window_count = CASE WHEN $3 THEN 0 ELSE window_count END + $2
             WHERE {key} = $1"
        ))
        .bind(name)
        .bind(i32::try_from(w.started).map_err(corrupt)?)
        .bind(w.expired)
        .execute(&mut **tx)
        .await
        .map_err(db_error)?;
    }
    Ok(())
}

/// Limits per type and per queue: one statement each for both tables (`LimitTable`).
impl PgTaskStore {
    async fn put_limit(
        &self,
        table: LimitTable,
        key: &str,
        max: u32,
        per_ms: u64,
    ) -> Result<(), StoreError> {
        let (table, column) = table.names();
        sqlx::query(sql!(
            "INSERT INTO {table} ({column}, max, per_ms) VALUES ($1, $2, $3)
             ON CONFLICT ({column}) DO UPDATE SET max = excluded.max, per_ms = excluded.per_ms"
        ))
        .bind(key)
        .bind(i32::try_from(max).map_err(corrupt)?)
        .bind(i64::try_from(per_ms).map_err(corrupt)?)
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        self.read_flow().await?;
        self.notify().await
    }

    /// Every limit of `table` by key: the key, `max` and `per_ms`.
    async fn limits(&self, table: LimitTable) -> Result<Vec<(String, u32, u64)>, StoreError> {
        let (table, column) = table.names();
        let rows: Vec<(String, i32, i64)> = sqlx::query_as(sql!(
            "SELECT {column}, max, per_ms FROM {table} ORDER BY {column}"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        rows.into_iter()
            .map(|(key, max, per_ms)| {
                let (max, per_ms) = checked(max, per_ms)?;
                Ok((key, max, per_ms))
            })
            .collect()
    }

    async fn delete_limit(&self, table: LimitTable, key: &str) -> Result<bool, StoreError> {
        let (table, column) = table.names();
        let done = sqlx::query(sql!("DELETE FROM {table} WHERE {column} = $1"))
            .bind(key)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        self.read_flow().await?;
        if done.rows_affected() > 0 {
            self.notify().await?;
        }
        Ok(done.rows_affected() > 0)
    }
}

#[async_trait]
impl QueueStore for PgTaskStore {
    async fn pause_queue(&self, queue: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO queue_pauses (queue, paused_at) VALUES ($1, now())
             ON CONFLICT (queue) DO NOTHING",
        )
        .bind(queue)
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        self.read_flow().await?;
        Ok(done.rows_affected() > 0)
    }

    async fn resume_queue(&self, queue: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM queue_pauses WHERE queue = $1")
            .bind(queue)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        self.read_flow().await?;
        if done.rows_affected() > 0 {
            self.notify().await?;
        }
        Ok(done.rows_affected() > 0)
    }

    async fn paused_queues(&self) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = sqlx::query_as("SELECT queue FROM queue_pauses ORDER BY queue")
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(rows.into_iter().map(|(q,)| q).collect())
    }

    async fn put_task_limit(&self, limit: &TaskLimit) -> Result<(), StoreError> {
        self.put_limit(LimitTable::Types, &limit.task_type, limit.max, limit.per_ms)
            .await
    }

    async fn task_limits(&self) -> Result<Vec<TaskLimit>, StoreError> {
        let rows = self.limits(LimitTable::Types).await?;
        Ok(rows
            .into_iter()
            .map(|(task_type, max, per_ms)| TaskLimit {
                task_type,
                max,
                per_ms,
            })
            .collect())
    }

    async fn delete_task_limit(&self, task_type: &str) -> Result<bool, StoreError> {
        self.delete_limit(LimitTable::Types, task_type).await
    }

    async fn put_queue_limit(&self, limit: &QueueLimit) -> Result<(), StoreError> {
        self.put_limit(LimitTable::Queues, &limit.queue, limit.max, limit.per_ms)
            .await
    }

    async fn queue_limits(&self) -> Result<Vec<QueueLimit>, StoreError> {
        let rows = self.limits(LimitTable::Queues).await?;
        Ok(rows
            .into_iter()
            .map(|(queue, max, per_ms)| QueueLimit { queue, max, per_ms })
            .collect())
    }

    async fn delete_queue_limit(&self, queue: &str) -> Result<bool, StoreError> {
        self.delete_limit(LimitTable::Queues, queue).await
    }

    async fn flow_state(&self) -> Result<FlowState, StoreError> {
        let held: Vec<(String, i64)> = sqlx::query_as(
            "SELECT queue, count(*) FROM tasks
             WHERE status IN ('queued', 'scheduled', 'failed') AND run_at <= now()
               AND queue NOT IN (SELECT queue FROM queue_pauses)
               AND (type IN (SELECT type FROM task_limits
                             WHERE window_count >= max
                               AND window_start + per_ms * interval '1 millisecond' > now())
                    OR queue IN (SELECT queue FROM queue_limits
                                 WHERE window_count >= max
                                   AND window_start + per_ms * interval '1 millisecond' > now()))
             GROUP BY queue",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(FlowState {
            paused: self.paused_queues().await?,
            limits: self.task_limits().await?,
            queue_limits: self.queue_limits().await?,
            held_back: held
                .into_iter()
                .map(|(queue, n)| (queue, crate::codec::unsigned(n)))
                .collect(),
        })
    }

    async fn refresh_flow(&self) -> Result<bool, StoreError> {
        self.read_flow().await
    }
}
