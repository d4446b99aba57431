//! Applying an install to `Packages/`: each step recorded, the package folders swapped in, and
//! every step undone when a later one fails.

use super::unzip::extract;
use super::*;
use crate::traced::SendTraced;
use crate::vcc::VccError;
use crate::vcc::project::{LockedPackage, VpmManifest};
use crate::vcc::vpm::{Requirement, Resolved, resolve};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;

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
    pub(super) async fn resolve(
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
    pub(super) async fn apply(
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
        let network = |e: reqwest::Error| crate::vcc::network_error(url, e);
        let parsed = match reqwest::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => u,
            _ => {
                return Err(VccError::RepositoryInvalid {
                    url: url.to_string(),
                    message: format!("{} {} has no usable zip URL", r.name, r.version),
                });
            }
        };
        let request = crate::vcc::guarded_get(self.http, url, parsed, &r.headers)?;
        let mut response = request.send_traced().await.map_err(network)?;
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
}
