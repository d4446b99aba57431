//! The cluster's event bus: offsets, history and fan-out in Redis, so an event published on any
//! node reaches the subscribers of every node, and a subscriber can recover what it missed from
//! whichever node it reconnects to.
//!
//! Per channel, under the deployment's key prefix: `events:{channel}:offset` (the last offset),
//! `events:{channel}:stream` (the history, a stream whose entry ids are the offsets, trimmed to
//! about `history_size`) and `events:{channel}:epoch`. One Lua script per event takes the next
//! offset, appends the event to the stream, refreshes the three keys' TTL (`history_ttl`: idle
//! channels vanish) and publishes the finished WebSocket frame on the deployment's single pub/sub
//! channel `{prefix}events`. If the epoch key or the offset key is missing (first use, expired,
//! or Redis lost its data) the script starts a new epoch with an empty history, so no older
//! position can be recovered against it.
//!
//! Each node holds one pub/sub connection, read by one background task that fans the frames out
//! to local broadcast senders, only for channels someone on this node subscribed to. A channel
//! is observed (`EventBus::observed`) while its epoch key exists: `position`, `subscribe` and
//! `publish` make it, and each node refreshes the keys of the channels subscribed on it, so a
//! quiet channel with a subscriber never expires.
//!
//! Losing Redis: `publish` and the rest fail with `BusError::Unavailable`; the background task
//! reconnects by itself with backoff. Events published while this node's link was down never
//! reach it, so the rule is: **when the link drops, every receiver on the node lags** (it gets
//! `RecvError::Lagged`, after which it skips the offset-0 filler used to cause it, and must
//! recover with `since`), and `subscribe` fails until the link is back. The same happens to a
//! channel's receivers when its live stream skips an offset or changes epoch.

use async_trait::async_trait;
use futures::StreamExt;
use mcp_core::events::{
    BusConfig, BusError, Delivery, Event, EventBus, Recovery, StreamPosition, Subscription,
};
use redis::aio::{ConnectionManager, PubSubSink, PubSubStream};
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::task::AbortHandle;
use tracing::{info, warn};

/// Shared start of both scripts: the channel's epoch, a new one (with an empty history) when the
/// epoch or the offset is missing. KEYS: offset, stream, epoch. ARGV[1]: a fresh epoch,
/// ARGV[2]: TTL in ms.
const ENSURE_EPOCH: &str = r#"
local epoch = redis.call('GET', KEYS[3])
if not epoch or redis.call('EXISTS', KEYS[1]) == 0 then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('SET', KEYS[1], 0, 'PX', ARGV[2])
  redis.call('SET', KEYS[3], epoch, 'PX', ARGV[2])
end
"#;

/// Publishes one event. ARGV[3]: history size, ARGV[4]: the channel as a JSON string,
/// ARGV[5]: the event as JSON, ARGV[6]: the pub/sub channel. Returns `{offset, epoch}`. The frame
/// is exactly what `Delivery::new` makes.
const PUBLISH: &str = r#"
local offset = redis.call('INCR', KEYS[1])
local id = string.format('%d', offset)
local frame = '{"op":"event","channel":' .. ARGV[4] .. ',"offset":' .. id .. ',"epoch":"' ..
  epoch .. '","event":' .. ARGV[5] .. '}'
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], id .. '-0', 'f', frame)
for i = 1, 3 do
  redis.call('PEXPIRE', KEYS[i], ARGV[2])
end
redis.call('PUBLISH', ARGV[6], frame)
return {offset, epoch}
"#;

/// The channel's position, making its epoch if it has none; someone is looking at it, so its
/// keys live another TTL. Returns `{offset, epoch}`.
const POSITION: &str = r#"
for i = 1, 3 do
  redis.call('PEXPIRE', KEYS[i], ARGV[2])
end
return {tonumber(redis.call('GET', KEYS[1])), epoch}
"#;

/// Pause before the first attempt to restore the pub/sub link; doubles up to the maximum.
const RELINK_MIN: Duration = Duration::from_millis(100);
const RELINK_MAX: Duration = Duration::from_secs(5);
/// Longest wait for Redis while linking.
const LINK_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a quiet link is checked with a PING, and how long the answer may take: a link
/// that died without closing is noticed this way.
const LINK_CHECK_EVERY: Duration = Duration::from_secs(15);
const LINK_CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// Local channels held before the ones nobody listens to any more are looked for.
const LOCAL_SWEEP_AT: usize = 64;
/// How often the keys of channels subscribed on this node are refreshed: a third of the TTL,
/// within these bounds.
const KEEP_ALIVE_MIN: Duration = Duration::from_millis(100);
const KEEP_ALIVE_MAX: Duration = Duration::from_secs(600);

/// An event bus shared by every node that connects to the same Redis with the same prefix.
#[derive(Clone)]
pub struct RedisBus {
    inner: Arc<Inner>,
}

struct Inner {
    connection: ConnectionManager,
    publish: redis::Script,
    position: redis::Script,
    prefix: String,
    /// The deployment's pub/sub channel.
    topic: String,
    /// Names fresh epochs: random per bus, plus a counter.
    node: String,
    epochs: AtomicU64,
    config: BusConfig,
    local: Arc<Local>,
    /// The link's reader and the keep-alive of subscribed channels.
    background: Vec<AbortHandle>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.background.iter().for_each(AbortHandle::abort);
    }
}

/// The three keys of a channel.
struct Keys {
    offset: String,
    stream: String,
    epoch: String,
}

fn unavailable(e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(e.to_string())
}

impl RedisBus {
    /// Connects to `url` and links this node to the deployment's pub/sub channel; every key is
    /// stored under `prefix` (one per deployment or test run).
    pub async fn connect(url: &str, prefix: &str, config: BusConfig) -> Result<Self, BusError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let connection = ConnectionManager::new(client.clone())
            .await
            .map_err(unavailable)?;
        let topic = format!("{prefix}events");
        let (sink, stream) = link(&client, &topic).await?;
        let local = Arc::new(Local {
            buffer: config.buffer.max(1),
            state: Mutex::new(LocalState {
                linked: true,
                channels: HashMap::new(),
                sweep_at_len: LOCAL_SWEEP_AT,
            }),
        });
        let listener =
            tokio::spawn(listen(client, topic.clone(), sink, stream, local.clone())).abort_handle();
        let keep_every = (config.history_ttl / 3).clamp(KEEP_ALIVE_MIN, KEEP_ALIVE_MAX);
        let inner = Arc::new_cyclic(|me: &Weak<Inner>| Inner {
            connection,
            publish: redis::Script::new(&format!("{ENSURE_EPOCH}{PUBLISH}")),
            position: redis::Script::new(&format!("{ENSURE_EPOCH}{POSITION}")),
            prefix: prefix.to_owned(),
            topic,
            node: uuid::Uuid::new_v4().simple().to_string(),
            epochs: AtomicU64::new(0),
            config: BusConfig {
                history_size: config.history_size.max(1),
                buffer: config.buffer.max(1),
                ..config
            },
            local,
            background: vec![
                listener,
                tokio::spawn(keep_alive(me.clone(), keep_every)).abort_handle(),
            ],
        });
        Ok(RedisBus { inner })
    }

    /// Deletes every key under the prefix (test clean-up; what a Redis that lost its data looks
    /// like to the nodes).
    pub async fn clear(&self) -> Result<(), BusError> {
        let mut connection = self.inner.connection.clone();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.inner.prefix))
            .query_async(&mut connection)
            .await
            .map_err(unavailable)?;
        if !keys.is_empty() {
            redis::cmd("DEL")
                .arg(&keys)
                .query_async::<()>(&mut connection)
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }
}

impl Inner {
    fn keys(&self, channel: &str) -> Keys {
        let base = format!("{}events:{channel}:", self.prefix);
        Keys {
            offset: format!("{base}offset"),
            stream: format!("{base}stream"),
            epoch: format!("{base}epoch"),
        }
    }

    fn fresh_epoch(&self) -> String {
        let n = self.epochs.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.node)
    }

    fn ttl_ms(&self) -> u64 {
        (self.config.history_ttl.as_millis() as u64).max(1)
    }

    /// The positions of `channels` (made if missing), and another TTL for their keys; one round
    /// trip.
    async fn positions(&self, channels: &[String]) -> Result<Vec<StreamPosition>, BusError> {
        let mut pipe = redis::pipe();
        pipe.load_script(&self.position).ignore();
        for channel in channels {
            let keys = self.keys(channel);
            pipe.invoke_script(
                self.position
                    .key(keys.offset)
                    .key(keys.stream)
                    .key(keys.epoch)
                    .arg(self.fresh_epoch())
                    .arg(self.ttl_ms()),
            );
        }
        let replies: Vec<(u64, String)> = pipe
            .query_async(&mut self.connection.clone())
            .await
            .map_err(unavailable)?;
        Ok(replies
            .into_iter()
            .map(|(offset, epoch)| StreamPosition { offset, epoch })
            .collect())
    }
}

/// Refreshes, every `every`, the keys of the channels someone on this node subscribes to.
async fn keep_alive(inner: Weak<Inner>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let watched = inner.local.watched();
        if watched.is_empty() {
            continue;
        }
        if let Err(e) = inner.positions(&watched).await {
            tracing::debug!(error = %e, "event bus: cannot refresh subscribed channels");
        }
    }
}

#[async_trait]
impl EventBus for RedisBus {
    async fn publish(&self, channel: &str, event: Arc<Event>) -> Result<StreamPosition, BusError> {
        let mut positions = self.publish_batch(&[(channel.to_owned(), event)]).await?;
        positions
            .pop()
            .ok_or_else(|| unavailable("Redis answered no position"))
    }

    /// One round trip: the script is loaded, then run once per event, in order.
    async fn publish_batch(
        &self,
        events: &[(String, Arc<Event>)],
    ) -> Result<Vec<StreamPosition>, BusError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let inner = &self.inner;
        let mut pipe = redis::pipe();
        pipe.load_script(&inner.publish).ignore();
        for (channel, event) in events {
            let keys = inner.keys(channel);
            let channel_json = serde_json::to_string(channel).map_err(unavailable)?;
            let event_json = serde_json::to_string(&**event).map_err(unavailable)?;
            pipe.invoke_script(
                inner
                    .publish
                    .key(keys.offset)
                    .key(keys.stream)
                    .key(keys.epoch)
                    .arg(inner.fresh_epoch())
                    .arg(inner.ttl_ms())
                    .arg(inner.config.history_size)
                    .arg(channel_json)
                    .arg(event_json)
                    .arg(&inner.topic),
            );
        }
        let replies: Vec<(u64, String)> = pipe
            .query_async(&mut inner.connection.clone())
            .await
            .map_err(unavailable)?;
        Ok(replies
            .into_iter()
            .map(|(offset, epoch)| StreamPosition { offset, epoch })
            .collect())
    }

    async fn observed(&self, channels: &[String]) -> Result<Vec<bool>, BusError> {
        if channels.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for channel in channels {
            pipe.cmd("EXISTS").arg(self.inner.keys(channel).epoch);
        }
        pipe.query_async(&mut self.inner.connection.clone())
            .await
            .map_err(unavailable)
    }

    async fn subscribe(&self, channel: &str) -> Result<Subscription, BusError> {
        let subscription = self.inner.local.subscribe(channel)?;
        // Observed from now on, and kept alive while someone here listens.
        self.inner.positions(&[channel.to_owned()]).await?;
        Ok(subscription)
    }

    async fn recover(&self, channel: &str, since: &StreamPosition) -> Result<Recovery, BusError> {
        let keys = self.inner.keys(channel);
        let Some(first) = since.offset.checked_add(1) else {
            return Ok(Recovery::Lost);
        };
        type Entries = Vec<(String, Vec<String>)>;
        let (epoch, offset, entries): (Option<String>, Option<u64>, Entries) = redis::pipe()
            .atomic()
            .cmd("GET")
            .arg(&keys.epoch)
            .cmd("GET")
            .arg(&keys.offset)
            .cmd("XRANGE")
            .arg(&keys.stream)
            .arg(format!("{first}-0"))
            .arg("+")
            .query_async(&mut self.inner.connection.clone())
            .await
            .map_err(unavailable)?;
        let (Some(epoch), Some(offset)) = (epoch, offset) else {
            // Expired or lost with its history.
            return Ok(Recovery::Lost);
        };
        if epoch != since.epoch || since.offset > offset {
            return Ok(Recovery::Lost);
        }
        let mut missed = Vec::with_capacity(entries.len());
        for (expected, (id, fields)) in (first..).zip(entries) {
            let held = id
                .strip_suffix("-0")
                .and_then(|n| n.parse::<u64>().ok())
                .filter(|n| *n == expected);
            let frame = fields.into_iter().nth(1);
            match (held, frame.as_deref().and_then(decode)) {
                (Some(_), Some(delivery)) => missed.push(delivery),
                // Trimmed past `since` (the first one held is later), or damaged.
                _ => return Ok(Recovery::Lost),
            }
        }
        if missed.last().map_or(since.offset, |d| d.offset) != offset {
            return Ok(Recovery::Lost);
        }
        Ok(Recovery::Recovered(missed))
    }

    async fn position(&self, channel: &str) -> Result<StreamPosition, BusError> {
        self.inner
            .positions(&[channel.to_owned()])
            .await?
            .pop()
            .ok_or_else(|| unavailable("Redis answered no position"))
    }
}

/// A frame as the script wrote it.
#[derive(Deserialize)]
struct Wire {
    channel: String,
    offset: u64,
    epoch: String,
    event: Event,
}

/// Just the channel of a frame, to skip those nobody on this node wants without decoding them.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    channel: Cow<'a, str>,
}

fn decode(frame: &str) -> Option<Delivery> {
    let wire: Wire = serde_json::from_str(frame).ok()?;
    Some(Delivery {
        channel: wire.channel,
        offset: wire.offset,
        epoch: wire.epoch,
        event: Arc::new(wire.event),
        frame: frame.into(),
    })
}

/// The subscribers of this node.
struct Local {
    buffer: usize,
    state: Mutex<LocalState>,
}

struct LocalState {
    /// Whether the pub/sub link is up: subscribing while it is down would promise events that
    /// cannot arrive.
    linked: bool,
    channels: HashMap<String, LocalChannel>,
    sweep_at_len: usize,
}

struct LocalChannel {
    sender: broadcast::Sender<Delivery>,
    /// Epoch and offset of the last delivery, to notice a gap.
    last: Option<(String, u64)>,
}

impl Local {
    fn lock(&self) -> MutexGuard<'_, LocalState> {
        // Every update leaves the map consistent, so a lock poisoned by a panic is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn subscribe(&self, channel: &str) -> Result<Subscription, BusError> {
        let mut state = self.lock();
        if !state.linked {
            return Err(BusError::Unavailable(
                "this node's link to Redis is down; retry shortly".into(),
            ));
        }
        if state.channels.len() >= state.sweep_at_len {
            state
                .channels
                .retain(|_, local| local.sender.receiver_count() > 0);
            state.sweep_at_len = (state.channels.len() * 2).max(LOCAL_SWEEP_AT);
        }
        let buffer = self.buffer;
        Ok(state
            .channels
            .entry(channel.to_owned())
            .or_insert_with(|| LocalChannel {
                sender: broadcast::channel(buffer).0,
                last: None,
            })
            .sender
            .subscribe())
    }

    /// Hands a published frame to this node's subscribers of its channel.
    fn dispatch(&self, payload: &[u8]) {
        let Ok(frame) = std::str::from_utf8(payload) else {
            warn!("event bus: a frame that is not UTF-8; ignored");
            return;
        };
        let Ok(head) = serde_json::from_str::<Head>(frame) else {
            warn!("event bus: an undecodable frame; ignored");
            return;
        };
        {
            let mut state = self.lock();
            match state.channels.get(&*head.channel) {
                None => return,
                Some(local) if local.sender.receiver_count() == 0 => {
                    state.channels.remove(&*head.channel);
                    return;
                }
                Some(_) => {}
            }
        }
        let Some(delivery) = decode(frame) else {
            warn!(channel = %head.channel, "event bus: an undecodable frame; ignored");
            return;
        };
        let mut state = self.lock();
        let Some(local) = state.channels.get_mut(&delivery.channel) else {
            return;
        };
        if let Some((epoch, offset)) = &local.last
            && (*epoch != delivery.epoch || delivery.offset != offset + 1)
        {
            lag(&local.sender, &delivery.channel, self.buffer);
        }
        local.last = Some((delivery.epoch.clone(), delivery.offset));
        let _ = local.sender.send(delivery);
    }

    /// The link dropped: whatever was published meanwhile never arrives here.
    fn unlink(&self) {
        let mut state = self.lock();
        state.linked = false;
        state
            .channels
            .retain(|_, local| local.sender.receiver_count() > 0);
        for (channel, local) in &mut state.channels {
            lag(&local.sender, channel, self.buffer);
            local.last = None;
        }
    }

    fn relink(&self) {
        self.lock().linked = true;
    }

    /// Channels someone on this node listens to.
    fn watched(&self) -> Vec<String> {
        self.lock()
            .channels
            .iter()
            .filter(|(_, local)| local.sender.receiver_count() > 0)
            .map(|(channel, _)| channel.clone())
            .collect()
    }
}

/// Makes every receiver of `sender` lag, by overrunning its buffer with offset-0 fillers.
fn lag(sender: &broadcast::Sender<Delivery>, channel: &str, buffer: usize) {
    let filler = Delivery {
        channel: channel.to_owned(),
        offset: 0,
        epoch: String::new(),
        event: Arc::new(Event::new("bus.lagged", serde_json::Value::Null, None)),
        frame: Arc::from(""),
    };
    // A receiver lags once the slot it would read next is overwritten: capacity + 1 sends.
    for _ in 0..=buffer.next_power_of_two() {
        let _ = sender.send(filler.clone());
    }
}

/// Opens a pub/sub connection subscribed to `topic`.
async fn link(client: &redis::Client, topic: &str) -> Result<(PubSubSink, PubSubStream), BusError> {
    let connect = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(topic).await?;
        Ok::<_, redis::RedisError>(pubsub.split())
    };
    match tokio::time::timeout(LINK_TIMEOUT, connect).await {
        Ok(Ok(link)) => Ok(link),
        Ok(Err(e)) => Err(unavailable(e)),
        Err(_) => Err(unavailable("timed out linking to Redis pub/sub")),
    }
}

/// The node's background task: reads the link, and restores it whenever it drops.
async fn listen(
    client: redis::Client,
    topic: String,
    mut sink: PubSubSink,
    mut stream: PubSubStream,
    local: Arc<Local>,
) {
    loop {
        let mut check = tokio::time::interval(LINK_CHECK_EVERY);
        check.reset();
        loop {
            tokio::select! {
                message = stream.next() => match message {
                    Some(message) => local.dispatch(message.get_payload_bytes()),
                    None => break,
                },
                _ = check.tick() => {
                    let pong = tokio::time::timeout(
                        LINK_CHECK_TIMEOUT,
                        sink.ping::<redis::Value>(),
                    )
                    .await;
                    if !matches!(pong, Ok(Ok(_))) {
                        break;
                    }
                }
            }
        }
        local.unlink();
        warn!("event bus: lost the Redis pub/sub link; subscribers here must recover; relinking");
        let mut pause = RELINK_MIN;
        (sink, stream) = loop {
            tokio::time::sleep(pause).await;
            match link(&client, &topic).await {
                Ok(link) => break link,
                Err(e) => {
                    tracing::debug!(error = %e, "event bus: relinking failed");
                    pause = (pause * 2).min(RELINK_MAX);
                }
            }
        };
        local.relink();
        info!("event bus: Redis pub/sub link restored");
    }
}
