//! Secrets people and services present: passwords (argon2id), API keys and refresh tokens
//! (random, shown once, stored as SHA-256 digests). CPU-bound: the API runs password hashing on
//! the blocking pool.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Shortest password a user may set.
pub const MIN_PASSWORD_LEN: usize = 12;
/// Longest password accepted (argon2 takes anything; this bounds the work per request).
pub const MAX_PASSWORD_LEN: usize = 1024;
const API_KEY_TAG: &str = "mcp";
const REFRESH_TAG: &str = "mrt_";

fn argon2() -> Argon2<'static> {
    // OWASP's argon2id recommendation: 19 MiB, 2 passes, 1 lane (the crate's defaults).
    Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::default())
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PasswordError {
    #[error("the password must have between {MIN_PASSWORD_LEN} and {MAX_PASSWORD_LEN} characters")]
    Length,
    #[error("password hashing failed: {0}")]
    Hashing(String),
}

/// The PHC string (`$argon2id$v=19$…`) to store for `password`.
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    let length = password.chars().count();
    if !(MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&length) {
        return Err(PasswordError::Length);
    }
    let salt = salt().map_err(|e| PasswordError::Hashing(e.to_string()))?;
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| PasswordError::Hashing(e.to_string()))
}

/// Whether `password` matches the stored PHC string. A malformed hash matches nothing.
pub fn verify_password(password: &str, stored: &str) -> bool {
    if password.len() > MAX_PASSWORD_LEN * 4 {
        return false;
    }
    PasswordHash::new(stored)
        .map(|hash| argon2().verify_password(password.as_bytes(), &hash).is_ok())
        .unwrap_or(false)
}

/// A hash that matches no password, verified in place of a missing user's so that a login for
/// an unknown name costs as long as one with a wrong password.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        salt()
            .and_then(|salt| {
                argon2()
                    .hash_password(random_token(32).as_bytes(), &salt)
                    .map(|hash| hash.to_string())
            })
            .unwrap_or_default()
    })
}

/// 16 random bytes from the OS-seeded thread RNG.
fn salt() -> Result<SaltString, argon2::password_hash::Error> {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    SaltString::encode_b64(&bytes)
}

/// A password for a generated account: 24 URL-safe characters.
pub fn generate_password() -> String {
    random_token(18)
}

fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

/// Hex SHA-256: how API keys and refresh tokens are stored.
pub fn digest(secret: &str) -> String {
    // Lower-case hex, as `{:02x}` writes it, without a `String` per byte (an API key's every
    // use computes this).
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let hash = Sha256::digest(secret.as_bytes());
    let mut text = String::with_capacity(hash.len() * 2);
    for byte in hash {
        text.push(char::from(HEX[usize::from(byte >> 4)]));
        text.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    text
}

/// Constant-time comparison of two digests.
pub fn digests_match(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// A new API key: the whole key (shown once) and its public prefix.
pub struct NewApiKey {
    pub key: String,
    pub prefix: String,
}

/// `mcp_<16 hex prefix>_<43 characters of secret>`.
pub fn generate_api_key() -> NewApiKey {
    let mut prefix = [0u8; 8];
    rand::rng().fill_bytes(&mut prefix);
    let prefix: String = prefix.iter().map(|b| format!("{b:02x}")).collect();
    let key = format!("{API_KEY_TAG}_{prefix}_{}", random_token(32));
    NewApiKey { key, prefix }
}

/// The prefix of something shaped like an API key, or `None` (then it may be a JWT).
pub fn api_key_prefix(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(API_KEY_TAG)?.strip_prefix('_')?;
    let (prefix, secret) = rest.split_once('_')?;
    (prefix.len() == 16 && prefix.bytes().all(|b| b.is_ascii_hexdigit()) && !secret.is_empty())
        .then_some(prefix)
}

/// A new opaque refresh token: `mrt_` and 43 characters.
pub fn generate_refresh_token() -> String {
    format!("{REFRESH_TAG}{}", random_token(32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_and_verifies_passwords() {
        let hash = hash_password("correct horse battery").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery", &hash));
        assert!(!verify_password("correct horse battery!", &hash));
        assert!(!verify_password("anything at all", "not a hash"));
        assert!(!verify_password("anything at all", decoy_hash()));
    }

    #[test]
    fn refuses_short_and_huge_passwords() {
        assert_eq!(hash_password("short"), Err(PasswordError::Length));
        assert_eq!(
            hash_password(&"x".repeat(MAX_PASSWORD_LEN + 1)),
            Err(PasswordError::Length)
        );
    }

    #[test]
    fn api_keys_carry_their_prefix() {
        let key = generate_api_key();
        assert_eq!(api_key_prefix(&key.key), Some(key.prefix.as_str()));
        assert_ne!(generate_api_key().key, key.key);
        for not_a_key in [
            "",
            "mcp_",
            "mcp_zz_x",
            "eyJhbGciOi.x.y",
            "mcp_0123456789abcdef_",
        ] {
            assert_eq!(api_key_prefix(not_a_key), None, "{not_a_key}");
        }
    }

    #[test]
    fn digests_compare_exactly() {
        let token = generate_refresh_token();
        assert!(token.starts_with("mrt_"));
        assert!(digests_match(&digest(&token), &digest(&token)));
        assert!(!digests_match(&digest(&token), &digest("other")));
        assert_eq!(
            digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
