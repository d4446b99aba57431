//! The repositories VCC reads: added ones (persisted), configured ones and VCC's `userRepos`,
//! each listing fetched with its `ETag` and kept in memory.

use super::*;
use crate::outbound::OutboundClient;
use crate::traced::SendTraced;
use crate::vcc::project::{UserRepo, VccSettings};
use crate::vcc::{MAX_LISTING_BYTES, RepositoryInfo, StateStore, VccError, network_error};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

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
    http: OutboundClient,
    cache: tokio::sync::Mutex<HashMap<String, Cached>>,
    errors: std::sync::Mutex<HashMap<String, String>>,
}

impl RepoCache {
    pub(crate) fn new(
        state: Arc<StateStore>,
        settings_file: Option<PathBuf>,
        http: OutboundClient,
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
        let network = |e: reqwest::Error| network_error(url, e);
        let parsed = reqwest::Url::parse(url).map_err(|e| VccError::RepositoryInvalid {
            url: url.to_string(),
            message: e.to_string(),
        })?;
        let mut request = crate::vcc::guarded_get(&self.http, url, parsed, headers)?;
        if let Some(etag) = etag {
            request = request.header(reqwest::header::IF_NONE_MATCH, etag);
        }
        let mut response = request.send_traced().await.map_err(network)?;
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
