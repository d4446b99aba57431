//! What the integration keys derive: VCC's project roots and settings file, Discord's key, the
//! outbound guard's policy.

use super::Config;
use mcp_core::outbound::{LiveRules, Policy};
use std::path::PathBuf;
use std::sync::Arc;

/// The outbound rules every client of this process follows: the configuration's at start, the
/// runtime settings' after a change.
static OUTBOUND_RULES: std::sync::LazyLock<LiveRules> =
    std::sync::LazyLock::new(LiveRules::default);

impl Config {
    /// The outbound guard's policy: `outbound_allow_private` (or its old name
    /// `webhooks_allow_private`) and `outbound_allow`.
    pub fn outbound_policy(&self) -> anyhow::Result<Arc<Policy>> {
        Policy::new(
            self.outbound_allow_private || self.webhooks_allow_private,
            &self.outbound_allow,
        )
        .map(|policy| {
            Arc::new(Policy {
                live: Some(OUTBOUND_RULES.clone()),
                ..policy
            })
        })
        .map_err(anyhow::Error::msg)
    }

    /// Makes this configuration's outbound rules those of every policy `outbound_policy` made
    /// (the `outbound_allow*` runtime settings).
    pub fn apply_outbound_rules(&self) -> anyhow::Result<()> {
        let policy = self.outbound_policy()?;
        OUTBOUND_RULES.set(Policy::clone(&policy));
        Ok(())
    }

    /// `vcc_settings`, or where VCC keeps its `settings.json` on this system if it is there.
    pub fn vcc_settings_file(&self) -> Option<PathBuf> {
        if let Some(path) = &self.vcc_settings {
            return Some(path.clone());
        }
        let data = if cfg!(windows) {
            std::env::var_os("LOCALAPPDATA").map(PathBuf::from)
        } else if cfg!(target_os = "macos") {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join("Library/Application Support"))
        } else {
            std::env::var_os("XDG_DATA_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        };
        data.map(|dir| dir.join("VRChatCreatorCompanion").join("settings.json"))
            .filter(|path| path.is_file())
    }

    /// `vcc_project_roots`, split at commas.
    pub fn vcc_roots(&self) -> Vec<PathBuf> {
        self.vcc_project_roots
            .split(',')
            .map(str::trim)
            .filter(|root| !root.is_empty())
            .map(PathBuf::from)
            .collect()
    }

    /// The key that signs Discord interactions, if one is configured.
    pub fn discord_public_key(&self) -> anyhow::Result<Option<mcp_api::discord::VerifyingKey>> {
        match self.discord_public_key.as_deref().filter(|k| !k.is_empty()) {
            Some(hex) => Ok(Some(
                mcp_api::discord::parse_public_key(hex).map_err(anyhow::Error::msg)?,
            )),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's test jail returns its own large error type
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn finds_vcc_settings_where_vcc_keeps_them() {
        figment::Jail::expect_with(|jail| {
            let data = jail.directory().join("share");
            jail.set_env("XDG_DATA_HOME", data.display());
            let config = Config::load(None).unwrap();
            assert_eq!(config.vcc_settings_file(), None, "no file, no settings");
            std::fs::create_dir_all(data.join("VRChatCreatorCompanion")).unwrap();
            let settings = data.join("VRChatCreatorCompanion/settings.json");
            std::fs::write(&settings, "{}").unwrap();
            assert_eq!(config.vcc_settings_file(), Some(settings));
            jail.set_env("MCP_VCC_SETTINGS", "/elsewhere/settings.json");
            let config = Config::load(None).unwrap();
            assert_eq!(
                config.vcc_settings_file(),
                Some(PathBuf::from("/elsewhere/settings.json"))
            );
            Ok(())
        });
    }
}
