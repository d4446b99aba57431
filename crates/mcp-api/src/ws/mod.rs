//! The WebSocket API at `/v1/ws` (protocol: `docs/websocket.md`). One connection is a reader
//! loop (frames, heartbeats, deadlines), one writer task draining a bounded queue, and one
//! forwarder per subscription moving bus deliveries into that queue. A consumer whose queue is
//! full is closed with `4008` and recovers with `since`; nothing waits on a slow client.

pub mod close;
pub(crate) mod config;
mod connection;
mod frame;
mod policy;
mod socket;
mod subscriptions;
mod workers;

pub use config::WsConfig;
pub use frame::{ClientFrame, FrameError, Op, WorkerError, decode};

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

/// Read buffer per connection: client frames are small, and the transport's default (128 KiB,
/// zero-filled, so all resident) would make idle connections cost that much each.
const READ_BUFFER: usize = 4 * 1024;

/// `GET /v1/ws`: upgrades to the WebSocket protocol. Credentials may come with the upgrade
/// (`Authorization: Bearer …`) or in the first frame (`auth` op).
#[utoipa::path(get, path = "/v1/ws", tag = "realtime",
    responses(
        (status = 101, description = "switching to the WebSocket protocol (docs/websocket.md)"),
        (status = 400, description = "not a WebSocket upgrade request", body = crate::error::ErrorBody),
        (status = 401, description = "bad credentials on the upgrade", body = crate::error::ErrorBody),
    ))]
pub async fn upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
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
