//! The server span of every routed HTTP request (while tracing is on), with OpenTelemetry's HTTP
//! semantic-convention attributes, continuing the caller's trace when the request carries a
//! `traceparent`. Everything a handler does (a task's `task.create`, its store calls) is inside
//! it. With tracing off the layer only passes the request on.

use crate::request_id::REQUEST_ID_HEADER;
use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use mcp_core::trace;
use tracing::Instrument;
use tracing::field::Empty;

pub(crate) async fn http_span(request: Request, next: Next) -> Response {
    if !trace::enabled() {
        return next.run(request).await;
    }
    let span = server_span(&request);
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    response
}

/// The request's span, a child of its `traceparent` when it has one.
fn server_span(request: &Request) -> tracing::Span {
    let method = request.method().as_str();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
    };
    let span = tracing::info_span!(
        parent: None,
        "http.server",
        otel.name = %match route {
            Some(route) => format!("{method} {route}"),
            None => method.to_owned(),
        },
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = method,
        http.route = route,
        url.path = request.uri().path(),
        url.scheme = request.uri().scheme_str().unwrap_or("http"),
        user_agent.original = header("user-agent"),
        mcp.request_id = header(REQUEST_ID_HEADER),
        http.response.status_code = Empty
    );
    trace::set_parent(&span, header(trace::TRACEPARENT));
    span
}
