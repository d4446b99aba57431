//! Task statistics of the SQLite store (`mcp_core::stats`): one statement over the tasks that
//! finished in a window and the failed ones waiting to retry (the `tasks_waiting` index). The
//! finished ones are a scan of the table: an index on `finished_at` would cost every outcome
//! write (docs/BENCHMARKS.md), and one node's SQLite file holds what pruning leaves. SQLite has
//! no percentile aggregate, so the nearest rank is picked with window functions: the value at
//! rank `ceil(n * p)`, as PostgreSQL's `percentile_disc`.

use super::SqliteTaskStore;
use crate::codec::{instant, micros, unsigned};
use crate::error::db_error;
use chrono::{DateTime, Utc};
use mcp_core::StoreError;
use mcp_core::stats::MinuteStats;

const MINUTE_STATS: &str = "
    WITH events AS (
        SELECT finished_at / 60000000 AS m, status,
               CASE WHEN started_at IS NOT NULL THEN max(0, started_at - run_at) / 1000 END AS pickup
        FROM tasks
        WHERE finished_at >= ?1 AND finished_at < ?2 AND status IN ('succeeded', 'dead')
        UNION ALL
        SELECT started_at / 60000000, status, NULL
        FROM tasks
        WHERE status = 'failed' AND started_at >= ?1 AND started_at < ?2
    ),
    ranked AS (
        SELECT m, pickup,
               row_number() OVER (PARTITION BY m ORDER BY pickup) AS rank,
               count(*) OVER (PARTITION BY m) AS n
        FROM events WHERE pickup IS NOT NULL
    ),
    percentiles AS (
        SELECT m,
               min(CASE WHEN rank >= (n * 50 + 99) / 100 THEN pickup END) AS p50,
               min(CASE WHEN rank >= (n * 95 + 99) / 100 THEN pickup END) AS p95
        FROM ranked GROUP BY m
    )
    SELECT e.m * 60000000, sum(e.status = 'succeeded'), sum(e.status = 'failed'),
           sum(e.status = 'dead'), p.p50, p.p95
    FROM events e LEFT JOIN percentiles p ON p.m = e.m
    GROUP BY e.m ORDER BY e.m";

type Row = (i64, i64, i64, i64, Option<i64>, Option<i64>);

impl SqliteTaskStore {
    pub(crate) async fn minute_stats_sql(
        &self,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<MinuteStats>, StoreError> {
        let rows: Vec<Row> = sqlx::query_as(MINUTE_STATS)
            .bind(micros(since))
            .bind(micros(until))
            .fetch_all(&self.readers)
            .await
            .map_err(db_error)?;
        rows.into_iter()
            .map(|(minute, succeeded, failed, dead, p50, p95)| {
                Ok(MinuteStats {
                    minute: instant(minute)?,
                    succeeded: unsigned(succeeded),
                    failed: unsigned(failed),
                    dead: unsigned(dead),
                    pickup_p50_ms: p50.map(unsigned),
                    pickup_p95_ms: p95.map(unsigned),
                })
            })
            .collect()
    }
}
