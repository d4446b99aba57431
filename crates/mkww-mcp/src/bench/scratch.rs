//! The scratch database a bench runs against: a fresh SQLite file or a fresh PostgreSQL schema,
//! removed afterwards.

use anyhow::Context;
use mcp_core::TaskStore;
use mcp_core::identity::IdentityStore;
use mcp_core::memory::MemoryStore;
use mcp_persistence::{PgTaskStore, SqliteOptions, SqliteTaskStore};
use std::sync::Arc;
use uuid::Uuid;

pub enum BenchStore {
    Sqlite(SqliteTaskStore, std::path::PathBuf),
    Postgres(PgTaskStore),
}

impl BenchStore {
    /// PostgreSQL when `database_url` is set, else a temporary SQLite file opened with `sqlite`.
    pub async fn open(
        database_url: Option<&str>,
        sqlite: &SqliteOptions,
    ) -> anyhow::Result<BenchStore> {
        match database_url {
            Some(url) => {
                let schema = format!("mcp_bench_{}", Uuid::new_v4().simple());
                let store = PgTaskStore::connect(url, &schema, 8)
                    .await
                    .context("cannot connect to PostgreSQL")?;
                store.migrate().await?;
                Ok(BenchStore::Postgres(store))
            }
            None => {
                let dir = std::env::temp_dir().join(format!("mcp-bench-{}", Uuid::new_v4()));
                let store = SqliteTaskStore::open(&dir.join("bench.db"), sqlite).await?;
                store.migrate().await?;
                Ok(BenchStore::Sqlite(store, dir))
            }
        }
    }

    pub fn tasks(&self) -> Arc<dyn TaskStore> {
        match self {
            BenchStore::Sqlite(store, _) => Arc::new(store.clone()),
            BenchStore::Postgres(store) => Arc::new(store.clone()),
        }
    }

    pub fn memory(&self) -> Arc<dyn MemoryStore> {
        match self {
            BenchStore::Sqlite(store, _) => Arc::new(store.clone()),
            BenchStore::Postgres(store) => Arc::new(store.clone()),
        }
    }

    pub fn identities(&self) -> Arc<dyn IdentityStore> {
        match self {
            BenchStore::Sqlite(store, _) => Arc::new(store.clone()),
            BenchStore::Postgres(store) => Arc::new(store.clone()),
        }
    }

    pub fn schedules(&self) -> Arc<dyn mcp_core::schedule::ScheduleStore> {
        match self {
            BenchStore::Sqlite(store, _) => Arc::new(store.clone()),
            BenchStore::Postgres(store) => Arc::new(store.clone()),
        }
    }

    pub fn queues(&self) -> Arc<dyn mcp_core::queues::QueueStore> {
        match self {
            BenchStore::Sqlite(store, _) => Arc::new(store.clone()),
            BenchStore::Postgres(store) => Arc::new(store.clone()),
        }
    }

    /// Where the data is: the SQLite file or the PostgreSQL schema.
    pub fn location(&self) -> String {
        match self {
            BenchStore::Sqlite(_, dir) => dir.join("bench.db").display().to_string(),
            BenchStore::Postgres(store) => format!("schema {}", store.schema()),
        }
    }

    /// After a bulk load of tasks: PostgreSQL vacuums and analyzes the task table, as autovacuum
    /// would in the time a real table takes to fill (SQLite has nothing to do).
    pub async fn settle_tasks(&self) -> anyhow::Result<()> {
        if let BenchStore::Postgres(store) = self {
            store.vacuum_tasks().await?;
        }
        Ok(())
    }

    pub async fn cleanup(self) {
        match self {
            BenchStore::Sqlite(store, dir) => {
                store.close().await;
                let _ = std::fs::remove_dir_all(dir);
            }
            BenchStore::Postgres(store) => {
                if let Err(e) = store.drop_schema().await {
                    eprintln!("could not drop the bench schema: {e}");
                }
            }
        }
    }
}
