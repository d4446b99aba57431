//! The webhook store wrapper that tells the stores at once which events to record.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mcp_core::webhooks::{Attempt, Outbox, Webhook, WebhookDelivery, WebhookStore, wanted_events};
use std::sync::Arc;
use uuid::Uuid;

/// The webhook store as the webhook routes and the delivery handler see it: after each change to
/// the webhooks it tells the stores at once which events to record, so a task or message created
/// right after its webhook (on this node) is delivered. Other nodes learn it at their next
/// refresh ([`DispatchSettings::refresh`]).
pub struct RecordingWebhooks {
    pub inner: Arc<dyn WebhookStore>,
    pub outbox: Arc<dyn Outbox>,
}

impl RecordingWebhooks {
    async fn refresh(&self) -> Result<(), mcp_core::StoreError> {
        let webhooks = self.inner.list_webhooks().await?;
        self.outbox.record_events(wanted_events(&webhooks));
        Ok(())
    }
}

#[async_trait]
impl WebhookStore for RecordingWebhooks {
    async fn create_webhook(&self, webhook: &Webhook) -> Result<(), mcp_core::StoreError> {
        self.inner.create_webhook(webhook).await?;
        self.refresh().await
    }
    async fn webhook(&self, id: Uuid) -> Result<Option<Webhook>, mcp_core::StoreError> {
        self.inner.webhook(id).await
    }
    async fn list_webhooks(&self) -> Result<Vec<Webhook>, mcp_core::StoreError> {
        self.inner.list_webhooks().await
    }
    async fn delete_webhook(&self, id: Uuid) -> Result<bool, mcp_core::StoreError> {
        let deleted = self.inner.delete_webhook(id).await?;
        self.refresh().await?;
        Ok(deleted)
    }
    async fn set_webhook_health(
        &self,
        id: Uuid,
        failing_since: Option<DateTime<Utc>>,
        enabled: bool,
    ) -> Result<(), mcp_core::StoreError> {
        self.inner
            .set_webhook_health(id, failing_since, enabled)
            .await?;
        self.refresh().await
    }
    async fn create_delivery(
        &self,
        delivery: &WebhookDelivery,
    ) -> Result<(), mcp_core::StoreError> {
        self.inner.create_delivery(delivery).await
    }
    async fn delivery(&self, id: Uuid) -> Result<Option<WebhookDelivery>, mcp_core::StoreError> {
        self.inner.delivery(id).await
    }
    async fn list_deliveries(
        &self,
        webhook_id: Uuid,
        limit: u32,
    ) -> Result<Vec<WebhookDelivery>, mcp_core::StoreError> {
        self.inner.list_deliveries(webhook_id, limit).await
    }
    async fn record_attempt(
        &self,
        id: Uuid,
        attempt: &Attempt,
    ) -> Result<bool, mcp_core::StoreError> {
        self.inner.record_attempt(id, attempt).await
    }
}
