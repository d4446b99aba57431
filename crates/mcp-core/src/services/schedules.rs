//! The schedule service: the one path by which schedules are created, changed, paused, fired
//! and listed (REST and the `[[schedules]]` of the configuration alike). Every firing creates
//! its task through `TaskService` as `schedule:{name}`, under an idempotency key of the hub's
//! own (`schedule:{name}:{fire time}`), and only then advances the schedule in the store: the
//! key makes the task exactly one across nodes and retries, the conditional advance makes one
//! node announce it, and a node dying between the two leaves the firing due for the next pass.

use crate::events::{Event, EventBus};
use crate::orchestrator::OrchestratorError;
use crate::schedule::{Firing, Missed, Schedule, ScheduleStore, Spec, SpecError, firing_key};
use crate::services::tasks::{Creator, TaskService, TaskServiceError};
use crate::store::{Inserted, StoreError};
use crate::task::CreateTask;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use utoipa::ToSchema;

/// The channel of `schedule.fired` events.
pub const SCHEDULES_CHANNEL: &str = "system.schedules";
/// Most catch-up runs `max_backfill` may ask for.
pub const MAX_BACKFILL: u32 = 1000;
/// Longest `jitter_ms`: one hour.
pub const MAX_JITTER_MS: u64 = 3_600_000;
/// Most fire times `next` lists.
pub const MAX_UPCOMING: usize = 100;
/// Due schedules one pass of the scheduler handles; more are taken by the next pass at once.
const DUE_BATCH: u32 = 100;
/// Due schedules fired side by side: each firing is a few statements of its own, and one after
/// another the last of many schedules due at one instant would be late by all the others'.
const FIRE_CONCURRENCY: usize = 8;

/// `POST /v1/schedules` and one `[[schedules]]` of the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSchedule {
    /// 1 to 100 letters, digits, `.`, `_` or `-`.
    pub name: String,
    /// Five fields, six with seconds first, or a macro (`@hourly`, `@daily`, …).
    pub cron: String,
    /// IANA time zone (default `UTC`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// The body of `POST /v1/tasks` each firing creates (without `idempotency_key`, `run_at`
    /// or `delay_ms`: the schedule sets them).
    #[schema(value_type = Object)]
    pub task: Value,
    /// `skip` (default), `once` or `all`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed: Option<Missed>,
    /// With `missed = "all"`: most catch-up runs (default 10, at most 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backfill: Option<u32>,
    /// Each task starts up to this many milliseconds after its fire time, at random.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
}

/// `PATCH /v1/schedules/{name}`: the fields to change.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SchedulePatch {
    pub cron: Option<String>,
    pub timezone: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub task: Option<Value>,
    pub missed: Option<Missed>,
    pub max_backfill: Option<u32>,
    pub jitter_ms: Option<u64>,
    pub paused: Option<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Task(#[from] TaskServiceError),
    #[error("no schedule named `{0}`")]
    NotFound(String),
    #[error("a schedule named `{0}` exists already")]
    Exists(String),
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for ScheduleError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(name) => ScheduleError::Exists(name),
            other => ScheduleError::Store(other),
        }
    }
}

impl ScheduleError {
    /// A store that failed for now (unreachable, a failed statement): the same firing may
    /// succeed at the next pass. Anything else would fail again.
    fn is_transient(&self) -> bool {
        matches!(
            self,
            ScheduleError::Store(StoreError::Unavailable(_) | StoreError::Database(_))
                | ScheduleError::Task(TaskServiceError::Orchestrator(OrchestratorError::Store(
                    StoreError::Unavailable(_) | StoreError::Database(_)
                )))
        )
    }
}

/// One firing's task, stored or found by its key, waiting to be announced.
struct Fired {
    at: DateTime<Utc>,
    inserted: Inserted,
    delay_ms: f64,
}

/// The environment variable naming a failpoint at which a debug build aborts the process: the
/// crash tests' way to kill a node between two steps of a firing. Release builds never read it.
pub const FAILPOINT_ENV: &str = "MCP_TEST_FAILPOINT";

/// Aborts the process here if `MCP_TEST_FAILPOINT` names `name` (debug builds only).
fn failpoint(name: &str) {
    #[cfg(debug_assertions)]
    if std::env::var(FAILPOINT_ENV).is_ok_and(|v| v == name) {
        tracing::error!(failpoint = name, "failpoint reached: aborting");
        std::process::abort();
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}

/// How the scheduler treats time.
#[derive(Debug, Clone, Copy)]
pub struct SchedulerConfig {
    /// A fire time found later than this is "missed" and follows the schedule's policy.
    pub grace: Duration,
    /// Longest sleep between two looks at the store (other nodes' changes).
    pub poll: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            grace: Duration::from_secs(1),
            poll: Duration::from_secs(1),
        }
    }
}

pub struct ScheduleService {
    store: Arc<dyn ScheduleStore>,
    tasks: Arc<TaskService>,
    events: Arc<dyn EventBus>,
    config: SchedulerConfig,
    /// Wakes this node's scheduler when a schedule changes here.
    nudge: Arc<Notify>,
}

impl ScheduleService {
    pub fn new(
        store: Arc<dyn ScheduleStore>,
        tasks: Arc<TaskService>,
        events: Arc<dyn EventBus>,
        config: SchedulerConfig,
    ) -> Self {
        ScheduleService {
            store,
            tasks,
            events,
            config,
            nudge: Arc::new(Notify::new()),
        }
    }

    pub fn config(&self) -> SchedulerConfig {
        self.config
    }

    pub(crate) fn nudged(&self) -> Arc<Notify> {
        self.nudge.clone()
    }

    /// Creates a schedule; its task template is validated as a create request would be.
    pub async fn create(&self, request: CreateSchedule) -> Result<Schedule, ScheduleError> {
        let schedule = self.build(request, "api")?;
        self.check_task(&schedule.name, &schedule.task).await?;
        self.store.insert_schedule(&schedule).await?;
        self.nudge.notify_one();
        Ok(schedule)
    }

    pub async fn list(&self) -> Result<Vec<Schedule>, ScheduleError> {
        Ok(self.store.list_schedules().await?)
    }

    pub async fn get(&self, name: &str) -> Result<Schedule, ScheduleError> {
        self.store
            .schedule(name)
            .await?
            .ok_or_else(|| ScheduleError::NotFound(name.to_owned()))
    }

    /// Changes a schedule; a new expression, zone or pause state recomputes its next fire time
    /// from now.
    pub async fn update(
        &self,
        name: &str,
        patch: SchedulePatch,
    ) -> Result<Schedule, ScheduleError> {
        let mut schedule = self.get(name).await?;
        let retime = patch.cron.is_some() || patch.timezone.is_some() || patch.paused.is_some();
        if let Some(cron) = patch.cron {
            schedule.cron = cron;
        }
        if let Some(zone) = patch.timezone {
            schedule.timezone = zone;
        }
        if let Some(task) = patch.task {
            self.check_task(name, &task).await?;
            schedule.task = task;
        }
        if let Some(missed) = patch.missed {
            schedule.missed = missed;
        }
        if let Some(n) = patch.max_backfill {
            schedule.max_backfill = n;
        }
        if let Some(ms) = patch.jitter_ms {
            schedule.jitter_ms = ms;
        }
        if let Some(paused) = patch.paused {
            schedule.paused = paused;
        }
        check_bounds(schedule.max_backfill, schedule.jitter_ms)?;
        let spec = Spec::parse(&schedule.cron, &schedule.timezone)?;
        if retime {
            schedule.next_fire_at = next_from_now(&spec, schedule.paused);
        }
        schedule.updated_at = Utc::now();
        self.save(&schedule).await?;
        Ok(schedule)
    }

    pub async fn delete(&self, name: &str) -> Result<(), ScheduleError> {
        if self.store.delete_schedule(name).await? {
            Ok(())
        } else {
            Err(ScheduleError::NotFound(name.to_owned()))
        }
    }

    /// Pauses (`true`) or resumes a schedule. A resumed schedule goes on from now: what it
    /// would have fired while paused is not caught up.
    pub async fn set_paused(&self, name: &str, paused: bool) -> Result<Schedule, ScheduleError> {
        self.update(
            name,
            SchedulePatch {
                paused: Some(paused),
                ..SchedulePatch::default()
            },
        )
        .await
    }

    /// Fires a schedule now, out of turn (its regular times are unchanged); the task created.
    pub async fn trigger(&self, name: &str) -> Result<Inserted, ScheduleError> {
        let schedule = self.get(name).await?;
        let now = Utc::now();
        let key = format!("schedule:{name}:trigger:{}", uuid::Uuid::now_v7());
        self.fire(&schedule, now, key).await
    }

    /// The schedule's next `n` fire times (even while paused: when it would fire).
    pub async fn upcoming(
        &self,
        name: &str,
        n: usize,
    ) -> Result<Vec<DateTime<Utc>>, ScheduleError> {
        if n == 0 || n > MAX_UPCOMING {
            return Err(ScheduleError::Invalid(format!(
                "n must be between 1 and {MAX_UPCOMING}"
            )));
        }
        let schedule = self.get(name).await?;
        let spec = Spec::parse(&schedule.cron, &schedule.timezone)?;
        Ok(spec.upcoming(Utc::now(), n))
    }

    /// Makes the stored schedules of the configuration what `declared` says: new ones are
    /// created, changed ones updated (their next fire time kept unless the expression, zone or
    /// pause state changed), and those the configuration no longer declares deleted. Schedules
    /// created through the API are left alone unless the configuration names them. The task
    /// types are not checked here (external workers may not have registered theirs yet); a
    /// firing of an unknown type is logged.
    pub async fn reconcile(&self, declared: Vec<CreateSchedule>) -> Result<(), ScheduleError> {
        let mut names = Vec::with_capacity(declared.len());
        for request in declared {
            let mut wanted = self.build(request, "config")?;
            names.push(wanted.name.clone());
            match self.store.schedule(&wanted.name).await? {
                None => self.store.insert_schedule(&wanted).await?,
                Some(stored) => {
                    let same_times = stored.cron == wanted.cron
                        && stored.timezone == wanted.timezone
                        && stored.paused == wanted.paused;
                    if same_times
                        && stored.task == wanted.task
                        && stored.missed == wanted.missed
                        && stored.max_backfill == wanted.max_backfill
                        && stored.jitter_ms == wanted.jitter_ms
                        && stored.source == wanted.source
                    {
                        continue;
                    }
                    if same_times {
                        wanted.next_fire_at = stored.next_fire_at;
                    }
                    wanted.last_fired_at = stored.last_fired_at;
                    wanted.created_at = stored.created_at;
                    self.store.update_schedule(&wanted).await?;
                }
            }
        }
        for stored in self.store.list_schedules().await? {
            if stored.source == "config" && !names.contains(&stored.name) {
                self.store.delete_schedule(&stored.name).await?;
            }
        }
        self.nudge.notify_one();
        Ok(())
    }

    /// Fires every schedule due at `now`. For each, in this order, so that a node dying at any
    /// point neither loses nor repeats a firing:
    ///
    /// 1. creates each fire time's task under its key `schedule:{name}:{fire time}`: the
    ///    idempotent step. A node that finds the key used (another node, or this firing's
    ///    attempt before a crash) is handed the existing task and takes the firing as done;
    /// 2. advances `next_fire_at` conditionally (from the time it read): until that succeeds,
    ///    the firing stays due, and the next pass of any node does it again, finding the keys;
    /// 3. announces `schedule.fired`, only on the node whose advance won, so once per firing.
    ///
    /// A store that failed in step 1 leaves the schedule due for the next pass. Returns how many
    /// tasks this node created.
    pub async fn run_due(&self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        let due = self.store.due_schedules(now, DUE_BATCH).await?;
        let outcomes: Vec<Result<usize, StoreError>> = futures::stream::iter(due)
            .map(|schedule| self.run_one(schedule, now))
            .buffer_unordered(FIRE_CONCURRENCY)
            .collect()
            .await;
        let mut created = 0;
        for outcome in outcomes {
            created += outcome?;
        }
        Ok(created)
    }

    /// One due schedule's pass (`run_due`): its tasks, its advance, its events.
    async fn run_one(&self, schedule: Schedule, now: DateTime<Utc>) -> Result<usize, StoreError> {
        let mut created = 0;
        let Some(due) = schedule.next_fire_at else {
            return Ok(0);
        };
        let firing = match Spec::parse(&schedule.cron, &schedule.timezone) {
            Ok(spec) => spec.firing(
                due,
                now,
                schedule.missed,
                schedule.max_backfill,
                self.config.grace,
            ),
            Err(e) => {
                // Stored before a rule changed: stop it rather than retry it forever.
                tracing::warn!(schedule = %schedule.name, error = %e, "schedule cannot fire");
                Firing {
                    fire: Vec::new(),
                    next: None,
                }
            }
        };
        let mut stored = Vec::with_capacity(firing.fire.len());
        let mut store_failed = false;
        for &at in &firing.fire {
            match self
                .create_task(&schedule, at, firing_key(&schedule.name, at))
                .await
            {
                Ok(fired) => {
                    created += usize::from(fired.inserted.created);
                    stored.push(fired);
                }
                Err(e) if e.is_transient() => {
                    tracing::warn!(schedule = %schedule.name, fire_time = %at, error = %e,
                        "schedule firing not stored; the next pass tries again");
                    store_failed = true;
                    break;
                }
                Err(e) => {
                    // The template cannot become a task (its type is unknown, say): trying
                    // again would fail again, so the firing is dropped and logged.
                    tracing::warn!(schedule = %schedule.name, fire_time = %at, error = %e,
                        "schedule firing created no task")
                }
            }
        }
        if store_failed {
            return Ok(created);
        }
        failpoint("schedule.after_task");
        if !self
            .store
            .advance_schedule(
                &schedule.name,
                due,
                firing.next,
                firing.fire.last().copied().or(schedule.last_fired_at),
            )
            .await?
        {
            // Another node finished this firing (and announced it).
            return Ok(created);
        }
        for fired in stored {
            self.announce(&schedule, fired).await;
        }
        Ok(created)
    }

    /// The earliest next fire time of any schedule not paused.
    pub async fn next_fire_at(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.store.next_schedule_at().await
    }

    /// Creates the task of one firing and announces it (`trigger`, whose key is its own).
    async fn fire(
        &self,
        schedule: &Schedule,
        at: DateTime<Utc>,
        key: String,
    ) -> Result<Inserted, ScheduleError> {
        let fired = self.create_task(schedule, at, key).await?;
        let inserted = fired.inserted.clone();
        self.announce(schedule, fired).await;
        Ok(inserted)
    }

    /// Creates (or, its key used, finds) the task of one firing.
    async fn create_task(
        &self,
        schedule: &Schedule,
        at: DateTime<Utc>,
        key: String,
    ) -> Result<Fired, ScheduleError> {
        let mut request: CreateTask = serde_json::from_value(schedule.task.clone())
            .map_err(|e| ScheduleError::Invalid(format!("task: {e}")))?;
        request.idempotency_key = Some(key);
        if schedule.jitter_ms > 0 {
            let jitter = rand::rng().random_range(0..=schedule.jitter_ms);
            request.run_at = Some(at + chrono::Duration::milliseconds(jitter as i64));
        }
        let subject = format!("schedule:{}", schedule.name);
        let inserted = self
            .tasks
            .create(Creator::Internal(&subject), request, Some(&subject))
            .await?;
        let delay_ms = (Utc::now() - at).num_microseconds().unwrap_or(0) as f64 / 1000.0;
        if inserted.created {
            metrics::histogram!("mcp_schedule_fire_delay_ms").record(delay_ms);
        }
        Ok(Fired {
            at,
            inserted,
            delay_ms,
        })
    }

    /// Publishes `schedule.fired` for one firing.
    async fn announce(&self, schedule: &Schedule, fired: Fired) {
        let subject = format!("schedule:{}", schedule.name);
        let event = Arc::new(Event::new(
            "schedule.fired",
            json!({
                "schedule": schedule.name,
                "fire_time": fired.at,
                "task_id": fired.inserted.task.id,
                "created": fired.inserted.created,
                "delay_ms": fired.delay_ms,
            }),
            Some(subject),
        ));
        if let Err(e) = self.events.publish(SCHEDULES_CHANNEL, event).await {
            tracing::warn!(error = %e, "cannot publish schedule.fired");
        }
    }

    fn build(&self, request: CreateSchedule, source: &str) -> Result<Schedule, ScheduleError> {
        schedule_from(request, source)
    }

    /// Validates the template as the task service would a create request (type, payload,
    /// bounds), without storing anything.
    async fn check_task(&self, name: &str, task: &Value) -> Result<(), ScheduleError> {
        check_template(task)?;
        let request: CreateTask = serde_json::from_value(task.clone())
            .map_err(|e| ScheduleError::Invalid(format!("task: {e}")))?;
        let subject = format!("schedule:{name}");
        self.tasks
            .prepare_one(Creator::Internal(&subject), request, None)
            .await?;
        Ok(())
    }

    async fn save(&self, schedule: &Schedule) -> Result<(), ScheduleError> {
        if !self.store.update_schedule(schedule).await? {
            return Err(ScheduleError::NotFound(schedule.name.clone()));
        }
        self.nudge.notify_one();
        Ok(())
    }
}

/// A schedule from a request, checked in everything but its task type (the configuration's
/// checks use it too).
pub fn schedule_from(request: CreateSchedule, source: &str) -> Result<Schedule, ScheduleError> {
    check_name(&request.name)?;
    let timezone = request.timezone.unwrap_or_else(|| "UTC".to_owned());
    let spec = Spec::parse(&request.cron, &timezone)?;
    let max_backfill = request.max_backfill.unwrap_or(10);
    let jitter_ms = request.jitter_ms.unwrap_or(0);
    check_bounds(max_backfill, jitter_ms)?;
    check_template(&request.task)?;
    let paused = request.paused.unwrap_or(false);
    let now = Utc::now();
    Ok(Schedule {
        name: request.name,
        cron: request.cron,
        timezone,
        task: request.task,
        missed: request.missed.unwrap_or_default(),
        max_backfill,
        jitter_ms,
        paused,
        next_fire_at: next_from_now(&spec, paused),
        last_fired_at: None,
        source: source.to_owned(),
        created_at: now,
        updated_at: now,
    })
}

fn next_from_now(spec: &Spec, paused: bool) -> Option<DateTime<Utc>> {
    if paused {
        None
    } else {
        spec.next_after(Utc::now())
    }
}

fn check_name(name: &str) -> Result<(), ScheduleError> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ScheduleError::Invalid(
            "name must be 1 to 100 letters, digits, `.`, `_` or `-`".into(),
        ))
    }
}

fn check_bounds(max_backfill: u32, jitter_ms: u64) -> Result<(), ScheduleError> {
    if max_backfill > MAX_BACKFILL {
        return Err(ScheduleError::Invalid(format!(
            "max_backfill must be at most {MAX_BACKFILL}"
        )));
    }
    if jitter_ms > MAX_JITTER_MS {
        return Err(ScheduleError::Invalid(format!(
            "jitter_ms must be at most {MAX_JITTER_MS}"
        )));
    }
    Ok(())
}

/// The template is a create body without the fields the schedule owns.
fn check_template(task: &Value) -> Result<(), ScheduleError> {
    let Some(fields) = task.as_object() else {
        return Err(ScheduleError::Invalid(
            "task must be an object (the body of POST /v1/tasks)".into(),
        ));
    };
    for owned in ["idempotency_key", "run_at", "delay_ms"] {
        if fields.contains_key(owned) {
            return Err(ScheduleError::Invalid(format!(
                "task.{owned} is set by the schedule for each firing"
            )));
        }
    }
    serde_json::from_value::<CreateTask>(task.clone())
        .map_err(|e| ScheduleError::Invalid(format!("task: {e}")))?;
    Ok(())
}
