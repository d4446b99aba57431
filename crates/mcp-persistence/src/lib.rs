//! Persistence layer of MKWW MCP: the `TaskStore` port of `mcp-core` (and its identity, memory,
//! webhook, integration, worker-directory and outbox ports) implemented for PostgreSQL (cluster)
//! and SQLite (embedded default), each with its own embedded migrations, and the Redis side of
//! the cluster (the shared rate limiter and event bus, each falling back to this node while Redis
//! is away). Both stores pass the same conformance suite in `tests/`.
//!
//! The map, by backend:
//! - `postgres/`, `sqlite/`: one store each (`mod.rs`: connecting, migrations, the outbox
//!   recording every transition shares), then one file per port: `tasks` (with `task_row`, the
//!   row it reads), `identity`, `memory`, `webhooks`, `integrations`, `workers`, `outbox`. The
//!   SQL lives there, hand-written per backend, beside the code that runs it.
//! - `redis/`: `link` (reaching Redis without waiting for it), `limiter`, and `bus/` (the event
//!   bus: `mod.rs` the Redis side, `subscribers` this node's receivers and the switch between
//!   shared and local, `relink` the background task that finds Redis again).
//! - Shared by both SQL stores, at the top: `codec` (how ids, instants, JSON and counts are
//!   stored and read back), `columns` (the columns each table is read by), `error` (driver errors
//!   as `StoreError`), `tasks` (the rules around inserts and claims), `identity` (refused
//!   rotations), `outbox` (which transitions record events), `workers` (directory entries).
//!   Plain CRUD stays written out per backend: the twins differ in every bind (native types
//!   against the codec) and in which pool runs them, and a generic over both drivers read worse.

/// SQL assembled only from this crate's constants and identifiers it has checked, never from
/// client input, so it may be run as a dynamic string.
macro_rules! sql {
    ($($arg:tt)*) => {
        sqlx::AssertSqlSafe(format!($($arg)*))
    };
}

mod codec;
mod columns;
mod error;
mod flow;
mod identity;
mod outbox;
mod postgres;
mod redis;
mod sqlite;
mod tasks;
mod workers;
mod workflows;

pub use crate::redis::bus::RedisBus;
pub use crate::redis::limiter::RedisLimiter;
pub use crate::redis::link::{RedisMode, RedisOptions, check as check_redis};
pub use postgres::PgTaskStore;
pub use sqlite::{SqliteOptions, SqliteTaskStore};
