//! `/v1/vrchat/*`: reads of VRChat's web API through the hub's one logged-in session (users,
//! worlds, instances, friends online; VRChat's JSON as VRChat sends it), the session's state,
//! and the two-factor code an emailed login waits for. The same reads exist as task types
//! (`vrchat.user.get`, …) for callers that want them queued, retried and recorded.

use crate::access::Access::Requires;
use crate::endpoint::{Endpoint, endpoint};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiQuery};
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use mcp_core::principal::Permission;
use mcp_core::vrchat::{MAX_FRIENDS_PAGE, SessionState, VrchatError, VrchatPort, split_location};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

/// The routes of this module and who may call them.
pub(crate) fn endpoints() -> Vec<Endpoint<AppState>> {
    vec![
        endpoint(Requires(Permission::VrchatRead), routes!(status)),
        endpoint(Requires(Permission::IntegrationsManage), routes!(login)),
        endpoint(
            Requires(Permission::IntegrationsManage),
            routes!(submit_code),
        ),
        endpoint(Requires(Permission::VrchatRead), routes!(current_user)),
        endpoint(Requires(Permission::VrchatRead), routes!(user)),
        endpoint(Requires(Permission::VrchatRead), routes!(world)),
        endpoint(Requires(Permission::VrchatRead), routes!(instance)),
        endpoint(Requires(Permission::VrchatRead), routes!(friends_online)),
    ]
}

/// Where the hub's VRChat session stands.
#[derive(Debug, Serialize, ToSchema)]
pub struct VrchatStatus {
    /// `logged_out`, `needs_code`, `logged_in` or `failed`.
    pub state: String,
    /// With `needs_code`: what VRChat asks for (`emailOtp`, `totp`, `otp`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// With `failed`: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The client's circuit breaker: `closed`, `open` or `half_open`.
    pub breaker: String,
}

/// `POST /v1/vrchat/auth/code`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitCode {
    /// The code VRChat emailed, an authenticator code, or a recovery code.
    pub code: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FriendsQuery {
    /// Page size, 1 to 100 (default 100).
    pub n: Option<u32>,
    /// Friends to skip.
    pub offset: Option<u32>,
}

fn client(state: &AppState) -> Result<&dyn VrchatPort, ApiError> {
    state.vrchat.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "vrchat_not_configured",
            "no VRChat account is configured (vrchat_username and vrchat_password)",
        )
    })
}

fn status_of(client: &dyn VrchatPort) -> VrchatStatus {
    let mut status = VrchatStatus {
        state: String::new(),
        methods: None,
        user_id: None,
        display_name: None,
        reason: None,
        breaker: client.breaker_state().as_str().to_owned(),
    };
    status.state = match client.state() {
        SessionState::LoggedOut => "logged_out",
        SessionState::NeedsCode { methods } => {
            status.methods = Some(methods);
            "needs_code"
        }
        SessionState::LoggedIn {
            user_id,
            display_name,
        } => {
            status.user_id = Some(user_id);
            status.display_name = Some(display_name);
            "logged_in"
        }
        SessionState::Failed { reason } => {
            status.reason = Some(reason);
            "failed"
        }
    }
    .to_owned();
    status
}

impl From<VrchatError> for ApiError {
    fn from(e: VrchatError) -> Self {
        let status = match &e {
            VrchatError::NeedsCode { .. } => StatusCode::CONFLICT,
            VrchatError::NotFound(_) => StatusCode::NOT_FOUND,
            VrchatError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            VrchatError::LoginFailed(_) | VrchatError::Rejected { .. } => StatusCode::BAD_GATEWAY,
            VrchatError::RateLimited { .. } | VrchatError::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        let code = match &e {
            VrchatError::Invalid(_) => "invalid_request",
            other => other.code(),
        };
        let mut error = ApiError::new(status, code, e.to_string());
        if let Some(seconds) = e.retry_after_secs() {
            error = error.with_retry_after(seconds);
        }
        error
    }
}

#[utoipa::path(get, path = "/v1/vrchat/status", tag = "vrchat",
    responses(
        (status = 200, description = "the session's state", body = VrchatStatus),
        (status = 404, description = "no VRChat account configured", body = ErrorBody),
    ))]
pub async fn status(State(state): State<AppState>) -> Result<Json<VrchatStatus>, ApiError> {
    Ok(Json(status_of(client(&state)?)))
}

#[utoipa::path(post, path = "/v1/vrchat/auth/login", tag = "vrchat",
    responses(
        (status = 200, description = "logged in, or waiting for a code", body = VrchatStatus),
        (status = 502, description = "VRChat refused the credentials", body = ErrorBody),
        (status = 503, description = "VRChat cannot be reached", body = ErrorBody),
    ))]
pub async fn login(State(state): State<AppState>) -> Result<Json<VrchatStatus>, ApiError> {
    let client = client(&state)?;
    client.login_now().await?;
    Ok(Json(status_of(client)))
}

#[utoipa::path(post, path = "/v1/vrchat/auth/code", tag = "vrchat",
    request_body = SubmitCode,
    responses(
        (status = 200, description = "the code was accepted", body = VrchatStatus),
        (status = 422, description = "not a code", body = ErrorBody),
        (status = 502, description = "VRChat refused the code", body = ErrorBody),
    ))]
pub async fn submit_code(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<SubmitCode>,
) -> Result<Json<VrchatStatus>, ApiError> {
    let client = client(&state)?;
    client.submit_code(&body.code).await?;
    Ok(Json(status_of(client)))
}

#[utoipa::path(get, path = "/v1/vrchat/users/me", tag = "vrchat",
    responses(
        (status = 200, description = "VRChat's CurrentUser", body = Object),
        (status = 409, description = "the login waits for a two-factor code", body = ErrorBody),
    ))]
pub async fn current_user(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(client(&state)?.current_user().await?))
}

#[utoipa::path(get, path = "/v1/vrchat/users/{id}", tag = "vrchat",
    params(("id" = String, Path, description = "VRChat user id (`usr_…`)")),
    responses(
        (status = 200, description = "VRChat's User", body = Object),
        (status = 404, description = "no such user", body = ErrorBody),
    ))]
pub async fn user(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(client(&state)?.user(&id).await?))
}

#[utoipa::path(get, path = "/v1/vrchat/worlds/{id}", tag = "vrchat",
    params(("id" = String, Path, description = "VRChat world id (`wrld_…`)")),
    responses(
        (status = 200, description = "VRChat's World", body = Object),
        (status = 404, description = "no such world", body = ErrorBody),
    ))]
pub async fn world(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(client(&state)?.world(&id).await?))
}

#[utoipa::path(get, path = "/v1/vrchat/instances/{location}", tag = "vrchat",
    params(("location" = String, Path, description = "`world id:instance id`, as VRChat writes locations")),
    responses(
        (status = 200, description = "VRChat's Instance", body = Object),
        (status = 404, description = "no such instance", body = ErrorBody),
        (status = 422, description = "not a location", body = ErrorBody),
    ))]
pub async fn instance(
    State(state): State<AppState>,
    Path(location): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let client = client(&state)?;
    let (world, instance) = split_location(&location).map_err(VrchatError::Invalid)?;
    Ok(Json(client.instance(&world, &instance).await?))
}

#[utoipa::path(get, path = "/v1/vrchat/friends/online", tag = "vrchat",
    params(FriendsQuery),
    responses(
        (status = 200, description = "one page of VRChat's LimitedUser, online friends only", body = Vec<Object>),
    ))]
pub async fn friends_online(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<FriendsQuery>,
) -> Result<Json<Value>, ApiError> {
    let client = client(&state)?;
    let n = query.n.unwrap_or(MAX_FRIENDS_PAGE);
    Ok(Json(
        client.friends_online(n, query.offset.unwrap_or(0)).await?,
    ))
}
