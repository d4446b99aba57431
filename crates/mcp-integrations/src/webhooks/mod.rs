//! Outgoing webhooks: the [`Dispatcher`] that turns events into `webhook.deliver` tasks, one per
//! matching webhook, and the [`DeliverHandler`] that runs them — signed per the Standard
//! Webhooks spec, sent through the outbound guard (a target that is or resolves to a forbidden
//! address is refused, not retried), each attempt recorded in the delivery log. Retries and backoff are the orchestrator's; a webhook that has failed for
//! `disable_after` without a single success is disabled.
//!
//! Every event comes from the durable outbox: the task store records task events (`task.*`) in
//! the transaction of each transition and the memory store memory events (`memory.*`) in the
//! transaction of each change, and any node's dispatcher turns them into deliveries, so none is
//! lost while a node is down or the bus drops events.

mod deliver;
mod dispatch;
mod recording;
#[cfg(test)]
mod tests;

pub use deliver::{DeliverHandler, enqueue, enqueue_once};
pub use dispatch::{DispatchSettings, Dispatcher};
pub use recording::RecordingWebhooks;

use base64::Engine;
use hmac::{Hmac, Mac};
use mcp_core::outbound::{Forbidden, Policy};
use reqwest::Url;
use serde_json::Value;
use sha2::Sha256;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// Settings of outgoing webhooks.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// The outbound guard's policy: which targets deliveries may reach.
    pub outbound: Arc<Policy>,
    /// Limit of one attempt.
    pub timeout: Duration,
    /// A webhook failing this long without a success is disabled; `None`: never.
    pub disable_after: Option<chrono::Duration>,
    /// Attempts of each delivery task before it is `dead`.
    pub max_attempts: i32,
    pub user_agent: String,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            outbound: Arc::default(),
            timeout: Duration::from_secs(15),
            disable_after: Some(chrono::Duration::days(5)),
            max_attempts: 8,
            user_agent: concat!("mkww-mcp/", env!("CARGO_PKG_VERSION"), " (webhooks)").to_owned(),
        }
    }
}

/// The `webhook-signature` value: `v1,` and the base64 HMAC-SHA256 of `{id}.{timestamp}.{body}`.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// Why a URL may not be a webhook target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Forbidden(#[from] Forbidden),
}

/// Checks a webhook URL: http or https, with a host that is not a forbidden address. A name is
/// checked when the delivery's client resolves it, on the addresses it then dials.
pub fn check_target(url: &str, policy: &Policy) -> Result<Url, TargetError> {
    let parsed = Url::parse(url).map_err(|e| TargetError::Invalid(format!("bad url: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(TargetError::Invalid("the url must be http or https".into()));
    }
    if parsed.host().is_none() {
        return Err(TargetError::Invalid("the url has no host".into()));
    }
    policy.check_url(&parsed)?;
    Ok(parsed)
}

/// The id of the delivery of outbox entry `entry` to `webhook`: the same for every node and every
/// redo of the entry.
fn outbox_delivery_id(webhook: Uuid, entry: i64) -> Uuid {
    derived_id(&format!("{webhook}:outbox:{entry}"))
}

fn derived_id(name: &str) -> Uuid {
    use sha2::Digest;
    let digest = Sha256::digest(name);
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

fn delivery_id(payload: &Value) -> Result<Uuid, String> {
    payload
        .get("delivery_id")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or_else(|| "`delivery_id` (a UUID) is required".to_owned())
}
