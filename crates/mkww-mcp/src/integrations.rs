//! Integrations, wired: the configuration file's integrations as `GET /v1/integrations` lists
//! them, the stored ones (`PUT /v1/integrations/{name}`) merged into the configuration at start,
//! and the runtime that applies a stored `llm` or `github` integration to the running handler at
//! once. Other kinds are stored for the adapters that read them.

use crate::config::Config;
use async_trait::async_trait;
use mcp_api::integrations::ConfiguredIntegration;
use mcp_core::integrations::{IntegrationRuntime, IntegrationStore, secret_purpose};
use mcp_core::secrets::SecretBox;
use mcp_integrations::Adapter;
use mcp_integrations::vcc::{VccAdapter, VccService};
use mcp_integrations::vrchat::{SavedSession, SessionKeeper};
use mcp_integrations::{AdapterHealth, GithubLive, LlmLive, VrchatClient};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// The configuration file's integrations, without secret values.
pub fn configured(config: &Config) -> Vec<ConfiguredIntegration> {
    let mut out = vec![ConfiguredIntegration {
        name: "http".into(),
        kind: "http".into(),
        settings: json!({
            "timeout_ms": config.http_timeout_ms,
            "max_body_bytes": config.http_max_body_bytes,
        }),
        secrets: Vec::new(),
    }];
    if config
        .github_token
        .as_deref()
        .is_some_and(|t| !t.is_empty())
    {
        out.push(ConfiguredIntegration {
            name: "github".into(),
            kind: "github".into(),
            settings: json!({"api_base": config.github_api_base}),
            secrets: vec!["token".into()],
        });
    }
    if !config.render_deploy_hooks.is_empty() {
        // A deploy hook URL carries its key: only the service names are shown.
        out.push(ConfiguredIntegration {
            name: "render".into(),
            kind: "render".into(),
            settings: json!({"services": config.render_deploy_hooks.keys().collect::<Vec<_>>()}),
            secrets: config
                .render_deploy_hooks
                .keys()
                .map(|service| format!("deploy_hook.{service}"))
                .collect(),
        });
    }
    if let Some(base_url) = config.llm_base_url.as_deref().filter(|u| !u.is_empty()) {
        out.push(ConfiguredIntegration {
            name: "llm".into(),
            kind: "llm".into(),
            settings: json!({"base_url": base_url, "model": config.llm_model}),
            secrets: config
                .llm_api_key
                .iter()
                .filter(|k| !k.is_empty())
                .map(|_| "api_key".to_owned())
                .collect(),
        });
    }
    let vcc_settings = config.vcc_settings_file();
    if !config.vcc_roots().is_empty()
        || !config.vcc_projects.is_empty()
        || !config.vcc_repositories.is_empty()
        || vcc_settings.is_some()
    {
        out.push(ConfiguredIntegration {
            name: "vcc".into(),
            kind: "vcc".into(),
            settings: json!({
                "project_roots": config.vcc_roots(),
                "projects": config.vcc_projects,
                "repositories": config.vcc_repositories,
                "settings_file": vcc_settings,
                "build_command": !config.vcc_build_command.is_empty(),
                "deploy_command": !config.vcc_deploy_command.is_empty(),
            }),
            secrets: Vec::new(),
        });
    }
    if let Some(username) = config.vrchat_username.as_deref().filter(|u| !u.is_empty()) {
        let mut secrets = vec!["password".to_owned()];
        if config
            .vrchat_totp_secret
            .as_deref()
            .is_some_and(|s| !s.is_empty())
        {
            secrets.push("totp_secret".into());
        }
        out.push(ConfiguredIntegration {
            name: "vrchat".into(),
            kind: "vrchat".into(),
            settings: json!({"api_base": config.vrchat_api_base, "username": username}),
            secrets,
        });
    }
    out
}

fn text(settings: &Value, key: &str) -> Option<String> {
    settings
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// Applies the enabled stored `llm`, `github` and `vrchat` integrations over the configuration
/// file's settings, before the handlers are built: a stored integration survives restarts and
/// can register a task type the file leaves out (a VRChat password and TOTP secret are kept
/// sealed by the SecretBox this way). A secret that does not open is skipped, logged.
pub async fn merge_stored(
    config: &mut Config,
    store: &dyn IntegrationStore,
    secrets: &SecretBox,
) -> anyhow::Result<()> {
    for integration in store.list_integrations().await? {
        if !integration.enabled {
            continue;
        }
        let mut opened = BTreeMap::new();
        for (key, sealed) in &integration.secrets {
            match secrets
                .open(sealed, &secret_purpose(&integration.name, key))
                .map(String::from_utf8)
            {
                Ok(Ok(value)) => {
                    opened.insert(key.clone(), value);
                }
                _ => tracing::warn!(
                    integration = %integration.name,
                    secret = %key,
                    "a stored integration secret does not open; skipped"
                ),
            }
        }
        let settings = &integration.settings;
        match integration.kind.as_str() {
            "llm" => {
                if let Some(base_url) = text(settings, "base_url") {
                    config.llm_base_url = Some(base_url);
                }
                if let Some(model) = text(settings, "model") {
                    config.llm_model = model;
                }
                if let Some(key) = opened.remove("api_key") {
                    config.llm_api_key = Some(key);
                }
            }
            "github" => {
                if let Some(base) = text(settings, "api_base") {
                    config.github_api_base = base;
                }
                if let Some(token) = opened.remove("token") {
                    config.github_token = Some(token);
                }
            }
            "vrchat" => {
                if let Some(base) = text(settings, "api_base") {
                    config.vrchat_api_base = base;
                }
                if let Some(username) = text(settings, "username") {
                    config.vrchat_username = Some(username);
                }
                if let Some(password) = opened.remove("password") {
                    config.vrchat_password = Some(password);
                }
                if let Some(secret) = opened.remove("totp_secret") {
                    config.vrchat_totp_secret = Some(secret);
                }
            }
            _ => continue,
        }
        tracing::info!(integration = %integration.name, kind = %integration.kind, "stored integration applied");
    }
    Ok(())
}

/// The settings holders shared with the `llm.generate` and `github.dispatch` handlers.
#[derive(Debug, Clone, Default)]
pub struct LiveIntegrations {
    pub llm: LlmLive,
    pub github: GithubLive,
}

/// The running adapters, as the integration routes see them.
pub struct Runtime {
    /// The configuration file's settings: what a deleted integration falls back to.
    pub file: Config,
    pub live: LiveIntegrations,
    /// The VRChat session, when an account is configured.
    pub vrchat: Option<Arc<VrchatClient>>,
    /// The VCC service.
    pub vcc: Option<VccService>,
}

#[async_trait]
impl IntegrationRuntime for Runtime {
    /// `http` always works (each task names its own server); `render` works when hooks are
    /// configured; `llm` and `github` when their handler runs. Probing them would cost tokens or
    /// rate limit, so failures show in the tasks' errors and the breaker instead.
    async fn health(&self, _name: &str, kind: &str) -> Option<Value> {
        if kind == "vrchat"
            && let Some(client) = &self.vrchat
        {
            return serde_json::to_value(client.health()).ok();
        }
        if kind == "vcc"
            && let Some(service) = &self.vcc
        {
            let health = VccAdapter::new(service.clone()).health().await;
            return serde_json::to_value(health).ok();
        }
        let running = match kind {
            "http" => true,
            "render" => !self.file.render_deploy_hooks.is_empty(),
            "llm" => self.live.llm.is_attached(),
            "github" => self.live.github.is_attached(),
            "vrchat" => false,
            _ => return None,
        };
        let health = if running {
            AdapterHealth::Healthy
        } else {
            AdapterHealth::Down("not running on this node: applies at the next start".into())
        };
        serde_json::to_value(health).ok()
    }

    fn apply(
        &self,
        kind: &str,
        settings: &Value,
        secrets: &BTreeMap<String, String>,
    ) -> Result<bool, String> {
        match kind {
            "llm" => {
                let base_url = text(settings, "base_url")
                    .or_else(|| self.file.llm_base_url.clone())
                    .ok_or("settings.base_url: required (an OpenAI-compatible base URL)")?;
                let model = text(settings, "model").unwrap_or_else(|| self.file.llm_model.clone());
                let key = secrets
                    .get("api_key")
                    .cloned()
                    .or_else(|| self.file.llm_api_key.clone());
                self.live.llm.set(&base_url, &model, key)
            }
            "github" => {
                let base =
                    text(settings, "api_base").unwrap_or_else(|| self.file.github_api_base.clone());
                let token = secrets
                    .get("token")
                    .cloned()
                    .or_else(|| self.file.github_token.clone())
                    .ok_or("secrets.token: required")?;
                self.live.github.set(&base, token)
            }
            _ => Ok(false),
        }
    }

    fn remove(&self, kind: &str) -> bool {
        let file = &self.file;
        let reverted = match kind {
            "llm" => file.llm_base_url.as_deref().map(|base_url| {
                self.live
                    .llm
                    .set(base_url, &file.llm_model, file.llm_api_key.clone())
            }),
            "github" => file
                .github_token
                .clone()
                .map(|token| self.live.github.set(&file.github_api_base, token)),
            _ => None,
        };
        matches!(reverted, Some(Ok(true)))
    }
}

/// The VRChat session's cookies in a file of the data directory, sealed by the SecretBox for
/// one account, so a restarted node resumes its session instead of logging in (and, with an
/// emailed code, waiting for a person). Each node of a cluster keeps its own.
pub struct SealedSessionFile {
    pub path: PathBuf,
    pub secrets: SecretBox,
    /// Binds the sealed session to the account: another account's cookies never open.
    pub username: String,
}

impl SealedSessionFile {
    fn purpose(&self) -> String {
        format!("vrchat.session:{}", self.username)
    }
}

impl SessionKeeper for SealedSessionFile {
    fn load(&self) -> Option<SavedSession> {
        let sealed = std::fs::read_to_string(&self.path).ok()?;
        match self.secrets.open(sealed.trim(), &self.purpose()) {
            Ok(bytes) => serde_json::from_slice(&bytes).ok(),
            Err(e) => {
                tracing::warn!(error = %e, "the kept VRChat session does not open; logging in");
                None
            }
        }
    }

    fn save(&self, session: Option<&SavedSession>) {
        let result = match session {
            None => match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
                _ => Ok(()),
            },
            Some(session) => self.write(session),
        };
        if let Err(e) = result {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot keep the VRChat session");
        }
    }
}

impl SealedSessionFile {
    fn write(&self, session: &SavedSession) -> anyhow::Result<()> {
        let sealed = self
            .secrets
            .seal(&serde_json::to_vec(session)?, &self.purpose())?;
        let temporary = self
            .path
            .with_extension(format!("tmp-{}", uuid::Uuid::new_v4()));
        crate::config::write_private(&temporary, &sealed)?;
        std::fs::rename(&temporary, &self.path).inspect_err(|_| {
            let _ = std::fs::remove_file(&temporary);
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime(file: Config) -> Runtime {
        Runtime {
            file,
            live: LiveIntegrations::default(),
            vrchat: None,
            vcc: None,
        }
    }

    #[test]
    fn lists_only_what_the_file_configures_and_never_a_secret() {
        let config = Config {
            llm_base_url: Some("http://127.0.0.1:1/v1".into()),
            llm_api_key: Some("sk-file".into()),
            render_deploy_hooks: [("web".to_owned(), "https://r/deploy/srv?key=k".to_owned())]
                .into(),
            ..Config::default()
        };
        let listed = configured(&config);
        let names: Vec<&str> = listed.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["http", "render", "llm"]);
        let shown = format!("{listed:?}");
        assert!(
            !shown.contains("sk-file") && !shown.contains("key=k"),
            "{shown}"
        );
    }

    #[test]
    fn refuses_settings_that_cannot_work_and_keeps_others_for_the_next_start() {
        let runtime = runtime(Config::default());
        let none = BTreeMap::new();
        assert!(runtime.apply("llm", &json!({}), &none).is_err());
        assert!(
            runtime
                .apply("llm", &json!({"base_url": "ftp://x"}), &none)
                .is_err()
        );
        assert!(runtime.apply("github", &json!({}), &none).is_err());
        // Valid, but no handler runs: applies at the next start.
        assert_eq!(
            runtime.apply("llm", &json!({"base_url": "http://127.0.0.1:1/v1"}), &none),
            Ok(false)
        );
        assert_eq!(runtime.apply("discord", &json!({}), &none), Ok(false));
        assert!(!runtime.remove("llm"));
    }

    #[test]
    fn keeps_the_vrchat_session_sealed_for_one_account() {
        let dir = std::env::temp_dir().join(format!("mcp-session-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let secrets = SecretBox::new(
            mcp_core::secrets::MasterKey::from_base64(
                &mcp_core::secrets::MasterKey::generate_base64(),
            )
            .unwrap(),
            [],
        );
        let keeper = |username: &str| SealedSessionFile {
            path: dir.join("vrchat-session"),
            secrets: secrets.clone(),
            username: username.into(),
        };
        let session = SavedSession {
            auth: "authcookie_secret".into(),
            two_factor: Some("tfa".into()),
        };
        assert_eq!(keeper("alice").load(), None);
        keeper("alice").save(Some(&session));
        let on_disk = std::fs::read_to_string(dir.join("vrchat-session")).unwrap();
        assert!(!on_disk.contains("authcookie_secret"), "{on_disk}");
        assert_eq!(keeper("alice").load(), Some(session));
        assert_eq!(
            keeper("bob").load(),
            None,
            "another account's session never opens"
        );
        keeper("alice").save(None);
        assert!(!dir.join("vrchat-session").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
