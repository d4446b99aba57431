//! VPM repositories and package resolution: the listings VCC reads (`{"packages":{name:
//! {"versions":{...}}}}`), fetched with their `ETag` and kept in memory, and the resolver that
//! picks, for each requested package, the newest version every requirement on it allows.
//!
//! Version ranges follow npm (`>=1.0.0`, `^3.5.0`, `~1.2`, `1.2.x`, `1.0.0 - 2.0.0`, `a || b`)
//! with one VPM twist: in `vpmDependencies` and the manifest, a bare full version (`3.5.0`)
//! means "that version or later", the way VCC reads it; in a request from a user it means exactly
//! that version. Pre-releases match only when opted in, or when a comparator names a pre-release
//! of the same `major.minor.patch` (npm's rule).

use super::project::{LockedPackage, UserRepo, VccSettings};
use super::{MAX_LISTING_BYTES, RepositoryInfo, RequirementSource, StateStore, VccError};
use chrono::{DateTime, Utc};
use semver::{Prerelease, Version};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

// ---------------------------------------------------------------------------------------------
// Version ranges

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Ge,
    Gt,
    Le,
    Lt,
    Eq,
}

/// One `||` alternative: bounds that must all hold, and the versions the user wrote (for the
/// pre-release rule).
#[derive(Debug, Clone, PartialEq, Eq)]
struct BoundSet {
    bounds: Vec<(Op, Version)>,
    named: Vec<Version>,
}

/// A VPM version range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VpmRange {
    text: String,
    sets: Vec<BoundSet>,
}

/// A version as written in a range: `1`, `1.2`, `1.2.x`, `1.2.3-beta.1`.
#[derive(Debug, Clone)]
struct Partial {
    major: Option<u64>,
    minor: Option<u64>,
    patch: Option<u64>,
    pre: Prerelease,
}

impl Partial {
    fn parse(text: &str) -> Result<Partial, String> {
        let text = text.trim().trim_start_matches(['v', 'V']);
        let (core, _build) = text.split_once('+').unwrap_or((text, ""));
        let (core, pre) = match core.split_once('-') {
            Some((core, pre)) => (
                core,
                Prerelease::new(pre).map_err(|e| format!("bad pre-release {pre:?}: {e}"))?,
            ),
            None => (core, Prerelease::EMPTY),
        };
        let mut parts = core.split('.');
        let mut next = |label: &str| -> Result<Option<u64>, String> {
            match parts.next() {
                None | Some("x" | "X" | "*") => Ok(None),
                // `u64::MAX` is refused too: the bounds of `^`, `~` and partial versions add one
                // to a number, which must not overflow.
                Some(n) => match n.parse::<u64>() {
                    Ok(n) if n < u64::MAX => Ok(Some(n)),
                    _ => Err(format!("bad {label} {n:?}")),
                },
            }
        };
        let major = next("major")?;
        let minor = next("minor")?;
        let patch = next("patch")?;
        if parts.next().is_some() {
            return Err(format!("{text:?} has more than three parts"));
        }
        // `1.x.3` makes no sense: nothing may follow a wildcard.
        if (major.is_none() && (minor.is_some() || patch.is_some()))
            || (minor.is_none() && patch.is_some())
        {
            return Err(format!("{text:?} has a number after a wildcard"));
        }
        if !pre.is_empty() && patch.is_none() {
            return Err(format!("{text:?} has a pre-release on a partial version"));
        }
        Ok(Partial {
            major,
            minor,
            patch,
            pre,
        })
    }

    fn full(&self) -> Option<Version> {
        Some(Version {
            major: self.major?,
            minor: self.minor?,
            patch: self.patch?,
            pre: self.pre.clone(),
            build: semver::BuildMetadata::EMPTY,
        })
    }

    fn zeros(&self) -> Version {
        Version {
            major: self.major.unwrap_or(0),
            minor: self.minor.unwrap_or(0),
            patch: self.patch.unwrap_or(0),
            pre: self.pre.clone(),
            build: semver::BuildMetadata::EMPTY,
        }
    }

    /// The first version past a partial one (`1.2` → `1.3.0-0`), so `< next` excludes it and
    /// every pre-release of it.
    fn next(&self) -> Option<Version> {
        let v = match (self.major, self.minor) {
            (Some(major), None) => Version::new(major + 1, 0, 0),
            (Some(major), Some(minor)) => Version::new(major, minor + 1, 0),
            _ => return None,
        };
        Some(lowest_of(v))
    }
}

/// The lowest version with `v`'s numbers: `v-0`.
fn lowest_of(mut v: Version) -> Version {
    v.pre = Prerelease::new("0").unwrap_or(Prerelease::EMPTY);
    v
}

impl VpmRange {
    /// A range typed by a user: a bare version means exactly that version.
    pub fn parse_request(text: &str) -> Result<VpmRange, VccError> {
        VpmRange::parse(text, false)
    }

    /// A range from `vpmDependencies` or the manifest: a bare full version means "or later".
    pub fn parse_dependency(text: &str) -> Result<VpmRange, VccError> {
        VpmRange::parse(text, true)
    }

    /// Any version.
    pub fn any() -> VpmRange {
        VpmRange {
            text: "*".into(),
            sets: vec![BoundSet {
                bounds: Vec::new(),
                named: Vec::new(),
            }],
        }
    }

    fn parse(text: &str, bare_is_minimum: bool) -> Result<VpmRange, VccError> {
        let invalid = |message: String| VccError::InvalidRequirement {
            requirement: text.to_string(),
            message,
        };
        let mut sets = Vec::new();
        for alternative in text.split("||") {
            sets.push(parse_set(alternative, bare_is_minimum).map_err(invalid)?);
        }
        Ok(VpmRange {
            text: text.trim().to_string(),
            sets,
        })
    }

    /// Whether `version` is in the range. Pre-releases need `allow_prerelease`, or a
    /// comparator naming a pre-release of the same `major.minor.patch`.
    pub fn matches(&self, version: &Version, allow_prerelease: bool) -> bool {
        self.sets.iter().any(|set| {
            let inside = set.bounds.iter().all(|(op, bound)| match op {
                Op::Ge => version >= bound,
                Op::Gt => version > bound,
                Op::Le => version <= bound,
                Op::Lt => version < bound,
                Op::Eq => version == bound,
            });
            inside
                && (version.pre.is_empty()
                    || allow_prerelease
                    || set.named.iter().any(|n| {
                        !n.pre.is_empty()
                            && (n.major, n.minor, n.patch)
                                == (version.major, version.minor, version.patch)
                    }))
        })
    }

    /// Whether the range itself names a pre-release.
    pub fn names_prerelease(&self) -> bool {
        self.sets
            .iter()
            .any(|s| s.named.iter().any(|v| !v.pre.is_empty()))
    }
}

impl fmt::Display for VpmRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn parse_set(text: &str, bare_is_minimum: bool) -> Result<BoundSet, String> {
    // Join operators written apart from their version (`>= 1.0.0`).
    let mut tokens: Vec<String> = Vec::new();
    let mut pending = String::new();
    for token in text.split_whitespace() {
        if matches!(token, ">" | ">=" | "<" | "<=" | "=" | "~" | "^") {
            pending.push_str(token);
            continue;
        }
        tokens.push(format!("{pending}{token}"));
        pending.clear();
    }
    if !pending.is_empty() {
        return Err(format!("{pending:?} is missing its version"));
    }
    let mut set = BoundSet {
        bounds: Vec::new(),
        named: Vec::new(),
    };
    let mut i = 0;
    while i < tokens.len() {
        if tokens.get(i + 1).map(String::as_str) == Some("-") {
            let upper = tokens
                .get(i + 2)
                .ok_or_else(|| "a hyphen range is missing its upper end".to_string())?;
            let low = Partial::parse(&tokens[i])?;
            let high = Partial::parse(upper)?;
            set.bounds.push((Op::Ge, low.zeros()));
            match (high.full(), high.next()) {
                (Some(v), _) => set.bounds.push((Op::Le, v)),
                (None, Some(next)) => set.bounds.push((Op::Lt, next)),
                (None, None) => {}
            }
            set.named.push(low.zeros());
            set.named.push(high.zeros());
            i += 3;
            continue;
        }
        comparator(&tokens[i], bare_is_minimum, &mut set)?;
        i += 1;
    }
    Ok(set)
}

fn comparator(token: &str, bare_is_minimum: bool, set: &mut BoundSet) -> Result<(), String> {
    let (op, rest) = [">=", "<=", ">", "<", "=", "~>", "~", "^"]
        .iter()
        .find_map(|op| token.strip_prefix(op).map(|rest| (*op, rest)))
        .unwrap_or(("", token));
    let p = Partial::parse(rest)?;
    set.named.push(p.zeros());
    let b = &mut set.bounds;
    let any = p.major.is_none();
    match op {
        ">=" => {
            if !any {
                b.push((Op::Ge, p.zeros()));
            }
        }
        ">" => match (p.full(), p.next()) {
            (Some(v), _) => b.push((Op::Gt, v)),
            (None, Some(next)) => b.push((Op::Ge, next)),
            (None, None) => return Err("\">*\" matches nothing".into()),
        },
        "<" => {
            if any {
                return Err("\"<*\" matches nothing".into());
            }
            match p.full() {
                Some(v) => b.push((Op::Lt, v)),
                None => b.push((Op::Lt, lowest_of(p.zeros()))),
            }
        }
        "<=" => match (p.full(), p.next()) {
            (Some(v), _) => b.push((Op::Le, v)),
            (None, Some(next)) => b.push((Op::Lt, next)),
            (None, None) => {}
        },
        "~" | "~>" => {
            if !any {
                b.push((Op::Ge, p.zeros()));
                let major = p.major.unwrap_or(0);
                let upper = match p.minor {
                    Some(minor) => Version::new(major, minor + 1, 0),
                    None => Version::new(major + 1, 0, 0),
                };
                b.push((Op::Lt, lowest_of(upper)));
            }
        }
        "^" => {
            if !any {
                b.push((Op::Ge, p.zeros()));
                let major = p.major.unwrap_or(0);
                let upper = match (major, p.minor, p.patch) {
                    (0, Some(0), Some(patch)) => Version::new(0, 0, patch + 1),
                    (0, Some(minor), _) => Version::new(0, minor + 1, 0),
                    (major, _, _) => Version::new(major + 1, 0, 0),
                };
                b.push((Op::Lt, lowest_of(upper)));
            }
        }
        _ => match p.full() {
            Some(v) if bare_is_minimum && op.is_empty() => b.push((Op::Ge, v)),
            Some(v) => b.push((Op::Eq, v)),
            None if any => {}
            None => {
                b.push((Op::Ge, p.zeros()));
                if let Some(next) = p.next() {
                    b.push((Op::Lt, next));
                }
            }
        },
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Listings

/// One version of a package in a listing (its `package.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PackageVersion {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub display_name: Option<String>,
    /// Where the zip is.
    #[serde(default)]
    pub url: String,
    #[serde(default, rename = "zipSHA256")]
    pub zip_sha256: Option<String>,
    #[serde(default)]
    pub vpm_dependencies: BTreeMap<String, String>,
    #[serde(default)]
    pub unity: Option<String>,
}

/// A repository listing, with the versions that did not parse left out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RepoListing {
    pub name: Option<String>,
    pub id: Option<String>,
    pub url: Option<String>,
    pub author: Option<String>,
    /// Headers to send with zip downloads.
    pub headers: BTreeMap<String, String>,
    /// Package name → version → package.
    pub packages: BTreeMap<String, BTreeMap<Version, PackageVersion>>,
}

#[derive(Deserialize)]
struct RawListing {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    author: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    packages: BTreeMap<String, RawPackage>,
}

#[derive(Deserialize)]
struct RawPackage {
    #[serde(default)]
    versions: BTreeMap<String, Value>,
}

impl RepoListing {
    /// Parses a listing. One malformed version is skipped (and logged), not fatal: public
    /// listings do contain a few.
    pub fn parse(bytes: &[u8]) -> Result<RepoListing, String> {
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        let raw: RawListing = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let mut packages = BTreeMap::new();
        for (name, package) in raw.packages {
            let mut versions = BTreeMap::new();
            for (key, value) in package.versions {
                let parsed = Version::parse(key.trim())
                    .map_err(|e| e.to_string())
                    .and_then(|v| {
                        PackageVersion::deserialize(&value)
                            .map(|p| (v, p))
                            .map_err(|e| e.to_string())
                    });
                match parsed {
                    Ok((version, p)) => {
                        versions.insert(version, p);
                    }
                    Err(e) => {
                        tracing::debug!(package = %name, version = %key, error = %e, "skipping a malformed package version");
                    }
                }
            }
            if !versions.is_empty() {
                packages.insert(name, versions);
            }
        }
        Ok(RepoListing {
            name: raw.name,
            id: raw.id,
            url: raw.url,
            author: raw.author,
            headers: raw.headers,
            packages,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The repository cache

/// A repository added by API, as persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepositoryRecord {
    pub id: String,
    pub url: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
struct Cached {
    etag: Option<String>,
    listing: Arc<RepoListing>,
    fetched_at: DateTime<Utc>,
}

/// A listing ready for resolution.
#[derive(Debug, Clone)]
pub struct RepoSnapshot {
    pub id: String,
    pub listing: Arc<RepoListing>,
    /// Headers to send with zip downloads from this repository.
    pub headers: BTreeMap<String, String>,
}

/// Fetch outcome.
enum Fetched {
    NotModified,
    New(RepoListing, Option<String>),
}

fn url_id(url: &str) -> String {
    let digest = Sha256::digest(url.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Repositories and their listings, cached in memory with their `ETag`.
pub struct RepoCache {
    state: Arc<StateStore>,
    settings_file: Option<PathBuf>,
    /// Listing URLs the configuration names (`vcc_repositories`), read-only here.
    configured: Vec<String>,
    http: reqwest::Client,
    cache: tokio::sync::Mutex<HashMap<String, Cached>>,
    errors: std::sync::Mutex<HashMap<String, String>>,
}

impl RepoCache {
    pub(crate) fn new(
        state: Arc<StateStore>,
        settings_file: Option<PathBuf>,
        http: reqwest::Client,
    ) -> Self {
        RepoCache {
            state,
            settings_file,
            configured: Vec::new(),
            http,
            cache: tokio::sync::Mutex::new(HashMap::new()),
            errors: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Adds the listing URLs the configuration names; they cannot be removed through the API.
    pub(crate) fn with_configured(mut self, urls: Vec<String>) -> Self {
        self.configured = urls;
        self
    }

    /// Added repositories, then the configured ones, then VCC's `userRepos` (each URL once).
    fn records(&self) -> Vec<(RepositoryRecord, &'static str)> {
        let mut records: Vec<(RepositoryRecord, &'static str)> = match self.state.load() {
            Ok(state) => state.repositories.into_iter().map(|r| (r, "api")).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read VCC repositories");
                Vec::new()
            }
        };
        for url in &self.configured {
            if url.is_empty() || records.iter().any(|(r, _)| &r.url == url) {
                continue;
            }
            records.push((
                RepositoryRecord {
                    id: url_id(url),
                    url: url.clone(),
                    name: None,
                    headers: BTreeMap::new(),
                },
                "config",
            ));
        }
        let settings = VccSettings::read(self.settings_file.as_deref());
        for UserRepo { url, name, headers } in settings.user_repos {
            // Local repositories (`localPath` only) have nothing to fetch.
            if url.is_empty() || records.iter().any(|(r, _)| r.url == url) {
                continue;
            }
            records.push((
                RepositoryRecord {
                    id: url_id(&url),
                    url,
                    name,
                    headers,
                },
                "vcc_settings",
            ));
        }
        records
    }

    async fn fetch(
        &self,
        url: &str,
        headers: &BTreeMap<String, String>,
        etag: Option<&str>,
    ) -> Result<Fetched, VccError> {
        let network = |e: reqwest::Error| VccError::Network {
            url: url.to_string(),
            message: e.to_string(),
        };
        let mut request = self.http.get(url);
        for (k, v) in headers {
            request = request.header(k, v);
        }
        if let Some(etag) = etag {
            request = request.header(reqwest::header::IF_NONE_MATCH, etag);
        }
        let mut response = request.send().await.map_err(network)?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_MODIFIED && etag.is_some() {
            return Ok(Fetched::NotModified);
        }
        if !status.is_success() {
            return Err(VccError::Upstream {
                url: url.to_string(),
                status: status.as_u16(),
            });
        }
        let etag = response
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(network)? {
            body.extend_from_slice(&chunk);
            if body.len() as u64 > MAX_LISTING_BYTES {
                return Err(VccError::TooLarge {
                    url: url.to_string(),
                    limit: MAX_LISTING_BYTES,
                });
            }
        }
        let listing = RepoListing::parse(&body).map_err(|message| VccError::RepositoryInvalid {
            url: url.to_string(),
            message,
        })?;
        Ok(Fetched::New(listing, etag))
    }

    /// Fetches `url` (conditionally when cached) and caches the result.
    async fn load(
        &self,
        url: &str,
        headers: &BTreeMap<String, String>,
    ) -> Result<Arc<RepoListing>, VccError> {
        // The lock is not held across the request: listing repositories must not wait on it.
        let etag = self
            .cache
            .lock()
            .await
            .get(url)
            .and_then(|c| c.etag.clone());
        let outcome = self.fetch(url, headers, etag.as_deref()).await;
        let mut cache = self.cache.lock().await;
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        match outcome {
            Ok(Fetched::NotModified) => {
                errors.remove(url);
                let cached = cache.get_mut(url).ok_or_else(|| VccError::Network {
                    url: url.to_string(),
                    message: "304 without a cached listing".into(),
                })?;
                cached.fetched_at = Utc::now();
                Ok(cached.listing.clone())
            }
            Ok(Fetched::New(listing, etag)) => {
                errors.remove(url);
                let listing = Arc::new(listing);
                cache.insert(
                    url.to_string(),
                    Cached {
                        etag,
                        listing: listing.clone(),
                        fetched_at: Utc::now(),
                    },
                );
                Ok(listing)
            }
            Err(e) => {
                errors.insert(url.to_string(), e.to_string());
                Err(e)
            }
        }
    }

    /// Fetches and validates the listing at `url`, then adds it. Its id is the listing's `id`
    /// when it has one, else derived from the URL.
    pub async fn add(&self, url: &str) -> Result<RepositoryInfo, VccError> {
        let parsed = reqwest::Url::parse(url).map_err(|e| VccError::RepositoryInvalid {
            url: url.to_string(),
            message: e.to_string(),
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(VccError::RepositoryInvalid {
                url: url.to_string(),
                message: "only http and https URLs are supported".into(),
            });
        }
        let headers = BTreeMap::new();
        let listing = self.load(url, &headers).await?;
        let record = RepositoryRecord {
            id: listing.id.clone().unwrap_or_else(|| url_id(url)),
            url: url.to_string(),
            name: listing.name.clone(),
            headers,
        };
        let stored = record.clone();
        self.state.update(move |state| {
            if let Some(existing) = state
                .repositories
                .iter()
                .find(|r| r.id == stored.id || r.url == stored.url)
            {
                return Err(VccError::RepositoryExists {
                    id: existing.id.clone(),
                    url: existing.url.clone(),
                });
            }
            state.repositories.push(stored);
            Ok(())
        })?;
        Ok(self.info(&record, "api").await)
    }

    /// Removes an added repository by id or URL.
    pub async fn remove(&self, id_or_url: &str) -> Result<(), VccError> {
        let removed = self.state.update(|state| {
            let index = state
                .repositories
                .iter()
                .position(|r| r.id == id_or_url || r.url == id_or_url)
                .ok_or_else(|| VccError::RepositoryNotFound {
                    id: id_or_url.to_string(),
                })?;
            Ok(state.repositories.remove(index))
        })?;
        self.cache.lock().await.remove(&removed.url);
        Ok(())
    }

    async fn info(&self, record: &RepositoryRecord, source: &'static str) -> RepositoryInfo {
        let cache = self.cache.lock().await;
        let cached = cache.get(&record.url);
        let error = self
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&record.url)
            .cloned();
        RepositoryInfo {
            id: record.id.clone(),
            url: record.url.clone(),
            name: record
                .name
                .clone()
                .or_else(|| cached.and_then(|c| c.listing.name.clone())),
            source,
            package_count: cached.map(|c| c.listing.packages.len()),
            fetched_at: cached.map(|c| c.fetched_at),
            error,
        }
    }

    /// Every repository with what is cached of it. Does not fetch.
    pub async fn list(&self) -> Vec<RepositoryInfo> {
        let mut infos = Vec::new();
        for (record, source) in self.records() {
            infos.push(self.info(&record, source).await);
        }
        infos
    }

    /// Re-fetches every listing, conditionally. Failures are kept for [`RepoCache::list`].
    pub async fn refresh_all(&self) {
        for (record, _) in self.records() {
            if let Err(e) = self.load(&record.url, &record.headers).await {
                tracing::warn!(url = %record.url, error = %e, "cannot refresh a VPM repository");
            }
        }
    }

    /// Every listing, fetched now if not cached yet. Repositories that cannot be fetched are
    /// left out and their errors returned beside the listings.
    pub async fn snapshot(&self) -> (Vec<RepoSnapshot>, Vec<VccError>) {
        let mut snapshots = Vec::new();
        let mut failures = Vec::new();
        for (record, _) in self.records() {
            let cached = self
                .cache
                .lock()
                .await
                .get(&record.url)
                .map(|c| c.listing.clone());
            let listing = match cached {
                Some(listing) => Ok(listing),
                None => self.load(&record.url, &record.headers).await,
            };
            match listing {
                Ok(listing) => {
                    let mut headers = listing.headers.clone();
                    headers.extend(record.headers.clone());
                    snapshots.push(RepoSnapshot {
                        id: record.id,
                        listing,
                        headers,
                    });
                }
                Err(e) => {
                    tracing::warn!(url = %record.url, error = %e, "VPM repository unavailable");
                    failures.push(e);
                }
            }
        }
        (snapshots, failures)
    }
}

// ---------------------------------------------------------------------------------------------
// Resolution

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

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Version {
        Version::parse(text).unwrap()
    }

    fn req(text: &str) -> VpmRange {
        VpmRange::parse_request(text).unwrap()
    }

    #[test]
    fn ranges_follow_npm() {
        let cases: &[(&str, &[&str], &[&str])] = &[
            (">=1.0.0", &["1.0.0", "2.5.0"], &["0.9.9"]),
            ("^3.5.0", &["3.5.0", "3.9.1"], &["4.0.0", "3.4.9"]),
            ("^0.2.3", &["0.2.3", "0.2.9"], &["0.3.0"]),
            ("^0.0.3", &["0.0.3"], &["0.0.4"]),
            ("~1.2.3", &["1.2.3", "1.2.9"], &["1.3.0"]),
            ("~1.2", &["1.2.0", "1.2.9"], &["1.3.0"]),
            ("1.2.x", &["1.2.0", "1.2.7"], &["1.3.0", "1.1.9"]),
            ("1.x", &["1.0.0", "1.9.0"], &["2.0.0"]),
            ("*", &["0.0.1", "9.9.9"], &[]),
            ("", &["1.0.0"], &[]),
            ("3.5.0", &["3.5.0"], &["3.5.1", "3.4.0"]),
            ("=3.5.0", &["3.5.0"], &["3.5.1"]),
            (">= 1.0.0 < 2.0.0", &["1.5.0"], &["2.0.0"]),
            ("1.0.0 - 2.0.0", &["1.0.0", "2.0.0"], &["2.0.1"]),
            ("1.0.0 - 2", &["2.9.0"], &["3.0.0"]),
            ("<1.2", &["1.1.9"], &["1.2.0"]),
            (">1.2", &["1.3.0"], &["1.2.9"]),
            ("<=1.2", &["1.2.9"], &["1.3.0"]),
            ("^1.0.0 || ^3.0.0", &["1.2.0", "3.1.0"], &["2.0.0"]),
        ];
        for (range, inside, outside) in cases {
            let r = req(range);
            for version in *inside {
                assert!(
                    r.matches(&v(version), false),
                    "{range} should match {version}"
                );
            }
            for version in *outside {
                assert!(
                    !r.matches(&v(version), false),
                    "{range} should not match {version}"
                );
            }
        }
    }

    #[test]
    fn a_bare_dependency_version_means_that_or_later() {
        let dependency = VpmRange::parse_dependency("3.5.0").unwrap();
        assert!(dependency.matches(&v("3.5.0"), false));
        assert!(dependency.matches(&v("3.7.2"), false));
        assert!(!dependency.matches(&v("3.4.0"), false));
        let request = req("3.5.0");
        assert!(!request.matches(&v("3.7.2"), false));
    }

    #[test]
    fn prereleases_match_only_when_allowed_or_named() {
        let r = req(">=1.0.0");
        assert!(!r.matches(&v("2.0.0-beta.1"), false));
        assert!(r.matches(&v("2.0.0-beta.1"), true));
        let named = req(">=2.0.0-beta.1");
        assert!(named.matches(&v("2.0.0-beta.2"), false));
        assert!(!named.matches(&v("2.1.0-beta.1"), false));
        assert!(named.names_prerelease());
        // `<2.0.0` excludes 2.0.0's pre-releases only through the pre-release rule; `^1` does
        // for good, since its upper bound is 2.0.0-0.
        assert!(!req("^1.0.0").matches(&v("2.0.0-beta.1"), true));
    }

    #[test]
    fn malformed_ranges_are_refused() {
        for bad in [">=", "1.x.3", "abc", "1.2.3.4", "<*", "1.0.0 -"] {
            let e = VpmRange::parse_request(bad).unwrap_err();
            assert_eq!(e.code(), "invalid_version_requirement", "{bad}");
        }
    }

    fn listing(json: Value) -> RepoSnapshot {
        RepoSnapshot {
            id: "test".into(),
            listing: Arc::new(RepoListing::parse(json.to_string().as_bytes()).unwrap()),
            headers: BTreeMap::new(),
        }
    }

    fn package(name: &str, version: &str, deps: Value) -> (String, Value) {
        (
            version.to_string(),
            serde_json::json!({"name": name, "version": version, "url": format!("http://x/{name}-{version}.zip"), "vpmDependencies": deps, "extra": 1}),
        )
    }

    fn repo() -> RepoSnapshot {
        let mut packages = serde_json::Map::new();
        let mut put = |name: &str, versions: Vec<(String, Value)>| {
            packages.insert(
                name.into(),
                serde_json::json!({"versions": versions.into_iter().collect::<serde_json::Map<_, _>>()}),
            );
        };
        put(
            "com.base",
            vec![
                package("com.base", "1.0.0", serde_json::json!({})),
                package("com.base", "2.0.0", serde_json::json!({})),
                package("com.base", "3.0.0-beta.1", serde_json::json!({})),
            ],
        );
        put(
            "com.tool",
            vec![
                package(
                    "com.tool",
                    "1.0.0",
                    serde_json::json!({"com.base": "1.0.0"}),
                ),
                package(
                    "com.tool",
                    "2.0.0",
                    serde_json::json!({"com.base": "^2.0.0"}),
                ),
            ],
        );
        let mut all = serde_json::json!({"name": "Test", "id": "test", "packages": packages, "unknown": true});
        all["packages"]["com.broken"] = serde_json::json!({"versions": {"not-a-version": {}}});
        listing(all)
    }

    fn request(name: &str, range: &str) -> Requirement {
        Requirement {
            name: name.into(),
            range: req(range),
            requested_by: "request".into(),
        }
    }

    #[test]
    fn resolves_the_newest_and_follows_dependencies() {
        let resolved = resolve(
            &[repo()],
            &[request("com.tool", "*")],
            false,
            &BTreeMap::new(),
        )
        .unwrap();
        let picked: Vec<_> = resolved
            .iter()
            .map(|r| (r.name.as_str(), r.version.to_string()))
            .collect();
        assert_eq!(
            picked,
            vec![("com.base", "2.0.0".into()), ("com.tool", "2.0.0".into())]
        );
    }

    #[test]
    fn a_locked_dependency_that_no_longer_fits_is_a_conflict() {
        let locked: BTreeMap<String, LockedPackage> = serde_json::from_value(
            serde_json::json!({"com.base": {"version": "1.0.0", "dependencies": {}}}),
        )
        .unwrap();
        let e = resolve(&[repo()], &[request("com.tool", "*")], false, &locked).unwrap_err();
        assert_eq!(e.code(), "version_conflict");
        assert!(e.to_string().contains("com.base"), "{e}");
        assert!(e.to_string().contains("com.tool@2.0.0"), "{e}");
    }

    #[test]
    fn requirements_of_other_locked_packages_are_kept() {
        let locked: BTreeMap<String, LockedPackage> = serde_json::from_value(serde_json::json!({
            "com.tool": {"version": "1.0.0", "dependencies": {"com.base": "^1.0.0"}},
            "com.base": {"version": "1.0.0"}
        }))
        .unwrap();
        let e = resolve(&[repo()], &[request("com.base", "2.0.0")], false, &locked).unwrap_err();
        assert_eq!(e.code(), "version_conflict");
        assert!(e.to_string().contains("com.tool@1.0.0"), "{e}");
    }

    #[test]
    fn unknown_packages_and_versions_are_reported() {
        let e = resolve(
            &[repo()],
            &[request("com.nope", "*")],
            false,
            &BTreeMap::new(),
        )
        .unwrap_err();
        assert_eq!(e.code(), "package_not_found");
        let e = resolve(
            &[repo()],
            &[request("com.base", "^9.0.0")],
            false,
            &BTreeMap::new(),
        )
        .unwrap_err();
        assert_eq!(e.code(), "no_matching_version");
        assert!(e.to_string().contains("2.0.0"), "{e}");
    }

    #[test]
    fn prereleases_are_picked_only_when_opted_in() {
        let stable = resolve(
            &[repo()],
            &[request("com.base", "*")],
            false,
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(stable[0].version, v("2.0.0"));
        let pre = resolve(
            &[repo()],
            &[request("com.base", "*")],
            true,
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(pre[0].version, v("3.0.0-beta.1"));
    }

    #[test]
    fn huge_version_numbers_are_refused_not_overflowed() {
        // Each of these adds one to `u64::MAX` when building its upper bound.
        let max = u64::MAX;
        for bad in [
            format!("^{max}.0.0"),
            format!("~1.{max}"),
            format!("{max}.x"),
            format!("<=1.{max}"),
            format!(">{max}"),
            format!("^0.0.{max}"),
        ] {
            let e = VpmRange::parse_request(&bad).unwrap_err();
            assert_eq!(e.code(), "invalid_version_requirement", "{bad}");
        }
        let near = u64::MAX - 1;
        assert!(req(&format!("^{near}.0.0")).matches(&v(&format!("{near}.5.0")), false));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Small numbers, so generated versions often share a major or minor; now and then
        /// a huge one.
        fn number() -> impl Strategy<Value = u64> {
            prop_oneof![8 => 0u64..6, 1 => Just(u64::MAX - 1), 1 => any::<u64>()]
        }

        fn some_prerelease() -> impl Strategy<Value = Prerelease> {
            ("[a-z]{1,5}", proptest::option::of(0u64..20)).prop_map(|(tag, n)| {
                let text = match n {
                    Some(n) => format!("{tag}.{n}"),
                    None => tag,
                };
                Prerelease::new(&text).unwrap()
            })
        }

        fn prerelease() -> impl Strategy<Value = Prerelease> {
            prop_oneof![3 => Just(Prerelease::EMPTY), 1 => some_prerelease()]
        }

        /// A pre-release, next to a stable version about half the time.
        fn prerelease_version(near: Version) -> impl Strategy<Value = Version> {
            (any::<bool>(), stable(), some_prerelease()).prop_map(move |(close, far, pre)| {
                let base = if close { near.clone() } else { far };
                Version { pre, ..base }
            })
        }

        fn version() -> impl Strategy<Value = Version> {
            (number(), number(), number(), prerelease()).prop_map(|(major, minor, patch, pre)| {
                Version {
                    major,
                    minor,
                    patch,
                    pre,
                    build: semver::BuildMetadata::EMPTY,
                }
            })
        }

        fn stable() -> impl Strategy<Value = Version> {
            (number(), number(), number()).prop_map(|(a, b, c)| Version::new(a, b, c))
        }

        /// Text shaped like ranges, so the parser gets past its first check more often than
        /// with arbitrary strings.
        fn range_like() -> impl Strategy<Value = String> {
            let piece = prop_oneof![
                "[0-9]{1,3}",
                "[0-9]{18,22}",
                Just(".".to_string()),
                Just(" ".to_string()),
                Just("-".to_string()),
                Just(" - ".to_string()),
                Just("||".to_string()),
                Just("+".to_string()),
                "(>=|<=|>|<|=|~>|~|\\^|v|x|X|\\*)",
                "[a-z]{1,4}",
                "\\PC",
            ];
            proptest::collection::vec(piece, 0..12).prop_map(|p| p.concat())
        }

        proptest! {
            #[test]
            fn parsing_any_text_never_panics(text in prop_oneof![any::<String>(), range_like()], probe in version(), pre: bool) {
                for range in [VpmRange::parse_request(&text), VpmRange::parse_dependency(&text)] {
                    match range {
                        Ok(range) => {
                            let _ = range.matches(&probe, pre);
                            let _ = range.names_prerelease();
                            prop_assert_eq!(range.to_string(), text.trim());
                        }
                        Err(e) => prop_assert_eq!(e.code(), "invalid_version_requirement"),
                    }
                }
            }

            #[test]
            fn an_exact_request_matches_only_its_version(v in version(), other in version(), pre: bool) {
                for text in [v.to_string(), format!("={v}"), format!("= {v}"), format!("v{v}")] {
                    let range = VpmRange::parse_request(&text).unwrap();
                    // Named, so even a pre-release matches without opting in.
                    prop_assert!(range.matches(&v, false), "{} should match {}", text, v);
                    prop_assert_eq!(range.matches(&other, pre), other == v, "{} vs {}", text, other);
                }
                let exact_dependency = VpmRange::parse_dependency(&format!("={v}")).unwrap();
                prop_assert_eq!(exact_dependency.matches(&other, true), other == v);
            }

            #[test]
            fn at_least_matches_the_version_and_everything_above(v in version(), other in version()) {
                let range = VpmRange::parse_request(&format!(">={v}")).unwrap();
                prop_assert!(range.matches(&v, false));
                prop_assert_eq!(range.matches(&other, true), other >= v);
                if other.pre.is_empty() {
                    prop_assert_eq!(range.matches(&other, false), other >= v);
                }
            }

            #[test]
            fn a_bare_dependency_means_that_version_or_later(v in stable(), other in version()) {
                let range = VpmRange::parse_dependency(&v.to_string()).unwrap();
                prop_assert_eq!(range.matches(&other, true), other >= v);
            }

            #[test]
            fn caret_above_zero_allows_the_same_major(
                v in (prop_oneof![1u64..6, Just(u64::MAX - 1)], number(), number())
                    .prop_map(|(a, b, c)| Version::new(a, b, c)),
                other in stable(),
            ) {
                let range = VpmRange::parse_request(&format!("^{v}")).unwrap();
                let semver = semver::VersionReq::parse(&format!("^{v}")).unwrap();
                let expected = other >= v && other.major == v.major;
                prop_assert_eq!(range.matches(&other, false), expected);
                prop_assert_eq!(semver.matches(&other), expected);
            }

            #[test]
            fn tilde_allows_the_same_minor(v in stable(), other in stable()) {
                let range = VpmRange::parse_request(&format!("~{v}")).unwrap();
                let expected = other >= v && (other.major, other.minor) == (v.major, v.minor);
                prop_assert_eq!(range.matches(&other, false), expected);
            }

            #[test]
            fn prereleases_need_opting_in_or_naming(
                (v, other) in stable().prop_flat_map(|v| (Just(v.clone()), prerelease_version(v))),
            ) {
                for text in [format!(">={v}"), format!("^{v}"), format!("<={v}"), "*".to_string()] {
                    let range = VpmRange::parse_request(&text).unwrap();
                    prop_assert!(!range.matches(&other, false), "{} matched {}", text, other);
                    prop_assert!(!range.names_prerelease());
                }
                // Naming a pre-release opens that major.minor.patch only.
                let named = Version { pre: Prerelease::new("alpha").unwrap(), ..v.clone() };
                let range = VpmRange::parse_request(&format!(">={named}")).unwrap();
                prop_assert!(range.names_prerelease());
                let same_patch = (other.major, other.minor, other.patch) == (v.major, v.minor, v.patch);
                prop_assert_eq!(range.matches(&other, false), same_patch && other >= named);
                prop_assert_eq!(range.matches(&other, true), other >= named);
            }

            #[test]
            fn alternatives_match_when_either_side_does(a in stable(), b in stable(), other in stable()) {
                let either = VpmRange::parse_request(&format!("^{a} || ={b}")).unwrap();
                let left = VpmRange::parse_request(&format!("^{a}")).unwrap();
                let right = VpmRange::parse_request(&format!("={b}")).unwrap();
                prop_assert_eq!(
                    either.matches(&other, false),
                    left.matches(&other, false) || right.matches(&other, false)
                );
            }

            #[test]
            fn listings_from_any_bytes_parse_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
                let _ = RepoListing::parse(&bytes);
                let mut with_bom = b"\xEF\xBB\xBF".to_vec();
                with_bom.extend_from_slice(&bytes);
                let _ = RepoListing::parse(&with_bom);
            }

            #[test]
            fn listings_from_any_json_keep_only_valid_versions(
                top in json(),
                packages in proptest::collection::btree_map("\\PC{0,12}", (proptest::collection::btree_map(prop_oneof!["\\PC{0,8}", version().prop_map(|v| v.to_string())], json(), 0..4), json()), 0..4),
            ) {
                let _ = RepoListing::parse(top.to_string().as_bytes());
                let mut raw = serde_json::Map::new();
                for (name, (versions, other)) in &packages {
                    let versions: serde_json::Map<String, Value> = versions
                        .iter()
                        .map(|(k, value)| {
                            // Half the time a well-formed package, so some versions are kept.
                            let value = if value.is_boolean() {
                                serde_json::json!({"name": name, "version": k, "url": "http://x/a.zip"})
                            } else {
                                value.clone()
                            };
                            (k.clone(), value)
                        })
                        .collect();
                    raw.insert(name.clone(), serde_json::json!({"versions": versions, "other": other}));
                }
                let listing = RepoListing::parse(serde_json::json!({"packages": raw}).to_string().as_bytes())
                    .expect("a listing with a packages object parses");
                for (name, versions) in &listing.packages {
                    prop_assert!(!versions.is_empty());
                    let source = &packages[name].0;
                    for version in versions.keys() {
                        prop_assert!(source.keys().any(|k| Version::parse(k.trim()).ok().as_ref() == Some(version)));
                    }
                }
            }

            #[test]
            fn resolving_any_listing_never_panics(
                deps in proptest::collection::btree_map("[a-c]", prop_oneof![range_like(), "\\PC{0,6}"], 0..4),
                request in range_like(),
                pre: bool,
            ) {
                let mut raw = serde_json::Map::new();
                for name in ["a", "b", "c"] {
                    raw.insert(name.into(), serde_json::json!({"versions": {
                        "1.0.0": {"name": name, "version": "1.0.0", "vpmDependencies": deps},
                        "2.0.0-pre": {"name": name, "version": "2.0.0-pre", "vpmDependencies": {}},
                    }}));
                }
                let snapshot = listing(serde_json::json!({"packages": raw}));
                if let Ok(range) = VpmRange::parse_request(&request) {
                    let requests = [Requirement { name: "a".into(), range, requested_by: "request".into() }];
                    if let Ok(resolved) = resolve(&[snapshot], &requests, pre, &BTreeMap::new()) {
                        let names: Vec<_> = resolved.iter().map(|r| r.name.as_str()).collect();
                        let mut sorted = names.clone();
                        sorted.sort_unstable();
                        sorted.dedup();
                        prop_assert_eq!(names, sorted);
                    }
                }
            }
        }

        fn json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                any::<f64>()
                    .prop_filter("finite", |f| f.is_finite())
                    .prop_map(Value::from),
                "\\PC{0,10}".prop_map(Value::String),
            ];
            leaf.prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    proptest::collection::btree_map(
                        prop_oneof![
                            Just("packages".to_string()),
                            Just("versions".to_string()),
                            Just("name".to_string()),
                            Just("url".to_string()),
                            Just("headers".to_string()),
                            Just("vpmDependencies".to_string()),
                            "\\PC{0,6}",
                        ],
                        inner,
                        0..4
                    )
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }
    }
}
