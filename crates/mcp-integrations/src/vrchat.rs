//! VRChat's web API (`https://api.vrchat.cloud/api/1`): one logged-in session per hub, the task
//! types `vrchat.user.current`, `vrchat.user.get`, `vrchat.world.get`, `vrchat.instance.get`
//! and `vrchat.friends.online`, and the same reads for the REST passthroughs.
//!
//! Login is VRChat's: `GET /auth/user` with HTTP Basic credentials answers with an `auth` cookie
//! and, when two-factor authentication is on, `{"requiresTwoFactorAuth": ["totp", "otp"]}` or
//! `["emailOtp"]`. With an authenticator secret configured, the client computes the TOTP code
//! and verifies it (`POST /auth/twofactorauth/totp/verify`, which sets the `twoFactorAuth`
//! cookie); an emailed code cannot be computed, so the session waits in the `needs_code` state
//! until someone submits it ([`VrchatClient::submit_code`]). The cookies are sent with every
//! call; cookies VRChat sends back replace them, and a 401 logs in again once.
//!
//! VRChat throttles hard and asks for a descriptive `User-Agent`. A 429 waits for `Retry-After`
//! (or an exponential backoff), as do 5xx answers and transport failures, a few times within one
//! call; calls that still fail feed a circuit breaker, and while it is open calls fail at once
//! with `vrchat_unavailable` instead of adding to the load.

use crate::{Adapter, AdapterHealth};
use async_trait::async_trait;
use base64::Engine;
use mcp_core::routing::{Breaker, BreakerConfig, BreakerState};
use mcp_core::{Handler, HandlerError, HandlerRegistry, TaskContext};
// Plain data of core's port, re-exported so `mcp_integrations::vrchat::…` paths keep working.
pub use mcp_core::vrchat::{
    MAX_FRIENDS_PAGE, SessionState, VrchatError, VrchatPort, split_location,
};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::header::{AUTHORIZATION, COOKIE, HeaderMap, RETRY_AFTER, SET_COOKIE};
use reqwest::{Client, Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use std::time::Instant;

/// The real API.
pub const API_BASE: &str = "https://api.vrchat.cloud/api/1";
/// The logged-in user.
pub const USER_CURRENT: &str = "vrchat.user.current";
/// A user by id.
pub const USER_GET: &str = "vrchat.user.get";
/// A world by id.
pub const WORLD_GET: &str = "vrchat.world.get";
/// An instance by world id and instance id.
pub const INSTANCE_GET: &str = "vrchat.instance.get";
/// The logged-in user's friends who are online.
pub const FRIENDS_ONLINE: &str = "vrchat.friends.online";
/// Longest id accepted in a path (VRChat's are far shorter).
const MAX_ID_LEN: usize = 256;
/// Waits after a 429 are capped here, so one answer cannot park a call for an hour.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Most bytes of an error body kept in a message.
const MAX_ERROR_BODY: usize = 2048;
/// Everything but unreserved characters is escaped in a path segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Settings of the VRChat web API client.
#[derive(Clone)]
pub struct VrchatConfig {
    /// [`API_BASE`], or a test server.
    pub api_base: String,
    pub username: String,
    pub password: String,
    /// Base32 secret of the account's authenticator (spaces and case ignored); `None`: a TOTP
    /// challenge waits for a code like an emailed one.
    pub totp_secret: Option<String>,
    /// VRChat asks for `AppName/version contact`.
    pub user_agent: String,
    /// Limit of one HTTP request.
    pub timeout: Duration,
    /// Retries of one call after a 429, a 5xx or a transport failure.
    pub max_retries: u32,
    /// First wait of the exponential backoff (doubling, with jitter).
    pub backoff_base: Duration,
    /// When calls that kept failing stop being sent.
    pub breaker: BreakerConfig,
    /// Keeps the session's cookies across restarts; `None`: every start logs in again.
    pub keeper: Option<Arc<dyn SessionKeeper>>,
}

impl std::fmt::Debug for VrchatConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VrchatConfig")
            .field("api_base", &self.api_base)
            .field("username", &self.username)
            .field("totp_secret", &self.totp_secret.as_ref().map(|_| "…"))
            .field("user_agent", &self.user_agent)
            .finish_non_exhaustive()
    }
}

impl VrchatConfig {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        VrchatConfig {
            api_base: API_BASE.into(),
            username: username.into(),
            password: password.into(),
            totp_secret: None,
            user_agent: user_agent("https://github.com/mkww/mkww-mcp"),
            timeout: Duration::from_secs(30),
            max_retries: 3,
            backoff_base: Duration::from_millis(500),
            breaker: BreakerConfig {
                window: Duration::from_secs(60),
                min_calls: 5,
                failure_rate: 0.5,
                open_for: Duration::from_secs(30),
                probes: 1,
            },
            keeper: None,
        }
    }
}

/// The cookies of a logged-in session, as a [`SessionKeeper`] keeps them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedSession {
    pub auth: String,
    #[serde(default)]
    pub two_factor: Option<String>,
}

/// Where a session survives a restart. VRChat asks clients not to log in more than needed
/// (each login may email the account, and an emailed code needs a person), so a restarted hub
/// resumes the session it had. The keeper must keep the cookies secret: they are the account.
pub trait SessionKeeper: Send + Sync + 'static {
    fn load(&self) -> Option<SavedSession>;
    /// `None`: the session ended; forget it.
    fn save(&self, session: Option<&SavedSession>);
}

/// The `User-Agent` VRChat asks for: the application, its version and how to reach its owner.
pub fn user_agent(contact: &str) -> String {
    format!("MKWW-MCP/{} {contact}", env!("CARGO_PKG_VERSION"))
}

/// The cookies of a session and what is known of it.
#[derive(Debug)]
struct Session {
    auth: Option<String>,
    two_factor: Option<String>,
    state: SessionState,
}

impl Session {
    fn cookie_header(&self) -> Option<String> {
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
    fn take_cookies(&mut self, headers: &HeaderMap) {
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

/// One VRChat account's session, shared by the task types and the REST passthroughs.
pub struct VrchatClient {
    http: Client,
    config: VrchatConfig,
    /// Held across a login, so concurrent calls wait for one login instead of starting many.
    session: tokio::sync::Mutex<Session>,
    /// A copy of the session's state for status reads that must not wait for a login.
    state: Mutex<SessionState>,
    breaker: Mutex<Breaker>,
}

impl std::fmt::Debug for VrchatClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VrchatClient")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What one HTTP exchange gave.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
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

    fn set_state(&self, session: &mut Session, state: SessionState) {
        session.state = state.clone();
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
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

    /// A GET with the session: logs in when there is none, and once more on a 401.
    async fn get(
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

    /// Logs in with the configured credentials, completing TOTP when a secret is configured.
    async fn login(&self, session: &mut Session) -> Result<(), VrchatError> {
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
    async fn verify(
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
    async fn fetch_user(&self, session: &mut Session) -> Result<(), VrchatError> {
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

    fn logged_in(&self, session: &mut Session, user: &Value) -> Result<(), VrchatError> {
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
    async fn resume(&self, session: &mut Session) -> Result<bool, VrchatError> {
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
    fn keep(&self, session: &Session) {
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

    async fn call(
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
    async fn call_with(
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
            let outcome = match request.send().await {
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

    fn backoff(&self, attempt: u32) -> Duration {
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

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// An id checked and escaped for one path segment.
fn segment(what: &str, id: &str) -> Result<String, VrchatError> {
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
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
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
fn error_message(answer: &Answer) -> String {
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

fn refusal(answer: &Answer, what: &str) -> VrchatError {
    match answer.status {
        StatusCode::NOT_FOUND => VrchatError::NotFound(what.to_owned()),
        status => VrchatError::Rejected {
            status: status.as_u16(),
            message: error_message(answer),
        },
    }
}

fn transport_error(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "cannot connect".into()
    } else {
        e.to_string()
    }
}

/// The VRChat web API adapter: the read task types, on one shared session.
#[derive(Debug, Clone)]
pub struct VrchatAdapter {
    client: Arc<VrchatClient>,
}

impl VrchatAdapter {
    pub fn new(config: VrchatConfig) -> Result<Self, String> {
        Ok(VrchatAdapter {
            client: Arc::new(VrchatClient::new(config)?),
        })
    }

    /// The shared client, for the REST passthroughs.
    pub fn client(&self) -> Arc<VrchatClient> {
        self.client.clone()
    }
}

#[async_trait]
impl Adapter for VrchatAdapter {
    fn name(&self) -> &str {
        "vrchat"
    }

    fn task_types(&self) -> Vec<String> {
        [
            FRIENDS_ONLINE,
            INSTANCE_GET,
            USER_CURRENT,
            USER_GET,
            WORLD_GET,
        ]
        .map(str::to_owned)
        .to_vec()
    }

    async fn health(&self) -> AdapterHealth {
        self.client.health()
    }

    fn register(&self, registry: &mut HandlerRegistry) {
        for kind in [
            Kind::CurrentUser,
            Kind::User,
            Kind::World,
            Kind::Instance,
            Kind::FriendsOnline,
        ] {
            registry.register(
                kind.task_type(),
                VrchatTask {
                    kind,
                    client: self.client.clone(),
                },
            );
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    CurrentUser,
    User,
    World,
    Instance,
    FriendsOnline,
}

impl Kind {
    fn task_type(self) -> &'static str {
        match self {
            Kind::CurrentUser => USER_CURRENT,
            Kind::User => USER_GET,
            Kind::World => WORLD_GET,
            Kind::Instance => INSTANCE_GET,
            Kind::FriendsOnline => FRIENDS_ONLINE,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserPayload {
    user_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorldPayload {
    world_id: String,
}

/// `{"world_id","instance_id"}` or VRChat's location string `{"location":"wrld_…:12345~…"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InstancePayload {
    world_id: Option<String>,
    instance_id: Option<String>,
    location: Option<String>,
}

impl InstancePayload {
    fn ids(&self) -> Result<(String, String), String> {
        match (&self.world_id, &self.instance_id, &self.location) {
            (Some(world), Some(instance), None) => Ok((world.clone(), instance.clone())),
            (None, None, Some(location)) => split_location(location),
            _ => Err("give world_id and instance_id, or location".into()),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FriendsPayload {
    #[serde(default = "default_page")]
    n: u32,
    #[serde(default)]
    offset: u32,
}

fn default_page() -> u32 {
    MAX_FRIENDS_PAGE
}

struct VrchatTask {
    kind: Kind,
    client: Arc<VrchatClient>,
}

fn parse<T: for<'de> Deserialize<'de>>(payload: &Value) -> Result<T, String> {
    // An absent payload is an empty object for the types that take nothing.
    let payload = if payload.is_null() {
        &json!({})
    } else {
        payload
    };
    T::deserialize(payload).map_err(|e| e.to_string())
}

impl VrchatTask {
    fn check(&self, payload: &Value) -> Result<(), String> {
        let invalid = |e: VrchatError| e.to_string();
        match self.kind {
            Kind::CurrentUser => parse::<Empty>(payload).map(|_| ()),
            Kind::User => segment("user_id", &parse::<UserPayload>(payload)?.user_id)
                .map(|_| ())
                .map_err(invalid),
            Kind::World => segment("world_id", &parse::<WorldPayload>(payload)?.world_id)
                .map(|_| ())
                .map_err(invalid),
            Kind::Instance => {
                let (world, instance) = parse::<InstancePayload>(payload)?.ids()?;
                segment("world_id", &world).map_err(invalid)?;
                segment("instance_id", &instance).map_err(invalid)?;
                Ok(())
            }
            Kind::FriendsOnline => {
                let p = parse::<FriendsPayload>(payload)?;
                if p.n == 0 || p.n > MAX_FRIENDS_PAGE {
                    return Err(format!("n must be between 1 and {MAX_FRIENDS_PAGE}"));
                }
                Ok(())
            }
        }
    }

    async fn call(&self, payload: &Value) -> Result<Value, VrchatError> {
        let client = &self.client;
        match self.kind {
            Kind::CurrentUser => client.current_user().await,
            Kind::User => {
                let p: UserPayload = parse(payload).map_err(VrchatError::Invalid)?;
                client.user(&p.user_id).await
            }
            Kind::World => {
                let p: WorldPayload = parse(payload).map_err(VrchatError::Invalid)?;
                client.world(&p.world_id).await
            }
            Kind::Instance => {
                let p: InstancePayload = parse(payload).map_err(VrchatError::Invalid)?;
                let (world, instance) = p.ids().map_err(VrchatError::Invalid)?;
                client.instance(&world, &instance).await
            }
            Kind::FriendsOnline => {
                let p: FriendsPayload = parse(payload).map_err(VrchatError::Invalid)?;
                client.friends_online(p.n, p.offset).await
            }
        }
    }
}

#[async_trait]
impl Handler for VrchatTask {
    fn validate(&self, payload: &Value) -> Result<(), String> {
        self.check(payload)
    }

    async fn run(&self, ctx: TaskContext) -> Result<Value, HandlerError> {
        let result = tokio::select! {
            result = self.call(&ctx.task.payload) => result,
            _ = ctx.cancel.cancelled() => return Err(HandlerError::retryable("interrupted")),
        };
        result.map_err(|e| {
            let details = json!({"code": e.code()});
            let error = if e.retryable() {
                HandlerError::retryable(e.to_string())
            } else {
                HandlerError::permanent(e.to_string())
            };
            error.with_details(details)
        })
    }
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
    fn splits_locations_into_world_and_instance() {
        assert_eq!(
            split_location("wrld_1:123~private(usr_2)").unwrap(),
            ("wrld_1".to_owned(), "123~private(usr_2)".to_owned())
        );
        assert!(split_location("wrld_1").is_err());
        assert!(split_location(":1").is_err());
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

    #[test]
    fn payloads_are_checked_before_the_task_is_accepted() {
        let adapter = VrchatAdapter::new(VrchatConfig::new("user", "pass")).unwrap();
        let mut registry = HandlerRegistry::default();
        adapter.register(&mut registry);
        let check = |t: &str, p: Value| registry.get(t).unwrap().validate(&p);
        assert!(check(USER_CURRENT, Value::Null).is_ok());
        assert!(check(USER_CURRENT, json!({"x": 1})).is_err());
        assert!(check(USER_GET, json!({"user_id": "usr_1"})).is_ok());
        assert!(check(USER_GET, json!({"user_id": "../x"})).is_err());
        assert!(check(WORLD_GET, json!({})).is_err());
        assert!(check(INSTANCE_GET, json!({"location": "wrld_1:1"})).is_ok());
        assert!(check(INSTANCE_GET, json!({"world_id": "wrld_1"})).is_err());
        assert!(check(FRIENDS_ONLINE, json!({"n": 101})).is_err());
        assert!(check(FRIENDS_ONLINE, json!({})).is_ok());
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

        #[test]
        fn locations_split_or_fail_without_panicking(location in "\\PC{0,100}") {
            if let Ok((world, instance)) = split_location(&location) {
                proptest::prop_assert_eq!(format!("{world}:{instance}"), location);
            }
        }

        #[test]
        fn totp_never_panics_on_odd_secrets(secret in "\\PC{0,64}", time in 0u64..u64::MAX / 2) {
            if let Ok(code) = totp(&secret, time) {
                proptest::prop_assert_eq!(code.len(), 6);
                proptest::prop_assert!(code.chars().all(|c| c.is_ascii_digit()));
            }
        }
    }
}
