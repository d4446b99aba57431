//! The `webhook.deliver` task: one signed attempt at a delivery, recorded in the delivery log,
//! and the functions that enqueue it.

use super::*;
use crate::outbound::{OutboundClient, Redirects, forbidden_in};
use crate::traced::SendTraced;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mcp_core::secrets::SecretBox;
use mcp_core::task::CreateTask;
use mcp_core::webhooks::{
    Attempt, DELIVER_TASK, SECRET_PURPOSE, Webhook, WebhookDelivery, WebhookStore, signing_key,
};
use mcp_core::{Handler, HandlerError, Orchestrator, Origin, TaskContext};
use reqwest::header::CONTENT_TYPE;
use reqwest::{Client, Method};
use serde_json::{Value, json};
use std::sync::Arc;
use uuid::Uuid;

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
        let url = check_target(&webhook.url, &self.config.outbound)
            .map_err(|e| permanent(e.to_string()))?;
        let secret = self
            .secrets
            .open(&webhook.secret_sealed, SECRET_PURPOSE)
            .map_err(|e| permanent(format!("cannot open the webhook secret: {e}")))?;
        let key = String::from_utf8(secret)
            .ok()
            .and_then(|s| signing_key(&s))
            .ok_or_else(|| permanent("the webhook secret is malformed".into()))?;
        // Redirects are not followed: a receiver answers at the URL it was given.
        let client = OutboundClient::build(
            self.config.outbound.clone(),
            Client::builder()
                .user_agent(self.config.user_agent.as_str())
                .timeout(self.config.timeout),
            Redirects::Refuse,
        )
        .map_err(|e| permanent(format!("cannot build the HTTP client: {e}")))?;
        let body = serde_json::to_vec(&delivery.payload)
            .map_err(|e| permanent(format!("cannot encode the event: {e}")))?;
        let id = delivery.id.to_string();
        let timestamp = Utc::now().timestamp();
        let signature = sign(&key, &id, timestamp, &body);
        let response = client
            .request(Method::POST, url)
            .map_err(|e| permanent(e.to_string()))?
            .header(CONTENT_TYPE, "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send_traced()
            .await
            .map_err(|e| match forbidden_in(&e) {
                // A name that resolves only to forbidden addresses: it would again.
                Some(forbidden) => permanent(forbidden.to_string()),
                None => Failed {
                    code: None,
                    message: format!("request failed: {e}"),
                    retryable: true,
                },
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
        let delivered = if outcome.is_ok() {
            "delivered"
        } else {
            "failed"
        };
        metrics::counter!("mcp_webhook_deliveries_total", "outcome" => delivered).increment(1);
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
        created_by: Some(mcp_core::principal::subjects::WEBHOOKS),
    };
    orchestrator
        .create(request, origin)
        .await
        .map(|inserted| inserted.task.id)
        .map_err(|e| e.to_string())
}
