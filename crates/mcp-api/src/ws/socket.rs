//! Runs one connection: the writer task draining the queue, the reader loop with its heartbeats,
//! deadlines and flood control, and the dispatch of each client op to the part that handles it.

use super::close;
use super::connection::{Closing, Connection, error_frame, forbidden, reply, unix_now, ws_error};
use super::frame::{ClientFrame, Op, decode};
use super::queue::Next;
use crate::error::ApiError;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::{SinkExt, StreamExt};
use mcp_core::HandlerError;
use mcp_core::events::Event;
use mcp_core::limiter::{Quota, gcra, now_us};
use mcp_core::principal::Permission;
use mcp_core::services::Creator;
use mcp_core::task::CreateTask;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument;

/// How long a closing connection may take to send what was queued before the close frame.
const CLOSE_FLUSH: Duration = Duration::from_millis(500);

/// Most frames written before one flush.
const WRITE_BATCH: usize = 64;

/// How many refused frames in a row end the connection.
const FLOOD_STRIKES: u32 = 20;

impl Connection {
    pub(super) async fn run(mut self, socket: WebSocket) {
        let _open = super::gauges::Counted::new("mcp_ws_connections");
        let config = self.state.config.ws.clone();
        let (mut sink, mut stream) = socket.split();
        let (out_tx, mut out_rx) = super::queue::queue(config.send_queue);
        self.out = Some(out_tx);
        let mut closing_rx = self.closing.subscribe();
        // The writer: frames in order; a close ends it with the close frame, after what was
        // already queued (error replies explain the close) if the client takes it promptly.
        // It waits on the queue alone: whoever closes the connection nudges it through the
        // queue (`Connection::close`), and the reader asks for pings the same way.
        let writer = self.state.ws_fanout.spawn(async move {
            loop {
                // A closed watch (every sender gone) counts as closing, as a change would.
                if closing_rx.has_changed().unwrap_or(true) {
                    let flush = async {
                        while let Some(text) = out_rx.try_recv() {
                            if sink.send(Message::Text(text)).await.is_err() {
                                return;
                            }
                        }
                    };
                    let _ = tokio::time::timeout(CLOSE_FLUSH, flush).await;
                    break;
                }
                match out_rx.next().await {
                    // Whatever else is queued goes out with it, in one flush (one send() for
                    // many frames is most of the fan-out cost). Each write notes when the
                    // socket holds it up: only then is a full queue the client's fault.
                    Next::Frame(text) => {
                        if out_rx
                            .writing(sink.feed(Message::Text(text)))
                            .await
                            .is_err()
                        {
                            return;
                        }
                        let mut batched = 1;
                        while batched < WRITE_BATCH {
                            let Some(text) = out_rx.try_recv() else { break };
                            if out_rx
                                .writing(sink.feed(Message::Text(text)))
                                .await
                                .is_err()
                            {
                                return;
                            }
                            batched += 1;
                        }
                        if out_rx.writing(sink.flush()).await.is_err() {
                            return;
                        }
                    }
                    Next::Ping => {
                        if sink.send(Message::Ping(Default::default())).await.is_err() {
                            return;
                        }
                    }
                    Next::Nudged => {}
                    Next::End => break,
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
        // Subscribed before the first check, so that no revocation falls in between.
        let mut revocations = self.state.security.revocations.watch();
        self.close_if_revoked();
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
                        // Boxed: the op's future (a store call, a subscription) is allocated
                        // while it runs instead of making every idle connection's task as
                        // large as the largest op.
                        Some(Ok(Message::Text(text))) => Box::pin(self.on_text(text.as_str())).await,
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
                        if let Some(out) = &self.out {
                            out.ping();
                        }
                    }
                }
                _ = tokio::time::sleep_until(auth_deadline), if self.principal.is_none() => {
                    self.close(close::UNAUTHENTICATED, "authenticate with the auth op first");
                }
                _ = tokio::time::sleep_until(token_deadline.unwrap_or(auth_deadline)), if token_deadline.is_some() => {
                    self.on_token_deadline();
                }
                Ok(()) = revocations.changed() => self.close_if_revoked(),
                _ = closing_watch.changed() => {}
                _ = shutdown.cancelled() => self.going_away(),
            }
            if self.closing.borrow().is_some() {
                break;
            }
        }
        if self
            .closing
            .borrow()
            .is_some_and(|c| c.code == close::SLOW_CONSUMER)
        {
            metrics::counter!("mcp_ws_slow_consumer_closes_total").increment(1);
        }
        // Dropping each ends its forwarder and lets go of its channel.
        self.subscriptions.clear();
        // A worker that goes gives its tasks back at once.
        self.stop_working();
        if self.closing.borrow().is_none() {
            self.closing.send_replace(Some(Closing {
                code: 1000,
                reason: "bye",
            }));
        }
        // Closing, whoever set it: the writer sends what is queued (briefly) and the close.
        if let Some(out) = self.out.take() {
            out.nudge();
        }
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
    pub(super) fn token_deadline(&self) -> Option<Instant> {
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

    pub(super) fn on_token_deadline(&mut self) {
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

    pub(super) fn allowed_now(&mut self) -> bool {
        let quota = Quota::per_second(self.state.config.ws.ops_per_second.max(1));
        let (decision, tat) = gcra(self.tat, now_us(), quota);
        if let Some(tat) = tat {
            self.tat = Some(tat);
        }
        decision.allowed
    }

    pub(super) async fn on_text(&mut self, text: &str) {
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
        let span = op_span(&frame);
        let outcome = self.on_frame(frame).instrument(span.clone()).await;
        if let Err(e) = &outcome {
            span.record("otel.status_code", "ERROR");
            span.record("mcp.error_code", e.code);
        }
        match outcome {
            Ok(Some(result)) => self.send(reply(&id, result)),
            Ok(None) => {}
            Err(e) => self.send(error_frame(&id, e.code, &e.message)),
        }
    }

    pub(super) async fn on_frame(&mut self, frame: ClientFrame) -> Result<Option<Value>, ApiError> {
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
                Some(_ended) => Ok(Some(json!({}))),
                None => Err(ws_error("not_subscribed", "not subscribed to that channel")),
            },
            Op::Publish { channel, data } => {
                self.may_publish(&principal, &channel)?;
                self.may_send(&principal, &data).await?;
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
                self.count_write(&principal).await?;
                let request: CreateTask = serde_json::from_value(task)
                    .map_err(|e| ws_error("invalid_request", &e.to_string()))?;
                let inserted = self
                    .state
                    .tasks
                    .create(Creator::Principal(&principal), request, None)
                    .await?;
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
            Op::TaskProgress {
                task_id,
                progress,
                message,
            } => self.progress(&task_id, progress, message).await,
            Op::TaskFail {
                task_id,
                error,
                retryable,
                retry_after_ms,
            } => {
                let mut failure = if retryable {
                    HandlerError::retryable(error.message)
                } else {
                    HandlerError::permanent(error.message)
                };
                failure.details = error.details;
                if let Some(ms) = retry_after_ms {
                    failure = failure.with_retry_after(std::time::Duration::from_millis(ms));
                }
                self.settle(&task_id, Err(failure))
            }
            Op::TaskCancel { task_id } => {
                if !principal.can(Permission::TasksCancelOwn) {
                    return Err(forbidden("tasks:cancel:own"));
                }
                let task = self.state.tasks.cancel(&principal, &task_id).await?;
                Ok(Some(json!({"task": task})))
            }
        }
    }

    pub(super) async fn authenticate(&mut self, token: &str) -> Result<Value, ApiError> {
        let found = self.state.security.authenticate_credential(token).await?;
        let principal = found.principal;
        if let Some(current) = &self.principal
            && current.subject != principal.subject
        {
            return Err(ws_error(
                "forbidden",
                "a connection stays with one subject; reconnect to change it",
            ));
        }
        let role_changed = self
            .principal
            .as_ref()
            .is_some_and(|current| current.role != principal.role);
        self.principal = Some(principal.clone());
        self.expires_at = found.expires_at;
        self.credential = Some(found.credential);
        self.refresh_asked = false;
        let mut result = json!({"subject": principal.subject, "role": principal.role});
        if role_changed {
            let dropped = self.recheck(&principal).await;
            result["unsubscribed"] = json!(dropped);
        }
        Ok(result)
    }

    /// After a role change: drops every subscription the new role may not hold (each with an
    /// `unsubscribed` frame) and the worker registration if it may no longer run tasks.
    /// Returns the dropped channels.
    async fn recheck(&mut self, principal: &crate::auth::Principal) -> Vec<String> {
        let mut channels: Vec<String> = self.subscriptions.keys().cloned().collect();
        channels.sort();
        let mut dropped = Vec::new();
        for channel in channels {
            // A check that cannot be made (the store is down) drops the subscription too.
            if self.may_subscribe(principal, &channel).await.is_ok() {
                continue;
            }
            // Dropping it ends its forwarder and lets go of the channel.
            self.subscriptions.remove(&channel);
            self.send(
                json!({"op": "unsubscribed", "channel": channel, "reason": "forbidden"})
                    .to_string()
                    .into(),
            );
            dropped.push(channel);
        }
        if !principal.can(Permission::TasksRun) && self.worker.is_some() {
            self.stop_working();
            self.send(
                json!({"op": "worker.unregistered", "reason": "forbidden"})
                    .to_string()
                    .into(),
            );
        }
        dropped
    }

    /// Ends this connection's worker role: unregistered from the balancer, its assignments
    /// stopped, and its pending replies dropped, which tells each waiting attempt to give its
    /// task back without spending the attempt (see `run`).
    fn stop_working(&mut self) {
        if let Some(worker) = self.worker.take() {
            self.state.orchestrator.balancer().unregister(worker);
        }
        if let Some(assignments) = self.assignments.take() {
            assignments.abort();
        }
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// The span of one client op (none while tracing is off): `ws.task.create`, `ws.subscribe`…
fn op_span(frame: &ClientFrame) -> tracing::Span {
    if !mcp_core::trace::enabled() {
        return tracing::Span::none();
    }
    let op = frame.op.name();
    tracing::info_span!(
        parent: None,
        "ws.op",
        otel.name = %format_args!("ws {op}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        mcp.ws.op = op,
        mcp.error_code = tracing::field::Empty
    )
}
