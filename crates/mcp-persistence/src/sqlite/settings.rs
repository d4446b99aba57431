//! The `SettingsStore` of the SQLite store: runtime setting overrides and feature flags, in the
//! two tables of `migrations/sqlite/0017_settings.sql` (one shape: name, JSON value, when, who).

use super::SqliteTaskStore;
use crate::codec::{instant, json, micros};
use crate::error::db_error;
use async_trait::async_trait;
use mcp_core::StoreError;
use mcp_core::settings::{SettingsStore, Stored};
use sqlx::FromRow;

#[derive(FromRow)]
struct Row {
    name: String,
    value: String,
    updated_at: i64,
    updated_by: Option<String>,
}

impl TryFrom<Row> for Stored {
    type Error = StoreError;
    fn try_from(row: Row) -> Result<Stored, StoreError> {
        Ok(Stored {
            name: row.name,
            value: json(&row.value)?,
            updated_at: instant(row.updated_at)?,
            updated_by: row.updated_by,
        })
    }
}

/// `table` is one of this file's own constants, never input.
async fn list(store: &SqliteTaskStore, table: &str) -> Result<Vec<Stored>, StoreError> {
    let rows: Vec<Row> = sqlx::query_as(sql!(
        "SELECT name, value, updated_at, updated_by FROM {table} ORDER BY name"
    ))
    .fetch_all(&store.readers)
    .await
    .map_err(db_error)?;
    rows.into_iter().map(Stored::try_from).collect()
}

fn upsert(table: &str) -> sqlx::AssertSqlSafe<String> {
    sql!(
        "INSERT INTO {table} (name, value, updated_at, updated_by) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value,
           updated_at = excluded.updated_at, updated_by = excluded.updated_by"
    )
}

const SETTINGS: &str = "settings";
const FLAGS: &str = "flags";

#[async_trait]
impl SettingsStore for SqliteTaskStore {
    async fn list_settings(&self) -> Result<Vec<Stored>, StoreError> {
        list(self, SETTINGS).await
    }

    async fn write_settings(&self, put: &[Stored], remove: &[String]) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await.map_err(db_error)?;
        for setting in put {
            sqlx::query(upsert(SETTINGS))
                .bind(&setting.name)
                .bind(setting.value.to_string())
                .bind(micros(setting.updated_at))
                .bind(&setting.updated_by)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
        }
        for name in remove {
            sqlx::query("DELETE FROM settings WHERE name = ?1")
                .bind(name)
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
            .bind(flag.value.to_string())
            .bind(micros(flag.updated_at))
            .bind(&flag.updated_by)
            .execute(&self.writer)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn delete_flag(&self, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM flags WHERE name = ?1")
            .bind(name)
            .execute(&self.writer)
            .await
            .map_err(db_error)?;
        Ok(done.rows_affected() > 0)
    }
}
