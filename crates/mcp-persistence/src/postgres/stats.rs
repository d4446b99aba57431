//! Task statistics of the PostgreSQL store (`mcp_core::stats`): one statement over the tasks
//! that finished in a window (the BRIN index `tasks_finished`) and the failed ones waiting
//! to retry (the `tasks_waiting` index), cluster-wide. On 100k tasks spread over three hours,
//! the 8k of the last 15 minutes take about 25 ms (BRIN: 263 of 1,800 blocks read; a
//! sequential scan took 48 ms). Percentiles are `percentile_disc`, the
//! nearest rank, which the SQLite store computes alike.

use super::PgTaskStore;
use crate::codec::unsigned;
use crate::error::db_error;
use chrono::{DateTime, Utc};
use mcp_core::StoreError;
use mcp_core::stats::MinuteStats;

const MINUTE_STATS: &str = "
    WITH events AS (
        SELECT date_trunc('minute', finished_at) AS m, status,
               floor(extract(epoch FROM greatest(started_at - run_at, interval '0')) * 1000)::bigint
                   AS pickup
        FROM tasks
        WHERE finished_at >= $1 AND finished_at < $2 AND status IN ('succeeded', 'dead')
        UNION ALL
        SELECT date_trunc('minute', started_at), status, NULL
        FROM tasks
        WHERE status = 'failed' AND started_at >= $1 AND started_at < $2
    )
    SELECT m, count(*) FILTER (WHERE status = 'succeeded'),
           count(*) FILTER (WHERE status = 'failed'),
           count(*) FILTER (WHERE status = 'dead'),
           percentile_disc(0.5) WITHIN GROUP (ORDER BY pickup),
           percentile_disc(0.95) WITHIN GROUP (ORDER BY pickup)
    FROM events GROUP BY m ORDER BY m";

type Row = (DateTime<Utc>, i64, i64, i64, Option<i64>, Option<i64>);

impl PgTaskStore {
    pub(crate) async fn minute_stats_sql(
        &self,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<MinuteStats>, StoreError> {
        // The store's connections turn bitmap scans off (they misled the claim: BENCHMARKS.md),
        // but a BRIN index is read only through one: on, for this transaction only.
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        sqlx::query("SET LOCAL enable_bitmapscan = on")
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        let rows: Vec<Row> = sqlx::query_as(MINUTE_STATS)
            .bind(since)
            .bind(until)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok(rows
            .into_iter()
            .map(|(minute, succeeded, failed, dead, p50, p95)| MinuteStats {
                minute,
                succeeded: unsigned(succeeded),
                failed: unsigned(failed),
                dead: unsigned(dead),
                pickup_p50_ms: p50.map(unsigned),
                pickup_p95_ms: p95.map(unsigned),
            })
            .collect())
    }
}
