//! Integrations configured through the API (`PUT /v1/integrations/{name}`): their kind,
//! non-secret settings and sealed secrets, and the `IntegrationStore` port that keeps them.
//! Secrets reach the store only sealed by the `SecretBox` (purpose [`secret_purpose`]); nothing
//! here ever holds them in the clear.

use crate::store::StoreError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::collections::BTreeMap;

/// The longest integration name.
pub const MAX_NAME_LEN: usize = 64;

/// One stored integration.
#[derive(Debug, Clone, PartialEq)]
pub struct Integration {
    /// Unique, `[a-z0-9_-]`, e.g. `llm` or `github`.
    pub name: String,
    /// Which adapter it configures: `github`, `render`, `llm`, `http`, `discord`, …
    pub kind: String,
    /// Non-secret settings (base URLs, model, …), a JSON object.
    pub settings: Value,
    /// Secret name → sealed value (`v1.<key id>.<…>`).
    pub secrets: BTreeMap<String, String>,
    pub enabled: bool,
    pub updated_at: DateTime<Utc>,
}

/// The purpose a secret of an integration is sealed for: a sealed value copied to another
/// integration or another secret name does not open.
pub fn secret_purpose(integration: &str, secret: &str) -> String {
    format!("integration:{integration}:{secret}")
}

/// Checks an integration or secret name: 1 to [`MAX_NAME_LEN`] of `a-z`, `0-9`, `_`, `-`, `.`.
pub fn check_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`{name}` must be 1 to {MAX_NAME_LEN} characters of a-z, 0-9, `_`, `-`, `.`"
        ))
    }
}

/// Keeps the integrations configured through the API.
#[async_trait]
pub trait IntegrationStore: Send + Sync + 'static {
    /// Inserts or replaces the integration of that name.
    async fn put_integration(&self, integration: &Integration) -> Result<(), StoreError>;
    async fn integration(&self, name: &str) -> Result<Option<Integration>, StoreError>;
    /// All of them, by name.
    async fn list_integrations(&self) -> Result<Vec<Integration>, StoreError>;
    /// `false` when there was none of that name.
    async fn delete_integration(&self, name: &str) -> Result<bool, StoreError>;
}

/// The running node's side of integrations, implemented by the binary, which holds the adapters:
/// their health, and applying a stored integration to the adapter of its kind.
#[async_trait]
pub trait IntegrationRuntime: Send + Sync + 'static {
    /// The health of the integration, as the adapter reports it (`{"state": "healthy"}`,
    /// `{"state": "down", "reason": "…"}`); `None` when nothing can tell.
    async fn health(&self, name: &str, kind: &str) -> Option<Value>;

    /// Checks `settings` and the opened `secrets` of an integration of `kind` and hands them to
    /// the running adapter of that kind. `Ok(true)`: in effect now; `Ok(false)`: kept, in effect
    /// from the next start; `Err`: the settings cannot work for that kind.
    fn apply(
        &self,
        kind: &str,
        settings: &Value,
        secrets: &BTreeMap<String, String>,
    ) -> Result<bool, String>;

    /// The stored integration of `kind` was deleted: the adapter goes back to the configuration
    /// file's settings. `true`: in effect now; `false`: from the next start.
    fn remove(&self, kind: &str) -> bool;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lowercase_words() {
        assert!(check_name("llm").is_ok());
        assert!(check_name("github-main_2").is_ok());
        for bad in ["", "LLM", "a b", "a/b", &"x".repeat(MAX_NAME_LEN + 1)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
