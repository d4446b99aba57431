//! Unity projects as VCC sees them: the folder, its Unity version, and the packages in
//! `Packages/vpm-manifest.json`. A project is only ever read from a canonical path under one of
//! the configured roots, so `..` and symlinks cannot reach outside them.
//!
//! The [`ProjectRegistry`] lists projects registered by API (persisted in the state file) and
//! those in VCC's own `settings.json` (`userProjects`). A registered project whose folder has
//! vanished or become unreadable is still listed, with `error` set and no packages, so it can be
//! seen and unregistered.

use super::{StateStore, VccError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The manifest, relative to the project folder.
pub const MANIFEST_PATH: &str = "Packages/vpm-manifest.json";
/// The file holding the Unity version, relative to the project folder.
pub const PROJECT_VERSION_PATH: &str = "ProjectSettings/ProjectVersion.txt";

const WORLDS_PACKAGE: &str = "com.vrchat.worlds";
const AVATARS_PACKAGE: &str = "com.vrchat.avatars";

/// What a project is for, from the VRChat SDK it uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProjectType {
    World,
    Avatar,
    Unknown,
}

/// One package of a project: what the manifest asks for and what is locked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ProjectPackage {
    pub name: String,
    /// The version in `dependencies` (packages added by hand), if any.
    pub version: Option<String>,
    /// The version in `locked` (what is installed), if any.
    pub locked_version: Option<String>,
}

/// A Unity project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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

/// `Packages/vpm-manifest.json`. Unknown fields are kept, so writing it back loses nothing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VpmManifest {
    #[serde(default)]
    pub dependencies: BTreeMap<String, ManifestDependency>,
    #[serde(default)]
    pub locked: BTreeMap<String, LockedPackage>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// An entry of the manifest's `dependencies`: a package the user asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestDependency {
    pub version: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// An entry of the manifest's `locked`: an installed package and what it depends on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockedPackage {
    pub version: String,
    #[serde(default)]
    pub dependencies: BTreeMap<String, String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl VpmManifest {
    /// Reads the manifest of the project at `root`; a missing file is an empty manifest.
    pub fn read(root: &Path) -> Result<VpmManifest, VccError> {
        let path = root.join(MANIFEST_PATH);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(VpmManifest::default());
            }
            Err(e) => return Err(VccError::io(format!("cannot read {}", path.display()), e)),
        };
        serde_json::from_slice(strip_bom(&bytes)).map_err(|e| VccError::ManifestInvalid {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// Writes the manifest of the project at `root`, atomically.
    pub fn write(&self, root: &Path) -> Result<(), VccError> {
        let path = root.join(MANIFEST_PATH);
        let mut bytes = serde_json::to_vec_pretty(self).map_err(|e| VccError::ManifestInvalid {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        bytes.push(b'\n');
        super::write_atomic(&path, &bytes)
    }

    /// Whether `name` is asked for or installed.
    pub fn mentions(&self, name: &str) -> bool {
        self.dependencies.contains_key(name) || self.locked.contains_key(name)
    }
}

fn strip_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes)
}

/// Whether `name` looks like a VPM package name (`com.vrchat.worlds`): no path separators, no
/// `..`, nothing that could escape `Packages/`.
pub fn is_package_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 214
        && !name.starts_with('.')
        && !name.contains("..")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// The stable id of the project at canonical path `path`.
pub fn project_id(path: &Path) -> String {
    let digest = Sha256::digest(path.to_string_lossy().as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads the project at canonical path `root`.
pub fn read_project(root: &Path) -> Result<Project, VccError> {
    let manifest_path = root.join(MANIFEST_PATH);
    if !manifest_path.is_file() && !root.join("ProjectSettings").is_dir() {
        return Err(VccError::NotAUnityProject {
            path: root.display().to_string(),
        });
    }
    let manifest = VpmManifest::read(root)?;
    let has =
        |package: &str| manifest.mentions(package) || root.join("Packages").join(package).is_dir();
    let project_type = if has(WORLDS_PACKAGE) {
        ProjectType::World
    } else if has(AVATARS_PACKAGE) {
        ProjectType::Avatar
    } else {
        ProjectType::Unknown
    };
    let names: BTreeSet<&String> = manifest
        .dependencies
        .keys()
        .chain(manifest.locked.keys())
        .collect();
    let packages = names
        .into_iter()
        .map(|name| ProjectPackage {
            name: name.clone(),
            version: manifest.dependencies.get(name).map(|d| d.version.clone()),
            locked_version: manifest.locked.get(name).map(|l| l.version.clone()),
        })
        .collect();
    Ok(Project {
        id: project_id(root),
        name: folder_name(root),
        path: root.display().to_string(),
        project_type,
        unity_version: unity_version(root),
        packages,
        error: None,
    })
}

fn folder_name(root: &Path) -> String {
    root.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| root.display().to_string())
}

/// The `m_EditorVersion` of `ProjectSettings/ProjectVersion.txt`, if there is one.
fn unity_version(root: &Path) -> Option<String> {
    let text = std::fs::read_to_string(root.join(PROJECT_VERSION_PATH)).ok()?;
    text.lines().find_map(|line| {
        let value = line.trim().strip_prefix("m_EditorVersion:")?.trim();
        (!value.is_empty()).then(|| value.to_string())
    })
}

/// VCC's `settings.json`, the parts read here. Everything else in it is ignored.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VccSettings {
    #[serde(default)]
    pub user_projects: Vec<String>,
    #[serde(default)]
    pub user_repos: Vec<UserRepo>,
}

/// A repository listed in VCC's `settings.json`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct UserRepo {
    /// Empty for local repositories, which VCC lists with a `localPath` only.
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

impl VccSettings {
    /// Reads `path`; a missing or unreadable file is logged and read as empty settings, since
    /// VCC may simply not be installed on this machine.
    pub fn read(path: Option<&Path>) -> VccSettings {
        let Some(path) = path else {
            return VccSettings::default();
        };
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "no VCC settings file");
                return VccSettings::default();
            }
        };
        match serde_json::from_slice(strip_bom(&bytes)) {
            Ok(settings) => settings,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "VCC settings file is unreadable");
                VccSettings::default()
            }
        }
    }
}

/// Checks a project path against the roots and returns it canonical.
///
/// `roots` empty refuses everything: with no roots configured, nothing may be registered.
pub fn checked_path(roots: &[PathBuf], path: &Path) -> Result<PathBuf, VccError> {
    if roots.is_empty() {
        return Err(VccError::RootsNotConfigured);
    }
    if !path.is_absolute() {
        return Err(VccError::PathNotAbsolute {
            path: path.display().to_string(),
        });
    }
    let canonical = match std::fs::canonicalize(path) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(VccError::PathNotFound {
                path: path.display().to_string(),
            });
        }
        Err(e) => {
            return Err(VccError::io(
                format!("cannot resolve {}", path.display()),
                e,
            ));
        }
    };
    if !canonical.is_dir() {
        return Err(VccError::NotADirectory {
            path: path.display().to_string(),
        });
    }
    let inside = roots
        .iter()
        .filter_map(|root| std::fs::canonicalize(root).ok())
        .any(|root| canonical.starts_with(&root));
    if !inside {
        return Err(VccError::PathOutsideRoots {
            path: path.display().to_string(),
        });
    }
    Ok(canonical)
}

/// Projects registered by API plus those in VCC's settings.
#[derive(Debug)]
pub struct ProjectRegistry {
    roots: Vec<PathBuf>,
    settings_file: Option<PathBuf>,
    state: Arc<StateStore>,
    /// Projects the configuration lists (`vcc_projects`): trusted like the file they come from.
    configured: Vec<PathBuf>,
}

impl ProjectRegistry {
    pub(crate) fn new(
        roots: Vec<PathBuf>,
        settings_file: Option<PathBuf>,
        state: Arc<StateStore>,
    ) -> Self {
        ProjectRegistry {
            roots,
            settings_file,
            state,
            configured: Vec::new(),
        }
    }

    /// Adds the projects the configuration lists; they cannot be unregistered through the API.
    pub fn with_configured(mut self, projects: Vec<PathBuf>) -> Self {
        self.configured = projects;
        self
    }

    /// A registry over the state file at `state_file`.
    pub fn open(roots: Vec<PathBuf>, settings_file: Option<PathBuf>, state_file: PathBuf) -> Self {
        ProjectRegistry::new(roots, settings_file, Arc::new(StateStore::new(state_file)))
    }

    /// Registers the project at `path`. Registering it again returns the same project.
    pub fn register(&self, path: &Path) -> Result<Project, VccError> {
        let canonical = checked_path(&self.roots, path)?;
        let project = read_project(&canonical)?;
        let key = canonical.display().to_string();
        self.state.update(|state| {
            if !state.projects.contains(&key) {
                state.projects.push(key.clone());
            }
            Ok(())
        })?;
        Ok(project)
    }

    /// Forgets a registered project. Projects from VCC's settings cannot be unregistered here.
    pub fn unregister(&self, id: &str) -> Result<(), VccError> {
        self.state.update(|state| {
            let before = state.projects.len();
            state.projects.retain(|p| project_id(Path::new(p)) != id);
            if state.projects.len() == before {
                return Err(VccError::ProjectNotFound { id: id.to_string() });
            }
            Ok(())
        })
    }

    /// Every known project, read from disk now, sorted by name then path.
    pub fn list(&self) -> Vec<Project> {
        let mut projects: Vec<Project> = self
            .known_paths()
            .into_iter()
            .map(|path| {
                read_project(&path).unwrap_or_else(|e| Project {
                    id: project_id(&path),
                    name: folder_name(&path),
                    path: path.display().to_string(),
                    project_type: ProjectType::Unknown,
                    unity_version: None,
                    packages: Vec::new(),
                    error: Some(e.to_string()),
                })
            })
            .collect();
        projects.sort_by(|a, b| (&a.name, &a.path).cmp(&(&b.name, &b.path)));
        projects
    }

    /// The project with this id, read from disk now.
    pub fn get(&self, id: &str) -> Result<Project, VccError> {
        read_project(&self.path_of(id)?)
    }

    /// The canonical folder of the project with this id.
    pub fn path_of(&self, id: &str) -> Result<PathBuf, VccError> {
        self.known_paths()
            .into_iter()
            .find(|p| project_id(p) == id)
            .ok_or_else(|| VccError::ProjectNotFound { id: id.to_string() })
    }

    /// Registered paths (stored canonical), the configured ones, and the existing, allowed
    /// paths of VCC's settings.
    fn known_paths(&self) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = match self.state.load() {
            Ok(state) => state.projects.iter().map(PathBuf::from).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read registered VCC projects");
                Vec::new()
            }
        };
        for listed in &self.configured {
            match std::fs::canonicalize(listed) {
                Ok(canonical) => paths.push(canonical),
                Err(e) => tracing::warn!(
                    path = %listed.display(),
                    error = %e,
                    "a configured VCC project cannot be read, skipped"
                ),
            }
        }
        let settings = VccSettings::read(self.settings_file.as_deref());
        for listed in settings.user_projects {
            let listed = PathBuf::from(listed);
            let Ok(canonical) = std::fs::canonicalize(&listed) else {
                tracing::debug!(path = %listed.display(), "VCC project folder is missing, skipped");
                continue;
            };
            if !self.roots.is_empty() && checked_path(&self.roots, &canonical).is_err() {
                tracing::info!(path = %listed.display(), "VCC project is outside the roots, skipped");
                continue;
            }
            paths.push(canonical);
        }
        let mut seen = BTreeSet::new();
        paths.retain(|p| seen.insert(p.clone()));
        paths
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names_cannot_escape_packages() {
        assert!(is_package_name("com.vrchat.worlds"));
        assert!(is_package_name("jp.lilxyzw.liltoon"));
        for bad in ["", "..", "../x", "a/b", "a\\b", ".hidden", "com..x", "C:x"] {
            assert!(!is_package_name(bad), "{bad}");
        }
    }

    #[test]
    fn ids_are_16_hex_digits_of_the_path() {
        let id = project_id(Path::new("/projects/World"));
        assert_eq!(id.len(), 16);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(id, project_id(Path::new("/projects/World")));
        assert_ne!(id, project_id(Path::new("/projects/Avatar")));
    }

    #[test]
    fn manifest_keeps_unknown_fields() {
        let text =
            r#"{"dependencies":{"com.x":{"version":"1.0.0","extra":1}},"locked":{},"other":true}"#;
        let manifest: VpmManifest = serde_json::from_str(text).unwrap();
        let back = serde_json::to_value(&manifest).unwrap();
        assert_eq!(back["other"], true);
        assert_eq!(back["dependencies"]["com.x"]["extra"], 1);
    }

    #[test]
    fn settings_tolerate_missing_and_extra_fields() {
        let s: VccSettings = serde_json::from_str(
            r#"{"userProjects":["/a"],"userRepos":[{"url":"https://r/x.json","id":"x"},{"localPath":"/l"}],"pathToUnityExe":"u"}"#,
        )
        .unwrap();
        assert_eq!(s.user_projects, vec!["/a"]);
        assert_eq!(s.user_repos[0].url, "https://r/x.json");
        let s: VccSettings = serde_json::from_str("{}").unwrap();
        assert!(s.user_projects.is_empty());
    }
}
