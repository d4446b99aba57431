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
        let packages = packages_dir(root)?;
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
        if outcome.is_err() && !roll_back(steps) {
            // Some old package folders are still only in the staging folder's backups:
            // deleting it would lose them for good.
            tracing::error!(path = %staging.display(), "rollback incomplete; the staging folder is kept with the backups");
            return outcome.map(|()| changed);
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
        let backup = if present(&target) {
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
        if present(&target) {
            let backup = backups.join(name);
            rename(&target, &backup)?;
            steps.push(Step::Removed { target, backup });
        }
    }
    Ok(())
}

/// Undoes `steps`, newest first. Best effort: every step is tried even if one fails. Returns
/// whether all of them were undone.
fn roll_back(steps: Vec<Step>) -> bool {
    let mut complete = true;
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
            complete = false;
        }
    }
    complete
}

/// The path of a zip entry inside the package folder, or `None` when it would escape it:
/// absolute paths, drive letters, `..` (with `/` or `\` as separator), NUL bytes, and parts
/// made only of dots and spaces (Windows drops trailing dots and spaces, so `.. ` climbs there).
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
            p if p.chars().all(|c| matches!(c, '.' | ' ')) => return None,
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

/// The most entries one package zip may have. The byte limit does not see empty files and
/// folders, and a zip of nothing but those (a hundred bytes each) could fill the disk's inodes.
/// The biggest VRChat SDK package has under ten thousand.
pub const MAX_ZIP_ENTRIES: usize = 100_000;

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
    if archive.len() > MAX_ZIP_ENTRIES {
        return Err(VccError::ZipInvalid {
            name: name.to_string(),
            message: format!(
                "{} entries, more than the {MAX_ZIP_ENTRIES} allowed",
                archive.len()
            ),
        });
    }
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
        let written = std::io::copy(
            &mut (&mut entry).take(remaining.saturating_add(1)),
            &mut out,
        )
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
        assert!(roll_back(steps));
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
        assert!(roll_back(steps));
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

    #[test]
    fn entry_parts_windows_reads_as_dot_dot_are_refused() {
        // Windows drops trailing dots and spaces from a path part: each of these climbs there.
        for bad in ["a/.. /evil", "... \\evil", "a/. ./b", "..../x", " ../x"] {
            assert_eq!(safe_entry_path(bad), None, "{bad:?}");
        }
        assert_eq!(
            safe_entry_path("Runtime/.editorconfig"),
            Some(PathBuf::from("Runtime/.editorconfig"))
        );
    }

    #[cfg(unix)]
    fn symlink(target: &Path, link: &Path) {
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, link).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_symlinked_packages_folder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        write(&outside.join("vpm-manifest.json"), "{}");
        let root = dir.path().join("project");
        symlink(&outside, &root.join("Packages"));
        let e = packages_dir(&root).unwrap_err();
        assert_eq!(e.code(), "path_outside_roots");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let e = runtime.block_on(read_manifest(&root)).unwrap_err();
        assert_eq!(e.code(), "path_outside_roots");
        // A real folder, or none yet, is fine.
        let plain = dir.path().join("plain");
        assert_eq!(packages_dir(&plain).unwrap(), plain.join("Packages"));
        std::fs::create_dir_all(plain.join("Packages")).unwrap();
        assert_eq!(packages_dir(&plain).unwrap(), plain.join("Packages"));
    }

    #[cfg(unix)]
    #[test]
    fn a_symlinked_package_folder_is_moved_aside_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        write(&outside.join("keep.txt"), "mine");
        let packages = dir.path().join("Packages");
        let staging = packages.join(".mcp-staging-test");
        symlink(&outside, &packages.join("com.a"));
        symlink(&outside, &packages.join("com.gone"));
        write(&staging.join("com.a/package.json"), "new a");
        let mut steps = Vec::new();
        swap_in(
            &packages,
            &staging,
            &["com.a".into()],
            &["com.gone".into()],
            &mut steps,
        )
        .unwrap();
        assert!(!packages.join("com.a").is_symlink());
        assert_eq!(
            read(&packages.join("com.a/package.json")).as_deref(),
            Some("new a")
        );
        assert!(!present(&packages.join("com.gone")));
        // What `apply` does once the change is in: the backups go with the staging folder,
        // the links but not what they point to.
        std::fs::remove_dir_all(&staging).unwrap();
        assert_eq!(read(&outside.join("keep.txt")).as_deref(), Some("mine"));
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn dangling_package_symlinks_are_replaced_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let packages = dir.path().join("Packages");
        let staging = packages.join(".mcp-staging-test");
        let nowhere = dir.path().join("nowhere");
        symlink(&nowhere, &packages.join("com.a"));
        symlink(&nowhere, &packages.join("com.gone"));
        write(&staging.join("com.a/package.json"), "new a");
        let mut steps = Vec::new();
        swap_in(
            &packages,
            &staging,
            &["com.a".into()],
            &["com.gone".into()],
            &mut steps,
        )
        .unwrap();
        assert_eq!(
            read(&packages.join("com.a/package.json")).as_deref(),
            Some("new a")
        );
        assert!(!present(&packages.join("com.gone")));
        assert!(roll_back(steps));
        assert!(packages.join("com.a").is_symlink());
        assert!(packages.join("com.gone").is_symlink());
        assert!(!nowhere.exists());
    }

    #[test]
    fn an_incomplete_rollback_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let packages = dir.path().join("Packages");
        write(&packages.join("com.a/package.json"), "new a");
        let steps = vec![Step::Replaced {
            target: packages.join("com.a"),
            backup: Some(dir.path().join("vanished-backup")),
        }];
        assert!(!roll_back(steps));
    }

    fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        use std::io::Write;
        let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default();
        for (name, bytes) in entries {
            writer.start_file(*name, options).unwrap();
            writer.write_all(bytes).unwrap();
        }
        writer.finish().unwrap().into_inner()
    }

    #[test]
    fn extraction_counts_bytes_against_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let zip = dir.path().join("p.zip");
        std::fs::write(&zip, zip_of(&[("a", &[0; 600]), ("b/c", &[0; 600])])).unwrap();
        let e = extract("com.p", &zip, &dir.path().join("small"), 1000).unwrap_err();
        assert_eq!(e.code(), "download_too_large");
        extract("com.p", &zip, &dir.path().join("exact"), 1200).unwrap();
        // The largest limit must not overflow when one byte is added to it.
        let unlimited = dir.path().join("unlimited");
        extract("com.p", &zip, &unlimited, u64::MAX).unwrap();
        assert_eq!(std::fs::read(unlimited.join("b/c")).unwrap().len(), 600);
    }

    #[test]
    fn zips_with_too_many_entries_are_refused_before_extracting() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for i in 0..=MAX_ZIP_ENTRIES {
            writer.start_file(format!("{i}"), options).unwrap();
        }
        writer.write_all(b"").unwrap();
        let zip = dir.path().join("many.zip");
        std::fs::write(&zip, writer.finish().unwrap().into_inner()).unwrap();
        let dest = dir.path().join("com.many");
        let e = extract("com.many", &zip, &dest, u64::MAX).unwrap_err();
        assert_eq!(e.code(), "zip_invalid");
        assert!(!dest.exists());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Names built from the pieces that make zip slips, mixed with ordinary text.
        fn entry_name() -> impl Strategy<Value = String> {
            let piece = prop_oneof![
                Just("..".to_string()),
                Just(".".to_string()),
                Just("/".to_string()),
                Just("\\".to_string()),
                Just("C:".to_string()),
                Just("c:\\".to_string()),
                Just("\\\\?\\".to_string()),
                Just("\0".to_string()),
                Just("~".to_string()),
                Just(" ".to_string()),
                Just("...".to_string()),
                Just("..\u{2215}".to_string()),
                "[a-zA-Z0-9_ -]{1,6}",
                "\\PC{1,4}",
            ];
            prop_oneof![
                any::<String>(),
                proptest::collection::vec(piece, 0..10).prop_map(|p| p.concat()),
            ]
        }

        proptest! {
            #[test]
            fn accepted_entry_paths_stay_inside_the_staging_folder(raw in entry_name()) {
                let Some(relative) = safe_entry_path(&raw) else {
                    return Ok(());
                };
                prop_assert!(relative.is_relative());
                prop_assert!(!raw.contains('\0'));
                let staging = Path::new("/staging/com.p");
                let joined = staging.join(&relative);
                // Lexically: no component can climb, so the join stays under the folder.
                let mut depth = 0usize;
                for component in joined.strip_prefix(staging).unwrap().components() {
                    match component {
                        Component::Normal(part) => {
                            let part = part.to_string_lossy();
                            prop_assert!(!part.contains(['/', '\\', ':', '\0']), "{:?}", part);
                            prop_assert!(!part.chars().all(|c| matches!(c, '.' | ' ')), "{:?}", part);
                            depth += 1;
                        }
                        other => prop_assert!(false, "{:?} in {:?}", other, raw),
                    }
                }
                prop_assert_eq!(depth, relative.components().count());
                prop_assert!(joined.starts_with(staging));
            }

            #[test]
            fn entry_paths_with_a_climbing_segment_are_refused(
                before in "[a-z/\\\\]{0,8}",
                after in "[a-z/\\\\]{0,8}",
                separator in prop_oneof![Just('/'), Just('\\')],
            ) {
                let raw = format!("{before}{separator}..{separator}{after}");
                prop_assert_eq!(safe_entry_path(&raw), None);
                let leading = format!("..{separator}{after}");
                prop_assert_eq!(safe_entry_path(&leading), None);
            }
        }
    }
}
