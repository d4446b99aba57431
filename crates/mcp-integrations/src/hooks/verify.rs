//! The signature checks of the three kinds a source may be: GitHub, Standard Webhooks and a
//! generic HMAC header. Pure: headers and raw body in, event and delivery id (or a refusal)
//! out; every comparison is constant-time.

use super::*;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::Mac;
use serde_json::Value;
use std::time::Duration;
use subtle::ConstantTimeEq;

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
