//! The port that checks incoming webhooks (`POST /v1/hooks/{source}`), and the plain data it
//! answers with. The integration layer implements [`HookVerifier`] over the configured sources
//! (their secrets, signature schemes and rules); the binary hands it to the API, so the API
//! decides what to answer without knowing how a signature is computed.

use crate::task::CreateTask;
use serde_json::Value;
use std::time::Instant;

/// Why a hook was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    #[error("missing header `{0}`")]
    MissingHeader(String),
    #[error("the signature does not match")]
    BadSignature,
    #[error("the timestamp is outside the tolerance window")]
    Stale,
    #[error("delivery `{0}` was already received")]
    Replay(String),
}

/// What a verified hook says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub event: String,
    /// The sender's delivery id (or, without one, the signature).
    pub delivery: String,
}

/// The configured hook sources. Checks are split so the caller can order them: a delivery whose
/// rules cannot make tasks must not be recorded as seen, or the sender's retry would be refused
/// as a replay once the configuration is fixed.
pub trait HookVerifier: Send + Sync + 'static {
    /// Whether a source of this name is configured.
    fn knows(&self, source: &str) -> bool;

    /// Checks a delivery's signature (and timestamp, where the scheme has one) at `now` (Unix
    /// seconds). `headers` holds (name, value) pairs; `body` is the raw body. An unknown source
    /// is refused with [`HookError::BadSignature`].
    fn verify(
        &self,
        source: &str,
        headers: &[(String, String)],
        body: &[u8],
        now: i64,
    ) -> Result<Verified, HookError>;

    /// The tasks the source's rules make of a verified delivery, in rule order. `body` is the
    /// parsed body, or `null` when it is not JSON.
    fn tasks(&self, source: &str, verified: &Verified, body: &Value) -> Vec<CreateTask>;

    /// Records a delivery `key`; [`HookError::Replay`] if it was seen within the tolerance.
    fn check_replay(&self, key: &str, now: Instant) -> Result<(), HookError>;
}
