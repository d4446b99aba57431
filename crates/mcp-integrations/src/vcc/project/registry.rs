//! The projects this service knows: registered by API (kept in the state file), listed in the
//! configuration or in VCC's settings; each one checked against the roots whenever it is used.

use super::settings::VccSettings;
use super::summary::{folder_name, project_id, read_project};
use crate::vcc::{Project, ProjectType, StateStore, VccError};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `path` with `.` dropped and `..` taken back lexically, without asking the file system.
fn lexically_normal(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Checks a project path against the roots and returns it canonical.
///
/// `roots` empty refuses everything: with no roots configured, nothing may be registered.
pub fn checked_path(roots: &[PathBuf], path: &Path) -> Result<PathBuf, VccError> {
    if roots.is_empty() {
        return Err(VccError::RootsNotConfigured);
    }
    if path.as_os_str().as_encoded_bytes().contains(&0) {
        return Err(VccError::PathInvalid {
            path: path.display().to_string(),
            reason: "contains a NUL byte",
        });
    }
    if !path.is_absolute() {
        return Err(VccError::PathNotAbsolute {
            path: path.display().to_string(),
        });
    }
    // Refused before the file system is asked, so that the answer never tells whether a path
    // outside the roots exists. The check after resolving symlinks below still applies.
    let canonical_roots: Vec<PathBuf> = roots
        .iter()
        .filter_map(|root| std::fs::canonicalize(root).ok())
        .collect();
    let lexical = lexically_normal(path);
    if !roots
        .iter()
        .chain(&canonical_roots)
        .any(|root| lexical.starts_with(lexically_normal(root)))
    {
        return Err(VccError::PathOutsideRoots {
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
    let inside = canonical_roots
        .iter()
        .any(|root| canonical.starts_with(root));
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
    use super::ProjectRegistry;
    use crate::vcc::project::MANIFEST_PATH;
    use std::path::Path;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
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
}
