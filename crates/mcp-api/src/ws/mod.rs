//! The WebSocket API at `/v1/ws` (protocol: `docs/websocket.md`). One connection is a reader
//! loop (frames, heartbeats, deadlines) and one writer task draining a bounded queue; one
//! forwarder per channel on the node (`fanout.rs`) moves bus deliveries into the queues of its
//! subscribers. A consumer whose queue is full is closed with `4008` and recovers with `since`;
//! nothing waits on a slow client.

pub mod close;
pub(crate) mod config;
mod connection;
mod fanout;
mod frame;
mod gauges;
mod limits;
mod policy;
mod queue;
mod socket;
mod subscriptions;
mod workers;

pub use config::WsConfig;
pub use fanout::Fanout;
pub use frame::{ClientFrame, FrameError, Op, WorkerError, decode};
pub use limits::ChannelClaims;

use crate::access::Access::Public;
use crate::auth::bearer;
use crate::endpoint::{Endpoint, endpoint};
use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use connection::Connection;
use utoipa_axum::routes;

/// The routes of this module and who may call them.
pub(crate) fn endpoints() -> Vec<Endpoint<AppState>> {
    vec![
        // Authenticates itself: with the upgrade request or the first frame (docs/websocket.md).
        endpoint(Public, routes!(upgrade)),
    ]
}

/// Whether a browser's `Origin` may open a socket: any when `allowed` is empty (no check) or
/// holds `*`, and any request without `Origin` (browsers always send it on a WebSocket upgrade,
/// other clients need not). Compared without case and without a trailing `/`.
fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> Result<(), ApiError> {
    if allowed.is_empty() {
        return Ok(());
    }
    let Some(origin) = headers.get(axum::http::header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("").trim_end_matches('/');
    let listed = allowed.iter().any(|a| {
        let a = a.trim_end_matches('/');
        a == "*" || a.eq_ignore_ascii_case(origin)
    });
    if listed && !origin.is_empty() {
        Ok(())
    } else {
        Err(ApiError::origin_forbidden())
    }
}

/// Read buffer per connection: client frames are small, and the transport zero-fills the
/// buffer up to this size (so all of it is resident, idle or not: its default of 128 KiB would
/// make each connection cost that much). A larger frame grows the buffer as it arrives; one
/// KiB holds every op a client sends but a worker's larger results.
const READ_BUFFER: usize = 1024;

/// `GET /v1/ws`: upgrades to the WebSocket protocol. Credentials may come with the upgrade
/// (`Authorization: Bearer …`) or in the first frame (`auth` op).
#[utoipa::path(get, path = "/v1/ws", tag = "realtime",
    responses(
        (status = 101, description = "switching to the WebSocket protocol (docs/websocket.md)"),
        (status = 400, description = "not a WebSocket upgrade request", body = crate::error::ErrorBody),
        (status = 401, description = "bad credentials on the upgrade", body = crate::error::ErrorBody),
        (status = 403, description = "`origin_forbidden`: a browser page from an origin not in `ws_allowed_origins`", body = crate::error::ErrorBody),
    ))]
pub async fn upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // Before anything else: a page of another site must not ride a user's browser into the hub.
    if let Err(e) = origin_allowed(&headers, &state.config.ws.allowed_origins) {
        return e.into_response();
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            return ApiError::new(
                rejection.status(),
                "websocket_upgrade_required",
                format!("this route speaks WebSocket: {}", rejection.body_text()),
            )
            .into_response();
        }
    };
    let authenticated = match bearer(&headers) {
        Ok(None) => None,
        Ok(Some(credential)) => match state.security.authenticate_credential(credential).await {
            Ok(found) => Some(found),
            Err(e) => return e.into_response(),
        },
        Err(e) => return e.into_response(),
    };
    let config = state.config.ws.clone();
    // The protocol limit is checked per message below (close 1009); the transport's own limit
    // only guards against absurd sizes.
    let transport_limit = config.max_frame_bytes.saturating_mul(4).max(64 * 1024);
    ws.read_buffer_size(READ_BUFFER)
        .max_message_size(transport_limit)
        .max_frame_size(transport_limit)
        .on_upgrade(move |socket| async move {
            Connection::new(state, authenticated).run(socket).await;
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_origin(origin: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(origin) = origin {
            headers.insert(axum::http::header::ORIGIN, origin.parse().unwrap());
        }
        headers
    }

    #[test]
    fn checks_the_origin_only_when_origins_are_configured() {
        let allowed = vec!["https://app.example.com/".to_owned()];
        let ok = |origin, allowed: &[String]| origin_allowed(&with_origin(origin), allowed).is_ok();
        assert!(ok(Some("https://evil.example"), &[]), "no list, no check");
        assert!(ok(None, &allowed), "not a browser");
        assert!(ok(Some("https://APP.example.com"), &allowed));
        assert!(!ok(Some("https://evil.example"), &allowed));
        assert!(!ok(Some("null"), &allowed), "sandboxed pages send `null`");
        assert!(!ok(Some(""), &allowed));
        assert!(ok(Some("https://any.example"), &["*".to_owned()]));
        let refused = origin_allowed(&with_origin(Some("https://evil.example")), &allowed);
        let e = refused.unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (403, "origin_forbidden"));
    }
}
