//! Access tokens: JWTs signed with HS256 by the secret all nodes share, or with RS256, ES256 or
//! EdDSA by a PEM key pair. Verification pins the one configured algorithm (a `none`,
//! differently-signed or algorithm-confused token is refused) and checks issuer, audience,
//! expiry and not-before. The extractor that turns a token into a `Principal` comes with the
//! security issue; this is the part it and `mkww-mcp token` share.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode};
use mcp_core::principal::Role;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What an access token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    pub iss: String,
    pub aud: String,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    pub jti: String,
    /// The login session (refresh token family) the token was issued in, so that logging out
    /// revokes it; absent from tokens issued outside a session (`mkww-mcp token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid (signature, algorithm, issuer, audience or format)")]
    Invalid,
    #[error("the signing secret must be at least 32 bytes")]
    WeakSecret,
    #[error("unusable signing key: {0}")]
    Key(String),
}

/// Issues and verifies access tokens.
#[derive(Clone)]
pub struct Tokens {
    algorithm: Algorithm,
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
    verified: Arc<Verified>,
}

/// Most tokens `Verified` holds; when full it is emptied, and tokens are verified again.
const VERIFIED_CAPACITY: usize = 10_000;

/// Tokens this node has verified, with their claims, so that a client's every request with
/// the same token costs a hash lookup instead of two base64 decodings, two JSON parses and a
/// signature check (an RSA or ECDSA one with key pairs).
///
/// What keeps it safe: an entry is made only after `decode` accepted the token; it is found by
/// the whole token, so a hit is a token whose signature, issuer, audience and not-before were
/// checked; expiry depends on the time, so it is checked again on every hit, with the same
/// leeway as `decode`. What else could refuse a token (revocation) is asked on every use by
/// the caller, as before. Refused tokens are never kept.
#[derive(Debug, Default)]
struct Verified {
    entries: RwLock<HashMap<Box<str>, Claims>>,
}

impl Verified {
    /// The claims of `token` if it was verified, or `Expired` if it has expired since.
    fn get(&self, token: &str, now: u64, leeway: u64) -> Option<Result<Claims, TokenError>> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        let claims = entries.get(token)?;
        // `decode`'s rule: expired once `exp` is more than `leeway` seconds in the past.
        if claims.exp < now.saturating_sub(leeway) {
            return Some(Err(TokenError::Expired));
        }
        Some(Ok(claims.clone()))
    }

    fn insert(&self, token: &str, claims: &Claims, now: u64, leeway: u64) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= VERIFIED_CAPACITY {
            entries.retain(|_, c| c.exp >= now.saturating_sub(leeway));
            if entries.len() >= VERIFIED_CAPACITY {
                entries.clear();
            }
        }
        entries.insert(token.into(), claims.clone());
    }
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("algorithm", &self.algorithm)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

/// Shortest accepted HS256 secret (RFC 7518 §3.2: at least the hash size).
pub const MIN_SECRET_LEN: usize = 32;

fn seconds_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Maps a PEM parsing failure to an error that says which key was unreadable.
fn unreadable(which: &'static str) -> impl Fn(jsonwebtoken::errors::Error) -> TokenError {
    move |e| TokenError::Key(format!("{which}: {e}"))
}

/// The algorithm named `name` in configuration: exactly `HS256`, `RS256`, `ES256` or `EdDSA`.
pub fn algorithm_from_name(name: &str) -> Result<Algorithm, TokenError> {
    match name {
        "HS256" => Ok(Algorithm::HS256),
        "RS256" => Ok(Algorithm::RS256),
        "ES256" => Ok(Algorithm::ES256),
        "EdDSA" => Ok(Algorithm::EdDSA),
        _ => Err(TokenError::Key(format!(
            "`{name}` is not a supported algorithm (HS256, RS256, ES256 or EdDSA)"
        ))),
    }
}

impl Tokens {
    pub fn hs256(secret: &[u8], issuer: &str, audience: &str) -> Result<Self, TokenError> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(TokenError::WeakSecret);
        }
        Ok(Tokens::new(
            Algorithm::HS256,
            EncodingKey::from_secret(secret),
            DecodingKey::from_secret(secret),
            issuer,
            audience,
        ))
    }

    /// Tokens signed by `private_pem` and verified by `public_pem` with `algorithm` (`RS256`,
    /// `ES256` or `EdDSA`). Keys are PKCS#8 or SPKI PEM (PKCS#1 too for RSA). The pair is tried
    /// once here, so a private key that does not match the public one fails at start, not at the
    /// first login.
    pub fn from_pem(
        algorithm: &str,
        private_pem: &[u8],
        public_pem: &[u8],
        issuer: &str,
        audience: &str,
    ) -> Result<Self, TokenError> {
        let algorithm = algorithm_from_name(algorithm)?;
        let (encoding, decoding) = match algorithm {
            Algorithm::RS256 => (
                EncodingKey::from_rsa_pem(private_pem).map_err(unreadable("RSA private key"))?,
                DecodingKey::from_rsa_pem(public_pem).map_err(unreadable("RSA public key"))?,
            ),
            Algorithm::ES256 => (
                EncodingKey::from_ec_pem(private_pem).map_err(unreadable("EC private key"))?,
                DecodingKey::from_ec_pem(public_pem).map_err(unreadable("EC public key"))?,
            ),
            Algorithm::EdDSA => (
                EncodingKey::from_ed_pem(private_pem).map_err(unreadable("Ed25519 private key"))?,
                DecodingKey::from_ed_pem(public_pem).map_err(unreadable("Ed25519 public key"))?,
            ),
            _ => {
                return Err(TokenError::Key(format!(
                    "{algorithm:?} takes a shared secret, not PEM keys"
                )));
            }
        };
        let tokens = Tokens::new(algorithm, encoding, decoding, issuer, audience);
        let probe = tokens
            .issue("key-check", Role::Service, Duration::from_secs(60))
            .map_err(|_| {
                TokenError::Key(format!("the private key cannot sign {algorithm:?} tokens"))
            })?;
        tokens.verify(&probe).map_err(|_| {
            TokenError::Key(format!(
                "the public key does not verify what the private key signs ({algorithm:?})"
            ))
        })?;
        Ok(tokens)
    }

    fn new(
        algorithm: Algorithm,
        encoding: EncodingKey,
        decoding: DecodingKey,
        issuer: &str,
        audience: &str,
    ) -> Self {
        // `Validation::new` allows exactly this algorithm: the header's `alg` cannot pick another.
        let mut validation = Validation::new(algorithm);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 5;
        Tokens {
            algorithm,
            encoding,
            decoding,
            validation,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            verified: Arc::default(),
        }
    }

    /// The one algorithm these tokens are signed and verified with.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// A token for `sub` with `role`, valid for `ttl` from now.
    pub fn issue(&self, sub: &str, role: Role, ttl: Duration) -> Result<String, TokenError> {
        self.issue_in(sub, role, ttl, None)
    }

    /// Like `issue`, naming the login session (`sid`) the token belongs to.
    pub fn issue_in(
        &self,
        sub: &str,
        role: Role,
        ttl: Duration,
        session: Option<uuid::Uuid>,
    ) -> Result<String, TokenError> {
        let now = seconds_now();
        let claims = Claims {
            sub: sub.to_owned(),
            role,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            iat: now,
            nbf: now,
            exp: now.saturating_add(ttl.as_secs()),
            jti: uuid::Uuid::new_v4().simple().to_string(),
            sid: session.map(|s| s.to_string()),
        };
        encode(&Header::new(self.algorithm), &claims, &self.encoding)
            .map_err(|_| TokenError::Invalid)
    }

    /// The claims of a valid token (verified once, then remembered: see `Verified`).
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let (now, leeway) = (seconds_now(), self.validation.leeway);
        if let Some(known) = self.verified.get(token, now, leeway) {
            return known;
        }
        let claims = decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })?;
        self.verified.insert(token, &claims, now, leeway);
        Ok(claims)
    }
}

/// Parses a duration such as `90s`, `15m`, `1h` or `30d`.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 90s, 15m, 1h or 30d"))?;
    let seconds = match unit {
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("`{text}`: the unit must be s, m, h or d")),
    };
    n.checked_mul(seconds)
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("`{text}` must be positive and not absurdly long"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn tokens() -> Tokens {
        Tokens::hs256(SECRET, "mkww-mcp", "mkww-mcp").unwrap()
    }

    fn forge(header: &str, claims: &serde_json::Value, secret: &[u8]) -> String {
        let head = URL_SAFE_NO_PAD.encode(header);
        let body = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signing = format!("{head}.{body}");
        let signature = jsonwebtoken::crypto::sign(
            signing.as_bytes(),
            &EncodingKey::from_secret(secret),
            Algorithm::HS256,
        )
        .unwrap();
        format!("{signing}.{signature}")
    }

    fn claims(exp_offset: i64, nbf_offset: i64) -> serde_json::Value {
        let now = seconds_now() as i64;
        serde_json::json!({
            "sub": "bot", "role": "service", "iss": "mkww-mcp", "aud": "mkww-mcp",
            "iat": now, "nbf": now + nbf_offset, "exp": now + exp_offset, "jti": "x",
        })
    }

    #[test]
    fn issues_tokens_that_verify() {
        let token = tokens()
            .issue("bot", Role::Service, Duration::from_secs(60))
            .unwrap();
        let claims = tokens().verify(&token).unwrap();
        assert_eq!((claims.sub.as_str(), claims.role), ("bot", Role::Service));
    }

    #[test]
    fn rejects_expired_and_not_yet_valid_tokens() {
        let expired = forge(r#"{"alg":"HS256","typ":"JWT"}"#, &claims(-60, -120), SECRET);
        assert_eq!(tokens().verify(&expired), Err(TokenError::Expired));
        let early = forge(r#"{"alg":"HS256","typ":"JWT"}"#, &claims(600, 300), SECRET);
        assert_eq!(tokens().verify(&early), Err(TokenError::Invalid));
    }

    #[test]
    fn rejects_wrong_issuer_audience_and_signature() {
        let token = tokens()
            .issue("bot", Role::Admin, Duration::from_secs(60))
            .unwrap();
        let other_iss = Tokens::hs256(SECRET, "someone-else", "mkww-mcp").unwrap();
        assert_eq!(other_iss.verify(&token), Err(TokenError::Invalid));
        let other_aud = Tokens::hs256(SECRET, "mkww-mcp", "other-app").unwrap();
        assert_eq!(other_aud.verify(&token), Err(TokenError::Invalid));
        let other_secret = Tokens::hs256(&[7u8; 32], "mkww-mcp", "mkww-mcp").unwrap();
        assert_eq!(other_secret.verify(&token), Err(TokenError::Invalid));
        let mut tampered = token.clone().into_bytes();
        let at = token.find('.').unwrap() + 3;
        tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert_eq!(tokens().verify(&tampered), Err(TokenError::Invalid));
    }

    #[test]
    fn rejects_alg_none_and_other_algorithms() {
        let body = URL_SAFE_NO_PAD.encode(claims(600, 0).to_string());
        let none = format!(
            "{}.{body}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#)
        );
        assert_eq!(tokens().verify(&none), Err(TokenError::Invalid));
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &claims(600, 0),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(tokens().verify(&hs512), Err(TokenError::Invalid));
        for junk in ["", "abc", "a.b.c", &"x".repeat(10_000)] {
            assert_eq!(tokens().verify(junk), Err(TokenError::Invalid));
        }
    }

    #[test]
    fn a_remembered_token_still_expires() {
        let tokens = tokens();
        let token = tokens
            .issue("ann", Role::User, Duration::from_secs(60))
            .unwrap();
        let claims = tokens.verify(&token).unwrap();
        assert_eq!(
            tokens.verify(&token).unwrap(),
            claims,
            "the second time from memory"
        );
        let leeway = tokens.validation.leeway;
        let verified = &tokens.verified;
        assert_eq!(
            verified.get(&token, claims.exp + leeway, leeway),
            Some(Ok(claims.clone()))
        );
        assert_eq!(
            verified.get(&token, claims.exp + leeway + 1, leeway),
            Some(Err(TokenError::Expired))
        );
        assert_eq!(verified.get("another token", 0, leeway), None);
    }

    #[test]
    fn remembers_only_tokens_that_verified() {
        let tokens = tokens();
        let expired = forge(r#"{"alg":"HS256","typ":"JWT"}"#, &claims(-60, -120), SECRET);
        let forged = forge(
            r#"{"alg":"HS256","typ":"JWT"}"#,
            &claims(600, -1),
            b"another secret of 32 bytes......",
        );
        for token in [&expired, &forged] {
            assert!(tokens.verify(token).is_err());
            assert!(tokens.verify(token).is_err(), "refused again");
        }
        assert!(tokens.verified.entries.read().unwrap().is_empty());
    }

    #[test]
    fn refuses_short_secrets() {
        assert_eq!(
            Tokens::hs256(b"short", "i", "a").unwrap_err(),
            TokenError::WeakSecret
        );
    }

    /// A freshly generated PEM key pair (private PKCS#8, public SPKI) for `algorithm`.
    fn key_pair(algorithm: &str) -> (Vec<u8>, Vec<u8>) {
        use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
        let mut rng = rsa::rand_core::OsRng;
        let (private, public) = match algorithm {
            "RS256" => {
                let key = rsa::RsaPrivateKey::new(&mut rng, 2048).unwrap();
                let public = key.to_public_key().to_public_key_pem(LineEnding::LF);
                (key.to_pkcs8_pem(LineEnding::LF).unwrap(), public.unwrap())
            }
            "ES256" => {
                let key = p256::SecretKey::random(&mut rng);
                let public = key.public_key().to_public_key_pem(LineEnding::LF);
                (key.to_pkcs8_pem(LineEnding::LF).unwrap(), public.unwrap())
            }
            "EdDSA" => {
                let key = ed25519_dalek::SigningKey::generate(&mut rng);
                let public = key.verifying_key().to_public_key_pem(LineEnding::LF);
                (key.to_pkcs8_pem(LineEnding::LF).unwrap(), public.unwrap())
            }
            other => panic!("no key pair for {other}"),
        };
        (private.as_bytes().to_vec(), public.into_bytes())
    }

    const ASYMMETRIC: [&str; 3] = ["RS256", "ES256", "EdDSA"];

    fn pem_tokens(algorithm: &str, (private, public): &(Vec<u8>, Vec<u8>)) -> Tokens {
        Tokens::from_pem(algorithm, private, public, "mkww-mcp", "mkww-mcp").unwrap()
    }

    fn issue(tokens: &Tokens) -> String {
        tokens
            .issue("bot", Role::Service, Duration::from_secs(60))
            .unwrap()
    }

    #[test]
    fn issues_tokens_that_verify_with_each_asymmetric_algorithm() {
        for algorithm in ASYMMETRIC {
            let tokens = pem_tokens(algorithm, &key_pair(algorithm));
            let token = issue(&tokens);
            let header = jsonwebtoken::decode_header(&token).unwrap();
            assert_eq!(header.alg, algorithm_from_name(algorithm).unwrap());
            let claims = tokens.verify(&token).unwrap();
            assert_eq!((claims.sub.as_str(), claims.role), ("bot", Role::Service));
        }
    }

    #[test]
    fn rejects_tokens_signed_by_another_key_pair() {
        for algorithm in ASYMMETRIC {
            let ours = pem_tokens(algorithm, &key_pair(algorithm));
            let theirs = pem_tokens(algorithm, &key_pair(algorithm));
            assert_eq!(
                ours.verify(&issue(&theirs)),
                Err(TokenError::Invalid),
                "{algorithm}"
            );
        }
    }

    #[test]
    fn rejects_hs256_tokens_keyed_with_the_public_key() {
        // Algorithm confusion: the public key is public, so an HMAC "signed" with its PEM bytes
        // must not pass for an RS256 signature.
        let keys = key_pair("RS256");
        let tokens = pem_tokens("RS256", &keys);
        let confused = forge(r#"{"alg":"HS256","typ":"JWT"}"#, &claims(600, 0), &keys.1);
        assert_eq!(tokens.verify(&confused), Err(TokenError::Invalid));
    }

    #[test]
    fn rejects_alg_none_with_asymmetric_keys() {
        let body = URL_SAFE_NO_PAD.encode(claims(600, 0).to_string());
        let none = format!(
            "{}.{body}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#)
        );
        for algorithm in ASYMMETRIC {
            let tokens = pem_tokens(algorithm, &key_pair(algorithm));
            assert_eq!(
                tokens.verify(&none),
                Err(TokenError::Invalid),
                "{algorithm}"
            );
        }
    }

    #[test]
    fn rejects_es256_tokens_at_an_eddsa_verifier() {
        let es256 = issue(&pem_tokens("ES256", &key_pair("ES256")));
        let eddsa = pem_tokens("EdDSA", &key_pair("EdDSA"));
        assert_eq!(eddsa.verify(&es256), Err(TokenError::Invalid));
    }

    #[test]
    fn refuses_unreadable_mismatched_and_misnamed_keys() {
        let (ec_private, ec_public) = key_pair("ES256");
        let (_, other_ec_public) = key_pair("ES256");
        let (ed_private, ed_public) = key_pair("EdDSA");
        let key_error = |result: Result<Tokens, TokenError>| {
            assert!(matches!(result, Err(TokenError::Key(_))), "{result:?}");
        };
        key_error(Tokens::from_pem(
            "ES256",
            &ec_private,
            &other_ec_public,
            "i",
            "a",
        ));
        key_error(Tokens::from_pem(
            "ES256",
            b"not a key",
            &ec_public,
            "i",
            "a",
        ));
        key_error(Tokens::from_pem("ES256", &ec_private, b"", "i", "a"));
        key_error(Tokens::from_pem("ES256", &ed_private, &ed_public, "i", "a"));
        key_error(Tokens::from_pem("EdDSA", &ec_private, &ec_public, "i", "a"));
        key_error(Tokens::from_pem("RS256", &ec_private, &ec_public, "i", "a"));
        key_error(Tokens::from_pem("HS256", SECRET, SECRET, "i", "a"));
        key_error(Tokens::from_pem("none", &ec_private, &ec_public, "i", "a"));
    }

    #[test]
    fn names_exactly_four_algorithms() {
        for (name, algorithm) in [
            ("HS256", Algorithm::HS256),
            ("RS256", Algorithm::RS256),
            ("ES256", Algorithm::ES256),
            ("EdDSA", Algorithm::EdDSA),
        ] {
            assert_eq!(algorithm_from_name(name), Ok(algorithm));
        }
        for bad in [
            "", "none", "rs256", "HS512", "RS384", "ES384", "PS256", "EDDSA",
        ] {
            assert!(
                matches!(algorithm_from_name(bad), Err(TokenError::Key(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn parses_ttls() {
        assert_eq!(parse_ttl("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("30d"), Ok(Duration::from_secs(2_592_000)));
        assert_eq!(parse_ttl("120"), Ok(Duration::from_secs(120)));
        for bad in ["", "h", "0s", "1w", "-5m", "99999999999999999999d"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }
}
