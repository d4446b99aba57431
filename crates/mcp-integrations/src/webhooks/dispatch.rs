//! The dispatcher: events from the outbox (task and memory events) become `webhook.deliver`
//! tasks, one per matching webhook.

use super::*;
use chrono::Utc;
use mcp_core::Orchestrator;
use mcp_core::events::Event;
use mcp_core::webhooks::{
    DELIVER_TASK, DeliveryStatus, Outbox, Webhook, WebhookDelivery, WebhookStore, wanted_events,
};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

/// The span in which an outbox entry's deliveries are enqueued (none while tracing is off): a
/// child of the span that created the task, so deliveries continue the task's trace.
fn dispatch_span(entry: &mcp_core::webhooks::OutboxEntry) -> tracing::Span {
    if !mcp_core::trace::enabled() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        parent: None,
        "webhook.dispatch",
        event.type = %entry.event.event_type
    );
    mcp_core::trace::set_parent(&span, entry.traceparent.as_deref());
    span
}

/// How the dispatcher drains the outbox.
#[derive(Debug, Clone)]
pub struct DispatchSettings {
    /// How often the webhooks are re-read, to tell the stores which events to record (a webhook
    /// created on another node counts from then).
    pub refresh: Duration,
    /// How often the outbox is read besides being woken by a transition of this node.
    pub poll: Duration,
    /// Entries taken at once.
    pub batch: u32,
    /// How long a taken entry is this node's; then another may redo it. Far longer than a
    /// batch takes.
    pub lease: Duration,
}

impl Default for DispatchSettings {
    fn default() -> Self {
        DispatchSettings {
            refresh: Duration::from_secs(1),
            poll: Duration::from_secs(1),
            batch: 100,
            lease: Duration::from_secs(30),
        }
    }
}

/// Turns the events of the durable outbox (task and memory events) into one delivery per
/// webhook that wants them. Runs on every node; each outbox entry is taken by one.
pub struct Dispatcher {
    pub store: Arc<dyn WebhookStore>,
    pub outbox: Arc<dyn Outbox>,
    pub orchestrator: Arc<Orchestrator>,
    pub max_attempts: i32,
    pub settings: DispatchSettings,
}

impl Dispatcher {
    /// Runs until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        // The first refresh before anything else, so changes record from the start.
        self.refresh().await;
        tokio::join!(self.refresh_loop(&stop), self.drain_loop(&stop));
    }

    /// Tells the stores which events the enabled webhooks want.
    async fn refresh(&self) {
        match self.store.list_webhooks().await {
            Ok(webhooks) => self.outbox.record_events(wanted_events(&webhooks)),
            // Keep what was recorded so far: the last known webhooks still stand.
            Err(e) => tracing::warn!(error = %e, "webhooks: cannot read the webhooks"),
        }
    }

    async fn refresh_loop(&self, stop: &CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.settings.refresh) => self.refresh().await,
            }
        }
    }

    async fn drain_loop(&self, stop: &CancellationToken) {
        let recorded = self.outbox.recorded();
        loop {
            // Registered before draining, so a transition recorded meanwhile still wakes it.
            let woken = recorded.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            while !stop.is_cancelled() {
                match self.drain_batch().await {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "webhooks: cannot drain the outbox; retrying");
                        break;
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = &mut woken => {}
                _ = tokio::time::sleep(self.settings.poll) => {}
            }
        }
    }

    /// Takes one batch of the outbox and makes its deliveries; true if it took a full batch
    /// (more may wait).
    pub async fn drain_batch(&self) -> Result<bool, String> {
        let entries = self
            .outbox
            .claim_outbox(self.settings.batch, self.settings.lease)
            .await
            .map_err(|e| e.to_string())?;
        if entries.is_empty() {
            return Ok(false);
        }
        let webhooks = self
            .store
            .list_webhooks()
            .await
            .map_err(|e| e.to_string())?;
        let mut done = Vec::with_capacity(entries.len());
        for entry in &entries {
            let recorded = self
                .deliver(&webhooks, &entry.event, |webhook| {
                    outbox_delivery_id(webhook, entry.id)
                })
                .instrument(dispatch_span(entry))
                .await;
            match recorded {
                Ok(()) => done.push(entry.id),
                // Left in the outbox: its lease runs out and it is redone (the same ids).
                Err(e) => {
                    tracing::warn!(error = %e, entry = entry.id, "webhooks: delivery not recorded; will retry")
                }
            }
        }
        self.outbox
            .delete_outbox(&done)
            .await
            .map_err(|e| e.to_string())?;
        Ok(entries.len() as u32 >= self.settings.batch)
    }

    /// Records one delivery of `event` per webhook that wants it, each named by `id_of`, and
    /// enqueues its sending once. Idempotent: a delivery recorded before (by a crashed redo or
    /// another node) is enqueued with the same idempotency key, which finds the first task.
    async fn deliver(
        &self,
        webhooks: &[Webhook],
        event: &Event,
        id_of: impl Fn(Uuid) -> Uuid,
    ) -> Result<(), String> {
        // A delivery task's own transitions would trigger more deliveries, without end.
        if event.data.get("type").and_then(Value::as_str) == Some(DELIVER_TASK) {
            return Ok(());
        }
        let payload = serde_json::to_value(event).map_err(|e| e.to_string())?;
        for webhook in webhooks.iter().filter(|w| w.wants(&event.event_type)) {
            let delivery = WebhookDelivery {
                id: id_of(webhook.id),
                webhook_id: webhook.id,
                event_type: event.event_type.clone(),
                payload: payload.clone(),
                status: DeliveryStatus::Pending,
                attempts: 0,
                response_code: None,
                error: None,
                created_at: Utc::now(),
                last_attempt_at: None,
                delivered_at: None,
            };
            match self.store.create_delivery(&delivery).await {
                Ok(()) | Err(mcp_core::StoreError::Conflict(_)) => {}
                Err(e) => return Err(format!("cannot record a delivery: {e}")),
            }
            enqueue_once(
                &self.orchestrator,
                delivery.id,
                self.max_attempts,
                event.correlation_id.as_deref(),
            )
            .await
            .map_err(|e| format!("cannot enqueue delivery {}: {e}", delivery.id))?;
        }
        Ok(())
    }
}
