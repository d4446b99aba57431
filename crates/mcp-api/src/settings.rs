//! Runtime settings and feature flags: `GET`/`PATCH /v1/settings`, `GET /v1/flags`,
//! `PUT`/`DELETE /v1/flags/{name}`. The rules (which keys are dynamic, what is valid, how a
//! change reaches every node) are core's `Settings` and `Flags`; changes are audited here.

use crate::access::Access::{Authenticated, Requires};
use crate::auth::{ClientIp, Principal};
use crate::endpoint::{Endpoint, endpoint};
use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiJson;
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use mcp_core::flags::{Flag, FlagEntry, FlagError, Flags};
use mcp_core::principal::Permission;
use mcp_core::settings::{Effective, Setting, Settings, SettingsError};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use utoipa::ToSchema;
use utoipa_axum::routes;

/// The routes of this module and who may call them.
pub(crate) fn endpoints() -> Vec<Endpoint<AppState>> {
    vec![
        endpoint(Requires(Permission::SettingsRead), routes!(get_settings)),
        endpoint(
            Requires(Permission::SettingsManage),
            routes!(patch_settings),
        ),
        endpoint(Requires(Permission::SettingsRead), routes!(list_flags)),
        endpoint(Authenticated, routes!(my_flags)),
        endpoint(Requires(Permission::SettingsManage), routes!(put_flag)),
        endpoint(Requires(Permission::SettingsManage), routes!(delete_flag)),
    ]
}

/// Every dynamic setting with its effective value and where it comes from.
#[derive(Debug, Serialize, ToSchema)]
pub struct SettingsView {
    pub settings: BTreeMap<String, Setting>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FlagList {
    pub flags: Vec<FlagEntry>,
}

fn unavailable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "settings_unavailable",
        "runtime settings are not available on this node",
    )
}

fn settings(state: &AppState) -> Result<&Arc<Settings>, ApiError> {
    state.settings.as_ref().ok_or_else(unavailable)
}

fn flags(state: &AppState) -> Result<&Arc<Flags>, ApiError> {
    state.flags.as_ref().ok_or_else(unavailable)
}

fn view(effective: &Effective) -> SettingsView {
    SettingsView {
        settings: effective.clone(),
    }
}

/// Read the runtime settings: each effective value and its source (`default`, `file`, `env`,
/// `runtime`).
#[utoipa::path(get, path = "/v1/settings", tag = "settings",
    responses((status = 200, description = "the dynamic settings", body = SettingsView)))]
pub async fn get_settings(State(state): State<AppState>) -> Result<Json<SettingsView>, ApiError> {
    Ok(Json(view(&settings(&state)?.effective())))
}

/// Change runtime settings: a JSON object of key → new value, or `null` to drop the runtime
/// value (the file's, environment's or default value applies again). All or nothing; the node
/// that takes it puts it in force before answering, every other node within a second.
#[utoipa::path(patch, path = "/v1/settings", tag = "settings",
    request_body(content = BTreeMap<String, serde_json::Value>, description = "key → value (or null)"),
    responses(
        (status = 200, description = "applied", body = SettingsView),
        (status = 422, description = "`setting_not_dynamic`, `setting_unknown` or `invalid_setting`", body = ErrorBody),
    ))]
pub async fn patch_settings(
    State(state): State<AppState>,
    principal: Principal,
    ip: ClientIp,
    ApiJson(changes): ApiJson<Value>,
) -> Result<Json<SettingsView>, ApiError> {
    let Value::Object(changes) = changes else {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_setting",
            "the body is a JSON object of setting → value",
        ));
    };
    let changes: BTreeMap<String, Value> = changes.into_iter().collect();
    if changes.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_setting",
            "name at least one setting",
        ));
    }
    let effective = settings(&state)?
        .patch(&changes, &principal.subject)
        .await?;
    state
        .security
        .audit(
            "settings.changed",
            Some(&principal.subject),
            ip,
            json!({"changes": changes}),
        )
        .await;
    Ok(Json(view(&effective)))
}

/// List the feature flags.
#[utoipa::path(get, path = "/v1/flags", tag = "settings",
    responses((status = 200, description = "every flag, by name", body = FlagList)))]
pub async fn list_flags(State(state): State<AppState>) -> Result<Json<FlagList>, ApiError> {
    Ok(Json(FlagList {
        flags: flags(&state)?.list(),
    }))
}

/// Every flag as it evaluates for the caller.
#[derive(Debug, Serialize, ToSchema)]
pub struct MyFlags {
    /// Flag name → on for the caller.
    pub flags: BTreeMap<String, bool>,
}

/// The feature flags as they are for the caller (its subject and role): what a client asks to
/// know which features are rolled out to it.
#[utoipa::path(get, path = "/v1/flags/mine", tag = "settings",
    responses((status = 200, description = "flag name → on for the caller", body = MyFlags)))]
pub async fn my_flags(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<MyFlags>, ApiError> {
    let flags = flags(&state)?;
    Ok(Json(MyFlags {
        flags: flags
            .list()
            .into_iter()
            .map(|entry| {
                let on = flags.enabled(&entry.name, &principal.0);
                (entry.name, on)
            })
            .collect(),
    }))
}

/// Set a feature flag: `{"enabled": bool}`, or a rollout to a percentage of subjects,
/// optionally only for some `roles` or always for some `subjects`. A disabled
/// `integration.<prefix>` flag makes the tasks of types `<prefix>.*` wait.
#[utoipa::path(put, path = "/v1/flags/{name}", tag = "settings", request_body = Flag,
    params(("name" = String, Path, description = "flag name")),
    responses(
        (status = 200, description = "stored", body = FlagEntry),
        (status = 422, description = "bad name or flag", body = ErrorBody),
    ))]
pub async fn put_flag(
    State(state): State<AppState>,
    principal: Principal,
    ip: ClientIp,
    Path(name): Path<String>,
    ApiJson(flag): ApiJson<Flag>,
) -> Result<Json<FlagEntry>, ApiError> {
    let entry = flags(&state)?.put(&name, flag, &principal.subject).await?;
    state
        .security
        .audit(
            "flag.changed",
            Some(&principal.subject),
            ip,
            json!({"flag": name, "value": entry.flag}),
        )
        .await;
    Ok(Json(entry))
}

/// Delete a feature flag.
#[utoipa::path(delete, path = "/v1/flags/{name}", tag = "settings",
    params(("name" = String, Path, description = "flag name")),
    responses(
        (status = 204, description = "deleted"),
        (status = 404, description = "no such flag", body = ErrorBody),
    ))]
pub async fn delete_flag(
    State(state): State<AppState>,
    principal: Principal,
    ip: ClientIp,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    flags(&state)?.delete(&name).await?;
    state
        .security
        .audit(
            "flag.deleted",
            Some(&principal.subject),
            ip,
            json!({"flag": name}),
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

impl From<SettingsError> for ApiError {
    fn from(e: SettingsError) -> Self {
        let code = match e {
            SettingsError::Store(e) => return e.into(),
            SettingsError::NotDynamic(_) => "setting_not_dynamic",
            SettingsError::Unknown(_) => "setting_unknown",
            SettingsError::Invalid(_) => "invalid_setting",
        };
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, e.to_string())
    }
}

impl From<FlagError> for ApiError {
    fn from(e: FlagError) -> Self {
        match e {
            FlagError::Invalid(message) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_flag", message)
            }
            FlagError::NotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "flag_not_found", e.to_string())
            }
            FlagError::Store(e) => e.into(),
        }
    }
}
