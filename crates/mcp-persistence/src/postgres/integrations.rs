//! The `IntegrationStore` of the PostgreSQL store, in the table of
//! `migrations/postgres/0007_integrations.sql`. Settings and sealed secrets are JSONB.

use super::PgTaskStore;
use crate::columns::INTEGRATION_COLUMNS;
use crate::error::{corrupt, db_error};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mcp_core::StoreError;
use mcp_core::integrations::{Integration, IntegrationStore};
use serde_json::Value;
use sqlx::FromRow;
use sqlx::types::Json;

#[derive(FromRow)]
struct IntegrationRow {
    name: String,
    kind: String,
    settings: Json<Value>,
    secrets: Json<Value>,
    enabled: bool,
    updated_at: DateTime<Utc>,
}

impl TryFrom<IntegrationRow> for Integration {
    type Error = StoreError;
    fn try_from(row: IntegrationRow) -> Result<Integration, StoreError> {
        Ok(Integration {
            name: row.name,
            kind: row.kind,
            settings: row.settings.0,
            secrets: serde_json::from_value(row.secrets.0).map_err(corrupt)?,
            enabled: row.enabled,
            updated_at: row.updated_at,
        })
    }
}

#[async_trait]
impl IntegrationStore for PgTaskStore {
    async fn put_integration(&self, integration: &Integration) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO integrations (name, kind, settings, secrets, enabled, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, settings = excluded.settings,
               secrets = excluded.secrets, enabled = excluded.enabled,
               updated_at = excluded.updated_at",
        )
        .bind(&integration.name)
        .bind(&integration.kind)
        .bind(Json(&integration.settings))
        .bind(Json(&integration.secrets))
        .bind(integration.enabled)
        .bind(integration.updated_at)
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn integration(&self, name: &str) -> Result<Option<Integration>, StoreError> {
        let row: Option<IntegrationRow> = sqlx::query_as(sql!(
            "SELECT {INTEGRATION_COLUMNS} FROM integrations WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
        row.map(Integration::try_from).transpose()
    }

    async fn list_integrations(&self) -> Result<Vec<Integration>, StoreError> {
        let rows: Vec<IntegrationRow> = sqlx::query_as(sql!(
            "SELECT {INTEGRATION_COLUMNS} FROM integrations ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        rows.into_iter().map(Integration::try_from).collect()
    }

    async fn delete_integration(&self, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM integrations WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(done.rows_affected() > 0)
    }
}
