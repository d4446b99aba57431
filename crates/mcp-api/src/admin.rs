//! Administration: users, API keys and the audit log. Secrets (passwords, keys) are shown once,
//! in the reply that creates them, and stored only as hashes.

use crate::access::Access::Requires;
use crate::auth::{ClientIp, Principal};
use crate::endpoint::{Endpoint, endpoint};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiQuery, page_limit, parse_cursor};
use crate::session::MAX_USERNAME_LEN;
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::Utc;
use mcp_core::credentials::{self, PasswordError};
use mcp_core::identity::{ApiKey, AuditEvent, AuditFilter, RevocationTarget, User};
use mcp_core::principal::Permission;
use mcp_core::principal::Role;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;
use uuid::Uuid;

/// The routes of this module and who may call them.
pub(crate) fn endpoints() -> Vec<Endpoint<AppState>> {
    vec![
        endpoint(Requires(Permission::ApiKeysManage), routes!(create_api_key)),
        endpoint(Requires(Permission::ApiKeysManage), routes!(list_api_keys)),
        endpoint(Requires(Permission::ApiKeysManage), routes!(revoke_api_key)),
        endpoint(Requires(Permission::UsersManage), routes!(create_user)),
        endpoint(Requires(Permission::UsersManage), routes!(list_users)),
        endpoint(Requires(Permission::UsersManage), routes!(update_user)),
        endpoint(Requires(Permission::AuditRead), routes!(audit)),
    ]
}

fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
        .with_details(json!({"field": field}))
}

/// Usernames: 1 to 64 of letters, digits, `.`, `_`, `-`, `@`.
pub fn check_username(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.chars().count() <= MAX_USERNAME_LEN
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "username",
            format!("a username has 1 to {MAX_USERNAME_LEN} letters, digits, `.`, `_`, `-` or `@`"),
        ))
    }
}

async fn hash(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || credentials::hash_password(&password))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "hashing failed",
            )
        })?
        .map_err(|e| match e {
            PasswordError::Length => invalid("password", e.to_string()),
            PasswordError::Hashing(_) => {
                tracing::error!(error = %e, "password hashing failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "hashing failed",
                )
            }
        })
}

fn parse_id(id: &str, code: &'static str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            code,
            format!("no {what} with id `{id}`"),
        )
    })
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub username: String,
    pub role: Role,
    /// At least 12 characters; omitted: one is generated and returned once.
    pub password: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedUser {
    pub user: User,
    /// The generated password, when none was given. Shown only here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// Create a user.
#[utoipa::path(post, path = "/v1/users", tag = "admin", request_body = CreateUser,
    responses(
        (status = 201, description = "created", body = CreatedUser),
        (status = 409, description = "the username is taken", body = ErrorBody),
        (status = 422, description = "bad username or password", body = ErrorBody),
    ))]
pub async fn create_user(
    State(state): State<AppState>,
    principal: Principal,
    ip: ClientIp,
    ApiJson(request): ApiJson<CreateUser>,
) -> Result<(StatusCode, Json<CreatedUser>), ApiError> {
    check_username(&request.username)?;
    let generated = request
        .password
        .is_none()
        .then(credentials::generate_password);
    let password = request
        .password
        .or_else(|| generated.clone())
        .unwrap_or_default();
    let now = Utc::now();
    let user = User {
        id: Uuid::now_v7(),
        username: request.username,
        role: request.role,
        password_hash: hash(password).await?,
        disabled: false,
        created_at: now,
        updated_at: now,
    };
    let security = &state.security;
    security.identities.create_user(&user).await?;
    security
        .audit(
            "user.created",
            Some(&principal.subject),
            ip,
            json!({"user": user.username, "role": user.role}),
        )
        .await;
    Ok((
        StatusCode::CREATED,
        Json(CreatedUser {
            user,
            password: generated,
        }),
    ))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserList {
    pub users: Vec<User>,
}

/// List users, by username.
#[utoipa::path(get, path = "/v1/users", tag = "admin",
    responses((status = 200, description = "all users", body = UserList)))]
pub async fn list_users(State(state): State<AppState>) -> Result<Json<UserList>, ApiError> {
    let users = state.security.identities.list_users().await?;
    Ok(Json(UserList { users }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    pub role: Option<Role>,
    pub disabled: Option<bool>,
    pub password: Option<String>,
}

/// Change a user's role, disable or enable them, or set their password. Any change ends the
/// user's sessions (refresh tokens); access tokens already issued expire on their own.
#[utoipa::path(patch, path = "/v1/users/{id}", tag = "admin", request_body = UpdateUser,
    params(("id" = String, Path, description = "user id")),
    responses(
        (status = 200, description = "updated", body = User),
        (status = 404, description = "no such user", body = ErrorBody),
    ))]
pub async fn update_user(
    State(state): State<AppState>,
    principal: Principal,
    ip: ClientIp,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<UpdateUser>,
) -> Result<Json<User>, ApiError> {
    let user_id = parse_id(&id, "user_not_found", "user")?;
    let password_hash = match request.password {
        Some(password) => Some(hash(password).await?),
        None => None,
    };
    let security = &state.security;
    // Taken before the change: every token issued up to it carries the old role or password.
    let changed_at = Utc::now();
    let before = security.identities.user_by_id(user_id).await?;
    let updated = security
        .identities
        .update_user(
            user_id,
            request.role,
            request.disabled,
            password_hash.as_deref(),
        )
        .await?;
    let (Some(before), Some(user)) = (before, updated) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "user_not_found",
            format!("no user with id `{id}`"),
        ));
    };
    let sessions = security
        .identities
        .revoke_user_refresh_tokens(user.id, changed_at)
        .await?;
    // Its access tokens too (they carry the role), on every node within a second; open
    // WebSockets authenticated by them are closed.
    security
        .revocations
        .revoke(RevocationTarget::Subject(user.username.clone()), changed_at)
        .await?;
    security
        .audit(
            "user.updated",
            Some(&principal.subject),
            ip,
            json!({
                "user": user.username,
                "role": {"from": before.role, "to": user.role},
                "disabled": user.disabled,
                "password_changed": password_hash.is_some(),
                "sessions_revoked": sessions,
            }),
        )
        .await;
    Ok(Json(user))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    /// What the key is for, e.g. `discord-bot`.
    pub name: String,
    pub role: Role,
    /// The task types a worker using this key may serve: exact names or prefixes ending in
    /// `*` (`["render.*"]`), at most 100. Omitted or `null`: every type meant for external
    /// workers; `[]`: none. Types with an in-process handler are never served by workers.
    #[serde(default)]
    pub worker_types: Option<Vec<String>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedApiKey {
    #[serde(flatten)]
    pub api_key: ApiKey,
    /// The key itself: send it as `Authorization: Bearer <key>`. Shown only here.
    pub key: String,
}

/// Create an API key for a service.
#[utoipa::path(post, path = "/v1/api-keys", tag = "admin", request_body = CreateApiKey,
    responses(
        (status = 201, description = "created; `key` is shown only now", body = CreatedApiKey),
        (status = 422, description = "bad name or `worker_types` pattern", body = ErrorBody),
    ))]
pub async fn create_api_key(
    State(state): State<AppState>,
    principal: Principal,
    ip: ClientIp,
    ApiJson(request): ApiJson<CreateApiKey>,
) -> Result<(StatusCode, Json<CreatedApiKey>), ApiError> {
    let name = request.name.trim();
    if name.is_empty() || name.chars().count() > 128 || name.chars().any(char::is_control) {
        return Err(invalid(
            "name",
            "a key name has 1 to 128 characters, none of them control characters",
        ));
    }
    if let Some(patterns) = &request.worker_types {
        mcp_core::worker_types::check_patterns(patterns)
            .map_err(|reason| invalid("worker_types", reason))?;
    }
    let generated = credentials::generate_api_key();
    let api_key = ApiKey {
        id: Uuid::now_v7(),
        name: name.to_owned(),
        prefix: generated.prefix,
        role: request.role,
        secret_hash: credentials::digest(&generated.key),
        created_by: principal.subject.clone(),
        created_at: Utc::now(),
        last_used_at: None,
        revoked_at: None,
        worker_types: request.worker_types,
    };
    let security = &state.security;
    security.identities.create_api_key(&api_key).await?;
    security
        .audit(
            "api_key.created",
            Some(&principal.subject),
            ip,
            json!({"api_key": api_key.id, "prefix": api_key.prefix, "name": api_key.name, "role": api_key.role, "worker_types": api_key.worker_types}),
        )
        .await;
    Ok((
        StatusCode::CREATED,
        Json(CreatedApiKey {
            api_key,
            key: generated.key,
        }),
    ))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyList {
    pub api_keys: Vec<ApiKey>,
}

/// List API keys (never their secrets), newest first.
#[utoipa::path(get, path = "/v1/api-keys", tag = "admin",
    responses((status = 200, description = "all keys", body = ApiKeyList)))]
pub async fn list_api_keys(State(state): State<AppState>) -> Result<Json<ApiKeyList>, ApiError> {
    let api_keys = state.security.identities.list_api_keys().await?;
    Ok(Json(ApiKeyList { api_keys }))
}

/// Revoke an API key: it stops working at once, on every node.
#[utoipa::path(delete, path = "/v1/api-keys/{id}", tag = "admin",
    params(("id" = String, Path, description = "API key id")),
    responses(
        (status = 200, description = "revoked", body = ApiKey),
        (status = 404, description = "no such key", body = ErrorBody),
    ))]
pub async fn revoke_api_key(
    State(state): State<AppState>,
    principal: Principal,
    ip: ClientIp,
    Path(id): Path<String>,
) -> Result<Json<ApiKey>, ApiError> {
    let key_id = parse_id(&id, "api_key_not_found", "API key")?;
    let security = &state.security;
    let Some(api_key) = security
        .identities
        .revoke_api_key(key_id, Utc::now())
        .await?
    else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "api_key_not_found",
            format!("no API key with id `{id}`"),
        ));
    };
    // Open WebSockets authenticated by the key are closed, on every node within a second.
    security
        .revocations
        .revoke(
            RevocationTarget::ApiKey(api_key.id),
            api_key.revoked_at.unwrap_or_else(Utc::now),
        )
        .await?;
    security
        .audit(
            "api_key.revoked",
            Some(&principal.subject),
            ip,
            json!({"api_key": api_key.id, "prefix": api_key.prefix, "name": api_key.name}),
        )
        .await;
    Ok(Json(api_key))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only events with this action, e.g. `auth.login.failed`.
    pub action: Option<String>,
    /// Only events by this principal.
    pub principal: Option<String>,
    /// Page size (default 50, at most 500).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    pub events: Vec<AuditEvent>,
    pub next_cursor: Option<String>,
}

/// Read the audit log, newest first.
#[utoipa::path(get, path = "/v1/audit", tag = "admin", params(AuditQuery),
    responses(
        (status = 200, description = "a page of events", body = AuditPage),
        (status = 400, description = "bad limit or cursor", body = ErrorBody),
    ))]
pub async fn audit(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    let limit = page_limit(&state.config, query.limit)?;
    let before = parse_cursor(query.cursor.as_deref())?;
    let mut events = state
        .security
        .identities
        .list_audit(&AuditFilter {
            action: query.action,
            principal: query.principal,
            before,
            limit: limit + 1,
        })
        .await?;
    let next_cursor = if events.len() > limit as usize {
        events.truncate(limit as usize);
        events.last().map(|e| e.id.to_string())
    } else {
        None
    };
    Ok(Json(AuditPage {
        events,
        next_cursor,
    }))
}

#[cfg(test)]
mod tests {
    use super::check_username;
    use mcp_core::principal::subjects;

    #[test]
    fn no_username_can_take_a_subject_of_the_hub_or_of_a_credential() {
        for subject in
            subjects::ALL
                .into_iter()
                .chain(["hook:github", "discord:1234", "key:ab12cd34"])
        {
            assert!(check_username(subject).is_err(), "{subject}");
        }
        assert!(
            check_username("webhooks").is_ok(),
            "a plain name is a user's own"
        );
    }
}
