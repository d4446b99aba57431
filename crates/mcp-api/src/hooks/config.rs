//! How incoming webhooks are configured: the sources' verifier and the body limit. A leaf, so
//! `state` can hold it without depending on the handler that reads it.

use mcp_core::hooks::HookVerifier;
use std::sync::Arc;

/// The configured hook sources and their limits.
#[derive(Clone)]
pub struct HooksConfig {
    /// How deliveries are checked: signatures, replays (in memory: per node) and the rules that
    /// make tasks. `None`: no source is configured, so every source is unknown.
    pub verifier: Option<Arc<dyn HookVerifier>>,
    /// Largest hook body, in bytes (413 `payload_too_large` beyond).
    pub max_body_bytes: usize,
}

impl HooksConfig {
    pub fn new(verifier: Arc<dyn HookVerifier>, max_body_bytes: usize) -> Self {
        HooksConfig {
            verifier: Some(verifier),
            max_body_bytes,
        }
    }
}

impl Default for HooksConfig {
    fn default() -> Self {
        HooksConfig {
            verifier: None,
            max_body_bytes: 1024 * 1024,
        }
    }
}

// By hand: the verifier holds the sources' secrets.
impl std::fmt::Debug for HooksConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HooksConfig")
            .field("verifier", &self.verifier.is_some())
            .field("max_body_bytes", &self.max_body_bytes)
            .finish()
    }
}
