//! Access tokens: JWTs signed with HS256 by the secret all nodes share. Verification pins the
//! algorithm (a `none` or differently-signed token is refused) and checks issuer, audience,
//! expiry and not-before. The extractor that turns a token into a `Principal` comes with the
//! security issue; this is the part it and `mkww-mcp token` share.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode};
use mcp_core::principal::Role;
use serde::{Deserialize, Serialize};
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
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid (signature, algorithm, issuer, audience or format)")]
    Invalid,
    #[error("the signing secret must be at least 32 bytes")]
    WeakSecret,
}

/// Issues and verifies access tokens.
#[derive(Clone)]
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
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

impl Tokens {
    pub fn hs256(secret: &[u8], issuer: &str, audience: &str) -> Result<Self, TokenError> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(TokenError::WeakSecret);
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 5;
        Ok(Tokens {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
        })
    }

    /// A token for `sub` with `role`, valid for `ttl` from now.
    pub fn issue(&self, sub: &str, role: Role, ttl: Duration) -> Result<String, TokenError> {
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
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|_| TokenError::Invalid)
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })
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
    fn refuses_short_secrets() {
        assert_eq!(
            Tokens::hs256(b"short", "i", "a").unwrap_err(),
            TokenError::WeakSecret
        );
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
