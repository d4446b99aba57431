//! VCC's own `settings.json`: the projects and package repositories the user added in VCC.

use super::manifest::strip_bom;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// VCC's `settings.json`, the parts read here. Everything else in it is ignored.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VccSettings {
    #[serde(default)]
    pub user_projects: Vec<String>,
    #[serde(default)]
    pub user_repos: Vec<UserRepo>,
}

/// A repository listed in VCC's `settings.json`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct UserRepo {
    /// Empty for local repositories, which VCC lists with a `localPath` only.
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

impl VccSettings {
    /// Reads `path`; a missing or unreadable file is logged and read as empty settings, since
    /// VCC may simply not be installed on this machine.
    pub fn read(path: Option<&Path>) -> VccSettings {
        let Some(path) = path else {
            return VccSettings::default();
        };
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "no VCC settings file");
                return VccSettings::default();
            }
        };
        match serde_json::from_slice(strip_bom(&bytes)) {
            Ok(settings) => settings,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "VCC settings file is unreadable");
                VccSettings::default()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::VccSettings;

    #[test]
    fn settings_tolerate_missing_and_extra_fields() {
        let s: VccSettings = serde_json::from_str(
            r#"{"userProjects":["/a"],"userRepos":[{"url":"https://r/x.json","id":"x"},{"localPath":"/l"}],"pathToUnityExe":"u"}"#,
        )
        .unwrap();
        assert_eq!(s.user_projects, vec!["/a"]);
        assert_eq!(s.user_repos[0].url, "https://r/x.json");
        let s: VccSettings = serde_json::from_str("{}").unwrap();
        assert!(s.user_projects.is_empty());
    }
}
