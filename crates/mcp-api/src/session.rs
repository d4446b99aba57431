//! Sessions: login with a password, rotating refresh tokens with reuse detection, logout, and
//! "who am I". Each login starts a token family; presenting a used refresh token again revokes
//! the whole family, so a stolen token dies with the first use by either party.

use crate::access::Access::{Authenticated, Public};
use crate::auth::{ClientIp, Principal, Security, too_many};
use crate::endpoint::{Endpoint, endpoint};
use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiJson;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use mcp_core::credentials;
use mcp_core::identity::{RefreshToken, RevocationTarget, Rotation, User};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::routes;
use uuid::Uuid;

/// The routes of this module and who may call them.
pub(crate) fn endpoints() -> Vec<Endpoint<AppState>> {
    vec![
        endpoint(Public, routes!(login)),
        endpoint(Public, routes!(refresh)),
        endpoint(Public, routes!(logout)),
        endpoint(Authenticated, routes!(me)),
    ]
}

/// Longest username accepted anywhere.
pub const MAX_USERNAME_LEN: usize = 64;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    /// Opaque; each one works once.
    pub refresh_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
}

fn invalid_credentials() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
        "invalid username or password",
    )
}

fn invalid_refresh() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_refresh_token",
        "the refresh token is not valid; log in again",
    )
}

/// Longest a login or refresh waits for the second after a revocation's cut-off (see
/// `wait_past_cutoff`); more would only mean that the clocks of the nodes disagree.
const MAX_CUTOFF_WAIT: std::time::Duration = std::time::Duration::from_millis(1_500);

/// Access tokens carry whole seconds and a revocation refuses its whole cut-off second, so a
/// token issued in that second (just after a role change, say) would be refused at once: wait
/// until the next second begins.
async fn wait_past_cutoff(security: &Security, subject: &str) {
    let Some(cutoff) = security.revocations.cutoff(subject) else {
        return;
    };
    let next_second_ms = cutoff.saturating_add(1).saturating_mul(1_000);
    let wait_ms = next_second_ms.saturating_sub(Utc::now().timestamp_millis());
    if wait_ms > 0 {
        let wait = std::time::Duration::from_millis(wait_ms.unsigned_abs()).min(MAX_CUTOFF_WAIT);
        tokio::time::sleep(wait).await;
    }
}

/// Issues an access token of the session `family_id` and stores `refresh` for `user`.
async fn tokens_for(
    security: &Security,
    user: &User,
    refresh: String,
    family_id: Uuid,
) -> Result<TokenResponse, ApiError> {
    wait_past_cutoff(security, &user.username).await;
    let access_token = security
        .tokens
        .issue_in(
            &user.username,
            user.role,
            security.config.access_ttl,
            Some(family_id),
        )
        .map_err(|e| {
            tracing::error!(error = %e, "cannot sign an access token");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "an internal error occurred; it has been logged",
            )
        })?;
    Ok(TokenResponse {
        access_token,
        refresh_token: refresh,
        token_type: "Bearer",
        expires_in: security.config.access_ttl.as_secs(),
    })
}

fn new_refresh(security: &Security, user_id: Uuid, family_id: Uuid) -> (String, RefreshToken) {
    let token = credentials::generate_refresh_token();
    let now = Utc::now();
    let ttl = chrono::Duration::from_std(security.config.refresh_ttl)
        .unwrap_or(chrono::Duration::days(30));
    let record = RefreshToken {
        id: Uuid::now_v7(),
        family_id,
        user_id,
        token_hash: credentials::digest(&token),
        created_at: now,
        expires_at: now + ttl,
        used_at: None,
        revoked_at: None,
    };
    (token, record)
}

/// Log in with a username and password.
#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses(
        (status = 200, description = "logged in", body = TokenResponse),
        (status = 401, description = "invalid username or password", body = ErrorBody),
        (status = 429, description = "too many attempts", body = ErrorBody),
    ))]
pub async fn login(
    State(state): State<AppState>,
    ip: ClientIp,
    ApiJson(request): ApiJson<LoginRequest>,
) -> Result<Response, ApiError> {
    let security = &state.security;
    let username = request.username.trim().to_owned();
    if username.is_empty() || username.chars().count() > MAX_USERNAME_LEN {
        return Err(invalid_credentials());
    }
    if let Some(refused) = throttle_login(security, &username, ip).await {
        return Ok(refused);
    }
    let user = security.identities.user_by_username(&username).await?;
    let stored = user
        .as_ref()
        .map(|u| u.password_hash.clone())
        .unwrap_or_else(|| credentials::decoy_hash().to_owned());
    let password = request.password;
    let matches =
        tokio::task::spawn_blocking(move || credentials::verify_password(&password, &stored))
            .await
            .unwrap_or(false);
    let user = match user {
        Some(user) if matches && !user.disabled => user,
        other => {
            let reason = match other {
                None => "unknown user",
                Some(u) if u.disabled && matches => "user disabled",
                Some(_) => "wrong password",
            };
            security
                .audit(
                    "auth.login.failed",
                    Some(&username),
                    ip,
                    json!({"reason": reason}),
                )
                .await;
            return Err(invalid_credentials());
        }
    };
    let (refresh, record) = new_refresh(security, user.id, Uuid::now_v7());
    security.identities.insert_refresh_token(&record).await?;
    let reply = tokens_for(security, &user, refresh, record.family_id).await?;
    security
        .audit(
            "auth.login.succeeded",
            Some(&user.username),
            ip,
            json!({"family_id": record.family_id}),
        )
        .await;
    Ok(Json(reply).into_response())
}

/// Login attempts are counted twice, so that strangers cannot lock a user out: per username
/// *and* client IP (`limits.login`: the attacker's own address runs out, the user's does not),
/// then per username from every address (`limits.login_username`, a higher ceiling against a
/// guess spread over many addresses). The username is folded to lower case for both counts so
/// that `BOB` and `bob` share them. An attempt refused by the first count does not spend the
/// second, so one address cannot use up the ceiling faster than its own limit. Returns the 429
/// to send when refused (and writes it to the audit log).
async fn throttle_login(security: &Security, username: &str, ip: ClientIp) -> Option<Response> {
    let name = username.to_lowercase();
    let from =
        ip.0.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
    let counts = [
        (
            format!("login:{from}:{name}"),
            security.config.limits.get().login,
            "too many attempts for this username from this address",
        ),
        (
            format!("login:{name}"),
            security.config.limits.get().login_username,
            "too many attempts for this username",
        ),
    ];
    for (key, quota, reason) in counts {
        if let Some(decision) = security.check(&key, quota).await
            && !decision.allowed
        {
            security
                .audit(
                    "auth.login.throttled",
                    Some(username),
                    ip,
                    json!({"reason": reason}),
                )
                .await;
            return Some(too_many(
                &decision,
                "rate_limited",
                "too many login attempts; wait and try again",
            ));
        }
    }
    None
}

/// Trade a refresh token for a new access token and a new refresh token.
#[utoipa::path(post, path = "/v1/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses(
        (status = 200, description = "rotated", body = TokenResponse),
        (status = 401, description = "invalid, expired, revoked or reused refresh token", body = ErrorBody),
    ))]
pub async fn refresh(
    State(state): State<AppState>,
    ip: ClientIp,
    ApiJson(request): ApiJson<RefreshRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let security = &state.security;
    let hash = credentials::digest(&request.refresh_token);
    let Some(current) = security.identities.refresh_token_by_hash(&hash).await? else {
        return Err(invalid_refresh());
    };
    let (token, next) = new_refresh(security, current.user_id, current.family_id);
    let now = Utc::now();
    match security
        .identities
        .rotate_refresh_token(&hash, &next, now)
        .await?
    {
        Rotation::Rotated { used } => {
            let user = security.identities.user_by_id(used.user_id).await?;
            match user {
                Some(user) if !user.disabled => Ok(Json(
                    tokens_for(security, &user, token, used.family_id).await?,
                )),
                _ => {
                    security
                        .identities
                        .revoke_refresh_family(used.family_id, now)
                        .await?;
                    Err(invalid_refresh())
                }
            }
        }
        Rotation::Reused { token } => {
            let user = security.identities.user_by_id(token.user_id).await?;
            let subject = user.as_ref().map(|u| u.username.as_str());
            security
                .audit(
                    "auth.refresh.reused",
                    subject,
                    ip,
                    json!({"family_id": token.family_id}),
                )
                .await;
            let revoked = security
                .identities
                .revoke_refresh_family(token.family_id, now)
                .await?;
            // The access tokens of the family too: one of them may be the thief's.
            security
                .revocations
                .revoke(RevocationTarget::Session(token.family_id), now)
                .await?;
            security
                .audit(
                    "auth.family.revoked",
                    subject,
                    ip,
                    json!({"family_id": token.family_id, "tokens": revoked, "reason": "reuse"}),
                )
                .await;
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "refresh_token_reused",
                "this refresh token was used before; every session it belonged to is revoked",
            ))
        }
        Rotation::Dead { .. } | Rotation::Unknown => Err(invalid_refresh()),
    }
}

/// End a session: revokes the refresh token's whole family and every access token issued in it
/// (on every node within a second). Answers 204 whatever the token.
#[utoipa::path(post, path = "/v1/auth/logout", tag = "auth", request_body = RefreshRequest,
    responses((status = 204, description = "logged out")))]
pub async fn logout(
    State(state): State<AppState>,
    ip: ClientIp,
    ApiJson(request): ApiJson<RefreshRequest>,
) -> Result<StatusCode, ApiError> {
    let security = &state.security;
    let hash = credentials::digest(&request.refresh_token);
    if let Some(token) = security.identities.refresh_token_by_hash(&hash).await? {
        let now = Utc::now();
        let revoked = security
            .identities
            .revoke_refresh_family(token.family_id, now)
            .await?;
        security
            .revocations
            .revoke(RevocationTarget::Session(token.family_id), now)
            .await?;
        let user = security.identities.user_by_id(token.user_id).await?;
        security
            .audit(
                "auth.logout",
                user.as_ref().map(|u| u.username.as_str()),
                ip,
                json!({"family_id": token.family_id, "tokens": revoked}),
            )
            .await;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Who the credential of this request belongs to.
#[utoipa::path(get, path = "/v1/auth/me", tag = "auth",
    responses(
        (status = 200, description = "the caller", body = mcp_core::principal::Principal),
        (status = 401, description = "no or bad credentials", body = ErrorBody),
    ))]
pub async fn me(principal: Principal) -> Json<mcp_core::principal::Principal> {
    Json(principal.0)
}
