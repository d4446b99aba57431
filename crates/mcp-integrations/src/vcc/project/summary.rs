//! What a project is, read from its folder now: its stable id, name, type (world or avatar),
//! Unity version and packages.

use super::manifest::{MANIFEST_PATH, VpmManifest, read_project_file};
use crate::vcc::{Project, ProjectPackage, ProjectType, VccError};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::path::Path;

/// The file holding the Unity version, relative to the project folder.
pub const PROJECT_VERSION_PATH: &str = "ProjectSettings/ProjectVersion.txt";
const WORLDS_PACKAGE: &str = "com.vrchat.worlds";
const AVATARS_PACKAGE: &str = "com.vrchat.avatars";
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

pub(super) fn folder_name(root: &Path) -> String {
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

#[cfg(test)]
mod tests {
    use super::{project_id, read_project, unity_version};
    use crate::vcc::project::VpmManifest;
    use std::path::Path;

    #[test]
    fn ids_are_16_hex_digits_of_the_path() {
        let id = project_id(Path::new("/projects/World"));
        assert_eq!(id.len(), 16);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(id, project_id(Path::new("/projects/World")));
        assert_ne!(id, project_id(Path::new("/projects/Avatar")));
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
}
