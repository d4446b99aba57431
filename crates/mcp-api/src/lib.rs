//! API layer of MKWW MCP: the axum router with the REST API under `/v1`, health probes, metrics
//! and the generated OpenAPI document. Cross-cutting work (request ids, request logs, rate
//! limits, authentication and permissions, body limits, panic catching, JSON errors) is done by
//! layers, so handlers stay small. The web console (`console.rs`) is the router's fallback.
//!
//! A route is declared once, beside its handler: the `#[utoipa::path]` attribute gives its method,
//! path and documentation, and the module's `endpoints()` gives who may call it (`endpoint.rs`).
//! This file only declares the modules and assembles the router from those lists; the modules
//! depend on `state.rs` and the cross-cutting ones below it, never on this file.

pub mod access;
mod admin;
pub mod auth;
mod bots;
mod console;
mod deadline;
pub mod discord;
mod docs;
mod endpoint;
mod error;
mod extract;
mod health;
mod hooks;
mod http_trace;
pub mod integrations;
pub mod key_cache;
pub mod mcp;
mod memory;
mod openapi;
mod queues;
mod request_id;
mod schedules;
mod session;
mod settings;
mod state;
mod stats;
mod tasks;
pub mod token;
mod vcc;
mod vrchat;
mod webhooks;
mod workflows;
pub mod ws;

pub use admin::check_username;
pub use auth::{LiveLimits, Principal, RateLimits, Security, SecurityConfig};
pub use error::{ApiError, ErrorBody, ErrorDetail};
pub use hooks::HooksConfig;
pub use mcp::McpConfig;
pub use memory::MemoryLimits;
pub use openapi::ApiDoc;
pub use request_id::REQUEST_ID_HEADER;
pub use state::{ApiConfig, AppState, AppStateParts, MetricsRenderer, WebhookState};

use access::AccessTable;
use auth::Guard;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, header};
use axum::{Extension, Router};
use endpoint::{Assembled, Endpoint};
use std::sync::Arc;
use tower_http::set_header::SetResponseHeaderLayer;
use utoipa::OpenApi;

/// Every endpoint of the API, module by module.
fn endpoints() -> Vec<Endpoint<AppState>> {
    [
        health::endpoints(),
        openapi::endpoints(),
        session::endpoints(),
        tasks::endpoints(),
        admin::endpoints(),
        ws::endpoints(),
        memory::endpoints(),
        integrations::endpoints(),
        webhooks::endpoints(),
        hooks::endpoints(),
        discord::endpoints(),
        vrchat::endpoints(),
        vcc::endpoints(),
        bots::endpoints(),
        schedules::endpoints(),
        queues::endpoints(),
        workflows::endpoints(),
        docs::endpoints(),
        mcp::endpoints(),
        settings::endpoints(),
        stats::endpoints(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Who may call which route, as the guard reads it.
pub fn access_table() -> AccessTable {
    endpoint::table(&endpoints())
}

/// The OpenAPI document served at `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    endpoint::document(endpoints(), ApiDoc::openapi())
}

/// The whole HTTP API.
pub fn router(state: AppState) -> Router {
    let max_body = state.config.max_body_bytes;
    let mcp_service = mcp::service(&state);
    let mcp_config = Arc::new(state.config.mcp.clone());
    let body_timeout = state.config.body_timeout;
    let Assembled {
        router,
        table,
        openapi,
    } = endpoint::assemble(endpoints(), ApiDoc::openapi(), &state);
    let guard = Guard {
        security: state.security.clone(),
        table: Arc::new(table),
    };
    router
        .route_layer(axum::middleware::from_fn_with_state(guard, auth::guard))
        // Outside the guard, so refusals are traced too; inside routing, for `http.route`.
        .route_layer(axum::middleware::from_fn(http_trace::http_span))
        .layer(Extension(Arc::new(openapi)))
        // The console's pages and assets; any other path is the JSON 404.
        .fallback(console::fallback)
        .method_not_allowed_fallback(error::method_not_allowed)
        // `/mcp`: Host and Origin checks, and the RFC 9728 challenge on a 401.
        .layer(axum::middleware::from_fn_with_state(mcp_config, mcp::gate))
        .layer(Extension(mcp_service))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            state.security.clone(),
            auth::limit_ip,
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            error::panic_response,
        ))
        // Answers carry credentials and private data: no cache may keep them, and no browser may
        // guess another content type than the one declared.
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(axum::middleware::from_fn_with_state(
            body_timeout,
            deadline::body_deadline,
        ))
        .layer(axum::middleware::from_fn(request_id::request_id))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];

    #[test]
    fn the_access_table_and_the_openapi_document_list_the_same_routes() {
        let table: Vec<(String, String)> = access_table()
            .iter()
            .map(|r| (r.method.to_owned(), r.path.clone()))
            .collect();
        let unique: BTreeSet<_> = table.iter().cloned().collect();
        assert_eq!(unique.len(), table.len(), "a route is declared twice");
        let documented: BTreeSet<(String, String)> = openapi()
            .paths
            .paths
            .iter()
            .flat_map(|(path, item)| {
                let item = serde_json::to_value(item).unwrap_or_default();
                let methods: Vec<String> = item
                    .as_object()
                    .map(|o| {
                        o.keys()
                            .filter(|k| METHODS.contains(&k.as_str()))
                            .map(|m| m.to_uppercase())
                            .collect()
                    })
                    .unwrap_or_default();
                methods.into_iter().map(move |m| (m, path.clone()))
            })
            .collect();
        assert_eq!(unique, documented);
    }

    #[test]
    fn every_operation_id_is_unique() {
        let document = serde_json::to_value(openapi()).unwrap_or_default();
        let mut ids = BTreeSet::new();
        for item in document["paths"]
            .as_object()
            .into_iter()
            .flat_map(|p| p.values())
        {
            for method in METHODS {
                if let Some(id) = item[method]["operationId"].as_str() {
                    assert!(ids.insert(id.to_owned()), "operationId `{id}` repeats");
                }
            }
        }
        assert!(ids.contains("webhooks_list"), "{ids:?}");
    }
}
