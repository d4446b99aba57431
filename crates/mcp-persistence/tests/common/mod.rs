//! What the store suites share: a fresh backend per case — SQLite in a new file, PostgreSQL in a
//! new schema of `MCP_TEST_DATABASE_URL`, dropped afterwards — and `conformance!`, which runs each
//! case on both. With `CI` set (to any value) an unreachable PostgreSQL fails the suite instead of skipping it.
#![allow(dead_code)]

use mcp_core::TaskStore;
use mcp_core::followups::FollowupStore;
use mcp_core::identity::IdentityStore;
use mcp_core::integrations::IntegrationStore;
use mcp_core::memory::MemoryStore;
use mcp_core::settings::SettingsStore;
use mcp_core::webhooks::{Outbox, WebhookStore};
use mcp_persistence::{PgTaskStore, SqliteOptions, SqliteTaskStore};
use std::path::PathBuf;
use std::sync::Arc;
use uuid::Uuid;

/// The PostgreSQL the suites use.
pub fn pg_url() -> String {
    std::env::var("MCP_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub enum Backend {
    Sqlite(SqliteTaskStore, PathBuf),
    Postgres(PgTaskStore),
}

impl Backend {
    pub async fn sqlite() -> Backend {
        let dir = std::env::temp_dir().join(format!("mcp-store-{}", Uuid::new_v4()));
        let store = SqliteTaskStore::open(&dir.join("tasks.db"), &SqliteOptions::default())
            .await
            .expect("open sqlite");
        store.migrate().await.expect("migrate sqlite");
        Backend::Sqlite(store, dir)
    }

    pub async fn postgres() -> Option<Backend> {
        let url = pg_url();
        let schema = format!("mcp_test_{}", Uuid::new_v4().simple());
        match PgTaskStore::connect(&url, &schema, 8).await {
            Ok(store) => {
                store.migrate().await.expect("migrate postgres");
                Some(Backend::Postgres(store))
            }
            Err(e) if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) => {
                panic!("PostgreSQL at {url} is required in CI: {e}")
            }
            Err(e) => {
                // Straight to stderr: libtest hides what `eprintln!` prints in a passing test.
                use std::io::Write as _;
                let _ = writeln!(
                    std::io::stderr(),
                    "skipping PostgreSQL case: {url} unreachable: {e}"
                );
                None
            }
        }
    }

    /// The store as the port a suite tests (`Arc<dyn TaskStore>`, `Arc<dyn IdentityStore>`, …).
    pub fn port<S: Port + ?Sized>(&self) -> Arc<S> {
        match self {
            Backend::Sqlite(store, _) => S::of_sqlite(store.clone()),
            Backend::Postgres(store) => S::of_postgres(store.clone()),
        }
    }

    pub async fn cleanup(self) {
        match self {
            Backend::Sqlite(store, dir) => {
                store.close().await;
                let _ = std::fs::remove_dir_all(dir);
            }
            Backend::Postgres(store) => store.drop_schema().await.expect("drop schema"),
        }
    }
}

/// A store trait both backends implement.
pub trait Port {
    fn of_sqlite(store: SqliteTaskStore) -> Arc<Self>;
    fn of_postgres(store: PgTaskStore) -> Arc<Self>;
    fn borrow_sqlite(store: &SqliteTaskStore) -> &Self;
    fn borrow_postgres(store: &PgTaskStore) -> &Self;
}

macro_rules! ports {
    ($($port:ident),*) => {
        $(impl Port for dyn $port {
            fn of_sqlite(store: SqliteTaskStore) -> Arc<Self> {
                Arc::new(store)
            }
            fn of_postgres(store: PgTaskStore) -> Arc<Self> {
                Arc::new(store)
            }
            fn borrow_sqlite(store: &SqliteTaskStore) -> &Self {
                store
            }
            fn borrow_postgres(store: &PgTaskStore) -> &Self {
                store
            }
        })*
    };
}

ports!(
    TaskStore,
    IdentityStore,
    IntegrationStore,
    MemoryStore,
    WebhookStore,
    Outbox,
    FollowupStore,
    SettingsStore
);

/// What a case takes: the backend itself, or one of its ports (shared or borrowed).
pub trait CaseArg<'a> {
    fn from_backend(backend: &'a Backend) -> Self;
}

impl<'a> CaseArg<'a> for &'a Backend {
    fn from_backend(backend: &'a Backend) -> Self {
        backend
    }
}

impl<'a, S: Port + ?Sized> CaseArg<'a> for Arc<S> {
    fn from_backend(backend: &'a Backend) -> Self {
        backend.port()
    }
}

impl<'a, S: Port + ?Sized> CaseArg<'a> for &'a S {
    fn from_backend(backend: &'a Backend) -> Self {
        match backend {
            Backend::Sqlite(store, _) => S::borrow_sqlite(store),
            Backend::Postgres(store) => S::borrow_postgres(store),
        }
    }
}

/// Runs each `cases::$name` against a fresh SQLite and a fresh PostgreSQL backend.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let backend = super::common::Backend::sqlite().await;
                    super::cases::$name(super::common::CaseArg::from_backend(&backend)).await;
                    backend.cleanup().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(backend) = super::common::Backend::postgres().await else { return };
                    super::cases::$name(super::common::CaseArg::from_backend(&backend)).await;
                    backend.cleanup().await;
                }
            )*
        }
    };
}
