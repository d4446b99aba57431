//! The webhook outbox and the pending Discord follow-ups of the SQLite store, in the tables of
//! `migrations/sqlite/0009_outbox.sql`. One process owns the file, so a claim needs no locking
//! beyond the single writer; the lease still lets a dispatcher that failed half-way be redone.
//! Task transitions write rows through `record`, memory changes through `commit_memory`.

use super::{SqliteTaskStore, TaskRow};
use crate::codec::{
    id_text, ids_json, instant, json, json_array, micros, micros_after, unsigned, uuid,
};
use crate::columns::TASK_COLUMNS;
use crate::error::db_error;
use crate::outbox::{EVENT_OF_STATUS, Transition, final_statuses, row_entry};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mcp_core::StoreError;
use mcp_core::followups::{FollowupStore, PendingFollowup};
use mcp_core::memory::ChangeEvent;
use mcp_core::webhooks::{DELIVER_TASK, Outbox, OutboxEntry};
use sqlx::{Sqlite, SqliteConnection, Transaction};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use uuid::Uuid;

/// The task row as a JSON object with the column names, as `TaskRow` reads it.
fn snapshot() -> String {
    let fields = TASK_COLUMNS
        .split(", ")
        .map(|c| format!("'{c}', {c}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!("json_object({fields})")
}

/// Records the events of `transition` on the tasks `ids`, inside the caller's transaction; see
/// the PostgreSQL store.
pub(crate) async fn record(
    conn: &mut SqliteConnection,
    ids: &[Uuid],
    transition: Transition,
    wanted: &[String],
) -> Result<u64, StoreError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let ids = ids_json(ids);
    let done = sqlx::query(sql!(
        "INSERT INTO outbox (event_type, task, correlation_id, at)
         SELECT e.event_type, e.task, e.correlation_id, ?4 FROM (
             SELECT CASE WHEN ?2 THEN 'task.created' ELSE {EVENT_OF_STATUS} END AS event_type,
                    {} AS task, correlation_id, id
             FROM tasks WHERE id IN (SELECT value FROM json_each(?1)) AND type <> ?5) AS e
         WHERE e.event_type IN (SELECT value FROM json_each(?3))
         ORDER BY e.id",
        snapshot()
    ))
    .bind(ids)
    .bind(transition.creates())
    .bind(json_array(wanted.to_vec()))
    .bind(micros(Utc::now()))
    .bind(DELIVER_TASK)
    .execute(&mut *conn)
    .await
    .map_err(db_error)?;
    Ok(done.rows_affected())
}

impl SqliteTaskStore {
    /// Records a memory change's `event` in `tx` if a webhook wants it (one row per item of
    /// `data`, made only then), then commits; see the PostgreSQL store.
    pub(crate) async fn commit_memory(
        &self,
        mut tx: Transaction<'static, Sqlite>,
        event: Option<ChangeEvent<'_>>,
        data: impl FnOnce() -> Result<Vec<String>, StoreError>,
    ) -> Result<(), StoreError> {
        let mut recorded = 0;
        if let Some(event) = self.outbox.wanted_memory(event) {
            let data = data()?;
            recorded = sqlx::query(
                "INSERT INTO outbox (event_type, data, correlation_id, at)
                 SELECT ?1, value, ?3, ?4 FROM json_each(?2) ORDER BY key",
            )
            .bind(event.event_type)
            .bind(json_array(data))
            .bind(event.correlation_id)
            .bind(micros(Utc::now()))
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
impl Outbox for SqliteTaskStore {
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
        let now = Utc::now();
        let until = micros_after(now, lease);
        type Row = (
            i64,
            String,
            Option<String>,
            Option<String>,
            Option<String>,
            i64,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "UPDATE outbox SET claimed_until = ?2
             WHERE id IN (SELECT id FROM outbox
                          WHERE claimed_until IS NULL OR claimed_until < ?1
                          ORDER BY id LIMIT ?3)
             RETURNING id, event_type, task, data, correlation_id, at",
        )
        .bind(micros(now))
        .bind(until)
        .bind(i64::from(limit))
        .fetch_all(&self.writer)
        .await
        .map_err(db_error)?;
        let mut entries = rows
            .into_iter()
            .map(|(id, event_type, task, data, correlation_id, at)| {
                row_entry(
                    id,
                    event_type,
                    task,
                    data.as_deref().map(json).transpose()?,
                    correlation_id,
                    instant(at)?,
                    |task| json::<TaskRow>(&task)?.try_into(),
                )
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        entries.sort_by_key(|e| e.id);
        Ok(entries)
    }

    async fn delete_outbox(&self, ids: &[i64]) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM outbox WHERE id IN (SELECT value FROM json_each(?1))")
            .bind(json_array(ids.to_vec()))
            .execute(&self.writer)
            .await
            .map_err(db_error)?;
        Ok(done.rows_affected())
    }

    async fn outbox_len(&self) -> Result<u64, StoreError> {
        let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM outbox")
            .fetch_one(&self.readers)
            .await
            .map_err(db_error)?;
        Ok(unsigned(n))
    }
}

#[async_trait]
impl FollowupStore for SqliteTaskStore {
    async fn save_followup(&self, followup: &PendingFollowup) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO discord_followups (task_id, sealed, created_by, created_at)
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT (task_id) DO NOTHING",
        )
        .bind(id_text(followup.task_id))
        .bind(&followup.sealed)
        .bind(&followup.created_by)
        .bind(micros(followup.created_at))
        .execute(&self.writer)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn due_followups(
        &self,
        stale: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<PendingFollowup>, StoreError> {
        let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
            "SELECT f.task_id, f.sealed, f.created_by, f.created_at
             FROM discord_followups f LEFT JOIN tasks t ON t.id = f.task_id
             WHERE t.id IS NULL OR t.status IN (SELECT value FROM json_each(?3))
                OR f.created_at < ?1
             ORDER BY f.created_at LIMIT ?2",
        )
        .bind(micros(stale))
        .bind(i64::from(limit))
        .bind(json_array(final_statuses()))
        .fetch_all(&self.readers)
        .await
        .map_err(db_error)?;
        rows.into_iter()
            .map(|(task_id, sealed, created_by, created_at)| {
                Ok(PendingFollowup {
                    task_id: uuid(&task_id)?,
                    sealed,
                    created_by,
                    created_at: instant(created_at)?,
                })
            })
            .collect()
    }

    async fn delete_followup(&self, task_id: Uuid) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM discord_followups WHERE task_id = ?1")
            .bind(id_text(task_id))
            .execute(&self.writer)
            .await
            .map_err(db_error)?;
        Ok(done.rows_affected() > 0)
    }
}
