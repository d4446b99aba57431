//! `bench tasks --subscribe`: a real WebSocket client subscribed to `tasks` on the bench's API,
//! so every transition is made into an event, fanned out and written to a socket, and read.
//! It counts what it receives (no JSON parse: the client shares the cores with the workers).
//!
//! The client runs on a thread and a runtime of its own, as a real client runs in a process of
//! its own: on the bench's runtime it would wait its turn behind the workers' tasks, and the
//! server would see a client that falls behind for no fault of its own.

use super::ws::clients::{Ws, open};
use anyhow::Context;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

/// A subscriber on one channel and what it has seen.
pub struct Subscriber {
    /// The channel's offset when the subscription started.
    pub start_offset: u64,
    received: Arc<AtomicU64>,
    ended: Arc<Mutex<Option<String>>>,
    /// Ends the client when sent or dropped.
    _stop: oneshot::Sender<()>,
}

impl Subscriber {
    pub async fn start(addr: SocketAddr, token: &str, channel: &str) -> anyhow::Result<Subscriber> {
        let (ready_tx, ready) = oneshot::channel();
        let (stop, stopped) = oneshot::channel();
        let received = Arc::new(AtomicU64::new(0));
        let ended = Arc::new(Mutex::new(None));
        let (count, why) = (received.clone(), ended.clone());
        let (token, channel) = (token.to_owned(), channel.to_owned());
        std::thread::Builder::new()
            .name("bench-subscriber".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.into()));
                        return;
                    }
                };
                runtime.block_on(async move {
                    tokio::select! {
                        () = client(addr, &token, &channel, ready_tx, count, why) => {}
                        _ = stopped => {}
                    }
                });
            })?;
        let start_offset = ready.await.context("the subscriber thread ended")??;
        Ok(Subscriber {
            start_offset,
            received,
            ended,
            _stop: stop,
        })
    }

    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Why the connection ended, if it did.
    pub fn ended(&self) -> Option<String> {
        self.ended.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until `expected` events arrived, the connection ended, or `patience` ran out.
    pub async fn wait_for(&self, expected: u64, patience: Duration) {
        let deadline = Instant::now() + patience;
        while self.received() < expected && self.ended().is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// The client: subscribes (the start offset goes to `ready`), then counts event frames until
/// the connection ends.
async fn client(
    addr: SocketAddr,
    token: &str,
    channel: &str,
    ready: oneshot::Sender<anyhow::Result<u64>>,
    count: Arc<AtomicU64>,
    why: Arc<Mutex<Option<String>>>,
) {
    let mut ws = match subscribed(addr, token, channel).await {
        Ok((ws, start_offset)) => {
            let _ = ready.send(Ok(start_offset));
            ws
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let reason = loop {
        match ws.next().await {
            Some(Ok(Message::Text(frame))) if frame.starts_with(r#"{"op":"event""#) => {
                count.fetch_add(1, Ordering::Relaxed);
            }
            Some(Ok(Message::Close(frame))) => {
                break frame.map_or("close without a code".into(), |f| {
                    format!("close {} ({})", u16::from(f.code), f.reason)
                });
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => break format!("error: {e}"),
            None => break "connection ended".into(),
        }
    };
    *why.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
}

/// Opens a connection and subscribes; the channel's offset then.
async fn subscribed(addr: SocketAddr, token: &str, channel: &str) -> anyhow::Result<(Ws, u64)> {
    let mut ws = open(addr, token).await?;
    let frame = json!({"id": 1, "op": "subscribe", "channel": channel}).to_string();
    ws.send(Message::text(frame)).await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(reply))) => {
                let reply: serde_json::Value = serde_json::from_str(reply.as_str())?;
                anyhow::ensure!(reply["ok"] == true, "subscribe refused: {reply}");
                let offset = reply["result"]["offset"]
                    .as_u64()
                    .context("no offset in the subscribe reply")?;
                return Ok((ws, offset));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("the server closed the connection"),
        }
    }
}
