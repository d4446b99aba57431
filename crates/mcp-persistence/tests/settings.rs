//! One conformance suite for both settings stores (runtime setting overrides and feature
//! flags): every case runs against SQLite (a fresh file) and PostgreSQL (a fresh schema in
//! `MCP_TEST_DATABASE_URL`, dropped afterwards). With `CI` set an unreachable PostgreSQL fails
//! the suite instead of skipping it.

#[macro_use]
mod common;

use chrono::{DateTime, TimeZone, Utc};
use common::Backend;
use mcp_core::settings::{SettingsStore, Stored};
use serde_json::{Value, json};
use std::sync::Arc;

impl Backend {
    fn store(&self) -> Arc<dyn SettingsStore> {
        self.port()
    }
}

conformance!(
    writes_and_removes_settings_in_one_call,
    settings_round_trip_any_json_value,
    flags_are_put_replaced_listed_and_deleted,
    settings_and_flags_are_apart,
);

/// Whole microseconds: both backends keep that precision.
fn at(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(seconds, 123_456_000)
        .single()
        .expect("time")
}

fn stored(name: &str, value: Value, by: Option<&str>) -> Stored {
    Stored {
        name: name.into(),
        value,
        updated_at: at(1_700_000_000),
        updated_by: by.map(String::from),
    }
}

mod cases {
    use super::*;

    pub async fn writes_and_removes_settings_in_one_call(backend: &Backend) {
        let store = backend.store();
        assert!(store.list_settings().await.unwrap().is_empty());
        let a = stored("rate_limit_read_per_minute", json!(5), Some("admin"));
        let b = stored("log_level", json!("debug"), None);
        store
            .write_settings(&[a.clone(), b.clone()], &[])
            .await
            .unwrap();
        assert_eq!(store.list_settings().await.unwrap(), [b.clone(), a.clone()]);
        let a2 = Stored {
            value: json!(7),
            updated_at: at(1_700_000_100),
            ..a.clone()
        };
        store
            .write_settings(
                std::slice::from_ref(&a2),
                &["log_level".into(), "absent".into()],
            )
            .await
            .unwrap();
        assert_eq!(store.list_settings().await.unwrap(), [a2]);
        store
            .write_settings(&[], &["rate_limit_read_per_minute".into()])
            .await
            .unwrap();
        assert!(store.list_settings().await.unwrap().is_empty());
    }

    pub async fn settings_round_trip_any_json_value(backend: &Backend) {
        let store = backend.store();
        let values = [
            stored("a", json!(["10.0.0.0/8", "hooks.lan"]), None),
            stored("b", json!(0.25), None),
            stored("c", json!(true), None),
            stored("d", json!({"nested": {"x": [1, 2]}}), None),
        ];
        store.write_settings(&values, &[]).await.unwrap();
        assert_eq!(store.list_settings().await.unwrap(), values);
    }

    pub async fn flags_are_put_replaced_listed_and_deleted(backend: &Backend) {
        let store = backend.store();
        store
            .put_flag(&stored(
                "integration.discord",
                json!({"enabled": false}),
                Some("ann"),
            ))
            .await
            .unwrap();
        store
            .put_flag(&stored(
                "beta",
                json!({"enabled": true, "percentage": 10}),
                None,
            ))
            .await
            .unwrap();
        let replaced = Stored {
            value: json!({"enabled": true}),
            updated_at: at(1_700_000_200),
            ..stored("integration.discord", Value::Null, Some("bob"))
        };
        store.put_flag(&replaced).await.unwrap();
        let flags = store.list_flags().await.unwrap();
        assert_eq!(
            flags,
            [
                stored("beta", json!({"enabled": true, "percentage": 10}), None),
                replaced
            ]
        );
        assert!(store.delete_flag("beta").await.unwrap());
        assert!(!store.delete_flag("beta").await.unwrap());
        assert_eq!(store.list_flags().await.unwrap().len(), 1);
    }

    pub async fn settings_and_flags_are_apart(backend: &Backend) {
        let store = backend.store();
        store
            .write_settings(&[stored("same", json!(1), None)], &[])
            .await
            .unwrap();
        store
            .put_flag(&stored("same", json!({"enabled": true}), None))
            .await
            .unwrap();
        assert!(store.delete_flag("same").await.unwrap());
        assert_eq!(store.list_settings().await.unwrap().len(), 1);
        assert!(store.list_flags().await.unwrap().is_empty());
    }
}
