//! Outgoing webhooks: the subscriptions (`Webhook`), the log of what was sent (`WebhookDelivery`),
//! the rules that decide which events a webhook receives (the addresses it may target are the
//! outbound guard's, `crate::outbound`), and the `WebhookStore` port that keeps them. Secrets
//! reach the store sealed by the `SecretBox`.
//! The [`Outbox`] port is the durable record of the task and memory events that webhooks may
//! want: written by the task and memory stores in the transaction of each change, drained by any
//! node's dispatcher.

use crate::events::Event;
use crate::store::StoreError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use utoipa::ToSchema;
use uuid::Uuid;

/// The task type that sends one delivery.
pub const DELIVER_TASK: &str = "webhook.deliver";
/// The `SecretBox` purpose of webhook secrets.
pub const SECRET_PURPOSE: &str = "webhook.secret";
/// Every webhook secret starts with this; the rest is the base64 of the signing key.
pub const SECRET_PREFIX: &str = "whsec_";

/// A new secret: `whsec_` and the base64 of 32 random bytes. Shown once, stored sealed.
pub fn generate_secret() -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    format!(
        "{SECRET_PREFIX}{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

/// The signing key of a `whsec_…` secret: the base64-decoded part after the prefix.
pub fn signing_key(secret: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let encoded = secret.strip_prefix(SECRET_PREFIX)?;
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()
}

/// A URL subscribed to events.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Webhook {
    pub id: Uuid,
    pub url: String,
    /// Event filters: an exact type (`task.dead`), a prefix (`task.*`) or everything (`*`).
    pub events: Vec<String>,
    /// The `whsec_…` secret sealed by the `SecretBox`; never serialized.
    #[serde(skip)]
    pub secret_sealed: String,
    /// False once disabled after failing for too long.
    pub enabled: bool,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    /// When the current run of failed attempts began; `None` after a success.
    pub failing_since: Option<DateTime<Utc>>,
    pub disabled_at: Option<DateTime<Utc>>,
}

impl Webhook {
    /// Whether this webhook wants events of `event_type`.
    pub fn wants(&self, event_type: &str) -> bool {
        self.enabled && self.events.iter().any(|f| filter_matches(f, event_type))
    }
}

/// Whether an event filter matches an event type: `*` matches all, `a.*` every type starting
/// with `a.`, anything else only itself.
pub fn filter_matches(filter: &str, event_type: &str) -> bool {
    if filter == "*" {
        return true;
    }
    match filter.strip_suffix('*') {
        Some(prefix) => prefix.ends_with('.') && event_type.starts_with(prefix),
        None => filter == event_type,
    }
}

/// Whether a filter is well formed: `*`, `name.*` or an exact type, of `[a-z0-9_.]`.
pub fn valid_filter(filter: &str) -> bool {
    let body = filter.strip_suffix(".*").unwrap_or(filter);
    filter == "*"
        || (!body.is_empty()
            && body.len() <= 128
            && !body.starts_with('.')
            && !body.ends_with('.')
            && body
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.'))
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Not attempted yet, or failed and waiting for a retry.
    Pending,
    Succeeded,
    /// The last attempt failed (it may still be retried by its task).
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Succeeded => "succeeded",
            DeliveryStatus::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<DeliveryStatus> {
        match text {
            "pending" => Some(DeliveryStatus::Pending),
            "succeeded" => Some(DeliveryStatus::Succeeded),
            "failed" => Some(DeliveryStatus::Failed),
            _ => None,
        }
    }
}

/// One event sent (or to be sent) to one webhook: the delivery log's entry. Its `id` is the
/// `webhook-id` header, the same on every attempt, so receivers can drop duplicates.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct WebhookDelivery {
    pub id: Uuid,
    pub webhook_id: Uuid,
    pub event_type: String,
    /// The event, exactly as sent as the body.
    #[schema(value_type = Object)]
    pub payload: Value,
    pub status: DeliveryStatus,
    pub attempts: i32,
    /// HTTP status of the last attempt, if one got an answer.
    pub response_code: Option<i32>,
    /// Why the last attempt failed.
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// The outcome of one attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub at: DateTime<Utc>,
    pub succeeded: bool,
    pub response_code: Option<i32>,
    pub error: Option<String>,
}

#[async_trait]
pub trait WebhookStore: Send + Sync + 'static {
    async fn create_webhook(&self, webhook: &Webhook) -> Result<(), StoreError>;
    async fn webhook(&self, id: Uuid) -> Result<Option<Webhook>, StoreError>;
    /// All webhooks, oldest first.
    async fn list_webhooks(&self) -> Result<Vec<Webhook>, StoreError>;
    /// Deletes the webhook and its delivery log; false if there was none.
    async fn delete_webhook(&self, id: Uuid) -> Result<bool, StoreError>;
    /// Sets the failure run and the enabled flag (`disabled_at` is set when it turns false).
    async fn set_webhook_health(
        &self,
        id: Uuid,
        failing_since: Option<DateTime<Utc>>,
        enabled: bool,
    ) -> Result<(), StoreError>;
    async fn create_delivery(&self, delivery: &WebhookDelivery) -> Result<(), StoreError>;
    async fn delivery(&self, id: Uuid) -> Result<Option<WebhookDelivery>, StoreError>;
    /// The webhook's deliveries, newest first.
    async fn list_deliveries(
        &self,
        webhook_id: Uuid,
        limit: u32,
    ) -> Result<Vec<WebhookDelivery>, StoreError>;
    /// Counts one attempt and records its outcome; false if the delivery is gone.
    async fn record_attempt(&self, id: Uuid, attempt: &Attempt) -> Result<bool, StoreError>;
}

/// Every task event, as the task store records it in the outbox.
pub const TASK_EVENTS: [&str; 7] = [
    "task.created",
    "task.started",
    "task.succeeded",
    "task.failed",
    "task.dead",
    "task.cancelled",
    "task.retrying",
];

/// The task and memory events at least one enabled webhook wants: what the outbox must record.
/// Empty when no webhook wants any, so changes then write nothing more than themselves.
pub fn wanted_events(webhooks: &[Webhook]) -> Vec<String> {
    TASK_EVENTS
        .iter()
        .chain(crate::memory::MEMORY_EVENTS.iter())
        .filter(|event| webhooks.iter().any(|w| w.wants(event)))
        .map(|event| (*event).to_owned())
        .collect()
}

/// One recorded event waiting to become deliveries. `id` orders the outbox and, with a webhook's
/// id, names the delivery, so a redo after a crash makes the same delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    pub id: i64,
    /// The event as receivers get it: `data` is the task after the transition, or the
    /// conversation or message after the memory change.
    pub event: Event,
    /// A task event's task's `traceparent`: its deliveries continue the task's trace.
    pub traceparent: Option<String>,
}

/// The webhook outbox. The task and memory stores record each change's event in the change's
/// own transaction, but only for the event types last given to [`Outbox::record_events`], which
/// every node's dispatcher sets from the webhooks in the database.
#[async_trait]
pub trait Outbox: Send + Sync + 'static {
    /// The event types changes record from now on; empty: none.
    fn record_events(&self, event_types: Vec<String>);
    /// Notified after a change in this process recorded an event.
    fn recorded(&self) -> Arc<Notify>;
    /// Takes up to `limit` entries, oldest first, that no other dispatcher holds, for `lease`;
    /// an entry whose lease ran out (its dispatcher died) is taken again.
    async fn claim_outbox(
        &self,
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<OutboxEntry>, StoreError>;
    /// Deletes entries whose deliveries are recorded.
    async fn delete_outbox(&self, ids: &[i64]) -> Result<u64, StoreError>;
    /// Entries waiting (for metrics and tests).
    async fn outbox_len(&self) -> Result<u64, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_exact_prefix_and_all() {
        assert!(filter_matches("*", "task.created"));
        assert!(filter_matches("task.*", "task.dead"));
        assert!(!filter_matches("task.*", "taskx.dead"));
        assert!(!filter_matches("task.*", "memory.message.created"));
        assert!(filter_matches("task.dead", "task.dead"));
        assert!(!filter_matches("task.dead", "task.succeeded"));
        assert!(valid_filter("memory.*") && valid_filter("*") && valid_filter("task.dead"));
        assert!(!valid_filter("") && !valid_filter(".*") && !valid_filter("Task!"));
    }

    #[test]
    fn wanted_events_cover_task_and_memory_events() {
        let webhook = |events: &[&str]| Webhook {
            id: Uuid::nil(),
            url: "http://example.com".into(),
            events: events.iter().map(|e| (*e).to_owned()).collect(),
            secret_sealed: String::new(),
            enabled: true,
            created_by: "admin".into(),
            created_at: Utc::now(),
            failing_since: None,
            disabled_at: None,
        };
        assert!(wanted_events(&[]).is_empty());
        let memory = wanted_events(&[webhook(&["memory.message.*"])]);
        assert_eq!(
            memory,
            [
                "memory.message.created",
                "memory.message.updated",
                "memory.message.deleted"
            ]
        );
        assert_eq!(wanted_events(&[webhook(&["*"])]).len(), 14);
    }

    #[test]
    fn secrets_carry_a_32_byte_key() {
        let secret = generate_secret();
        assert!(secret.starts_with("whsec_"));
        assert_eq!(signing_key(&secret).map(|k| k.len()), Some(32));
        assert_eq!(signing_key("nope"), None);
    }
}
