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

mod adapter;
mod client;
mod session;

pub use adapter::VrchatAdapter;
pub use client::VrchatClient;
// Plain data of core's port, re-exported so `mcp_integrations::vrchat::…` paths keep working.
pub use mcp_core::vrchat::{
    MAX_FRIENDS_PAGE, SessionState, VrchatError, VrchatPort, split_location,
};
pub use session::totp;

use mcp_core::routing::BreakerConfig;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

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
