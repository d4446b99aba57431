//! Listening: the socket, HTTP or HTTPS, until SIGINT or SIGTERM.

use crate::config::Config;
use anyhow::Context;
use mcp_core::Orchestrator;
use tokio_util::sync::CancellationToken;

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

/// Serves `app` until SIGINT or SIGTERM, which also cancels `stopping`; requests in flight
/// are drained first.
pub async fn run(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    config: &Config,
    stopping: &CancellationToken,
) -> anyhow::Result<()> {
    let stop = || {
        let stopping = stopping.clone();
        async move {
            shutdown_signal().await;
            stopping.cancel();
        }
    };
    match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => {
            super::tls::serve_tls(listener, app, cert, key, stop()).await?;
        }
        _ => axum::serve(
            // No Nagle delay: WebSocket frames and small replies go out at once.
            axum::serve::ListenerExt::tap_io(listener, |tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                }
            }),
            // The peer address feeds per-IP rate limits and the audit log.
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(stop())
        .await
        .context("HTTP server failed")?,
    }
    Ok(())
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
