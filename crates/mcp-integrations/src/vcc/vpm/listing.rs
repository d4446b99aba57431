//! A VPM repository listing (`{"packages":{name:{"versions":{...}}}}`), parsed and checked.

use semver::Version;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

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
