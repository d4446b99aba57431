//! `/docs`: an interactive reference for `/openapi.json` (Swagger UI). Every file it needs is
//! inside the binary (`utoipa-swagger-ui`'s `vendored` files), so it works offline, and its page
//! runs no inline script, so it is served under a Content Security Policy that allows only this
//! origin's scripts.

use crate::access::Access::Public;
use crate::endpoint::{Endpoint, endpoint};
use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use std::sync::{Arc, LazyLock};
use utoipa_swagger_ui::Config;

/// Scripts and styles from this origin only (Swagger UI sets inline `style` attributes); data
/// URLs for its icons; nothing may frame the page.
const POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
    img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'self'; \
    form-action 'self'; frame-ancestors 'none'";

/// The page reads the document the API serves.
static CONFIG: LazyLock<Arc<Config<'static>>> =
    LazyLock::new(|| Arc::new(Config::from("/openapi.json")));

pub(crate) fn endpoints() -> Vec<Endpoint<AppState>> {
    vec![
        endpoint(Public, utoipa_axum::routes!(docs)),
        endpoint(Public, utoipa_axum::routes!(docs_index)),
        endpoint(Public, utoipa_axum::routes!(docs_file)),
    ]
}

/// The API reference page (redirects to `/docs/`, which its relative links need).
#[utoipa::path(get, path = "/docs", tag = "health",
    responses((status = 303, description = "to `/docs/`")))]
pub async fn docs() -> Redirect {
    Redirect::to("/docs/")
}

/// The API reference page: Swagger UI for `/openapi.json`, served from the binary.
#[utoipa::path(get, path = "/docs/", tag = "health",
    responses((status = 200, description = "the page", content_type = "text/html")))]
pub async fn docs_index() -> Result<Response, ApiError> {
    file("index.html")
}

/// One of the page's files (scripts, styles, icons), served from the binary.
#[utoipa::path(get, path = "/docs/{file}", tag = "health",
    params(("file" = String, Path, description = "e.g. `swagger-ui-bundle.js`")),
    responses(
        (status = 200, description = "the file"),
        (status = 404, description = "no such file", body = crate::error::ErrorBody),
    ))]
pub async fn docs_file(Path(name): Path<String>) -> Result<Response, ApiError> {
    file(&name)
}

fn file(name: &str) -> Result<Response, ApiError> {
    let found = utoipa_swagger_ui::serve(name, CONFIG.clone())
        .map_err(|e| {
            tracing::error!(error = %e, file = name, "docs: cannot serve a file");
            ApiError::internal()
        })?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such file in the API reference",
            )
        })?;
    let content_type = HeaderValue::from_str(&found.content_type)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(POLICY),
            ),
        ],
        found.bytes.into_owned(),
    )
        .into_response())
}
