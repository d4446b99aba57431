//! The WebSocket API at `/v1/ws` (protocol: `docs/websocket.md`). One connection is a reader
//! loop (frames, heartbeats, deadlines), one writer task draining a bounded queue, and one
//! forwarder per subscription moving bus deliveries into that queue. A consumer whose queue is
//! full is closed with `4008` and recovers with `since`; nothing waits on a slow client.

mod frame;

pub use frame::{ClientFrame, FrameError, Op, WorkerError, decode};

use crate::access::Access::Public;
use crate::auth::{Principal, bearer};
use crate::endpoint::{Endpoint, endpoint};
use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use mcp_core::HandlerError;
use mcp_core::Origin;
use mcp_core::events::{Delivery, Event, Recovery, StreamPosition};
use mcp_core::limiter::{Quota, gcra, now_us};
use mcp_core::principal::Permission;
use mcp_core::task::CreateTask;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use utoipa_axum::routes;

/// The routes of this module and who may call them.
pub(crate) fn endpoints() -> Vec<Endpoint<AppState>> {
    vec![
        // Authenticates itself: with the upgrade request or the first frame (docs/websocket.md).
        endpoint(Public, routes!(upgrade)),
    ]
}

/// Limits and timings of WebSocket connections.
#[derive(Debug, Clone)]
pub struct WsConfig {
    /// Time allowed for the `auth` op when the upgrade carried no credentials.
    pub auth_timeout: Duration,
    /// How often the server pings.
    pub ping_interval: Duration,
    /// A connection that sends nothing (not even a pong) this long is closed.
    pub idle_timeout: Duration,
    /// Frames queued for one client before it counts as too slow.
    pub send_queue: usize,
    /// Largest accepted client frame, in bytes.
    pub max_frame_bytes: usize,
    pub max_subscriptions: usize,
    /// Client frames per second (bursts of that many).
    pub ops_per_second: u32,
    /// How long before an access token expires the server asks for a new one.
    pub refresh_notice: Duration,
    /// Namespaces (`room` for `room:*`) any authenticated client may subscribe and publish to.
    pub open_namespaces: Vec<String>,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            auth_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            send_queue: 1024,
            max_frame_bytes: 64 * 1024,
            max_subscriptions: 100,
            ops_per_second: 50,
            refresh_notice: Duration::from_secs(30),
            open_namespaces: vec!["room".into()],
        }
    }
}

/// Close codes (documented in `docs/websocket.md`).
pub mod close {
    /// No valid credentials in time, or bad ones.
    pub const UNAUTHENTICATED: u16 = 4001;
    /// The access token expired and no new one came.
    pub const TOKEN_EXPIRED: u16 = 4002;
    /// The client did not read fast enough; resubscribe with `since`.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// Nothing heard from the client within the idle timeout.
    pub const IDLE_TIMEOUT: u16 = 4009;
    /// Far too many frames, after `rate_limited` errors.
    pub const FLOOD: u16 = 4029;
    /// A binary frame (this protocol is JSON text).
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// A frame larger than the limit.
    pub const TOO_BIG: u16 = 1009;
}

/// How long a closing connection may take to send what was queued before the close frame.
const CLOSE_FLUSH: Duration = Duration::from_millis(500);

/// Most frames written before one flush.
const WRITE_BATCH: usize = 64;

/// Read buffer per connection: client frames are small, and the transport's default (128 KiB,
/// zero-filled, so all resident) would make idle connections cost that much each.
const READ_BUFFER: usize = 4 * 1024;

/// How many refused frames in a row end the connection.
const FLOOD_STRIKES: u32 = 20;

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
        Ok(Some(credential)) => match state.security.authenticate_until(credential).await {
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

/// Why the connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Closing {
    code: u16,
    reason: &'static str,
}

struct Connection {
    state: AppState,
    principal: Option<Principal>,
    /// Unix seconds at which the access token expires.
    expires_at: Option<u64>,
    refresh_asked: bool,
    subscriptions: HashMap<String, JoinHandle<()>>,
    out: Option<mpsc::Sender<Utf8Bytes>>,
    closing: watch::Sender<Option<Closing>>,
    tat: Option<i64>,
    strikes: u32,
    /// Set once `worker.register` succeeded: this connection's id in the router.
    worker: Option<u64>,
    /// Where the outcome of each task assigned to this worker goes.
    pending: Arc<std::sync::Mutex<HashMap<uuid::Uuid, PendingReply>>>,
    assignments: Option<JoinHandle<()>>,
}

type PendingReply = tokio::sync::oneshot::Sender<Result<Value, HandlerError>>;

/// Most task types one worker may register, and the most slots it may ask for.
const MAX_WORKER_TYPES: usize = 100;
const MAX_WORKER_CONCURRENCY: usize = 1000;
/// How long `worker.register` waits for the cluster's worker directory before it answers anyway.
const PUBLISH_PATIENCE: Duration = Duration::from_secs(2);

fn valid_task_type(task_type: &str) -> bool {
    !task_type.is_empty()
        && task_type.len() <= 128
        && task_type
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn reply(id: &Option<Value>, result: Value) -> Utf8Bytes {
    let mut frame = json!({"ok": true, "result": result});
    if let Some(id) = id {
        frame["id"] = id.clone();
    }
    frame.to_string().into()
}

fn error_frame(id: &Option<Value>, code: &str, message: &str) -> Utf8Bytes {
    let mut frame = json!({"error": {"code": code, "message": message}});
    if let Some(id) = id {
        frame["id"] = id.clone();
    }
    frame.to_string().into()
}

impl Connection {
    fn new(state: AppState, authenticated: Option<(Principal, Option<u64>)>) -> Self {
        let (principal, expires_at) = match authenticated {
            Some((principal, expires_at)) => (Some(principal), expires_at),
            None => (None, None),
        };
        Connection {
            state,
            principal,
            expires_at,
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

    async fn run(mut self, socket: WebSocket) {
        let config = self.state.config.ws.clone();
        let (mut sink, mut stream) = socket.split();
        let (out_tx, mut out_rx) = mpsc::channel::<Utf8Bytes>(config.send_queue.max(1));
        self.out = Some(out_tx);
        let mut closing_rx = self.closing.subscribe();
        let (ping_tx, mut ping_rx) = mpsc::channel::<()>(1);
        // The writer: frames in order; a close ends it with the close frame, after what was
        // already queued (error replies explain the close) if the client takes it promptly.
        let writer = tokio::spawn(async move {
            let mut closing = closing_rx.clone();
            loop {
                tokio::select! {
                    biased;
                    _ = closing.changed() => {
                        let flush = async {
                            while let Ok(text) = out_rx.try_recv() {
                                if sink.send(Message::Text(text)).await.is_err() {
                                    return;
                                }
                            }
                        };
                        let _ = tokio::time::timeout(CLOSE_FLUSH, flush).await;
                        break;
                    }
                    Some(()) = ping_rx.recv() => {
                        if sink.send(Message::Ping(Default::default())).await.is_err() { return; }
                    }
                    frame = out_rx.recv() => match frame {
                        // Whatever else is queued goes out with it, in one flush (one send()
                        // for many frames is most of the fan-out cost).
                        Some(text) => {
                            if sink.feed(Message::Text(text)).await.is_err() { return; }
                            let mut batched = 1;
                            while batched < WRITE_BATCH {
                                let Ok(text) = out_rx.try_recv() else { break };
                                if sink.feed(Message::Text(text)).await.is_err() { return; }
                                batched += 1;
                            }
                            if sink.flush().await.is_err() { return; }
                        }
                        None => break,
                    },
                }
            }
            let why = *closing_rx.borrow_and_update();
            let frame = why.map(|c| CloseFrame {
                code: c.code,
                reason: c.reason.into(),
            });
            let _ = sink.send(Message::Close(frame)).await;
            let _ = sink.close().await;
        });

        let auth_deadline = Instant::now() + config.auth_timeout;
        let mut last_heard = Instant::now();
        let mut ping = tokio::time::interval(config.ping_interval);
        ping.tick().await;
        let mut closing_watch = self.closing.subscribe();
        let shutdown = self.state.shutdown.clone();
        let mut peer_gone = false;
        loop {
            let token_deadline = self.token_deadline();
            tokio::select! {
                message = stream.next() => {
                    last_heard = Instant::now();
                    match message {
                        Some(Ok(Message::Text(text))) if text.len() > config.max_frame_bytes => {
                            self.close(close::TOO_BIG, "frame too large");
                        }
                        Some(Ok(Message::Text(text))) => self.on_text(text.as_str()).await,
                        Some(Err(e)) if e.to_string().contains("too long") => {
                            self.close(close::TOO_BIG, "frame too large");
                        }
                        Some(Ok(Message::Binary(_))) => self.close(close::UNSUPPORTED_DATA, "binary frames are not supported; send JSON text"),
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                            peer_gone = true;
                            break;
                        }
                        Some(Ok(_)) => {} // ping / pong
                    }
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() >= config.idle_timeout {
                        self.close(close::IDLE_TIMEOUT, "idle timeout");
                    } else {
                        let _ = ping_tx.try_send(());
                    }
                }
                _ = tokio::time::sleep_until(auth_deadline), if self.principal.is_none() => {
                    self.close(close::UNAUTHENTICATED, "authenticate with the auth op first");
                }
                _ = tokio::time::sleep_until(token_deadline.unwrap_or(auth_deadline)), if token_deadline.is_some() => {
                    self.on_token_deadline();
                }
                _ = closing_watch.changed() => {}
                _ = shutdown.cancelled() => self.close(close::GOING_AWAY, "the server is shutting down"),
            }
            if self.closing.borrow().is_some() {
                break;
            }
        }
        for (_, forwarder) in self.subscriptions.drain() {
            forwarder.abort();
        }
        // A worker that goes gives its tasks back at once: dropping the pending replies tells
        // each waiting attempt to release its task without spending the attempt.
        if let Some(worker) = self.worker.take() {
            self.state.orchestrator.router().unregister(worker);
        }
        if let Some(assignments) = self.assignments.take() {
            assignments.abort();
        }
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        if self.closing.borrow().is_none() {
            self.closing.send_replace(Some(Closing {
                code: 1000,
                reason: "bye",
            }));
        }
        self.out = None;
        let _ = writer.await;
        // The closing handshake: until the client's own Close (briefly), read and drop what it
        // still sends. Closing a socket with unread data in it makes the kernel reset the
        // connection, and the client would lose our Close frame and its code.
        if !peer_gone {
            let _ = tokio::time::timeout(CLOSE_FLUSH, async {
                while let Some(Ok(message)) = stream.next().await {
                    if matches!(message, Message::Close(_)) {
                        break;
                    }
                }
            })
            .await;
        }
    }

    /// When the token needs attention next: the refresh notice, then its expiry.
    fn token_deadline(&self) -> Option<Instant> {
        let expires_at = self.expires_at?;
        let now = unix_now();
        let notice = self.state.config.ws.refresh_notice.as_secs();
        let at = if self.refresh_asked {
            expires_at
        } else {
            expires_at.saturating_sub(notice)
        };
        Some(Instant::now() + Duration::from_secs(at.saturating_sub(now)))
    }

    fn on_token_deadline(&mut self) {
        let Some(expires_at) = self.expires_at else {
            return;
        };
        if unix_now() >= expires_at {
            self.close(close::TOKEN_EXPIRED, "the access token expired");
        } else if !self.refresh_asked {
            self.refresh_asked = true;
            let expires_in = expires_at.saturating_sub(unix_now());
            self.send(
                json!({"op": "auth.refresh_required", "expires_in": expires_in})
                    .to_string()
                    .into(),
            );
        }
    }

    fn close(&self, code: u16, reason: &'static str) {
        self.closing.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(Closing { code, reason });
                true
            } else {
                false
            }
        });
    }

    /// Queues a frame; a full queue means the client is too slow.
    fn send(&self, frame: Utf8Bytes) {
        if let Some(out) = &self.out
            && out.try_send(frame).is_err()
        {
            self.close(close::SLOW_CONSUMER, "too slow: resubscribe with since");
        }
    }

    fn allowed_now(&mut self) -> bool {
        let quota = Quota::per_second(self.state.config.ws.ops_per_second.max(1));
        let (decision, tat) = gcra(self.tat, now_us(), quota);
        if let Some(tat) = tat {
            self.tat = Some(tat);
        }
        decision.allowed
    }

    async fn on_text(&mut self, text: &str) {
        if !self.allowed_now() {
            self.strikes += 1;
            if self.strikes >= FLOOD_STRIKES {
                self.close(close::FLOOD, "too many frames");
            } else {
                let id = decode(text).ok().and_then(|f| f.id);
                self.send(error_frame(
                    &id,
                    "rate_limited",
                    "too many frames; slow down",
                ));
            }
            return;
        }
        self.strikes = 0;
        let frame = match decode(text) {
            Ok(frame) => frame,
            Err(e) => return self.send(error_frame(&e.id, e.code, &e.message)),
        };
        let id = frame.id.clone();
        let outcome = self.on_frame(frame).await;
        match outcome {
            Ok(Some(result)) => self.send(reply(&id, result)),
            Ok(None) => {}
            Err(e) => self.send(error_frame(&id, e.code, &e.message)),
        }
    }

    async fn on_frame(&mut self, frame: ClientFrame) -> Result<Option<Value>, ApiError> {
        if let Op::Auth { token } = &frame.op {
            return self.authenticate(token).await.map(Some);
        }
        let Some(principal) = self.principal.clone() else {
            return Err(crate::auth::unauthenticated(
                "authenticate with the auth op first",
            ));
        };
        match frame.op {
            Op::Auth { .. } => Ok(None),
            Op::Ping => Ok(Some(json!({"pong": true}))),
            Op::Subscribe { channel, since } => {
                self.subscribe(&principal, channel, since, &frame.id).await
            }
            Op::Unsubscribe { channel } => match self.subscriptions.remove(&channel) {
                Some(forwarder) => {
                    forwarder.abort();
                    Ok(Some(json!({})))
                }
                None => Err(ws_error("not_subscribed", "not subscribed to that channel")),
            },
            Op::Publish { channel, data } => {
                self.may_publish(&principal, &channel)?;
                let event = Event::new("message", data, crate::request_id::current());
                let position = self
                    .state
                    .events
                    .publish(&channel, Arc::new(event))
                    .await
                    .map_err(|e| ws_error("unavailable", &e.to_string()))?;
                Ok(Some(
                    json!({"offset": position.offset, "epoch": position.epoch}),
                ))
            }
            Op::TaskCreate { task } => {
                if !principal.can(Permission::TasksCreate) {
                    return Err(forbidden("tasks:create"));
                }
                let request: CreateTask = serde_json::from_value(task)
                    .map_err(|e| ws_error("invalid_request", &e.to_string()))?;
                let origin = Origin {
                    correlation_id: None,
                    created_by: Some(&principal.subject),
                };
                let task = self
                    .state
                    .orchestrator
                    .prepare(request, origin, None)
                    .await?;
                let inserted = crate::tasks::insert(&self.state, &principal, vec![task]).await?;
                let inserted = inserted.into_iter().next().ok_or_else(ApiError::internal)?;
                Ok(Some(
                    json!({"task": inserted.task, "created": inserted.created}),
                ))
            }
            Op::WorkerRegister { types, concurrency } => {
                self.register_worker(&principal, types, concurrency, &frame.id)
                    .await
            }
            Op::TaskHeartbeat { task_id } => {
                let held = self.held(&task_id);
                match held {
                    Some(_) => Ok(Some(json!({}))),
                    None => Err(ws_error(
                        "task_not_held",
                        "this worker does not hold that task",
                    )),
                }
            }
            Op::TaskComplete { task_id, result } => self.settle(&task_id, Ok(result)),
            Op::TaskFail {
                task_id,
                error,
                retryable,
            } => {
                let mut failure = if retryable {
                    HandlerError::retryable(error.message)
                } else {
                    HandlerError::permanent(error.message)
                };
                failure.details = error.details;
                self.settle(&task_id, Err(failure))
            }
            Op::TaskCancel { task_id } => {
                if !principal.can(Permission::TasksCancelOwn) {
                    return Err(forbidden("tasks:cancel:own"));
                }
                let task = crate::tasks::cancel_task(&self.state, &principal, &task_id).await?;
                Ok(Some(json!({"task": task})))
            }
        }
    }

    /// Registers this connection as a worker, shares it with the cluster, answers (itself, so
    /// the reply precedes every assignment), then starts forwarding assignments.
    async fn register_worker(
        &mut self,
        principal: &Principal,
        types: Vec<String>,
        concurrency: usize,
        reply_id: &Option<Value>,
    ) -> Result<Option<Value>, ApiError> {
        if !principal.can(Permission::TasksRun) {
            return Err(forbidden("tasks:run"));
        }
        if self.worker.is_some() {
            return Err(ws_error(
                "already_registered",
                "this connection is a worker already",
            ));
        }
        if types.is_empty()
            || types.len() > MAX_WORKER_TYPES
            || !types.iter().all(|t| valid_task_type(t))
        {
            return Err(ws_error(
                "invalid_request",
                &format!(
                    "`types`: 1 to {MAX_WORKER_TYPES} task types of letters, digits, `.`, `_`, `-`, `:`"
                ),
            ));
        }
        if !(1..=MAX_WORKER_CONCURRENCY).contains(&concurrency) {
            return Err(ws_error(
                "invalid_request",
                &format!("`concurrency` is between 1 and {MAX_WORKER_CONCURRENCY}"),
            ));
        }
        let router = self.state.orchestrator.router().clone();
        let (id, mut assignments) = router.register(&principal.subject, types.clone(), concurrency);
        self.worker = Some(id);
        // Acknowledged once the cluster knows the worker, so every node accepts its types from
        // the reply on. A database away only delays that: the node keeps publishing.
        let publish = self.state.orchestrator.publish_workers();
        match tokio::time::timeout(PUBLISH_PATIENCE, publish).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "worker known to this node only for now"),
            Err(_) => {
                tracing::warn!("worker known to this node only for now: publishing timed out")
            }
        }
        // The reply goes out before the first assignment (tasks assigned meanwhile wait in the
        // channel), so a client reading up to its reply never skips a `task.assign`.
        self.send(reply(
            reply_id,
            json!({"worker_id": id, "types": types, "concurrency": concurrency}),
        ));
        let pending = self.pending.clone();
        let out = self.out.clone();
        let closing = self.closing.clone();
        self.assignments = Some(tokio::spawn(async move {
            let Some(out) = out else { return };
            while let Some(assignment) = assignments.recv().await {
                let frame = json!({"op": "task.assign", "task": &*assignment.task}).to_string();
                pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(assignment.task.id, assignment.reply);
                if out.try_send(frame.into()).is_err() {
                    closing.send_if_modified(|current| {
                        current.get_or_insert(Closing {
                            code: close::SLOW_CONSUMER,
                            reason: "too slow to take assignments",
                        });
                        true
                    });
                    return;
                }
            }
        }));
        Ok(None)
    }

    /// The task id, when this worker holds it.
    fn held(&self, task_id: &str) -> Option<uuid::Uuid> {
        let worker = self.worker?;
        let id = uuid::Uuid::parse_str(task_id).ok()?;
        self.state
            .orchestrator
            .router()
            .holds(worker, id)
            .then_some(id)
    }

    /// Hands a worker's outcome to the attempt waiting for it, once.
    fn settle(
        &mut self,
        task_id: &str,
        outcome: Result<Value, HandlerError>,
    ) -> Result<Option<Value>, ApiError> {
        let reply = self.held(task_id).and_then(|id| {
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id)
        });
        match reply.map(|reply| reply.send(outcome)) {
            Some(Ok(())) => Ok(Some(json!({}))),
            _ => Err(ws_error(
                "task_not_held",
                "this worker does not hold that task (finished, cancelled, timed out or never assigned)",
            )),
        }
    }

    async fn authenticate(&mut self, token: &str) -> Result<Value, ApiError> {
        let (principal, expires_at) = self.state.security.authenticate_until(token).await?;
        if let Some(current) = &self.principal
            && current.subject != principal.subject
        {
            return Err(ws_error(
                "forbidden",
                "a connection stays with one subject; reconnect to change it",
            ));
        }
        self.principal = Some(principal.clone());
        self.expires_at = expires_at;
        self.refresh_asked = false;
        Ok(json!({"subject": principal.subject, "role": principal.role}))
    }

    async fn subscribe(
        &mut self,
        principal: &Principal,
        channel: String,
        since: Option<StreamPosition>,
        id: &Option<Value>,
    ) -> Result<Option<Value>, ApiError> {
        if self.subscriptions.contains_key(&channel) {
            return Err(ws_error(
                "already_subscribed",
                "already subscribed to that channel",
            ));
        }
        if self.subscriptions.len() >= self.state.config.ws.max_subscriptions {
            return Err(ws_error(
                "too_many_subscriptions",
                "this connection has as many subscriptions as it may",
            ));
        }
        self.may_subscribe(principal, &channel).await?;
        let bus = &self.state.events;
        let unavailable = |e: mcp_core::events::BusError| ws_error("unavailable", &e.to_string());
        // Live first, then history: nothing published in between is missed; the forwarder
        // skips what the history already delivered.
        let live = bus.subscribe(&channel).await.map_err(unavailable)?;
        let position = bus.position(&channel).await.map_err(unavailable)?;
        let (result, missed, mut delivered) = match since {
            None => (
                json!({"offset": position.offset, "epoch": position.epoch}),
                Vec::new(),
                position.offset,
            ),
            Some(since) => match bus.recover(&channel, &since).await.map_err(unavailable)? {
                Recovery::Recovered(missed) => {
                    let last = missed.last().map_or(since.offset, |d| d.offset);
                    (
                        json!({"recovered": true, "offset": last.max(since.offset), "epoch": position.epoch}),
                        missed,
                        last.max(since.offset),
                    )
                }
                Recovery::Lost => (
                    json!({"recovered": false, "offset": position.offset, "epoch": position.epoch}),
                    Vec::new(),
                    position.offset,
                ),
            },
        };
        self.send(reply(id, result));
        for delivery in &missed {
            self.send(frame_text(delivery));
            delivered = delivered.max(delivery.offset);
        }
        let forwarder = tokio::spawn(forward(
            live,
            delivered,
            self.out.clone(),
            self.closing.clone(),
        ));
        self.subscriptions.insert(channel, forwarder);
        Ok(None)
    }

    async fn may_subscribe(&self, principal: &Principal, channel: &str) -> Result<(), ApiError> {
        let (namespace, rest) = channel.split_once(':').unwrap_or((channel, ""));
        let allowed = match (namespace, rest) {
            ("tasks", "") | ("system.breakers", "") => principal.can(Permission::TasksReadAny),
            ("system.health", "") => principal.can(Permission::HealthRead),
            // Incoming webhooks (crate::hooks): `hooks` and `hooks:{source}`.
            ("hooks", _) => principal.can(Permission::TasksReadAny),
            // A task's events, and a build's or deploy's output (mcp_integrations::vcc): whoever
            // may see the task.
            ("task", id) | ("vcc.build", id) if !id.is_empty() => {
                principal.can(Permission::TasksReadAny) || self.owns_task(principal, id).await?
            }
            ("user", subject) => subject == principal.subject,
            ("conversation", id) if !id.is_empty() => principal.can(Permission::MemoryRead),
            ("memory", "") => principal.can(Permission::MemoryRead),
            ("broadcast", "") => true,
            // VRChat OSC avatar parameters (mcp_integrations::osc): any signed-in principal.
            ("vrchat.osc", "") => true,
            ("vcc.projects", "") => principal.can(Permission::VccRead),
            (ns, rest) if !rest.is_empty() => self.is_open(ns),
            _ => false,
        };
        if allowed {
            Ok(())
        } else {
            Err(ws_error(
                "forbidden",
                &format!("role `{}` may not subscribe to `{channel}`", principal.role),
            ))
        }
    }

    fn may_publish(&self, principal: &Principal, channel: &str) -> Result<(), ApiError> {
        let (namespace, rest) = channel.split_once(':').unwrap_or((channel, ""));
        let allowed = match (namespace, rest) {
            ("broadcast", "") => principal.can(Permission::TasksManage),
            (ns, rest) if !rest.is_empty() => self.is_open(ns),
            _ => false,
        };
        if allowed {
            Ok(())
        } else {
            Err(ws_error(
                "forbidden",
                &format!("role `{}` may not publish to `{channel}`", principal.role),
            ))
        }
    }

    fn is_open(&self, namespace: &str) -> bool {
        self.state
            .config
            .ws
            .open_namespaces
            .iter()
            .any(|n| n == namespace)
    }

    async fn owns_task(&self, principal: &Principal, id: &str) -> Result<bool, ApiError> {
        let Ok(id) = uuid::Uuid::parse_str(id) else {
            return Ok(false);
        };
        let task = self.state.orchestrator.store().get(id).await?;
        Ok(task.is_some_and(|t| crate::tasks::may_see(principal, &t)))
    }
}

/// The delivery's frame as a WebSocket text payload that shares the bytes serialised once per
/// channel instead of copying them for every subscriber.
fn frame_text(delivery: &Delivery) -> Utf8Bytes {
    struct Frame(Arc<str>);
    impl AsRef<[u8]> for Frame {
        fn as_ref(&self) -> &[u8] {
            self.0.as_bytes()
        }
    }
    let shared = axum::body::Bytes::from_owner(Frame(delivery.frame.clone()));
    // Always valid (it is a `str`); the check is a fast scan, not a copy.
    Utf8Bytes::try_from(shared).unwrap_or_else(|_| Utf8Bytes::from(&*delivery.frame))
}

/// Close reasons of `4008`.
const TOO_SLOW: &str = "too slow: resubscribe with since";
const INTERRUPTED: &str =
    "events interrupted (the node's link to Redis changed): resubscribe with since";

/// Moves one subscription's deliveries into the connection's queue, skipping what was already
/// delivered (offsets are increasing per channel).
async fn forward(
    mut live: broadcast::Receiver<Delivery>,
    mut delivered: u64,
    out: Option<mpsc::Sender<Utf8Bytes>>,
    closing: watch::Sender<Option<Closing>>,
) {
    let Some(out) = out else {
        return;
    };
    let slow = |reason: &'static str| {
        closing.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(Closing {
                    code: close::SLOW_CONSUMER,
                    reason,
                });
                true
            } else {
                false
            }
        });
    };
    loop {
        match live.recv().await {
            // The bus's offset-0 filler: the node's link to Redis changed, so the stream this
            // subscription followed ended (a receiver that kept up sees it instead of lagging).
            Ok(delivery) if delivery.offset == 0 => return slow(INTERRUPTED),
            Ok(delivery) => {
                if delivery.offset <= delivered {
                    continue;
                }
                delivered = delivery.offset;
                if out.try_send(frame_text(&delivery)).is_err() {
                    return slow(TOO_SLOW);
                }
            }
            // Lagged by the filler, or really too slow; the cure is the same.
            Err(broadcast::error::RecvError::Lagged(_)) => match live.try_recv() {
                Ok(filler) if filler.offset == 0 => return slow(INTERRUPTED),
                _ => return slow(TOO_SLOW),
            },
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

fn ws_error(code: &'static str, message: &str) -> ApiError {
    ApiError::new(axum::http::StatusCode::BAD_REQUEST, code, message)
}

fn forbidden(permission: &str) -> ApiError {
    ws_error(
        "forbidden",
        &format!("this needs the permission `{permission}`"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(offset: u64) -> Delivery {
        Delivery::new(
            "tasks",
            offset,
            "e",
            Arc::new(Event::new("task.created", json!({}), None)),
        )
    }

    #[tokio::test]
    async fn forwards_in_order_skipping_what_was_delivered() {
        let (tx, rx) = broadcast::channel(16);
        let (out_tx, mut out_rx) = mpsc::channel(16);
        let closing = watch::channel(None).0;
        let forwarder = tokio::spawn(forward(rx, 2, Some(out_tx), closing.clone()));
        for offset in 1..=4 {
            tx.send(delivery(offset)).unwrap();
        }
        for expected in [3, 4] {
            let frame: Value = serde_json::from_str(out_rx.recv().await.unwrap().as_str()).unwrap();
            assert_eq!(frame["offset"], expected);
            assert_eq!(frame["op"], "event");
        }
        drop(tx);
        forwarder.await.unwrap();
        assert!(closing.borrow().is_none());
    }

    #[tokio::test]
    async fn closes_a_consumer_whose_queue_is_full() {
        let (tx, rx) = broadcast::channel(16);
        let (out_tx, _out_rx) = mpsc::channel(1);
        let closing = watch::channel(None).0;
        for offset in 1..=3 {
            tx.send(delivery(offset)).unwrap();
        }
        forward(rx, 0, Some(out_tx), closing.clone()).await;
        assert_eq!(closing.borrow().map(|c| c.code), Some(close::SLOW_CONSUMER));
    }

    #[tokio::test]
    async fn closes_a_subscription_whose_stream_was_interrupted_even_if_it_kept_up() {
        let (tx, rx) = broadcast::channel(16);
        let (out_tx, mut out_rx) = mpsc::channel(16);
        let closing = watch::channel(None).0;
        tx.send(delivery(1)).unwrap();
        // What the Redis bus sends when the node switches between Redis and local.
        tx.send(delivery(0)).unwrap();
        forward(rx, 0, Some(out_tx), closing.clone()).await;
        assert!(
            out_rx.recv().await.is_some(),
            "the event before the interruption"
        );
        let why = closing.borrow().expect("closed");
        assert_eq!((why.code, why.reason), (close::SLOW_CONSUMER, INTERRUPTED));
    }

    #[tokio::test]
    async fn closes_a_consumer_that_lagged_behind_the_bus() {
        let (tx, rx) = broadcast::channel(2);
        let (out_tx, _out_rx) = mpsc::channel(16);
        let closing = watch::channel(None).0;
        for offset in 1..=5 {
            tx.send(delivery(offset)).unwrap();
        }
        forward(rx, 0, Some(out_tx), closing.clone()).await;
        assert_eq!(closing.borrow().map(|c| c.code), Some(close::SLOW_CONSUMER));
    }
}
