//! Adding, upgrading and removing packages, all or nothing.
//!
//! Every zip is downloaded and checked against its `zipSHA256`, then extracted into a staging
//! folder inside `Packages/` (`.mcp-staging-<uuid>`, hidden from Unity) with every entry checked
//! to stay inside it. Only when all of them are staged are the package folders swapped in (the
//! old ones moved into the staging folder as backups) and the manifest rewritten, last. Any
//! failure on the way puts the backups back and deletes the staging folder, so the project is
//! left exactly as it was.

mod swap;
mod unzip;

pub use unzip::{MAX_ZIP_ENTRIES, safe_entry_path};

use super::project::{ManifestDependency, VpmManifest, is_package_name};
use super::vpm::{RepoCache, Requirement, VpmRange};
use super::{Project, VccError};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// One package that changed: `from` null when added, `to` null when removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackageChange {
    pub name: String,
    pub from: Option<String>,
    pub to: Option<String>,
}

/// What an add, upgrade or remove did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstallSummary {
    /// The project as it is afterwards.
    pub project: Project,
    pub changed: Vec<PackageChange>,
}

/// What installs need: the repositories, an HTTP client and the limits.
pub struct Installer<'a> {
    pub repos: &'a RepoCache,
    pub http: &'a crate::outbound::OutboundClient,
    pub max_download_bytes: u64,
    pub max_extracted_bytes: u64,
}

const REQUESTED_BY: &str = "request";

fn check_name(name: &str) -> Result<(), VccError> {
    if is_package_name(name) {
        Ok(())
    } else {
        Err(VccError::PackageNotFound {
            name: name.to_string(),
        })
    }
}

/// `Packages/` of the project at `root`. The project folder was checked to lie under the
/// roots, but a `Packages/` that is a symlink could send every write (and the deletion of the
/// staging folder) anywhere, so it is refused.
fn packages_dir(root: &Path) -> Result<PathBuf, VccError> {
    let packages = root.join("Packages");
    match std::fs::symlink_metadata(&packages) {
        Ok(meta) if meta.file_type().is_symlink() => Err(VccError::PathOutsideRoots {
            path: packages.display().to_string(),
        }),
        _ => Ok(packages),
    }
}

/// Whether something is at `path`, a dangling symlink included (`exists` says no to those).
fn present(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

async fn read_manifest(root: &Path) -> Result<VpmManifest, VccError> {
    packages_dir(root)?;
    let root = root.to_path_buf();
    tokio::task::spawn_blocking(move || VpmManifest::read(&root))
        .await
        .map_err(|e| VccError::io("reading the manifest failed", std::io::Error::other(e)))?
}

/// Adds `name` at the newest version `range` allows, with its dependencies.
pub async fn add(
    installer: &Installer<'_>,
    root: &Path,
    name: &str,
    range: &VpmRange,
    include_prerelease: bool,
) -> Result<Vec<PackageChange>, VccError> {
    check_name(name)?;
    let before = read_manifest(root).await?;
    let requests = [Requirement {
        name: name.to_string(),
        range: range.clone(),
        requested_by: REQUESTED_BY.into(),
    }];
    let resolved = installer
        .resolve(&requests, include_prerelease, &before.locked)
        .await?;
    let mut after = before.clone();
    if let Some(picked) = resolved.iter().find(|r| r.name == name) {
        let extra = after
            .dependencies
            .remove(name)
            .map(|d| d.extra)
            .unwrap_or_default();
        after.dependencies.insert(
            name.to_string(),
            ManifestDependency {
                version: picked.version.to_string(),
                extra,
            },
        );
    }
    installer.apply(root, &before, after, &resolved, &[]).await
}

/// Moves `name` to the newest version `range` (default: any) allows. A package on a
/// pre-release stays on pre-releases.
pub async fn upgrade(
    installer: &Installer<'_>,
    root: &Path,
    name: &str,
    range: Option<&VpmRange>,
) -> Result<Vec<PackageChange>, VccError> {
    check_name(name)?;
    let before = read_manifest(root).await?;
    if !before.mentions(name) {
        return Err(VccError::PackageNotInstalled {
            name: name.to_string(),
        });
    }
    let on_prerelease = before
        .locked
        .get(name)
        .and_then(|l| semver::Version::parse(&l.version).ok())
        .is_some_and(|v| !v.pre.is_empty());
    let requests = [Requirement {
        name: name.to_string(),
        range: range.cloned().unwrap_or_else(VpmRange::any),
        requested_by: REQUESTED_BY.into(),
    }];
    let resolved = installer
        .resolve(&requests, on_prerelease, &before.locked)
        .await?;
    let mut after = before.clone();
    if let (Some(picked), Some(dependency)) = (
        resolved.iter().find(|r| r.name == name),
        after.dependencies.get_mut(name),
    ) {
        dependency.version = picked.version.to_string();
    }
    installer.apply(root, &before, after, &resolved, &[]).await
}

/// Removes `name`, unless another locked package depends on it.
pub async fn remove(
    installer: &Installer<'_>,
    root: &Path,
    name: &str,
) -> Result<Vec<PackageChange>, VccError> {
    check_name(name)?;
    let before = read_manifest(root).await?;
    if !before.mentions(name) {
        return Err(VccError::PackageNotInstalled {
            name: name.to_string(),
        });
    }
    let required_by: Vec<String> = before
        .locked
        .iter()
        .filter(|(other, locked)| *other != name && locked.dependencies.contains_key(name))
        .map(|(other, _)| other.clone())
        .collect();
    if !required_by.is_empty() {
        return Err(VccError::PackageRequiredBy {
            name: name.to_string(),
            required_by,
        });
    }
    let mut after = before.clone();
    after.dependencies.remove(name);
    after.locked.remove(name);
    installer
        .apply(root, &before, after, &[], &[name.to_string()])
        .await
}
