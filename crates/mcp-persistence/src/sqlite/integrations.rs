//! The `IntegrationStore` of the SQLite store, in the table of
//! `migrations/sqlite/0007_integrations.sql`. Settings and sealed secrets are JSON text.

use super::SqliteTaskStore;
use crate::codec::{instant, json, micros};
use crate::columns::INTEGRATION_COLUMNS;
use crate::error::{corrupt, db_error};
use async_trait::async_trait;
use mcp_core::StoreError;
use mcp_core::integrations::{Integration, IntegrationStore};
use sqlx::FromRow;

#[derive(FromRow)]
struct IntegrationRow {
    name: String,
    kind: String,
    settings: String,
    secrets: String,
    enabled: bool,
    updated_at: i64,
}

impl TryFrom<IntegrationRow> for Integration {
    type Error = StoreError;
    fn try_from(row: IntegrationRow) -> Result<Integration, StoreError> {
        Ok(Integration {
            name: row.name,
            kind: row.kind,
            settings: json(&row.settings)?,
            secrets: json(&row.secrets)?,
            enabled: row.enabled,
            updated_at: instant(row.updated_at)?,
        })
    }
}

#[async_trait]
impl IntegrationStore for SqliteTaskStore {
    async fn put_integration(&self, integration: &Integration) -> Result<(), StoreError> {
        let secrets = serde_json::to_string(&integration.secrets).map_err(corrupt)?;
        sqlx::query(
            "INSERT INTO integrations (name, kind, settings, secrets, enabled, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, settings = excluded.settings,
               secrets = excluded.secrets, enabled = excluded.enabled,
               updated_at = excluded.updated_at",
        )
        .bind(&integration.name)
        .bind(&integration.kind)
        .bind(integration.settings.to_string())
        .bind(secrets)
        .bind(integration.enabled)
        .bind(micros(integration.updated_at))
        .execute(&self.writer)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn integration(&self, name: &str) -> Result<Option<Integration>, StoreError> {
        let row: Option<IntegrationRow> = sqlx::query_as(sql!(
            "SELECT {INTEGRATION_COLUMNS} FROM integrations WHERE name = ?1"
        ))
        .bind(name)
        .fetch_optional(&self.readers)
        .await
        .map_err(db_error)?;
        row.map(Integration::try_from).transpose()
    }

    async fn list_integrations(&self) -> Result<Vec<Integration>, StoreError> {
        let rows: Vec<IntegrationRow> = sqlx::query_as(sql!(
            "SELECT {INTEGRATION_COLUMNS} FROM integrations ORDER BY name"
        ))
        .fetch_all(&self.readers)
        .await
        .map_err(db_error)?;
        rows.into_iter().map(Integration::try_from).collect()
    }

    async fn delete_integration(&self, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM integrations WHERE name = ?1")
            .bind(name)
            .execute(&self.writer)
            .await
            .map_err(db_error)?;
        Ok(done.rows_affected() > 0)
    }
}
