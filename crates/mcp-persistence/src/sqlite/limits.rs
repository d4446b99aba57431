//! Flow control in the SQLite store: the `QueueStore` (paused queues, rate limits per task type
//! and per queue, in the tables of `migrations/sqlite/0014_schedules.sql` and
//! `0019_queue_limits.sql`), the cache of them the claim consults (`crate::flow`), and the claim
//! of tasks some limit covers: the claim's write transaction (SQLite has one writer) counts what
//! each covering window has started and starts a task only while every window covering it (its
//! type's, its queue's) has room. Instants are microseconds.

use super::SqliteTaskStore;
use super::task_row::{TaskRow, tasks};
use crate::codec::{ids_json, json_array, micros, micros_after, unsigned, uuid};
use crate::columns::TASK_COLUMNS;
use crate::error::{corrupt, db_error};
use crate::flow::{FLOW_VIEW_SQL, FlowView, LimitTable, Scope, Window, Windows, checked};
use crate::outbox::Transition;
use crate::tasks::claim_order;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mcp_core::queues::{FlowState, QueueLimit, QueueStore, TaskLimit};
use mcp_core::{ClaimRequest, StoreError, Task};
use sqlx::{Sqlite, Transaction};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// A limit's row as the claim reads it: name, max, count, per_ms, window start.
type WindowRow = (String, i64, i64, i64, i64);

impl SqliteTaskStore {
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
            .fetch_all(&self.readers)
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
        let mut tx = self.writer.begin().await.map_err(db_error)?;
        // Read once this claim holds the single writer (as `claim_open` does).
        let now = Utc::now();
        let mut list = Vec::new();
        if !types.is_empty() {
            let rows: Vec<WindowRow> = sqlx::query_as(
                "SELECT type, max, window_count, per_ms, window_start FROM task_limits
                 WHERE type IN (SELECT value FROM json_each(?1)) ORDER BY type",
            )
            .bind(json_array(types))
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
            list.extend(
                rows.into_iter()
                    .map(|r| window(Scope::Type(r.0.clone()), r, now)),
            );
        }
        if !view.limited_queues.is_empty() {
            let rows: Vec<WindowRow> = sqlx::query_as(
                "SELECT queue, max, window_count, per_ms, window_start FROM queue_limits
                 WHERE queue IN (SELECT value FROM json_each(?1)) ORDER BY queue",
            )
            .bind(json_array(view.limited_queues.clone()))
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
            list.extend(
                rows.into_iter()
                    .map(|r| window(Scope::Queue(r.0.clone()), r, now)),
            );
        }
        let mut windows = Windows::new(list);
        if windows.is_empty() {
            tx.rollback().await.map_err(db_error)?;
            return Ok((Vec::new(), windows));
        }
        let admitted = admit_limited(&mut tx, request, view, &mut windows, now).await?;
        let rows: Vec<TaskRow> = if admitted.is_empty() {
            Vec::new()
        } else {
            let rows = sqlx::query_as(sql!(
                "UPDATE tasks SET status = 'running', attempts = attempts + 1, started_at = ?2,
                     lease_owner = ?3, lease_expires_at = ?4
                 WHERE id IN (SELECT value FROM json_each(?1))
                 RETURNING {TASK_COLUMNS}"
            ))
            .bind(ids_json(&admitted))
            .bind(micros(now))
            .bind(&request.owner)
            .bind(micros_after(now, request.lease))
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
            count_starts(&mut tx, &windows, now).await?;
            rows
        };
        let mut claimed = tasks(rows)?;
        let ids: Vec<Uuid> = claimed.iter().map(|t| t.id).collect();
        self.commit_recording(tx, &ids, Transition::Started).await?;
        self.flow.note_reopens(windows.reopens(now));
        claim_order(&mut claimed);
        Ok((claimed, windows))
    }
}

/// Picks, in claim order, the due tasks the windows admit (see the PostgreSQL store).
async fn admit_limited(
    tx: &mut Transaction<'static, Sqlite>,
    request: &ClaimRequest,
    view: &FlowView,
    windows: &mut Windows,
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>, StoreError> {
    let limited_types = json_array(windows.limited_types());
    let limited_queues = json_array(windows.limited_queues());
    let saturated = json_array(request.share.saturated());
    let mut admitted: Vec<Uuid> = Vec::new();
    loop {
        let want = (request.limit as usize).saturating_sub(admitted.len());
        if want == 0 {
            break;
        }
        let (full_types, full_queues) = windows.full();
        let mut skipped = view.paused.clone();
        skipped.extend(full_queues);
        let candidates: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT id, type, queue FROM tasks
             WHERE status IN ('queued', 'scheduled', 'failed') AND run_at <= ?1
               AND type IN (SELECT value FROM json_each(?2))
               AND type NOT IN (SELECT value FROM json_each(?3))
               AND queue NOT IN (SELECT value FROM json_each(?4))
               AND (type IN (SELECT value FROM json_each(?5))
                    OR queue IN (SELECT value FROM json_each(?6)))
               AND id NOT IN (SELECT value FROM json_each(?7))
               AND (share_key IS NULL OR share_key NOT IN (SELECT value FROM json_each(?8)))
               AND (concurrency_key IS NULL OR concurrency_key NOT IN (
                     SELECT concurrency_key FROM tasks
                     WHERE status = 'running' AND concurrency_key IS NOT NULL
                     GROUP BY concurrency_key
                     HAVING count(*) >= min(concurrency_limit)))
             ORDER BY priority DESC, run_at, id
             LIMIT ?9",
        )
        .bind(micros(now))
        .bind(json_array(request.types.clone()))
        .bind(json_array(full_types))
        .bind(json_array(skipped))
        .bind(&limited_types)
        .bind(&limited_queues)
        .bind(ids_json(&admitted))
        .bind(&saturated)
        .bind(want as i64)
        .fetch_all(&mut **tx)
        .await
        .map_err(db_error)?;
        let found = candidates.len();
        for (id, task_type, queue) in candidates {
            if admitted.len() < request.limit as usize && windows.admit(&task_type, &queue) {
                admitted.push(uuid(&id)?);
            }
        }
        if found < want {
            break;
        }
    }
    Ok(admitted)
}

fn window(scope: Scope, (_, max, count, per_ms, start): WindowRow, now: DateTime<Utc>) -> Window {
    let ends = start.saturating_add(per_ms.saturating_mul(1000));
    let expired = ends <= micros(now);
    Window {
        scope,
        max,
        used: if expired { 0 } else { count },
        expired,
        per_ms,
        remaining: Duration::from_micros(unsigned(ends - micros(now))),
        started: 0,
    }
}

/// Adds this claim's starts to each window (a window that had ended starts again now).
async fn count_starts(
    tx: &mut Transaction<'static, Sqlite>,
    windows: &Windows,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    for w in windows.list().iter().filter(|w| w.started > 0) {
        let (table, key, name) = match &w.scope {
            Scope::Type(t) => ("task_limits", "type", t),
            Scope::Queue(q) => ("queue_limits", "queue", q),
        };
        sqlx::query(sql!(
            "UPDATE {table} SET
                 window_start = CASE WHEN ?3 THEN ?4 ELSE window_start END,
                 window_count = CASE WHEN ?3 THEN 0 ELSE window_count END + ?2
             WHERE {key} = ?1"
        ))
        .bind(name)
        .bind(w.started)
        .bind(w.expired)
        .bind(micros(now))
        .execute(&mut **tx)
        .await
        .map_err(db_error)?;
    }
    Ok(())
}

/// Limits per type and per queue: one statement each for both tables (`LimitTable`).
impl SqliteTaskStore {
    async fn put_limit(
        &self,
        table: LimitTable,
        key: &str,
        max: u32,
        per_ms: u64,
    ) -> Result<(), StoreError> {
        let (table, column) = table.names();
        sqlx::query(sql!(
            "INSERT INTO {table} ({column}, max, per_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT ({column}) DO UPDATE SET max = excluded.max, per_ms = excluded.per_ms"
        ))
        .bind(key)
        .bind(i32::try_from(max).map_err(corrupt)?)
        .bind(i64::try_from(per_ms).map_err(corrupt)?)
        .execute(&self.writer)
        .await
        .map_err(db_error)?;
        self.read_flow().await?;
        Ok(())
    }

    /// Every limit of `table` by key: the key, `max` and `per_ms`.
    async fn limits(&self, table: LimitTable) -> Result<Vec<(String, u32, u64)>, StoreError> {
        let (table, column) = table.names();
        let rows: Vec<(String, i32, i64)> = sqlx::query_as(sql!(
            "SELECT {column}, max, per_ms FROM {table} ORDER BY {column}"
        ))
        .fetch_all(&self.readers)
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
        let done = sqlx::query(sql!("DELETE FROM {table} WHERE {column} = ?1"))
            .bind(key)
            .execute(&self.writer)
            .await
            .map_err(db_error)?;
        self.read_flow().await?;
        Ok(done.rows_affected() > 0)
    }
}

#[async_trait]
impl QueueStore for SqliteTaskStore {
    async fn pause_queue(&self, queue: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO queue_pauses (queue, paused_at) VALUES (?1, ?2)
             ON CONFLICT (queue) DO NOTHING",
        )
        .bind(queue)
        .bind(micros(Utc::now()))
        .execute(&self.writer)
        .await
        .map_err(db_error)?;
        self.read_flow().await?;
        Ok(done.rows_affected() > 0)
    }

    async fn resume_queue(&self, queue: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM queue_pauses WHERE queue = ?1")
            .bind(queue)
            .execute(&self.writer)
            .await
            .map_err(db_error)?;
        self.read_flow().await?;
        Ok(done.rows_affected() > 0)
    }

    async fn paused_queues(&self) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = sqlx::query_as("SELECT queue FROM queue_pauses ORDER BY queue")
            .fetch_all(&self.readers)
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
             WHERE status IN ('queued', 'scheduled', 'failed') AND run_at <= ?1
               AND queue NOT IN (SELECT queue FROM queue_pauses)
               AND (type IN (SELECT type FROM task_limits
                             WHERE window_count >= max AND window_start + per_ms * 1000 > ?1)
                    OR queue IN (SELECT queue FROM queue_limits
                                 WHERE window_count >= max AND window_start + per_ms * 1000 > ?1))
             GROUP BY queue",
        )
        .bind(micros(Utc::now()))
        .fetch_all(&self.readers)
        .await
        .map_err(db_error)?;
        Ok(FlowState {
            paused: self.paused_queues().await?,
            limits: self.task_limits().await?,
            queue_limits: self.queue_limits().await?,
            held_back: held.into_iter().map(|(q, n)| (q, unsigned(n))).collect(),
        })
    }

    async fn refresh_flow(&self) -> Result<bool, StoreError> {
        self.read_flow().await
    }
}
