//! One conformance suite for both integration stores: every case runs against SQLite (a fresh
//! file) and PostgreSQL (a fresh schema in `MCP_TEST_DATABASE_URL`, dropped afterwards). With
//! `CI` set (to any value) an unreachable PostgreSQL fails the suite instead of skipping it.

#[macro_use]
mod common;

use chrono::{DateTime, TimeZone, Utc};
use common::Backend;
use mcp_core::integrations::{Integration, IntegrationStore};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;

impl Backend {
    fn store(&self) -> Arc<dyn IntegrationStore> {
        self.port()
    }
}

conformance!(
    round_trips_an_integration,
    put_replaces_the_integration_of_the_same_name,
    lists_by_name_and_deletes,
);

/// Whole microseconds: both backends keep that precision.
fn at(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(seconds, 123_456_000)
        .single()
        .expect("time")
}

fn integration(name: &str, kind: &str) -> Integration {
    Integration {
        name: name.into(),
        kind: kind.into(),
        settings: json!({"base_url": "http://127.0.0.1:1/v1", "model": "m"}),
        secrets: BTreeMap::from([("api_key".into(), "v1.abcd1234.sealed".into())]),
        enabled: true,
        updated_at: at(1_700_000_000),
    }
}

mod cases {
    use super::*;

    pub async fn round_trips_an_integration(backend: &Backend) {
        let store = backend.store();
        assert_eq!(store.integration("llm").await.unwrap(), None);
        let llm = integration("llm", "llm");
        store.put_integration(&llm).await.unwrap();
        assert_eq!(store.integration("llm").await.unwrap(), Some(llm));
    }

    pub async fn put_replaces_the_integration_of_the_same_name(backend: &Backend) {
        let store = backend.store();
        store
            .put_integration(&integration("gh", "github"))
            .await
            .unwrap();
        let replaced = Integration {
            settings: json!({"api_base": "http://127.0.0.1:2"}),
            secrets: BTreeMap::new(),
            enabled: false,
            updated_at: at(1_700_000_100),
            ..integration("gh", "github")
        };
        store.put_integration(&replaced).await.unwrap();
        assert_eq!(store.integration("gh").await.unwrap(), Some(replaced));
        assert_eq!(store.list_integrations().await.unwrap().len(), 1);
    }

    pub async fn lists_by_name_and_deletes(backend: &Backend) {
        let store = backend.store();
        for name in ["render", "github", "llm"] {
            store
                .put_integration(&integration(name, name))
                .await
                .unwrap();
        }
        let names: Vec<String> = store
            .list_integrations()
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.name)
            .collect();
        assert_eq!(names, ["github", "llm", "render"]);
        assert!(store.delete_integration("llm").await.unwrap());
        assert!(!store.delete_integration("llm").await.unwrap());
        assert_eq!(store.integration("llm").await.unwrap(), None);
        assert_eq!(store.list_integrations().await.unwrap().len(), 2);
    }
}
