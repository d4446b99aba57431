//! Discord's signature on every interaction: Ed25519 over `X-Signature-Timestamp` + the raw
//! body, checked before anything else is read. Anything missing, malformed, stale or wrong is
//! 401 `invalid_signature`, as Discord requires.

use super::config::{VerifyingKey, decode_hex};
use crate::error::ApiError;
use axum::http::{HeaderMap, StatusCode};
use ed25519_dalek::Signature;
use std::time::Duration;

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "invalid_signature", message)
}

/// Checks Discord's signature: Ed25519 over the timestamp followed by the raw body.
pub(super) fn verify(
    key: &VerifyingKey,
    headers: &HeaderMap,
    body: &[u8],
    max_skew: Duration,
) -> Result<(), ApiError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(signature), Some(timestamp)) = (
        header("x-signature-ed25519"),
        header("x-signature-timestamp"),
    ) else {
        return Err(unauthorized(
            "X-Signature-Ed25519 and X-Signature-Timestamp are required",
        ));
    };
    let signature: [u8; 64] = decode_hex(signature)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| unauthorized("X-Signature-Ed25519 is not 128 hex digits"))?;
    let signed_at: i64 = timestamp
        .parse()
        .map_err(|_| unauthorized("X-Signature-Timestamp is not a Unix time"))?;
    let skew = (chrono::Utc::now().timestamp() - signed_at).unsigned_abs();
    if skew > max_skew.as_secs() {
        return Err(unauthorized("X-Signature-Timestamp is too far from now"));
    }
    let mut message = Vec::with_capacity(timestamp.len() + body.len());
    message.extend_from_slice(timestamp.as_bytes());
    message.extend_from_slice(body);
    key.verify_strict(&message, &Signature::from_bytes(&signature))
        .map_err(|_| unauthorized("the signature does not match"))
}
