//! Schedules: a cron expression in an IANA time zone plus a task template, and the
//! `ScheduleStore` port that keeps them. The rules of firing live here, pure: which fire times
//! are due at a given instant, what the `missed` policy makes of those found late after downtime,
//! and when the schedule fires next. `services/schedules.rs` applies them; the scheduler loop
//! (`orchestrator/scheduler.rs`) drives it.

use crate::store::StoreError;
use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use chrono_tz::Tz;
use croner::Cron;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::VecDeque;
use std::str::FromStr;
use std::time::Duration;

/// Most due fire times one catch-up looks at: a per-second schedule down for longer jumps to
/// the next future time past them.
const MAX_SCAN: usize = 100_000;

/// What happens to fire times found late (by more than the grace) after downtime.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Missed {
    /// Go on with the next future time (the default).
    #[default]
    Skip,
    /// One catch-up run, for the latest missed time.
    Once,
    /// Every missed time, up to the schedule's `max_backfill` latest.
    All,
}

impl Missed {
    pub fn as_str(self) -> &'static str {
        match self {
            Missed::Skip => "skip",
            Missed::Once => "once",
            Missed::All => "all",
        }
    }
}

impl FromStr for Missed {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "skip" => Ok(Missed::Skip),
            "once" => Ok(Missed::Once),
            "all" => Ok(Missed::All),
            other => Err(format!("unknown missed policy `{other}`")),
        }
    }
}

/// A stored schedule.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Schedule {
    pub name: String,
    /// Five or six fields (seconds first, optional), or a macro such as `@hourly`.
    pub cron: String,
    /// IANA time zone the cron expression is read in, e.g. `Europe/Berlin`.
    pub timezone: String,
    /// The body of `POST /v1/tasks` each firing creates.
    #[schema(value_type = Object)]
    pub task: Value,
    pub missed: Missed,
    /// With `missed = "all"`: most catch-up runs after downtime.
    pub max_backfill: u32,
    /// Each firing's task starts up to this many milliseconds late, at random.
    pub jitter_ms: u64,
    pub paused: bool,
    /// When it fires next; `None` while paused or when the expression never matches again.
    pub next_fire_at: Option<DateTime<Utc>>,
    pub last_fired_at: Option<DateTime<Utc>>,
    /// `api` or `config` (declared in `[[schedules]]`, reconciled at start).
    pub source: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Why a cron expression or time zone was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("invalid cron expression `{cron}`: {reason}")]
    Cron { cron: String, reason: String },
    #[error("unknown time zone `{0}` (use an IANA name such as `Europe/Berlin` or `UTC`)")]
    Timezone(String),
}

/// A parsed cron expression in its time zone: the fire times.
#[derive(Debug, Clone)]
pub struct Spec {
    cron: Cron,
    zone: Tz,
}

/// What a schedule does at one instant: the fire times to run now, and its next one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firing {
    pub fire: Vec<DateTime<Utc>>,
    pub next: Option<DateTime<Utc>>,
}

impl Spec {
    pub fn parse(cron: &str, timezone: &str) -> Result<Spec, SpecError> {
        let zone = Tz::from_str(timezone).map_err(|_| SpecError::Timezone(timezone.to_owned()))?;
        let parsed = Cron::from_str(cron).map_err(|e| SpecError::Cron {
            cron: cron.to_owned(),
            reason: e.to_string(),
        })?;
        let spec = Spec { cron: parsed, zone };
        Ok(spec)
    }

    /// The first fire time strictly after `after`; `None` if the expression never matches
    /// again. Daylight-saving changes follow croner: a time skipped by a forward change fires
    /// at the first valid instant after the gap, and a repeated wall time fires once.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Fire times are whole seconds; croner keeps the start's fraction otherwise.
        let after = after.trunc_subsecs(0);
        self.cron
            .find_next_occurrence(&after.with_timezone(&self.zone), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The next `n` fire times after `after`.
    pub fn upcoming(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut times = Vec::with_capacity(n);
        let mut at = after;
        while times.len() < n {
            match self.next_after(at) {
                Some(next) => {
                    times.push(next);
                    at = next;
                }
                None => break,
            }
        }
        times
    }

    /// The fire times due at `now` for a schedule whose next fire time was `due`: those late
    /// by at most `grace` always run; the ones missed before them follow `missed`. `next` is
    /// the first fire time after `now`.
    pub fn firing(
        &self,
        due: DateTime<Utc>,
        now: DateTime<Utc>,
        missed: Missed,
        max_backfill: u32,
        grace: Duration,
    ) -> Firing {
        let keep = max_backfill.max(1) as usize + 16;
        let mut found: VecDeque<DateTime<Utc>> = VecDeque::new();
        let mut at = Some(due);
        let mut scanned = 0;
        while let Some(t) = at.filter(|t| *t <= now) {
            if scanned == MAX_SCAN {
                at = self.next_after(now);
                break;
            }
            scanned += 1;
            if found.len() == keep {
                found.pop_front();
            }
            found.push_back(t);
            at = self.next_after(t);
        }
        let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::zero());
        let (late, on_time): (Vec<_>, Vec<_>) = found.into_iter().partition(|t| now - *t > grace);
        let caught_up: Vec<DateTime<Utc>> = match missed {
            Missed::Skip => Vec::new(),
            Missed::Once => late.last().copied().into_iter().collect(),
            Missed::All => {
                let n = late.len().saturating_sub(max_backfill as usize);
                late[n..].to_vec()
            }
        };
        let mut fire = caught_up;
        fire.extend(on_time);
        Firing { fire, next: at }
    }
}

/// The idempotency key of a schedule's firing: in the hub's own namespace (a tenant's keys are
/// stored as `{subject}/{key}`), so no client's key can meet it, and the same on every node.
pub fn firing_key(name: &str, at: DateTime<Utc>) -> String {
    format!(
        "schedule:{name}:{}",
        at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    )
}

#[async_trait]
pub trait ScheduleStore: Send + Sync + 'static {
    /// Stores a new schedule; `Conflict` if its name is taken.
    async fn insert_schedule(&self, schedule: &Schedule) -> Result<(), StoreError>;

    /// Replaces a schedule by name; false if there is none.
    async fn update_schedule(&self, schedule: &Schedule) -> Result<bool, StoreError>;

    async fn schedule(&self, name: &str) -> Result<Option<Schedule>, StoreError>;

    /// Every schedule, by name.
    async fn list_schedules(&self) -> Result<Vec<Schedule>, StoreError>;

    async fn delete_schedule(&self, name: &str) -> Result<bool, StoreError>;

    /// Schedules not paused whose next fire time is at or before `now`, earliest first.
    async fn due_schedules(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Schedule>, StoreError>;

    /// Finishes a firing whose tasks are stored: moves the schedule's next fire time from
    /// `expected` to `next` (and its last firing to `fired`) only if it is still `expected`. Of
    /// any number of nodes that saw the same due schedule, exactly one gets `true`.
    async fn advance_schedule(
        &self,
        name: &str,
        expected: DateTime<Utc>,
        next: Option<DateTime<Utc>>,
        fired: Option<DateTime<Utc>>,
    ) -> Result<bool, StoreError>;

    /// The earliest next fire time of the schedules not paused, so the scheduler sleeps until it.
    async fn next_schedule_at(&self) -> Result<Option<DateTime<Utc>>, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn refuses_bad_cron_and_unknown_zones() {
        assert!(matches!(
            Spec::parse("61 * * * *", "UTC"),
            Err(SpecError::Cron { .. })
        ));
        assert!(matches!(
            Spec::parse("* * * * *", "Mars/Olympus"),
            Err(SpecError::Timezone(_))
        ));
        assert!(Spec::parse("@hourly", "Europe/Berlin").is_ok());
        assert!(Spec::parse("*/5 * * * * *", "UTC").is_ok());
    }

    #[test]
    fn reads_the_expression_in_its_time_zone_across_daylight_saving() {
        let spec = Spec::parse("0 9 * * *", "Europe/Berlin").unwrap();
        // Winter: 09:00 CET is 08:00 UTC; summer (after 29 March 2026): 07:00 UTC.
        let next = spec.upcoming(at("2026-03-27T12:00:00Z"), 3);
        assert_eq!(
            next,
            vec![
                at("2026-03-28T08:00:00Z"),
                at("2026-03-29T07:00:00Z"),
                at("2026-03-30T07:00:00Z")
            ]
        );
        // 02:30 does not exist on 29 March 2026 in Berlin: it still fires once that day.
        let gap = Spec::parse("30 2 * * *", "Europe/Berlin").unwrap();
        let day = gap.upcoming(at("2026-03-28T12:00:00Z"), 2);
        assert_eq!(day.len(), 2);
        assert_eq!(
            day[0].date_naive(),
            Utc.with_ymd_and_hms(2026, 3, 29, 0, 0, 0)
                .unwrap()
                .date_naive()
        );
    }

    #[test]
    fn missed_policies_after_downtime() {
        let spec = Spec::parse("* * * * * *", "UTC").unwrap();
        let due = at("2026-01-01T00:00:00Z");
        let now = at("2026-01-01T00:00:10.5Z");
        let grace = Duration::from_secs(1);
        // 00:00:10 is on time (late by 0.5 s); 00:00:00..=00:00:09 were missed.
        let skip = spec.firing(due, now, Missed::Skip, 0, grace);
        assert_eq!(skip.fire, vec![at("2026-01-01T00:00:10Z")]);
        assert_eq!(skip.next, Some(at("2026-01-01T00:00:11Z")));
        let once = spec.firing(due, now, Missed::Once, 0, grace);
        assert_eq!(
            once.fire,
            vec![at("2026-01-01T00:00:09Z"), at("2026-01-01T00:00:10Z")]
        );
        let all = spec.firing(due, now, Missed::All, 3, grace);
        assert_eq!(
            all.fire,
            vec![
                at("2026-01-01T00:00:07Z"),
                at("2026-01-01T00:00:08Z"),
                at("2026-01-01T00:00:09Z"),
                at("2026-01-01T00:00:10Z")
            ]
        );
        // Fire times are whole seconds, whatever instant they are counted from.
        assert_eq!(
            spec.next_after(at("2026-01-01T00:00:00.730952Z")),
            Some(at("2026-01-01T00:00:01Z"))
        );
        // On time: exactly the due time.
        let now = at("2026-01-01T00:00:00.004Z");
        let on_time = spec.firing(due, now, Missed::Skip, 0, grace);
        assert_eq!(on_time.fire, vec![due]);
    }

    #[test]
    fn firing_keys_are_stable_and_in_the_hubs_namespace() {
        assert_eq!(
            firing_key("nightly", at("2026-01-01T00:00:00Z")),
            "schedule:nightly:2026-01-01T00:00:00.000Z"
        );
    }
}
