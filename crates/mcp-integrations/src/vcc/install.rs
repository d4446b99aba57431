//! Adding, upgrading and removing packages, all or nothing.
//!
//! Every zip is downloaded and checked against its `zipSHA256`, then extracted into a staging
//! folder inside `Packages/` (`.mcp-staging-<uuid>`, hidden from Unity) with every entry checked
//! to stay inside it. Only when all of them are staged are the package folders swapped in (the
//! old ones moved into the staging folder as backups) and the manifest rewritten, last. Any
//! failure on the way puts the backups back and deletes the staging folder, so the project is
//! left exactly as it was.

use super::project::{LockedPackage, ManifestDependency, VpmManifest, is_package_name};
use super::vpm::{RepoCache, Requirement, Resolved, VpmRange, resolve};
use super::{Project, VccError};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use tokio::io::AsyncWriteExt;

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
    pub http: &'a reqwest::Client,
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

async fn read_manifest(root: &Path) -> Result<VpmManifest, VccError> {
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

/// A step already taken on `Packages/`, to be undone if a later one fails.
enum Step {
    /// `target` now holds the new package; the old one (if any) is at `backup`.
    Replaced {
        target: PathBuf,
        backup: Option<PathBuf>,
    },
    /// `target` was moved to `backup`.
    Removed { target: PathBuf, backup: PathBuf },
}

impl Installer<'_> {
    async fn resolve(
        &self,
        requests: &[Requirement],
        include_prerelease: bool,
        locked: &BTreeMap<String, LockedPackage>,
    ) -> Result<Vec<Resolved>, VccError> {
        let (repos, mut failures) = self.repos.snapshot().await;
        match resolve(&repos, requests, include_prerelease, locked) {
            // A package may be missing only because its repository is down right now.
            Err(VccError::PackageNotFound { .. } | VccError::NoMatchingVersion { .. })
                if !failures.is_empty() =>
            {
                Err(failures.swap_remove(0))
            }
            other => other,
        }
    }

    /// Installs `resolved`, removes `removals`, writes `after` (with `locked` updated for what
    /// was resolved); all or nothing.
    async fn apply(
        &self,
        root: &Path,
        before: &VpmManifest,
        mut after: VpmManifest,
        resolved: &[Resolved],
        removals: &[String],
    ) -> Result<Vec<PackageChange>, VccError> {
        let packages = root.join("Packages");
        let mut changed = Vec::new();
        let mut installs = Vec::new();
        for r in resolved {
            check_name(&r.name)?;
            let version = r.version.to_string();
            let old = before.locked.get(&r.name).map(|l| l.version.clone());
            let extra = after
                .locked
                .remove(&r.name)
                .map(|l| l.extra)
                .unwrap_or_default();
            after.locked.insert(
                r.name.clone(),
                LockedPackage {
                    version: version.clone(),
                    dependencies: r.vpm_dependencies.clone(),
                    extra,
                },
            );
            if old.as_deref() == Some(version.as_str()) && packages.join(&r.name).is_dir() {
                continue;
            }
            changed.push(PackageChange {
                name: r.name.clone(),
                from: old,
                to: Some(version),
            });
            installs.push(r);
        }
        for name in removals {
            changed.push(PackageChange {
                name: name.clone(),
                from: before.locked.get(name).map(|l| l.version.clone()),
                to: None,
            });
        }
        if installs.is_empty() && removals.is_empty() && &after == before {
            return Ok(changed);
        }

        let staging = packages.join(format!(".mcp-staging-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&staging)
            .map_err(|e| VccError::io(format!("cannot create {}", staging.display()), e))?;
        let mut steps = Vec::new();
        let outcome = self
            .stage_and_swap(root, &staging, &installs, removals, &after, &mut steps)
            .await;
        if outcome.is_err() {
            roll_back(steps);
        }
        if let Err(e) = std::fs::remove_dir_all(&staging) {
            tracing::warn!(path = %staging.display(), error = %e, "cannot remove the staging folder");
        }
        outcome.map(|()| changed)
    }

    async fn stage_and_swap(
        &self,
        root: &Path,
        staging: &Path,
        installs: &[&Resolved],
        removals: &[String],
        after: &VpmManifest,
        steps: &mut Vec<Step>,
    ) -> Result<(), VccError> {
        // Package names never start with a dot, so `.zips` and `.backup` cannot collide with a
        // staged package folder.
        let zips = staging.join(".zips");
        std::fs::create_dir_all(&zips)
            .map_err(|e| VccError::io(format!("cannot create {}", zips.display()), e))?;
        for r in installs {
            let zip = zips.join(&r.name);
            self.download(r, &zip).await?;
            let (name, dest, limit) = (
                r.name.clone(),
                staging.join(&r.name),
                self.max_extracted_bytes,
            );
            tokio::task::spawn_blocking(move || extract(&name, &zip, &dest, limit))
                .await
                .map_err(|e| VccError::io("extracting failed", std::io::Error::other(e)))??;
        }
        let names: Vec<String> = installs.iter().map(|r| r.name.clone()).collect();
        swap_in(&root.join("Packages"), staging, &names, removals, steps)?;
        after.write(root)
    }

    /// Streams the zip of `r` to `dest`, hashing as it goes, and checks the hash.
    async fn download(&self, r: &Resolved, dest: &Path) -> Result<(), VccError> {
        let url = r.url.as_str();
        let network = |e: reqwest::Error| VccError::Network {
            url: url.to_string(),
            message: e.to_string(),
        };
        match reqwest::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => {
                return Err(VccError::RepositoryInvalid {
                    url: url.to_string(),
                    message: format!("{} {} has no usable zip URL", r.name, r.version),
                });
            }
        }
        let mut request = self.http.get(url);
        for (k, v) in &r.headers {
            request = request.header(k, v);
        }
        let mut response = request.send().await.map_err(network)?;
        if !response.status().is_success() {
            return Err(VccError::Upstream {
                url: url.to_string(),
                status: response.status().as_u16(),
            });
        }
        let too_large = || VccError::TooLarge {
            url: url.to_string(),
            limit: self.max_download_bytes,
        };
        if response
            .content_length()
            .is_some_and(|n| n > self.max_download_bytes)
        {
            return Err(too_large());
        }
        let io = |e| VccError::io(format!("cannot write {}", dest.display()), e);
        let mut file = tokio::fs::File::create(dest).await.map_err(io)?;
        let mut hasher = Sha256::new();
        let mut total: u64 = 0;
        while let Some(chunk) = response.chunk().await.map_err(network)? {
            total += chunk.len() as u64;
            if total > self.max_download_bytes {
                return Err(too_large());
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(io)?;
        }
        file.flush().await.map_err(io)?;
        let actual: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        match r.zip_sha256.as_deref().map(str::trim) {
            Some(expected) if !expected.is_empty() => {
                if !expected.eq_ignore_ascii_case(&actual) {
                    return Err(VccError::HashMismatch {
                        name: r.name.clone(),
                        expected: expected.to_string(),
                        actual,
                    });
                }
            }
            _ => {
                tracing::info!(package = %r.name, version = %r.version, "the listing has no zipSHA256; not verified");
            }
        }
        Ok(())
    }
}

/// Moves each staged `installs` folder into `packages` (the old one, if any, to a backup in the
/// staging folder) and each of `removals` out to a backup, recording every step in `steps`.
fn swap_in(
    packages: &Path,
    staging: &Path,
    installs: &[String],
    removals: &[String],
    steps: &mut Vec<Step>,
) -> Result<(), VccError> {
    let backups = staging.join(".backup");
    std::fs::create_dir_all(&backups)
        .map_err(|e| VccError::io(format!("cannot create {}", backups.display()), e))?;
    let rename = |from: &Path, to: &Path| {
        std::fs::rename(from, to).map_err(|e| {
            VccError::io(
                format!("cannot move {} to {}", from.display(), to.display()),
                e,
            )
        })
    };
    for name in installs {
        let target = packages.join(name);
        let backup = if target.exists() {
            let backup = backups.join(name);
            rename(&target, &backup)?;
            Some(backup)
        } else {
            None
        };
        if let Err(e) = rename(&staging.join(name), &target) {
            if let Some(backup) = backup {
                let _ = std::fs::rename(&backup, &target);
            }
            return Err(e);
        }
        steps.push(Step::Replaced { target, backup });
    }
    for name in removals {
        let target = packages.join(name);
        if target.exists() {
            let backup = backups.join(name);
            rename(&target, &backup)?;
            steps.push(Step::Removed { target, backup });
        }
    }
    Ok(())
}

/// Undoes `steps`, newest first. Best effort: every step is tried even if one fails.
fn roll_back(steps: Vec<Step>) {
    for step in steps.into_iter().rev() {
        let result = match step {
            Step::Replaced { target, backup } => {
                std::fs::remove_dir_all(&target).and_then(|()| match backup {
                    Some(backup) => std::fs::rename(&backup, &target),
                    None => Ok(()),
                })
            }
            Step::Removed { target, backup } => std::fs::rename(&backup, &target),
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot roll back a package change");
        }
    }
}

/// The path of a zip entry inside the package folder, or `None` when it would escape it:
/// absolute paths, drive letters, `..` (with `/` or `\` as separator), NUL bytes.
pub fn safe_entry_path(raw: &str) -> Option<PathBuf> {
    if raw.contains('\0') || raw.starts_with('/') || raw.starts_with('\\') {
        return None;
    }
    let mut path = PathBuf::new();
    for part in raw.split(['/', '\\']) {
        match part {
            "" | "." => continue,
            ".." => return None,
            p if p.contains(':') => return None,
            p => path.push(p),
        }
    }
    // Belt and braces: whatever the platform makes of it, only normal components.
    if path.components().all(|c| matches!(c, Component::Normal(_))) {
        Some(path)
    } else {
        None
    }
}

const S_IFMT: u32 = 0o170000;
const S_IFLNK: u32 = 0o120000;

/// Extracts the zip at `zip` into `dest`, refusing entries that would escape it and symlinks.
fn extract(name: &str, zip: &Path, dest: &Path, max_bytes: u64) -> Result<(), VccError> {
    let invalid = |e: zip::result::ZipError| VccError::ZipInvalid {
        name: name.to_string(),
        message: e.to_string(),
    };
    let io = |path: &Path, e| VccError::io(format!("cannot write {}", path.display()), e);
    let file = std::fs::File::open(zip).map_err(|e| io(zip, e))?;
    let mut archive = zip::ZipArchive::new(file).map_err(invalid)?;
    std::fs::create_dir_all(dest).map_err(|e| io(dest, e))?;
    let mut remaining = max_bytes;
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index).map_err(invalid)?;
        let raw = entry.name().map_err(invalid)?.into_owned();
        let unsafe_entry = || VccError::ZipUnsafe {
            name: name.to_string(),
            entry: raw.clone(),
        };
        if entry.is_symlink() || entry.unix_mode().is_some_and(|m| m & S_IFMT == S_IFLNK) {
            return Err(unsafe_entry());
        }
        let relative = safe_entry_path(&raw).ok_or_else(unsafe_entry)?;
        let path = dest.join(&relative);
        if entry.is_dir() {
            std::fs::create_dir_all(&path).map_err(|e| io(&path, e))?;
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
        }
        let mut out = std::fs::File::create(&path).map_err(|e| io(&path, e))?;
        let written = std::io::copy(&mut (&mut entry).take(remaining + 1), &mut out)
            .map_err(|e| io(&path, e))?;
        if written > remaining {
            return Err(VccError::TooLarge {
                url: format!("{name} (extracted)"),
                limit: max_bytes,
            });
        }
        remaining -= written;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn read(path: &Path) -> Option<String> {
        std::fs::read_to_string(path).ok()
    }

    #[test]
    fn a_failed_swap_rolls_back_every_step() {
        let dir = tempfile::tempdir().unwrap();
        let packages = dir.path().join("Packages");
        let staging = packages.join(".mcp-staging-test");
        write(&packages.join("com.a/package.json"), "old a");
        write(&packages.join("com.c/package.json"), "old c");
        write(&packages.join("com.gone/package.json"), "old gone");
        write(&staging.join("com.a/package.json"), "new a");
        write(&staging.join("com.b/package.json"), "new b");
        // com.c was never staged: moving it in fails after com.a and com.b are in place.
        let mut steps = Vec::new();
        let installs = [
            "com.a".to_string(),
            "com.b".to_string(),
            "com.c".to_string(),
        ];
        let e = swap_in(
            &packages,
            &staging,
            &installs,
            &["com.gone".into()],
            &mut steps,
        )
        .unwrap_err();
        assert_eq!(e.code(), "io_error");
        assert_eq!(steps.len(), 2);
        assert_eq!(
            read(&packages.join("com.a/package.json")).as_deref(),
            Some("new a")
        );
        roll_back(steps);
        assert_eq!(
            read(&packages.join("com.a/package.json")).as_deref(),
            Some("old a")
        );
        assert!(!packages.join("com.b").exists());
        assert_eq!(
            read(&packages.join("com.c/package.json")).as_deref(),
            Some("old c")
        );
        assert_eq!(
            read(&packages.join("com.gone/package.json")).as_deref(),
            Some("old gone")
        );
    }

    #[test]
    fn removals_are_rolled_back_too() {
        let dir = tempfile::tempdir().unwrap();
        let packages = dir.path().join("Packages");
        let staging = packages.join(".mcp-staging-test");
        write(&packages.join("com.gone/package.json"), "old gone");
        let mut steps = Vec::new();
        swap_in(&packages, &staging, &[], &["com.gone".into()], &mut steps).unwrap();
        assert!(!packages.join("com.gone").exists());
        roll_back(steps);
        assert_eq!(
            read(&packages.join("com.gone/package.json")).as_deref(),
            Some("old gone")
        );
    }

    #[test]
    fn entry_paths_stay_inside() {
        assert_eq!(
            safe_entry_path("Runtime/a.cs"),
            Some(PathBuf::from("Runtime/a.cs"))
        );
        assert_eq!(
            safe_entry_path("./package.json"),
            Some(PathBuf::from("package.json"))
        );
        assert_eq!(
            safe_entry_path("Editor\\b.cs"),
            Some(PathBuf::from("Editor/b.cs"))
        );
        for bad in [
            "../evil",
            "a/../../evil",
            "a/..",
            "/etc/passwd",
            "\\evil",
            "..\\evil",
            "C:\\evil",
            "a\0b",
        ] {
            assert_eq!(safe_entry_path(bad), None, "{bad:?}");
        }
    }
}
