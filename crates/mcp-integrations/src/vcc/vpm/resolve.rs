//! Package resolution: for each requested package, the newest version every requirement on it
//! allows, following dependencies and keeping what is locked where it still fits.

use super::*;
use crate::vcc::project::LockedPackage;
use crate::vcc::{RequirementSource, VccError};
use semver::Version;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// A requirement on a package and who made it.
#[derive(Debug, Clone)]
pub struct Requirement {
    pub name: String,
    pub range: VpmRange,
    pub requested_by: String,
}

/// A package version chosen by [`resolve`], to be installed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Resolved {
    pub name: String,
    pub version: Version,
    pub url: String,
    pub zip_sha256: Option<String>,
    /// The id of the repository it comes from.
    pub repo: String,
    pub vpm_dependencies: BTreeMap<String, String>,
    /// Headers to send with the zip download.
    #[serde(skip)]
    pub headers: BTreeMap<String, String>,
}

/// The most passes over the work list before resolution gives up (a cycle of ever-changing
/// picks cannot happen with monotonic choices, but a bound costs nothing).
const MAX_RESOLVE_STEPS: usize = 10_000;

/// Resolves `requests` against `repos`.
///
/// The requested packages are "being changed": each gets the newest version allowed by every
/// requirement on it (the request, and the dependencies of the other locked packages).
/// Their `vpmDependencies` are followed transitively; a dependency already locked and not
/// requested keeps its version, and one that no longer satisfies a requirement is a
/// [`VccError::Conflict`]. Returns the packages to install (requested and new dependencies),
/// sorted by name.
pub fn resolve(
    repos: &[RepoSnapshot],
    requests: &[Requirement],
    include_prerelease: bool,
    locked: &BTreeMap<String, LockedPackage>,
) -> Result<Vec<Resolved>, VccError> {
    let changing: BTreeSet<&str> = requests.iter().map(|r| r.name.as_str()).collect();
    let mut constraints: BTreeMap<String, Vec<(VpmRange, String)>> = BTreeMap::new();
    for (name, package) in locked {
        if changing.contains(name.as_str()) {
            continue;
        }
        for (dependency, range) in &package.dependencies {
            // A range this parser cannot read in an existing manifest should not block every
            // change to the project; it is logged and not enforced.
            let Ok(range) = VpmRange::parse_dependency(range) else {
                tracing::warn!(package = %name, dependency = %dependency, range = %range, "unreadable locked dependency range ignored");
                continue;
            };
            constraints
                .entry(dependency.clone())
                .or_default()
                .push((range, format!("{name}@{}", package.version)));
        }
    }
    let mut work: Vec<String> = Vec::new();
    for request in requests {
        constraints
            .entry(request.name.clone())
            .or_default()
            .push((request.range.clone(), request.requested_by.clone()));
        work.push(request.name.clone());
    }
    let mut chosen: BTreeMap<String, Resolved> = BTreeMap::new();
    let mut steps = 0;
    while let Some(name) = work.pop() {
        steps += 1;
        if steps > MAX_RESOLVE_STEPS {
            return Err(VccError::Conflict {
                package: name,
                requirements: Vec::new(),
                locked: None,
            });
        }
        let wanted = &constraints[&name];
        let sources = || {
            wanted
                .iter()
                .map(|(range, by)| RequirementSource {
                    requirement: range.to_string(),
                    requested_by: by.clone(),
                })
                .collect::<Vec<_>>()
        };
        if !changing.contains(name.as_str())
            && let Some(current) = locked.get(&name)
        {
            let version = Version::parse(&current.version).ok();
            let fits = version
                .as_ref()
                .is_some_and(|v| wanted.iter().all(|(range, _)| range.matches(v, true)));
            if !fits {
                return Err(VccError::Conflict {
                    package: name.clone(),
                    requirements: sources(),
                    locked: Some(current.version.clone()),
                });
            }
            continue;
        }
        if let Some(picked) = chosen.get(&name)
            && wanted
                .iter()
                .all(|(range, _)| range.matches(&picked.version, true))
        {
            continue;
        }
        let allow_pre = include_prerelease || wanted.iter().any(|(r, _)| r.names_prerelease());
        let mut candidates: BTreeMap<Version, (&RepoSnapshot, &PackageVersion)> = BTreeMap::new();
        for repo in repos {
            if let Some(versions) = repo.listing.packages.get(&name) {
                for (version, package) in versions {
                    candidates.entry(version.clone()).or_insert((repo, package));
                }
            }
        }
        if candidates.is_empty() {
            return Err(VccError::PackageNotFound { name });
        }
        let fits = |v: &Version, range: &VpmRange| range.matches(v, allow_pre);
        let best = candidates
            .iter()
            .rev()
            .find(|(v, _)| wanted.iter().all(|(range, _)| fits(v, range)));
        let Some((version, (repo, package))) = best else {
            // Each requirement alone can be met but not all together: a conflict. Otherwise
            // one of them matches nothing at all.
            if let Some((range, _)) = wanted
                .iter()
                .find(|(range, _)| !candidates.keys().any(|v| fits(v, range)))
            {
                return Err(VccError::NoMatchingVersion {
                    name,
                    requirement: range.to_string(),
                    available: candidates.keys().map(Version::to_string).collect(),
                });
            }
            return Err(VccError::Conflict {
                package: name.clone(),
                requirements: sources(),
                locked: None,
            });
        };
        let resolved = Resolved {
            name: name.clone(),
            version: version.clone(),
            url: package.url.clone(),
            zip_sha256: package.zip_sha256.clone(),
            repo: repo.id.clone(),
            vpm_dependencies: package.vpm_dependencies.clone(),
            headers: repo.headers.clone(),
        };
        for (dependency, range) in &package.vpm_dependencies {
            let range = VpmRange::parse_dependency(range)?;
            constraints
                .entry(dependency.clone())
                .or_default()
                .push((range, format!("{name}@{version}")));
            work.push(dependency.clone());
        }
        chosen.insert(name, resolved);
    }
    Ok(chosen.into_values().collect())
}
