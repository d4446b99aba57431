//! The `WorkerDirectory` of the SQLite store, in the table of
//! `migrations/sqlite/0008_workers.sql`. One process owns the file, so its clock is the only
//! clock there is.

use super::SqliteTaskStore;
use crate::codec::{json, micros};
use crate::error::{corrupt, db_error};
use async_trait::async_trait;
use chrono::Utc;
use mcp_core::StoreError;
use mcp_core::routing::{DirectoryEntry, WorkerDirectory, WorkerRegistration};
use sqlx::FromRow;
use std::time::Duration;

#[derive(FromRow)]
struct WorkerRow {
    node: String,
    id: i64,
    subject: String,
    types: String,
    concurrency: i64,
    outstanding: i64,
}

impl TryFrom<WorkerRow> for DirectoryEntry {
    type Error = StoreError;
    fn try_from(row: WorkerRow) -> Result<DirectoryEntry, StoreError> {
        crate::workers::directory_entry(
            row.node,
            row.id,
            row.subject,
            json(&row.types)?,
            row.concurrency,
            row.outstanding,
        )
    }
}

#[async_trait]
impl WorkerDirectory for SqliteTaskStore {
    async fn publish_workers(
        &self,
        node: &str,
        workers: &[WorkerRegistration],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let expires_at =
            micros(Utc::now()).saturating_add(ttl.as_micros().min(i64::MAX as u128) as i64);
        let mut tx = self.writer.begin().await.map_err(db_error)?;
        sqlx::query("DELETE FROM workers WHERE node = ?1")
            .bind(node)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        for worker in workers {
            let types = serde_json::to_string(&worker.types).map_err(corrupt)?;
            sqlx::query(
                "INSERT INTO workers (node, id, subject, types, concurrency, outstanding, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .bind(node)
            .bind(crate::codec::count_i64(worker.id))
            .bind(&worker.subject)
            .bind(types)
            .bind(crate::codec::count_i32(worker.concurrency))
            .bind(crate::codec::count_i32(worker.outstanding))
            .bind(expires_at)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        }
        tx.commit().await.map_err(db_error)
    }

    async fn live_workers(&self) -> Result<Vec<DirectoryEntry>, StoreError> {
        let rows: Vec<WorkerRow> = sqlx::query_as(
            "SELECT node, id, subject, types, concurrency, outstanding FROM workers
              WHERE expires_at > ?1 ORDER BY node, id",
        )
        .bind(micros(Utc::now()))
        .fetch_all(&self.readers)
        .await
        .map_err(db_error)?;
        rows.into_iter().map(DirectoryEntry::try_from).collect()
    }

    async fn served_types(&self, types: &[String]) -> Result<Vec<String>, StoreError> {
        let wanted = serde_json::to_string(types).map_err(corrupt)?;
        let served: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT t.value FROM workers, json_each(workers.types) AS t
              WHERE workers.expires_at > ?1 AND t.value IN (SELECT value FROM json_each(?2))",
        )
        .bind(micros(Utc::now()))
        .bind(wanted)
        .fetch_all(&self.readers)
        .await
        .map_err(db_error)?;
        Ok(crate::workers::in_order_of(types, &served))
    }

    async fn prune_workers(&self) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM workers WHERE expires_at <= ?1")
            .bind(micros(Utc::now()))
            .execute(&self.writer)
            .await
            .map_err(db_error)?;
        Ok(done.rows_affected())
    }
}
