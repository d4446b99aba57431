//! Incoming webhooks: `POST /v1/hooks/{source}`. The route needs no credentials; each configured
//! source authenticates its deliveries by signature (core's `HookVerifier`). A verified hook
//! is published as the event `hook.{source}.{event}` on `hooks:{source}` and `hooks`, and its
//! source's matching rules become tasks created by `hook:{source}`. Anything unverified, stale or
//! replayed is refused with 401 before anything is stored or published.

pub(crate) mod config;

pub use config::HooksConfig;

use crate::access::Access::Public;
use crate::endpoint::{Endpoint, endpoint};
use crate::error::{ApiError, ErrorBody};
use crate::request_id;
use crate::state::AppState;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use mcp_core::events::Event;
use mcp_core::hooks::HookError;
use mcp_core::services::Creator;
use serde::Serialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Instant;
use utoipa::ToSchema;
use utoipa_axum::routes;
use uuid::Uuid;

/// The routes of this module and who may call them.
pub(crate) fn endpoints() -> Vec<Endpoint<AppState>> {
    vec![
        // Authenticates itself: each source's deliveries carry a signature over the body, checked
        // by the handler (docs/integrations.md).
        endpoint(Public, routes!(receive)).body_limit(|state| state.config.hooks.max_body_bytes),
    ]
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HookAccepted {
    /// The published event type, `hook.{source}.{event}`.
    pub event: String,
    /// The tasks the source's rules created, in rule order.
    pub tasks: Vec<Uuid>,
}

fn refused(error: &HookError) -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_signature",
        error.to_string(),
    )
}

/// Receive a signed webhook from a configured source (GitHub, Standard Webhooks, generic HMAC).
#[utoipa::path(post, path = "/v1/hooks/{source}", tag = "integrations",
    params(("source" = String, Path, description = "a key of the `hooks` configuration")),
    request_body(content = String, description = "the sender's body, verified byte for byte"),
    responses(
        (status = 202, description = "verified: the event is published and the rules' tasks are queued", body = HookAccepted),
        (status = 401, description = "`invalid_signature`: missing or wrong signature, stale timestamp, or a replayed delivery id; nothing is stored", body = ErrorBody),
        (status = 404, description = "`unknown_hook_source`: no such source is configured", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 422, description = "`unknown_task_type`: a matching rule names a task type nobody serves", body = ErrorBody),
    ))]
pub async fn receive(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<HookAccepted>), ApiError> {
    let config = &state.config.hooks;
    let verifier = config
        .verifier
        .as_deref()
        .filter(|verifier| verifier.knows(&name))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_hook_source",
                format!("no hook source `{name}` is configured"),
            )
        })?;
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("hook bodies are limited to {} bytes", config.max_body_bytes),
            )
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                rejection.body_text(),
            )
        }
    })?;
    let pairs: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let now = chrono::Utc::now().timestamp();
    let verified = verifier.verify(&name, &pairs, &body, now).map_err(|e| {
        tracing::warn!(source = %name, error = %e, "hook refused");
        refused(&e)
    })?;

    // A body that is not JSON (a form post) is still a hook: its rules see `null`, its event
    // carries the text.
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let json_body = parsed.clone().unwrap_or(Value::Null);
    let created_by = format!("hook:{name}");
    let creator = Creator::Internal(&created_by);
    let correlation = request_id::current();
    // Prepared before the replay check: a rule that cannot make a task leaves the delivery
    // unconsumed, so the sender's retry works once the configuration is fixed.
    let tasks = state
        .tasks
        .prepare(
            creator,
            verifier.tasks(&name, &verified, &json_body),
            correlation.as_deref(),
        )
        .await?;
    verifier
        .check_replay(&format!("{name}:{}", verified.delivery), Instant::now())
        .map_err(|e| {
            tracing::warn!(source = %name, error = %e, "hook replay refused");
            refused(&e)
        })?;

    let inserted = state.tasks.insert(creator, tasks).await?;
    let ids: Vec<Uuid> = inserted.iter().map(|i| i.task.id).collect();
    let event_type = format!("hook.{name}.{}", verified.event);
    let data = json!({
        "source": name,
        "event": verified.event,
        "delivery": verified.delivery,
        "body": parsed.unwrap_or_else(|| Value::String(String::from_utf8_lossy(&body).into_owned())),
        "tasks": ids,
    });
    let event = Arc::new(Event::new(event_type.clone(), data, correlation.clone()));
    for channel in [format!("hooks:{name}"), "hooks".to_owned()] {
        if let Err(e) = state.events.publish(&channel, event.clone()).await {
            tracing::warn!(channel, error = %e, "hook event not published");
        }
    }
    tracing::info!(source = %name, event = %event_type, tasks = ids.len(), "hook accepted");
    Ok((
        StatusCode::ACCEPTED,
        Json(HookAccepted {
            event: event_type,
            tasks: ids,
        }),
    ))
}
