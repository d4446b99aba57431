//! Incoming webhooks (`POST /v1/hooks/{source}`): the configuration of a hook source, the
//! signature checks of the three kinds it may be (GitHub, Standard Webhooks, a generic HMAC
//! header), the replay guard, and the rules that turn a verified hook into tasks.
//!
//! Verification is pure: it reads the headers and the raw body and answers with the event type
//! and delivery id, or why it refused. Every signature comparison is constant-time.

mod replay;
#[cfg(test)]
mod tests;
mod verify;

pub use replay::ReplayGuard;
pub use verify::{hmac_sha256, standard_key, verify, verify_github, verify_hmac, verify_standard};

use hmac::Hmac;
// Plain data of core's port, re-exported so `mcp_integrations::hooks::…` paths keep working.
pub use mcp_core::hooks::{HookError, HookVerifier, Verified};
use mcp_core::task::CreateTask;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

type HmacSha256 = Hmac<Sha256>;

/// How a source signs its deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookKind {
    /// `X-Hub-Signature-256: sha256=<hex>`, event in `X-GitHub-Event`, id in `X-GitHub-Delivery`.
    Github,
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64>`.
    Standard,
    /// One header carrying an HMAC-SHA256 of the body (see [`HookSource::header`]).
    Hmac,
}

/// Text encoding of a generic HMAC signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignatureEncoding {
    #[default]
    Hex,
    Base64,
}

/// One rule: hooks of an event type become a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookRule {
    /// The event type this rule matches; `*` matches every event.
    pub event: String,
    /// The task type to create.
    pub task: String,
    /// The task's payload before mapping (an object; default `{}`).
    #[serde(default)]
    pub payload: Option<Value>,
    /// Payload field → JSON pointer (RFC 6901) into the hook body, e.g.
    /// `{ repo = "/repository/full_name" }`. A pointer that finds nothing leaves the field out.
    #[serde(default)]
    pub payload_from: BTreeMap<String, String>,
    /// Task queue; unset: the task type's default.
    #[serde(default)]
    pub queue: Option<String>,
}

/// A configured hook source (`[hooks.<source>]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookSource {
    pub kind: HookKind,
    /// The shared secret. `standard`: the `whsec_…` key (base64 after the prefix).
    pub secret: String,
    /// `hmac`: the header carrying the signature.
    #[serde(default)]
    pub header: Option<String>,
    /// `hmac`: only `sha256`.
    #[serde(default = "default_algorithm")]
    pub algorithm: String,
    /// `hmac`: `hex` or `base64`.
    #[serde(default)]
    pub encoding: SignatureEncoding,
    /// `hmac`: text before the signature in the header, e.g. `sha256=`.
    #[serde(default)]
    pub prefix: Option<String>,
    /// `hmac`: header naming the event type (absent: the event is `hook`).
    #[serde(default)]
    pub event_header: Option<String>,
    /// `hmac`: header carrying a delivery id, for the replay guard (absent: the signature is
    /// the id, so the same body is refused twice within the window).
    #[serde(default)]
    pub id_header: Option<String>,
    #[serde(default)]
    pub rules: Vec<HookRule>,
}

fn default_algorithm() -> String {
    "sha256".into()
}

impl HookSource {
    /// Problems that make the source unusable, for start-up validation.
    pub fn check(&self) -> Result<(), String> {
        if self.secret.is_empty() {
            return Err("`secret` is empty".into());
        }
        match self.kind {
            HookKind::Standard => {
                standard_key(&self.secret).ok_or("`secret` must be `whsec_` + base64")?;
            }
            HookKind::Hmac => {
                if self.header.as_deref().is_none_or(str::is_empty) {
                    return Err("kind `hmac` needs `header`".into());
                }
                if !self.algorithm.eq_ignore_ascii_case("sha256") {
                    return Err(format!(
                        "algorithm `{}` is not supported (only `sha256`)",
                        self.algorithm
                    ));
                }
            }
            HookKind::Github => {}
        }
        for rule in &self.rules {
            if rule.task.is_empty() || rule.event.is_empty() {
                return Err("a rule needs `event` and `task`".into());
            }
            if rule.payload.as_ref().is_some_and(|p| !p.is_object()) {
                return Err(format!("rule `{}`: `payload` must be a table", rule.event));
            }
            if let Some((field, pointer)) = rule
                .payload_from
                .iter()
                .find(|(_, p)| !p.is_empty() && !p.starts_with('/'))
            {
                return Err(format!(
                    "rule `{}`: `payload_from.{field}` = `{pointer}` is not a JSON pointer",
                    rule.event
                ));
            }
        }
        Ok(())
    }
}

/// Most delivery ids the replay guard remembers (the oldest are forgotten first beyond it).
pub const REPLAY_CAPACITY: usize = 100_000;

/// The configured sources, as core's [`HookVerifier`]: each delivery is checked by its source's
/// kind, timestamps within `tolerance`, and delivery ids remembered as long.
#[derive(Debug)]
pub struct HookSources {
    sources: BTreeMap<String, HookSource>,
    tolerance: Duration,
    replay: ReplayGuard,
}

impl HookSources {
    pub fn new(sources: BTreeMap<String, HookSource>, tolerance: Duration) -> Self {
        HookSources {
            sources,
            tolerance,
            replay: ReplayGuard::new(tolerance, REPLAY_CAPACITY),
        }
    }
}

impl HookVerifier for HookSources {
    fn knows(&self, source: &str) -> bool {
        self.sources.contains_key(source)
    }

    fn verify(
        &self,
        source: &str,
        headers: &[(String, String)],
        body: &[u8],
        now: i64,
    ) -> Result<Verified, HookError> {
        let config = self.sources.get(source).ok_or(HookError::BadSignature)?;
        verify(config, headers, body, now, self.tolerance)
    }

    fn tasks(&self, source: &str, verified: &Verified, body: &Value) -> Vec<CreateTask> {
        match self.sources.get(source) {
            Some(config) => tasks_for(source, config, verified, body),
            None => Vec::new(),
        }
    }

    fn check_replay(&self, key: &str, now: Instant) -> Result<(), HookError> {
        self.replay.check(key, now)
    }
}

/// The task a rule makes of a hook body: `payload`, then each `payload_from` field looked up by
/// JSON pointer (`""` is the whole body).
pub fn map_payload(rule: &HookRule, body: &Value) -> Value {
    let mut payload = match &rule.payload {
        Some(Value::Object(map)) => map.clone(),
        _ => Map::new(),
    };
    for (field, pointer) in &rule.payload_from {
        if let Some(value) = body.pointer(pointer) {
            payload.insert(field.clone(), value.clone());
        }
    }
    Value::Object(payload)
}

/// The tasks the rules of `source` make of a verified hook, each with the idempotency key
/// `hook:{source}:{delivery}:{rule index}` (so a delivery makes its tasks once, cluster-wide).
pub fn tasks_for(
    name: &str,
    source: &HookSource,
    verified: &Verified,
    body: &Value,
) -> Vec<CreateTask> {
    source
        .rules
        .iter()
        .enumerate()
        .filter(|(_, rule)| rule.event == "*" || rule.event == verified.event)
        .map(|(i, rule)| CreateTask {
            task_type: rule.task.clone(),
            queue: rule.queue.clone(),
            payload: Some(map_payload(rule, body)),
            idempotency_key: Some(format!("hook:{name}:{}:{i}", verified.delivery)),
            ..CreateTask::default()
        })
        .collect()
}
