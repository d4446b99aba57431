//! `bench tasks --subscribe`: a real WebSocket client subscribed to `tasks` on the bench's API,
//! so every transition is made into an event, fanned out and written to a socket, and read.
//! It counts what it receives (no JSON parse: the client shares the cores with the workers).

use super::ws::clients::open;
use anyhow::Context;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// A subscriber on one channel and what it has seen.
pub struct Subscriber {
    /// The channel's offset when the subscription started.
    pub start_offset: u64,
    received: Arc<AtomicU64>,
    ended: Arc<Mutex<Option<String>>>,
    task: JoinHandle<()>,
}

impl Subscriber {
    pub async fn start(addr: SocketAddr, token: &str, channel: &str) -> anyhow::Result<Subscriber> {
        let mut ws = open(addr, token).await?;
        let frame = json!({"id": 1, "op": "subscribe", "channel": channel}).to_string();
        ws.send(Message::text(frame)).await?;
        let start_offset = loop {
            match ws.next().await {
                Some(Ok(Message::Text(reply))) => {
                    let reply: serde_json::Value = serde_json::from_str(reply.as_str())?;
                    anyhow::ensure!(reply["ok"] == true, "subscribe refused: {reply}");
                    break reply["result"]["offset"]
                        .as_u64()
                        .context("no offset in the subscribe reply")?;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => anyhow::bail!("the server closed the connection"),
            }
        };
        let received = Arc::new(AtomicU64::new(0));
        let ended = Arc::new(Mutex::new(None));
        let (count, why) = (received.clone(), ended.clone());
        let task = tokio::spawn(async move {
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
        });
        Ok(Subscriber {
            start_offset,
            received,
            ended,
            task,
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

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}
