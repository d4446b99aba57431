//! Outgoing webhooks: the [`Dispatcher`] that turns events into `webhook.deliver` tasks, one per
//! matching webhook, and the [`DeliverHandler`] that runs them — signed per the Standard
//! Webhooks spec, refused when the target resolves to a private address, each attempt recorded in
//! the delivery log. Retries and backoff are the orchestrator's; a webhook that has failed for
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
use mcp_core::webhooks::is_private_address;
use reqwest::Url;
use serde_json::Value;
use sha2::Sha256;
use std::net::SocketAddr;
use std::time::Duration;
use uuid::Uuid;

/// Settings of outgoing webhooks.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Allow targets on loopback, private, link-local and unique-local addresses (tests, LANs).
    pub allow_private: bool,
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
            allow_private: false,
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
    #[error("{0} resolves to a private address")]
    Private(String),
    #[error("cannot resolve {0}: {1}")]
    Unresolved(String, String),
}

/// Checks a webhook URL (http or https, with a host) and resolves it; with `allow_private` off,
/// refuses it if any of its addresses is private. Returns the host and the addresses to use,
/// so the request goes where the check looked (no DNS rebinding in between).
pub async fn resolve_target(
    url: &str,
    allow_private: bool,
) -> Result<(Url, String, Vec<SocketAddr>), TargetError> {
    let parsed = Url::parse(url).map_err(|e| TargetError::Invalid(format!("bad url: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(TargetError::Invalid("the url must be http or https".into()));
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| TargetError::Invalid("the url has no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = parsed
        .port_or_known_default()
        .ok_or_else(|| TargetError::Invalid("the url has no port".into()))?;
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| TargetError::Unresolved(host.clone(), e.to_string()))?
        .collect();
    if addrs.is_empty() {
        return Err(TargetError::Unresolved(host, "no addresses".into()));
    }
    if !allow_private && addrs.iter().any(|a| is_private_address(a.ip())) {
        return Err(TargetError::Private(host));
    }
    Ok((parsed, host, addrs))
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
