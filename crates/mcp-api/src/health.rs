//! Probes and metrics: `/healthz` says the process serves HTTP, `/readyz` that it can serve
//! requests (no critical dependency is down, as the health monitor last saw it), `/v1/health`
//! shows every dependency, `/metrics` shows counters in Prometheus's text format.

use crate::access::Access::{Public, Requires};
use crate::endpoint::{Endpoint, endpoint};
use crate::error::ApiError;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use mcp_core::health::DependencyHealth;
use mcp_core::principal::Permission;
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use utoipa::ToSchema;
use utoipa_axum::routes;

/// The routes of this module and who may call them.
pub(crate) fn endpoints() -> Vec<Endpoint<AppState>> {
    vec![
        endpoint(Public, routes!(healthz)),
        endpoint(Public, routes!(readyz)),
        endpoint(Requires(Permission::HealthRead), routes!(health)),
        endpoint(Requires(Permission::MetricsRead), routes!(metrics)),
    ]
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "alive")))]
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// The node can serve: no critical dependency (the database) is down. Answered from the health
/// monitor's state, never by waiting on a dependency, so a probe with a short timeout never sees
/// a hang.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, description = "ready"),
              (status = 503, description = "`not_ready`: `details.failing` names the dependencies that are down", body = crate::error::ErrorBody)))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let failing = state.health.failing();
    if failing.is_empty() {
        return Ok(Json(json!({"status": "ready"})));
    }
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "not_ready",
        format!("not ready: {} down", failing.join(", ")),
    )
    .with_retry_after(1)
    .with_details(json!({"failing": failing})))
}

/// Every dependency of this node as its health monitor sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthReport {
    /// `ready` or `not_ready`, as `/readyz` answers.
    pub status: String,
    /// This node (the owner of its task leases).
    pub node_id: String,
    pub dependencies: Vec<DependencyHealth>,
}

/// The state of each dependency: `up`, `degraded` or `down`, since when, the last error, and
/// whether it is critical (down ⇒ not ready).
#[utoipa::path(get, path = "/v1/health", tag = "health",
    responses((status = 200, description = "every dependency", body = HealthReport),
              (status = 401, description = "no credentials", body = crate::error::ErrorBody),
              (status = 403, description = "needs `health:read`", body = crate::error::ErrorBody)))]
pub async fn health(State(state): State<AppState>) -> Json<HealthReport> {
    let ready = state.health.failing().is_empty();
    Json(HealthReport {
        status: if ready { "ready" } else { "not_ready" }.to_owned(),
        node_id: state.orchestrator.config().node_id.clone(),
        dependencies: state.health.snapshot(),
    })
}

/// Prometheus metrics: HTTP, tasks, WebSockets, the bus, breakers, the database pool,
/// dependencies, rate limits and webhooks (`docs/operations.md`, "Metrics").
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain"),
              (status = 401, description = "no credentials", body = crate::error::ErrorBody),
              (status = 403, description = "not an admin nor the scrape token", body = crate::error::ErrorBody)))]
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let Some(render) = &state.metrics else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "metrics are not enabled on this server",
        ));
    };
    if let Ok(counts) = state.orchestrator.store().counts().await {
        // A pair counted before and absent now has no task left: it reads 0, not its last count.
        static SEEN: std::sync::Mutex<BTreeSet<(String, &str)>> =
            std::sync::Mutex::new(BTreeSet::new());
        let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
        let mut now = BTreeSet::new();
        for ((queue, status), n) in counts {
            metrics::gauge!("mcp_tasks", "queue" => queue.clone(), "status" => status.as_str())
                .set(n as f64);
            now.insert((queue, status.as_str()));
        }
        for (queue, status) in seen.difference(&now) {
            metrics::gauge!("mcp_tasks", "queue" => queue.clone(), "status" => *status).set(0.0);
        }
        seen.extend(now);
    }
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render(),
    )
        .into_response())
}
