//! The row codec: how ids, instants, JSON and counts are written to a column and read back, in
//! one place for both backends.
//!
//! PostgreSQL has the types natively (`uuid`, `timestamptz`, `jsonb`), so sqlx's own encoding is
//! its codec and only numbers pass through here. SQLite has none of them: ids are TEXT in the
//! hyphenated form (so they compare like the time-ordered UUIDv7s they are), instants are
//! INTEGER microseconds since the epoch (so SQL compares and sorts them, and they keep the
//! precision PostgreSQL keeps), JSON is TEXT, and a batch travels as one JSON array for
//! `json_each`. Whatever a column holds that its reader cannot decode is `StoreError::Corrupt`.

use crate::error::corrupt;
use chrono::{DateTime, NaiveDate, Utc};
use mcp_core::StoreError;
use mcp_core::principal::Role;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::str::FromStr;
use std::time::Duration;
use uuid::Uuid;

/// An id as SQLite stores it.
pub(crate) fn id_text(id: Uuid) -> String {
    id.to_string()
}

/// An id SQLite stored.
pub(crate) fn uuid(text: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(text).map_err(corrupt)
}

/// Ids as one JSON array, for `json_each`.
pub(crate) fn ids_json(ids: &[Uuid]) -> String {
    Value::from(ids.iter().map(|id| id_text(*id)).collect::<Vec<_>>()).to_string()
}

/// Any list as one JSON array, for `json_each`.
pub(crate) fn json_array<T: Into<Value>>(items: Vec<T>) -> String {
    Value::from(items).to_string()
}

/// An instant as SQLite stores it: microseconds since the epoch.
pub(crate) fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

/// An instant SQLite stored.
pub(crate) fn instant(micros: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_micros(micros).ok_or_else(|| corrupt(format!("bad instant {micros}")))
}

/// An instant `lease` after `now`, as SQLite stores it; saturates instead of overflowing.
pub(crate) fn micros_after(now: DateTime<Utc>, lease: Duration) -> i64 {
    micros(now).saturating_add(lease.as_micros().min(i64::MAX as u128) as i64)
}

/// A day as SQLite stores it: `YYYY-MM-DD`, which sorts and compares like the date.
pub(crate) fn day_text(day: NaiveDate) -> String {
    day.format("%Y-%m-%d").to_string()
}

/// A JSON column SQLite stored as TEXT, read as `T`.
pub(crate) fn json<T: DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(corrupt)
}

/// A duration for a millisecond column or an `interval '1 millisecond'` product; saturates.
pub(crate) fn millis(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

/// A stored count, size or duration as unsigned; a negative one (no writer makes it) reads as 0.
pub(crate) fn unsigned(n: i64) -> u64 {
    n.max(0) as u64
}

/// A stored token count; beyond `u32::MAX` (no writer makes it) it saturates.
pub(crate) fn tokens(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

/// A count for an `i64` column; counts beyond `i64::MAX` saturate.
pub(crate) fn count_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A count for an `integer` column; counts beyond `i32::MAX` saturate.
pub(crate) fn count_i32(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// A stored role name as a `Role`.
pub(crate) fn role(name: &str) -> Result<Role, StoreError> {
    Role::from_str(name).map_err(corrupt)
}
