//! One conformance suite for both webhook stores: every case runs against SQLite (a fresh file)
//! and PostgreSQL (a fresh schema in `MCP_TEST_DATABASE_URL`, dropped afterwards). With
//! `CI` set (to any value) an unreachable PostgreSQL fails the suite instead of skipping it.

#[macro_use]
mod common;

use chrono::{DateTime, Duration as Span, Utc};
use common::Backend;
use mcp_core::webhooks::{Attempt, DeliveryStatus, Webhook, WebhookDelivery, WebhookStore};
use serde_json::json;
use std::sync::Arc;
use uuid::Uuid;

impl Backend {
    fn store(&self) -> Arc<dyn WebhookStore> {
        self.port()
    }
}

/// An instant the databases keep exactly (whole microseconds).
fn now() -> DateTime<Utc> {
    DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).unwrap()
}

fn webhook(url: &str, at: DateTime<Utc>) -> Webhook {
    Webhook {
        id: Uuid::now_v7(),
        url: url.into(),
        events: vec!["task.*".into(), "memory.message.created".into()],
        secret_sealed: "sealed-secret".into(),
        enabled: true,
        created_by: "user:admin".into(),
        created_at: at,
        failing_since: None,
        disabled_at: None,
    }
}

fn delivery(webhook_id: Uuid, at: DateTime<Utc>) -> WebhookDelivery {
    WebhookDelivery {
        id: Uuid::now_v7(),
        webhook_id,
        event_type: "task.succeeded".into(),
        payload: json!({"type": "task.succeeded", "data": {"id": "t1"}}),
        status: DeliveryStatus::Pending,
        attempts: 0,
        response_code: None,
        error: None,
        created_at: at,
        last_attempt_at: None,
        delivered_at: None,
    }
}

mod cases {
    use super::*;

    pub async fn round_trips_and_lists_webhooks(backend: &Backend) {
        let store = backend.store();
        let t = now();
        let first = webhook("https://a.example/hook", t);
        let second = webhook("https://b.example/hook", t + Span::seconds(1));
        store.create_webhook(&second).await.unwrap();
        store.create_webhook(&first).await.unwrap();
        assert_eq!(store.webhook(first.id).await.unwrap(), Some(first.clone()));
        assert_eq!(store.webhook(Uuid::now_v7()).await.unwrap(), None);
        assert_eq!(store.list_webhooks().await.unwrap(), vec![first, second]);
    }

    pub async fn disables_and_reenables_a_webhook(backend: &Backend) {
        let store = backend.store();
        let hook = webhook("https://a.example/hook", now());
        store.create_webhook(&hook).await.unwrap();
        let since = now() - Span::days(6);
        store
            .set_webhook_health(hook.id, Some(since), true)
            .await
            .unwrap();
        let failing = store.webhook(hook.id).await.unwrap().unwrap();
        assert_eq!(failing.failing_since, Some(since));
        assert!(failing.enabled && failing.disabled_at.is_none());
        store
            .set_webhook_health(hook.id, Some(since), false)
            .await
            .unwrap();
        let disabled = store.webhook(hook.id).await.unwrap().unwrap();
        assert!(!disabled.enabled && disabled.disabled_at.is_some());
        store.set_webhook_health(hook.id, None, true).await.unwrap();
        let healthy = store.webhook(hook.id).await.unwrap().unwrap();
        assert!(healthy.enabled && healthy.disabled_at.is_none());
        assert_eq!(healthy.failing_since, None);
    }

    pub async fn records_attempts_in_the_delivery_log(backend: &Backend) {
        let store = backend.store();
        let hook = webhook("https://a.example/hook", now());
        store.create_webhook(&hook).await.unwrap();
        let t = now();
        let older = delivery(hook.id, t);
        let newer = delivery(hook.id, t + Span::seconds(1));
        store.create_delivery(&older).await.unwrap();
        store.create_delivery(&newer).await.unwrap();
        assert_eq!(store.delivery(older.id).await.unwrap(), Some(older.clone()));
        assert!(matches!(
            store.create_delivery(&older).await,
            Err(mcp_core::StoreError::Conflict(_))
        ));
        let failed = Attempt {
            at: now(),
            succeeded: false,
            response_code: Some(500),
            error: Some("the receiver answered 500".into()),
        };
        assert!(store.record_attempt(older.id, &failed).await.unwrap());
        let ok = Attempt {
            at: now(),
            succeeded: true,
            response_code: Some(204),
            error: None,
        };
        assert!(store.record_attempt(older.id, &ok).await.unwrap());
        let got = store.delivery(older.id).await.unwrap().unwrap();
        assert_eq!(got.status, DeliveryStatus::Succeeded);
        assert_eq!(got.attempts, 2);
        assert_eq!(got.response_code, Some(204));
        assert_eq!(got.error, None);
        assert_eq!(got.delivered_at, Some(ok.at));
        assert_eq!(got.last_attempt_at, Some(ok.at));
        assert!(!store.record_attempt(Uuid::now_v7(), &ok).await.unwrap());
        let log = store.list_deliveries(hook.id, 10).await.unwrap();
        assert_eq!(
            log.iter().map(|d| d.id).collect::<Vec<_>>(),
            vec![newer.id, older.id]
        );
        assert_eq!(store.list_deliveries(hook.id, 1).await.unwrap().len(), 1);
    }

    pub async fn deleting_a_webhook_drops_its_log(backend: &Backend) {
        let store = backend.store();
        let hook = webhook("https://a.example/hook", now());
        store.create_webhook(&hook).await.unwrap();
        let entry = delivery(hook.id, now());
        store.create_delivery(&entry).await.unwrap();
        assert!(store.delete_webhook(hook.id).await.unwrap());
        assert!(!store.delete_webhook(hook.id).await.unwrap());
        assert_eq!(store.webhook(hook.id).await.unwrap(), None);
        assert_eq!(store.delivery(entry.id).await.unwrap(), None);
    }
}

conformance!(
    round_trips_and_lists_webhooks,
    disables_and_reenables_a_webhook,
    records_attempts_in_the_delivery_log,
    deleting_a_webhook_drops_its_log,
);
