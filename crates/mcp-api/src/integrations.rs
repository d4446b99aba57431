//! Integrations seen by an administrator: those of the configuration file (read-only) and those
//! configured through `PUT /v1/integrations/{name}`, each with its health and the circuit breakers
//! of the task types it serves. Secrets are sealed by the `SecretBox` before they reach the store
//! and are never returned: a reply names a secret and says it is configured, nothing more.

use crate::access::Access::Requires;
use crate::auth::{ClientIp, Principal};
use crate::endpoint::{Endpoint, endpoint};
use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiJson;
use crate::state::AppState;
pub use crate::state::{ConfiguredIntegration, Integrations};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use mcp_core::integrations::{Integration, check_name, secret_purpose};
use mcp_core::principal::Permission;
use mcp_core::routing::{BreakerState, RouteInfo};
use mcp_core::secrets::SecretBox;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::time::Duration;
use utoipa::ToSchema;
use utoipa_axum::routes;

/// The routes of this module and who may call them.
pub(crate) fn endpoints() -> Vec<Endpoint<AppState>> {
    vec![
        endpoint(Requires(Permission::IntegrationsManage), routes!(list)),
        endpoint(Requires(Permission::IntegrationsManage), routes!(get)),
        endpoint(Requires(Permission::IntegrationsManage), routes!(put)),
        endpoint(Requires(Permission::IntegrationsManage), routes!(delete)),
    ]
}

/// How long one integration's health check may take before it is reported `unknown`.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// `PUT /v1/integrations/{name}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutIntegration {
    /// The adapter it configures: `github`, `render`, `llm`, `http`, …
    pub kind: String,
    /// Non-secret settings, a JSON object (default `{}`).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub settings: Option<Value>,
    /// Secret name → value. A name left out keeps its stored value; `null` removes it.
    #[serde(default)]
    pub secrets: BTreeMap<String, Option<String>>,
    /// Default `true`.
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// A secret, as replies show it: never its value.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SecretStatus {
    pub configured: bool,
}

/// The breakers of the task types an integration serves.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BreakerSummary {
    /// The worst of them: `open` if any is open, else `half_open` if any is, else `closed`;
    /// `null` when none of its task types is routed on this node.
    pub state: Option<BreakerState>,
    /// Task type → its breaker's state.
    pub task_types: BTreeMap<String, BreakerState>,
}

/// One integration, without its secret values.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct IntegrationView {
    pub name: String,
    pub kind: String,
    /// `config` (the configuration file, read-only) or `api` (stored through this API).
    pub source: &'static str,
    pub enabled: bool,
    #[schema(value_type = Object)]
    pub settings: Value,
    pub secrets: BTreeMap<String, SecretStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<DateTime<Utc>>,
    /// `{"state": "healthy" | "degraded" | "down" | "unknown", "reason"?}`.
    #[schema(value_type = Object)]
    pub health: Value,
    pub breaker: BreakerSummary,
    /// After a `PUT` or `DELETE`: `live` (in effect now) or `restart` (from the next start).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied: Option<&'static str>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IntegrationList {
    pub integrations: Vec<IntegrationView>,
}

fn not_found(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "integration_not_found",
        format!("no integration named `{name}`"),
    )
}

fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
        .with_details(json!({"field": field}))
}

fn unavailable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "integrations_unavailable",
        "this server has no integration store",
    )
}

fn sealing_failed(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "cannot seal or open an integration secret");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "an internal error occurred; it has been logged",
    )
}

/// The worst breaker among the routed task types of `kind` (`github` → `github.*`).
fn breaker_of(kind: &str, routes: &[RouteInfo]) -> BreakerSummary {
    let prefix = format!("{kind}.");
    let task_types: BTreeMap<String, BreakerState> = routes
        .iter()
        .filter(|r| r.task_type.starts_with(&prefix))
        .map(|r| (r.task_type.clone(), r.breaker))
        .collect();
    let rank = |s: &BreakerState| match s {
        BreakerState::Closed => 0,
        BreakerState::HalfOpen => 1,
        BreakerState::Open => 2,
    };
    let state = task_types.values().copied().max_by_key(rank);
    BreakerSummary { state, task_types }
}

async fn health_of(state: &AppState, name: &str, kind: &str, enabled: bool) -> Value {
    if !enabled {
        return json!({"state": "disabled"});
    }
    let Some(runtime) = &state.integrations.runtime else {
        return json!({"state": "unknown"});
    };
    match tokio::time::timeout(HEALTH_TIMEOUT, runtime.health(name, kind)).await {
        Ok(Some(health)) => health,
        Ok(None) => json!({"state": "unknown"}),
        Err(_) => json!({"state": "unknown", "reason": "the health check timed out"}),
    }
}

fn routes(state: &AppState) -> Vec<RouteInfo> {
    let local = state.orchestrator.handlers().types();
    state.orchestrator.balancer().routes(&local)
}

async fn view_of_stored(
    state: &AppState,
    integration: Integration,
    routes: &[RouteInfo],
) -> IntegrationView {
    let health = health_of(
        state,
        &integration.name,
        &integration.kind,
        integration.enabled,
    )
    .await;
    IntegrationView {
        breaker: breaker_of(&integration.kind, routes),
        secrets: integration
            .secrets
            .keys()
            .map(|k| (k.clone(), SecretStatus { configured: true }))
            .collect(),
        name: integration.name,
        kind: integration.kind,
        source: "api",
        enabled: integration.enabled,
        settings: integration.settings,
        updated_at: Some(integration.updated_at),
        health,
        applied: None,
    }
}

async fn view_of_configured(
    state: &AppState,
    integration: &ConfiguredIntegration,
    routes: &[RouteInfo],
) -> IntegrationView {
    IntegrationView {
        name: integration.name.clone(),
        kind: integration.kind.clone(),
        source: "config",
        enabled: true,
        settings: integration.settings.clone(),
        secrets: integration
            .secrets
            .iter()
            .map(|k| (k.clone(), SecretStatus { configured: true }))
            .collect(),
        updated_at: None,
        health: health_of(state, &integration.name, &integration.kind, true).await,
        breaker: breaker_of(&integration.kind, routes),
        applied: None,
    }
}

/// List the integrations: the configuration file's (`source: config`) and the stored ones
/// (`source: api`), with health and breaker state.
#[utoipa::path(get, path = "/v1/integrations", tag = "integrations",
    responses((status = 200, description = "all integrations", body = IntegrationList)))]
pub async fn list(State(state): State<AppState>) -> Result<Json<IntegrationList>, ApiError> {
    let routes = routes(&state);
    let stored = match &state.integrations.store {
        Some(store) => store.list_integrations().await?,
        None => Vec::new(),
    };
    let mut integrations = Vec::new();
    for configured in &state.integrations.configured {
        integrations.push(view_of_configured(&state, configured, &routes).await);
    }
    for integration in stored {
        integrations.push(view_of_stored(&state, integration, &routes).await);
    }
    Ok(Json(IntegrationList { integrations }))
}

/// One integration: the stored one of that name, else the configuration file's.
#[utoipa::path(get, path = "/v1/integrations/{name}", tag = "integrations",
    params(("name" = String, Path, description = "integration name")),
    responses(
        (status = 200, description = "the integration", body = IntegrationView),
        (status = 404, description = "no such integration", body = ErrorBody),
    ))]
pub async fn get(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<IntegrationView>, ApiError> {
    let routes = routes(&state);
    if let Some(store) = &state.integrations.store
        && let Some(integration) = store.integration(&name).await?
    {
        return Ok(Json(view_of_stored(&state, integration, &routes).await));
    }
    match state
        .integrations
        .configured
        .iter()
        .find(|c| c.name == name)
    {
        Some(configured) => Ok(Json(view_of_configured(&state, configured, &routes).await)),
        None => Err(not_found(&name)),
    }
}

/// Create or replace a stored integration. Each secret is sealed (purpose
/// `integration:<name>:<secret>`) before it is stored; the reply names the secrets, never their
/// values. Settings of a kind the running node knows (`llm`, `github`) are applied at once.
#[utoipa::path(put, path = "/v1/integrations/{name}", tag = "integrations",
    request_body = PutIntegration,
    params(("name" = String, Path, description = "integration name")),
    responses(
        (status = 200, description = "stored", body = IntegrationView),
        (status = 422, description = "bad name, kind, settings or secret", body = ErrorBody),
        (status = 503, description = "no integration store", body = ErrorBody),
    ))]
pub async fn put(
    State(state): State<AppState>,
    principal: Principal,
    ip: ClientIp,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<PutIntegration>,
) -> Result<Json<IntegrationView>, ApiError> {
    check_name(&name).map_err(|e| invalid("name", e))?;
    check_name(&request.kind).map_err(|e| invalid("kind", e))?;
    let settings = request
        .settings
        .unwrap_or_else(|| Value::Object(Map::new()));
    if !settings.is_object() {
        return Err(invalid("settings", "settings must be a JSON object"));
    }
    let (Some(store), Some(sealer)) = (&state.integrations.store, &state.integrations.secrets)
    else {
        return Err(unavailable());
    };
    let previous = store.integration(&name).await?;
    // Secrets left out keep their stored (sealed) value, unless the kind changed.
    let mut sealed: BTreeMap<String, String> = previous
        .as_ref()
        .filter(|p| p.kind == request.kind)
        .map(|p| p.secrets.clone())
        .unwrap_or_default();
    let mut changed = Vec::new();
    for (key, value) in &request.secrets {
        check_name(key).map_err(|e| invalid(&format!("secrets.{key}"), e))?;
        match value {
            Some(value) => {
                let purpose = secret_purpose(&name, key);
                let seal = sealer
                    .seal(value.as_bytes(), &purpose)
                    .map_err(sealing_failed)?;
                sealed.insert(key.clone(), seal);
            }
            None => {
                sealed.remove(key);
            }
        }
        changed.push(key.clone());
    }
    let enabled = request.enabled.unwrap_or(true);
    let integration = Integration {
        name: name.clone(),
        kind: request.kind,
        settings,
        secrets: sealed,
        enabled,
        updated_at: Utc::now(),
    };
    // Check the settings with the adapter before storing them, so a bad one is refused.
    let applied = match (&state.integrations.runtime, enabled) {
        (Some(runtime), true) => {
            let opened = open_secrets(sealer, &integration)?;
            runtime
                .apply(&integration.kind, &integration.settings, &opened)
                .map_err(|e| invalid("settings", e))?
        }
        (Some(runtime), false) => runtime.remove(&integration.kind),
        (None, _) => false,
    };
    store.put_integration(&integration).await?;
    state
        .security
        .audit(
            "integration.updated",
            Some(&principal.subject),
            ip,
            // Which secrets changed, never their values.
            json!({"integration": name, "kind": integration.kind, "enabled": enabled,
                   "secrets_changed": changed}),
        )
        .await;
    let mut view = view_of_stored(&state, integration, &routes(&state)).await;
    view.applied = Some(if applied { "live" } else { "restart" });
    Ok(Json(view))
}

/// The secrets of `integration`, opened.
fn open_secrets(
    sealer: &SecretBox,
    integration: &Integration,
) -> Result<BTreeMap<String, String>, ApiError> {
    integration
        .secrets
        .iter()
        .map(|(key, sealed)| {
            let bytes = sealer
                .open(sealed, &secret_purpose(&integration.name, key))
                .map_err(sealing_failed)?;
            let text = String::from_utf8(bytes).map_err(sealing_failed)?;
            Ok((key.clone(), text))
        })
        .collect()
}

/// Delete a stored integration; its kind's adapter goes back to the configuration file's
/// settings. The configuration file's integrations cannot be deleted here (409).
#[utoipa::path(delete, path = "/v1/integrations/{name}", tag = "integrations",
    params(("name" = String, Path, description = "integration name")),
    responses(
        (status = 204, description = "deleted"),
        (status = 404, description = "no such integration", body = ErrorBody),
        (status = 409, description = "configured in the file, read-only", body = ErrorBody),
    ))]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    ip: ClientIp,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let existing = match &state.integrations.store {
        Some(store) => store.integration(&name).await?,
        None => None,
    };
    let Some(existing) = existing else {
        if state.integrations.configured.iter().any(|c| c.name == name) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "integration_read_only",
                format!("`{name}` comes from the configuration file; change it there"),
            ));
        }
        return Err(not_found(&name));
    };
    if let Some(store) = &state.integrations.store
        && !store.delete_integration(&name).await?
    {
        return Err(not_found(&name));
    }
    if let Some(runtime) = &state.integrations.runtime {
        runtime.remove(&existing.kind);
    }
    state
        .security
        .audit(
            "integration.deleted",
            Some(&principal.subject),
            ip,
            json!({"integration": name, "kind": existing.kind}),
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(task_type: &str, breaker: BreakerState) -> RouteInfo {
        RouteInfo {
            task_type: task_type.into(),
            target: "local",
            workers: Vec::new(),
            breaker,
        }
    }

    #[test]
    fn an_integrations_breaker_is_the_worst_of_its_task_types() {
        let routes = [
            route("github.dispatch", BreakerState::Closed),
            route("github.other", BreakerState::Open),
            route("llm.generate", BreakerState::HalfOpen),
        ];
        assert_eq!(
            breaker_of("github", &routes).state,
            Some(BreakerState::Open)
        );
        assert_eq!(
            breaker_of("llm", &routes).state,
            Some(BreakerState::HalfOpen)
        );
        let none = breaker_of("render", &routes);
        assert_eq!(none.state, None);
        assert!(none.task_types.is_empty());
    }
}
