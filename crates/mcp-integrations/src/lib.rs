//! The integration layer: everything that talks to systems outside MKWW MCP. Each outside system
//! is an [`Adapter`] that contributes task types to the orchestrator's [`HandlerRegistry`]; the
//! binary builds the adapters from configuration and registers them once at start-up.
//!
//! Adapters: [`HttpAdapter`] (`http.request`), [`DeployAdapter`] (`github.dispatch`,
//! `render.deploy`), [`LlmAdapter`] (`llm.generate`), [`DiscordAdapter`] (`discord.*`) and
//! [`OscAdapter`] (`vrchat.osc.send`, `vrchat.chatbox`, `vrchat.avatar_parameter`),
//! [`VrchatAdapter`] (VRChat's web API: `vrchat.user.*`, `vrchat.world.get`, …) and the VCC
//! service ([`vcc`]: projects, packages, builds).

pub mod deploy;
pub mod discord;
pub mod hooks;
pub mod http;
pub mod llm;
pub mod osc;
pub mod outbound;
pub mod traced;
pub mod vcc;
pub mod vrchat;
pub mod webhooks;

pub use deploy::{DeployAdapter, DeployConfig, DeployTarget, GithubLive};
pub use discord::{DiscordAdapter, DiscordConfig};
pub use hooks::{HookKind, HookRule, HookSource};
pub use http::{HttpAdapter, HttpConfig, HttpRequest};
pub use llm::{LlmAdapter, LlmConfig, LlmLive};
pub use osc::{OscAdapter, OscConfig};
pub use outbound::{OutboundClient, Redirects};
pub use vrchat::{VrchatAdapter, VrchatClient, VrchatConfig};

use async_trait::async_trait;
use mcp_core::HandlerRegistry;
use serde::Serialize;

/// How an adapter sees the system it talks to, for health endpoints and logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "snake_case")]
pub enum AdapterHealth {
    /// Working normally.
    Healthy,
    /// Working, but with a problem worth reporting (slow, rate limited, partially configured).
    Degraded(String),
    /// Not working: tasks of its types are expected to fail until it recovers.
    Down(String),
}

impl AdapterHealth {
    pub fn is_healthy(&self) -> bool {
        matches!(self, AdapterHealth::Healthy)
    }
}

/// One outside system, seen from the orchestrator: the task types it runs and whether it is up.
///
/// The trait is object safe, so the binary can keep a `Vec<Box<dyn Adapter>>`.
#[async_trait]
pub trait Adapter: Send + Sync + 'static {
    /// A short, stable name for logs and health reports, e.g. `http`.
    fn name(&self) -> &str;

    /// The task types [`Adapter::register`] adds, e.g. `["http.request"]`.
    fn task_types(&self) -> Vec<String>;

    /// The current state of the outside system. Should answer quickly; an adapter that must
    /// probe something remote is expected to cache the answer.
    async fn health(&self) -> AdapterHealth;

    /// Adds a handler for each of [`Adapter::task_types`] to `registry`.
    fn register(&self, registry: &mut HandlerRegistry);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_serializes_with_state_and_reason() {
        assert_eq!(
            serde_json::to_value(AdapterHealth::Healthy).unwrap(),
            serde_json::json!({"state": "healthy"})
        );
        assert_eq!(
            serde_json::to_value(AdapterHealth::Down("token revoked".into())).unwrap(),
            serde_json::json!({"state": "down", "reason": "token revoked"})
        );
    }

    #[tokio::test]
    async fn adapters_can_be_held_as_trait_objects() {
        let adapters: Vec<Box<dyn Adapter>> =
            vec![Box::new(HttpAdapter::new(HttpConfig::default()).unwrap())];
        let mut registry = HandlerRegistry::default();
        for adapter in &adapters {
            adapter.register(&mut registry);
            assert!(adapter.health().await.is_healthy());
        }
        assert_eq!(registry.types(), adapters[0].task_types());
    }
}
