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
//! Losing Redis must not stop events on a node, nor make anyone wait. The first command that
//! fails (or outlasts `RedisOptions::timeout`), or the pub/sub link dropping, switches the bus to
//! `RedisMode::Local`: events published on this node then reach this node's subscribers through
//! an in-process bus (`LocalBus`, a fresh one per outage, so its epochs belong to this node and
//! this outage only), and `subscribe`, `position` and `recover` answer from it; nothing on the
//! request path touches Redis until the background task has relinked. Cross-node delivery stops
//! meanwhile. The rule for subscribers: **at every switch, each way, every receiver on the node
//! lags** (it gets `RecvError::Lagged`, after which it skips the offset-0 filler used to cause
//! it, and must recover with `since`). A position from before a switch is never recoverable
//! after it: local epochs are not Redis's, and before switching back the node ends the Redis
//! epoch of every channel it published to locally (their events never reached Redis, so a Redis
//! position from before the outage could not be recovered exactly). The same lag happens to a
//! channel's receivers when its live stream skips an offset or changes epoch. Each switch is
//! logged once (`warn` going local, `info` back).
//!
//! This file is the Redis side (scripts, publishing, recovery); `subscribers` holds this node's
//! receivers and the switch between shared and local, `relink` the task that finds Redis again.

use crate::redis::link::{self, RedisMode, RedisOptions};
use async_trait::async_trait;
use mcp_core::events::{
    BusConfig, BusError, Delivery, Event, EventBus, LocalBus, Recovery, StreamPosition,
    Subscription,
};
use redis::aio::MultiplexedConnection;
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;

mod relink;
mod subscribers;

use relink::keep_link;
use subscribers::{Local, LocalState};

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

/// How often a quiet link is checked with a PING: a link that died without closing is noticed
/// this way (the answer may take the configured timeout).
const LINK_CHECK_EVERY: Duration = Duration::from_secs(15);
/// Local channels held before the ones nobody listens to any more are looked for.
const LOCAL_SWEEP_AT: usize = 64;
/// How often the keys of channels subscribed on this node are refreshed: a third of the TTL,
/// within these bounds.
const KEEP_ALIVE_MIN: Duration = Duration::from_millis(100);
const KEEP_ALIVE_MAX: Duration = Duration::from_secs(600);
/// Channels published to locally during one outage that are remembered by name; beyond it, the
/// Redis epoch of every channel of the deployment ends when Redis returns.
const PUBLISHED_LOCALLY_MAX: usize = 100_000;
/// Epoch keys ended per round trip when Redis returns.
const END_EPOCHS_BATCH: usize = 1000;
/// How long `connect` waits for Redis to answer before it reports it unreachable.
const CONNECT_PATIENCE: Duration = Duration::from_secs(5);

/// An event bus shared by every node that connects to the same Redis with the same prefix, and
/// local to this node while Redis is away (see the module comment).
#[derive(Clone)]
pub struct RedisBus {
    inner: Arc<Inner>,
}

struct Inner {
    options: RedisOptions,
    publish: redis::Script,
    position: redis::Script,
    prefix: String,
    /// Names fresh epochs: random per bus, plus a counter.
    node: String,
    epochs: AtomicU64,
    config: BusConfig,
    local: Arc<Local>,
    /// The link's keeper and the keep-alive of subscribed channels.
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

fn keys(prefix: &str, channel: &str) -> Keys {
    let base = format!("{prefix}events:{channel}:");
    Keys {
        offset: format!("{base}offset"),
        stream: format!("{base}stream"),
        epoch: format!("{base}epoch"),
    }
}

fn unavailable(e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(e.to_string())
}

impl RedisBus {
    /// Starts a bus for `url` without waiting for Redis: it is local to this node until Redis
    /// answers. Every key is stored under `prefix` (one per deployment or test run). Fails only
    /// on a malformed URL.
    pub fn start(
        url: &str,
        prefix: &str,
        config: BusConfig,
        options: RedisOptions,
    ) -> Result<Self, BusError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let config = BusConfig {
            history_size: config.history_size.max(1),
            buffer: config.buffer.max(1),
            ..config
        };
        let topic = format!("{prefix}events");
        let local = Arc::new(Local {
            buffer: config.buffer,
            config,
            state: Mutex::new(LocalState {
                connection: None,
                generation: 0,
                last_error: "Redis not reached yet".into(),
                warned: false,
                memory: Arc::new(LocalBus::new(config)),
                published: HashSet::new(),
                published_overflow: false,
                channels: HashMap::new(),
                sweep_at_len: LOCAL_SWEEP_AT,
            }),
            mode: watch::channel(RedisMode::Local).0,
            trouble: Notify::new(),
        });
        let keeper = tokio::spawn(keep_link(
            client,
            topic,
            prefix.to_owned(),
            options,
            local.clone(),
        ))
        .abort_handle();
        let keep_every = (config.history_ttl / 3).clamp(KEEP_ALIVE_MIN, KEEP_ALIVE_MAX);
        let inner = Arc::new_cyclic(|me: &Weak<Inner>| Inner {
            options,
            publish: redis::Script::new(&format!("{ENSURE_EPOCH}{PUBLISH}")),
            position: redis::Script::new(&format!("{ENSURE_EPOCH}{POSITION}")),
            prefix: prefix.to_owned(),
            node: uuid::Uuid::new_v4().simple().to_string(),
            epochs: AtomicU64::new(0),
            config,
            local,
            background: vec![
                keeper,
                tokio::spawn(keep_alive(me.clone(), keep_every)).abort_handle(),
            ],
        });
        Ok(RedisBus { inner })
    }

    /// Connects to `url`, links this node to the deployment's pub/sub channel and waits until
    /// Redis answers (up to 5 s): an error says Redis is unreachable. Tests use it as their "is
    /// Redis there?" probe.
    pub async fn connect(url: &str, prefix: &str, config: BusConfig) -> Result<Self, BusError> {
        let bus = RedisBus::start(url, prefix, config, RedisOptions::default())?;
        match bus.ready(CONNECT_PATIENCE).await {
            RedisMode::Shared => Ok(bus),
            RedisMode::Local => Err(unavailable(bus.inner.local.lock().last_error.clone())),
        }
    }

    /// Waits until Redis is reached, for at most `patience`; the mode then.
    pub async fn ready(&self, patience: Duration) -> RedisMode {
        link::ready(self.mode_changes(), patience).await
    }

    /// Whether events go through Redis right now, or stay on this node.
    pub fn mode(&self) -> RedisMode {
        *self.inner.local.mode.borrow()
    }

    /// Every change of `mode`, for whoever reports on health.
    pub fn mode_changes(&self) -> watch::Receiver<RedisMode> {
        self.inner.local.mode.subscribe()
    }

    /// A PING, within the timeout: `Err` at once (without touching Redis) while the bus is
    /// local, with the last error seen.
    pub async fn ping(&self) -> Result<(), String> {
        let local = &self.inner.local;
        let Some((mut connection, generation)) = local.shared() else {
            return Err(local.lock().last_error.clone());
        };
        let pinged = link::ping(&mut connection, &self.inner.options).await;
        if let Err(e) = &pinged {
            local.lost(generation, e);
        }
        pinged
    }

    /// Deletes every key under the prefix (test clean-up; what a Redis that lost its data looks
    /// like to the nodes).
    pub async fn clear(&self) -> Result<(), BusError> {
        let local = &self.inner.local;
        let Some((mut connection, _)) = local.shared() else {
            return Err(unavailable(local.lock().last_error.clone()));
        };
        let options = &self.inner.options;
        let keys: Vec<String> = link::within(
            options,
            redis::cmd("KEYS")
                .arg(format!("{}*", self.inner.prefix))
                .query_async(&mut connection),
        )
        .await
        .map_err(unavailable)?;
        if !keys.is_empty() {
            link::within(
                options,
                redis::cmd("DEL")
                    .arg(&keys)
                    .query_async::<()>(&mut connection),
            )
            .await
            .map_err(unavailable)?;
        }
        Ok(())
    }
}

impl Inner {
    fn keys(&self, channel: &str) -> Keys {
        keys(&self.prefix, channel)
    }

    fn fresh_epoch(&self) -> String {
        let n = self.epochs.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.node)
    }

    fn ttl_ms(&self) -> u64 {
        (self.config.history_ttl.as_millis() as u64).max(1)
    }

    /// The positions of `channels` in Redis (made if missing), and another TTL for their keys;
    /// one round trip.
    async fn positions(
        &self,
        connection: &mut MultiplexedConnection,
        channels: &[String],
    ) -> Result<Vec<StreamPosition>, String> {
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
        let replies: Vec<(u64, String)> =
            link::within(&self.options, pipe.query_async(connection)).await?;
        Ok(replies
            .into_iter()
            .map(|(offset, epoch)| StreamPosition { offset, epoch })
            .collect())
    }

    async fn publish_shared(
        &self,
        connection: &mut MultiplexedConnection,
        events: &[(String, Arc<Event>)],
    ) -> Result<Vec<StreamPosition>, String> {
        let mut pipe = redis::pipe();
        pipe.load_script(&self.publish).ignore();
        let topic = format!("{}events", self.prefix);
        for (channel, event) in events {
            let keys = self.keys(channel);
            let channel_json = serde_json::to_string(channel).map_err(|e| e.to_string())?;
            let event_json = serde_json::to_string(&**event).map_err(|e| e.to_string())?;
            pipe.invoke_script(
                self.publish
                    .key(keys.offset)
                    .key(keys.stream)
                    .key(keys.epoch)
                    .arg(self.fresh_epoch())
                    .arg(self.ttl_ms())
                    .arg(self.config.history_size)
                    .arg(channel_json)
                    .arg(event_json)
                    .arg(&topic),
            );
        }
        let replies: Vec<(u64, String)> =
            link::within(&self.options, pipe.query_async(connection)).await?;
        Ok(replies
            .into_iter()
            .map(|(offset, epoch)| StreamPosition { offset, epoch })
            .collect())
    }

    /// Publishes on this node only (Redis is away): the outage's in-process bus numbers the
    /// events, this node's subscribers get them.
    /// `None` if the bus is shared again.
    async fn publish_locally(
        &self,
        events: &[(String, Arc<Event>)],
    ) -> Option<Result<Vec<StreamPosition>, BusError>> {
        let memory = self.local.begin_local(events.iter().map(|(c, _)| c))?;
        let positions = match memory.publish_batch(events).await {
            Ok(positions) => positions,
            Err(e) => return Some(Err(e)),
        };
        for ((channel, event), position) in events.iter().zip(&positions) {
            if self.local.listened(channel) {
                self.local.deliver(Delivery::new(
                    channel,
                    position.offset,
                    &position.epoch,
                    event.clone(),
                ));
            }
        }
        Some(Ok(positions))
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
        let Some((mut connection, generation)) = inner.local.shared() else {
            continue;
        };
        if let Err(e) = inner.positions(&mut connection, &watched).await {
            inner.local.lost(generation, &e);
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
        // Twice at most: Redis may come back between the two paths.
        for _ in 0..2 {
            if let Some((mut connection, generation)) = inner.local.shared() {
                match inner.publish_shared(&mut connection, events).await {
                    Ok(positions) => return Ok(positions),
                    // Whether they reached Redis is unknown; they are published again, locally,
                    // and every subscriber here lags (so may see one twice after recovering).
                    Err(e) => inner.local.lost(generation, &e),
                }
            }
            if let Some(published) = inner.publish_locally(events).await {
                return published;
            }
        }
        Err(unavailable(
            "the event bus is switching between Redis and local",
        ))
    }

    async fn observed(&self, channels: &[String]) -> Result<Vec<bool>, BusError> {
        if channels.is_empty() {
            return Ok(Vec::new());
        }
        let inner = &self.inner;
        if let Some((mut connection, generation)) = inner.local.shared() {
            let mut pipe = redis::pipe();
            for channel in channels {
                pipe.cmd("EXISTS").arg(inner.keys(channel).epoch);
            }
            match link::within(&inner.options, pipe.query_async(&mut connection)).await {
                Ok(observed) => return Ok(observed),
                Err(e) => inner.local.lost(generation, &e),
            }
        }
        let held = inner.local.memory().observed(channels).await?;
        Ok(channels
            .iter()
            .zip(held)
            .map(|(channel, held)| held || inner.local.listened(channel))
            .collect())
    }

    async fn subscribe(&self, channel: &str) -> Result<Subscription, BusError> {
        let inner = &self.inner;
        let channels = [channel.to_owned()];
        // Observed from now on, and kept alive while someone here listens.
        let mut shared = false;
        if let Some((mut connection, generation)) = inner.local.shared() {
            match inner.positions(&mut connection, &channels).await {
                Ok(_) => shared = true,
                Err(e) => inner.local.lost(generation, &e),
            }
        }
        if !shared {
            inner.local.memory().position(channel).await?;
        }
        Ok(inner.local.subscribe(channel))
    }

    async fn recover(&self, channel: &str, since: &StreamPosition) -> Result<Recovery, BusError> {
        let inner = &self.inner;
        if let Some((mut connection, generation)) = inner.local.shared() {
            match recover_shared(inner, &mut connection, channel, since).await {
                Ok(recovery) => return Ok(recovery),
                Err(e) => inner.local.lost(generation, &e),
            }
        }
        // Local epochs are this outage's own: a position from Redis is not recoverable here.
        inner.local.memory().recover(channel, since).await
    }

    async fn position(&self, channel: &str) -> Result<StreamPosition, BusError> {
        let inner = &self.inner;
        if let Some((mut connection, generation)) = inner.local.shared() {
            match inner
                .positions(&mut connection, &[channel.to_owned()])
                .await
            {
                Ok(mut positions) => {
                    return positions
                        .pop()
                        .ok_or_else(|| unavailable("Redis answered no position"));
                }
                Err(e) => inner.local.lost(generation, &e),
            }
        }
        inner.local.memory().position(channel).await
    }

    /// Only this node's sender is let go of: positions and history live in Redis.
    fn release(&self, channel: &str) {
        self.inner.local.release(channel);
    }
}

/// The events after `since`, from the channel's Redis stream.
async fn recover_shared(
    inner: &Inner,
    connection: &mut MultiplexedConnection,
    channel: &str,
    since: &StreamPosition,
) -> Result<Recovery, String> {
    let keys = inner.keys(channel);
    let Some(first) = since.offset.checked_add(1) else {
        return Ok(Recovery::Lost);
    };
    type Entries = Vec<(String, Vec<String>)>;
    let (epoch, offset, entries): (Option<String>, Option<u64>, Entries) = link::within(
        &inner.options,
        redis::pipe()
            .atomic()
            .cmd("GET")
            .arg(&keys.epoch)
            .cmd("GET")
            .arg(&keys.offset)
            .cmd("XRANGE")
            .arg(&keys.stream)
            .arg(format!("{first}-0"))
            .arg("+")
            .query_async(connection),
    )
    .await?;
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
