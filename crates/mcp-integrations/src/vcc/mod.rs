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

mod adapter;
mod state;

pub use adapter::VccAdapter;
pub use install::{InstallSummary, PackageChange};
pub(crate) use state::{StateStore, write_atomic};
// The plain data of core's port, re-exported so `mcp_integrations::vcc::…` paths keep working.
pub use mcp_core::vcc::{
    Project, ProjectPackage, ProjectType, RepositoryInfo, RequirementSource, VccError,
    VccErrorKind, VccPort,
};
pub use project::{ProjectRegistry, VccSettings};
pub use vpm::{RepoCache, Requirement, Resolved, VpmRange};

use async_trait::async_trait;
use mcp_core::events::{Event, EventBus};
use std::collections::HashMap;
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
    /// Which destinations repository listings and package downloads may reach.
    pub outbound: Arc<mcp_core::outbound::Policy>,
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
            outbound: Arc::default(),
        }
    }
}

/// A failed listing or download request: the outbound guard's refusal (not retryable) when that
/// is what stopped it, a network error otherwise.
pub(crate) fn network_error(url: &str, err: reqwest::Error) -> VccError {
    match crate::outbound::forbidden_in(&err) {
        Some(forbidden) => VccError::DestinationForbidden {
            url: url.to_string(),
            source: forbidden.clone(),
        },
        None => VccError::Network {
            url: url.to_string(),
            message: err.to_string(),
        },
    }
}

/// A GET of a listing or package through the outbound guard, with the repository's headers: a
/// literal forbidden host is refused here, before anything is sent.
pub(crate) fn guarded_get(
    http: &crate::outbound::OutboundClient,
    url: &str,
    parsed: reqwest::Url,
    headers: &std::collections::BTreeMap<String, String>,
) -> Result<reqwest::RequestBuilder, VccError> {
    let mut request = http
        .get(parsed)
        .map_err(|source| VccError::DestinationForbidden {
            url: url.to_string(),
            source,
        })?;
    for (k, v) in headers {
        request = request.header(k, v);
    }
    Ok(request)
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
    http: crate::outbound::OutboundClient,
    /// One install at a time per project: two would race on `Packages/` and the manifest.
    project_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Set by [`VccService::watch`]: projects registered later are watched too.
    watcher: Mutex<Option<Arc<watch::ProjectWatcher>>>,
    /// The process groups of running builds and deploys (beside the state file).
    ledger: ledger::ProcessLedger,
}

impl VccService {
    pub fn new(config: VccConfig) -> Result<Self, VccError> {
        let http = crate::outbound::OutboundClient::build(
            config.outbound.clone(),
            reqwest::Client::builder()
                .user_agent(config.user_agent.clone())
                .timeout(HTTP_TIMEOUT),
            crate::outbound::Redirects::Follow,
        )
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
}
