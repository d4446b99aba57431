//! VCC build commands and project watching against real processes and a real temp folder:
//! streamed output, exit codes, timeouts and cancellation killing the whole process tree, and
//! debounced per-project change reports.
#![cfg(unix)]

use mcp_integrations::vcc::build::{self, BuildError, CommandSpec, Stream, TAIL_LINES};
use mcp_integrations::vcc::watch::{ProjectChange, ProjectWatcher};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const LONG: Duration = Duration::from_secs(120);

fn sh(script: &str, timeout: Duration) -> CommandSpec {
    CommandSpec {
        program: "sh".into(),
        args: vec!["-c".into(), script.into()],
        env: BTreeMap::new(),
        timeout,
    }
}

/// Runs a command and collects its output lines per stream.
async fn collect(
    spec: &CommandSpec,
    cwd: &Path,
    cancel: CancellationToken,
) -> (Result<build::RunOutcome, BuildError>, Vec<(Stream, String)>) {
    let mut lines = vec![];
    let result = build::run(spec, cwd, cancel, |stream, line| {
        lines.push((stream, line.to_owned()))
    })
    .await;
    (result, lines)
}

fn of(lines: &[(Stream, String)], stream: Stream) -> Vec<&str> {
    lines
        .iter()
        .filter(|(s, _)| *s == stream)
        .map(|(_, line)| line.as_str())
        .collect()
}

/// Alive and not a zombie (orphans may stay unreaped where PID 1 does not reap).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|s| s.trim().chars().next());
            !matches!(state, Some('Z' | 'X'))
        }
        Err(_) if Path::new("/proc/self").exists() => false,
        // SAFETY: signal 0 only checks that the process exists.
        Err(_) => unsafe { libc::kill(pid, 0) == 0 },
    }
}

async fn eventually_dead(pid: i32) -> bool {
    let give_up = Instant::now() + Duration::from_secs(10);
    while Instant::now() < give_up {
        if !alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn read_pid(path: &Path) -> i32 {
    let text = std::fs::read_to_string(path).expect("pid file");
    text.trim().parse().expect("a pid")
}

/// A shell that starts a long-lived grandchild, records its pid, says "started" and waits.
fn tree_script(pidfile: &Path) -> String {
    format!(
        "sleep 300 & echo $! > '{}'; echo started; wait",
        pidfile.display()
    )
}

#[tokio::test]
async fn streams_stdout_and_stderr_lines_in_order_and_returns_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let spec = sh(
        "echo out1; echo err1 >&2; echo out2; echo err2 >&2; printf 'crlf\\r\\n'; printf 'last'",
        LONG,
    );
    let (result, lines) = collect(&spec, dir.path(), CancellationToken::new()).await;
    let outcome = result.expect("success");
    assert_eq!(of(&lines, Stream::Stdout), ["out1", "out2", "crlf", "last"]);
    assert_eq!(of(&lines, Stream::Stderr), ["err1", "err2"]);
    assert_eq!(outcome.exit_code, 0);
    assert_eq!(outcome.lines, 6);
    assert_eq!(outcome.tail.len(), 6);
    for line in ["out1", "err1", "out2", "err2", "crlf", "last"] {
        assert!(outcome.tail.iter().any(|l| l == line), "{line} in tail");
    }
}

#[tokio::test]
async fn non_zero_exit_fails_with_exit_code_and_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (result, _) = collect(
        &sh("echo compiling; echo boom >&2; exit 3", LONG),
        dir.path(),
        CancellationToken::new(),
    )
    .await;
    let error = result.expect_err("failure");
    assert_eq!(error.code(), "command_failed");
    assert_eq!(error.tail(), ["compiling", "boom"]);
    assert!(
        matches!(
            error,
            BuildError::Failed {
                exit_code: Some(3),
                signal: None,
                ..
            }
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn command_killed_by_a_signal_fails_with_the_signal() {
    let dir = tempfile::tempdir().unwrap();
    let (result, _) = collect(
        &sh("kill -9 $$", LONG),
        dir.path(),
        CancellationToken::new(),
    )
    .await;
    let error = result.expect_err("failure");
    assert!(
        matches!(
            error,
            BuildError::Failed {
                exit_code: None,
                signal: Some(9),
                ..
            }
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn missing_program_is_a_spawn_error() {
    let dir = tempfile::tempdir().unwrap();
    let spec = CommandSpec {
        program: "/nonexistent/unity-editor".into(),
        args: vec![],
        env: BTreeMap::new(),
        timeout: LONG,
    };
    let (result, _) = collect(&spec, dir.path(), CancellationToken::new()).await;
    let error = result.expect_err("spawn error");
    assert_eq!(error.code(), "spawn_failed");
    assert!(
        matches!(error, BuildError::Spawn { ref program, .. } if program == "/nonexistent/unity-editor")
    );
    assert!(error.tail().is_empty());
}

#[tokio::test]
async fn missing_working_directory_is_an_invalid_command() {
    let (result, _) = collect(
        &sh("true", LONG),
        Path::new("/nonexistent/project"),
        CancellationToken::new(),
    )
    .await;
    assert_eq!(result.expect_err("invalid").code(), "invalid_command");
}

#[test]
fn empty_argv_is_an_invalid_command() {
    let error = CommandSpec::from_argv(&[], &BTreeMap::new(), LONG).expect_err("empty");
    assert_eq!(error.code(), "invalid_command");
}

#[tokio::test]
async fn placeholders_are_replaced_in_program_and_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().to_string_lossy().into_owned();
    let vars = BTreeMap::from([
        ("project_path", project.clone()),
        ("project_name", "My Avatar".to_owned()),
        ("task_id", "t-42".to_owned()),
        ("program", "sh".to_owned()),
    ]);
    let argv: Vec<String> = [
        "{program}",
        "-c",
        "echo \"$0|$1|$2\"",
        "-projectPath={project_path}",
        "{project_name}",
        "log-{task_id}-{unknown}.txt",
    ]
    .map(String::from)
    .to_vec();
    let spec = CommandSpec::from_argv(&argv, &vars, LONG).expect("valid");
    assert_eq!(spec.program, "sh");
    assert_eq!(spec.timeout, LONG);
    let (result, lines) = collect(&spec, dir.path(), CancellationToken::new()).await;
    result.expect("success");
    assert_eq!(
        of(&lines, Stream::Stdout),
        [format!(
            "-projectPath={project}|My Avatar|log-t-42-{{unknown}}.txt"
        )]
    );
}

#[tokio::test]
async fn environment_is_added_and_stdin_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = sh("echo \"$VCC_TEST_VALUE\"; cat; echo after-cat", LONG);
    spec.env.insert("VCC_TEST_VALUE".into(), "hello".into());
    let (result, lines) = collect(&spec, dir.path(), CancellationToken::new()).await;
    result.expect("success");
    assert_eq!(of(&lines, Stream::Stdout), ["hello", "after-cat"]);
}

#[tokio::test]
async fn huge_output_keeps_only_the_last_tail_lines() {
    let dir = tempfile::tempdir().unwrap();
    let (result, lines) = collect(
        &sh(
            "i=1; while [ $i -le 5000 ]; do echo $i; i=$((i+1)); done",
            LONG,
        ),
        dir.path(),
        CancellationToken::new(),
    )
    .await;
    let outcome = result.expect("success");
    assert_eq!(lines.len(), 5000);
    assert_eq!(outcome.lines, 5000);
    assert_eq!(outcome.tail.len(), TAIL_LINES);
    assert_eq!(outcome.tail.first().map(String::as_str), Some("4801"));
    assert_eq!(outcome.tail.last().map(String::as_str), Some("5000"));
}

#[tokio::test]
async fn very_long_lines_are_cut_at_8_kib() {
    let dir = tempfile::tempdir().unwrap();
    let (result, lines) = collect(
        &sh(
            "head -c 100000 /dev/zero | tr '\\0' a; echo; echo next",
            LONG,
        ),
        dir.path(),
        CancellationToken::new(),
    )
    .await;
    result.expect("success");
    let stdout = of(&lines, Stream::Stdout);
    assert_eq!(stdout.len(), 2);
    assert_eq!(stdout[0].len(), build::MAX_LINE_BYTES);
    assert_eq!(stdout[1], "next");
}

#[tokio::test]
async fn timeout_kills_the_whole_process_tree() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("grandchild.pid");
    let spec = sh(&tree_script(&pidfile), Duration::from_secs(1));
    let (result, lines) = collect(&spec, dir.path(), CancellationToken::new()).await;
    let error = result.expect_err("timed out");
    assert_eq!(error.code(), "command_timed_out");
    assert!(matches!(error, BuildError::TimedOut { after, .. } if after == Duration::from_secs(1)));
    assert_eq!(error.tail(), ["started"]);
    assert_eq!(of(&lines, Stream::Stdout), ["started"]);
    let grandchild = read_pid(&pidfile);
    assert!(
        eventually_dead(grandchild).await,
        "grandchild {grandchild} still running"
    );
}

#[tokio::test]
async fn cancellation_kills_the_whole_process_tree() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("grandchild.pid");
    let cancel = CancellationToken::new();
    let on_started = cancel.clone();
    let result = build::run(
        &sh(&tree_script(&pidfile), LONG),
        dir.path(),
        cancel,
        |_, line| {
            if line == "started" {
                on_started.cancel();
            }
        },
    )
    .await;
    let error = result.expect_err("cancelled");
    assert_eq!(error.code(), "command_cancelled");
    assert_eq!(error.tail(), ["started"]);
    let grandchild = read_pid(&pidfile);
    assert!(
        eventually_dead(grandchild).await,
        "grandchild {grandchild} still running"
    );
}

#[tokio::test]
async fn dropping_the_run_kills_the_whole_process_tree() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("grandchild.pid");
    let spec = sh(&tree_script(&pidfile), LONG);
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let mut started_tx = Some(started_tx);
    let run = build::run(&spec, dir.path(), CancellationToken::new(), |_, line| {
        if line == "started"
            && let Some(tx) = started_tx.take()
        {
            let _ = tx.send(());
        }
    });
    tokio::select! {
        result = run => panic!("run ended on its own: {result:?}"),
        _ = started_rx => {}
    }
    let grandchild = read_pid(&pidfile);
    assert!(
        eventually_dead(grandchild).await,
        "grandchild {grandchild} still running"
    );
}

#[tokio::test]
async fn processes_left_behind_are_terminated_when_the_command_exits() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("grandchild.pid");
    // The grandchild keeps stdout open, so the run must not wait for it forever.
    let script = format!("sleep 300 & echo $! > '{}'; echo done", pidfile.display());
    let (result, lines) = collect(&sh(&script, LONG), dir.path(), CancellationToken::new()).await;
    result.expect("success");
    assert_eq!(of(&lines, Stream::Stdout), ["done"]);
    let grandchild = read_pid(&pidfile);
    assert!(
        eventually_dead(grandchild).await,
        "grandchild {grandchild} still running"
    );
}

// --- watching ---------------------------------------------------------------------------------

const DEBOUNCE: Duration = Duration::from_millis(200);
const RECEIVE: Duration = Duration::from_secs(10);
/// How long to wait before concluding that no report is coming.
const QUIET: Duration = Duration::from_millis(1500);

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    watcher: ProjectWatcher,
    changes: mpsc::Receiver<ProjectChange>,
}

fn manifest(dependencies: &[(&str, &str)]) -> String {
    let entries: serde_json::Map<String, serde_json::Value> = dependencies
        .iter()
        .map(|(name, version)| {
            (
                (*name).to_owned(),
                serde_json::json!({ "version": version }),
            )
        })
        .collect();
    serde_json::json!({ "dependencies": entries, "locked": entries }).to_string()
}

fn project() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("MyAvatar");
    for folder in [
        "Assets",
        "Packages/com.vrchat.base",
        "Library/Bee",
        "Temp",
        "ProjectSettings",
    ] {
        std::fs::create_dir_all(root.join(folder)).unwrap();
    }
    write(
        &root,
        "Packages/vpm-manifest.json",
        &manifest(&[("com.vrchat.base", "3.7.0")]),
    );
    let (tx, changes) = mpsc::channel();
    let watcher = ProjectWatcher::new(DEBOUNCE, move |change| {
        let _ = tx.send(change);
    })
    .expect("watcher");
    watcher.watch("avatar", &root).expect("watch");
    Fixture {
        _dir: dir,
        root,
        watcher,
        changes,
    }
}

fn write(root: &Path, relative: &str, content: &str) {
    let path = root.join(relative);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, content).unwrap();
}

impl Fixture {
    fn next(&self) -> ProjectChange {
        self.changes.recv_timeout(RECEIVE).expect("a change report")
    }

    /// Reports until every one of `files` has been listed; returns them all.
    fn until_listed(&self, files: &[String]) -> Vec<ProjectChange> {
        let mut seen = vec![];
        while !files
            .iter()
            .all(|file| seen.iter().any(|c: &ProjectChange| c.files.contains(file)))
        {
            seen.push(self.next());
        }
        seen
    }

    fn assert_quiet(&self) {
        if let Ok(change) = self.changes.recv_timeout(QUIET) {
            panic!("unexpected report: {change:?}");
        }
    }
}

#[test]
fn a_written_file_is_reported_once() {
    let project = project();
    write(&project.root, "Assets/a.txt", "hello");
    let change = project.next();
    assert_eq!(change.project_id, "avatar");
    assert_eq!(change.files, ["Assets/a.txt"]);
    assert!(!change.truncated);
    assert!(change.packages.is_empty());
    assert!(!change.manifest_changed);
    project.assert_quiet();
}

#[test]
fn many_quick_writes_are_reported_together() {
    let project = project();
    let files: Vec<String> = (0..20)
        .map(|i| format!("Assets/Textures/t{i:02}.png"))
        .collect();
    for file in &files {
        write(&project.root, file, "png");
    }
    let changes = project.until_listed(&files);
    assert!(
        changes.len() <= 3,
        "{} reports for one burst",
        changes.len()
    );
    let first = &changes[0];
    assert!(
        first.files.windows(2).all(|w| w[0] < w[1]),
        "sorted and deduped"
    );
}

#[test]
fn adding_a_dependency_to_the_manifest_names_the_package() {
    let project = project();
    write(
        &project.root,
        "Packages/vpm-manifest.json",
        &manifest(&[
            ("com.vrchat.base", "3.7.0"),
            ("com.vrchat.avatars", "3.7.0"),
        ]),
    );
    let change = project.next();
    assert_eq!(change.files, ["Packages/vpm-manifest.json"]);
    assert_eq!(change.packages, ["com.vrchat.avatars"]);
    assert!(change.manifest_changed);
}

#[test]
fn files_inside_a_package_folder_name_the_package() {
    let project = project();
    write(
        &project.root,
        "Packages/com.vrchat.base/Runtime/Thing.cs",
        "class Thing {}",
    );
    let change = project.next();
    assert_eq!(change.packages, ["com.vrchat.base"]);
    assert!(!change.manifest_changed);
    assert!(
        change
            .files
            .contains(&"Packages/com.vrchat.base/Runtime/Thing.cs".to_owned())
    );
}

#[test]
fn unity_churn_folders_and_temp_files_are_not_reported() {
    let project = project();
    write(&project.root, "Library/Bee/artifact.dag", "x");
    write(&project.root, "Library/new/deep/cache.bin", "x");
    write(&project.root, "Temp/UnityLockfile", "x");
    write(&project.root, "Logs/AssetImportWorker0.log", "x");
    write(&project.root, "obj/Debug/a.dll", "x");
    write(&project.root, "UserSettings/EditorUserSettings.asset", "x");
    write(&project.root, "Assets/scene.unity~", "x");
    write(&project.root, "Assets/import.tmp", "x");
    project.assert_quiet();
    // Still alive, and the ignored writes never joined a report.
    write(&project.root, "Assets/marker.txt", "x");
    assert_eq!(project.next().files, ["Assets/marker.txt"]);
}

#[test]
fn a_corrupt_manifest_is_reported_and_watching_goes_on() {
    let project = project();
    write(&project.root, "Packages/vpm-manifest.json", "{ not json");
    let change = project.next();
    assert!(change.manifest_changed);
    assert_eq!(change.packages, ["com.vrchat.base"], "entries read as gone");
    write(&project.root, "Assets/after.txt", "x");
    assert_eq!(project.next().files, ["Assets/after.txt"]);
}

#[test]
fn a_new_top_level_folder_is_watched_too() {
    let project = project();
    write(&project.root, "Editor/Tools/Build.cs", "x");
    project.until_listed(&["Editor/Tools/Build.cs".to_owned()]);
    write(&project.root, "Editor/Tools/Later.cs", "x");
    project.until_listed(&["Editor/Tools/Later.cs".to_owned()]);
}

#[test]
fn unwatch_stops_reports() {
    let project = project();
    assert_eq!(project.watcher.watched(), ["avatar"]);
    project.watcher.unwatch("avatar");
    assert!(project.watcher.watched().is_empty());
    write(&project.root, "Assets/a.txt", "x");
    project.assert_quiet();
}

#[test]
fn dropping_the_watcher_stops_everything() {
    let Fixture {
        _dir,
        root,
        watcher,
        changes,
    } = project();
    drop(watcher);
    write(&root, "Assets/a.txt", "x");
    // The handler (and its sender) are gone once the watcher is dropped.
    assert!(matches!(
        changes.recv_timeout(RECEIVE),
        Err(mpsc::RecvTimeoutError::Disconnected)
    ));
}

#[test]
fn watching_a_missing_folder_fails() {
    let watcher = ProjectWatcher::new(DEBOUNCE, |_| {}).expect("watcher");
    let error = watcher
        .watch("ghost", Path::new("/nonexistent/project"))
        .expect_err("missing");
    assert_eq!(error.code(), "io_error");
    assert!(watcher.watched().is_empty());
}
