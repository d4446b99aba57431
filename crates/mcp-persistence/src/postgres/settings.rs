//! The `SettingsStore` of the PostgreSQL store: runtime setting overrides and feature flags, in
//! the two tables of `migrations/postgres/0017_settings.sql` (one shape: name, JSONB value,
//! when, who).

use super::PgTaskStore;
use crate::error::db_error;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mcp_core::StoreError;
use mcp_core::settings::{SettingsStore, Stored};
use serde_json::Value;
use sqlx::FromRow;
use sqlx::types::Json;

#[derive(FromRow)]
struct Row {
    name: String,
    value: Json<Value>,
    updated_at: DateTime<Utc>,
    updated_by: Option<String>,
}

impl From<Row> for Stored {
    fn from(row: Row) -> Stored {
        Stored {
            name: row.name,
            value: row.value.0,
            updated_at: row.updated_at,
            updated_by: row.updated_by,
        }
    }
}

/// `table` is one of this file's own constants, never input.
async fn list(store: &PgTaskStore, table: &str) -> Result<Vec<Stored>, StoreError> {
    let rows: Vec<Row> = sqlx::query_as(sql!(
        "SELECT name, value, updated_at, updated_by FROM {table} ORDER BY name"
    ))
    .fetch_all(&store.pool)
    .await
    .map_err(db_error)?;
    Ok(rows.into_iter().map(Stored::from).collect())
}

fn upsert(table: &str) -> sqlx::AssertSqlSafe<String> {
    sql!(
        "INSERT INTO {table} (name, value, updated_at, updated_by) VALUES ($1, $2, $3, $4)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value,
           updated_at = excluded.updated_at, updated_by = excluded.updated_by"
    )
}

const SETTINGS: &str = "settings";
const FLAGS: &str = "flags";

#[async_trait]
impl SettingsStore for PgTaskStore {
    async fn list_settings(&self) -> Result<Vec<Stored>, StoreError> {
        list(self, SETTINGS).await
    }

    async fn write_settings(&self, put: &[Stored], remove: &[String]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        for setting in put {
            sqlx::query(upsert(SETTINGS))
                .bind(&setting.name)
                .bind(Json(&setting.value))
                .bind(setting.updated_at)
                .bind(&setting.updated_by)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
        }
        if !remove.is_empty() {
            sqlx::query("DELETE FROM settings WHERE name = ANY($1)")
                .bind(remove)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
        }
        tx.commit().await.map_err(db_error)
    }

    async fn list_flags(&self) -> Result<Vec<Stored>, StoreError> {
        list(self, FLAGS).await
    }

    async fn put_flag(&self, flag: &Stored) -> Result<(), StoreError> {
        sqlx::query(upsert(FLAGS))
            .bind(&flag.name)
            .bind(Json(&flag.value))
            .bind(flag.updated_at)
            .bind(&flag.updated_by)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn delete_flag(&self, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM flags WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(done.rows_affected() > 0)
    }
}
