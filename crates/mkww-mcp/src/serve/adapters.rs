//! The task handlers of the configured adapters (HTTP, deploy, LLM, Discord, OSC, VRChat, VCC,
//! memory summaries, webhook deliveries), and the adapter clients the API also reaches.

use crate::config::Config;
use crate::integrations::{LiveIntegrations, SealedSessionFile};
use crate::serve::services::webhook_config;
use crate::serve::stores::Stores;
use anyhow::Context;
use mcp_core::HandlerRegistry;
use mcp_core::events::EventBus;
use mcp_core::memory::{SUMMARIZE_TASK, Summarizer};
use mcp_core::secrets::SecretBox;
use mcp_core::webhooks::DELIVER_TASK;
use mcp_integrations::Adapter;
use mcp_integrations::http::{HttpAdapter, HttpConfig};
use mcp_integrations::vcc::{VccAdapter, VccConfig, VccService};
use mcp_integrations::webhooks::DeliverHandler;
use mcp_integrations::{DeployAdapter, DeployConfig, LlmAdapter, LlmConfig};
use mcp_integrations::{DiscordAdapter, DiscordConfig};
use mcp_integrations::{OscAdapter, OscConfig};
use mcp_integrations::{VrchatAdapter, VrchatClient, VrchatConfig};
use std::sync::Arc;

/// The clients of adapters that the API also reaches directly.
#[derive(Default)]
pub struct AdapterClients {
    pub vrchat: Option<Arc<VrchatClient>>,
    pub vcc: Option<VccService>,
}

/// The handlers of the configured adapters. `live` is shared with the `llm.generate` and
/// `github.dispatch` handlers, so stored integrations change them while running.
fn registry(
    config: &Config,
    live: &LiveIntegrations,
    events: &Arc<dyn EventBus>,
    secrets: &SecretBox,
) -> anyhow::Result<(HandlerRegistry, AdapterClients)> {
    let mut registry = HandlerRegistry::with_builtins();
    let mut clients = AdapterClients::default();
    HttpAdapter::new(HttpConfig {
        default_timeout: Config::ms(config.http_timeout_ms),
        max_body_bytes: config.http_max_body_bytes,
        outbound: config.outbound_policy()?,
        ..HttpConfig::default()
    })
    .context("cannot build the HTTP client")?
    .register(&mut registry);
    // Deploy triggers and the LLM exist only when configured; otherwise their task types are
    // unknown (422 `unknown_task_type`).
    DeployAdapter::new(DeployConfig {
        github_api_base: config.github_api_base.clone(),
        github_token: config.github_token.clone().filter(|t| !t.is_empty()),
        render_deploy_hooks: config.render_deploy_hooks.clone(),
        timeout: Config::ms(config.http_timeout_ms),
        github_live: live.github.clone(),
        ..DeployConfig::default()
    })
    .map_err(anyhow::Error::msg)
    .context("cannot set up the deploy triggers")?
    .register(&mut registry);
    if let Some(base_url) = config.llm_base_url.as_deref().filter(|u| !u.is_empty()) {
        LlmAdapter::new(LlmConfig {
            api_key: config.llm_api_key.clone(),
            timeout: Config::ms(config.llm_timeout_ms),
            live: live.llm.clone(),
            ..LlmConfig::new(base_url, &config.llm_model)
        })
        .map_err(anyhow::Error::msg)
        .context("cannot set up the LLM")?
        .register(&mut registry);
    }
    // `discord.webhook_execute` needs no credentials (it also sends interaction follow-ups);
    // the bot's task types exist only with a bot token.
    DiscordAdapter::new(DiscordConfig {
        api_base: config.discord_api_base.clone(),
        bot_token: config.discord_bot_token.clone().filter(|t| !t.is_empty()),
        timeout: Config::ms(config.http_timeout_ms),
        ..DiscordConfig::default()
    })
    .map_err(anyhow::Error::msg)
    .context("cannot set up Discord")?
    .register(&mut registry);
    // VRChat OSC: UDP datagrams to a VRChat client, so it needs nothing to be offered.
    let target = config.vrchat_osc_send.parse().with_context(|| {
        format!(
            "vrchat_osc_send `{}` is not an address",
            config.vrchat_osc_send
        )
    })?;
    OscAdapter::new(OscConfig {
        target,
        ..OscConfig::default()
    })
    .register(&mut registry);
    // VRChat's web API, with an account only.
    if let (Some(username), Some(password)) = (
        config.vrchat_username.as_deref().filter(|u| !u.is_empty()),
        config.vrchat_password.as_deref().filter(|p| !p.is_empty()),
    ) {
        let adapter = VrchatAdapter::new(VrchatConfig {
            api_base: config.vrchat_api_base.clone(),
            totp_secret: config.vrchat_totp_secret.clone().filter(|s| !s.is_empty()),
            user_agent: mcp_integrations::vrchat::user_agent(&config.vrchat_contact),
            timeout: Config::ms(config.http_timeout_ms),
            keeper: Some(Arc::new(SealedSessionFile {
                path: config.data_dir.join("vrchat-session"),
                secrets: secrets.clone(),
                username: username.to_owned(),
            })),
            ..VrchatConfig::new(username, password)
        })
        .map_err(anyhow::Error::msg)
        .context("cannot set up the VRChat client")?;
        adapter.register(&mut registry);
        clients.vrchat = Some(adapter.client());
    }
    // VCC: projects live on this node's disk, under the configured roots.
    let vcc = VccService::new(VccConfig {
        roots: config.vcc_roots(),
        projects: config.vcc_projects.clone(),
        repositories: config.vcc_repositories.clone(),
        settings_file: config.vcc_settings_file(),
        state_file: config.data_dir.join("vcc.json"),
        build_command: config.vcc_build_command.clone(),
        deploy_command: config.vcc_deploy_command.clone(),
        command_timeout: Config::ms(config.vcc_command_timeout_ms),
        outbound: config.outbound_policy()?,
        ..VccConfig::default()
    })
    .map_err(|e| anyhow::anyhow!("cannot set up VCC: {e}"))?;
    VccAdapter::new(vcc.clone())
        .with_events(events.clone())
        .register(&mut registry);
    clients.vcc = Some(vcc);
    Ok((registry, clients))
}

/// Every handler this node serves: the adapters' (`registry`), the built-in summarizer unless
/// turned off, and the delivery of outgoing webhooks.
pub fn handlers(
    config: &Config,
    live: &LiveIntegrations,
    events: &Arc<dyn EventBus>,
    secrets: &SecretBox,
    stores: &Stores,
) -> anyhow::Result<(HandlerRegistry, AdapterClients)> {
    let (mut handlers, clients) = registry(config, live, events, secrets)?;
    if config.memory_builtin_summarizer {
        handlers.register(
            SUMMARIZE_TASK,
            Summarizer {
                store: stores.memory.clone(),
            },
        );
    }
    handlers.register(
        DELIVER_TASK,
        DeliverHandler {
            store: stores.webhooks.clone(),
            secrets: Arc::new(secrets.clone()),
            config: webhook_config(config),
        },
    );
    Ok((handlers, clients))
}
