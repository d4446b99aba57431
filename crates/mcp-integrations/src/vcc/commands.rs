//! `vcc.build` and `vcc.deploy`: the configured command line run in a project's folder as a
//! task. Output is published as it comes on channel `vcc.build:{task id}` (events
//! `vcc.build.output` with a batch of lines, then `vcc.build.finished`), and the last lines are
//! kept in the task's result, or in its error's details when the command fails. Cancelling the
//! task, or its timeout, kills the command's whole process tree. A command holds its project's
//! lock while it runs: package changes wait for it, another command is retried later.

use super::build::{self, BuildError, CommandSpec, Stream};
use super::{VccError, VccService};
use async_trait::async_trait;
use mcp_core::events::{Event, EventBus};
use mcp_core::{Handler, HandlerError, TaskContext};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

/// Runs the build command.
pub const BUILD_TASK: &str = "vcc.build";
/// Runs the deploy command.
pub const DEPLOY_TASK: &str = "vcc.deploy";
/// The event carrying a batch of output lines.
pub const OUTPUT_EVENT: &str = "vcc.build.output";
/// The last event of a run.
pub const FINISHED_EVENT: &str = "vcc.build.finished";
/// Most lines in one output event: a chatty command is published in batches, not line by line.
const LINES_PER_EVENT: usize = 500;

/// The channel of a run's output.
pub fn output_channel(task_id: &str) -> String {
    format!("vcc.build:{task_id}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandKind {
    Build,
    Deploy,
}

impl CommandKind {
    pub fn task_type(self) -> &'static str {
        match self {
            CommandKind::Build => BUILD_TASK,
            CommandKind::Deploy => DEPLOY_TASK,
        }
    }

    fn name(self) -> &'static str {
        match self {
            CommandKind::Build => "build",
            CommandKind::Deploy => "deploy",
        }
    }

    fn config_key(self) -> &'static str {
        match self {
            CommandKind::Build => "vcc_build_command",
            CommandKind::Deploy => "vcc_deploy_command",
        }
    }
}

/// `{"project": "<id>"}`: the command line is the configuration's, never the caller's.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandPayload {
    project: String,
}

/// The handler of `vcc.build` or `vcc.deploy`.
pub struct CommandHandler {
    pub kind: CommandKind,
    pub service: VccService,
    pub events: Arc<dyn EventBus>,
}

impl CommandHandler {
    fn argv(&self) -> &[String] {
        let config = self.service.config();
        match self.kind {
            CommandKind::Build => &config.build_command,
            CommandKind::Deploy => &config.deploy_command,
        }
    }

    fn not_configured(&self) -> String {
        format!(
            "no {} command is configured ({})",
            self.kind.name(),
            self.kind.config_key()
        )
    }
}

fn vcc_failure(e: VccError) -> HandlerError {
    let error = if e.is_retryable() {
        HandlerError::retryable(e.to_string())
    } else {
        HandlerError::permanent(e.to_string())
    };
    error.with_details(e.details())
}

#[async_trait]
impl Handler for CommandHandler {
    fn validate(&self, payload: &Value) -> Result<(), String> {
        let payload = CommandPayload::deserialize(payload).map_err(|e| e.to_string())?;
        if payload.project.is_empty() {
            return Err("project: the id of a VCC project is required".into());
        }
        if self.argv().is_empty() {
            return Err(self.not_configured());
        }
        Ok(())
    }

    fn default_timeout_ms(&self) -> Option<u64> {
        Some(self.service.config().command_timeout.as_millis() as u64)
    }

    async fn run(&self, ctx: TaskContext) -> Result<Value, HandlerError> {
        let payload = CommandPayload::deserialize(&ctx.task.payload)
            .map_err(|e| HandlerError::permanent(e.to_string()))?;
        if self.argv().is_empty() {
            return Err(HandlerError::permanent(self.not_configured())
                .with_details(json!({"code": "command_not_configured"})));
        }
        let project = self
            .service
            .project(&payload.project)
            .await
            .map_err(vcc_failure)?;
        if let Some(error) = &project.error {
            return Err(HandlerError::permanent(format!(
                "project `{}` cannot be read: {error}",
                project.id
            ))
            .with_details(json!({"code": "project_unreadable"})));
        }
        // Held until the command ends: no package change or other command on this project
        // meanwhile.
        let Some(_busy) = self.service.try_lock_project(&project.id) else {
            return Err(HandlerError::retryable(format!(
                "project `{}` is busy: a build, deploy or package change runs on it",
                project.id
            ))
            .with_details(json!({"code": "project_busy"})));
        };
        let task_id = ctx.task.id.to_string();
        let vars = BTreeMap::from([
            ("project_path", project.path.clone()),
            ("project_name", project.name.clone()),
            ("task_id", task_id.clone()),
        ]);
        // The orchestrator's timeout would cancel the run without the output's tail; the
        // command's own timeout, a little earlier (room for the SIGTERM grace), keeps it.
        let margin = (ctx.task.timeout_ms / 4).min(3000);
        let timeout = Duration::from_millis(ctx.task.timeout_ms.saturating_sub(margin).max(1));
        let spec = CommandSpec::from_argv(self.argv(), &vars, timeout)
            .map_err(|e| HandlerError::permanent(e.to_string()).with_details(failure(&e)))?;

        let channel = output_channel(&task_id);
        let (output, publisher) = spawn_publisher(self.events.clone(), channel.clone());
        let outcome = build::run_recorded(
            &spec,
            std::path::Path::new(&project.path),
            ctx.cancel.clone(),
            Some(self.service.ledger()),
            move |stream, line| output.line(stream, line),
        )
        .await;
        // Every output event goes out before the finished one (and before the task's own).
        let dropped = publisher.await.unwrap_or_default();
        let mut finished = match &outcome {
            Ok(run) => {
                json!({"project": project.id, "exit_code": run.exit_code, "lines": run.lines})
            }
            Err(e) => json!({"project": project.id, "error": failure(e)}),
        };
        finished["dropped"] = json!(dropped);
        publish(&*self.events, &channel, FINISHED_EVENT, finished).await;
        match outcome {
            Ok(run) => Ok(json!({
                "project": project.id,
                "command": self.kind.name(),
                "exit_code": run.exit_code,
                "lines": run.lines,
                "duration_ms": run.duration_ms,
                "tail": run.tail,
            })),
            Err(e) => {
                let details = failure(&e);
                let message = match &e {
                    BuildError::TimedOut { after, .. } => format!(
                        "the {} command did not finish within {} s and was killed",
                        self.kind.name(),
                        after.as_secs()
                    ),
                    other => other.to_string(),
                };
                // A command that fails does so again; one that hung may not (the task's
                // max_attempts decide), and a cancelled run is the orchestrator's business.
                let retryable = matches!(
                    e,
                    BuildError::TimedOut { .. } | BuildError::Cancelled { .. }
                );
                let error = if retryable {
                    HandlerError::retryable(message)
                } else {
                    HandlerError::permanent(message)
                };
                Err(error.with_details(details))
            }
        }
    }
}

/// `{"code", "exit_code"?, "signal"?, "tail"}` of a failed run.
fn failure(e: &BuildError) -> Value {
    let mut details = json!({"code": e.code(), "tail": e.tail()});
    if let BuildError::Failed {
        exit_code, signal, ..
    } = e
    {
        details["exit_code"] = json!(exit_code);
        details["signal"] = json!(signal);
    }
    details
}

/// Lines waiting to be published at most; beyond, lines are counted as dropped (the task's
/// `tail` keeps the last ones whatever happens), so a command that writes faster than the bus
/// publishes cannot grow the hub's memory.
const MAX_PENDING_LINES: usize = 10_000;

/// The sending side of a run's output: [`OutputSender::line`] never waits.
pub(crate) struct OutputSender {
    tx: mpsc::Sender<(Stream, String)>,
    dropped: Arc<AtomicU64>,
}

impl OutputSender {
    pub(crate) fn line(&self, stream: Stream, line: &str) {
        if self.tx.try_send((stream, line.to_owned())).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A task that publishes lines in batches: whatever arrived while the previous batch was being
/// published goes out together, with `"dropped"` counting the lines that did not fit in the
/// buffer meanwhile. Ends when the sender is gone and the lines are out.
pub(crate) fn spawn_publisher(
    events: Arc<dyn EventBus>,
    channel: String,
) -> (OutputSender, tokio::task::JoinHandle<u64>) {
    let (tx, mut rx) = mpsc::channel::<(Stream, String)>(MAX_PENDING_LINES);
    let dropped = Arc::new(AtomicU64::new(0));
    let counter = dropped.clone();
    let handle = tokio::spawn(async move {
        let mut batch = Vec::new();
        let mut dropped_in_all = 0;
        while rx.recv_many(&mut batch, LINES_PER_EVENT).await > 0 {
            let lines: Vec<Value> = batch
                .drain(..)
                .map(|(stream, line)| json!({"stream": stream, "line": line}))
                .collect();
            let mut data = json!({"lines": lines});
            let dropped = counter.swap(0, Ordering::Relaxed);
            if dropped > 0 {
                data["dropped"] = json!(dropped);
                dropped_in_all += dropped;
            }
            publish(&*events, &channel, OUTPUT_EVENT, data).await;
        }
        dropped_in_all + counter.swap(0, Ordering::Relaxed)
    });
    (OutputSender { tx, dropped }, handle)
}

async fn publish(events: &dyn EventBus, channel: &str, event_type: &str, data: Value) {
    let event = Arc::new(Event::new(event_type, data, None));
    if let Err(e) = events.publish(channel, event).await {
        tracing::warn!(channel, error = %e, "cannot publish build output");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use mcp_core::events::{BusConfig, BusError, LocalBus, Recovery, StreamPosition, Subscription};
    use std::time::Duration;

    /// The in-process bus, taking its time over every publish.
    struct SlowBus(LocalBus);

    #[async_trait]
    impl EventBus for SlowBus {
        async fn publish(
            &self,
            channel: &str,
            event: Arc<Event>,
        ) -> Result<StreamPosition, BusError> {
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.0.publish(channel, event).await
        }
        async fn subscribe(&self, channel: &str) -> Result<Subscription, BusError> {
            self.0.subscribe(channel).await
        }
        async fn recover(
            &self,
            channel: &str,
            since: &StreamPosition,
        ) -> Result<Recovery, BusError> {
            self.0.recover(channel, since).await
        }
        async fn position(&self, channel: &str) -> Result<StreamPosition, BusError> {
            self.0.position(channel).await
        }
    }

    #[tokio::test]
    async fn output_faster_than_the_bus_is_dropped_and_counted_not_buffered_without_end() {
        let bus = Arc::new(SlowBus(LocalBus::new(BusConfig::default())));
        let mut events = bus.subscribe("vcc.build:t").await.unwrap();
        let (output, publisher) = spawn_publisher(bus.clone(), "vcc.build:t".into());
        let written = (MAX_PENDING_LINES * 3) as u64;
        for i in 0..written {
            output.line(Stream::Stdout, &format!("line {i}"));
        }
        drop(output);
        let dropped = publisher.await.unwrap();
        assert!(dropped > 0, "a slow bus makes the buffer overflow");
        let (mut published, mut reported) = (0, 0);
        while let Ok(delivery) = events.try_recv() {
            published += delivery.event.data["lines"].as_array().unwrap().len() as u64;
            reported += delivery.event.data["dropped"].as_u64().unwrap_or(0);
        }
        assert_eq!(reported, dropped, "every dropped line is reported");
        assert_eq!(
            published + dropped,
            written,
            "each line is published or counted"
        );
    }
}
