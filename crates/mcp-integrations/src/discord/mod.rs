//! Discord: `discord.send_message`, `discord.edit_message` (with the bot token) and
//! `discord.webhook_execute` (a webhook's own token; also how interaction follow-ups are sent),
//! through one REST client that honours Discord's rate limits.
//!
//! This file holds the settings, the adapter and the task handler; `request` turns a payload into
//! the call it makes, `client` sends it and reads the answer, `limits` tracks the rate-limit
//! buckets. `docs/integrations.md` has the payload and result schemas.

mod client;
mod limits;
mod request;

pub use client::DiscordClient;
pub use request::{DiscordRequest, request_for};

use crate::{Adapter, AdapterHealth};
use async_trait::async_trait;
use mcp_core::{Handler, HandlerError, HandlerRegistry, TaskContext};
use request::{Kind, build};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Posts a message to a channel (bot token).
pub const SEND_MESSAGE: &str = "discord.send_message";
/// Edits a message of the bot (bot token).
pub const EDIT_MESSAGE: &str = "discord.edit_message";
/// Executes a webhook (its token is in the payload; no bot token needed).
pub const WEBHOOK_EXECUTE: &str = "discord.webhook_execute";
/// Discord's limit on `content`, in characters.
pub const MAX_CONTENT_CHARS: usize = 2000;
/// Discord's limit on `embeds` per message.
pub const MAX_EMBEDS: usize = 10;

/// Settings of the Discord adapter.
#[derive(Clone)]
pub struct DiscordConfig {
    /// `https://discord.com/api/v10`, or a test server.
    pub api_base: String,
    /// `None`: `discord.send_message` and `discord.edit_message` are not registered.
    pub bot_token: Option<String>,
    /// Limit of one HTTP call (a task's waits for rate limits are bounded by its own timeout).
    pub timeout: Duration,
    /// Discord asks bots for `DiscordBot ($url, $version)`.
    pub user_agent: String,
}

impl std::fmt::Debug for DiscordConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscordConfig")
            .field("api_base", &self.api_base)
            .field("bot_token", &self.bot_token.as_ref().map(|_| "…"))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Default for DiscordConfig {
    fn default() -> Self {
        DiscordConfig {
            api_base: "https://discord.com/api/v10".into(),
            bot_token: None,
            timeout: Duration::from_secs(30),
            user_agent: concat!(
                "DiscordBot (https://github.com/mkww/mkww-mcp, ",
                env!("CARGO_PKG_VERSION"),
                ")"
            )
            .to_owned(),
        }
    }
}

/// The adapter for Discord: `discord.webhook_execute` always, the bot's task types when a bot
/// token is configured.
#[derive(Debug, Clone)]
pub struct DiscordAdapter {
    client: Arc<DiscordClient>,
}

impl DiscordAdapter {
    pub fn new(config: DiscordConfig) -> Result<Self, String> {
        Ok(DiscordAdapter {
            client: Arc::new(DiscordClient::new(config)?),
        })
    }

    /// The shared client (one rate-limit state for every task type).
    pub fn client(&self) -> Arc<DiscordClient> {
        self.client.clone()
    }
}

#[async_trait]
impl Adapter for DiscordAdapter {
    fn name(&self) -> &str {
        "discord"
    }

    fn task_types(&self) -> Vec<String> {
        let mut types = Vec::new();
        if self.client.bot_token.is_some() {
            types.push(EDIT_MESSAGE.to_owned());
            types.push(SEND_MESSAGE.to_owned());
        }
        types.push(WEBHOOK_EXECUTE.to_owned());
        types
    }

    /// Degraded while a global rate limit is in force; failures show in the tasks' errors.
    async fn health(&self) -> AdapterHealth {
        if self.client.globally_limited() {
            AdapterHealth::Degraded("globally rate limited".into())
        } else {
            AdapterHealth::Healthy
        }
    }

    fn register(&self, registry: &mut HandlerRegistry) {
        for kind in [Kind::Send, Kind::Edit, Kind::Webhook] {
            if kind.needs_bot_token() && self.client.bot_token.is_none() {
                continue;
            }
            registry.register(
                kind.task_type(),
                DiscordTask {
                    kind,
                    client: self.client.clone(),
                },
            );
        }
    }
}

/// The handler of one Discord task type.
#[derive(Debug, Clone)]
struct DiscordTask {
    kind: Kind,
    client: Arc<DiscordClient>,
}

#[async_trait]
impl Handler for DiscordTask {
    fn validate(&self, payload: &Value) -> Result<(), String> {
        build(self.kind, payload).map(|_| ())
    }

    async fn run(&self, ctx: TaskContext) -> Result<Value, HandlerError> {
        let request = build(self.kind, &ctx.task.payload).map_err(HandlerError::permanent)?;
        // The orchestrator drops the attempt at its timeout; waits stop a little short of it.
        let budget = Duration::from_millis(ctx.task.timeout_ms.max(1));
        let deadline = Instant::now() + budget.mul_f64(0.9);
        self.client.send(&request, deadline).await
    }
}
