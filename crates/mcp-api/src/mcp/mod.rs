//! The Model Context Protocol endpoint at `/mcp` (Streamable HTTP, through the official SDK
//! `rmcp`): the hub's tasks, memory, queues, routes and integrations as MCP tools, resources and
//! prompts, for AI assistants. Nothing here is a rule of its own: every tool calls the core
//! service its REST twin calls, as the caller's `Principal`, after the same permission check.
//!
//! Requests are served statelessly (no `Mcp-Session-Id`), so any node of a cluster can answer
//! any request; subscriptions ride on the `subscriptions/listen` request's own stream and are
//! fed by the event bus, which every node shares (`docs/mcp.md`).
//!
//! Around the SDK, in our own JSON errors: `gate` refuses a `Host` outside `mcp_allowed_hosts`
//! (DNS rebinding) and a browser `Origin` outside `mcp_allowed_origins`, and gives a 401 the
//! RFC 9728 `resource_metadata` challenge; the guard authenticates as for every route.

mod hub;
mod orchestration;
mod prompts;
mod resources;
mod tools;

use crate::access::Access;
use crate::endpoint::{Endpoint, endpoint};
use crate::error::{ApiError, ErrorBody};
use crate::request_id;
use crate::state::AppState;
use axum::Extension;
use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use utoipa::ToSchema;
use utoipa_axum::routes;

pub use hub::Hub;

/// The endpoint's path.
pub const PATH: &str = "/mcp";
/// Where the RFC 9728 protected-resource metadata is served.
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// Settings of the MCP endpoint.
#[derive(Debug, Clone)]
pub struct McpConfig {
    /// `Host` values a request may carry (`name` or `name:port`; a name alone allows any port;
    /// `*`: any host). DNS-rebinding protection: a page on another site that resolves its name
    /// to this server cannot reach it.
    pub allowed_hosts: Vec<String>,
    /// Browser origins (`https://app.example.com`; `*`: any) that may call `/mcp`. A request
    /// without `Origin` (not a browser) always may; one with another origin is refused.
    pub allowed_origins: Vec<String>,
    /// The hub's public base URL (`https://hub.example.com`), for the protected-resource
    /// metadata and the 401 challenge; `None`: `http://` and the request's `Host`.
    pub public_url: Option<String>,
    /// Longest a `wait_for_task` call may wait.
    pub max_wait: Duration,
}

impl Default for McpConfig {
    fn default() -> Self {
        McpConfig {
            allowed_hosts: vec!["localhost".into(), "127.0.0.1".into(), "[::1]".into()],
            allowed_origins: Vec::new(),
            public_url: None,
            max_wait: Duration::from_secs(60),
        }
    }
}

/// The SDK's Streamable HTTP service, one per router: a fresh, stateless `Hub` per request.
pub type McpService = StreamableHttpService<Hub, NeverSessionManager>;

/// The service the `/mcp` routes hand their requests to.
pub fn service(state: &AppState) -> Arc<McpService> {
    let hub_state = state.clone();
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        // `gate` checks `Host` and `Origin` before authentication, and answers in our errors.
        .disable_allowed_hosts()
        .disable_allowed_origins()
        .with_max_request_body_bytes(state.config.max_body_bytes)
        .with_cancellation_token(state.shutdown.child_token());
    Arc::new(StreamableHttpService::new(
        move || Ok(Hub::new(hub_state.clone())),
        Arc::new(NeverSessionManager::default()),
        config,
    ))
}

pub(crate) fn endpoints() -> Vec<Endpoint<AppState>> {
    vec![
        // Each tool checks the permission of its REST twin; the route itself needs a principal.
        endpoint(Access::Authenticated, routes!(post)),
        endpoint(Access::Authenticated, routes!(get)),
        endpoint(Access::Authenticated, routes!(delete)),
        endpoint(Access::Public, routes!(protected_resource)),
        endpoint(Access::Public, routes!(protected_resource_of_mcp)),
    ]
}

async fn serve(service: &McpService, mut request: Request) -> Response {
    if let Some(id) = request_id::current() {
        request.extensions_mut().insert(hub::McpRequestId(id));
    }
    let response = service.handle(request).await.map(axum::body::Body::new);
    as_api_error(response).await
}

/// Longest transport error text of the SDK carried into our error's message.
const MAX_TRANSPORT_MESSAGE: usize = 1024;

/// The SDK's own HTTP refusals (wrong method, `Accept` or content type, a body too large, a bad
/// `MCP-Protocol-Version`) are plain text; they become our JSON errors. JSON answers are MCP's
/// own framing (JSON-RPC) and pass as they are.
async fn as_api_error(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_TRANSPORT_MESSAGE)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
        .unwrap_or_default();
    let code = match status {
        StatusCode::BAD_REQUEST => "invalid_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::NOT_ACCEPTABLE => "not_acceptable",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::FORBIDDEN => "forbidden",
        s if s.is_server_error() => "internal",
        _ => "invalid_request",
    };
    let message = match status {
        StatusCode::METHOD_NOT_ALLOWED => {
            "this endpoint keeps no sessions: send MCP messages with POST".to_owned()
        }
        _ if text.is_empty() => status.canonical_reason().unwrap_or("refused").to_owned(),
        _ => text,
    };
    let mut converted = ApiError::new(status, code, message).into_response();
    if let Some(allow) = parts.headers.get(header::ALLOW) {
        converted.headers_mut().insert(header::ALLOW, allow.clone());
    }
    converted
}

/// Send MCP messages (JSON-RPC over Streamable HTTP): `initialize`, `tools/call`,
/// `resources/read`, `subscriptions/listen`, … The answer is JSON or an event stream.
#[utoipa::path(post, path = "/mcp", tag = "mcp",
    responses(
        (status = 200, description = "the JSON-RPC answer (JSON or `text/event-stream`)"),
        (status = 202, description = "a notification or response was accepted"),
        (status = 401, description = "no or bad credentials; `WWW-Authenticate` names the resource metadata", body = ErrorBody),
        (status = 403, description = "`host_not_allowed` or `origin_not_allowed`", body = ErrorBody),
    ))]
pub async fn post(Extension(service): Extension<Arc<McpService>>, request: Request) -> Response {
    serve(&service, request).await
}

/// The server-to-client stream of a session: this endpoint is stateless, so it answers 405.
#[utoipa::path(get, path = "/mcp", tag = "mcp",
    responses((status = 405, description = "no sessions: use `subscriptions/listen`")))]
pub async fn get(Extension(service): Extension<Arc<McpService>>, request: Request) -> Response {
    serve(&service, request).await
}

/// Ending a session: this endpoint is stateless, so it answers 405.
#[utoipa::path(delete, path = "/mcp", tag = "mcp",
    responses((status = 405, description = "no sessions to end")))]
pub async fn delete(Extension(service): Extension<Arc<McpService>>, request: Request) -> Response {
    serve(&service, request).await
}

/// RFC 9728 protected-resource metadata of `/mcp`. It names no `authorization_servers`: the hub
/// is no OAuth authorization server; its access tokens come from `POST /v1/auth/login` and its
/// API keys from an admin (`docs/mcp.md`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ProtectedResource {
    /// The protected resource: `<base>/mcp`.
    pub resource: String,
    /// `header`: `Authorization: Bearer <access token or API key>`.
    pub bearer_methods_supported: Vec<String>,
    pub resource_name: String,
}

fn metadata(base: &str) -> ProtectedResource {
    ProtectedResource {
        resource: format!("{base}{PATH}"),
        bearer_methods_supported: vec!["header".into()],
        resource_name: "MKWW MCP".into(),
    }
}

/// How MCP clients learn to authenticate to `/mcp` (RFC 9728).
#[utoipa::path(get, path = "/.well-known/oauth-protected-resource", tag = "mcp",
    responses((status = 200, description = "the metadata", body = ProtectedResource)))]
pub async fn protected_resource(State(state): State<AppState>, headers: HeaderMap) -> Response {
    Json(metadata(&base_url(&state.config.mcp, &headers))).into_response()
}

/// The same document at the path RFC 9728 derives from the resource `<base>/mcp`.
#[utoipa::path(get, path = "/.well-known/oauth-protected-resource/mcp", tag = "mcp",
    responses((status = 200, description = "the metadata", body = ProtectedResource)))]
pub async fn protected_resource_of_mcp(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Response {
    Json(metadata(&base_url(&state.config.mcp, &headers))).into_response()
}

/// The hub's public base URL: configured, or `http://` and the request's `Host`.
fn base_url(config: &McpConfig, headers: &HeaderMap) -> String {
    if let Some(url) = &config.public_url {
        return url.trim_end_matches('/').to_owned();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}")
}

/// Whether `host` (a `Host` header: `name`, `name:port`, `[v6]:port`) is allowed.
fn host_allowed(allowed: &[String], host: &str) -> bool {
    let host = host.trim().to_ascii_lowercase();
    let name = match host.strip_prefix('[') {
        Some(rest) => rest
            .split_once(']')
            .map_or(host.as_str(), |(v6, _)| v6)
            .to_owned(),
        None => host.split(':').next().unwrap_or_default().to_owned(),
    };
    allowed.iter().any(|entry| {
        let entry = entry.trim().to_ascii_lowercase();
        if entry == "*" || entry == host {
            return true;
        }
        // A name alone (no port) allows every port.
        let bare = entry.trim_start_matches('[').trim_end_matches(']');
        let has_port = if entry.starts_with('[') {
            entry.contains("]:")
        } else {
            entry.contains(':') && entry.matches(':').count() == 1
        };
        !has_port && bare == name
    })
}

fn origin_allowed(allowed: &[String], origin: &str) -> bool {
    allowed
        .iter()
        .any(|entry| entry == "*" || entry.trim_end_matches('/').eq_ignore_ascii_case(origin))
}

fn refused(code: &'static str, message: String) -> Response {
    ApiError::new(StatusCode::FORBIDDEN, code, message).into_response()
}

/// Layer of the `/mcp` routes: `Host` and `Origin` first, then — on a 401 from the guard — the
/// challenge that tells MCP clients where the protected-resource metadata is.
pub async fn gate(State(config): State<Arc<McpConfig>>, request: Request, next: Next) -> Response {
    if request.uri().path() != PATH {
        return next.run(request).await;
    }
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| request.uri().authority().map(|a| a.to_string()));
    match host {
        Some(host) if host_allowed(&config.allowed_hosts, &host) => {}
        Some(host) => {
            return refused(
                "host_not_allowed",
                format!("the Host `{host}` is not one of mcp_allowed_hosts"),
            );
        }
        None => return refused("host_not_allowed", "a Host header is required".into()),
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        if !origin_allowed(&config.allowed_origins, origin) {
            return refused(
                "origin_not_allowed",
                format!("the Origin `{origin}` is not one of mcp_allowed_origins"),
            );
        }
    }
    let base = base_url(&config, headers);
    let mut response = next.run(request).await;
    if response.status() == StatusCode::UNAUTHORIZED
        && let Ok(value) = HeaderValue::from_str(&format!(
            "Bearer resource_metadata=\"{base}{METADATA_PATH}\""
        ))
    {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_host_name_alone_allows_every_port_and_nothing_else() {
        let allowed = list(&["localhost", "127.0.0.1", "[::1]", "hub.example.com:8443"]);
        assert!(host_allowed(&allowed, "localhost:8080"));
        assert!(host_allowed(&allowed, "127.0.0.1:1234"));
        assert!(host_allowed(&allowed, "[::1]:80"));
        assert!(host_allowed(&allowed, "hub.example.com:8443"));
        assert!(!host_allowed(&allowed, "hub.example.com"));
        assert!(!host_allowed(&allowed, "hub.example.com:80"));
        assert!(!host_allowed(&allowed, "evil.example:8080"));
        assert!(!host_allowed(&allowed, "localhost.evil.example"));
        assert!(host_allowed(&list(&["*"]), "anything:1"));
    }

    #[test]
    fn only_listed_origins_pass() {
        let allowed = list(&["https://app.example.com"]);
        assert!(origin_allowed(&allowed, "https://app.example.com"));
        assert!(!origin_allowed(&allowed, "https://evil.example"));
        assert!(!origin_allowed(&[], "https://app.example.com"));
        assert!(origin_allowed(&list(&["*"]), "https://x.example"));
    }
}
