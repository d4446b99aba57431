//! Integrations, wired: the configuration file's integrations as `GET /v1/integrations` lists
//! them, the stored ones (`PUT /v1/integrations/{name}`) merged into the configuration at start,
//! and the runtime that applies a stored `llm` or `github` integration to the running handler at
//! once. Other kinds are stored for the adapters that read them.

use crate::config::Config;
use async_trait::async_trait;
use mcp_api::integrations::ConfiguredIntegration;
use mcp_core::integrations::{IntegrationRuntime, IntegrationStore, secret_purpose};
use mcp_core::secrets::SecretBox;
use mcp_integrations::{AdapterHealth, GithubLive, LlmLive, VrchatClient};
use serde_json::{Value, json};
use std::collections::BTreeMap;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime(file: Config) -> Runtime {
        Runtime {
            file,
            live: LiveIntegrations::default(),
            vrchat: None,
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
}
