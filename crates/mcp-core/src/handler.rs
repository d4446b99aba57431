//! Handlers run tasks. A handler is registered for a task type; the built-in ones (`noop`,
//! `echo`, `sleep`, `fail`) live here because they need no I/O, the rest come from the
//! integration layer.

use crate::task::Task;
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What a handler gets: the task (with its payload and attempt number) and a token that fires
/// when the task is cancelled, its lease is lost, or the node shuts down. A handler doing long
/// work should watch it; the orchestrator drops the handler's future when it fires anyway.
#[derive(Debug, Clone)]
pub struct TaskContext {
    pub task: Arc<Task>,
    pub cancel: CancellationToken,
}

/// Where a handler's reports go: the orchestrator running it. Set for the duration of each
/// attempt (a task-local, so that contexts built elsewhere, as tests do, need no field).
#[async_trait]
pub trait TaskReporter: Send + Sync {
    /// `Ok(false)`: the task is not running any more.
    async fn progress(
        &self,
        id: uuid::Uuid,
        progress: crate::task::Progress,
    ) -> Result<bool, String>;

    /// The outcomes of the workflow dependencies of the running task `id`, by key; `None`
    /// when it has none (or they cannot be read: logged).
    async fn parents(&self, id: uuid::Uuid) -> Option<Value>;

    /// Adds tasks to the workflow of the running task `parent`.
    async fn add_tasks(
        &self,
        parent: Arc<Task>,
        tasks: Vec<crate::workflow::WorkflowTaskSpec>,
    ) -> Result<Vec<Task>, String>;
}

/// What adds a running task's children to its workflow: the workflow service, given to the
/// orchestrator when the node is wired (`Orchestrator::serve_children`).
#[async_trait]
pub trait WorkflowChildren: Send + Sync {
    async fn add_children(
        &self,
        parent: &Task,
        tasks: Vec<crate::workflow::WorkflowTaskSpec>,
    ) -> Result<Vec<Task>, String>;
}

tokio::task_local! {
    pub(crate) static REPORTER: Arc<dyn TaskReporter>;
}

impl TaskContext {
    /// The outcomes of the task's workflow dependencies by key (`{"build": {"status":
    /// "succeeded", "result": …}}`); `None` outside a workflow or for a task without any.
    /// Read when asked (most handlers never ask: a fan-in of 10,000 tasks would read all of
    /// them for each attempt), unless the task came with them (`task.parents`).
    pub async fn parents(&self) -> Option<Value> {
        if let Some(parents) = &self.task.parents {
            return Some(parents.clone());
        }
        self.task.workflow_id?;
        let reporter = REPORTER.try_with(|r| r.clone()).ok()?;
        reporter.parents(self.task.id).await
    }

    /// Reports how far the attempt got: `progress` from 0 to 1 and an optional message. Stored
    /// on the task and published as `task.progress` on `task:{id}`, at most 10 a second (a
    /// report within that is kept as the latest and written when the interval ends). Reports
    /// made outside an attempt's own future (a task it spawned) are refused.
    pub async fn progress(&self, progress: f64, message: Option<String>) -> Result<(), String> {
        let report = crate::task::Progress::new(progress, message).map_err(|e| e.to_string())?;
        let reporter = REPORTER
            .try_with(|r| r.clone())
            .map_err(|_| "no orchestrator runs this attempt".to_owned())?;
        match reporter.progress(self.task.id, report).await? {
            true => Ok(()),
            false => Err("the task is not running".to_owned()),
        }
    }

    /// Adds tasks to this task's workflow (its children): each as in a workflow's create body,
    /// whose `depends_on` may name the workflow's keys. They belong to the task's creator and
    /// are held to its rules as its own creates are (quota, a tenant's priority ceiling,
    /// longest timeout, share key and namespace). Errors say why (not in a workflow, a bad
    /// graph or task, a rule, the workflow finished).
    pub async fn add_workflow_tasks(
        &self,
        tasks: Vec<crate::workflow::WorkflowTaskSpec>,
    ) -> Result<Vec<Task>, String> {
        let reporter = REPORTER
            .try_with(|r| r.clone())
            .map_err(|_| "no orchestrator runs this attempt".to_owned())?;
        reporter.add_tasks(self.task.clone(), tasks).await
    }
}

/// A failed attempt. `retryable: false` makes the task `dead` at once.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct HandlerError {
    pub message: String,
    pub retryable: bool,
    pub details: Option<Value>,
    /// A remote service asked to be called again after this long (a 429 with `Retry-After`):
    /// the task is rescheduled for then without spending the attempt.
    pub retry_after: Option<Duration>,
}

impl HandlerError {
    pub fn retryable(message: impl Into<String>) -> Self {
        HandlerError {
            message: message.into(),
            retryable: true,
            details: None,
            retry_after: None,
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        HandlerError {
            message: message.into(),
            retryable: false,
            details: None,
            retry_after: None,
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// Reschedules the task `after` from now without spending the attempt (bounded by
    /// [`MAX_RETRY_AFTER`]).
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after.min(MAX_RETRY_AFTER));
        self
    }
}

/// The longest a `retry_after` may put a task off: one day.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Checks a payload when the task is created, so bad input is refused with a 4xx instead of
    /// failing later. The default accepts anything.
    fn validate(&self, _payload: &Value) -> Result<(), String> {
        Ok(())
    }

    /// Checks the destinations a payload names against the outbound policy when the task is
    /// created, so a literal forbidden address is refused with `destination_forbidden` (a name
    /// is checked when the handler resolves it). The default names none.
    fn check_destination(&self, _payload: &Value) -> Result<(), crate::outbound::Forbidden> {
        Ok(())
    }

    /// The `timeout_ms` of tasks of this type created without one, when the node-wide default
    /// does not fit (a Unity build takes far longer than an HTTP call). `None`: the default.
    fn default_timeout_ms(&self) -> Option<u64> {
        None
    }

    /// Runs one attempt. The returned value becomes the task's `result`.
    async fn run(&self, ctx: TaskContext) -> Result<Value, HandlerError>;
}

/// The task types a node can run, and how.
#[derive(Clone, Default)]
pub struct HandlerRegistry {
    handlers: HashMap<String, Arc<dyn Handler>>,
}

impl HandlerRegistry {
    /// A registry with the built-in types: `noop`, `echo`, `sleep`, `fail`, `collect`.
    pub fn with_builtins() -> Self {
        let mut registry = HandlerRegistry::default();
        registry.register("noop", Noop);
        registry.register("echo", Echo);
        registry.register("sleep", Sleep);
        registry.register("fail", Fail);
        registry.register("collect", Collect);
        registry
    }

    pub fn register(&mut self, task_type: impl Into<String>, handler: impl Handler) {
        self.handlers.insert(task_type.into(), Arc::new(handler));
    }

    pub fn get(&self, task_type: &str) -> Option<&Arc<dyn Handler>> {
        self.handlers.get(task_type)
    }

    /// Registered task types, sorted.
    pub fn types(&self) -> Vec<String> {
        let mut types: Vec<String> = self.handlers.keys().cloned().collect();
        types.sort();
        types
    }
}

fn parse<T: for<'de> Deserialize<'de>>(payload: &Value) -> Result<T, String> {
    T::deserialize(payload).map_err(|e| e.to_string())
}

/// Succeeds at once with no result.
struct Noop;

#[async_trait]
impl Handler for Noop {
    async fn run(&self, _ctx: TaskContext) -> Result<Value, HandlerError> {
        Ok(Value::Null)
    }
}

/// Succeeds with its payload as the result.
struct Echo;

#[async_trait]
impl Handler for Echo {
    async fn run(&self, ctx: TaskContext) -> Result<Value, HandlerError> {
        Ok(ctx.task.payload.clone())
    }
}

/// Sleeps `{"ms": N}` milliseconds, then succeeds.
struct Sleep;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SleepPayload {
    ms: u64,
    /// Report progress this many times, evenly over the sleep (`TaskContext::progress`).
    #[serde(default)]
    progress_steps: u32,
}

/// Most progress reports one `sleep` makes.
const MAX_PROGRESS_STEPS: u32 = 10_000;

const MAX_SLEEP_MS: u64 = 24 * 3_600_000;

#[async_trait]
impl Handler for Sleep {
    fn validate(&self, payload: &Value) -> Result<(), String> {
        let p: SleepPayload = parse(payload)?;
        if p.ms > MAX_SLEEP_MS {
            return Err(format!("ms must be at most {MAX_SLEEP_MS}"));
        }
        if p.progress_steps > MAX_PROGRESS_STEPS {
            return Err(format!(
                "progress_steps must be at most {MAX_PROGRESS_STEPS}"
            ));
        }
        Ok(())
    }

    async fn run(&self, ctx: TaskContext) -> Result<Value, HandlerError> {
        let p: SleepPayload = parse(&ctx.task.payload).map_err(HandlerError::permanent)?;
        let steps = p.progress_steps.max(1);
        let step = Duration::from_millis(p.ms) / steps;
        for i in 1..=steps {
            tokio::select! {
                _ = tokio::time::sleep(step) => {}
                _ = ctx.cancel.cancelled() => return Err(HandlerError::retryable("interrupted")),
            }
            if p.progress_steps > 0 {
                let fraction = f64::from(i) / f64::from(steps);
                let message = format!("step {i} of {steps}");
                if let Err(e) = ctx.progress(fraction, Some(message)).await {
                    tracing::debug!(error = %e, "progress not recorded");
                }
            }
        }
        Ok(json!({"slept_ms": p.ms}))
    }
}

/// Succeeds with its workflow parents' outcomes (`{"build": {"status", "result"}}`; `{}`
/// without any): the fan-in step of a workflow that gathers what came before.
struct Collect;

#[async_trait]
impl Handler for Collect {
    async fn run(&self, ctx: TaskContext) -> Result<Value, HandlerError> {
        Ok(ctx.parents().await.unwrap_or_else(|| json!({})))
    }
}

/// Fails the first `{"times": N}` attempts (every attempt when `times` is absent), then succeeds.
struct Fail;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FailPayload {
    times: Option<u32>,
    #[serde(default)]
    message: Option<String>,
}

#[async_trait]
impl Handler for Fail {
    fn validate(&self, payload: &Value) -> Result<(), String> {
        parse::<FailPayload>(payload).map(|_| ())
    }

    async fn run(&self, ctx: TaskContext) -> Result<Value, HandlerError> {
        let p: FailPayload = parse(&ctx.task.payload).map_err(HandlerError::permanent)?;
        let attempt = ctx.task.attempts.max(0) as u32;
        match p.times {
            Some(times) if attempt > times => Ok(json!({"failed_attempts": times})),
            _ => Err(HandlerError::retryable(p.message.unwrap_or_else(|| {
                format!("failing on purpose (attempt {attempt})")
            }))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_validate_their_payloads() {
        let registry = HandlerRegistry::with_builtins();
        let sleep = registry.get("sleep").unwrap();
        assert!(sleep.validate(&json!({"ms": 10})).is_ok());
        assert!(sleep.validate(&json!({})).is_err());
        assert!(sleep.validate(&json!({"ms": "ten"})).is_err());
        let fail = registry.get("fail").unwrap();
        assert!(fail.validate(&json!({"times": 2})).is_ok());
        assert!(fail.validate(&json!({"times": -1})).is_err());
        assert_eq!(
            registry.types(),
            vec!["collect", "echo", "fail", "noop", "sleep"]
        );
    }

    /// Answers `parents` for one task, and counts how often it was asked.
    struct Parents(std::sync::atomic::AtomicUsize);

    #[async_trait]
    impl TaskReporter for Parents {
        async fn progress(&self, _: uuid::Uuid, _: crate::task::Progress) -> Result<bool, String> {
            Ok(true)
        }
        async fn parents(&self, _: uuid::Uuid) -> Option<Value> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Some(json!({"build": {"status": "succeeded"}}))
        }
        async fn add_tasks(
            &self,
            _: Arc<Task>,
            _: Vec<crate::workflow::WorkflowTaskSpec>,
        ) -> Result<Vec<Task>, String> {
            Ok(Vec::new())
        }
    }

    fn context(task: Task) -> TaskContext {
        TaskContext {
            task: Arc::new(task),
            cancel: CancellationToken::new(),
        }
    }

    #[tokio::test]
    async fn parents_are_read_when_a_workflow_task_asks_for_them() {
        let reporter = Arc::new(Parents(std::sync::atomic::AtomicUsize::new(0)));
        // Serde's `Option` fields are optional: what is absent is `None`.
        let mut task: Task = serde_json::from_value(json!({
            "id": uuid::Uuid::now_v7(), "type": "collect", "queue": "default", "priority": 0,
            "payload": {}, "status": "running", "attempts": 1, "max_attempts": 3,
            "backoff": {"base_ms": 1000, "max_ms": 60000}, "run_at": "2026-12-06T20:00:00Z",
            "timeout_ms": 30000, "created_at": "2026-12-06T20:00:00Z",
        }))
        .unwrap();
        let asked = REPORTER
            .scope(reporter.clone(), context(task.clone()).parents())
            .await;
        // Outside a workflow: nothing to read.
        assert_eq!(asked, None);
        task.workflow_id = Some(uuid::Uuid::now_v7());
        let asked = REPORTER
            .scope(reporter.clone(), context(task.clone()).parents())
            .await;
        assert_eq!(asked, Some(json!({"build": {"status": "succeeded"}})));
        // Handed over with them (as to external workers): not read again.
        task.parents = Some(json!({"lint": {"status": "succeeded"}}));
        let asked = REPORTER
            .scope(reporter.clone(), context(task).parents())
            .await;
        assert_eq!(asked, Some(json!({"lint": {"status": "succeeded"}})));
        assert_eq!(reporter.0.load(std::sync::atomic::Ordering::Relaxed), 1);
    }
}
