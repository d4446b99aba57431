//! The VRChat session: its cookies, the login with HTTP Basic credentials, the two-factor step
//! (computed TOTP or a submitted code), and resuming a kept session after a restart.

use super::client::{SEGMENT, error_message};
use super::*;
use base64::Engine;
use percent_encoding::utf8_percent_encode;
use reqwest::header::{HeaderMap, SET_COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The cookies of a session and what is known of it.
#[derive(Debug)]
pub(super) struct Session {
    pub(super) auth: Option<String>,
    pub(super) two_factor: Option<String>,
    pub(super) state: SessionState,
}

impl Session {
    pub(super) fn cookie_header(&self) -> Option<String> {
        let mut parts = Vec::new();
        if let Some(auth) = &self.auth {
            parts.push(format!("auth={auth}"));
        }
        if let Some(two_factor) = &self.two_factor {
            parts.push(format!("twoFactorAuth={two_factor}"));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }

    /// Keeps the `auth` and `twoFactorAuth` cookies an answer sets; an empty value (VRChat's
    /// way of deleting one) forgets it.
    pub(super) fn take_cookies(&mut self, headers: &HeaderMap) {
        for value in headers.get_all(SET_COOKIE) {
            let Ok(text) = value.to_str() else { continue };
            let pair = text.split(';').next().unwrap_or_default();
            let Some((name, value)) = pair.split_once('=') else {
                continue;
            };
            let value = value.trim();
            let slot = match name.trim() {
                "auth" => &mut self.auth,
                "twoFactorAuth" => &mut self.two_factor,
                _ => continue,
            };
            *slot = (!value.is_empty()).then(|| value.to_owned());
        }
    }
}

impl VrchatClient {
    pub(super) fn set_state(&self, session: &mut Session, state: SessionState) {
        session.state = state.clone();
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
    }

    /// Submits a two-factor code the session waits for: an emailed one when VRChat asked for
    /// `emailOtp`, else an authenticator code. Logs in first when no login has asked yet.
    pub async fn submit_code(&self, code: &str) -> Result<SessionState, VrchatError> {
        let code = code.trim();
        if code.is_empty() || code.len() > 64 || !code.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(VrchatError::Invalid(
                "code must be the letters and digits VRChat sent".into(),
            ));
        }
        let mut session = self.session.lock().await;
        let methods = match &session.state {
            SessionState::NeedsCode { methods } => methods.clone(),
            SessionState::LoggedIn { .. } => return Ok(session.state.clone()),
            _ => match self.login(&mut session).await {
                Ok(()) => return Ok(session.state.clone()),
                Err(VrchatError::NeedsCode { methods }) => methods,
                Err(e) => return Err(e),
            },
        };
        let kind = if methods.iter().any(|m| m == "emailOtp") {
            "emailotp"
        } else if code.len() == 6 && code.chars().all(|c| c.is_ascii_digit()) {
            "totp"
        } else {
            // Recovery codes are eight characters.
            "otp"
        };
        self.verify(&mut session, kind, code).await?;
        self.fetch_user(&mut session).await?;
        Ok(session.state.clone())
    }

    /// Drops the session and logs in again now (after the credentials were fixed, or to ask
    /// VRChat for a new emailed code).
    pub async fn login_now(&self) -> Result<SessionState, VrchatError> {
        let mut session = self.session.lock().await;
        match self.login(&mut session).await {
            Ok(()) | Err(VrchatError::NeedsCode { .. }) => Ok(session.state.clone()),
            Err(e) => Err(e),
        }
    }
    /// Logs in with the configured credentials, completing TOTP when a secret is configured.
    pub(super) async fn login(&self, session: &mut Session) -> Result<(), VrchatError> {
        session.auth = None;
        session.two_factor = None;
        let basic = format!(
            "{}:{}",
            utf8_percent_encode(&self.config.username, SEGMENT),
            utf8_percent_encode(&self.config.password, SEGMENT)
        );
        let authorization = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(basic)
        );
        let answer = self
            .call_with(
                Method::GET,
                "auth/user",
                &[],
                None,
                None,
                Some(authorization),
            )
            .await?;
        session.take_cookies(&answer.headers);
        if !answer.status.is_success() {
            let reason = match answer.status {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    format!("wrong username or password ({})", error_message(&answer))
                }
                _ => error_message(&answer),
            };
            if answer.status.is_client_error() {
                self.set_state(
                    session,
                    SessionState::Failed {
                        reason: reason.clone(),
                    },
                );
                return Err(VrchatError::LoginFailed(reason));
            }
            return Err(VrchatError::Unavailable(reason));
        }
        if let Some(methods) = answer.body.get("requiresTwoFactorAuth") {
            let methods: Vec<String> = methods
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|m| m.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let computable =
                methods.iter().any(|m| m == "totp") && !methods.iter().any(|m| m == "emailOtp");
            match (&self.config.totp_secret, computable) {
                (Some(secret), true) => {
                    let code = totp(secret, unix_now()).map_err(VrchatError::LoginFailed)?;
                    self.verify(session, "totp", &code).await?;
                }
                _ => {
                    tracing::warn!(?methods, "VRChat asks for a two-factor code");
                    self.set_state(
                        session,
                        SessionState::NeedsCode {
                            methods: methods.clone(),
                        },
                    );
                    return Err(VrchatError::NeedsCode { methods });
                }
            }
            return self.fetch_user(session).await;
        }
        self.logged_in(session, &answer.body)
    }

    /// `POST /auth/twofactorauth/{kind}/verify {"code"}`.
    pub(super) async fn verify(
        &self,
        session: &mut Session,
        kind: &str,
        code: &str,
    ) -> Result<(), VrchatError> {
        let path = format!("auth/twofactorauth/{kind}/verify");
        let answer = self
            .call(
                Method::POST,
                &path,
                &[],
                session.cookie_header(),
                Some(json!({ "code": code })),
            )
            .await?;
        session.take_cookies(&answer.headers);
        let verified = answer.status.is_success()
            && answer.body.get("verified").and_then(Value::as_bool) == Some(true);
        if verified {
            return Ok(());
        }
        if answer.status.is_server_error() {
            return Err(VrchatError::Unavailable(error_message(&answer)));
        }
        let reason = format!(
            "the two-factor code was refused ({})",
            error_message(&answer)
        );
        // An emailed code can be submitted again; a computed TOTP code that fails means the
        // secret (or the clock) is wrong.
        if let SessionState::NeedsCode { methods } = &session.state {
            let methods = methods.clone();
            self.set_state(session, SessionState::NeedsCode { methods });
        } else {
            self.set_state(
                session,
                SessionState::Failed {
                    reason: reason.clone(),
                },
            );
        }
        Err(VrchatError::LoginFailed(reason))
    }

    /// `GET /auth/user` with the cookies, after a second factor.
    pub(super) async fn fetch_user(&self, session: &mut Session) -> Result<(), VrchatError> {
        let answer = self
            .call(Method::GET, "auth/user", &[], session.cookie_header(), None)
            .await?;
        session.take_cookies(&answer.headers);
        if !answer.status.is_success() {
            let reason = error_message(&answer);
            if answer.status.is_server_error() {
                return Err(VrchatError::Unavailable(reason));
            }
            self.set_state(
                session,
                SessionState::Failed {
                    reason: reason.clone(),
                },
            );
            return Err(VrchatError::LoginFailed(reason));
        }
        if let Some(methods) = answer.body.get("requiresTwoFactorAuth") {
            let reason = format!("VRChat still asks for a second factor: {methods}");
            self.set_state(
                session,
                SessionState::Failed {
                    reason: reason.clone(),
                },
            );
            return Err(VrchatError::LoginFailed(reason));
        }
        self.logged_in(session, &answer.body)
    }

    pub(super) fn logged_in(&self, session: &mut Session, user: &Value) -> Result<(), VrchatError> {
        let text = |key: &str| {
            user.get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        if session.auth.is_none() {
            return Err(VrchatError::Unavailable(
                "VRChat answered the login without an auth cookie".into(),
            ));
        }
        tracing::info!(user_id = %text("id"), "logged in to VRChat");
        self.set_state(
            session,
            SessionState::LoggedIn {
                user_id: text("id"),
                display_name: text("displayName"),
            },
        );
        self.keep(session);
        Ok(())
    }

    /// Resumes a kept session: `GET /auth/user` with its cookies. False when there is none or
    /// VRChat no longer knows it (then it is forgotten and a login follows).
    pub(super) async fn resume(&self, session: &mut Session) -> Result<bool, VrchatError> {
        if session.auth.is_none() {
            return Ok(false);
        }
        let answer = self
            .call(Method::GET, "auth/user", &[], session.cookie_header(), None)
            .await?;
        if answer.status.is_success() && answer.body.get("requiresTwoFactorAuth").is_none() {
            session.take_cookies(&answer.headers);
            tracing::info!("resumed the kept VRChat session");
            self.logged_in(session, &answer.body)?;
            return Ok(true);
        }
        session.auth = None;
        session.two_factor = None;
        self.keep(session);
        Ok(false)
    }

    /// Hands the session's cookies to the keeper (none: forget them).
    pub(super) fn keep(&self, session: &Session) {
        let Some(keeper) = &self.config.keeper else {
            return;
        };
        let saved = match (&session.state, &session.auth) {
            (SessionState::LoggedIn { .. }, Some(auth)) => Some(SavedSession {
                auth: auth.clone(),
                two_factor: session.two_factor.clone(),
            }),
            _ => None,
        };
        keeper.save(saved.as_ref());
    }
}

/// The current code of a base32 authenticator secret (spaces, `=` padding and case ignored).
pub fn totp(secret: &str, unix_time: u64) -> Result<String, String> {
    let normalized: String = secret
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '=' && *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let bytes = totp_rs::Secret::Encoded(normalized)
        .to_bytes()
        .map_err(|_| "not a base32 secret".to_owned())?;
    if bytes.len() < 10 {
        return Err("a secret must be at least 80 bits".into());
    }
    let generator = totp_rs::TOTP::new_unchecked(totp_rs::Algorithm::SHA1, 6, 1, 30, bytes);
    Ok(generator.generate(unix_time))
}

pub(super) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn computes_rfc6238_codes_from_a_base32_secret() {
        // RFC 6238's SHA-1 test secret, "12345678901234567890", in base32; its 8-digit code at
        // 59 s is 94287082, so the 6-digit one is 287082.
        let secret = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
        assert_eq!(totp(secret, 59).unwrap(), "287082");
        assert_eq!(
            totp("gezd gnbv gy3t qojq gezd gnbv gy3t qojq", 59).unwrap(),
            "287082"
        );
        assert!(totp("not base32!", 59).is_err());
        assert!(totp("GEZA", 59).is_err());
    }

    #[test]
    fn keeps_and_forgets_session_cookies() {
        let mut session = Session {
            auth: None,
            two_factor: None,
            state: SessionState::LoggedOut,
        };
        let mut headers = HeaderMap::new();
        headers.append(
            SET_COOKIE,
            "auth=authcookie_1; Path=/; HttpOnly".parse().unwrap(),
        );
        headers.append(SET_COOKIE, "twoFactorAuth=tfa; Path=/".parse().unwrap());
        headers.append(SET_COOKIE, "other=x".parse().unwrap());
        session.take_cookies(&headers);
        assert_eq!(
            session.cookie_header().as_deref(),
            Some("auth=authcookie_1; twoFactorAuth=tfa")
        );
        let mut cleared = HeaderMap::new();
        cleared.append(SET_COOKIE, "twoFactorAuth=; Max-Age=0".parse().unwrap());
        session.take_cookies(&cleared);
        assert_eq!(
            session.cookie_header().as_deref(),
            Some("auth=authcookie_1")
        );
    }

    proptest::proptest! {
        #[test]
        fn totp_never_panics_on_odd_secrets(secret in "\\PC{0,64}", time in 0u64..u64::MAX / 2) {
            if let Ok(code) = totp(&secret, time) {
                proptest::prop_assert_eq!(code.len(), 6);
                proptest::prop_assert!(code.chars().all(|c| c.is_ascii_digit()));
            }
        }
    }
}
