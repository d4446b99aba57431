//! The webhook outbox and the pending Discord follow-ups of the PostgreSQL store, in the tables
//! of `migrations/postgres/0009_outbox.sql`. Outbox rows are written by the task transitions (see
//! `record`) and the memory changes (see `commit_memory`), in their transaction; dispatchers on
//! any node take them with `SKIP LOCKED` and a lease, so each row is turned into deliveries by one
//! node at a time.

use super::{PgTaskStore, TaskRow};
use crate::codec::{millis, unsigned};
use crate::error::db_error;
use crate::outbox::{EVENT_OF_STATUS, Transition, final_statuses, row_entry};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mcp_core::StoreError;
use mcp_core::followups::{FollowupStore, PendingFollowup};
use mcp_core::memory::ChangeEvent;
use mcp_core::webhooks::{DELIVER_TASK, Outbox, OutboxEntry};
use sqlx::types::Json;
use sqlx::{PgConnection, Postgres, Transaction};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use uuid::Uuid;

/// Records the events of `transition` on the tasks `ids` (as they are now, inside the caller's
/// transaction) that are among `wanted`. Delivery tasks make no events: their own transitions
/// would trigger deliveries without end.
pub(crate) async fn record(
    conn: &mut PgConnection,
    ids: &[Uuid],
    transition: Transition,
    wanted: &[String],
) -> Result<u64, StoreError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let done = sqlx::query(sql!(
        "INSERT INTO outbox (event_type, task, correlation_id, at)
         SELECT e.event_type, e.task, e.correlation_id, now() FROM (
             SELECT CASE WHEN $2 THEN 'task.created' ELSE {EVENT_OF_STATUS} END AS event_type,
                    to_jsonb(t) AS task, t.correlation_id, t.id
             FROM tasks t WHERE t.id = ANY($1) AND t.type <> $4) AS e
         WHERE e.event_type = ANY($3)
         ORDER BY e.id"
    ))
    .bind(ids)
    .bind(transition.creates())
    .bind(wanted)
    .bind(DELIVER_TASK)
    .execute(&mut *conn)
    .await
    .map_err(db_error)?;
    Ok(done.rows_affected())
}

impl PgTaskStore {
    /// Records a memory change's `event` in `tx` if a webhook wants it (one row per item of
    /// `data`, made only then), then commits.
    pub(crate) async fn commit_memory(
        &self,
        mut tx: Transaction<'static, Postgres>,
        event: Option<ChangeEvent<'_>>,
        data: impl FnOnce() -> Result<Vec<String>, StoreError>,
    ) -> Result<(), StoreError> {
        let mut recorded = 0;
        if let Some(event) = self.outbox.wanted_memory(event) {
            let data = data()?;
            recorded = sqlx::query(
                "INSERT INTO outbox (event_type, data, correlation_id, at)
                 SELECT $1, u.data::jsonb, $3, now()
                 FROM unnest($2::text[]) WITH ORDINALITY AS u (data, n)
                 ORDER BY u.n",
            )
            .bind(event.event_type)
            .bind(&data)
            .bind(event.correlation_id)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?
            .rows_affected();
        }
        tx.commit().await.map_err(db_error)?;
        if recorded > 0 {
            self.outbox.tell();
        }
        Ok(())
    }
}

#[async_trait]
impl Outbox for PgTaskStore {
    fn record_events(&self, event_types: Vec<String>) {
        self.outbox.set(event_types);
    }

    fn recorded(&self) -> Arc<Notify> {
        self.outbox.recorded()
    }

    async fn claim_outbox(
        &self,
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        type Row = (
            i64,
            String,
            Option<Json<TaskRow>>,
            Option<Json<serde_json::Value>>,
            Option<String>,
            DateTime<Utc>,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "UPDATE outbox SET claimed_until = now() + $2 * interval '1 millisecond'
             WHERE id IN (SELECT id FROM outbox
                          WHERE claimed_until IS NULL OR claimed_until < now()
                          ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
             RETURNING id, event_type, task, data, correlation_id, at",
        )
        .bind(i64::from(limit))
        .bind(millis(lease))
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let mut entries = rows
            .into_iter()
            .map(|(id, event_type, task, data, correlation_id, at)| {
                row_entry(
                    id,
                    event_type,
                    task,
                    data.map(|d| d.0),
                    correlation_id,
                    at,
                    |task| task.0.try_into(),
                )
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        entries.sort_by_key(|e| e.id);
        Ok(entries)
    }

    async fn delete_outbox(&self, ids: &[i64]) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
            .bind(ids)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(done.rows_affected())
    }

    async fn outbox_len(&self) -> Result<u64, StoreError> {
        let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM outbox")
            .fetch_one(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(unsigned(n))
    }
}

#[async_trait]
impl FollowupStore for PgTaskStore {
    async fn save_followup(&self, followup: &PendingFollowup) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO discord_followups (task_id, sealed, created_by, created_at)
             VALUES ($1, $2, $3, $4) ON CONFLICT (task_id) DO NOTHING",
        )
        .bind(followup.task_id)
        .bind(&followup.sealed)
        .bind(&followup.created_by)
        .bind(followup.created_at)
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn due_followups(
        &self,
        stale: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<PendingFollowup>, StoreError> {
        let rows: Vec<(Uuid, String, String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT f.task_id, f.sealed, f.created_by, f.created_at
             FROM discord_followups f LEFT JOIN tasks t ON t.id = f.task_id
             WHERE t.id IS NULL OR t.status = ANY($3) OR f.created_at < $1
             ORDER BY f.created_at LIMIT $2",
        )
        .bind(stale)
        .bind(i64::from(limit))
        .bind(final_statuses())
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(rows
            .into_iter()
            .map(
                |(task_id, sealed, created_by, created_at)| PendingFollowup {
                    task_id,
                    sealed,
                    created_by,
                    created_at,
                },
            )
            .collect())
    }

    async fn delete_followup(&self, task_id: Uuid) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM discord_followups WHERE task_id = $1")
            .bind(task_id)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(done.rows_affected() > 0)
    }
}
