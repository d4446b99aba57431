//! The port to the VCC service (Unity projects and VPM repositories) that `/v1/vcc/*` uses, and
//! the plain data it exchanges: projects, repositories and [`VccError`] with its stable codes.
//! The integration layer implements [`VccPort`]; the binary hands it to the API.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use std::path::Path;
use utoipa::ToSchema;

/// What a project is for, from the VRChat SDK it uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProjectType {
    World,
    Avatar,
    Unknown,
}

/// One package of a project: what the manifest asks for and what is locked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ProjectPackage {
    pub name: String,
    /// The version in `dependencies` (packages added by hand), if any.
    pub version: Option<String>,
    /// The version in `locked` (what is installed), if any.
    pub locked_version: Option<String>,
}

/// A Unity project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Project {
    /// First 16 hex digits of the SHA-256 of the canonical path: stable across restarts.
    pub id: String,
    pub name: String,
    pub path: String,
    #[serde(rename = "type")]
    pub project_type: ProjectType,
    pub unity_version: Option<String>,
    pub packages: Vec<ProjectPackage>,
    /// Set (and the rest left empty) when the folder can no longer be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A repository, for the API.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct RepositoryInfo {
    pub id: String,
    pub url: String,
    pub name: Option<String>,
    /// `api` (added here), `config` (`vcc_repositories`) or `vcc_settings` (from VCC's
    /// `userRepos`); only `api` ones can be removed here.
    pub source: &'static str,
    /// Packages in the cached listing; null until it is fetched.
    pub package_count: Option<usize>,
    pub fetched_at: Option<DateTime<Utc>>,
    /// Why the last fetch failed, if it did.
    pub error: Option<String>,
}

/// How the API layer should answer a [`VccError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VccErrorKind {
    NotFound,
    Invalid,
    Conflict,
    Unavailable,
}

/// One requirement on a package and who made it, for conflict reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequirementSource {
    pub requirement: String,
    pub requested_by: String,
}

impl std::fmt::Display for RequirementSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (from {})", self.requirement, self.requested_by)
    }
}

fn list<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Everything that can go wrong in VCC. [`VccError::code`] is stable; the API returns it.
#[derive(Debug, thiserror::Error)]
pub enum VccError {
    #[error("no VCC project roots are configured, so projects cannot be registered")]
    RootsNotConfigured,
    #[error("the path must be absolute: {path}")]
    PathNotAbsolute { path: String },
    #[error("the path {path:?} {reason}")]
    PathInvalid { path: String, reason: &'static str },
    #[error("{path} does not exist")]
    PathNotFound { path: String },
    #[error("{path} is not a directory")]
    NotADirectory { path: String },
    #[error("{path} is outside the configured project roots")]
    PathOutsideRoots { path: String },
    #[error("{path} is not a Unity project (no Packages/vpm-manifest.json or ProjectSettings/)")]
    NotAUnityProject { path: String },
    #[error("{path} is not a valid VPM manifest: {message}")]
    ManifestInvalid { path: String, message: String },
    #[error("no project with id {id}")]
    ProjectNotFound { id: String },
    #[error("no repository {id}")]
    RepositoryNotFound { id: String },
    #[error("repository {id} is already added ({url})")]
    RepositoryExists { id: String, url: String },
    #[error("{url} is not a VPM repository listing: {message}")]
    RepositoryInvalid { url: String, message: String },
    #[error("invalid version requirement {requirement:?}: {message}")]
    InvalidRequirement {
        requirement: String,
        message: String,
    },
    #[error("package {name} is in no repository")]
    PackageNotFound { name: String },
    #[error("no version of {name} matches {requirement}; available: {}", available.join(", "))]
    NoMatchingVersion {
        name: String,
        requirement: String,
        available: Vec<String>,
    },
    #[error("version conflict on {package}: {}{}", list(requirements), locked.as_ref().map(|v| format!("; {v} is locked")).unwrap_or_default())]
    Conflict {
        package: String,
        requirements: Vec<RequirementSource>,
        locked: Option<String>,
    },
    #[error("package {name} is not installed")]
    PackageNotInstalled { name: String },
    #[error("package {name} is required by {}", required_by.join(", "))]
    PackageRequiredBy {
        name: String,
        required_by: Vec<String>,
    },
    #[error("{name}: downloaded zip has SHA-256 {actual}, the repository says {expected}")]
    HashMismatch {
        name: String,
        expected: String,
        actual: String,
    },
    #[error("{name}: zip entry {entry:?} would be written outside the package folder")]
    ZipUnsafe { name: String, entry: String },
    #[error("{name}: not a readable zip: {message}")]
    ZipInvalid { name: String, message: String },
    #[error("{url} is larger than {limit} bytes")]
    TooLarge { url: String, limit: u64 },
    #[error("cannot reach {url}: {message}")]
    Network { url: String, message: String },
    #[error("{url} refused: {source}")]
    DestinationForbidden {
        url: String,
        source: crate::outbound::Forbidden,
    },
    #[error("{url} answered HTTP {status}")]
    Upstream { url: String, status: u16 },
    #[error("the VCC state file {path} is unreadable: {message}")]
    StateInvalid { path: String, message: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl VccError {
    /// The stable, snake_case code the API returns.
    pub fn code(&self) -> &'static str {
        match self {
            VccError::RootsNotConfigured => "vcc_roots_not_configured",
            VccError::PathNotAbsolute { .. } => "path_not_absolute",
            VccError::PathNotFound { .. } => "path_not_found",
            VccError::NotADirectory { .. } => "not_a_directory",
            VccError::PathOutsideRoots { .. } => "path_outside_roots",
            VccError::PathInvalid { .. } => "path_invalid",
            VccError::NotAUnityProject { .. } => "not_a_unity_project",
            VccError::ManifestInvalid { .. } => "manifest_invalid",
            VccError::ProjectNotFound { .. } => "project_not_found",
            VccError::RepositoryNotFound { .. } => "repository_not_found",
            VccError::RepositoryExists { .. } => "repository_exists",
            VccError::RepositoryInvalid { .. } => "repository_invalid",
            VccError::InvalidRequirement { .. } => "invalid_version_requirement",
            VccError::PackageNotFound { .. } => "package_not_found",
            VccError::NoMatchingVersion { .. } => "no_matching_version",
            VccError::Conflict { .. } => "version_conflict",
            VccError::PackageNotInstalled { .. } => "package_not_installed",
            VccError::PackageRequiredBy { .. } => "package_required_by",
            VccError::HashMismatch { .. } => "hash_mismatch",
            VccError::ZipUnsafe { .. } => "zip_unsafe",
            VccError::ZipInvalid { .. } => "zip_invalid",
            VccError::TooLarge { .. } => "download_too_large",
            VccError::Network { .. } => "network_error",
            VccError::DestinationForbidden { .. } => "destination_forbidden",
            VccError::Upstream { .. } => "upstream_error",
            VccError::StateInvalid { .. } => "state_invalid",
            VccError::Io { .. } => "io_error",
        }
    }

    /// How the API layer should answer it.
    pub fn kind(&self) -> VccErrorKind {
        match self {
            VccError::PathNotFound { .. }
            | VccError::ProjectNotFound { .. }
            | VccError::RepositoryNotFound { .. }
            | VccError::PackageNotFound { .. }
            | VccError::NoMatchingVersion { .. }
            | VccError::PackageNotInstalled { .. } => VccErrorKind::NotFound,
            VccError::PathNotAbsolute { .. }
            | VccError::PathInvalid { .. }
            | VccError::NotADirectory { .. }
            | VccError::PathOutsideRoots { .. }
            | VccError::NotAUnityProject { .. }
            | VccError::ManifestInvalid { .. }
            | VccError::RepositoryInvalid { .. }
            | VccError::InvalidRequirement { .. }
            | VccError::HashMismatch { .. }
            | VccError::ZipUnsafe { .. }
            | VccError::ZipInvalid { .. }
            | VccError::TooLarge { .. }
            | VccError::DestinationForbidden { .. } => VccErrorKind::Invalid,
            VccError::RepositoryExists { .. }
            | VccError::Conflict { .. }
            | VccError::PackageRequiredBy { .. } => VccErrorKind::Conflict,
            VccError::RootsNotConfigured
            | VccError::Network { .. }
            | VccError::Upstream { .. }
            | VccError::StateInvalid { .. }
            | VccError::Io { .. } => VccErrorKind::Unavailable,
        }
    }

    /// Whether trying again later may succeed: network trouble, 5xx and 429 answers.
    pub fn is_retryable(&self) -> bool {
        match self {
            VccError::Network { .. } => true,
            VccError::Upstream { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }

    /// Structured details for task errors and API bodies.
    pub fn details(&self) -> Value {
        let mut details = json!({"code": self.code(), "kind": self.kind()});
        match self {
            VccError::Conflict {
                package,
                requirements,
                locked,
            } => {
                details["package"] = json!(package);
                details["requirements"] = json!(requirements);
                details["locked"] = json!(locked);
            }
            VccError::NoMatchingVersion {
                name,
                requirement,
                available,
            } => {
                details["package"] = json!(name);
                details["requirement"] = json!(requirement);
                details["available"] = json!(available);
            }
            VccError::PackageRequiredBy { name, required_by } => {
                details["package"] = json!(name);
                details["required_by"] = json!(required_by);
            }
            VccError::PackageNotFound { name } | VccError::PackageNotInstalled { name } => {
                details["package"] = json!(name);
            }
            _ => {}
        }
        details
    }

    /// An I/O failure, with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        VccError::Io {
            context: context.into(),
            source,
        }
    }
}

/// The VCC service, as the API reaches it.
#[async_trait]
pub trait VccPort: Send + Sync + 'static {
    /// Registered projects and those in VCC's `settings.json`.
    async fn projects(&self) -> Vec<Project>;
    async fn project(&self, id: &str) -> Result<Project, VccError>;
    /// Registers the Unity project at `path` (or answers the one already registered).
    async fn register_project(&self, path: &Path) -> Result<Project, VccError>;
    /// Forgets a registered project; its files are untouched.
    async fn unregister_project(&self, id: &str) -> Result<(), VccError>;
    /// Added repositories and VCC's `userRepos`.
    async fn repositories(&self) -> Vec<RepositoryInfo>;
    /// Fetches, validates and adds a VPM repository listing.
    async fn add_repository(&self, url: &str) -> Result<RepositoryInfo, VccError>;
    async fn remove_repository(&self, id: &str) -> Result<(), VccError>;
    /// Fetches every listing again; failures land in each repository's `error`.
    async fn refresh_repositories(&self) -> Vec<RepositoryInfo>;
}
