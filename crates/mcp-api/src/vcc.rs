//! `/v1/vcc/*`: the VCC service's projects and VPM repositories. Package changes, builds and
//! deploys are tasks (`vcc.package.add`, `vcc.build`, …) so they queue, retry and stream their
//! output like any other; these routes register and show what they work on.

use crate::access::Access::Requires;
use crate::endpoint::{Endpoint, endpoint};
use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiJson;
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use mcp_core::principal::Permission;
use mcp_core::vcc::{Project, RepositoryInfo, VccError, VccErrorKind, VccPort};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::routes;

/// The routes of this module and who may call them.
pub(crate) fn endpoints() -> Vec<Endpoint<AppState>> {
    vec![
        endpoint(Requires(Permission::VccRead), routes!(list_projects)),
        endpoint(Requires(Permission::VccManage), routes!(register_project)),
        endpoint(Requires(Permission::VccRead), routes!(get_project)),
        endpoint(Requires(Permission::VccManage), routes!(unregister_project)),
        endpoint(Requires(Permission::VccRead), routes!(list_repositories)),
        endpoint(Requires(Permission::VccManage), routes!(add_repository)),
        endpoint(
            Requires(Permission::VccManage),
            routes!(refresh_repositories),
        ),
        endpoint(Requires(Permission::VccManage), routes!(remove_repository)),
    ]
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectList {
    pub projects: Vec<Project>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RepositoryList {
    pub repositories: Vec<RepositoryInfo>,
}

/// `POST /v1/vcc/projects`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterProject {
    /// Absolute path of the Unity project's folder, under one of `vcc_project_roots`.
    pub path: String,
}

/// `POST /v1/vcc/repositories`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddRepository {
    /// URL of a VPM repository listing (JSON).
    pub url: String,
}

fn service(state: &AppState) -> Result<&dyn VccPort, ApiError> {
    state.vcc.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "vcc_not_configured",
            "the VCC service does not run on this node",
        )
    })
}

impl From<VccError> for ApiError {
    fn from(e: VccError) -> Self {
        let code = e.code();
        let status = match (e.kind(), code) {
            (_, "vcc_roots_not_configured") => StatusCode::CONFLICT,
            (_, "network_error" | "upstream_error") => StatusCode::BAD_GATEWAY,
            (VccErrorKind::NotFound, _) => StatusCode::NOT_FOUND,
            (VccErrorKind::Invalid, _) => StatusCode::UNPROCESSABLE_ENTITY,
            (VccErrorKind::Conflict, _) => StatusCode::CONFLICT,
            (VccErrorKind::Unavailable, _) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, code, e.to_string()).with_details(e.details())
    }
}

#[utoipa::path(get, path = "/v1/vcc/projects", tag = "vcc",
    responses((status = 200, description = "registered projects and those in VCC's settings.json", body = ProjectList)))]
pub async fn list_projects(State(state): State<AppState>) -> Result<Json<ProjectList>, ApiError> {
    Ok(Json(ProjectList {
        projects: service(&state)?.projects().await,
    }))
}

#[utoipa::path(post, path = "/v1/vcc/projects", tag = "vcc",
    request_body = RegisterProject,
    responses(
        (status = 201, description = "registered (or already registered)", body = Project),
        (status = 404, description = "no such folder", body = ErrorBody),
        (status = 409, description = "no project roots are configured", body = ErrorBody),
        (status = 422, description = "outside the roots, not a Unity project, or a corrupt manifest", body = ErrorBody),
    ))]
pub async fn register_project(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RegisterProject>,
) -> Result<(StatusCode, Json<Project>), ApiError> {
    let project = service(&state)?
        .register_project(std::path::Path::new(&body.path))
        .await?;
    Ok((StatusCode::CREATED, Json(project)))
}

#[utoipa::path(get, path = "/v1/vcc/projects/{id}", tag = "vcc",
    params(("id" = String, Path, description = "project id")),
    responses(
        (status = 200, description = "the project", body = Project),
        (status = 404, description = "no such project", body = ErrorBody),
        (status = 422, description = "its manifest is corrupt", body = ErrorBody),
    ))]
pub async fn get_project(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Project>, ApiError> {
    Ok(Json(service(&state)?.project(&id).await?))
}

#[utoipa::path(delete, path = "/v1/vcc/projects/{id}", tag = "vcc",
    params(("id" = String, Path, description = "project id")),
    responses(
        (status = 204, description = "forgotten (its files are untouched)"),
        (status = 404, description = "no such registered project", body = ErrorBody),
    ))]
pub async fn unregister_project(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    service(&state)?.unregister_project(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/vcc/repositories", tag = "vcc",
    responses((status = 200, description = "added repositories and VCC's userRepos", body = RepositoryList)))]
pub async fn list_repositories(
    State(state): State<AppState>,
) -> Result<Json<RepositoryList>, ApiError> {
    Ok(Json(RepositoryList {
        repositories: service(&state)?.repositories().await,
    }))
}

#[utoipa::path(post, path = "/v1/vcc/repositories", tag = "vcc",
    request_body = AddRepository,
    responses(
        (status = 201, description = "fetched, validated and added", body = RepositoryInfo),
        (status = 409, description = "already added", body = ErrorBody),
        (status = 422, description = "not a VPM listing", body = ErrorBody),
        (status = 502, description = "the listing cannot be fetched", body = ErrorBody),
    ))]
pub async fn add_repository(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<AddRepository>,
) -> Result<(StatusCode, Json<RepositoryInfo>), ApiError> {
    let repository = service(&state)?.add_repository(&body.url).await?;
    Ok((StatusCode::CREATED, Json(repository)))
}

#[utoipa::path(post, path = "/v1/vcc/repositories/refresh", tag = "vcc",
    responses((status = 200, description = "every listing fetched again (conditionally, with its ETag); failures in each repository's `error`", body = RepositoryList)))]
pub async fn refresh_repositories(
    State(state): State<AppState>,
) -> Result<Json<RepositoryList>, ApiError> {
    Ok(Json(RepositoryList {
        repositories: service(&state)?.refresh_repositories().await,
    }))
}

#[utoipa::path(delete, path = "/v1/vcc/repositories/{id}", tag = "vcc",
    params(("id" = String, Path, description = "repository id")),
    responses(
        (status = 204, description = "removed"),
        (status = 404, description = "no such added repository", body = ErrorBody),
    ))]
pub async fn remove_repository(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    service(&state)?.remove_repository(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}
