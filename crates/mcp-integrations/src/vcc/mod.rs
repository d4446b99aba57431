//! VCC: Unity projects managed the way the VRChat Creator Companion manages them — projects
//! (`Packages/vpm-manifest.json`), VPM repositories and package resolution, atomic package
//! installs, build and deploy commands as cancellable tasks with streamed output, and folder
//! watching that publishes `vcc.project.changed` events.
//!
//! [`VccService`] is what the HTTP API calls; [`VccAdapter`] contributes the `vcc.package.*`
//! task types. Registered projects and repositories are kept in one JSON state file
//! ([`VccConfig::state_file`]), written atomically.

pub mod build;
pub mod commands;
pub mod install;
pub mod ledger;
pub mod project;
pub mod vpm;
pub mod watch;

pub use install::{InstallSummary, PackageChange};
// The plain data of core's port, re-exported so `mcp_integrations::vcc::…` paths keep working.
pub use mcp_core::vcc::{
    Project, ProjectPackage, ProjectType, RepositoryInfo, RequirementSource, VccError,
    VccErrorKind, VccPort,
};
pub use project::{ProjectRegistry, VccSettings};
pub use vpm::{RepoCache, Requirement, Resolved, VpmRange};

use crate::{Adapter, AdapterHealth};
use async_trait::async_trait;
use mcp_core::events::{Event, EventBus};
use mcp_core::{Handler, HandlerError, HandlerRegistry, TaskContext};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The channel of `vcc.project.changed` events.
pub const PROJECTS_CHANNEL: &str = "vcc.projects";
/// A watched project's files changed (data: [`watch::ProjectChange`]).
pub const PROJECT_CHANGED_EVENT: &str = "vcc.project.changed";
/// The largest package zip downloaded.
pub const MAX_DOWNLOAD_BYTES: u64 = 512 * 1024 * 1024;
/// The most bytes one package zip may extract to (a guard against zip bombs).
pub const MAX_EXTRACTED_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// The largest repository listing accepted.
pub const MAX_LISTING_BYTES: u64 = 64 * 1024 * 1024;
/// How long one HTTP request (a listing, or a zip download) may take.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(600);

/// Everything VCC needs to know. `roots` empty means projects cannot be registered by API.
#[derive(Debug, Clone)]
pub struct VccConfig {
    /// Folders projects must lie under (after resolving symlinks).
    pub roots: Vec<PathBuf>,
    /// Projects listed by the configuration, always included.
    pub projects: Vec<PathBuf>,
    /// VPM listing URLs the configuration names, always used.
    pub repositories: Vec<String>,
    /// VCC's own `settings.json` (`userProjects`, `userRepos`), read on every listing.
    pub settings_file: Option<PathBuf>,
    /// Where registered projects and repositories are persisted.
    pub state_file: PathBuf,
    /// The `User-Agent` of listing and zip downloads.
    pub user_agent: String,
    /// The build command (argv), run by `vcc.build`.
    pub build_command: Vec<String>,
    /// The deploy command (argv), run by `vcc.deploy`.
    pub deploy_command: Vec<String>,
    /// How long a build or deploy command may run.
    pub command_timeout: Duration,
}

impl Default for VccConfig {
    fn default() -> Self {
        VccConfig {
            roots: Vec::new(),
            projects: Vec::new(),
            repositories: Vec::new(),
            settings_file: None,
            state_file: PathBuf::from("vcc-state.json"),
            user_agent: concat!("mkww-mcp/", env!("CARGO_PKG_VERSION")).to_string(),
            build_command: Vec::new(),
            deploy_command: Vec::new(),
            command_timeout: Duration::from_secs(3600),
        }
    }
}

/// Writes `bytes` to `path` so readers see the old file or the new one, never half of either:
/// a temporary file in the same directory, synced, then renamed over `path`.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), VccError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)
        .map_err(|e| VccError::io(format!("cannot create {}", dir.display()), e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(VccError::io(format!("cannot write {}", path.display()), e));
    }
    Ok(())
}

/// What the state file holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct PersistedState {
    /// Canonical paths of registered projects.
    #[serde(default)]
    pub projects: Vec<String>,
    /// Repositories added by API.
    #[serde(default)]
    pub repositories: Vec<vpm::RepositoryRecord>,
}

/// The state file, shared by [`ProjectRegistry`] and [`RepoCache`]. Every change is a
/// read-modify-write under one lock, so the two never overwrite each other's part.
#[derive(Debug)]
pub(crate) struct StateStore {
    path: PathBuf,
    lock: Mutex<()>,
}

impl StateStore {
    pub fn new(path: PathBuf) -> Self {
        StateStore {
            path,
            lock: Mutex::new(()),
        }
    }

    pub fn load(&self) -> Result<PersistedState, VccError> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.read()
    }

    pub fn update<R>(
        &self,
        change: impl FnOnce(&mut PersistedState) -> Result<R, VccError>,
    ) -> Result<R, VccError> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut state = self.read()?;
        let result = change(&mut state)?;
        let bytes = serde_json::to_vec_pretty(&state).map_err(|e| VccError::StateInvalid {
            path: self.path.display().to_string(),
            message: e.to_string(),
        })?;
        write_atomic(&self.path, &bytes)?;
        Ok(result)
    }

    fn read(&self) -> Result<PersistedState, VccError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| VccError::StateInvalid {
                path: self.path.display().to_string(),
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PersistedState::default()),
            Err(e) => Err(VccError::io(
                format!("cannot read {}", self.path.display()),
                e,
            )),
        }
    }
}

/// The VCC service the HTTP API and the task handlers share. Cheap to clone.
#[derive(Clone)]
pub struct VccService {
    inner: Arc<Inner>,
}

struct Inner {
    config: VccConfig,
    projects: ProjectRegistry,
    repos: RepoCache,
    http: reqwest::Client,
    /// One install at a time per project: two would race on `Packages/` and the manifest.
    project_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Set by [`VccService::watch`]: projects registered later are watched too.
    watcher: Mutex<Option<Arc<watch::ProjectWatcher>>>,
    /// The process groups of running builds and deploys (beside the state file).
    ledger: ledger::ProcessLedger,
}

impl VccService {
    pub fn new(config: VccConfig) -> Result<Self, VccError> {
        let http = reqwest::Client::builder()
            .user_agent(config.user_agent.clone())
            .timeout(HTTP_TIMEOUT)
            .build()
            .map_err(|e| VccError::Network {
                url: String::new(),
                message: format!("cannot build the HTTP client: {e}"),
            })?;
        let state = Arc::new(StateStore::new(config.state_file.clone()));
        let ledger = ledger::ProcessLedger::open(config.state_file.with_extension("processes"));
        let projects = ProjectRegistry::new(
            config.roots.clone(),
            config.settings_file.clone(),
            state.clone(),
        )
        .with_configured(config.projects.clone());
        let repos = RepoCache::new(state, config.settings_file.clone(), http.clone())
            .with_configured(config.repositories.clone());
        Ok(VccService {
            inner: Arc::new(Inner {
                config,
                projects,
                repos,
                http,
                project_locks: Mutex::new(HashMap::new()),
                watcher: Mutex::new(None),
                ledger,
            }),
        })
    }

    pub fn config(&self) -> &VccConfig {
        &self.inner.config
    }

    /// Where builds and deploys record their process groups.
    pub fn ledger(&self) -> &ledger::ProcessLedger {
        &self.inner.ledger
    }

    /// Registered projects and those in VCC's `settings.json`, by name.
    pub async fn projects(&self) -> Vec<Project> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.inner.projects.list())
            .await
            .unwrap_or_default()
    }

    pub async fn project(&self, id: &str) -> Result<Project, VccError> {
        let this = self.clone();
        let id = id.to_string();
        blocking(move || this.inner.projects.get(&id)).await
    }

    /// Registers the project at `path` (idempotent) and returns it; watches it when projects
    /// are watched.
    pub async fn register_project(&self, path: &Path) -> Result<Project, VccError> {
        let this = self.clone();
        let path = path.to_path_buf();
        blocking(move || {
            let project = this.inner.projects.register(&path)?;
            this.start_watching(&project);
            Ok(project)
        })
        .await
    }

    /// Forgets a registered project; its files are untouched.
    pub async fn unregister_project(&self, id: &str) -> Result<(), VccError> {
        let this = self.clone();
        let id = id.to_string();
        blocking(move || {
            this.inner.projects.unregister(&id)?;
            if let Some(watcher) = this.watcher() {
                watcher.unwatch(&id);
            }
            Ok(())
        })
        .await
    }

    /// Watches every project's folder, now and as projects are registered: changes settled for
    /// `debounce` are published as `vcc.project.changed` on channel [`PROJECTS_CHANNEL`].
    pub async fn watch(
        &self,
        debounce: Duration,
        events: Arc<dyn EventBus>,
    ) -> Result<(), VccError> {
        let runtime = tokio::runtime::Handle::current();
        let watcher = watch::ProjectWatcher::new(debounce, move |change| {
            let events = events.clone();
            runtime.spawn(async move {
                let data = serde_json::to_value(&change).unwrap_or_default();
                let event = Arc::new(Event::new(PROJECT_CHANGED_EVENT, data, None));
                if let Err(e) = events.publish(PROJECTS_CHANNEL, event).await {
                    tracing::warn!(error = %e, "cannot publish a project change");
                }
            });
        })
        .map_err(|e| VccError::io("cannot watch project folders", std::io::Error::other(e)))?;
        *self.inner.watcher.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(watcher));
        let this = self.clone();
        blocking(move || {
            for project in this.inner.projects.list() {
                this.start_watching(&project);
            }
            Ok(())
        })
        .await
    }

    fn watcher(&self) -> Option<Arc<watch::ProjectWatcher>> {
        self.inner
            .watcher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A project that cannot be watched is still served; the reason is logged.
    fn start_watching(&self, project: &Project) {
        let Some(watcher) = self.watcher() else {
            return;
        };
        if project.error.is_some() {
            return;
        }
        if let Err(e) = watcher.watch(&project.id, Path::new(&project.path)) {
            tracing::warn!(project = %project.id, error = %e, "cannot watch a VCC project");
        }
    }

    /// Added repositories and those in VCC's `settings.json`.
    pub async fn repositories(&self) -> Vec<RepositoryInfo> {
        self.inner.repos.list().await
    }

    /// Fetches and validates the listing at `url`, then adds it.
    pub async fn add_repository(&self, url: &str) -> Result<RepositoryInfo, VccError> {
        self.inner.repos.add(url).await
    }

    /// Removes an added repository by id or URL.
    pub async fn remove_repository(&self, id: &str) -> Result<(), VccError> {
        self.inner.repos.remove(id).await
    }

    /// Re-fetches every listing (conditionally, with its `ETag`).
    pub async fn refresh_repositories(&self) -> Vec<RepositoryInfo> {
        self.inner.repos.refresh_all().await;
        self.inner.repos.list().await
    }

    /// Adds `name` (newest version matching `version`, default `*`) and its dependencies.
    pub async fn add_package(
        &self,
        project_id: &str,
        name: &str,
        version: Option<&str>,
        prerelease: bool,
    ) -> Result<InstallSummary, VccError> {
        let range = VpmRange::parse_request(version.unwrap_or("*"))?;
        let name = name.to_string();
        self.with_project(project_id, move |this, root| async move {
            install::add(&this.installer(), &root, &name, &range, prerelease).await
        })
        .await
    }

    /// Moves `name` to the newest version allowed by `version` (default: any).
    pub async fn upgrade_package(
        &self,
        project_id: &str,
        name: &str,
        version: Option<&str>,
    ) -> Result<InstallSummary, VccError> {
        let range = version.map(VpmRange::parse_request).transpose()?;
        let name = name.to_string();
        self.with_project(project_id, move |this, root| async move {
            install::upgrade(&this.installer(), &root, &name, range.as_ref()).await
        })
        .await
    }

    /// Removes `name`, unless another installed package depends on it.
    pub async fn remove_package(
        &self,
        project_id: &str,
        name: &str,
    ) -> Result<InstallSummary, VccError> {
        let name = name.to_string();
        self.with_project(project_id, move |this, root| async move {
            install::remove(&this.installer(), &root, &name).await
        })
        .await
    }

    fn installer(&self) -> install::Installer<'_> {
        install::Installer {
            repos: &self.inner.repos,
            http: &self.inner.http,
            max_download_bytes: MAX_DOWNLOAD_BYTES,
            max_extracted_bytes: MAX_EXTRACTED_BYTES,
        }
    }

    /// The lock of one project: package changes wait for each other; builds and deploys take it
    /// too ([`VccService::try_lock_project`]), so nothing changes `Packages/` under a build.
    fn project_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .inner
            .project_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        locks.entry(id.to_owned()).or_default().clone()
    }

    /// The project's lock, if nothing holds it now. A build holds it for as long as it runs, so
    /// a second build (Unity refuses to open a project twice anyway) is told at once.
    pub fn try_lock_project(&self, id: &str) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        self.project_lock(id).try_lock_owned().ok()
    }

    /// Runs `change` on the project's folder under the project's lock, in a task of its own: a
    /// caller that goes away (a cancelled task) does not interrupt an install half-way.
    async fn with_project<F, Fut>(
        &self,
        project_id: &str,
        change: F,
    ) -> Result<InstallSummary, VccError>
    where
        F: FnOnce(VccService, PathBuf) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<Vec<PackageChange>, VccError>> + Send,
    {
        let this = self.clone();
        let id = project_id.to_string();
        let lock = self.project_lock(&id);
        let handle = tokio::spawn(async move {
            let _guard = lock.lock().await;
            let root = this.inner.projects.path_of(&id)?;
            let changed = change(this.clone(), root).await?;
            let project = this.project(&id).await?;
            Ok(InstallSummary { project, changed })
        });
        handle.await.map_err(|e| VccError::Io {
            context: "the install task failed".into(),
            source: std::io::Error::other(e.to_string()),
        })?
    }
}

// The API reaches the service through core's port; each method is the inherent one.
#[async_trait]
impl VccPort for VccService {
    async fn projects(&self) -> Vec<Project> {
        VccService::projects(self).await
    }

    async fn project(&self, id: &str) -> Result<Project, VccError> {
        VccService::project(self, id).await
    }

    async fn register_project(&self, path: &Path) -> Result<Project, VccError> {
        VccService::register_project(self, path).await
    }

    async fn unregister_project(&self, id: &str) -> Result<(), VccError> {
        VccService::unregister_project(self, id).await
    }

    async fn repositories(&self) -> Vec<RepositoryInfo> {
        VccService::repositories(self).await
    }

    async fn add_repository(&self, url: &str) -> Result<RepositoryInfo, VccError> {
        VccService::add_repository(self, url).await
    }

    async fn remove_repository(&self, id: &str) -> Result<(), VccError> {
        VccService::remove_repository(self, id).await
    }

    async fn refresh_repositories(&self) -> Vec<RepositoryInfo> {
        VccService::refresh_repositories(self).await
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, VccError> + Send + 'static,
) -> Result<T, VccError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| {
        VccError::io(
            "a blocking task failed",
            std::io::Error::other(e.to_string()),
        )
    })?
}

/// The VCC adapter: `vcc.package.add`, `vcc.package.upgrade`, `vcc.package.remove`, and with
/// an event bus for their output, `vcc.build` and `vcc.deploy`.
#[derive(Clone)]
pub struct VccAdapter {
    service: VccService,
    events: Option<Arc<dyn EventBus>>,
}

impl VccAdapter {
    pub fn new(service: VccService) -> Self {
        VccAdapter {
            service,
            events: None,
        }
    }

    /// Where `vcc.build` and `vcc.deploy` publish their output; they exist only with it.
    pub fn with_events(mut self, events: Arc<dyn EventBus>) -> Self {
        self.events = Some(events);
        self
    }

    pub fn service(&self) -> &VccService {
        &self.service
    }
}

#[async_trait]
impl Adapter for VccAdapter {
    fn name(&self) -> &str {
        "vcc"
    }

    fn task_types(&self) -> Vec<String> {
        let mut types: Vec<String> = Vec::new();
        if self.events.is_some() {
            types.push(commands::BUILD_TASK.into());
            types.push(commands::DEPLOY_TASK.into());
        }
        types.extend([
            "vcc.package.add".into(),
            "vcc.package.remove".into(),
            "vcc.package.upgrade".into(),
        ]);
        types
    }

    async fn health(&self) -> AdapterHealth {
        let config = self.service.config();
        if config.roots.is_empty() && config.projects.is_empty() && config.settings_file.is_none() {
            return AdapterHealth::Degraded(
                "no project roots, configured projects or VCC settings file".into(),
            );
        }
        AdapterHealth::Healthy
    }

    fn register(&self, registry: &mut HandlerRegistry) {
        if let Some(events) = &self.events {
            for kind in [commands::CommandKind::Build, commands::CommandKind::Deploy] {
                registry.register(
                    kind.task_type(),
                    commands::CommandHandler {
                        kind,
                        service: self.service.clone(),
                        events: events.clone(),
                    },
                );
            }
        }
        registry.register(
            "vcc.package.add",
            PackageHandler {
                op: PackageOp::Add,
                service: self.service.clone(),
            },
        );
        registry.register(
            "vcc.package.remove",
            PackageHandler {
                op: PackageOp::Remove,
                service: self.service.clone(),
            },
        );
        registry.register(
            "vcc.package.upgrade",
            PackageHandler {
                op: PackageOp::Upgrade,
                service: self.service.clone(),
            },
        );
    }
}

#[derive(Debug, Clone, Copy)]
enum PackageOp {
    Add,
    Upgrade,
    Remove,
}

struct PackageHandler {
    op: PackageOp,
    service: VccService,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddPayload {
    project: String,
    package: String,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    prerelease: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpgradePayload {
    project: String,
    package: String,
    #[serde(default)]
    version: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RemovePayload {
    project: String,
    package: String,
}

fn parse<T: for<'de> Deserialize<'de>>(payload: &Value) -> Result<T, String> {
    T::deserialize(payload).map_err(|e| e.to_string())
}

fn check_version(version: Option<&str>) -> Result<(), String> {
    match version {
        Some(v) => VpmRange::parse_request(v)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        None => Ok(()),
    }
}

fn check_name(name: &str) -> Result<(), String> {
    if project::is_package_name(name) {
        Ok(())
    } else {
        Err(format!("{name:?} is not a package name"))
    }
}

fn to_handler_error(error: VccError) -> HandlerError {
    let details = error.details();
    let message = error.to_string();
    let e = if error.is_retryable() {
        HandlerError::retryable(message)
    } else {
        HandlerError::permanent(message)
    };
    e.with_details(details)
}

#[async_trait]
impl Handler for PackageHandler {
    fn validate(&self, payload: &Value) -> Result<(), String> {
        match self.op {
            PackageOp::Add => {
                let p: AddPayload = parse(payload)?;
                check_name(&p.package)?;
                check_version(p.version.as_deref())
            }
            PackageOp::Upgrade => {
                let p: UpgradePayload = parse(payload)?;
                check_name(&p.package)?;
                check_version(p.version.as_deref())
            }
            PackageOp::Remove => {
                let p: RemovePayload = parse(payload)?;
                check_name(&p.package)
            }
        }
    }

    async fn run(&self, ctx: TaskContext) -> Result<Value, HandlerError> {
        let payload = &ctx.task.payload;
        self.validate(payload).map_err(HandlerError::permanent)?;
        let summary = match self.op {
            PackageOp::Add => {
                let p: AddPayload = parse(payload).map_err(HandlerError::permanent)?;
                self.service
                    .add_package(&p.project, &p.package, p.version.as_deref(), p.prerelease)
                    .await
            }
            PackageOp::Upgrade => {
                let p: UpgradePayload = parse(payload).map_err(HandlerError::permanent)?;
                self.service
                    .upgrade_package(&p.project, &p.package, p.version.as_deref())
                    .await
            }
            PackageOp::Remove => {
                let p: RemovePayload = parse(payload).map_err(HandlerError::permanent)?;
                self.service.remove_package(&p.project, &p.package).await
            }
        }
        .map_err(to_handler_error)?;
        serde_json::to_value(summary)
            .map_err(|e| HandlerError::permanent(format!("cannot serialize the result: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_and_kinds_are_stable() {
        let e = VccError::Conflict {
            package: "com.x".into(),
            requirements: vec![RequirementSource {
                requirement: ">=2.0.0".into(),
                requested_by: "com.y@1.0.0".into(),
            }],
            locked: Some("1.0.0".into()),
        };
        assert_eq!(e.code(), "version_conflict");
        assert_eq!(e.kind(), VccErrorKind::Conflict);
        assert!(e.to_string().contains("com.x"));
        assert!(!e.is_retryable());
        let e = VccError::Upstream {
            url: "u".into(),
            status: 503,
        };
        assert!(e.is_retryable());
        assert_eq!(e.details()["kind"], "unavailable");
    }

    #[test]
    fn state_writes_are_atomic_and_survive_reloading() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path().join("sub/state.json"));
        store
            .update(|s| {
                s.projects.push("/a".into());
                Ok(())
            })
            .unwrap();
        let again = StateStore::new(dir.path().join("sub/state.json"));
        assert_eq!(again.load().unwrap().projects, vec!["/a".to_string()]);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1);
    }
}
