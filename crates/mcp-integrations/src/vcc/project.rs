//! Unity projects as VCC sees them: the folder, its Unity version, and the packages in
//! `Packages/vpm-manifest.json`. A project is only ever read from a canonical path under one of
//! the configured roots, so `..` and symlinks cannot reach outside them.
//!
//! The [`ProjectRegistry`] lists projects registered by API (persisted in the state file) and
//! those in VCC's own `settings.json` (`userProjects`). A registered project whose folder has
//! vanished or become unreadable is still listed, with `error` set and no packages, so it can be
//! seen and unregistered.

use super::{Project, ProjectPackage, ProjectType, StateStore, VccError};
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

/// The largest manifest or `ProjectVersion.txt` read. Real ones are a few kilobytes; the
/// limit stops a project folder from making the service read a huge file into memory.
pub const MAX_PROJECT_FILE_BYTES: u64 = 8 * 1024 * 1024;

const WORLDS_PACKAGE: &str = "com.vrchat.worlds";
const AVATARS_PACKAGE: &str = "com.vrchat.avatars";

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
        let bytes = match read_project_file(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(VpmManifest::default());
            }
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(VccError::ManifestInvalid {
                    path: path.display().to_string(),
                    message: e.to_string(),
                });
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

/// Reads a file of a project, which whoever made the project controls: only a regular file
/// (a FIFO would block forever, `/dev/zero` never ends) of at most [`MAX_PROJECT_FILE_BYTES`].
/// Both refusals are `InvalidData`.
fn read_project_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    // Opening a FIFO for reading waits for a writer, unless non-blocking.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NONBLOCK);
    let file = options.open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_PROJECT_FILE_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_PROJECT_FILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {MAX_PROJECT_FILE_BYTES} bytes"),
        ));
    }
    Ok(bytes)
}

fn strip_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes)
}

/// Whether `name` looks like a VPM package name (`com.vrchat.worlds`): no path separators, no
/// `..`, nothing that could escape `Packages/`. Nor a name Windows would read as another one
/// (a trailing dot is dropped there, so `com.x.` is `com.x`) or as a device (`nul.x`).
pub fn is_package_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 214
        && !name.starts_with('.')
        && !name.ends_with('.')
        && !name.contains("..")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        && !is_windows_device(name.split('.').next().unwrap_or(name))
}

/// `CON`, `NUL`, `COM1`…: names Windows opens as devices, whatever follows their first dot.
fn is_windows_device(stem: &str) -> bool {
    let stem = stem.to_ascii_uppercase();
    matches!(stem.as_str(), "CON" | "PRN" | "AUX" | "NUL")
        || ((stem.starts_with("COM") || stem.starts_with("LPT"))
            && stem.len() == 4
            && stem.as_bytes()[3].is_ascii_digit())
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
    let bytes = read_project_file(&root.join(PROJECT_VERSION_PATH)).ok()?;
    let text = String::from_utf8(bytes).ok()?;
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
            .map(|known| {
                let path = known.path.clone();
                known
                    .usable()
                    .and_then(|p| read_project(&p))
                    .unwrap_or_else(|e| Project {
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

    /// The canonical folder of the project with this id, checked again now: a registered
    /// folder swapped for a symlink out of the roots since is refused.
    pub fn path_of(&self, id: &str) -> Result<PathBuf, VccError> {
        self.known_paths()
            .into_iter()
            .find(|k| project_id(&k.path) == id)
            .ok_or_else(|| VccError::ProjectNotFound { id: id.to_string() })?
            .usable()
    }

    /// Whether a registered path still passes the check it passed when registered: since
    /// then it may have been replaced by a symlink leading out of the roots, or the roots may
    /// have changed.
    fn still_allowed(&self, path: &Path) -> bool {
        match checked_path(&self.roots, path) {
            Ok(canonical) => canonical == path,
            // Vanished or no longer a folder: reading it says so, and it stays listed.
            Err(VccError::PathNotFound { .. } | VccError::NotADirectory { .. }) => true,
            Err(_) => false,
        }
    }

    /// The configured paths, registered paths (stored canonical, checked again) and the
    /// existing, allowed paths of VCC's settings.
    fn known_paths(&self) -> Vec<KnownPath> {
        let mut paths: Vec<KnownPath> = Vec::new();
        for listed in &self.configured {
            match std::fs::canonicalize(listed) {
                Ok(canonical) => paths.push(KnownPath {
                    path: canonical,
                    allowed: true,
                }),
                Err(e) => tracing::warn!(
                    path = %listed.display(),
                    error = %e,
                    "a configured VCC project cannot be read, skipped"
                ),
            }
        }
        match self.state.load() {
            Ok(state) => paths.extend(state.projects.iter().map(|p| {
                let path = PathBuf::from(p);
                let allowed = self.still_allowed(&path);
                KnownPath { path, allowed }
            })),
            Err(e) => tracing::warn!(error = %e, "cannot read registered VCC projects"),
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
            paths.push(KnownPath {
                path: canonical,
                allowed: true,
            });
        }
        // The first mention wins: a configured project stays trusted when also registered.
        let mut seen = BTreeSet::new();
        paths.retain(|k| seen.insert(k.path.clone()));
        paths
    }
}

/// A project folder the registry knows, and whether it may still be read and changed.
struct KnownPath {
    path: PathBuf,
    allowed: bool,
}

impl KnownPath {
    fn usable(self) -> Result<PathBuf, VccError> {
        if self.allowed {
            Ok(self.path)
        } else {
            Err(VccError::PathOutsideRoots {
                path: self.path.display().to_string(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names_cannot_escape_packages() {
        assert!(is_package_name("com.vrchat.worlds"));
        assert!(is_package_name("jp.lilxyzw.liltoon"));
        assert!(is_package_name("com.nul.x"));
        assert!(is_package_name("console.tools"));
        for bad in [
            "",
            "..",
            "../x",
            "a/b",
            "a\\b",
            ".hidden",
            "com..x",
            "C:x",
            "com.x.",
            "nul",
            "NUL.x",
            "con.vrchat",
            "com1.tool",
            "Lpt9",
        ] {
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

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn an_oversized_manifest_is_refused_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MANIFEST_PATH);
        write(&path, "");
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(MAX_PROJECT_FILE_BYTES + 1).unwrap();
        let e = VpmManifest::read(dir.path()).unwrap_err();
        assert_eq!(e.code(), "manifest_invalid");
        assert!(e.to_string().contains("larger than"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn a_manifest_that_is_not_a_regular_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let packages = dir.path().join("Packages");
        std::fs::create_dir_all(&packages).unwrap();
        // A link to a device that never ends.
        std::os::unix::fs::symlink("/dev/zero", packages.join("vpm-manifest.json")).unwrap();
        let e = VpmManifest::read(dir.path()).unwrap_err();
        assert_eq!(e.code(), "manifest_invalid");
        assert!(read_project(dir.path()).is_err());
        // A FIFO nobody writes to: opening it must not wait for a writer.
        std::fs::remove_file(packages.join("vpm-manifest.json")).unwrap();
        let fifo = std::ffi::CString::new(
            packages
                .join("vpm-manifest.json")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let e = VpmManifest::read(dir.path()).unwrap_err();
        assert_eq!(e.code(), "manifest_invalid");
        // The same for `ProjectVersion.txt`, which is only informative.
        let settings = dir.path().join("ProjectSettings");
        std::fs::create_dir_all(&settings).unwrap();
        std::os::unix::fs::symlink("/dev/zero", settings.join("ProjectVersion.txt")).unwrap();
        assert_eq!(unity_version(dir.path()), None);
    }

    #[cfg(unix)]
    #[test]
    fn a_registered_folder_swapped_for_a_symlink_out_of_the_roots_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let roots = dir.path().join("projects");
        let project = roots.join("World");
        write(&project.join(MANIFEST_PATH), "{}");
        let outside = dir.path().join("outside");
        write(
            &outside.join(MANIFEST_PATH),
            r#"{"locked":{"com.secret":{"version":"1.0.0"}}}"#,
        );
        let registry =
            ProjectRegistry::open(vec![roots.clone()], None, dir.path().join("state/vcc.json"));
        let id = registry.register(&project).unwrap().id;
        assert_eq!(
            registry.path_of(&id).unwrap(),
            project.canonicalize().unwrap()
        );

        std::fs::rename(&project, dir.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(&outside, &project).unwrap();
        assert_eq!(
            registry.path_of(&id).unwrap_err().code(),
            "path_outside_roots"
        );
        assert_eq!(registry.get(&id).unwrap_err().code(), "path_outside_roots");
        let listed = registry.list();
        assert_eq!(listed.len(), 1);
        assert!(listed[0].error.is_some());
        assert!(listed[0].packages.is_empty());
        // It can still be forgotten.
        registry.unregister(&id).unwrap();
        assert!(registry.list().is_empty());
    }

    #[test]
    fn a_vanished_registered_folder_is_still_listed() {
        let dir = tempfile::tempdir().unwrap();
        let roots = dir.path().join("projects");
        let project = roots.join("World");
        write(&project.join(MANIFEST_PATH), "{}");
        let registry =
            ProjectRegistry::open(vec![roots.clone()], None, dir.path().join("state/vcc.json"));
        let id = registry.register(&project).unwrap().id;
        std::fs::remove_dir_all(&project).unwrap();
        let listed = registry.list();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id, id);
        assert!(listed[0].error.is_some());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn name_like() -> impl Strategy<Value = String> {
            let piece = prop_oneof![
                Just(".".to_string()),
                Just("..".to_string()),
                Just("/".to_string()),
                Just("\\".to_string()),
                Just(":".to_string()),
                Just("\0".to_string()),
                Just("-".to_string()),
                Just("com".to_string()),
                Just("nul".to_string()),
                "[a-z0-9_]{1,5}",
                "\\PC",
            ];
            prop_oneof![
                any::<String>(),
                proptest::collection::vec(piece, 0..10).prop_map(|p| p.concat()),
            ]
        }

        fn json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                "\\PC{0,8}".prop_map(Value::String),
            ];
            leaf.prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    proptest::collection::btree_map(
                        prop_oneof![
                            Just("dependencies".to_string()),
                            Just("locked".to_string()),
                            Just("version".to_string()),
                            "\\PC{0,6}",
                        ],
                        inner,
                        0..4
                    )
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            #[test]
            fn accepted_package_names_are_one_plain_folder(name in name_like()) {
                if is_package_name(&name) {
                    prop_assert!(!name.contains(['/', '\\', ':', '\0']));
                    prop_assert!(!name.split('.').any(str::is_empty), "{:?}", name);
                    let mut components = Path::new(&name).components();
                    prop_assert!(matches!(components.next(), Some(std::path::Component::Normal(_))));
                    prop_assert!(components.next().is_none());
                    let packages = Path::new("/project/Packages");
                    let joined = packages.join(&name);
                    prop_assert_eq!(joined.parent(), Some(packages));
                }
            }

            #[test]
            fn manifests_from_any_bytes_read_or_fail_cleanly(
                bytes in prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..128),
                    json().prop_map(|v| v.to_string().into_bytes()),
                    json().prop_map(|v| serde_json::json!({"dependencies": v.clone(), "locked": v}).to_string().into_bytes()),
                ],
                bom: bool,
            ) {
                let dir = tempfile::tempdir().unwrap();
                let mut content = if bom { b"\xEF\xBB\xBF".to_vec() } else { Vec::new() };
                content.extend_from_slice(&bytes);
                std::fs::create_dir_all(dir.path().join("Packages")).unwrap();
                std::fs::write(dir.path().join(MANIFEST_PATH), &content).unwrap();
                match VpmManifest::read(dir.path()) {
                    Ok(manifest) => {
                        // Whatever was read is written back and read again unchanged.
                        manifest.write(dir.path()).unwrap();
                        prop_assert_eq!(VpmManifest::read(dir.path()).unwrap(), manifest);
                    }
                    Err(e) => prop_assert_eq!(e.code(), "manifest_invalid"),
                }
                if let Ok(project) = read_project(dir.path()) {
                    prop_assert_eq!(project.error, None);
                }
            }
        }
    }
}
