//! What one connection holds (its principal, subscriptions, queue and worker slots) and the
//! two things every part of it does: queue a frame, and close.

use super::close;
use crate::auth::{Authenticated, Principal};
use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::ws::Utf8Bytes;
use mcp_core::HandlerError;
use mcp_core::revocations::Credential;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Why the connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Closing {
    pub(super) code: u16,
    pub(super) reason: &'static str,
}

/// One WebSocket connection: the reader loop owns it (`socket`); the fan-out and the writer share
/// only its queue and its closing signal.
pub(super) struct Connection {
    pub(super) state: AppState,
    pub(super) principal: Option<Principal>,
    /// Unix seconds at which the access token expires.
    pub(super) expires_at: Option<u64>,
    /// What the deny-list is asked about whenever it changes.
    pub(super) credential: Option<Credential>,
    pub(super) refresh_asked: bool,
    pub(super) subscriptions: HashMap<String, Subscribed>,
    pub(super) out: Option<super::queue::Sender>,
    pub(super) closing: watch::Sender<Option<Closing>>,
    pub(super) tat: Option<i64>,
    pub(super) strikes: u32,
    /// Set once `worker.register` succeeded: this connection's id in the router.
    pub(super) worker: Option<u64>,
    /// Where the outcome of each task assigned to this worker goes.
    pub(super) pending: Arc<std::sync::Mutex<HashMap<uuid::Uuid, PendingReply>>>,
    pub(super) assignments: Option<JoinHandle<()>>,
}

/// One subscription: its place in the channel's fan-out (left when dropped), and the
/// principal's hold on the channel.
pub(super) struct Subscribed {
    pub(super) _joined: super::fanout::Joined,
    pub(super) _claim: super::limits::Claim,
    pub(super) _counted: super::gauges::Counted,
}

pub(super) type PendingReply = tokio::sync::oneshot::Sender<Result<Value, HandlerError>>;

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(super) fn reply(id: &Option<Value>, result: Value) -> Utf8Bytes {
    let mut frame = json!({"ok": true, "result": result});
    if let Some(id) = id {
        frame["id"] = id.clone();
    }
    frame.to_string().into()
}

pub(super) fn error_frame(id: &Option<Value>, code: &str, message: &str) -> Utf8Bytes {
    let mut frame = json!({"error": {"code": code, "message": message}});
    if let Some(id) = id {
        frame["id"] = id.clone();
    }
    frame.to_string().into()
}

impl Connection {
    pub(super) fn new(state: AppState, authenticated: Option<Authenticated>) -> Self {
        let (principal, expires_at, credential) = match authenticated {
            Some(found) => (
                Some(found.principal),
                found.expires_at,
                Some(found.credential),
            ),
            None => (None, None, None),
        };
        Connection {
            state,
            principal,
            expires_at,
            credential,
            refresh_asked: false,
            subscriptions: HashMap::new(),
            out: None,
            closing: watch::channel(None).0,
            tat: None,
            strikes: 0,
            worker: None,
            pending: Arc::new(std::sync::Mutex::new(HashMap::new())),
            assignments: None,
        }
    }

    pub(super) fn close(&self, code: u16, reason: &'static str) {
        let changed = self.closing.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(Closing { code, reason });
                true
            } else {
                false
            }
        });
        // The writer waits on the queue alone (`socket.rs`).
        if changed && let Some(out) = &self.out {
            out.nudge();
        }
    }

    /// The server is shutting down: a last `server.shutdown` frame saying when to reconnect
    /// (to another node), then `1001` with the same hint as its reason.
    pub(super) fn going_away(&self) {
        self.send(
            json!({"op": "server.shutdown", "reconnect_after_ms": close::RECONNECT_AFTER_MS})
                .to_string()
                .into(),
        );
        self.close(close::GOING_AWAY, close::GOING_AWAY_REASON);
    }

    /// Closes with `4003` if the deny-list now refuses this connection's credential.
    pub(super) fn close_if_revoked(&self) {
        if let Some(credential) = &self.credential
            && self.state.security.revocations.is_revoked(credential)
        {
            self.close(close::REVOKED, "credential revoked");
        }
    }

    /// Queues a frame; a full queue means the client is too slow.
    pub(super) fn send(&self, frame: Utf8Bytes) {
        if let Some(out) = &self.out
            && out.try_send(frame).is_err()
        {
            self.close(close::SLOW_CONSUMER, "too slow: resubscribe with since");
        }
    }
}

pub(super) fn ws_error(code: &'static str, message: &str) -> ApiError {
    ApiError::new(axum::http::StatusCode::BAD_REQUEST, code, message)
}

pub(super) fn forbidden(permission: &str) -> ApiError {
    ws_error(
        "forbidden",
        &format!("this needs the permission `{permission}`"),
    )
}
