//! The `ScheduleStore` of the SQLite store, in the tables of
//! `migrations/sqlite/0014_schedules.sql`. A firing is finished (after its tasks are
//! stored) by a conditional update of `next_fire_at`. (Pauses and limits, the `QueueStore`, are
//! in `limits.rs`.) Instants are microseconds, the template JSON text.

use super::SqliteTaskStore;
use crate::codec::{instant, json, micros};
use crate::error::{corrupt, db_error};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mcp_core::StoreError;
use mcp_core::schedule::{Schedule, ScheduleStore};
use serde_json::Value;
use sqlx::FromRow;

const SCHEDULE_COLUMNS: &str = "name, cron, timezone, task, missed, max_backfill, jitter_ms, \
     paused, next_fire_at, last_fired_at, source, created_at, updated_at";

#[derive(FromRow)]
struct ScheduleRow {
    name: String,
    cron: String,
    timezone: String,
    task: String,
    missed: String,
    max_backfill: i32,
    jitter_ms: i64,
    paused: bool,
    next_fire_at: Option<i64>,
    last_fired_at: Option<i64>,
    source: String,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<ScheduleRow> for Schedule {
    type Error = StoreError;
    fn try_from(row: ScheduleRow) -> Result<Schedule, StoreError> {
        Ok(Schedule {
            name: row.name,
            cron: row.cron,
            timezone: row.timezone,
            task: json::<Value>(&row.task)?,
            missed: row.missed.parse().map_err(corrupt)?,
            max_backfill: u32::try_from(row.max_backfill).map_err(corrupt)?,
            jitter_ms: u64::try_from(row.jitter_ms).map_err(corrupt)?,
            paused: row.paused,
            next_fire_at: row.next_fire_at.map(instant).transpose()?,
            last_fired_at: row.last_fired_at.map(instant).transpose()?,
            source: row.source,
            created_at: instant(row.created_at)?,
            updated_at: instant(row.updated_at)?,
        })
    }
}

fn schedules(rows: Vec<ScheduleRow>) -> Result<Vec<Schedule>, StoreError> {
    rows.into_iter().map(Schedule::try_from).collect()
}

#[async_trait]
impl ScheduleStore for SqliteTaskStore {
    async fn insert_schedule(&self, s: &Schedule) -> Result<(), StoreError> {
        let done = sqlx::query(sql!(
            "INSERT INTO schedules ({SCHEDULE_COLUMNS})
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
             ON CONFLICT (name) DO NOTHING"
        ))
        .bind(&s.name)
        .bind(&s.cron)
        .bind(&s.timezone)
        .bind(s.task.to_string())
        .bind(s.missed.as_str())
        .bind(i32::try_from(s.max_backfill).map_err(corrupt)?)
        .bind(i64::try_from(s.jitter_ms).map_err(corrupt)?)
        .bind(s.paused)
        .bind(s.next_fire_at.map(micros))
        .bind(s.last_fired_at.map(micros))
        .bind(&s.source)
        .bind(micros(s.created_at))
        .bind(micros(s.updated_at))
        .execute(&self.writer)
        .await
        .map_err(db_error)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict(s.name.clone()));
        }
        Ok(())
    }

    async fn update_schedule(&self, s: &Schedule) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE schedules SET cron = ?2, timezone = ?3, task = ?4, missed = ?5,
                 max_backfill = ?6, jitter_ms = ?7, paused = ?8, next_fire_at = ?9,
                 last_fired_at = ?10, source = ?11, created_at = ?12, updated_at = ?13
             WHERE name = ?1",
        )
        .bind(&s.name)
        .bind(&s.cron)
        .bind(&s.timezone)
        .bind(s.task.to_string())
        .bind(s.missed.as_str())
        .bind(i32::try_from(s.max_backfill).map_err(corrupt)?)
        .bind(i64::try_from(s.jitter_ms).map_err(corrupt)?)
        .bind(s.paused)
        .bind(s.next_fire_at.map(micros))
        .bind(s.last_fired_at.map(micros))
        .bind(&s.source)
        .bind(micros(s.created_at))
        .bind(micros(s.updated_at))
        .execute(&self.writer)
        .await
        .map_err(db_error)?;
        Ok(done.rows_affected() > 0)
    }

    async fn schedule(&self, name: &str) -> Result<Option<Schedule>, StoreError> {
        let row: Option<ScheduleRow> = sqlx::query_as(sql!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE name = ?1"
        ))
        .bind(name)
        .fetch_optional(&self.readers)
        .await
        .map_err(db_error)?;
        row.map(Schedule::try_from).transpose()
    }

    async fn list_schedules(&self) -> Result<Vec<Schedule>, StoreError> {
        let rows: Vec<ScheduleRow> = sqlx::query_as(sql!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules ORDER BY name"
        ))
        .fetch_all(&self.readers)
        .await
        .map_err(db_error)?;
        schedules(rows)
    }

    async fn delete_schedule(&self, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM schedules WHERE name = ?1")
            .bind(name)
            .execute(&self.writer)
            .await
            .map_err(db_error)?;
        Ok(done.rows_affected() > 0)
    }

    async fn due_schedules(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Schedule>, StoreError> {
        let rows: Vec<ScheduleRow> = sqlx::query_as(sql!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules
             WHERE paused = 0 AND next_fire_at IS NOT NULL AND next_fire_at <= ?1
             ORDER BY next_fire_at LIMIT ?2"
        ))
        .bind(micros(now))
        .bind(i64::from(limit))
        .fetch_all(&self.readers)
        .await
        .map_err(db_error)?;
        schedules(rows)
    }

    async fn advance_schedule(
        &self,
        name: &str,
        expected: DateTime<Utc>,
        next: Option<DateTime<Utc>>,
        fired: Option<DateTime<Utc>>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE schedules SET next_fire_at = ?3, last_fired_at = ?4
             WHERE name = ?1 AND next_fire_at = ?2 AND paused = 0",
        )
        .bind(name)
        .bind(micros(expected))
        .bind(next.map(micros))
        .bind(fired.map(micros))
        .execute(&self.writer)
        .await
        .map_err(db_error)?;
        Ok(done.rows_affected() == 1)
    }

    async fn next_schedule_at(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let (at,): (Option<i64>,) = sqlx::query_as(
            "SELECT min(next_fire_at) FROM schedules WHERE paused = 0 AND next_fire_at IS NOT NULL",
        )
        .fetch_one(&self.readers)
        .await
        .map_err(db_error)?;
        at.map(instant).transpose()
    }
}
