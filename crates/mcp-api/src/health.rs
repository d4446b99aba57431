//! Probes and metrics: `/healthz` says the process serves HTTP, `/readyz` that it can serve
//! requests (the database answers), `/metrics` shows counters in Prometheus's text format.

use crate::AppState;
use crate::error::ApiError;
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "alive")))]
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// The node can serve: its database answers.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, description = "ready"),
              (status = 503, description = "database unreachable", body = crate::ErrorBody)))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    match state.orchestrator.store().ping().await {
        Ok(()) => Ok(Json(json!({"status": "ready"}))),
        Err(e) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
            format!("the database does not answer: {e}"),
        )),
    }
}

/// Prometheus metrics: HTTP requests and latencies, and task counts per queue and status.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain"),
              (status = 401, description = "no credentials", body = crate::ErrorBody),
              (status = 403, description = "not an admin nor the scrape token", body = crate::ErrorBody)))]
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let Some(render) = &state.metrics else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "metrics are not enabled on this server",
        ));
    };
    if let Ok(counts) = state.orchestrator.store().counts().await {
        for ((queue, status), n) in counts {
            metrics::gauge!("mcp_tasks", "queue" => queue, "status" => status.as_str())
                .set(n as f64);
        }
    }
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render(),
    )
        .into_response())
}
