//! The web console: plain ES modules and CSS in `crates/mcp-api/console/`, embedded in the binary
//! (no build step, no CDN; debug builds read them from this folder, so a change needs no
//! rebuild), served at `/` by the router's fallback so that no API route can be
//! shadowed by it. The console's own pages (`/tasks/{id}`, `/admin/users`, …) all answer
//! `index.html`, which routes in the browser; anything else that no route matched (an unknown
//! `/v1/...` path above all) stays the API's JSON 404.
//!
//! Every answer carries a strict Content Security Policy (scripts and styles from this origin
//! only, nothing inline, no framing, connections to this origin and its WebSocket) and is
//! revalidated on each use (`no-cache` with an `ETag` from the file's SHA-256), so a new binary
//! never leaves a browser with an old script.

use crate::error;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "console/"]
struct Assets;

/// Where the console's static files live; everything else is a page.
const ASSETS_PREFIX: &str = "/assets/";

/// The first path segments the console routes in the browser. Pages of features that a node may
/// not have (schedules, workflows, settings) are listed too: the console probes the API and
/// hides what does not answer.
const PAGES: [&str; 10] = [
    "tasks",
    "queues",
    "workers",
    "memory",
    "integrations",
    "admin",
    "schedules",
    "workflows",
    "settings",
    "signin",
];

/// The router's fallback: a console page or asset for `GET` and `HEAD`, else the JSON 404.
pub async fn fallback(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return error::not_found().await.into_response();
    }
    let path = uri.path();
    let file = if let Some(asset) = path.strip_prefix(ASSETS_PREFIX) {
        format!("assets/{asset}")
    } else if is_page(path) {
        "index.html".to_owned()
    } else {
        return error::not_found().await.into_response();
    };
    match Assets::get(&file) {
        Some(content) => serve(&file, content, &headers),
        None => error::not_found().await.into_response(),
    }
}

/// `/`, or a path whose first segment is one of the console's pages.
fn is_page(path: &str) -> bool {
    let first = path
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default();
    first.is_empty() || PAGES.contains(&first)
}

fn serve(file: &str, content: rust_embed::EmbeddedFile, request: &HeaderMap) -> Response {
    let etag = format!("\"{}\"", hex(&content.metadata.sha256_hash()[..16]));
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(header::CONTENT_TYPE, content_type(file))],
            content.data.into_owned(),
        )
            .into_response()
    };
    let headers = response.headers_mut();
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, etag);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(csp) = HeaderValue::from_str(&policy(request)) {
        headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// No inline script or style, nothing from elsewhere, no framing; connections only to this
/// origin and its WebSocket (`ws:` and `wss:` to the host the browser asked for, spelled out for
/// browsers whose `'self'` does not cover them). The host comes from the client, so only a plain
/// host name or address with a port is written into the header; anything else leaves `'self'`.
pub fn policy(request: &HeaderMap) -> String {
    let socket = request
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|host| plain_host(host))
        .map(|host| format!(" ws://{host} wss://{host}"))
        .unwrap_or_default();
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'{socket}; manifest-src 'self'; base-uri 'none'; form-action 'self'; \
         frame-ancestors 'none'"
    )
}

fn plain_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
}

fn content_type(file: &str) -> &'static str {
    match file.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_pages_are_known_and_api_paths_are_not() {
        for page in ["/", "/tasks", "/tasks/0193", "/admin/api-keys", "/memory"] {
            assert!(is_page(page), "{page}");
        }
        for other in ["/v1/nope", "/v1", "/healthz", "/nope", "/tasksx"] {
            assert!(!is_page(other), "{other}");
        }
    }

    #[test]
    fn the_index_and_its_script_are_embedded() {
        assert!(Assets::get("index.html").is_some());
        assert!(Assets::get("assets/app.js").is_some());
    }

    #[test]
    fn the_policy_names_the_socket_of_a_plain_host_only() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        let csp = policy(&headers);
        assert!(csp.contains("connect-src 'self' ws://127.0.0.1:8080 wss://127.0.0.1:8080;"));
        assert!(csp.contains("frame-ancestors 'none'"));
        headers.insert(header::HOST, HeaderValue::from_static("evil; script-src *"));
        assert!(policy(&headers).contains("connect-src 'self';"));
    }
}
