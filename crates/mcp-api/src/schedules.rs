//! Schedule routes: create, list, read, change, delete, pause, resume, trigger, and the next
//! fire times. The rules (cron, time zones, the task template, firing) are the schedule
//! service's (`mcp_core::services::schedules`).

use crate::access::Access::Requires;
use crate::endpoint::{Endpoint, endpoint};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiQuery};
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use mcp_core::Task;
use mcp_core::principal::Permission;
use mcp_core::schedule::{Schedule, SpecError};
use mcp_core::services::{CreateSchedule, ScheduleError, SchedulePatch};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

/// The routes of this module and who may call them.
pub(crate) fn endpoints() -> Vec<Endpoint<AppState>> {
    vec![
        endpoint(Requires(Permission::SchedulesWrite), routes!(create)),
        endpoint(Requires(Permission::SchedulesRead), routes!(list)),
        endpoint(Requires(Permission::SchedulesRead), routes!(get)),
        endpoint(Requires(Permission::SchedulesWrite), routes!(update)),
        endpoint(Requires(Permission::SchedulesWrite), routes!(delete)),
        endpoint(Requires(Permission::SchedulesWrite), routes!(pause)),
        endpoint(Requires(Permission::SchedulesWrite), routes!(resume)),
        endpoint(Requires(Permission::SchedulesWrite), routes!(trigger)),
        endpoint(Requires(Permission::SchedulesRead), routes!(next)),
    ]
}

impl From<ScheduleError> for ApiError {
    fn from(e: ScheduleError) -> Self {
        let message = e.to_string();
        match e {
            ScheduleError::Spec(SpecError::Cron { .. }) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_cron", message)
            }
            ScheduleError::Spec(SpecError::Timezone(_)) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown_timezone",
                message,
            ),
            ScheduleError::Invalid(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_schedule",
                message,
            ),
            ScheduleError::Task(e) => e.into(),
            ScheduleError::NotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "schedule_not_found", message)
            }
            ScheduleError::Exists(_) => {
                ApiError::new(StatusCode::CONFLICT, "schedule_exists", message)
            }
            ScheduleError::Store(e) => e.into(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleList {
    pub schedules: Vec<Schedule>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FireTimes {
    /// The next fire times, in UTC.
    pub next: Vec<DateTime<Utc>>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct NextQuery {
    /// How many fire times (1 to 100, default 5).
    pub n: Option<usize>,
}

/// Create a schedule. Invalid cron → 422 `invalid_cron`; unknown zone → 422
/// `unknown_timezone`; unknown task type → 422 `unknown_task_type`.
#[utoipa::path(post, path = "/v1/schedules", tag = "schedules", request_body = CreateSchedule,
    responses(
        (status = 201, description = "created", body = Schedule),
        (status = 409, description = "the name is taken", body = ErrorBody),
        (status = 422, description = "invalid cron, time zone, task or bounds", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<CreateSchedule>,
) -> Result<(StatusCode, Json<Schedule>), ApiError> {
    let schedule = state.schedules.create(request).await?;
    Ok((StatusCode::CREATED, Json(schedule)))
}

/// Every schedule, by name.
#[utoipa::path(get, path = "/v1/schedules", tag = "schedules",
    responses((status = 200, description = "schedules", body = ScheduleList)))]
pub async fn list(State(state): State<AppState>) -> Result<Json<ScheduleList>, ApiError> {
    Ok(Json(ScheduleList {
        schedules: state.schedules.list().await?,
    }))
}

#[utoipa::path(get, path = "/v1/schedules/{name}", tag = "schedules",
    params(("name" = String, Path, description = "schedule name")),
    responses(
        (status = 200, description = "the schedule", body = Schedule),
        (status = 404, description = "no such schedule", body = ErrorBody),
    ))]
pub async fn get(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Schedule>, ApiError> {
    Ok(Json(state.schedules.get(&name).await?))
}

/// Change a schedule; a new `cron`, `timezone` or `paused` recomputes its next fire time.
#[utoipa::path(patch, path = "/v1/schedules/{name}", tag = "schedules", request_body = SchedulePatch,
    params(("name" = String, Path, description = "schedule name")),
    responses(
        (status = 200, description = "changed", body = Schedule),
        (status = 404, description = "no such schedule", body = ErrorBody),
        (status = 422, description = "invalid change", body = ErrorBody),
    ))]
pub async fn update(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(patch): ApiJson<SchedulePatch>,
) -> Result<Json<Schedule>, ApiError> {
    Ok(Json(state.schedules.update(&name, patch).await?))
}

#[utoipa::path(delete, path = "/v1/schedules/{name}", tag = "schedules",
    params(("name" = String, Path, description = "schedule name")),
    responses(
        (status = 204, description = "deleted"),
        (status = 404, description = "no such schedule", body = ErrorBody),
    ))]
pub async fn delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.schedules.delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Pause a schedule: it fires nothing until resumed.
#[utoipa::path(post, path = "/v1/schedules/{name}/pause", tag = "schedules",
    params(("name" = String, Path, description = "schedule name")),
    responses(
        (status = 200, description = "paused", body = Schedule),
        (status = 404, description = "no such schedule", body = ErrorBody),
    ))]
pub async fn pause(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Schedule>, ApiError> {
    Ok(Json(state.schedules.set_paused(&name, true).await?))
}

/// Resume a schedule from now (times passed while paused are not caught up).
#[utoipa::path(post, path = "/v1/schedules/{name}/resume", tag = "schedules",
    params(("name" = String, Path, description = "schedule name")),
    responses(
        (status = 200, description = "resumed", body = Schedule),
        (status = 404, description = "no such schedule", body = ErrorBody),
    ))]
pub async fn resume(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Schedule>, ApiError> {
    Ok(Json(state.schedules.set_paused(&name, false).await?))
}

/// Fire a schedule now, out of turn: 201 with the task it created.
#[utoipa::path(post, path = "/v1/schedules/{name}/trigger", tag = "schedules",
    params(("name" = String, Path, description = "schedule name")),
    responses(
        (status = 201, description = "the task created", body = Task),
        (status = 404, description = "no such schedule", body = ErrorBody),
    ))]
pub async fn trigger(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<Task>), ApiError> {
    let inserted = state.schedules.trigger(&name).await?;
    Ok((StatusCode::CREATED, Json(inserted.task)))
}

/// The schedule's next fire times.
#[utoipa::path(get, path = "/v1/schedules/{name}/next", tag = "schedules",
    params(("name" = String, Path, description = "schedule name"), NextQuery),
    responses(
        (status = 200, description = "fire times", body = FireTimes),
        (status = 404, description = "no such schedule", body = ErrorBody),
        (status = 422, description = "n out of range", body = ErrorBody),
    ))]
pub async fn next(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(query): ApiQuery<NextQuery>,
) -> Result<Json<FireTimes>, ApiError> {
    let next = state
        .schedules
        .upcoming(&name, query.n.unwrap_or(5))
        .await?;
    Ok(Json(FireTimes { next }))
}
