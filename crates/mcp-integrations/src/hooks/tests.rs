//! Tests of the signature schemes, the replay guard and the rules, with property tests.

use super::*;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
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
