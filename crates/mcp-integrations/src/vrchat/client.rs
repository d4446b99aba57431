//! The HTTP side of the VRChat client: the shared [`VrchatClient`], its reads, the retried
//! exchange under the circuit breaker, and core's [`VrchatPort`] over it.

use super::session::Session;
use super::*;
use crate::AdapterHealth;
use crate::traced::SendTraced;
use async_trait::async_trait;
use mcp_core::routing::{Breaker, BreakerState};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::header::{AUTHORIZATION, COOKIE, HeaderMap, RETRY_AFTER};
use reqwest::{Client, Method, StatusCode};
use serde_json::Value;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

/// Longest id accepted in a path (VRChat's are far shorter).
pub(super) const MAX_ID_LEN: usize = 256;
/// Waits after a 429 are capped here, so one answer cannot park a call for an hour.
pub(super) const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Most bytes of an error body kept in a message.
pub(super) const MAX_ERROR_BODY: usize = 2048;
/// Everything but unreserved characters is escaped in a path segment.
pub(super) const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// One VRChat account's session, shared by the task types and the REST passthroughs.
pub struct VrchatClient {
    pub(super) http: Client,
    pub(super) config: VrchatConfig,
    /// Held across a login, so concurrent calls wait for one login instead of starting many.
    pub(super) session: tokio::sync::Mutex<Session>,
    /// A copy of the session's state for status reads that must not wait for a login.
    pub(super) state: Mutex<SessionState>,
    pub(super) breaker: Mutex<Breaker>,
}

impl std::fmt::Debug for VrchatClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VrchatClient")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What one HTTP exchange gave.
pub(super) struct Answer {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: Value,
}

impl VrchatClient {
    pub fn new(config: VrchatConfig) -> Result<Self, String> {
        if !(config.api_base.starts_with("http://") || config.api_base.starts_with("https://")) {
            return Err(format!(
                "VRChat api_base `{}` is not an http(s) URL",
                config.api_base
            ));
        }
        if config.username.is_empty() || config.password.is_empty() {
            return Err("VRChat username and password are required".into());
        }
        if let Some(secret) = &config.totp_secret {
            totp(secret, 0).map_err(|e| format!("VRChat TOTP secret: {e}"))?;
        }
        let http = Client::builder()
            .user_agent(config.user_agent.clone())
            .timeout(config.timeout)
            // VRChat's redirects are not part of the API; cookies are handled here.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        let saved = config.keeper.as_ref().and_then(|keeper| keeper.load());
        Ok(VrchatClient {
            http,
            breaker: Mutex::new(Breaker::new(config.breaker)),
            config,
            session: tokio::sync::Mutex::new(Session {
                auth: saved.as_ref().map(|s| s.auth.clone()),
                two_factor: saved.and_then(|s| s.two_factor),
                state: SessionState::LoggedOut,
            }),
            state: Mutex::new(SessionState::LoggedOut),
        })
    }

    /// The session's state, without waiting for a login in progress.
    pub fn state(&self) -> SessionState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Down while the breaker is open or the login was refused; degraded while a code is
    /// awaited.
    pub fn health(&self) -> AdapterHealth {
        if self.breaker_state() == BreakerState::Open {
            return AdapterHealth::Down("circuit breaker open".into());
        }
        match self.state() {
            SessionState::Failed { reason } => AdapterHealth::Down(reason),
            SessionState::NeedsCode { methods } => AdapterHealth::Degraded(format!(
                "waiting for a two-factor code ({})",
                methods.join(", ")
            )),
            _ => AdapterHealth::Healthy,
        }
    }

    /// The breaker's state.
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .state(Instant::now())
    }

    /// `GET /auth/user`: the logged-in user.
    pub async fn current_user(&self) -> Result<Value, VrchatError> {
        self.get("auth/user", &[], "current user").await
    }

    /// `GET /users/{id}`.
    pub async fn user(&self, id: &str) -> Result<Value, VrchatError> {
        let path = format!("users/{}", segment("user id", id)?);
        self.get(&path, &[], &format!("user `{id}`")).await
    }

    /// `GET /worlds/{id}`.
    pub async fn world(&self, id: &str) -> Result<Value, VrchatError> {
        let path = format!("worlds/{}", segment("world id", id)?);
        self.get(&path, &[], &format!("world `{id}`")).await
    }

    /// `GET /instances/{world id}:{instance id}`.
    pub async fn instance(&self, world_id: &str, instance_id: &str) -> Result<Value, VrchatError> {
        let path = format!(
            "instances/{}:{}",
            segment("world id", world_id)?,
            segment("instance id", instance_id)?
        );
        self.get(&path, &[], &format!("instance `{world_id}:{instance_id}`"))
            .await
    }

    /// `GET /auth/user/friends?offline=false`: one page of online friends.
    pub async fn friends_online(&self, n: u32, offset: u32) -> Result<Value, VrchatError> {
        if n == 0 || n > MAX_FRIENDS_PAGE {
            return Err(VrchatError::Invalid(format!(
                "n must be between 1 and {MAX_FRIENDS_PAGE}"
            )));
        }
        let query = [
            ("offline", "false".to_owned()),
            ("n", n.to_string()),
            ("offset", offset.to_string()),
        ];
        self.get("auth/user/friends", &query, "friends list").await
    }

    /// A GET with the session: logs in when there is none, and once more on a 401.
    pub(super) async fn get(
        &self,
        path: &str,
        query: &[(&str, String)],
        what: &str,
    ) -> Result<Value, VrchatError> {
        let mut call = BreakerCall::admit(self)?;
        let result = self.get_with_session(path, query, what).await;
        call.finish(&result);
        result
    }

    async fn get_with_session(
        &self,
        path: &str,
        query: &[(&str, String)],
        what: &str,
    ) -> Result<Value, VrchatError> {
        let mut relogged = false;
        loop {
            let cookies = {
                let mut session = self.session.lock().await;
                match &session.state {
                    SessionState::LoggedIn { .. } => {}
                    // Each login sends a new email: wait for the code instead.
                    SessionState::NeedsCode { methods } => {
                        return Err(VrchatError::NeedsCode {
                            methods: methods.clone(),
                        });
                    }
                    // Retrying refused credentials could lock the account: wait for a
                    // new login to be asked for.
                    SessionState::Failed { reason } => {
                        return Err(VrchatError::LoginFailed(reason.clone()));
                    }
                    SessionState::LoggedOut => {
                        if !self.resume(&mut session).await? {
                            self.login(&mut session).await?;
                        }
                    }
                }
                session.cookie_header()
            };
            let answer = self.call(Method::GET, path, query, cookies, None).await?;
            if answer.status == StatusCode::UNAUTHORIZED && !relogged {
                // The session expired or was revoked: log in again, once.
                relogged = true;
                let mut session = self.session.lock().await;
                session.auth = None;
                session.two_factor = None;
                self.set_state(&mut session, SessionState::LoggedOut);
                self.keep(&session);
                continue;
            }
            if answer.status.is_success() {
                let mut session = self.session.lock().await;
                let before = session.cookie_header();
                session.take_cookies(&answer.headers);
                if session.cookie_header() != before {
                    self.keep(&session);
                }
                return Ok(answer.body);
            }
            return Err(refusal(&answer, what));
        }
    }

    pub(super) async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        cookies: Option<String>,
        body: Option<Value>,
    ) -> Result<Answer, VrchatError> {
        self.call_with(method, path, query, cookies, body, None)
            .await
    }

    /// One exchange, retried after 429s, 5xx answers and transport failures with backoff.
    /// Any other answer, success or not, is returned for the caller to read.
    pub(super) async fn call_with(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        cookies: Option<String>,
        body: Option<Value>,
        authorization: Option<String>,
    ) -> Result<Answer, VrchatError> {
        let url = format!("{}/{path}", self.config.api_base.trim_end_matches('/'));
        let mut attempt = 0;
        loop {
            let mut request = self.http.request(method.clone(), &url).query(query);
            if let Some(cookies) = &cookies {
                request = request.header(COOKIE, cookies);
            }
            if let Some(authorization) = &authorization {
                request = request.header(AUTHORIZATION, authorization);
            }
            if let Some(body) = &body {
                request = request.json(body);
            }
            let outcome = match request.send_traced().await {
                Ok(response) => {
                    let status = response.status();
                    let headers = response.headers().clone();
                    let bytes = response.bytes().await.unwrap_or_default();
                    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                        Value::String(
                            String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_ERROR_BODY)])
                                .into_owned(),
                        )
                    });
                    Ok(Answer {
                        status,
                        headers,
                        body,
                    })
                }
                Err(e) => Err(e),
            };
            let (wait, failure) = match outcome {
                Ok(answer) if answer.status == StatusCode::TOO_MANY_REQUESTS => {
                    let wait = retry_after(&answer.headers)
                        .unwrap_or_else(|| self.backoff(attempt))
                        .min(MAX_RETRY_AFTER);
                    let failure = VrchatError::RateLimited {
                        retry_after_secs: wait.as_secs().max(1),
                    };
                    (wait, failure)
                }
                Ok(answer) if answer.status.is_server_error() => (
                    self.backoff(attempt),
                    VrchatError::Unavailable(format!(
                        "{} {}",
                        answer.status,
                        error_message(&answer)
                    )),
                ),
                Ok(answer) => return Ok(answer),
                Err(e) => (
                    self.backoff(attempt),
                    VrchatError::Unavailable(transport_error(&e)),
                ),
            };
            if attempt >= self.config.max_retries {
                return Err(failure);
            }
            tracing::debug!(%url, attempt, ?wait, error = %failure, "VRChat call retried");
            attempt += 1;
            tokio::time::sleep(wait).await;
        }
    }

    pub(super) fn backoff(&self, attempt: u32) -> Duration {
        let base = self
            .config
            .backoff_base
            .saturating_mul(1 << attempt.min(10));
        let jitter = rand::random_range(0.0..0.25);
        base.mul_f64(1.0 + jitter)
    }
}

// The API reaches the client through core's port; each method is the inherent one.
#[async_trait]
impl VrchatPort for VrchatClient {
    fn state(&self) -> SessionState {
        VrchatClient::state(self)
    }

    fn breaker_state(&self) -> BreakerState {
        VrchatClient::breaker_state(self)
    }

    async fn login_now(&self) -> Result<SessionState, VrchatError> {
        VrchatClient::login_now(self).await
    }

    async fn submit_code(&self, code: &str) -> Result<SessionState, VrchatError> {
        VrchatClient::submit_code(self, code).await
    }

    async fn current_user(&self) -> Result<Value, VrchatError> {
        VrchatClient::current_user(self).await
    }

    async fn user(&self, id: &str) -> Result<Value, VrchatError> {
        VrchatClient::user(self, id).await
    }

    async fn world(&self, id: &str) -> Result<Value, VrchatError> {
        VrchatClient::world(self, id).await
    }

    async fn instance(&self, world_id: &str, instance_id: &str) -> Result<Value, VrchatError> {
        VrchatClient::instance(self, world_id, instance_id).await
    }

    async fn friends_online(&self, n: u32, offset: u32) -> Result<Value, VrchatError> {
        VrchatClient::friends_online(self, n, offset).await
    }
}

/// One call counted by the breaker. A call dropped before it ends (its task was cancelled, its
/// HTTP client went away) counts as failed, so a half-open breaker's probe slot is never lost.
struct BreakerCall<'a> {
    client: &'a VrchatClient,
    finished: bool,
}

impl<'a> BreakerCall<'a> {
    fn admit(client: &'a VrchatClient) -> Result<Self, VrchatError> {
        let mut breaker = client.breaker.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if breaker.admits(now) == 0 {
            return Err(VrchatError::Unavailable(
                "too many calls failed recently; the circuit breaker is open".into(),
            ));
        }
        breaker.started(now);
        Ok(BreakerCall {
            client,
            finished: false,
        })
    }

    /// Only VRChat being down counts against the breaker; refusals and waits for a code do
    /// not.
    fn finish(&mut self, result: &Result<Value, VrchatError>) {
        let failed = matches!(
            result,
            Err(VrchatError::Unavailable(_) | VrchatError::RateLimited { .. })
        );
        self.record(!failed);
    }

    fn record(&mut self, succeeded: bool) {
        self.finished = true;
        let mut breaker = self
            .client
            .breaker
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(state) = breaker.record(succeeded, Instant::now()) {
            tracing::warn!(state = state.as_str(), "VRChat breaker changed");
        }
    }
}

impl Drop for BreakerCall<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.record(false);
        }
    }
}

/// An id checked and escaped for one path segment.
pub(super) fn segment(what: &str, id: &str) -> Result<String, VrchatError> {
    // `.` and `..` alone would be read as path steps, not as an id.
    let ok = !id.is_empty()
        && !id.chars().all(|c| c == '.')
        && id.len() <= MAX_ID_LEN
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_~().".contains(c));
    if !ok {
        return Err(VrchatError::Invalid(format!(
            "{what} `{}` is not a VRChat id",
            id.chars().take(64).collect::<String>()
        )));
    }
    Ok(utf8_percent_encode(id, SEGMENT).to_string())
}

/// VRChat's `Retry-After`, in seconds.
pub(super) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// VRChat's `{"error":{"message","status_code"}}`, or the body as text.
pub(super) fn error_message(answer: &Answer) -> String {
    let message = answer
        .body
        .pointer("/error/message")
        .and_then(Value::as_str)
        .map(|m| m.trim_matches('"').to_owned())
        .unwrap_or_else(|| match &answer.body {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        });
    let message: String = message.chars().take(MAX_ERROR_BODY).collect();
    if message.is_empty() {
        answer.status.to_string()
    } else {
        message
    }
}

pub(super) fn refusal(answer: &Answer, what: &str) -> VrchatError {
    match answer.status {
        StatusCode::NOT_FOUND => VrchatError::NotFound(what.to_owned()),
        status => VrchatError::Rejected {
            status: status.as_u16(),
            message: error_message(answer),
        },
    }
}

pub(super) fn transport_error(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "cannot connect".into()
    } else {
        e.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_and_escaped_for_paths() {
        assert_eq!(
            segment("id", "usr_c1644b5b-3ca4-45b4-97c6-a2a0de70d469").unwrap(),
            "usr_c1644b5b-3ca4-45b4-97c6-a2a0de70d469"
        );
        assert_eq!(
            segment("id", "12345~region(eu)").unwrap(),
            "12345~region%28eu%29"
        );
        for bad in [
            "",
            ".",
            "..",
            "../auth",
            "a/b",
            "a?b=c",
            "a b",
            "é",
            &"x".repeat(300),
        ] {
            assert!(segment("id", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_call_dropped_midway_gives_its_probe_slot_back() {
        let mut config = VrchatConfig::new("user", "pass");
        config.breaker = BreakerConfig {
            window: Duration::from_secs(60),
            min_calls: 1,
            failure_rate: 0.5,
            open_for: Duration::ZERO,
            probes: 1,
        };
        let client = VrchatClient::new(config).unwrap();
        BreakerCall::admit(&client)
            .unwrap()
            .finish(&Err(VrchatError::Unavailable("down".into())));
        // Half-open at once (open_for 0): one probe, which is abandoned (a cancelled task).
        drop(BreakerCall::admit(&client).unwrap());
        // Its slot came back: without that, no call would ever be admitted again.
        assert!(BreakerCall::admit(&client).is_ok());
    }

    #[test]
    fn refuses_unusable_configuration() {
        let mut config = VrchatConfig::new("user", "pass");
        config.api_base = "ftp://x".into();
        assert!(VrchatClient::new(config).is_err());
        assert!(VrchatClient::new(VrchatConfig::new("", "pass")).is_err());
        let mut config = VrchatConfig::new("user", "pass");
        config.totp_secret = Some("???".into());
        assert!(VrchatClient::new(config).is_err());
    }

    proptest::proptest! {
        /// Whatever a caller sends as an id, it is refused or becomes one path segment that
        /// cannot leave the route it was put in.
        #[test]
        fn any_accepted_id_is_one_safe_path_segment(id in "[.a-z/%?#]{0,4}|\\PC{0,300}") {
            if let Ok(escaped) = segment("id", &id) {
                proptest::prop_assert!(!escaped.contains('/'));
                proptest::prop_assert!(!escaped.contains('?') && !escaped.contains('#'));
                proptest::prop_assert!(escaped != "." && escaped != "..");
                proptest::prop_assert!(escaped.is_ascii());
            }
        }

    }
}
