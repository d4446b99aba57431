//! Incoming webhooks (`POST /v1/hooks/{source}`): the configuration of a hook source, the
//! signature checks of the three kinds it may be (GitHub, Standard Webhooks, a generic HMAC
//! header), the replay guard, and the rules that turn a verified hook into tasks.
//!
//! Verification is pure: it reads the headers and the raw body and answers with the event type
//! and delivery id, or why it refused. Every signature comparison is constant-time.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
// Plain data of core's port, re-exported so `mcp_integrations::hooks::…` paths keep working.
pub use mcp_core::hooks::{HookError, HookVerifier, Verified};
use mcp_core::task::CreateTask;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::Sha256;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

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

/// Reads a header case-insensitively; `headers` holds (name, value) pairs.
fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

fn required<'a>(headers: &'a [(String, String)], name: &str) -> Result<&'a str, HookError> {
    header(headers, name).ok_or_else(|| HookError::MissingHeader(name.to_owned()))
}

/// HMAC-SHA256 of `parts`, concatenated.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    // HMAC accepts keys of any length; this cannot fail.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

fn equal(expected: &[u8], given: &[u8]) -> bool {
    expected.ct_eq(given).into()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

/// The key of a Standard Webhooks secret: base64 after `whsec_`.
pub fn standard_key(secret: &str) -> Option<Vec<u8>> {
    BASE64
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .ok()
        .filter(|key| !key.is_empty())
}

/// GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`.
pub fn verify_github(
    secret: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<Verified, HookError> {
    let signature = required(headers, "x-hub-signature-256")?;
    let given = signature
        .strip_prefix("sha256=")
        .and_then(decode_hex)
        .ok_or(HookError::BadSignature)?;
    if !equal(&hmac_sha256(secret.as_bytes(), &[body]), &given) {
        return Err(HookError::BadSignature);
    }
    Ok(Verified {
        event: header(headers, "x-github-event")
            .unwrap_or("hook")
            .to_owned(),
        delivery: required(headers, "x-github-delivery")?.to_owned(),
    })
}

/// Standard Webhooks: `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`, any of several
/// space-separated signatures, and a timestamp within `tolerance` of `now` (Unix seconds). The
/// event type is the body's `type` field (`hook` without one).
pub fn verify_standard(
    secret: &str,
    headers: &[(String, String)],
    body: &[u8],
    now: i64,
    tolerance: Duration,
) -> Result<Verified, HookError> {
    let id = required(headers, "webhook-id")?;
    let timestamp = required(headers, "webhook-timestamp")?;
    let signatures = required(headers, "webhook-signature")?;
    let key = standard_key(secret).ok_or(HookError::BadSignature)?;
    let expected = hmac_sha256(
        &key,
        &[id.as_bytes(), b".", timestamp.as_bytes(), b".", body],
    );
    let matches = signatures
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|s| BASE64.decode(s).ok())
        .fold(false, |found, given| found | equal(&expected, &given));
    if !matches {
        return Err(HookError::BadSignature);
    }
    // Checked after the signature, so an attacker learns nothing from the answer.
    let at: i64 = timestamp.parse().map_err(|_| HookError::Stale)?;
    let tolerance = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
    if now.abs_diff(at) > tolerance.unsigned_abs() {
        return Err(HookError::Stale);
    }
    let event = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("type").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| "hook".to_owned());
    Ok(Verified {
        event,
        delivery: id.to_owned(),
    })
}

/// Generic HMAC: `source.header` carries `prefix` + the hex or base64 HMAC-SHA256 of the body.
pub fn verify_hmac(
    source: &HookSource,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<Verified, HookError> {
    let name = source.header.as_deref().unwrap_or_default();
    let value = required(headers, name)?;
    let value = match source.prefix.as_deref() {
        Some(prefix) => value.strip_prefix(prefix).ok_or(HookError::BadSignature)?,
        None => value,
    };
    let given = match source.encoding {
        SignatureEncoding::Hex => decode_hex(value),
        SignatureEncoding::Base64 => BASE64.decode(value).ok(),
    }
    .ok_or(HookError::BadSignature)?;
    if !equal(&hmac_sha256(source.secret.as_bytes(), &[body]), &given) {
        return Err(HookError::BadSignature);
    }
    let event = source
        .event_header
        .as_deref()
        .and_then(|h| header(headers, h))
        .unwrap_or("hook");
    let delivery = source
        .id_header
        .as_deref()
        .and_then(|h| header(headers, h))
        .unwrap_or(value);
    Ok(Verified {
        event: event.to_owned(),
        delivery: delivery.to_owned(),
    })
}

/// Verifies one delivery by its source's kind.
pub fn verify(
    source: &HookSource,
    headers: &[(String, String)],
    body: &[u8],
    now: i64,
    tolerance: Duration,
) -> Result<Verified, HookError> {
    match source.kind {
        HookKind::Github => verify_github(&source.secret, headers, body),
        HookKind::Standard => verify_standard(&source.secret, headers, body, now, tolerance),
        HookKind::Hmac => verify_hmac(source, headers, body),
    }
}

/// Delivery ids seen within the replay window. Kept in memory, **per node**: behind a load
/// balancer a replay reaching another node is not caught here (the tasks it would create are
/// still deduplicated by their idempotency key, see [`tasks_for`]).
#[derive(Debug)]
pub struct ReplayGuard {
    window: Duration,
    /// Most ids kept; the oldest are forgotten first beyond it.
    capacity: usize,
    seen: Mutex<Seen>,
}

/// Ids with the time each was first seen, and the same in arrival order (for expiry).
#[derive(Debug, Default)]
struct Seen {
    at: HashMap<String, Instant>,
    order: VecDeque<(Instant, String)>,
}

impl ReplayGuard {
    pub fn new(window: Duration, capacity: usize) -> Self {
        ReplayGuard {
            window,
            capacity: capacity.max(1),
            seen: Mutex::new(Seen::default()),
        }
    }

    /// Records `key` (source and delivery id); `Err(Replay)` if it was seen within the window.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), HookError> {
        let mut guard = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let Seen { at: ids, order } = &mut *guard;
        while let Some((at, _)) = order.front() {
            if now.saturating_duration_since(*at) <= self.window && order.len() < self.capacity {
                break;
            }
            if let Some((at, old)) = order.pop_front()
                && ids.get(&old) == Some(&at)
            {
                ids.remove(&old);
            }
        }
        if ids.contains_key(key) {
            return Err(HookError::Replay(key.to_owned()));
        }
        ids.insert(key.to_owned(), now);
        order.push_back((now, key.to_owned()));
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const SECRET: &str = "It's a Secret to Everybody";

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn verifies_githubs_documented_example() {
        // https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries
        let body = b"Hello, World!";
        let signature = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        let verified = verify_github(
            SECRET,
            &headers(&[
                ("X-Hub-Signature-256", signature),
                ("X-GitHub-Event", "push"),
                ("X-GitHub-Delivery", "d-1"),
            ]),
            body,
        )
        .unwrap();
        assert_eq!(verified.event, "push");
        assert_eq!(verified.delivery, "d-1");
    }

    #[test]
    fn rejects_a_github_hook_with_a_changed_body_or_no_signature() {
        let signature = format!("sha256={}", hex(&hmac_sha256(SECRET.as_bytes(), &[b"a"])));
        let h = headers(&[
            ("x-hub-signature-256", &signature),
            ("x-github-delivery", "d"),
        ]);
        assert!(verify_github(SECRET, &h, b"a").is_ok());
        assert_eq!(
            verify_github(SECRET, &h, b"b"),
            Err(HookError::BadSignature)
        );
        assert_eq!(
            verify_github(SECRET, &headers(&[]), b"a"),
            Err(HookError::MissingHeader("x-hub-signature-256".into()))
        );
    }

    fn standard_headers(key: &[u8], id: &str, ts: i64, body: &[u8]) -> Vec<(String, String)> {
        let ts = ts.to_string();
        let sig = BASE64.encode(hmac_sha256(
            key,
            &[id.as_bytes(), b".", ts.as_bytes(), b".", body],
        ));
        headers(&[
            ("webhook-id", id),
            ("webhook-timestamp", &ts),
            ("webhook-signature", &format!("v1,bm90IGl0 v1,{sig}")),
        ])
    }

    #[test]
    fn verifies_standard_webhooks_with_any_of_several_signatures() {
        let key = b"0123456789abcdef0123456789abcdef";
        let secret = format!("whsec_{}", BASE64.encode(key));
        let body = br#"{"type":"invoice.paid"}"#;
        let h = standard_headers(key, "msg_1", 1_000, body);
        let verified = verify_standard(&secret, &h, body, 1_100, Duration::from_secs(300)).unwrap();
        assert_eq!(verified.event, "invoice.paid");
        assert_eq!(verified.delivery, "msg_1");
        assert_eq!(
            verify_standard(&secret, &h, b"{}", 1_100, Duration::from_secs(300)),
            Err(HookError::BadSignature)
        );
    }

    #[test]
    fn verifies_the_standard_webhooks_reference_vector() {
        // The example of the Standard Webhooks reference libraries.
        let h = headers(&[
            ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
            ("webhook-timestamp", "1614265330"),
            (
                "webhook-signature",
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            ),
        ]);
        let verified = verify_standard(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            &h,
            br#"{"test": 2432232314}"#,
            1614265330,
            Duration::from_secs(300),
        )
        .unwrap();
        assert_eq!(verified.delivery, "msg_p5jXN8AQM9LWM0D4loKWxJek");
    }

    #[test]
    fn rejects_standard_webhooks_outside_the_tolerance() {
        let key = b"k";
        let secret = format!("whsec_{}", BASE64.encode(key));
        let h = standard_headers(key, "msg_1", 1_000, b"{}");
        let window = Duration::from_secs(300);
        assert_eq!(
            verify_standard(&secret, &h, b"{}", 1_301, window),
            Err(HookError::Stale)
        );
        assert_eq!(
            verify_standard(&secret, &h, b"{}", 699, window),
            Err(HookError::Stale)
        );
        assert!(verify_standard(&secret, &h, b"{}", 700, window).is_ok());
    }

    fn hmac_source(encoding: SignatureEncoding, prefix: Option<&str>) -> HookSource {
        HookSource {
            kind: HookKind::Hmac,
            secret: SECRET.into(),
            header: Some("X-Signature".into()),
            algorithm: "sha256".into(),
            encoding,
            prefix: prefix.map(str::to_owned),
            event_header: Some("X-Event".into()),
            id_header: None,
            rules: Vec::new(),
        }
    }

    #[test]
    fn verifies_a_generic_hmac_header_in_hex_or_base64() {
        let mac = hmac_sha256(SECRET.as_bytes(), &[b"body"]);
        let hex_source = hmac_source(SignatureEncoding::Hex, Some("sha256="));
        let h = headers(&[
            ("x-signature", &format!("sha256={}", hex(&mac))),
            ("x-event", "build"),
        ]);
        let verified = verify_hmac(&hex_source, &h, b"body").unwrap();
        assert_eq!(verified.event, "build");
        let b64 = hmac_source(SignatureEncoding::Base64, None);
        let h = headers(&[("X-Signature", &BASE64.encode(&mac))]);
        assert_eq!(verify_hmac(&b64, &h, b"body").unwrap().event, "hook");
        assert_eq!(
            verify_hmac(&b64, &h, b"other"),
            Err(HookError::BadSignature)
        );
        // Without its prefix, the hex signature is refused.
        let h = headers(&[("x-signature", &hex(&mac))]);
        assert_eq!(
            verify_hmac(&hex_source, &h, b"body"),
            Err(HookError::BadSignature)
        );
    }

    #[test]
    fn refuses_a_delivery_seen_within_the_window_and_forgets_it_after() {
        let guard = ReplayGuard::new(Duration::from_secs(10), 100);
        let t0 = Instant::now();
        guard.check("gh:1", t0).unwrap();
        assert_eq!(
            guard.check("gh:1", t0 + Duration::from_secs(5)),
            Err(HookError::Replay("gh:1".into()))
        );
        guard.check("gh:2", t0 + Duration::from_secs(5)).unwrap();
        guard.check("gh:1", t0 + Duration::from_secs(11)).unwrap();
    }

    #[test]
    fn keeps_at_most_capacity_ids() {
        let guard = ReplayGuard::new(Duration::from_secs(10), 2);
        let t0 = Instant::now();
        for id in ["a", "b", "c"] {
            guard.check(id, t0).unwrap();
        }
        assert_eq!(guard.seen.lock().unwrap().at.len(), 2);
    }

    #[test]
    fn maps_matching_rules_to_tasks_with_payload_pointers() {
        let source = HookSource {
            kind: HookKind::Github,
            secret: "s".into(),
            header: None,
            algorithm: default_algorithm(),
            encoding: SignatureEncoding::Hex,
            prefix: None,
            event_header: None,
            id_header: None,
            rules: vec![
                HookRule {
                    event: "push".into(),
                    task: "github.dispatch".into(),
                    payload: Some(json!({"event_type": "deploy"})),
                    payload_from: BTreeMap::from([
                        ("repo".into(), "/repository/full_name".into()),
                        ("missing".into(), "/nope".into()),
                    ]),
                    queue: None,
                },
                HookRule {
                    event: "issues".into(),
                    task: "x".into(),
                    payload: None,
                    payload_from: BTreeMap::new(),
                    queue: None,
                },
            ],
        };
        source.check().unwrap();
        let verified = Verified {
            event: "push".into(),
            delivery: "d-9".into(),
        };
        let body = json!({"repository": {"full_name": "o/r"}});
        let tasks = tasks_for("gh", &source, &verified, &body);
        assert_eq!(tasks.len(), 1);
        assert_eq!(tasks[0].task_type, "github.dispatch");
        assert_eq!(
            tasks[0].payload,
            Some(json!({"event_type": "deploy", "repo": "o/r"}))
        );
        assert_eq!(tasks[0].idempotency_key.as_deref(), Some("hook:gh:d-9:0"));
    }

    #[test]
    fn checks_sources_at_start_up() {
        let mut source = hmac_source(SignatureEncoding::Hex, None);
        source.check().unwrap();
        source.header = None;
        assert!(source.check().is_err());
        let mut standard = hmac_source(SignatureEncoding::Hex, None);
        standard.kind = HookKind::Standard;
        standard.secret = "whsec_!!".into();
        assert!(standard.check().is_err());
    }

    proptest! {
        #[test]
        fn random_signatures_never_verify(
            body in proptest::collection::vec(any::<u8>(), 0..256),
            sig in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let gh = headers(&[
                ("x-hub-signature-256", &format!("sha256={}", hex(&sig))),
                ("x-github-delivery", "d"),
            ]);
            prop_assert!(verify_github(SECRET, &gh, &body).is_err());

            let key = b"0123456789abcdef";
            let secret = format!("whsec_{}", BASE64.encode(key));
            let std_headers = headers(&[
                ("webhook-id", "msg"),
                ("webhook-timestamp", "1000"),
                ("webhook-signature", &format!("v1,{}", BASE64.encode(&sig))),
            ]);
            prop_assert!(
                verify_standard(&secret, &std_headers, &body, 1000, Duration::from_secs(300))
                    .is_err()
            );

            let source = hmac_source(SignatureEncoding::Base64, None);
            let h = headers(&[("x-signature", &BASE64.encode(&sig))]);
            prop_assert!(verify_hmac(&source, &h, &body).is_err());
        }
    }
}
