//! The task model: what a task is, the states it moves through, and how a request to create one
//! is validated before it reaches a store.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

/// Where a task is in its lifecycle.
///
/// ```text
/// scheduled ─┐
///            ├─> queued ─> running ─> succeeded
/// failed ────┘               │
///    ^                       ├─> failed (attempts left: waits for `run_at`, then runs again)
///    └───────────────────────┤
///                            └─> dead   (no attempts left)
/// cancelled: from any state that is not final
///
/// waiting ─> queued      (a workflow task: its last dependency settled; see `workflow.rs`)
/// waiting ─> cancelled   (a dependency ended dead or cancelled under `cancel_dependents`)
/// ```
///
/// `scheduled` and `failed` tasks become runnable when their `run_at` passes; the claim query
/// takes them directly, so a delayed task starts on time without a promotion step. A `waiting`
/// task is never claimed: the transaction that settles its last dependency makes it `queued`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Scheduled,
    Queued,
    Running,
    Succeeded,
    Failed,
    Dead,
    Cancelled,
    /// A workflow task whose dependencies have not all settled yet.
    Waiting,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 8] = [
        TaskStatus::Scheduled,
        TaskStatus::Queued,
        TaskStatus::Running,
        TaskStatus::Succeeded,
        TaskStatus::Failed,
        TaskStatus::Dead,
        TaskStatus::Cancelled,
        TaskStatus::Waiting,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Scheduled => "scheduled",
            TaskStatus::Queued => "queued",
            TaskStatus::Running => "running",
            TaskStatus::Succeeded => "succeeded",
            TaskStatus::Failed => "failed",
            TaskStatus::Dead => "dead",
            TaskStatus::Cancelled => "cancelled",
            TaskStatus::Waiting => "waiting",
        }
    }

    /// A final task never runs again (unless an operator retries a dead one).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskStatus::Succeeded | TaskStatus::Dead | TaskStatus::Cancelled
        )
    }
}

impl std::fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TaskStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| format!("unknown task status `{s}`"))
    }
}

/// Exponential backoff with full jitter between attempts: the delay before attempt `n + 1` is a
/// random duration in `[0, min(max_ms, base_ms * 2^(n-1))]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    pub base_ms: u64,
    pub max_ms: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base_ms: 1_000,
            max_ms: 600_000,
        }
    }
}

/// Why the last attempt of a task failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskError {
    pub message: String,
    /// Which attempt failed (1-based).
    pub attempt: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

/// A task as stored and as returned by the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Task {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub task_type: String,
    pub queue: String,
    pub priority: i32,
    pub payload: Value,
    pub status: TaskStatus,
    pub attempts: i32,
    pub max_attempts: i32,
    pub backoff: Backoff,
    pub run_at: DateTime<Utc>,
    pub timeout_ms: u64,
    pub idempotency_key: Option<String>,
    pub concurrency_key: Option<String>,
    pub concurrency_limit: Option<i32>,
    pub correlation_id: Option<String>,
    /// Subject of the principal that created the task; set by the server, never by the body.
    pub created_by: Option<String>,
    /// The creator's subject when it is a `user` or `service` principal: whose share of a node's
    /// slots the task counts against, and the namespace of its keys (see [`scoped_key`]). Not
    /// part of the API: it equals `created_by` when set.
    #[serde(skip)]
    pub share_key: Option<String>,
    pub result: Option<Value>,
    pub error: Option<TaskError>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The workflow this task belongs to, if any (`docs/workflows.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<Uuid>,
    /// The task's key within its workflow (`build`, `deploy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_key: Option<String>,
    /// The outcomes of the task's dependencies by key, filled when a workflow task is handed to
    /// a handler or an external worker: `{"build": {"status": "succeeded", "result": …}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parents: Option<Value>,
    /// The latest progress its handler or worker reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// The W3C `traceparent` of the span that created the task (`None` when tracing is off):
    /// every attempt, on any node or external worker, continues that trace. Shown as its trace
    /// id only.
    #[serde(
        rename = "trace_id",
        serialize_with = "serialize_trace_id",
        skip_deserializing,
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, example = "4bf92f3577b34da6a3ce929d0e0e4736")]
    pub traceparent: Option<String>,
}

/// How far a running task got, as its handler or worker last reported it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Progress {
    /// From 0 to 1.
    pub progress: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub at: DateTime<Utc>,
}

/// The longest progress message kept, in bytes.
pub const MAX_PROGRESS_MESSAGE: usize = 1_024;

impl Progress {
    /// A report checked against its bounds: a fraction in `[0, 1]` and a message of at most
    /// [`MAX_PROGRESS_MESSAGE`] bytes.
    pub fn new(progress: f64, message: Option<String>) -> Result<Progress, InvalidTask> {
        if !(0.0..=1.0).contains(&progress) {
            return Err(invalid("progress", "must be a number from 0 to 1"));
        }
        if message
            .as_ref()
            .is_some_and(|m| m.len() > MAX_PROGRESS_MESSAGE)
        {
            return Err(invalid(
                "message",
                format!("must be at most {MAX_PROGRESS_MESSAGE} bytes"),
            ));
        }
        Ok(Progress {
            progress,
            message,
            at: Utc::now(),
        })
    }
}

fn serialize_trace_id<S: serde::Serializer>(
    traceparent: &Option<String>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    traceparent
        .as_deref()
        .and_then(crate::trace::trace_id)
        .serialize(serializer)
}

/// A validated task ready to be inserted: the orchestrator fills every default, so a store only
/// writes what it is given. `run_at: None` means "now, by the store's clock".
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    pub id: Uuid,
    pub task_type: String,
    pub queue: String,
    pub priority: i32,
    pub payload: Value,
    pub max_attempts: i32,
    pub backoff: Backoff,
    pub run_at: Option<DateTime<Utc>>,
    pub timeout_ms: u64,
    pub idempotency_key: Option<String>,
    pub concurrency_key: Option<String>,
    pub concurrency_limit: Option<i32>,
    pub correlation_id: Option<String>,
    pub created_by: Option<String>,
    /// See [`Task::share_key`]; set by the task service, never by the body.
    pub share_key: Option<String>,
    /// See [`Task::traceparent`]; set by the orchestrator from the creating span.
    pub traceparent: Option<String>,
}

/// What a client sends to create a task (`POST /v1/tasks`, and the WebSocket `task.create` op).
/// Unknown fields are refused so that a typo never silently changes behaviour.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTask {
    /// The task type, e.g. `noop`, `echo`, `http.request`.
    #[serde(rename = "type")]
    pub task_type: String,
    /// Queue name (default `default`).
    #[serde(default)]
    pub queue: Option<String>,
    /// Higher runs first (default 0).
    #[serde(default)]
    pub priority: Option<i32>,
    /// Input for the handler (default `{}`).
    #[serde(default)]
    pub payload: Option<Value>,
    /// Attempts before the task is `dead` (default 3).
    #[serde(default)]
    pub max_attempts: Option<i32>,
    #[serde(default)]
    pub backoff: Option<Backoff>,
    /// Do not run before this instant (RFC 3339).
    #[serde(default)]
    pub run_at: Option<DateTime<Utc>>,
    /// Do not run before this many milliseconds from now (alternative to `run_at`).
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// Per-attempt time limit; the handler is cancelled when it passes.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// A second create with the same key returns the first task.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Tasks sharing this key run at most `concurrency_limit` at once.
    #[serde(default)]
    pub concurrency_key: Option<String>,
    #[serde(default)]
    pub concurrency_limit: Option<i32>,
    /// Defaults to the request id of the call that created the task.
    #[serde(default)]
    pub correlation_id: Option<String>,
}

/// Limits applied when validating a [`CreateTask`].
#[derive(Debug, Clone, Copy)]
pub struct TaskDefaults {
    pub max_attempts: i32,
    pub timeout_ms: u64,
    pub backoff: Backoff,
}

impl Default for TaskDefaults {
    fn default() -> Self {
        TaskDefaults {
            max_attempts: 3,
            timeout_ms: 300_000,
            backoff: Backoff::default(),
        }
    }
}

/// The smallest UUIDv7 of the given instant: every task created before `at` has a smaller id.
pub fn first_id_at(at: DateTime<Utc>) -> Uuid {
    let ms = at.timestamp_millis().max(0) as u64;
    Uuid::from_u128(((ms as u128) << 80) | (0x7u128 << 76) | (0b10u128 << 62))
}

pub const MAX_KEY_LEN: usize = 255;
pub const MAX_ATTEMPTS_LIMIT: i32 = 1_000;
pub const MAX_TIMEOUT_MS: u64 = 7 * 24 * 3_600_000;
/// How far ahead a task may be scheduled (`delay_ms`, or `run_at` from now): 52 weeks.
pub const MAX_DELAY_MS: u64 = MAX_TIMEOUT_MS * 52;

/// How a key (`idempotency_key`, `concurrency_key`) of a task with a share key is stored:
/// `{share_key}/{key}`, in its creator's own namespace, so that two users' keys never meet and
/// no user reaches the keys the hub uses itself (`hook:…`, `discord-followup:…`: their prefix
/// ends in `:` before any `/`, and a subject never starts with one of them). Keys of operators,
/// admins and the hub itself are stored as given (global: they may share one on purpose).
pub fn scoped_key(share_key: Option<&str>, key: &str) -> String {
    match share_key {
        Some(share) => format!("{share}/{key}"),
        None => key.to_owned(),
    }
}

/// The key as its creator gave it: [`scoped_key`] undone.
pub fn client_key(share_key: Option<&str>, stored: String) -> String {
    match share_key.and_then(|share| stored.strip_prefix(share)?.strip_prefix('/')) {
        Some(key) => key.to_owned(),
        None => stored,
    }
}

/// A rejected create request: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidTask {
    pub field: &'static str,
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> InvalidTask {
    InvalidTask {
        field,
        reason: reason.into(),
    }
}

fn check_key(field: &'static str, value: &Option<String>) -> Result<(), InvalidTask> {
    match value {
        Some(v) if v.is_empty() => Err(invalid(field, "must not be empty")),
        Some(v) if v.len() > MAX_KEY_LEN => Err(invalid(
            field,
            format!("must be at most {MAX_KEY_LEN} bytes"),
        )),
        _ => Ok(()),
    }
}

impl CreateTask {
    /// Checks every field and fills the defaults. `now` resolves `delay_ms`.
    pub fn validate(
        self,
        defaults: &TaskDefaults,
        now: DateTime<Utc>,
    ) -> Result<NewTask, InvalidTask> {
        if self.task_type.trim().is_empty() {
            return Err(invalid("type", "must not be empty"));
        }
        if self.task_type.len() > MAX_KEY_LEN {
            return Err(invalid(
                "type",
                format!("must be at most {MAX_KEY_LEN} bytes"),
            ));
        }
        let queue = self.queue.unwrap_or_else(|| "default".to_owned());
        check_key("queue", &Some(queue.clone()))?;
        check_key("idempotency_key", &self.idempotency_key)?;
        check_key("concurrency_key", &self.concurrency_key)?;
        check_key("correlation_id", &self.correlation_id)?;

        let max_attempts = self.max_attempts.unwrap_or(defaults.max_attempts);
        if !(1..=MAX_ATTEMPTS_LIMIT).contains(&max_attempts) {
            return Err(invalid(
                "max_attempts",
                format!("must be between 1 and {MAX_ATTEMPTS_LIMIT}"),
            ));
        }
        let backoff = self.backoff.unwrap_or(defaults.backoff);
        if backoff.max_ms < backoff.base_ms {
            return Err(invalid("backoff", "max_ms must be at least base_ms"));
        }
        if backoff.max_ms > MAX_TIMEOUT_MS {
            return Err(invalid(
                "backoff",
                format!("max_ms must be at most {MAX_TIMEOUT_MS}"),
            ));
        }
        let timeout_ms = self.timeout_ms.unwrap_or(defaults.timeout_ms);
        if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
            return Err(invalid(
                "timeout_ms",
                format!("must be between 1 and {MAX_TIMEOUT_MS}"),
            ));
        }
        let run_at = match (self.run_at, self.delay_ms) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "delay_ms",
                    "give either run_at or delay_ms, not both",
                ));
            }
            (Some(at), None) if at > now + chrono::Duration::milliseconds(MAX_DELAY_MS as i64) => {
                return Err(invalid("run_at", "must be at most one year from now"));
            }
            (Some(at), None) => Some(at),
            (None, Some(ms)) if ms > MAX_DELAY_MS => {
                return Err(invalid("delay_ms", "must be at most one year"));
            }
            (None, Some(0)) | (None, None) => None,
            (None, Some(ms)) => Some(now + chrono::Duration::milliseconds(ms as i64)),
        };
        let concurrency_limit = match (&self.concurrency_key, self.concurrency_limit) {
            (None, Some(_)) => {
                return Err(invalid(
                    "concurrency_limit",
                    "needs a concurrency_key to apply to",
                ));
            }
            (Some(_), None) => Some(1),
            (Some(_), Some(limit)) if limit < 1 => {
                return Err(invalid("concurrency_limit", "must be at least 1"));
            }
            (_, limit) => limit,
        };
        Ok(NewTask {
            id: Uuid::now_v7(),
            task_type: self.task_type,
            queue,
            priority: self.priority.unwrap_or(0),
            payload: self
                .payload
                .unwrap_or_else(|| Value::Object(Default::default())),
            max_attempts,
            backoff,
            run_at,
            timeout_ms,
            idempotency_key: self.idempotency_key,
            concurrency_key: self.concurrency_key,
            concurrency_limit,
            correlation_id: self.correlation_id,
            created_by: None,
            share_key: None,
            traceparent: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(task_type: &str) -> CreateTask {
        CreateTask {
            task_type: task_type.into(),
            ..Default::default()
        }
    }

    #[test]
    fn fills_defaults() {
        let task = create("noop")
            .validate(&TaskDefaults::default(), Utc::now())
            .unwrap();
        assert_eq!(task.queue, "default");
        assert_eq!(task.max_attempts, 3);
        assert_eq!(task.backoff, Backoff::default());
        assert_eq!(task.run_at, None);
        assert_eq!(task.payload, serde_json::json!({}));
    }

    #[test]
    fn rejects_limit_without_key() {
        let mut request = create("noop");
        request.concurrency_limit = Some(2);
        let err = request
            .validate(&TaskDefaults::default(), Utc::now())
            .unwrap_err();
        assert_eq!(err.field, "concurrency_limit");
    }

    #[test]
    fn key_without_limit_means_one() {
        let mut request = create("noop");
        request.concurrency_key = Some("k".into());
        let task = request
            .validate(&TaskDefaults::default(), Utc::now())
            .unwrap();
        assert_eq!(task.concurrency_limit, Some(1));
    }

    #[test]
    fn rejects_bad_backoff_and_attempts() {
        let mut request = create("noop");
        request.backoff = Some(Backoff {
            base_ms: 10,
            max_ms: 5,
        });
        assert_eq!(
            request
                .validate(&TaskDefaults::default(), Utc::now())
                .unwrap_err()
                .field,
            "backoff"
        );
        let mut request = create("noop");
        request.max_attempts = Some(0);
        assert_eq!(
            request
                .validate(&TaskDefaults::default(), Utc::now())
                .unwrap_err()
                .field,
            "max_attempts"
        );
    }

    #[test]
    fn delay_becomes_run_at() {
        let now = Utc::now();
        let mut request = create("noop");
        request.delay_ms = Some(1500);
        let task = request.validate(&TaskDefaults::default(), now).unwrap();
        assert_eq!(
            task.run_at,
            Some(now + chrono::Duration::milliseconds(1500))
        );
    }

    #[test]
    fn run_at_has_the_same_horizon_as_delay_ms() {
        let now = Utc::now();
        let horizon = chrono::Duration::milliseconds(MAX_DELAY_MS as i64);
        let mut request = create("noop");
        request.run_at = Some(now + horizon);
        assert!(request.validate(&TaskDefaults::default(), now).is_ok());
        let mut request = create("noop");
        request.run_at = Some(now + horizon + chrono::Duration::milliseconds(1));
        let refused = request.validate(&TaskDefaults::default(), now).unwrap_err();
        assert_eq!(refused.field, "run_at");
        // Year 9999, as a client once sent.
        let mut request = create("noop");
        request.run_at = "9999-01-01T00:00:00Z".parse().ok();
        assert!(request.validate(&TaskDefaults::default(), now).is_err());
        // The past is fine: the task runs at once.
        let mut request = create("noop");
        request.run_at = Some(now - chrono::Duration::days(3650));
        assert!(request.validate(&TaskDefaults::default(), now).is_ok());
    }

    #[test]
    fn first_id_at_bounds_ids_created_before() {
        let before = Uuid::now_v7();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let bound = first_id_at(Utc::now());
        std::thread::sleep(std::time::Duration::from_millis(2));
        let after = Uuid::now_v7();
        assert!(before < bound && bound < after);
        assert_eq!(bound.get_version_num(), 7);
    }

    #[test]
    fn scoped_keys_round_trip_and_keep_global_keys_as_given() {
        let stored = scoped_key(Some("alice"), "deploy:web");
        assert_eq!(stored, "alice/deploy:web");
        assert_eq!(client_key(Some("alice"), stored), "deploy:web");
        assert_eq!(scoped_key(None, "deploy:web"), "deploy:web");
        assert_eq!(client_key(None, "alice/x".into()), "alice/x");
        // A user cannot reach a hook's key: it lands in the user's namespace.
        assert_ne!(
            scoped_key(Some("mallory"), "hook:gh:d-1:0"),
            "hook:gh:d-1:0"
        );
    }

    #[test]
    fn status_round_trips_through_its_name() {
        for status in TaskStatus::ALL {
            assert_eq!(status.as_str().parse::<TaskStatus>().unwrap(), status);
        }
        assert!("nope".parse::<TaskStatus>().is_err());
    }
}

#[cfg(test)]
mod properties {
    //! Whatever JSON a client sends, decoding and validating a task either fails with an error
    //! or yields a task within every documented bound; it never panics.

    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            ".{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map(".{0,8}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Bodies that look like task creates: the known fields with arbitrary values.
    fn create_body() -> impl Strategy<Value = Value> {
        (
            prop_oneof![".{0,300}".prop_map(Value::from), json_value()],
            json_value(),
            prop_oneof![any::<i64>().prop_map(Value::from), json_value()],
            prop_oneof![any::<u64>().prop_map(Value::from), json_value()],
            prop_oneof![
                (any::<u64>(), any::<u64>()).prop_map(|(b, m)| json!({"base_ms": b, "max_ms": m})),
                json_value()
            ],
            prop_oneof![any::<u64>().prop_map(Value::from), json_value()],
            prop_oneof![".{0,300}".prop_map(Value::from), json_value()],
            prop_oneof![any::<i32>().prop_map(Value::from), json_value()],
        )
            .prop_map(
                |(t, payload, attempts, timeout, backoff, delay, key, limit)| {
                    json!({
                        "type": t, "payload": payload, "max_attempts": attempts,
                        "timeout_ms": timeout, "backoff": backoff, "delay_ms": delay,
                        "concurrency_key": key, "concurrency_limit": limit,
                    })
                },
            )
    }

    proptest! {
        #[test]
        fn arbitrary_json_never_panics(body in json_value()) {
            if let Ok(request) = serde_json::from_value::<CreateTask>(body) {
                let _ = request.validate(&TaskDefaults::default(), Utc::now());
            }
        }

        #[test]
        fn valid_tasks_stay_within_bounds(body in create_body()) {
            let Ok(request) = serde_json::from_value::<CreateTask>(body) else { return Ok(()) };
            let Ok(task) = request.validate(&TaskDefaults::default(), Utc::now()) else {
                return Ok(());
            };
            prop_assert!(!task.task_type.trim().is_empty() && task.task_type.len() <= MAX_KEY_LEN);
            prop_assert!((1..=MAX_ATTEMPTS_LIMIT).contains(&task.max_attempts));
            prop_assert!((1..=MAX_TIMEOUT_MS).contains(&task.timeout_ms));
            prop_assert!(task.backoff.base_ms <= task.backoff.max_ms);
            prop_assert!(task.backoff.max_ms <= MAX_TIMEOUT_MS);
            prop_assert_eq!(task.concurrency_limit.is_some(), task.concurrency_key.is_some());
            prop_assert!(task.concurrency_limit.is_none_or(|l| l >= 1));
        }
    }
}
