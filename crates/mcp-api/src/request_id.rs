//! Request ids and request logs: every request gets an id (the client's `x-request-id` when it
//! is sane, else a new UUIDv7), available to handlers and errors for the duration of the request,
//! echoed in the response, and written with the one log line per request.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use std::sync::Arc;
use std::time::Instant;

pub const REQUEST_ID_HEADER: &str = "x-request-id";
const MAX_LEN: usize = 128;

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being served, if any.
pub fn current() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// The route template that served a response, for metrics labels. The guard sets it; it is
/// declared here, the lowest layer, so the request log needs nothing above it.
#[derive(Debug, Clone)]
pub struct RouteLabel(pub Arc<str>);

fn acceptable(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_LEN && id.bytes().all(|b| b.is_ascii_graphic())
}

pub async fn request_id(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable(v))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let method = request.method().clone();
    let path = request.uri().path().to_owned();

    let mut response = REQUEST_ID.scope(id.clone(), next.run(request)).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    let status = response.status().as_u16().to_string();
    // Label metrics by route template, not raw path: ids would explode the label set.
    let route = response
        .extensions()
        .get::<RouteLabel>()
        .map_or(metrics::SharedString::const_str("unmatched"), |r| {
            metrics::SharedString::from_shared(r.0.clone())
        });
    metrics::counter!("http_requests_total", "method" => method.to_string(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("http_request_duration_seconds", "method" => method.to_string(), "route" => route)
        .record(started.elapsed().as_secs_f64());
    tracing::info!(
        method = %method,
        path = %path,
        status = response.status().as_u16(),
        latency_ms = started.elapsed().as_secs_f64() * 1000.0,
        request_id = %id,
        "request"
    );
    response
}

#[cfg(test)]
mod tests {
    use super::acceptable;

    #[test]
    fn accepts_only_short_visible_ascii_ids() {
        assert!(acceptable("abc-123"));
        assert!(!acceptable(""));
        assert!(!acceptable("has space"));
        assert!(!acceptable(&"x".repeat(129)));
        assert!(!acceptable("naïve"));
    }
}
