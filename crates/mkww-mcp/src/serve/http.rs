//! Listening: the socket, HTTP or HTTPS, until SIGINT or SIGTERM, with the protections a
//! public edge needs against slow and idle clients (one accept loop for both):
//! - a cap on connections per client IP and in total (`connections.rs`), beyond which a
//!   connection is refused at once (plain HTTP gets a 503 JSON first) and a few more are let
//!   in for the probes only;
//! - a header clock (`http_header_timeout_ms`, also bounding the TLS handshake), under which a
//!   client must send a request's headers, whether the connection is new or kept alive;
//! - an idle clock (`http_idle_timeout_ms`): a connection with no request running and no byte
//!   moving is closed (HTTP/2 connections, responses nobody reads);
//! - the body clock is a layer of the API (`mcp_api`'s `deadline`).
//!
//! Shutdown: on the signal `/readyz` turns 503 (`shutting_down`) while the node serves for
//! `shutdown_readiness_delay_ms`, so load balancers stop sending; then the listener closes, the
//! node stops claiming tasks, WebSockets are closed with 1001 and a reconnect hint, and open
//! connections get `shutdown_grace_ms` to finish.

use super::connections::{
    Activity, Admission, ConnectionCaps, Connections, Tracked, default_total, open_file_limit,
};
use crate::config::Config;
use anyhow::Context;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use mcp_core::Orchestrator;
use mcp_core::health::HealthMonitor;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// The header clock of a connection admitted for the probes only: a probe sends its request at
/// once, and a slot held longer is one a probe cannot use.
const PROBE_HEADER_TIMEOUT: Duration = Duration::from_secs(1);

/// The body of the 503 a connection over a cap gets (JSON like every error; no request was
/// read, so there is no request id).
const OVER_CAPACITY: &str = r#"{"error":{"code":"too_many_connections","message":"too many open connections; try again shortly","request_id":""}}"#;

/// The whole 503 response, as written raw to a plain-HTTP socket refused at accept.
fn over_capacity_raw() -> String {
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         connection: close\r\nretry-after: 1\r\ncontent-length: {}\r\n\r\n{OVER_CAPACITY}",
        OVER_CAPACITY.len()
    )
}

/// How the edge treats connections, from the configuration.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    pub caps: ConnectionCaps,
    /// Not capped per address (`trusted_proxies`).
    pub uncapped: Vec<ipnet::IpNet>,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub drain: Duration,
    pub grace: Duration,
}

impl EdgeConfig {
    pub fn of(config: &Config) -> anyhow::Result<EdgeConfig> {
        let open_files = open_file_limit();
        let total = match config.max_connections {
            0 => default_total(open_files),
            n => n,
        };
        if let Some(limit) = open_files
            && total as u64 >= limit
        {
            tracing::warn!(
                max_connections = total,
                open_file_limit = limit,
                "max_connections is not below the open-file limit: a flood can still exhaust it"
            );
        }
        Ok(EdgeConfig {
            uncapped: config.trusted_proxies()?,
            caps: ConnectionCaps {
                total,
                per_ip: config.max_connections_per_ip,
                probes: config.probe_connections,
            },
            header_timeout: Config::ms(config.http_header_timeout_ms.max(10)),
            idle_timeout: Config::ms(config.http_idle_timeout_ms.max(10)),
            drain: Config::ms(config.readiness_delay_ms()),
            grace: Config::ms(config.shutdown_grace_ms),
        })
    }
}

/// Binds the configured address and says so (the line scripts and tests wait for).
pub async fn bind(
    config: &Config,
    orchestrator: &Orchestrator,
) -> anyhow::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(
        addr = %addr,
        node_id = %orchestrator.config().node_id,
        concurrency = config.worker_concurrency,
        version = env!("CARGO_PKG_VERSION"),
        tls = config.tls_cert.is_some(),
        "listening"
    );
    Ok(listener)
}

/// Serves `app` until SIGINT or SIGTERM; then drains (see the module comment), cancelling
/// `stopping` once the listener has closed.
pub async fn run(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    config: &Config,
    health: &HealthMonitor,
    stopping: &CancellationToken,
) -> anyhow::Result<()> {
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(super::tls::acceptor(cert, key)?),
        _ => None,
    };
    let edge = EdgeConfig::of(config)?;
    tracing::info!(
        max_connections = edge.caps.total,
        max_connections_per_ip = edge.caps.per_ip,
        probe_connections = edge.caps.probes,
        "connection caps"
    );
    let connections = Connections::new(edge.caps, edge.uncapped.clone());
    let accepting = CancellationToken::new();
    let closing = CancellationToken::new();
    let server = Server {
        app,
        tls,
        edge: Arc::new(edge.clone()),
        connections: connections.clone(),
        closing: closing.clone(),
        refused: Arc::new(AtomicU64::new(0)),
    };
    let accept = tokio::spawn(server.accept_loop(listener, accepting.clone()));

    shutdown_signal().await;
    health.begin_drain();
    tracing::info!(
        drain_ms = edge.drain.as_millis() as u64,
        "shutting down: not ready, still serving"
    );
    tokio::select! {
        _ = tokio::time::sleep(edge.drain) => {}
        _ = shutdown_signal() => tracing::info!("second signal: drain cut short"),
    }
    accepting.cancel();
    let _ = accept.await;
    tracing::info!(
        open = connections.open(),
        "shutting down: listener closed, finishing open requests"
    );
    stopping.cancel();
    closing.cancel();
    if !connections.wait_closed(Instant::now() + edge.grace).await {
        tracing::warn!(
            open = connections.open(),
            "connections still open after shutdown_grace_ms; they close with the process"
        );
    }
    Ok(())
}

/// The accept loop and what every connection shares.
#[derive(Clone)]
struct Server {
    app: axum::Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    edge: Arc<EdgeConfig>,
    connections: Arc<Connections>,
    /// Cancelled when open connections should finish their request and close.
    closing: CancellationToken,
    /// Connections refused since start, to log a flood as a handful of lines.
    refused: Arc<AtomicU64>,
}

impl Server {
    async fn accept_loop(self, listener: tokio::net::TcpListener, accepting: CancellationToken) {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = accepting.cancelled() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors, most likely: wait for some to close rather
                    // than spin.
                    tracing::error!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (permit, probes_only) = match self.connections.admit(peer.ip()) {
                Admission::Full(permit) => (permit, false),
                Admission::ProbesOnly(permit) => (permit, true),
                Admission::Refused(reason) => {
                    self.refuse(tcp, peer, reason);
                    continue;
                }
            };
            // No Nagle delay: WebSocket frames and small replies go out at once.
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
            let activity = Activity::new();
            let io = Tracked::new(tcp, permit, activity.clone());
            let server = self.clone();
            tokio::spawn(async move {
                match server.tls.clone() {
                    Some(acceptor) => {
                        let handshake = acceptor.accept(io);
                        match tokio::time::timeout(server.header_timeout(probes_only), handshake)
                            .await
                        {
                            Ok(Ok(tls)) => server.serve(tls, peer, activity, probes_only).await,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed")
                            }
                            Err(_) => tracing::debug!(%peer, "TLS handshake too slow"),
                        }
                    }
                    None => server.serve(io, peer, activity, probes_only).await,
                }
            });
        }
    }

    fn header_timeout(&self, probes_only: bool) -> Duration {
        if probes_only {
            self.edge.header_timeout.min(PROBE_HEADER_TIMEOUT)
        } else {
            self.edge.header_timeout
        }
    }

    /// Closes a connection over a cap at once: a plain-HTTP client first reads a 503 (written
    /// without waiting: it fits an empty socket buffer), a TLS one just sees the close.
    fn refuse(&self, tcp: TcpStream, peer: SocketAddr, reason: &'static str) {
        if self.tls.is_none() {
            let _ = tcp.try_write(over_capacity_raw().as_bytes());
        }
        drop(tcp);
        let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        if refused.is_power_of_two() {
            tracing::warn!(%peer, reason, refused, "connection refused");
        }
    }

    /// Serves HTTP/1 or HTTP/2 (and upgrades to WebSocket) on one connection until it ends,
    /// idles out, or the server closes.
    async fn serve<I>(self, io: I, peer: SocketAddr, activity: Arc<Activity>, probes_only: bool)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_timeout(probes_only))
            .keep_alive(!probes_only);
        builder.http2().timer(TokioTimer::new());
        let requests = Arc::new(Requests::default());
        let service = {
            let (app, requests) = (self.app.clone(), requests.clone());
            hyper::service::service_fn(move |mut request: Request<Incoming>| {
                // The peer address feeds per-IP rate limits and the audit log.
                request.extensions_mut().insert(ConnectInfo(peer));
                let (app, requests) = (app.clone(), requests.clone());
                async move {
                    if probes_only && !mcp_api::access::is_probe(request.uri().path()) {
                        return Ok::<_, Infallible>(over_capacity());
                    }
                    let _running = Running::start(&requests);
                    app.oneshot(request.map(axum::body::Body::new)).await
                }
            })
        };
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        tokio::pin!(connection);
        let idle = self.idle_limit(&activity, &requests, probes_only);
        tokio::pin!(idle);
        let mut finishing = false;
        loop {
            tokio::select! {
                served = connection.as_mut() => {
                    if let Err(e) = served {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = &mut idle => {
                    // Nothing running, nothing moving: close at once.
                    tracing::debug!(%peer, "idle connection closed");
                    return;
                }
                _ = self.closing.cancelled(), if !finishing => {
                    finishing = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }

    /// Resolves once the connection has had no request running and no byte moving for the
    /// idle timeout; for the header timeout while it has not asked for anything yet (hyper's
    /// header clock starts only once HTTP/1 is recognised, after the first bytes).
    async fn idle_limit(&self, activity: &Activity, requests: &Requests, probes_only: bool) {
        loop {
            let limit = if probes_only || !requests.asked.load(Ordering::Acquire) {
                self.header_timeout(probes_only)
            } else {
                self.edge.idle_timeout
            };
            let quiet = activity.quiet_for();
            if quiet >= limit && requests.running.load(Ordering::Acquire) == 0 {
                return;
            }
            let wait = limit.saturating_sub(quiet).max(Duration::from_millis(10));
            tokio::time::sleep(wait).await;
        }
    }
}

/// The requests of one connection.
#[derive(Default)]
struct Requests {
    /// Being handled now.
    running: AtomicUsize,
    /// At least one arrived.
    asked: AtomicBool,
}

/// Counts a request as running while it is handled.
struct Running<'a>(&'a Requests);

impl<'a> Running<'a> {
    fn start(requests: &'a Requests) -> Running<'a> {
        requests.asked.store(true, Ordering::Release);
        requests.running.fetch_add(1, Ordering::AcqRel);
        Running(requests)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The answer to anything but a probe on a connection admitted for the probes only.
fn over_capacity() -> Response<axum::body::Body> {
    let mut response = Response::new(axum::body::Body::from(OVER_CAPACITY));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canned_refusal_is_a_complete_json_response() {
        let text = over_capacity_raw();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"]["code"], "too_many_connections");
    }
}
