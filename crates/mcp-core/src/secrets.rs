//! Secrets at rest: integration tokens and passwords are stored sealed by a `SecretBox`
//! (XChaCha20-Poly1305 with a random 192-bit nonce per secret), never in the clear. Each sealed
//! value names the key that sealed it, so the master key can rotate: new secrets use the
//! current key, old ones still open with the retired keys they name.
//!
//! Sealed form: `v1.<key id>.<base64url(nonce ‖ ciphertext ‖ tag)>`. The key id is the first 8
//! hex digits of SHA-256(key): it identifies a key without revealing it.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

const VERSION: &str = "v1";
const NONCE_LEN: usize = 24;
pub const KEY_LEN: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("a master key must be {KEY_LEN} bytes, base64-encoded")]
    BadKey,
    #[error("not a sealed secret")]
    Malformed,
    #[error("sealed with key `{0}`, which this server does not have")]
    UnknownKey(String),
    #[error("the secret does not open: it was altered, or sealed for another purpose")]
    Tampered,
    #[error("the secret is too large to seal")]
    TooLarge,
}

/// One master key and its id.
#[derive(Clone)]
pub struct MasterKey {
    id: String,
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl MasterKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SecretError> {
        if bytes.len() != KEY_LEN {
            return Err(SecretError::BadKey);
        }
        let cipher = XChaCha20Poly1305::new_from_slice(bytes).map_err(|_| SecretError::BadKey)?;
        let digest = Sha256::digest(bytes);
        let id = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        Ok(MasterKey { id, cipher })
    }

    /// A key from its standard base64 form (as in `MCP_MASTER_KEY`).
    pub fn from_base64(text: &str) -> Result<Self, SecretError> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|_| SecretError::BadKey)?;
        MasterKey::from_bytes(&bytes)
    }

    /// A new random key, in standard base64, for a generated key file.
    pub fn generate_base64() -> String {
        STANDARD.encode(rand::random::<[u8; KEY_LEN]>())
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

/// Seals and opens secrets with the current master key and any retired ones.
#[derive(Debug, Clone)]
pub struct SecretBox {
    current: MasterKey,
    keys: HashMap<String, MasterKey>,
}

impl SecretBox {
    pub fn new(current: MasterKey, retired: impl IntoIterator<Item = MasterKey>) -> Self {
        let mut keys: HashMap<String, MasterKey> =
            retired.into_iter().map(|k| (k.id.clone(), k)).collect();
        keys.insert(current.id.clone(), current.clone());
        SecretBox { current, keys }
    }

    /// Seals `plaintext`. `purpose` (e.g. `integration:discord:token`) is bound to the result:
    /// a sealed value copied to another purpose does not open.
    pub fn seal(&self, plaintext: &[u8], purpose: &str) -> Result<String, SecretError> {
        let nonce_bytes = rand::random::<[u8; NONCE_LEN]>();
        let nonce = XNonce::from(nonce_bytes);
        let ciphertext = self
            .current
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: purpose.as_bytes(),
                },
            )
            .map_err(|_| SecretError::TooLarge)?;
        let mut sealed = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        sealed.extend_from_slice(&nonce_bytes);
        sealed.extend_from_slice(&ciphertext);
        Ok(format!(
            "{VERSION}.{}.{}",
            self.current.id,
            URL_SAFE_NO_PAD.encode(sealed)
        ))
    }

    /// Opens a value made by `seal` with the same `purpose`.
    pub fn open(&self, sealed: &str, purpose: &str) -> Result<Vec<u8>, SecretError> {
        let mut parts = sealed.splitn(3, '.');
        let (Some(VERSION), Some(key_id), Some(body)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(SecretError::Malformed);
        };
        let key = self
            .keys
            .get(key_id)
            .ok_or_else(|| SecretError::UnknownKey(key_id.to_owned()))?;
        let bytes = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| SecretError::Malformed)?;
        if bytes.len() < NONCE_LEN {
            return Err(SecretError::Malformed);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let nonce = XNonce::try_from(nonce).map_err(|_| SecretError::Malformed)?;
        key.cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: ciphertext,
                    aad: purpose.as_bytes(),
                },
            )
            .map_err(|_| SecretError::Tampered)
    }

    /// The id of the key new secrets are sealed with.
    pub fn current_key_id(&self) -> &str {
        self.current.id()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> MasterKey {
        MasterKey::from_base64(&MasterKey::generate_base64()).unwrap()
    }

    #[test]
    fn seals_and_opens() {
        let secrets = SecretBox::new(key(), []);
        let sealed = secrets.seal(b"hunter2", "discord:token").unwrap();
        assert!(sealed.starts_with(&format!("v1.{}.", secrets.current_key_id())));
        assert!(!sealed.contains("hunter2"));
        assert_eq!(secrets.open(&sealed, "discord:token").unwrap(), b"hunter2");
    }

    #[test]
    fn the_same_secret_seals_differently_each_time() {
        let secrets = SecretBox::new(key(), []);
        assert_ne!(
            secrets.seal(b"x", "p").unwrap(),
            secrets.seal(b"x", "p").unwrap()
        );
    }

    #[test]
    fn refuses_tampered_or_repurposed_secrets() {
        let secrets = SecretBox::new(key(), []);
        let sealed = secrets.seal(b"token", "discord:token").unwrap();
        assert_eq!(
            secrets.open(&sealed, "vrchat:password"),
            Err(SecretError::Tampered)
        );
        let mut bytes = sealed.into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert_eq!(
            secrets.open(&tampered, "discord:token"),
            Err(SecretError::Tampered)
        );
        for junk in ["", "v1", "v1.x", "v2.abc.def", "v1.nokey.AAAA"] {
            assert!(secrets.open(junk, "p").is_err(), "{junk}");
        }
    }

    #[test]
    fn rotated_keys_still_open_old_secrets() {
        let old = key();
        let before = SecretBox::new(old.clone(), []);
        let sealed = before.seal(b"old secret", "p").unwrap();
        let after = SecretBox::new(key(), [old]);
        assert_eq!(after.open(&sealed, "p").unwrap(), b"old secret");
        assert!(
            after
                .seal(b"new", "p")
                .unwrap()
                .contains(after.current_key_id())
        );
        let forgotten = SecretBox::new(key(), []);
        assert!(matches!(
            forgotten.open(&sealed, "p"),
            Err(SecretError::UnknownKey(_))
        ));
    }

    #[test]
    fn refuses_keys_of_the_wrong_size() {
        assert_eq!(
            MasterKey::from_base64("c2hvcnQ=").unwrap_err(),
            SecretError::BadKey
        );
        assert_eq!(
            MasterKey::from_base64("not base64!").unwrap_err(),
            SecretError::BadKey
        );
        assert!(format!("{:?}", key()).starts_with("MasterKey { id:"));
    }
}
