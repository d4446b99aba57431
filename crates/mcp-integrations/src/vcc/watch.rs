//! Watching project folders: debounced file changes, reported per project with the packages they touch.
//!
//! One OS watcher serves every project. Its events go to a worker thread that groups them by
//! project and reports a project once it has been quiet for the debounce window (or, under
//! constant churn, at least every [`MAX_WAIT_FACTOR`] windows). Unity's own churn folders are
//! never watched at all: each project root is watched on its own and every other top-level folder
//! recursively, so `Library/` — often hundreds of thousands of files — costs nothing.

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Folders at a project root that Unity rewrites constantly; changes there are not reported.
pub const IGNORED_ROOT_DIRS: [&str; 6] = ["Library", "Temp", "Logs", "obj", "UserSettings", ".git"];
/// At most this many files are listed in one [`ProjectChange`].
pub const MAX_FILES: usize = 500;
/// Under constant churn a project is still reported after this many debounce windows.
pub const MAX_WAIT_FACTOR: u32 = 10;
/// The VPM manifest, relative to the project root.
pub const MANIFEST_PATH: &str = "Packages/vpm-manifest.json";

/// What changed in one project during one debounce window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProjectChange {
    pub project_id: String,
    /// Paths relative to the project root with `/` separators, sorted, at most [`MAX_FILES`].
    pub files: Vec<String>,
    /// More files changed than are listed, or the OS dropped events and some are unknown.
    pub truncated: bool,
    /// Packages touched, sorted: any file under `Packages/<name>/`, and every name whose entry in
    /// the manifest's `dependencies` or `locked` was added, removed or changed.
    pub packages: Vec<String>,
    /// The manifest's `dependencies` or `locked` entries differ from the last ones seen, or it is
    /// now missing or unreadable.
    pub manifest_changed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("project folder {0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("file watcher: {0}")]
    Notify(#[from] notify::Error),
}

impl WatchError {
    /// Stable error code for API errors.
    pub fn code(&self) -> &'static str {
        match self {
            WatchError::NotADirectory(_) => "not_a_directory",
            WatchError::Io { .. } => "io_error",
            WatchError::Notify(_) => "watch_failed",
        }
    }
}

/// Is this path, relative to a project root, one whose changes are never reported?
pub fn is_ignored(relative: &str) -> bool {
    let first = relative.split('/').next().unwrap_or_default();
    if IGNORED_ROOT_DIRS.contains(&first) {
        return true;
    }
    let name = relative.rsplit('/').next().unwrap_or_default();
    name.ends_with('~') || name.ends_with(".tmp")
}

/// The package a changed path belongs to: `Packages/<name>/…`, or the folder `Packages/<name>`
/// itself (a package folder moved into place or away).
fn package_of(relative: &str, absolute: &Path) -> Option<String> {
    let mut parts = relative.split('/');
    if parts.next() != Some("Packages") {
        return None;
    }
    let name = parts.next().filter(|name| !name.is_empty())?;
    if parts.next().is_some() {
        return Some(name.to_owned());
    }
    let file_like = [".json", ".meta", ".tmp"]
        .iter()
        .any(|ext| name.ends_with(ext));
    (absolute.is_dir() || (!absolute.exists() && !file_like)).then(|| name.to_owned())
}

/// The parts of `Packages/vpm-manifest.json` that name packages: section → name → entry.
type Manifest = BTreeMap<&'static str, BTreeMap<String, Value>>;

const MANIFEST_SECTIONS: [&str; 2] = ["dependencies", "locked"];

/// Reads the manifest; `None` when it is missing or not valid JSON (treated as empty).
fn read_manifest(root: &Path) -> Option<Manifest> {
    let text = std::fs::read(root.join(MANIFEST_PATH)).ok()?;
    let value: Value = serde_json::from_slice(&text).ok()?;
    let mut manifest = Manifest::new();
    for section in MANIFEST_SECTIONS {
        let entries = value
            .get(section)
            .and_then(Value::as_object)
            .map(|object| {
                object
                    .iter()
                    .map(|(name, entry)| (name.clone(), entry.clone()))
                    .collect()
            })
            .unwrap_or_default();
        manifest.insert(section, entries);
    }
    Some(manifest)
}

/// Names whose entry differs between two manifests, in any section.
fn manifest_diff(old: &Manifest, new: &Manifest) -> BTreeSet<String> {
    let empty = BTreeMap::new();
    let mut changed = BTreeSet::new();
    for section in MANIFEST_SECTIONS {
        let before = old.get(section).unwrap_or(&empty);
        let after = new.get(section).unwrap_or(&empty);
        for name in before.keys().chain(after.keys()) {
            if before.get(name) != after.get(name) {
                changed.insert(name.clone());
            }
        }
    }
    changed
}

/// Watches any number of project folders and reports their changes, debounced, per project.
/// Dropping it stops the OS watcher and the worker thread; no report is delivered afterwards.
pub struct ProjectWatcher {
    shared: Arc<Shared>,
    messages: mpsc::Sender<Message>,
    worker: Option<JoinHandle<()>>,
}

struct Shared {
    debounce: Duration,
    /// Lock order: `projects` before `watcher`.
    projects: Mutex<HashMap<String, Project>>,
    watcher: Mutex<RecommendedWatcher>,
}

struct Project {
    /// Canonical, so that it prefixes the paths the OS reports.
    root: PathBuf,
    /// The last manifest seen; `None` when it was missing or unreadable.
    manifest: Option<Manifest>,
    /// Paths registered with the OS watcher for this project.
    watched: BTreeSet<PathBuf>,
    pending: Option<Pending>,
}

/// Changes collected for a project since its last report.
struct Pending {
    files: BTreeSet<String>,
    truncated: bool,
    packages: BTreeSet<String>,
    manifest_touched: bool,
    /// Folders that appeared in this burst (relative → absolute). They are listed again when
    /// the report is taken: a file written into a new folder before the OS watch on it took
    /// hold raises no event, and the listing made when the folder appeared can come too early.
    new_dirs: BTreeMap<String, PathBuf>,
    first: Instant,
    last: Instant,
}

impl Pending {
    fn new(now: Instant) -> Self {
        Pending {
            files: BTreeSet::new(),
            truncated: false,
            packages: BTreeSet::new(),
            manifest_touched: false,
            new_dirs: BTreeMap::new(),
            first: now,
            last: now,
        }
    }

    /// Adds every file below the folder `absolute` (`relative` to the project root).
    fn add_listing(&mut self, relative: &str, absolute: &Path) {
        let mut found = vec![];
        list_files(absolute, relative, &mut found, MAX_FILES + 1);
        for (relative, absolute) in found {
            if !is_ignored(&relative) {
                self.add(relative, &absolute);
            }
        }
    }

    fn add(&mut self, relative: String, absolute: &Path) {
        if relative == MANIFEST_PATH {
            self.manifest_touched = true;
        }
        if let Some(package) = package_of(&relative, absolute) {
            self.packages.insert(package);
        }
        if self.files.len() < MAX_FILES || self.files.contains(&relative) {
            self.files.insert(relative);
        } else {
            self.truncated = true;
        }
    }

    fn due(&self, debounce: Duration) -> Instant {
        (self.last + debounce).min(self.first + debounce * MAX_WAIT_FACTOR)
    }
}

enum Message {
    Fs(notify::Result<notify::Event>),
    Stop,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not stop the watcher; the data stays consistent between statements.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ProjectWatcher {
    /// `on_change` is called from a background thread once per project per debounce window:
    /// when the project has had no new change for `debounce` (or at the latest after
    /// [`MAX_WAIT_FACTOR`] windows of constant change).
    pub fn new(
        debounce: Duration,
        on_change: impl Fn(ProjectChange) + Send + Sync + 'static,
    ) -> Result<Self, WatchError> {
        let (messages, inbox) = mpsc::channel();
        let from_os = messages.clone();
        let watcher = notify::recommended_watcher(move |event| {
            let _ = from_os.send(Message::Fs(event));
        })?;
        let shared = Arc::new(Shared {
            debounce,
            projects: Mutex::new(HashMap::new()),
            watcher: Mutex::new(watcher),
        });
        let worker_shared = Arc::clone(&shared);
        let worker = std::thread::Builder::new()
            .name("vcc-watch".into())
            .spawn(move || work(&worker_shared, &inbox, &on_change))
            .map_err(|source| WatchError::Io {
                path: PathBuf::new(),
                source,
            })?;
        Ok(ProjectWatcher {
            shared,
            messages,
            worker: Some(worker),
        })
    }

    /// Starts watching `root` (recursively, minus Unity's churn folders) as `project_id`,
    /// replacing an earlier watch under that id, and remembers the current manifest for diffs.
    pub fn watch(&self, project_id: &str, root: &Path) -> Result<(), WatchError> {
        let io = |source| WatchError::Io {
            path: root.to_owned(),
            source,
        };
        if !std::fs::metadata(root).map_err(io)?.is_dir() {
            return Err(WatchError::NotADirectory(root.to_owned()));
        }
        let root = std::fs::canonicalize(root).map_err(io)?;
        let mut dirs = vec![];
        for entry in std::fs::read_dir(&root).map_err(io)? {
            let path = entry.map_err(io)?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            if path.is_dir() && name.is_some_and(|name| !is_ignored(&name)) {
                dirs.push(path);
            }
        }
        let manifest = read_manifest(&root);

        self.unwatch(project_id);
        let mut projects = lock(&self.shared.projects);
        let mut watcher = lock(&self.shared.watcher);
        let mut watched = BTreeSet::new();
        let mut result = watcher.watch(&root, RecursiveMode::NonRecursive);
        if result.is_ok() {
            watched.insert(root.clone());
            for dir in dirs {
                result = watcher.watch(&dir, RecursiveMode::Recursive);
                if result.is_err() {
                    break;
                }
                watched.insert(dir);
            }
        }
        if let Err(error) = result {
            for path in &watched {
                let _ = watcher.unwatch(path);
            }
            return Err(error.into());
        }
        drop(watcher);
        projects.insert(
            project_id.to_owned(),
            Project {
                root,
                manifest,
                watched,
                pending: None,
            },
        );
        Ok(())
    }

    /// Stops watching a project; changes not yet reported are dropped.
    pub fn unwatch(&self, project_id: &str) {
        let mut projects = lock(&self.shared.projects);
        if let Some(project) = projects.remove(project_id) {
            let mut watcher = lock(&self.shared.watcher);
            for path in &project.watched {
                // Fails when the folder is already gone, which is fine.
                let _ = watcher.unwatch(path);
            }
        }
    }

    /// Ids of the watched projects, sorted.
    pub fn watched(&self) -> Vec<String> {
        let mut ids: Vec<String> = lock(&self.shared.projects).keys().cloned().collect();
        ids.sort();
        ids
    }
}

impl Drop for ProjectWatcher {
    fn drop(&mut self) {
        let _ = self.messages.send(Message::Stop);
        if let Some(worker) = self.worker.take()
            && worker.thread().id() != std::thread::current().id()
        {
            let _ = worker.join();
        }
    }
}

/// The worker thread: collects OS events into per-project changes and reports them when due.
fn work(shared: &Shared, inbox: &mpsc::Receiver<Message>, on_change: &dyn Fn(ProjectChange)) {
    loop {
        let wait = shared.next_due().map_or(Duration::from_secs(3600), |due| {
            due.saturating_duration_since(Instant::now())
        });
        match inbox.recv_timeout(wait) {
            Ok(Message::Fs(Ok(event))) => shared.record(&event),
            Ok(Message::Fs(Err(error))) => tracing::warn!(%error, "project watcher error"),
            Ok(Message::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {}
        }
        for change in shared.take_due(Instant::now()) {
            let report = std::panic::AssertUnwindSafe(|| on_change(change));
            if std::panic::catch_unwind(report).is_err() {
                tracing::error!("project change handler panicked");
            }
        }
    }
}

impl Shared {
    fn next_due(&self) -> Option<Instant> {
        lock(&self.projects)
            .values()
            .filter_map(|project| project.pending.as_ref())
            .map(|pending| pending.due(self.debounce))
            .min()
    }

    fn record(&self, event: &notify::Event) {
        let relevant = match event.kind {
            EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) | EventKind::Any => {
                true
            }
            // Opening or reading a file (the watcher reads the manifest itself) is no change.
            EventKind::Access(kind) => {
                kind == notify::event::AccessKind::Close(notify::event::AccessMode::Write)
            }
            EventKind::Other => event.need_rescan(),
        };
        if !relevant {
            return;
        }
        // Created or moved in: a folder at a project root then needs a watch of its own.
        let appeared = matches!(
            event.kind,
            EventKind::Create(_) | EventKind::Modify(notify::event::ModifyKind::Name(_))
        );
        let now = Instant::now();
        let mut projects = lock(&self.projects);
        if event.need_rescan() {
            // The OS dropped events: say so for every project, and re-read every manifest.
            tracing::warn!("file watcher lost events; reporting every project as changed");
            for project in projects.values_mut() {
                let pending = project.pending.get_or_insert_with(|| Pending::new(now));
                pending.truncated = true;
                pending.manifest_touched = true;
                pending.last = now;
            }
        }
        for path in &event.paths {
            let Some(project) = projects
                .values_mut()
                .filter(|project| path.starts_with(&project.root))
                .max_by_key(|project| project.root.components().count())
            else {
                continue;
            };
            let Some(relative) = relative_path(&project.root, path) else {
                continue;
            };
            if is_ignored(&relative) {
                continue;
            }
            if appeared && path.is_dir() {
                // The OS watcher extends recursive watches to new subfolders itself; a new
                // top-level folder needs a watch of its own. Either way, files written into it
                // before the watch took hold are only found by looking.
                if !relative.contains('/') {
                    match lock(&self.watcher).watch(path, RecursiveMode::Recursive) {
                        Ok(()) => {
                            project.watched.insert(path.clone());
                        }
                        Err(error) => {
                            tracing::warn!(path = %path.display(), %error, "cannot watch new folder");
                        }
                    }
                }
                let pending = project.pending.get_or_insert_with(|| Pending::new(now));
                pending.add_listing(&relative, path);
                pending.new_dirs.insert(relative.clone(), path.clone());
            }
            let pending = project.pending.get_or_insert_with(|| Pending::new(now));
            pending.add(relative, path);
            pending.last = now;
        }
    }

    /// Takes the changes of every project that has been quiet long enough.
    fn take_due(&self, now: Instant) -> Vec<ProjectChange> {
        let mut changes = vec![];
        let mut projects = lock(&self.projects);
        for (id, project) in projects.iter_mut() {
            let Some(mut pending) = project
                .pending
                .take_if(|pending| pending.due(self.debounce) <= now)
            else {
                continue;
            };
            for (relative, absolute) in std::mem::take(&mut pending.new_dirs) {
                pending.add_listing(&relative, &absolute);
            }
            let mut packages = pending.packages;
            let mut manifest_changed = false;
            if pending.manifest_touched {
                let current = read_manifest(&project.root);
                let empty = Manifest::new();
                let before = project.manifest.as_ref().unwrap_or(&empty);
                let after = current.as_ref().unwrap_or(&empty);
                packages.extend(manifest_diff(before, after));
                manifest_changed = current.is_none() || project.manifest != current;
                project.manifest = current;
            }
            changes.push(ProjectChange {
                project_id: id.clone(),
                files: pending.files.into_iter().collect(),
                truncated: pending.truncated,
                packages: packages.into_iter().collect(),
                manifest_changed,
            });
        }
        changes
    }
}

/// `path` relative to `root` with `/` separators; `None` for the root itself.
fn relative_path(root: &Path, path: &Path) -> Option<String> {
    let relative = path.strip_prefix(root).ok()?;
    let parts: Vec<_> = relative
        .components()
        .filter_map(|part| match part {
            Component::Normal(part) => Some(part.to_string_lossy()),
            _ => None,
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Up to `limit` files below `dir`, as (path relative to the project root, absolute path).
fn list_files(dir: &Path, relative: &str, found: &mut Vec<(String, PathBuf)>, limit: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if found.len() >= limit {
            return;
        }
        let path = entry.path();
        let name = format!("{relative}/{}", entry.file_name().to_string_lossy());
        if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            list_files(&path, &name, found, limit);
        } else {
            found.push((name, path));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ignores_unity_churn_and_temporary_files() {
        for path in [
            "Library/ScriptAssemblies/A.dll",
            "Temp",
            "Logs/x.log",
            "obj/Debug/a",
            "UserSettings/Layouts/default.dwlt",
            ".git/index",
            "Assets/Scene.unity~",
            "Assets/import.tmp",
        ] {
            assert!(is_ignored(path), "{path}");
        }
        for path in [
            "Assets/Library/x.cs",
            "Assets/a.txt",
            "Packages/vpm-manifest.json",
        ] {
            assert!(!is_ignored(path), "{path}");
        }
    }

    #[test]
    fn finds_the_package_a_path_belongs_to() {
        let nowhere = Path::new("/nonexistent/x");
        assert_eq!(
            package_of("Packages/com.vrchat.base/Runtime/A.cs", nowhere).as_deref(),
            Some("com.vrchat.base")
        );
        assert_eq!(
            package_of("Packages/com.vrchat.base", nowhere).as_deref(),
            Some("com.vrchat.base")
        );
        assert_eq!(package_of("Packages/vpm-manifest.json", nowhere), None);
        assert_eq!(package_of("Assets/Packages/x/y", nowhere), None);
    }

    fn manifest(value: Value) -> Manifest {
        let dir = std::env::temp_dir().join(format!("vcc-watch-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(dir.join("Packages")).unwrap();
        std::fs::write(dir.join(MANIFEST_PATH), value.to_string()).unwrap();
        let manifest = read_manifest(&dir).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
        manifest
    }

    #[test]
    fn diffs_dependencies_and_locked_entries() {
        let before = manifest(json!({
            "dependencies": {"a": {"version": "1.0.0"}, "b": {"version": "1.0.0"}},
            "locked": {"a": {"version": "1.0.0"}, "c": {"version": "2.0.0"}}
        }));
        let after = manifest(json!({
            "dependencies": {"a": {"version": "1.0.0"}, "d": {"version": "1.0.0"}},
            "locked": {"a": {"version": "1.0.0"}, "c": {"version": "2.1.0"}},
            "other": {"e": 1}
        }));
        let changed: Vec<_> = manifest_diff(&before, &after).into_iter().collect();
        assert_eq!(changed, ["b", "c", "d"]);
        assert!(manifest_diff(&after, &after).is_empty());
        assert_eq!(manifest_diff(&Manifest::new(), &before).len(), 3);
    }

    #[test]
    fn missing_or_corrupt_manifest_reads_as_none() {
        assert!(read_manifest(Path::new("/nonexistent/project")).is_none());
    }

    #[test]
    fn relative_paths_use_forward_slashes() {
        let root = Path::new("/p/MyAvatar");
        assert_eq!(
            relative_path(root, &root.join("Assets").join("a b.txt")).as_deref(),
            Some("Assets/a b.txt")
        );
        assert_eq!(relative_path(root, root), None);
        assert_eq!(relative_path(root, Path::new("/elsewhere")), None);
    }

    #[test]
    fn caps_listed_files_and_marks_the_change_truncated() {
        let mut pending = Pending::new(Instant::now());
        for i in 0..MAX_FILES + 10 {
            pending.add(format!("Assets/{i:04}.png"), Path::new("/nonexistent"));
        }
        pending.add("Assets/0000.png".into(), Path::new("/nonexistent"));
        assert_eq!(pending.files.len(), MAX_FILES);
        assert!(pending.truncated);
    }
}
