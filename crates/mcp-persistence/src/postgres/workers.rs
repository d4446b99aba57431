//! The `WorkerDirectory` of the PostgreSQL store, in the table of
//! `migrations/postgres/0008_workers.sql`. Expiry is reckoned by PostgreSQL's `now()`, so the
//! nodes' clocks never matter.

use super::PgTaskStore;
use crate::error::db_error;
use async_trait::async_trait;
use mcp_core::StoreError;
use mcp_core::routing::{DirectoryEntry, WorkerDirectory, WorkerRegistration};
use serde_json::json;
use sqlx::FromRow;
use sqlx::types::Json;
use std::time::Duration;

#[derive(FromRow)]
struct WorkerRow {
    node: String,
    id: i64,
    subject: String,
    types: Vec<String>,
    concurrency: i32,
    outstanding: i32,
}

impl TryFrom<WorkerRow> for DirectoryEntry {
    type Error = StoreError;
    fn try_from(row: WorkerRow) -> Result<DirectoryEntry, StoreError> {
        crate::workers::directory_entry(
            row.node,
            row.id,
            row.subject,
            row.types,
            row.concurrency.into(),
            row.outstanding.into(),
        )
    }
}

#[async_trait]
impl WorkerDirectory for PgTaskStore {
    async fn publish_workers(
        &self,
        node: &str,
        workers: &[WorkerRegistration],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let rows: Vec<_> = workers
            .iter()
            .map(|w| {
                json!({
                    "id": crate::codec::count_i64(w.id),
                    "subject": w.subject,
                    "types": w.types,
                    "concurrency": crate::codec::count_i32(w.concurrency),
                    "outstanding": crate::codec::count_i32(w.outstanding),
                })
            })
            .collect();
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        sqlx::query("DELETE FROM workers WHERE node = $1")
            .bind(node)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        if !rows.is_empty() {
            sqlx::query(
                "INSERT INTO workers (node, id, subject, types, concurrency, outstanding, expires_at)
                 SELECT $1, w.id, w.subject, ARRAY(SELECT jsonb_array_elements_text(w.types)),
                        w.concurrency, w.outstanding, now() + $3 * interval '1 millisecond'
                   FROM jsonb_to_recordset($2) AS w(id bigint, subject text, types jsonb,
                        concurrency integer, outstanding integer)",
            )
            .bind(node)
            .bind(Json(rows))
            .bind(crate::codec::millis(ttl))
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        }
        tx.commit().await.map_err(db_error)
    }

    async fn live_workers(&self) -> Result<Vec<DirectoryEntry>, StoreError> {
        let rows: Vec<WorkerRow> = sqlx::query_as(
            "SELECT node, id, subject, types, concurrency, outstanding FROM workers
              WHERE expires_at > now() ORDER BY node, id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        rows.into_iter().map(DirectoryEntry::try_from).collect()
    }

    async fn served_types(&self, types: &[String]) -> Result<Vec<String>, StoreError> {
        let served: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT t FROM workers, unnest(workers.types) AS t
              WHERE workers.expires_at > now() AND t = ANY($1)",
        )
        .bind(types)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(crate::workers::in_order_of(types, &served))
    }

    async fn prune_workers(&self) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM workers WHERE expires_at <= now()")
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(done.rows_affected())
    }
}
