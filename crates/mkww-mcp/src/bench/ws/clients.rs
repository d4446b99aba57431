//! The bench's WebSocket clients: subscribers that time each delivery, the publisher, and the
//! clock they share.

use futures::{SinkExt, StreamExt};
use serde_json::json;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// Bytes the client reads at once per connection (tungstenite's default, 128 KiB, is for bulk).
const CLIENT_READ_BUFFER: usize = 8 * 1024;

/// Counters every subscriber adds to.
#[derive(Default)]
pub struct Shared {
    pub delivered: AtomicU64,
    pub closed: AtomicU64,
    /// Why subscribers ended, and how many for each reason.
    pub why: Mutex<BTreeMap<String, usize>>,
}

impl Shared {
    pub fn ended(&self, why: String) {
        self.closed.fetch_add(1, Ordering::Relaxed);
        *lock(&self.why).entry(why).or_default() += 1;
    }

    pub fn closes(&self) -> BTreeMap<String, usize> {
        lock(&self.why).clone()
    }
}

/// What one subscriber saw during the current phase.
#[derive(Default)]
pub struct Tally {
    pub latencies_ns: Vec<u64>,
    pub last_receive_ns: u64,
}

pub struct Subscriber {
    pub tally: Arc<Mutex<Tally>>,
    pub task: JoinHandle<()>,
}

impl Subscriber {
    /// Connects and subscribes in a task of its own; `up` says when it is subscribed.
    pub fn spawn(
        addr: SocketAddr,
        credential: String,
        channel: String,
        shared: Arc<Shared>,
    ) -> (Subscriber, oneshot::Receiver<anyhow::Result<()>>) {
        let tally = Arc::new(Mutex::new(Tally::default()));
        let (up_tx, up) = oneshot::channel();
        let mine = tally.clone();
        let task = tokio::spawn(async move {
            let ws = match subscribe(addr, &credential, &channel).await {
                Ok(ws) => ws,
                Err(e) => {
                    let _ = up_tx.send(Err(e));
                    return;
                }
            };
            let _ = up_tx.send(Ok(()));
            let why = receive(ws, &mine, &shared).await;
            shared.ended(why);
        });
        (Subscriber { tally, task }, up)
    }
}

async fn subscribe(addr: SocketAddr, credential: &str, channel: &str) -> anyhow::Result<Ws> {
    let mut ws = open(addr, credential).await?;
    let frame = json!({"id": 1, "op": "subscribe", "channel": channel}).to_string();
    ws.send(Message::text(frame)).await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(reply))) if reply.contains("\"ok\":true") => return Ok(ws),
            Some(Ok(Message::Text(reply))) => anyhow::bail!("subscribe refused: {reply}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("the server closed the connection"),
        }
    }
}

/// Reads events until the connection ends; says why it ended.
async fn receive(mut ws: Ws, tally: &Mutex<Tally>, shared: &Shared) -> String {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(frame))) => {
                let received = now_ns();
                if let Some(sent) = sent_at(frame.as_str()) {
                    let mut tally = lock(tally);
                    tally.latencies_ns.push(received.saturating_sub(sent));
                    tally.last_receive_ns = received;
                    drop(tally);
                    shared.delivered.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some(Ok(Message::Close(frame))) => {
                return frame.map_or("close without a code".into(), |f| {
                    format!("close {}", u16::from(f.code))
                });
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return format!("error: {e}"),
            None => return "connection ended".into(),
        }
    }
}

/// The send time the publisher put in the event's data (`"data":{"t":…}`).
fn sent_at(frame: &str) -> Option<u64> {
    const KEY: &str = "\"data\":{\"t\":";
    let start = frame.find(KEY)? + KEY.len();
    let rest = &frame[start..];
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    rest[..digits].parse().ok()
}

/// The connection that publishes; its replies are read (and errors counted) by a task.
pub struct Publisher {
    pub sink: tokio::sync::Mutex<futures::stream::SplitSink<Ws, Message>>,
    pub channel: String,
    pub errors: Arc<AtomicU64>,
    pub first_error: Arc<Mutex<String>>,
    pub task: JoinHandle<()>,
}

impl Publisher {
    pub async fn open(
        addr: SocketAddr,
        credential: &str,
        channel: &str,
    ) -> anyhow::Result<Publisher> {
        let (sink, mut stream) = open(addr, credential).await?.split();
        let errors = Arc::new(AtomicU64::new(0));
        let first_error = Arc::new(Mutex::new(String::new()));
        let (counted, first) = (errors.clone(), first_error.clone());
        let task = tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                if let Message::Text(reply) = message
                    && reply.contains("\"error\"")
                    && counted.fetch_add(1, Ordering::Relaxed) == 0
                {
                    *lock(&first) = reply.to_string();
                }
            }
        });
        Ok(Publisher {
            sink: tokio::sync::Mutex::new(sink),
            channel: serde_json::to_string(channel)?,
            errors,
            first_error,
            task,
        })
    }

    pub async fn publish(&self, sent_ns: u64) -> anyhow::Result<()> {
        let frame = format!(
            r#"{{"op":"publish","channel":{},"data":{{"t":{sent_ns}}}}}"#,
            self.channel
        );
        self.sink.lock().await.send(Message::text(frame)).await?;
        Ok(())
    }
}

pub async fn open(addr: SocketAddr, credential: &str) -> anyhow::Result<Ws> {
    let mut request = format!("ws://{addr}/v1/ws").into_client_request()?;
    request
        .headers_mut()
        .insert(AUTHORIZATION, format!("Bearer {credential}").parse()?);
    let config = WebSocketConfig::default()
        .read_buffer_size(CLIENT_READ_BUFFER)
        .write_buffer_size(0);
    let (ws, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), true).await?;
    Ok(ws)
}

/// Nanoseconds since the bench started, on the monotonic clock every client task shares.
pub fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_send_time_out_of_an_event_frame() {
        let frame = r#"{"op":"event","channel":"room:bench","offset":3,"epoch":"e","event":{"type":"message","data":{"t":123456789},"at":"2026-01-01T00:00:00Z"}}"#;
        assert_eq!(sent_at(frame), Some(123_456_789));
        assert_eq!(sent_at(r#"{"id":1,"ok":true,"result":{}}"#), None);
    }
}
