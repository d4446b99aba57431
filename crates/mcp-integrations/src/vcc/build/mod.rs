//! Build and deploy commands: one process tree per task, output streamed line by line.
//!
//! A run owns its process group: the command is started as the leader of a new group, and when
//! the run ends — normally, by timeout, by cancellation or because its future was dropped —
//! nothing in that group outlives it. Unity in batch mode starts helpers of its own, so killing
//! only the direct child would leave them running and holding the project open.
//!
//! `process_group` holds that process-group handling; this file starts the command and reads its
//! output.

mod process_group;

use process_group::{ProcessGroup, terminate};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

/// How many of the last output lines a run keeps for its result or error.
pub const TAIL_LINES: usize = 200;
/// Longest output line passed on; the rest of a longer line is dropped.
pub const MAX_LINE_BYTES: usize = 8 * 1024;
/// How long a process group has between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(2);
/// How long, after the command itself exited, its output pipes may stay open (held by processes
/// it left behind) before the rest of its group is terminated.
pub const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// A command ready to run: program, arguments, extra environment and a time limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSpec {
    pub program: String,
    pub args: Vec<String>,
    /// Added to (and overriding) the environment the server runs with.
    pub env: BTreeMap<String, String>,
    pub timeout: Duration,
}

impl CommandSpec {
    /// From a configured argv (first element the program) with placeholders `{project_path}`,
    /// `{project_name}`, `{task_id}` — any `{name}` that is a key of `vars` — replaced in every
    /// element. Unknown placeholders are left as written; values are not expanded again.
    pub fn from_argv(
        argv: &[String],
        vars: &BTreeMap<&str, String>,
        timeout: Duration,
    ) -> Result<CommandSpec, BuildError> {
        let mut expanded = argv.iter().map(|arg| expand(arg, vars));
        let program = expanded
            .next()
            .ok_or_else(|| BuildError::InvalidCommand("the command is empty".into()))?;
        if program.trim().is_empty() {
            return Err(BuildError::InvalidCommand(
                "the program name is empty".into(),
            ));
        }
        Ok(CommandSpec {
            program,
            args: expanded.collect(),
            env: BTreeMap::new(),
            timeout,
        })
    }
}

/// Replaces each `{name}` whose name is a key of `vars`, in one pass.
fn expand(arg: &str, vars: &BTreeMap<&str, String>) -> String {
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after
            .find('}')
            .and_then(|close| vars.get(&after[..close]).map(|value| (value, close)))
        {
            Some((value, close)) => {
                out.push_str(value);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Which output stream a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// A command that ran to completion with exit code 0.
#[derive(Debug, Clone, Serialize)]
pub struct RunOutcome {
    pub exit_code: i32,
    /// Output lines seen, both streams together.
    pub lines: u64,
    /// The last [`TAIL_LINES`] lines, both streams in arrival order.
    pub tail: Vec<String>,
    pub duration_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("invalid command: {0}")]
    InvalidCommand(String),
    #[error("could not start `{program}`: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("command failed ({})", describe_exit(*exit_code, *signal))]
    Failed {
        exit_code: Option<i32>,
        signal: Option<i32>,
        tail: Vec<String>,
    },
    #[error("command timed out after {after:?}")]
    TimedOut { after: Duration, tail: Vec<String> },
    #[error("command cancelled")]
    Cancelled { tail: Vec<String> },
}

fn describe_exit(exit_code: Option<i32>, signal: Option<i32>) -> String {
    match (exit_code, signal) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "no exit code".into(),
    }
}

impl BuildError {
    /// The last output lines before the error; empty when the command never ran.
    pub fn tail(&self) -> &[String] {
        match self {
            BuildError::Failed { tail, .. }
            | BuildError::TimedOut { tail, .. }
            | BuildError::Cancelled { tail } => tail,
            BuildError::InvalidCommand(_) | BuildError::Spawn { .. } => &[],
        }
    }

    /// Stable error code for task results and API errors.
    pub fn code(&self) -> &'static str {
        match self {
            BuildError::InvalidCommand(_) => "invalid_command",
            BuildError::Spawn { .. } => "spawn_failed",
            BuildError::Failed { .. } => "command_failed",
            BuildError::TimedOut { .. } => "command_timed_out",
            BuildError::Cancelled { .. } => "command_cancelled",
        }
    }
}

/// Runs `spec` in `cwd` with stdin closed. Every output line (stdout and stderr, read
/// concurrently, lossy UTF-8, cut at [`MAX_LINE_BYTES`], trailing `\r` removed) goes to `on_line`
/// as it arrives; the last [`TAIL_LINES`] are kept for the outcome or the error.
///
/// On timeout or when `cancel` fires, the whole process group gets SIGTERM, then SIGKILL after
/// [`KILL_GRACE`]. Dropping the returned future kills the group at once. When the command exits
/// on its own, whatever it left behind in its group is terminated the same way (after
/// [`DRAIN_GRACE`] if it still holds the output pipes open).
pub async fn run(
    spec: &CommandSpec,
    cwd: &Path,
    cancel: CancellationToken,
    on_line: impl FnMut(Stream, &str) + Send,
) -> Result<RunOutcome, BuildError> {
    run_recorded(spec, cwd, cancel, None, on_line).await
}

/// [`run`], with the command's process group written in `ledger` while it runs, so that a hub
/// killed meanwhile stops it at its next start.
pub async fn run_recorded(
    spec: &CommandSpec,
    cwd: &Path,
    cancel: CancellationToken,
    ledger: Option<&super::ledger::ProcessLedger>,
    mut on_line: impl FnMut(Stream, &str) + Send,
) -> Result<RunOutcome, BuildError> {
    if !cwd.is_dir() {
        return Err(BuildError::InvalidCommand(format!(
            "working directory {} is not a directory",
            cwd.display()
        )));
    }
    if cancel.is_cancelled() {
        return Err(BuildError::Cancelled { tail: vec![] });
    }
    let started = Instant::now();
    let mut command = Command::new(&spec.program);
    command
        .args(&spec.args)
        .envs(&spec.env)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    #[cfg(unix)]
    command.process_group(0);
    let mut child = command.spawn().map_err(|source| BuildError::Spawn {
        program: spec.program.clone(),
        source,
    })?;
    let mut group = ProcessGroup::of(&child);
    let _recorded = ledger
        .zip(child.id())
        .map(|(ledger, pgid)| ledger.record(pgid));
    let mut stdout = child
        .stdout
        .take()
        .map(|s| LineReader::new(BufReader::new(s)));
    let mut stderr = child
        .stderr
        .take()
        .map(|s| LineReader::new(BufReader::new(s)));
    let mut tail = Tail::default();

    let deadline = tokio::time::sleep(spec.timeout);
    tokio::pin!(deadline);
    // Armed once the command has exited: how long its output may still trickle in.
    let drain = tokio::time::sleep(Duration::MAX);
    tokio::pin!(drain);
    let mut exited: Option<ExitStatus> = None;

    let end = loop {
        if let Some(status) = exited
            && stdout.is_none()
            && stderr.is_none()
        {
            break End::Exited(Some(status));
        }
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break End::Cancelled,
            _ = &mut deadline => break End::TimedOut,
            line = next_line(&mut stdout), if stdout.is_some() => match line {
                Some(line) => tail.push(Stream::Stdout, line, &mut on_line),
                None => stdout = None,
            },
            line = next_line(&mut stderr), if stderr.is_some() => match line {
                Some(line) => tail.push(Stream::Stderr, line, &mut on_line),
                None => stderr = None,
            },
            status = child.wait(), if exited.is_none() => match status {
                Ok(status) => {
                    exited = Some(status);
                    drain.as_mut().reset(tokio::time::Instant::now() + DRAIN_GRACE);
                }
                Err(error) => {
                    tracing::warn!(program = %spec.program, %error, "could not wait for command");
                    break End::Exited(None);
                }
            },
            _ = &mut drain, if exited.is_some() => break End::Exited(exited),
        }
    };

    match end {
        End::Cancelled => {
            terminate(&mut group, &mut child).await;
            Err(BuildError::Cancelled {
                tail: tail.into_lines(),
            })
        }
        End::TimedOut => {
            terminate(&mut group, &mut child).await;
            Err(BuildError::TimedOut {
                after: spec.timeout,
                tail: tail.into_lines(),
            })
        }
        End::Exited(status) => {
            if group.alive() {
                terminate(&mut group, &mut child).await;
            }
            group.disarm();
            let exit_code = status.and_then(|s| s.code());
            match status {
                Some(status) if status.success() => Ok(RunOutcome {
                    exit_code: exit_code.unwrap_or(0),
                    lines: tail.lines,
                    tail: tail.into_lines(),
                    duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                }),
                _ => Err(BuildError::Failed {
                    exit_code,
                    signal: status.and_then(exit_signal),
                    tail: tail.into_lines(),
                }),
            }
        }
    }
}

enum End {
    /// The command exited (status unknown if waiting for it failed).
    Exited(Option<ExitStatus>),
    TimedOut,
    Cancelled,
}

#[cfg(unix)]
fn exit_signal(status: ExitStatus) -> Option<i32> {
    std::os::unix::process::ExitStatusExt::signal(&status)
}

#[cfg(not(unix))]
fn exit_signal(_status: ExitStatus) -> Option<i32> {
    None
}

/// The last [`TAIL_LINES`] output lines and how many there were in all.
#[derive(Default)]
struct Tail {
    lines: u64,
    last: VecDeque<String>,
}

impl Tail {
    fn push(&mut self, stream: Stream, line: String, on_line: &mut impl FnMut(Stream, &str)) {
        on_line(stream, &line);
        self.lines += 1;
        if self.last.len() == TAIL_LINES {
            self.last.pop_front();
        }
        self.last.push_back(line);
    }

    fn into_lines(self) -> Vec<String> {
        self.last.into()
    }
}

async fn next_line<R: AsyncBufRead + Unpin>(reader: &mut Option<LineReader<R>>) -> Option<String> {
    match reader.as_mut()?.next_line().await {
        Ok(line) => line,
        Err(error) => {
            tracing::warn!(%error, "could not read command output");
            None
        }
    }
}

/// Splits a byte stream into lines of at most [`MAX_LINE_BYTES`] without ever buffering more.
struct LineReader<R> {
    reader: R,
    line: Vec<u8>,
    overlong: bool,
}

impl<R: AsyncBufRead + Unpin> LineReader<R> {
    fn new(reader: R) -> Self {
        LineReader {
            reader,
            line: Vec::new(),
            overlong: false,
        }
    }

    /// The next line, `None` at the end. Cancel safe: a partly read line stays in `self`.
    async fn next_line(&mut self) -> std::io::Result<Option<String>> {
        loop {
            let available = self.reader.fill_buf().await?;
            if available.is_empty() {
                if self.line.is_empty() && !self.overlong {
                    return Ok(None);
                }
                return Ok(Some(self.take_line()));
            }
            let newline = available.iter().position(|&b| b == b'\n');
            let chunk = &available[..newline.unwrap_or(available.len())];
            let room = MAX_LINE_BYTES.saturating_sub(self.line.len());
            if chunk.len() > room {
                self.overlong = true;
            }
            self.line.extend_from_slice(&chunk[..chunk.len().min(room)]);
            let used = newline.map_or(available.len(), |at| at + 1);
            self.reader.consume(used);
            if newline.is_some() {
                return Ok(Some(self.take_line()));
            }
        }
    }

    fn take_line(&mut self) -> String {
        let mut bytes = std::mem::take(&mut self.line);
        if self.overlong {
            // Don't let the cut split a character into a replacement character.
            if let Err(error) = std::str::from_utf8(&bytes)
                && error.error_len().is_none()
            {
                bytes.truncate(error.valid_up_to());
            }
        } else if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        self.overlong = false;
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::{CommandSpec, LineReader, MAX_LINE_BYTES, Stream, TAIL_LINES, Tail, expand};
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn vars() -> BTreeMap<&'static str, String> {
        BTreeMap::from([
            ("project_name", "Avatar {task_id}".to_owned()),
            ("task_id", "t-1".to_owned()),
        ])
    }

    #[test]
    fn expands_known_placeholders_once_and_keeps_the_rest() {
        assert_eq!(
            expand("{project_name}/{task_id}", &vars()),
            "Avatar {task_id}/t-1"
        );
        assert_eq!(expand("{other} {task_id", &vars()), "{other} {task_id");
        assert_eq!(expand("{{task_id}}", &vars()), "{t-1}");
        assert_eq!(expand("", &vars()), "");
    }

    #[test]
    fn rejects_an_empty_program() {
        let argv = ["{missing_var_is_kept}".to_owned()];
        assert!(CommandSpec::from_argv(&argv, &vars(), Duration::from_secs(1)).is_ok());
        let argv = ["  ".to_owned(), "-batchmode".to_owned()];
        let error = CommandSpec::from_argv(&argv, &vars(), Duration::from_secs(1)).unwrap_err();
        assert_eq!(error.code(), "invalid_command");
    }

    async fn lines_of(input: &[u8]) -> Vec<String> {
        // A tiny buffer makes lines span several reads.
        let mut reader = LineReader::new(tokio::io::BufReader::with_capacity(7, input));
        let mut lines = vec![];
        while let Some(line) = reader.next_line().await.unwrap() {
            lines.push(line);
        }
        lines
    }

    #[tokio::test]
    async fn splits_lines_across_reads_and_strips_carriage_returns() {
        assert_eq!(
            lines_of(b"first line\r\n\nthird\xffline\nno newline").await,
            ["first line", "", "third\u{fffd}line", "no newline"]
        );
        assert!(lines_of(b"").await.is_empty());
    }

    #[tokio::test]
    async fn cuts_long_lines_and_goes_on_with_the_next() {
        let mut input = vec![b'x'; MAX_LINE_BYTES * 3];
        input.extend_from_slice(b"\nshort\n");
        let lines = lines_of(&input).await;
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len(), MAX_LINE_BYTES);
        assert_eq!(lines[1], "short");
    }

    #[tokio::test]
    async fn never_cuts_inside_a_character() {
        let mut input = vec![b'x'; MAX_LINE_BYTES - 1];
        input.extend_from_slice("é and more\n".as_bytes());
        let lines = lines_of(&input).await;
        assert_eq!(lines[0], "x".repeat(MAX_LINE_BYTES - 1));
    }

    #[test]
    fn tail_keeps_the_last_lines_and_counts_all() {
        let mut tail = Tail::default();
        let mut seen = 0;
        for i in 0..TAIL_LINES + 5 {
            tail.push(Stream::Stdout, i.to_string(), &mut |_, _| seen += 1);
        }
        assert_eq!(tail.lines, (TAIL_LINES + 5) as u64);
        let lines = tail.into_lines();
        assert_eq!(lines.len(), TAIL_LINES);
        assert_eq!(lines[0], "5");
        assert_eq!(seen, TAIL_LINES + 5);
    }
}
