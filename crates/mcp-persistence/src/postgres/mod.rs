//! The PostgreSQL store of a cluster: one pool per node, every table in the node's own schema,
//! migrations embedded from `migrations/postgres`. This file connects and keeps the pieces every
//! transition shares (LISTEN/NOTIFY wake-ups, recording outbox events before a commit); each
//! port's SQL is in its own file beside it.

mod identity;
mod integrations;
mod limits;
mod memory;
mod outbox;
mod schedules;
mod settings;
mod stats;
mod task_row;
mod tasks;
mod vacuum;
mod webhooks;
mod workers;
mod workflows;

pub(crate) use task_row::TaskRow;

use crate::error::db_error;
use crate::outbox::{OutboxSwitch, Transition};
use mcp_core::StoreError;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Postgres, Transaction};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Longest a query of `connect`'s pool waits for a connection (benches and tests; the server
/// sets its own with `connect_with`).
const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// A pooled connection idle for longer than this is pinged before it is handed out (one round
/// trip); one used more recently is handed out as it is. sqlx pings every connection by default,
/// which doubled the round trips of each short statement (the claim, a single insert, a read by
/// id). A connection that died while idle is still found: it has been idle for longer than a
/// restart of PostgreSQL takes, and one that fails in use is closed when it is released (sqlx
/// pings it then).
const PING_IDLE_AFTER: Duration = Duration::from_millis(500);

#[derive(Clone)]
pub struct PgTaskStore {
    pub(crate) pool: PgPool,
    /// How the pool's connections are made, for `check_server`'s own connection.
    options: Arc<PgConnectOptions>,
    schema: String,
    /// This store's `mcp.origin`, set on each of its connections: the insert trigger's
    /// notifications carry it, and `watch` skips its own (the orchestrator wakes itself).
    origin: Arc<str>,
    /// The LISTEN task started by `watch`, stopped by `close`.
    listener: Arc<std::sync::Mutex<Option<tokio::task::AbortHandle>>>,
    /// Which task events transitions record in the webhook outbox.
    pub(crate) outbox: Arc<OutboxSwitch>,
    /// Claims counted towards the next vacuum of the task table (`vacuum.rs`).
    sweeper: Arc<vacuum::Sweeper>,
    /// Paused queues and limited types and queues, as the claim consults them (`limits.rs`).
    pub(crate) flow: Arc<crate::flow::FlowCache>,
    /// Where tasks go that a read made runnable as it wrote them (`TaskStore::on_released`).
    pub(crate) released: Arc<crate::workflows::Released>,
}

impl PgTaskStore {
    /// Connects to `url`, using `schema` (created if missing) for every table. Each node of a
    /// cluster and each test run may use its own schema in one database.
    pub async fn connect(
        url: &str,
        schema: &str,
        max_connections: u32,
    ) -> Result<Self, StoreError> {
        Self::connect_with(url, schema, max_connections, DEFAULT_ACQUIRE_TIMEOUT).await
    }

    /// `connect`, with the longest wait for a pooled connection (`database_acquire_timeout_ms`).
    /// Short on purpose: while PostgreSQL is away each new connection is refused at once and the
    /// pool keeps retrying until this runs out, so it bounds how long a caller racing the first
    /// failure waits for its 503.
    pub async fn connect_with(
        url: &str,
        schema: &str,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> Result<Self, StoreError> {
        if schema.is_empty()
            || !schema
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(StoreError::Database(format!(
                "schema name `{schema}` must be letters, digits and underscores"
            )));
        }
        let base = PgConnectOptions::from_str(url)
            .map_err(db_error)?
            .log_statements(tracing::log::LevelFilter::Trace);
        // Create the schema with a plain connection first: the pool's connections need it to
        // exist in their search_path.
        let mut conn = base.connect().await.map_err(db_error)?;
        sqlx::query(sql!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
            .execute(&mut conn)
            .await
            .map_err(db_error)?;
        drop(conn);
        // The task table is hot and cached: random reads cost about what sequential ones do,
        // and with the default cost the planner turns a 500-row claim into a sequential scan.
        // Custom plans: a generic plan cannot see the claim's LIMIT and picks a hash join over
        // the whole table; planning each claim anew costs far less.
        // No bitmap scans: right after a burst of inserts (before autovacuum has analyzed the
        // table) the planner believes the queue is nearly empty and claims by bitmap scan and
        // sorting every runnable task, 70 ms per claim at 50k tasks instead of 6 ms by reading
        // the claim-order index.
        // Names this store's inserts in their notifications (see `watch`).
        let origin = Uuid::new_v4().simple().to_string();
        let options = base.options([
            ("search_path", schema),
            ("mcp.origin", origin.as_str()),
            ("random_page_cost", "1.1"),
            ("plan_cache_mode", "force_custom_plan"),
            ("enable_bitmapscan", "off"),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(acquire_timeout)
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for > PING_IDLE_AFTER {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(options.clone())
            .await
            .map_err(db_error)?;
        Ok(PgTaskStore {
            pool,
            options: Arc::new(options),
            schema: schema.to_owned(),
            origin: origin.into(),
            listener: Arc::default(),
            outbox: Arc::default(),
            sweeper: Arc::default(),
            flow: Arc::default(),
            released: Arc::default(),
        })
    }

    /// Whether the server answers, on a connection of its own rather than the pool's: a pool
    /// saturated by load times out like a dead server would, and the health probe must tell
    /// them apart. While PostgreSQL is down the connection is refused at once.
    pub async fn check_server(&self) -> Result<(), StoreError> {
        let mut conn = self.options.connect().await.map_err(db_error)?;
        sqlx::query("SELECT 1")
            .execute(&mut conn)
            .await
            .map_err(db_error)?;
        let _ = sqlx::Connection::close(conn).await;
        Ok(())
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Database(format!("migration failed: {e}")))
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    fn channel(&self) -> String {
        format!("mcp_tasks.{}", self.schema)
    }

    async fn notify(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(self.channel())
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    /// Stops listening and closes every connection.
    pub async fn close(&self) {
        if let Some(listener) = self
            .listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            listener.abort();
        }
        self.pool.close().await;
    }

    /// A transaction if some webhook wants the events of `transition` (with what they want):
    /// the transition then records them before it commits. Otherwise nothing: the transition
    /// runs as one statement on the pool.
    async fn begin_recording(
        &self,
        transition: Transition,
    ) -> Result<Option<(Transaction<'static, Postgres>, Arc<Vec<String>>)>, StoreError> {
        match self.outbox.wanted(transition) {
            Some(wanted) => Ok(Some((self.pool.begin().await.map_err(db_error)?, wanted))),
            None => Ok(None),
        }
    }

    /// Records the events of `transition` on `ids` in `tx`, then commits.
    async fn commit_recorded(
        &self,
        mut tx: Transaction<'static, Postgres>,
        ids: &[Uuid],
        transition: Transition,
        wanted: &[String],
    ) -> Result<(), StoreError> {
        let recorded = outbox::record(&mut tx, ids, transition, wanted).await?;
        tx.commit().await.map_err(db_error)?;
        if recorded > 0 {
            self.outbox.tell();
        }
        Ok(())
    }

    /// Drops the schema and everything in it, then closes (test and bench clean-up).
    pub async fn drop_schema(&self) -> Result<(), StoreError> {
        sqlx::query(sql!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.schema))
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        self.close().await;
        Ok(())
    }
}
