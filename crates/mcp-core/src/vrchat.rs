//! The port to VRChat's web API that the REST passthroughs (`/v1/vrchat/*`) use, and the plain
//! data it exchanges: where the hub's session stands and why a call failed. The integration
//! layer implements [`VrchatPort`] with its HTTP client; the binary hands it to the API, so the
//! API never depends on that client.

use crate::routing::BreakerState;
use async_trait::async_trait;
use serde::Serialize;
use serde_json::Value;

/// VRChat's page size limit for friends.
pub const MAX_FRIENDS_PAGE: u32 = 100;

/// Where the session stands, as `GET /v1/vrchat/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SessionState {
    /// No call has needed a session yet (or the last one was dropped).
    LoggedOut,
    /// VRChat wants a second factor that cannot be computed here: an emailed code (`emailOtp`),
    /// or an authenticator code when no secret is configured.
    NeedsCode { methods: Vec<String> },
    LoggedIn {
        user_id: String,
        display_name: String,
    },
    /// The credentials (or a submitted code) were refused; fix the configuration.
    Failed { reason: String },
}

/// A failed VRChat call.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VrchatError {
    #[error(
        "VRChat asks for a two-factor code ({}); submit it with POST /v1/vrchat/auth/code",
        methods.join(", ")
    )]
    NeedsCode { methods: Vec<String> },
    #[error("VRChat refused the login: {0}")]
    LoginFailed(String),
    #[error("VRChat has no {0}")]
    NotFound(String),
    #[error("VRChat refused the request ({status}): {message}")]
    Rejected { status: u16, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error("VRChat rate limits the hub; try again in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("VRChat cannot be reached: {0}")]
    Unavailable(String),
}

impl VrchatError {
    /// The stable code of the API errors and task error details.
    pub fn code(&self) -> &'static str {
        match self {
            VrchatError::NeedsCode { .. } => "vrchat_needs_code",
            VrchatError::LoginFailed(_) => "vrchat_login_failed",
            VrchatError::NotFound(_) => "vrchat_not_found",
            VrchatError::Rejected { .. } => "vrchat_rejected",
            VrchatError::Invalid(_) => "invalid_payload",
            VrchatError::RateLimited { .. } => "vrchat_rate_limited",
            VrchatError::Unavailable(_) => "vrchat_unavailable",
        }
    }

    /// Whether the same call may work later without anyone changing anything. A code that is
    /// awaited counts: the task waits (with backoff) for someone to submit it.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            VrchatError::NeedsCode { .. }
                | VrchatError::RateLimited { .. }
                | VrchatError::Unavailable(_)
        )
    }

    /// Seconds a caller should wait before trying again, where known.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            VrchatError::RateLimited { retry_after_secs } => Some(*retry_after_secs),
            VrchatError::Unavailable(_) => Some(5),
            _ => None,
        }
    }
}

/// `wrld_…:12345~region(eu)` → (`wrld_…`, `12345~region(eu)`).
pub fn split_location(location: &str) -> Result<(String, String), String> {
    match location.split_once(':') {
        Some((world, instance)) if !world.is_empty() && !instance.is_empty() => {
            Ok((world.to_owned(), instance.to_owned()))
        }
        _ => Err(format!(
            "location `{}` is not `world_id:instance_id`",
            location.chars().take(64).collect::<String>()
        )),
    }
}

/// The hub's one VRChat session, as the API reads through it. Answers are VRChat's JSON as VRChat
/// sends it.
#[async_trait]
pub trait VrchatPort: Send + Sync + 'static {
    /// The session's state, without waiting for a login in progress.
    fn state(&self) -> SessionState;
    /// The client's circuit breaker.
    fn breaker_state(&self) -> BreakerState;
    /// Drops the session and logs in again now.
    async fn login_now(&self) -> Result<SessionState, VrchatError>;
    /// Submits the two-factor code the session waits for.
    async fn submit_code(&self, code: &str) -> Result<SessionState, VrchatError>;
    /// The logged-in user.
    async fn current_user(&self) -> Result<Value, VrchatError>;
    async fn user(&self, id: &str) -> Result<Value, VrchatError>;
    async fn world(&self, id: &str) -> Result<Value, VrchatError>;
    async fn instance(&self, world_id: &str, instance_id: &str) -> Result<Value, VrchatError>;
    /// One page of online friends; `n` is 1 to [`MAX_FRIENDS_PAGE`].
    async fn friends_online(&self, n: u32, offset: u32) -> Result<Value, VrchatError>;
}
