//! The `WebhookStore` of the PostgreSQL store, in the tables of `migrations/postgres/0006_webhooks.sql`.

use super::PgTaskStore;
use crate::columns::{DELIVERY_COLUMNS, WEBHOOK_COLUMNS};
use crate::error::{conflict_or_db_error, corrupt, db_error};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mcp_core::StoreError;
use mcp_core::webhooks::{Attempt, DeliveryStatus, Webhook, WebhookDelivery, WebhookStore};
use sqlx::FromRow;
use uuid::Uuid;

#[derive(FromRow)]
struct WebhookRow {
    id: Uuid,
    url: String,
    events: sqlx::types::Json<Vec<String>>,
    secret_sealed: String,
    enabled: bool,
    created_by: String,
    created_at: DateTime<Utc>,
    failing_since: Option<DateTime<Utc>>,
    disabled_at: Option<DateTime<Utc>>,
}

impl TryFrom<WebhookRow> for Webhook {
    type Error = StoreError;
    fn try_from(row: WebhookRow) -> Result<Webhook, StoreError> {
        Ok(Webhook {
            id: row.id,
            url: row.url,
            events: row.events.0,
            secret_sealed: row.secret_sealed,
            enabled: row.enabled,
            created_by: row.created_by,
            created_at: row.created_at,
            failing_since: row.failing_since,
            disabled_at: row.disabled_at,
        })
    }
}

#[derive(FromRow)]
struct DeliveryRow {
    id: Uuid,
    webhook_id: Uuid,
    event_type: String,
    payload: serde_json::Value,
    status: String,
    attempts: i32,
    response_code: Option<i32>,
    error: Option<String>,
    created_at: DateTime<Utc>,
    last_attempt_at: Option<DateTime<Utc>>,
    delivered_at: Option<DateTime<Utc>>,
}

impl TryFrom<DeliveryRow> for WebhookDelivery {
    type Error = StoreError;
    fn try_from(row: DeliveryRow) -> Result<WebhookDelivery, StoreError> {
        Ok(WebhookDelivery {
            id: row.id,
            webhook_id: row.webhook_id,
            event_type: row.event_type,
            payload: row.payload,
            status: DeliveryStatus::parse(&row.status)
                .ok_or_else(|| corrupt(format!("bad delivery status {}", row.status)))?,
            attempts: row.attempts,
            response_code: row.response_code,
            error: row.error,
            created_at: row.created_at,
            last_attempt_at: row.last_attempt_at,
            delivered_at: row.delivered_at,
        })
    }
}

#[async_trait]
impl WebhookStore for PgTaskStore {
    async fn create_webhook(&self, webhook: &Webhook) -> Result<(), StoreError> {
        let events = sqlx::types::Json(&webhook.events);
        sqlx::query(
            "INSERT INTO webhooks (id, url, events, secret_sealed, enabled, created_by, \
             created_at, failing_since, disabled_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(webhook.id)
        .bind(&webhook.url)
        .bind(events)
        .bind(&webhook.secret_sealed)
        .bind(webhook.enabled)
        .bind(&webhook.created_by)
        .bind(webhook.created_at)
        .bind(webhook.failing_since)
        .bind(webhook.disabled_at)
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn webhook(&self, id: Uuid) -> Result<Option<Webhook>, StoreError> {
        let row: Option<WebhookRow> =
            sqlx::query_as(sql!("SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1"))
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_error)?;
        row.map(Webhook::try_from).transpose()
    }

    async fn list_webhooks(&self) -> Result<Vec<Webhook>, StoreError> {
        let rows: Vec<WebhookRow> = sqlx::query_as(sql!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        rows.into_iter().map(Webhook::try_from).collect()
    }

    async fn delete_webhook(&self, id: Uuid) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM webhooks WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(done.rows_affected() > 0)
    }

    async fn set_webhook_health(
        &self,
        id: Uuid,
        failing_since: Option<DateTime<Utc>>,
        enabled: bool,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE webhooks SET failing_since = $2, enabled = $3, disabled_at = CASE \
             WHEN $3 THEN NULL ELSE coalesce(disabled_at, $4) END WHERE id = $1",
        )
        .bind(id)
        .bind(failing_since)
        .bind(enabled)
        .bind(Utc::now())
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn create_delivery(&self, delivery: &WebhookDelivery) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO webhook_deliveries (id, webhook_id, event_type, payload, status, \
             attempts, response_code, error, created_at, last_attempt_at, delivered_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(delivery.id)
        .bind(delivery.webhook_id)
        .bind(&delivery.event_type)
        .bind(&delivery.payload)
        .bind(delivery.status.as_str())
        .bind(delivery.attempts)
        .bind(delivery.response_code)
        .bind(&delivery.error)
        .bind(delivery.created_at)
        .bind(delivery.last_attempt_at)
        .bind(delivery.delivered_at)
        .execute(&self.pool)
        .await
        .map_err(|e| conflict_or_db_error(e, || format!("delivery `{}`", delivery.id)))?;
        Ok(())
    }

    async fn delivery(&self, id: Uuid) -> Result<Option<WebhookDelivery>, StoreError> {
        let row: Option<DeliveryRow> = sqlx::query_as(sql!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
        row.map(WebhookDelivery::try_from).transpose()
    }

    async fn list_deliveries(
        &self,
        webhook_id: Uuid,
        limit: u32,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        let rows: Vec<DeliveryRow> = sqlx::query_as(sql!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE webhook_id = $1 \
             ORDER BY created_at DESC, id DESC LIMIT $2"
        ))
        .bind(webhook_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        rows.into_iter().map(WebhookDelivery::try_from).collect()
    }

    async fn record_attempt(&self, id: Uuid, attempt: &Attempt) -> Result<bool, StoreError> {
        let status = if attempt.succeeded {
            DeliveryStatus::Succeeded
        } else {
            DeliveryStatus::Failed
        };
        let done = sqlx::query(
            "UPDATE webhook_deliveries SET attempts = attempts + 1, status = $2, \
             response_code = $3, error = $4, last_attempt_at = $5, \
             delivered_at = CASE WHEN $6 THEN $5 ELSE delivered_at END WHERE id = $1",
        )
        .bind(id)
        .bind(status.as_str())
        .bind(attempt.response_code)
        .bind(&attempt.error)
        .bind(attempt.at)
        .bind(attempt.succeeded)
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(done.rows_affected() > 0)
    }
}
