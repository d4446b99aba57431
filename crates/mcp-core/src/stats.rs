//! Task statistics for the console's Overview (`GET /v1/stats`): per minute of a recent window,
//! how many tasks finished by outcome and how long they waited to be picked up, computed by the
//! store in SQL over the whole cluster's tasks. This module holds the window rules and fills the
//! minutes the store found nothing in, so every series has one point per minute.

use crate::store::{StoreError, TaskStore};
use chrono::{DateTime, Duration, DurationRound, Utc};
use serde::Serialize;
use utoipa::ToSchema;

/// The shortest and longest window `GET /v1/stats` accepts, in minutes.
pub const MIN_WINDOW_MINUTES: u32 = 1;
pub const MAX_WINDOW_MINUTES: u32 = 1440;
/// The window when none is given.
pub const DEFAULT_WINDOW_MINUTES: u32 = 15;

/// One minute of task outcomes, as the store reports it (only minutes with something in them).
///
/// `succeeded` and `dead` count tasks that reached that status in the minute (`finished_at`);
/// `failed` counts tasks now waiting to retry whose failed attempt started in the minute (a
/// failed attempt leaves no finish time). The pickup latency is `started_at - run_at` of the
/// last attempt of the tasks that succeeded or died in the minute: the nearest-rank
/// percentile (PostgreSQL's `percentile_disc`), in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct MinuteStats {
    /// The start of the minute.
    pub minute: DateTime<Utc>,
    pub succeeded: u64,
    pub failed: u64,
    pub dead: u64,
    pub pickup_p50_ms: Option<u64>,
    pub pickup_p95_ms: Option<u64>,
}

impl MinuteStats {
    fn empty(minute: DateTime<Utc>) -> Self {
        MinuteStats {
            minute,
            succeeded: 0,
            failed: 0,
            dead: 0,
            pickup_p50_ms: None,
            pickup_p95_ms: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("window must be {MIN_WINDOW_MINUTES} to {MAX_WINDOW_MINUTES} minutes, like 15m or 1h")]
    InvalidWindow,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A window of whole minutes, parsed from `15m`, `1h` or a bare number of minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    minutes: u32,
}

impl Window {
    pub fn minutes(minutes: u32) -> Result<Self, StatsError> {
        if (MIN_WINDOW_MINUTES..=MAX_WINDOW_MINUTES).contains(&minutes) {
            Ok(Window { minutes })
        } else {
            Err(StatsError::InvalidWindow)
        }
    }

    pub fn parse(text: &str) -> Result<Self, StatsError> {
        let text = text.trim();
        let (number, unit) = match text.strip_suffix('h') {
            Some(n) => (n, 60),
            None => (text.strip_suffix('m').unwrap_or(text), 1),
        };
        let n: u32 = number.parse().map_err(|_| StatsError::InvalidWindow)?;
        Self::minutes(n.checked_mul(unit).ok_or(StatsError::InvalidWindow)?)
    }

    pub fn as_minutes(self) -> u32 {
        self.minutes
    }
}

impl Default for Window {
    fn default() -> Self {
        Window {
            minutes: DEFAULT_WINDOW_MINUTES,
        }
    }
}

/// The statistics of one window: the minutes end with the current (partial) one.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Stats {
    /// The start of the first minute.
    pub since: DateTime<Utc>,
    /// The end of the last (current) minute.
    pub until: DateTime<Utc>,
    /// One entry per minute, oldest first, empty minutes included.
    pub minutes: Vec<MinuteStats>,
}

/// Statistics over `window` minutes ending with the minute of `now`.
pub async fn window_stats(
    store: &dyn TaskStore,
    window: Window,
    now: DateTime<Utc>,
) -> Result<Stats, StatsError> {
    let (since, until) = bounds(window, now);
    let found = store.minute_stats(since, until).await?;
    Ok(Stats {
        since,
        until,
        minutes: fill(since, window.minutes, found),
    })
}

/// The whole minutes of a window ending with the (partial) minute of `now`.
fn bounds(window: Window, now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    let minute = Duration::minutes(1);
    let until = now.duration_trunc(minute).unwrap_or(now) + minute;
    (until - Duration::minutes(i64::from(window.minutes)), until)
}

/// One entry per minute from `since`: the store's where it has one, an empty one elsewhere.
fn fill(since: DateTime<Utc>, minutes: u32, found: Vec<MinuteStats>) -> Vec<MinuteStats> {
    let mut found = found.into_iter().peekable();
    (0..i64::from(minutes))
        .map(|i| {
            let at = since + Duration::minutes(i);
            match found.next_if(|m| m.minute == at) {
                Some(m) => m,
                None => MinuteStats::empty(at),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn parses_minutes_and_hours_within_bounds() {
        assert_eq!(Window::parse("15m").unwrap().as_minutes(), 15);
        assert_eq!(Window::parse("2h").unwrap().as_minutes(), 120);
        assert_eq!(Window::parse("30").unwrap().as_minutes(), 30);
        assert!(Window::parse("0m").is_err());
        assert!(Window::parse("25h").is_err());
        assert!(Window::parse("-1m").is_err());
        assert!(Window::parse("99999999999h").is_err());
        assert!(Window::parse("soon").is_err());
    }

    #[test]
    fn fills_every_minute_of_the_window_ending_with_the_current_one() {
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 12, 30, 42).unwrap();
        let busy = MinuteStats {
            minute: Utc.with_ymd_and_hms(2026, 1, 1, 12, 28, 0).unwrap(),
            succeeded: 3,
            failed: 1,
            dead: 0,
            pickup_p50_ms: Some(4),
            pickup_p95_ms: Some(9),
        };
        let (since, until) = bounds(Window::minutes(5).unwrap(), now);
        assert_eq!(since, Utc.with_ymd_and_hms(2026, 1, 1, 12, 26, 0).unwrap());
        assert_eq!(until, Utc.with_ymd_and_hms(2026, 1, 1, 12, 31, 0).unwrap());
        let minutes = fill(since, 5, vec![busy.clone()]);
        assert_eq!(minutes.len(), 5);
        assert_eq!(minutes[2], busy);
        assert_eq!(minutes[0], MinuteStats::empty(since));
        assert_eq!(minutes[4].minute, until - Duration::minutes(1));
    }
}
