//! Tests of signing, delivery, disabling, delivery ids and target checks, on an in-memory
//! webhook store.

use super::*;
use async_trait::async_trait;
use base64::Engine;
use chrono::{DateTime, Utc};
use mcp_core::secrets::SecretBox;
use mcp_core::webhooks::{
    Attempt, DELIVER_TASK, DeliveryStatus, SECRET_PURPOSE, Webhook, WebhookDelivery, WebhookStore,
};
use mcp_core::{Handler, TaskContext};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

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
    async fn delivery(&self, id: Uuid) -> Result<Option<WebhookDelivery>, mcp_core::StoreError> {
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
    async fn record_attempt(&self, id: Uuid, a: &Attempt) -> Result<bool, mcp_core::StoreError> {
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
            outbound: Arc::new(mcp_core::outbound::Policy::new(true, &[]).unwrap()),
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
        share_key: None,
        result: None,
        error: None,
        created_at: now,
        started_at: Some(now),
        finished_at: None,
        workflow_id: None,
        workflow_key: None,
        parents: None,
        progress: None,
        traceparent: None,
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
fn an_outbox_entry_names_one_delivery_per_webhook_on_every_redo() {
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    assert_eq!(outbox_delivery_id(a, 7), outbox_delivery_id(a, 7));
    assert_ne!(outbox_delivery_id(a, 7), outbox_delivery_id(b, 7));
    assert_ne!(outbox_delivery_id(a, 7), outbox_delivery_id(a, 8));
}

#[test]
fn refuses_forbidden_literal_targets_unless_allowed() {
    let strict = mcp_core::outbound::Policy::default();
    for url in [
        "http://127.0.0.1:9/hook",
        "http://[::1]/",
        "http://10.0.0.1/",
        "http://169.254.169.254/latest",
        "http://[64:ff9b::7f00:1]/",
        "http://[2002:7f00:1::]/",
        "http://[::127.0.0.1]/",
        "http://198.18.0.1/",
        "http://192.0.0.8/",
        "http://240.0.0.1/",
    ] {
        assert!(
            matches!(check_target(url, &strict), Err(TargetError::Forbidden(_))),
            "{url}"
        );
    }
    let open = mcp_core::outbound::Policy::new(true, &[]).unwrap();
    assert!(check_target("http://127.0.0.1:9/hook", &open).is_ok());
    assert!(matches!(
        check_target("ftp://example.com/", &open),
        Err(TargetError::Invalid(_))
    ));
}
