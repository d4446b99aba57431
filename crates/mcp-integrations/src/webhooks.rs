//! Outgoing webhooks: the [`Dispatcher`] that turns events into `webhook.deliver` tasks, one per
//! matching webhook, and the [`DeliverHandler`] that runs them — signed per the Standard
//! Webhooks spec, refused when the target resolves to a private address, each attempt recorded in
//! the delivery log. Retries and backoff are the orchestrator's; a webhook that has failed for
//! `disable_after` without a single success is disabled.
//!
//! Task events (`task.*`) come from the durable outbox: the task store records them in the
//! transaction of each transition, and any node's dispatcher turns them into deliveries, so none
//! is lost while a node is down or the bus drops events. Memory events (`memory.*`) still come
//! from the bus (channel `memory`), as every node sees them: one missed by every node (all down,
//! or Redis losing it) is not delivered.

use async_trait::async_trait;
use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use mcp_core::events::{Delivery as BusDelivery, Event, EventBus};
use mcp_core::secrets::SecretBox;
use mcp_core::task::CreateTask;
use mcp_core::webhooks::{
    Attempt, DELIVER_TASK, DeliveryStatus, Outbox, SECRET_PURPOSE, Webhook, WebhookDelivery,
    WebhookStore, is_private_address, signing_key, wanted_task_events,
};
use mcp_core::{Handler, HandlerError, Orchestrator, Origin, TaskContext};
use reqwest::header::CONTENT_TYPE;
use reqwest::{Client, Url};
use serde_json::{Value, json};
use sha2::Sha256;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The channel of task events (delivered from the outbox instead).
pub const TASKS_CHANNEL: &str = "tasks";
/// Every conversation's changes (`memory.*` events).
pub const MEMORY_CHANNEL: &str = "memory";

/// Settings of outgoing webhooks.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Allow targets on loopback, private, link-local and unique-local addresses (tests, LANs).
    pub allow_private: bool,
    /// Limit of one attempt.
    pub timeout: Duration,
    /// A webhook failing this long without a success is disabled; `None`: never.
    pub disable_after: Option<chrono::Duration>,
    /// Attempts of each delivery task before it is `dead`.
    pub max_attempts: i32,
    pub user_agent: String,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            allow_private: false,
            timeout: Duration::from_secs(15),
            disable_after: Some(chrono::Duration::days(5)),
            max_attempts: 8,
            user_agent: concat!("mkww-mcp/", env!("CARGO_PKG_VERSION"), " (webhooks)").to_owned(),
        }
    }
}

/// The `webhook-signature` value: `v1,` and the base64 HMAC-SHA256 of `{id}.{timestamp}.{body}`.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// Why a URL may not be a webhook target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0} resolves to a private address")]
    Private(String),
    #[error("cannot resolve {0}: {1}")]
    Unresolved(String, String),
}

/// Checks a webhook URL (http or https, with a host) and resolves it; with `allow_private` off,
/// refuses it if any of its addresses is private. Returns the host and the addresses to use,
/// so the request goes where the check looked (no DNS rebinding in between).
pub async fn resolve_target(
    url: &str,
    allow_private: bool,
) -> Result<(Url, String, Vec<SocketAddr>), TargetError> {
    let parsed = Url::parse(url).map_err(|e| TargetError::Invalid(format!("bad url: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(TargetError::Invalid("the url must be http or https".into()));
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| TargetError::Invalid("the url has no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = parsed
        .port_or_known_default()
        .ok_or_else(|| TargetError::Invalid("the url has no port".into()))?;
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| TargetError::Unresolved(host.clone(), e.to_string()))?
        .collect();
    if addrs.is_empty() {
        return Err(TargetError::Unresolved(host, "no addresses".into()));
    }
    if !allow_private && addrs.iter().any(|a| is_private_address(a.ip())) {
        return Err(TargetError::Private(host));
    }
    Ok((parsed, host, addrs))
}

/// Runs `webhook.deliver` tasks (payload `{"delivery_id": "…"}`).
pub struct DeliverHandler {
    pub store: Arc<dyn WebhookStore>,
    pub secrets: Arc<SecretBox>,
    pub config: WebhookConfig,
}

/// One attempt's failure: the remote status if it answered, the reason, and whether another
/// attempt could succeed.
struct Failed {
    code: Option<i32>,
    message: String,
    retryable: bool,
}

impl DeliverHandler {
    async fn send(&self, webhook: &Webhook, delivery: &WebhookDelivery) -> Result<i32, Failed> {
        let permanent = |message: String| Failed {
            code: None,
            message,
            retryable: false,
        };
        let (url, host, addrs) = resolve_target(&webhook.url, self.config.allow_private)
            .await
            .map_err(|e| Failed {
                code: None,
                retryable: matches!(e, TargetError::Unresolved(..)),
                message: e.to_string(),
            })?;
        let secret = self
            .secrets
            .open(&webhook.secret_sealed, SECRET_PURPOSE)
            .map_err(|e| permanent(format!("cannot open the webhook secret: {e}")))?;
        let key = String::from_utf8(secret)
            .ok()
            .and_then(|s| signing_key(&s))
            .ok_or_else(|| permanent("the webhook secret is malformed".into()))?;
        let client = Client::builder()
            .user_agent(self.config.user_agent.as_str())
            .timeout(self.config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .resolve_to_addrs(&host, &addrs)
            .build()
            .map_err(|e| permanent(format!("cannot build the HTTP client: {e}")))?;
        let body = serde_json::to_vec(&delivery.payload)
            .map_err(|e| permanent(format!("cannot encode the event: {e}")))?;
        let id = delivery.id.to_string();
        let timestamp = Utc::now().timestamp();
        let signature = sign(&key, &id, timestamp, &body);
        let response = client
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(|e| Failed {
                code: None,
                message: format!("request failed: {e}"),
                retryable: true,
            })?;
        let status = response.status();
        let code = i32::from(status.as_u16());
        if status.is_success() {
            Ok(code)
        } else {
            Err(Failed {
                code: Some(code),
                message: format!("the receiver answered {status}"),
                retryable: true,
            })
        }
    }

    /// Records a failure on the webhook; true if that disabled it.
    async fn note_failure(&self, webhook: &Webhook, now: DateTime<Utc>) -> bool {
        let since = webhook.failing_since.unwrap_or(now);
        let disable = self
            .config
            .disable_after
            .is_some_and(|after| now - since >= after);
        if let Err(e) = self
            .store
            .set_webhook_health(webhook.id, Some(since), !disable)
            .await
        {
            tracing::warn!(error = %e, webhook = %webhook.id, "cannot record the webhook failure");
        }
        if disable {
            tracing::warn!(webhook = %webhook.id, url = %webhook.url, "webhook disabled after failing too long");
        }
        disable
    }
}

fn store_error(e: mcp_core::StoreError) -> HandlerError {
    HandlerError::retryable(format!("webhook store: {e}"))
}

#[async_trait]
impl Handler for DeliverHandler {
    fn validate(&self, payload: &Value) -> Result<(), String> {
        delivery_id(payload).map(|_| ())
    }

    async fn run(&self, ctx: TaskContext) -> Result<Value, HandlerError> {
        let id = delivery_id(&ctx.task.payload).map_err(HandlerError::permanent)?;
        let delivery = self
            .store
            .delivery(id)
            .await
            .map_err(store_error)?
            .ok_or_else(|| HandlerError::permanent(format!("delivery {id} is gone")))?;
        let webhook = self
            .store
            .webhook(delivery.webhook_id)
            .await
            .map_err(store_error)?
            .ok_or_else(|| HandlerError::permanent("the webhook was deleted"))?;
        if !webhook.enabled {
            return Err(HandlerError::permanent("the webhook is disabled"));
        }
        let outcome = self.send(&webhook, &delivery).await;
        let now = Utc::now();
        let attempt = match &outcome {
            Ok(code) => Attempt {
                at: now,
                succeeded: true,
                response_code: Some(*code),
                error: None,
            },
            Err(failed) => Attempt {
                at: now,
                succeeded: false,
                response_code: failed.code,
                error: Some(failed.message.clone()),
            },
        };
        self.store
            .record_attempt(id, &attempt)
            .await
            .map_err(store_error)?;
        match outcome {
            Ok(code) => {
                if webhook.failing_since.is_some() {
                    self.store
                        .set_webhook_health(webhook.id, None, true)
                        .await
                        .map_err(store_error)?;
                }
                Ok(json!({"delivery_id": id, "status": code}))
            }
            Err(failed) => {
                let disabled = self.note_failure(&webhook, now).await;
                let details = json!({"delivery_id": id, "status": failed.code});
                let error = if failed.retryable && !disabled {
                    HandlerError::retryable(failed.message)
                } else {
                    HandlerError::permanent(failed.message)
                };
                Err(error.with_details(details))
            }
        }
    }
}

/// The id of the delivery of the event at `published`'s position on the bus to `webhook`: the
/// same on every node (memory events, which travel by the bus).
fn delivery_id_of(webhook: Uuid, published: &BusDelivery) -> Uuid {
    derived_id(&format!(
        "{webhook}:{}:{}:{}",
        published.channel, published.epoch, published.offset
    ))
}

/// The id of the delivery of outbox entry `entry` to `webhook`: the same for every node and every
/// redo of the entry.
fn outbox_delivery_id(webhook: Uuid, entry: i64) -> Uuid {
    derived_id(&format!("{webhook}:outbox:{entry}"))
}

fn derived_id(name: &str) -> Uuid {
    use sha2::Digest;
    let digest = Sha256::digest(name);
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

fn delivery_id(payload: &Value) -> Result<Uuid, String> {
    payload
        .get("delivery_id")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or_else(|| "`delivery_id` (a UUID) is required".to_owned())
}

/// Enqueues the task that sends `delivery` (again, for a redelivery).
pub async fn enqueue(
    orchestrator: &Orchestrator,
    delivery: Uuid,
    max_attempts: i32,
    correlation_id: Option<&str>,
) -> Result<Uuid, String> {
    enqueue_with_key(orchestrator, delivery, max_attempts, correlation_id, None).await
}

/// Enqueues the first sending of `delivery`: its idempotency key makes a second call (a redo
/// after a crash, another node) return the first task.
pub async fn enqueue_once(
    orchestrator: &Orchestrator,
    delivery: Uuid,
    max_attempts: i32,
    correlation_id: Option<&str>,
) -> Result<Uuid, String> {
    let key = format!("webhook-delivery:{delivery}");
    enqueue_with_key(
        orchestrator,
        delivery,
        max_attempts,
        correlation_id,
        Some(key),
    )
    .await
}

async fn enqueue_with_key(
    orchestrator: &Orchestrator,
    delivery: Uuid,
    max_attempts: i32,
    correlation_id: Option<&str>,
    idempotency_key: Option<String>,
) -> Result<Uuid, String> {
    let request = CreateTask {
        task_type: DELIVER_TASK.to_owned(),
        payload: Some(json!({ "delivery_id": delivery })),
        max_attempts: Some(max_attempts),
        idempotency_key,
        ..CreateTask::default()
    };
    let origin = Origin {
        correlation_id,
        created_by: Some("webhooks"),
    };
    orchestrator
        .create(request, origin)
        .await
        .map(|inserted| inserted.task.id)
        .map_err(|e| e.to_string())
}

/// The webhook store as the webhook routes and the delivery handler see it: after each change to
/// the webhooks it tells the task store at once which task events to record, so a task created
/// right after its webhook (on this node) is delivered. Other nodes learn it at their next
/// refresh ([`DispatchSettings::refresh`]).
pub struct RecordingWebhooks {
    pub inner: Arc<dyn WebhookStore>,
    pub outbox: Arc<dyn Outbox>,
}

impl RecordingWebhooks {
    async fn refresh(&self) -> Result<(), mcp_core::StoreError> {
        let webhooks = self.inner.list_webhooks().await?;
        self.outbox.record_events(wanted_task_events(&webhooks));
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

/// How the dispatcher drains the outbox.
#[derive(Debug, Clone)]
pub struct DispatchSettings {
    /// How often the webhooks are re-read, to tell the task store which events to record (a
    /// webhook created on another node counts from then).
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

/// Turns task events, from the durable outbox, and memory events, from the bus, into one
/// delivery per webhook that wants them. Runs on every node; each outbox entry is taken by one.
pub struct Dispatcher {
    pub store: Arc<dyn WebhookStore>,
    pub outbox: Arc<dyn Outbox>,
    pub orchestrator: Arc<Orchestrator>,
    pub events: Arc<dyn EventBus>,
    pub max_attempts: i32,
    pub settings: DispatchSettings,
}

impl Dispatcher {
    /// Runs until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        // The first refresh before anything else, so transitions record from the start.
        self.refresh().await;
        tokio::join!(
            self.refresh_loop(&stop),
            self.drain_loop(&stop),
            self.memory_loop(&stop)
        );
    }

    /// Tells the task store which task events the enabled webhooks want.
    async fn refresh(&self) {
        match self.store.list_webhooks().await {
            Ok(webhooks) => self.outbox.record_events(wanted_task_events(&webhooks)),
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

    /// Memory events are published on the bus only: followed here, on every node.
    async fn memory_loop(&self, stop: &CancellationToken) {
        loop {
            let mut memory = match self.events.subscribe(MEMORY_CHANNEL).await {
                Ok(memory) => memory,
                Err(e) => {
                    tracing::warn!(error = %e, "webhooks: cannot subscribe; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            loop {
                let received = tokio::select! {
                    _ = stop.cancelled() => return,
                    received = memory.recv() => received,
                };
                match received {
                    Ok(delivery) if delivery.offset == 0 => {}
                    Ok(delivery) => self.dispatch(&delivery).await,
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "webhooks: fell behind the event bus");
                    }
                    Err(RecvError::Closed) => break,
                }
            }
        }
    }

    /// Records and enqueues the deliveries of one bus event. The delivery id is derived from the
    /// webhook and the event's position on the bus, so when every node of a cluster sees the
    /// event only one delivery is made.
    pub async fn dispatch(&self, published: &BusDelivery) {
        let event: &Event = &published.event;
        // Task events come from the outbox.
        if event.event_type.starts_with("task.") {
            return;
        }
        let webhooks = match self.store.list_webhooks().await {
            Ok(webhooks) => webhooks,
            Err(e) => {
                tracing::warn!(error = %e, event = %event.event_type, "webhooks: cannot list webhooks; event not delivered");
                return;
            }
        };
        if let Err(e) = self
            .deliver(&webhooks, event, |webhook| {
                delivery_id_of(webhook, published)
            })
            .await
        {
            tracing::warn!(error = %e, event = %event.event_type, "webhooks: delivery not recorded");
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_as_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification.
        let key = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    /// A webhook store in memory, enough for the handler.
    #[derive(Default)]
    struct Memory {
        webhooks: std::sync::Mutex<Vec<Webhook>>,
        deliveries: std::sync::Mutex<Vec<WebhookDelivery>>,
    }

    #[async_trait]
    impl WebhookStore for Memory {
        async fn create_webhook(&self, webhook: &Webhook) -> Result<(), mcp_core::StoreError> {
            self.webhooks.lock().unwrap().push(webhook.clone());
            Ok(())
        }
        async fn webhook(&self, id: Uuid) -> Result<Option<Webhook>, mcp_core::StoreError> {
            Ok(self
                .webhooks
                .lock()
                .unwrap()
                .iter()
                .find(|w| w.id == id)
                .cloned())
        }
        async fn list_webhooks(&self) -> Result<Vec<Webhook>, mcp_core::StoreError> {
            Ok(self.webhooks.lock().unwrap().clone())
        }
        async fn delete_webhook(&self, id: Uuid) -> Result<bool, mcp_core::StoreError> {
            let mut webhooks = self.webhooks.lock().unwrap();
            let before = webhooks.len();
            webhooks.retain(|w| w.id != id);
            Ok(webhooks.len() < before)
        }
        async fn set_webhook_health(
            &self,
            id: Uuid,
            failing_since: Option<DateTime<Utc>>,
            enabled: bool,
        ) -> Result<(), mcp_core::StoreError> {
            for w in self
                .webhooks
                .lock()
                .unwrap()
                .iter_mut()
                .filter(|w| w.id == id)
            {
                w.failing_since = failing_since;
                w.enabled = enabled;
            }
            Ok(())
        }
        async fn create_delivery(&self, d: &WebhookDelivery) -> Result<(), mcp_core::StoreError> {
            self.deliveries.lock().unwrap().push(d.clone());
            Ok(())
        }
        async fn delivery(
            &self,
            id: Uuid,
        ) -> Result<Option<WebhookDelivery>, mcp_core::StoreError> {
            Ok(self
                .deliveries
                .lock()
                .unwrap()
                .iter()
                .find(|d| d.id == id)
                .cloned())
        }
        async fn list_deliveries(
            &self,
            webhook_id: Uuid,
            _limit: u32,
        ) -> Result<Vec<WebhookDelivery>, mcp_core::StoreError> {
            let all = self.deliveries.lock().unwrap();
            Ok(all
                .iter()
                .filter(|d| d.webhook_id == webhook_id)
                .cloned()
                .collect())
        }
        async fn record_attempt(
            &self,
            id: Uuid,
            a: &Attempt,
        ) -> Result<bool, mcp_core::StoreError> {
            for d in self
                .deliveries
                .lock()
                .unwrap()
                .iter_mut()
                .filter(|d| d.id == id)
            {
                d.attempts += 1;
                d.response_code = a.response_code;
                d.error = a.error.clone();
            }
            Ok(true)
        }
    }

    /// A handler whose one webhook targets a closed local port, failing since `failing_for`.
    async fn failing(
        failing_for: Option<chrono::Duration>,
    ) -> (DeliverHandler, Arc<Memory>, TaskContext) {
        let secrets = SecretBox::new(
            mcp_core::secrets::MasterKey::from_bytes(&[7u8; 32]).unwrap(),
            [],
        );
        let store = Arc::new(Memory::default());
        let now = Utc::now();
        let webhook = Webhook {
            id: Uuid::now_v7(),
            url: "http://127.0.0.1:9/hook".into(),
            events: vec!["*".into()],
            secret_sealed: secrets
                .seal(
                    mcp_core::webhooks::generate_secret().as_bytes(),
                    SECRET_PURPOSE,
                )
                .unwrap(),
            enabled: true,
            created_by: "test".into(),
            created_at: now,
            failing_since: failing_for.map(|d| now - d),
            disabled_at: None,
        };
        store.create_webhook(&webhook).await.unwrap();
        let delivery = WebhookDelivery {
            id: Uuid::now_v7(),
            webhook_id: webhook.id,
            event_type: "task.dead".into(),
            payload: json!({"type": "task.dead"}),
            status: DeliveryStatus::Pending,
            attempts: 0,
            response_code: None,
            error: None,
            created_at: now,
            last_attempt_at: None,
            delivered_at: None,
        };
        store.create_delivery(&delivery).await.unwrap();
        let handler = DeliverHandler {
            store: store.clone(),
            secrets: Arc::new(secrets),
            config: WebhookConfig {
                allow_private: true,
                timeout: Duration::from_secs(2),
                ..WebhookConfig::default()
            },
        };
        let new = mcp_core::task::CreateTask {
            task_type: DELIVER_TASK.into(),
            payload: Some(json!({"delivery_id": delivery.id})),
            ..Default::default()
        };
        let task = mcp_core::Task {
            id: Uuid::now_v7(),
            task_type: new.task_type,
            queue: "default".into(),
            priority: 0,
            payload: new.payload.unwrap(),
            status: mcp_core::TaskStatus::Running,
            attempts: 1,
            max_attempts: 3,
            backoff: mcp_core::Backoff {
                base_ms: 10,
                max_ms: 10,
            },
            run_at: now,
            timeout_ms: 10_000,
            idempotency_key: None,
            concurrency_key: None,
            concurrency_limit: None,
            correlation_id: None,
            created_by: None,
            result: None,
            error: None,
            created_at: now,
            started_at: Some(now),
            finished_at: None,
        };
        let ctx = TaskContext {
            task: Arc::new(task),
            cancel: CancellationToken::new(),
        };
        (handler, store, ctx)
    }

    #[tokio::test]
    async fn a_first_failure_starts_the_run_and_is_retried() {
        let (handler, store, ctx) = failing(None).await;
        let error = handler.run(ctx).await.unwrap_err();
        assert!(error.retryable, "{error:?}");
        let webhook = store.list_webhooks().await.unwrap().remove(0);
        assert!(webhook.enabled && webhook.failing_since.is_some());
        let delivery = store.deliveries.lock().unwrap()[0].clone();
        assert_eq!(delivery.attempts, 1);
        assert!(delivery.error.is_some());
    }

    #[tokio::test]
    async fn disables_a_webhook_failing_longer_than_allowed() {
        let (handler, store, ctx) = failing(Some(chrono::Duration::days(6))).await;
        let error = handler.run(ctx.clone()).await.unwrap_err();
        assert!(!error.retryable, "{error:?}");
        assert!(!store.list_webhooks().await.unwrap()[0].enabled);
        // A disabled webhook gets no further attempts.
        let again = handler.run(ctx).await.unwrap_err();
        assert!(
            !again.retryable && again.message.contains("disabled"),
            "{again:?}"
        );
        assert_eq!(store.deliveries.lock().unwrap()[0].attempts, 1);
    }

    #[test]
    fn every_node_derives_the_same_delivery_id() {
        let event = Arc::new(Event::new("task.created", json!({}), None));
        let at = |offset| BusDelivery::new(TASKS_CHANNEL, offset, "e1", event.clone());
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(delivery_id_of(a, &at(7)), delivery_id_of(a, &at(7)));
        assert_ne!(delivery_id_of(a, &at(7)), delivery_id_of(b, &at(7)));
        assert_ne!(delivery_id_of(a, &at(7)), delivery_id_of(a, &at(8)));
    }

    #[test]
    fn an_outbox_entry_names_one_delivery_per_webhook_on_every_redo() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(outbox_delivery_id(a, 7), outbox_delivery_id(a, 7));
        assert_ne!(outbox_delivery_id(a, 7), outbox_delivery_id(b, 7));
        assert_ne!(outbox_delivery_id(a, 7), outbox_delivery_id(a, 8));
    }

    #[tokio::test]
    async fn refuses_private_targets_unless_allowed() {
        for url in [
            "http://127.0.0.1:9/hook",
            "http://[::1]/",
            "http://10.0.0.1/",
            "http://169.254.169.254/latest",
            "http://localhost:8080/",
        ] {
            assert!(
                matches!(
                    resolve_target(url, false).await,
                    Err(TargetError::Private(_))
                ),
                "{url}"
            );
        }
        assert!(
            resolve_target("http://127.0.0.1:9/hook", true)
                .await
                .is_ok()
        );
        assert!(matches!(
            resolve_target("ftp://example.com/", true).await,
            Err(TargetError::Invalid(_))
        ));
    }
}
