//! `GET /v1/stats`: what the console's Overview charts — tasks finished per minute by outcome
//! and their pickup latency over a recent window, and the current counts per queue and status.
//! The store computes it in SQL over the whole cluster's tasks (`mcp_core::stats`), so it holds
//! under load, where the newest page of tasks may span only seconds.
//!
//! It needs `tasks:read:any`, like `GET /v1/queues`: the numbers cover every creator's tasks,
//! and the people who read the Overview (operators, admins) hold it; `metrics:read` is for the
//! Prometheus scrape, which has its own series.

use crate::access::Access::Requires;
use crate::endpoint::{Endpoint, endpoint};
use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiQuery;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use mcp_core::principal::Permission;
use mcp_core::stats::{MinuteStats, StatsError, Window, window_stats};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

/// The routes of this module and who may call them.
pub(crate) fn endpoints() -> Vec<Endpoint<AppState>> {
    vec![endpoint(Requires(Permission::TasksReadAny), routes!(stats))]
}

impl From<StatsError> for ApiError {
    fn from(e: StatsError) -> Self {
        let message = e.to_string();
        match e {
            StatsError::InvalidWindow => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
            }
            StatsError::Store(e) => e.into(),
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    /// The window, in whole minutes ending with the current one: `15m` (the default), `1h`,
    /// up to `24h`.
    pub window: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TaskStats {
    /// The window in minutes.
    pub window_minutes: u32,
    /// The start of the first minute.
    pub since: DateTime<Utc>,
    /// The end of the last (current, partial) minute.
    pub until: DateTime<Utc>,
    /// One entry per minute, oldest first, empty minutes included.
    pub minutes: Vec<MinuteStats>,
    /// Task counts per queue, then per status, now.
    pub queues: BTreeMap<String, BTreeMap<String, u64>>,
}

/// Tasks finished per minute by outcome, with pickup latency percentiles (`run_at` to
/// `started_at`), over a recent window, cluster-wide; and the current counts per queue.
#[utoipa::path(get, path = "/v1/stats", tag = "tasks", params(StatsQuery),
    responses(
        (status = 200, description = "the statistics", body = TaskStats),
        (status = 422, description = "invalid window", body = ErrorBody),
    ))]
pub async fn stats(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<StatsQuery>,
) -> Result<Json<TaskStats>, ApiError> {
    let window = match query.window.as_deref() {
        Some(text) => Window::parse(text)?,
        None => Window::default(),
    };
    let store = state.orchestrator.store();
    let series = window_stats(store.as_ref(), window, Utc::now()).await?;
    let mut queues: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for ((queue, status), n) in store.counts().await? {
        queues
            .entry(queue)
            .or_default()
            .insert(status.as_str().to_owned(), n);
    }
    Ok(Json(TaskStats {
        window_minutes: window.as_minutes(),
        since: series.since,
        until: series.until,
        minutes: series.minutes,
        queues,
    }))
}
