//! Events and the `EventBus` port: every state change (a task transition, a message, a breaker
//! opening) is an `Event` published on one or more channels. Each channel's events get increasing
//! offsets within an `epoch`; a bounded history lets a subscriber that reconnects with
//! `since: {offset, epoch}` receive exactly what it missed, or learn that it cannot (the history
//! is gone or the epoch changed) and resync through REST.
//!
//! The in-process bus serves the embedded default; the Redis one (in `mcp-persistence`) fans
//! events out between the nodes of a cluster.

mod local;

pub use local::{BusConfig, LocalBus};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use tokio::sync::broadcast;

/// Something that happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// e.g. `task.succeeded`, `memory.message.created`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The subject after the change (the task, the message, …).
    pub data: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    pub at: DateTime<Utc>,
}

impl Event {
    pub fn new(event_type: impl Into<String>, data: Value, correlation_id: Option<String>) -> Self {
        Event {
            event_type: event_type.into(),
            data,
            correlation_id,
            at: Utc::now(),
        }
    }
}

/// Where a channel's stream stands: the offset of its last event, in an epoch. A new epoch
/// (history lost, e.g. Redis restarted empty) makes every older position unrecoverable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    pub offset: u64,
    pub epoch: String,
}

/// One event on one channel, as a subscriber receives it. `frame` is the WebSocket frame
/// (`{"op":"event","channel",…,"event":{…}}`), serialised once per channel and shared by every
/// subscriber.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub channel: String,
    pub offset: u64,
    pub epoch: String,
    pub event: Arc<Event>,
    pub frame: Arc<str>,
}

#[derive(Serialize)]
struct Frame<'a> {
    op: &'static str,
    channel: &'a str,
    offset: u64,
    epoch: &'a str,
    event: &'a Event,
}

impl Delivery {
    pub fn new(channel: &str, offset: u64, epoch: &str, event: Arc<Event>) -> Delivery {
        let frame = serde_json::to_string(&Frame {
            op: "event",
            channel,
            offset,
            epoch,
            event: &event,
        })
        .unwrap_or_default();
        Delivery {
            channel: channel.to_owned(),
            offset,
            epoch: epoch.to_owned(),
            event,
            frame: frame.into(),
        }
    }
}

/// The answer to "what did I miss since this position?".
#[derive(Debug, Clone)]
pub enum Recovery {
    /// Exactly the events after the position, in order (possibly none).
    Recovered(Vec<Delivery>),
    /// They are not all held any more, or the epoch changed: resync through REST.
    Lost,
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("event bus unavailable: {0}")]
    Unavailable(String),
}

/// A live subscription: every event published on the channel from now on. A receiver that
/// falls more than its capacity behind gets `RecvError::Lagged` and must recover with `since`.
/// A bus whose stream for this node is interrupted (the Redis bus when it switches between
/// Redis and local, either way) makes every receiver lag the same way, by overrunning it with
/// fillers of offset 0, which names no event. A receiver that reads fast enough may see a
/// filler without lagging: an offset-0 delivery means the same as `Lagged`.
pub type Subscription = broadcast::Receiver<Delivery>;

#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Publishes `event` on `channel` (assigning the next offset) and returns its position.
    async fn publish(&self, channel: &str, event: Arc<Event>) -> Result<StreamPosition, BusError>;

    /// Publishes several events in order, in one round trip where the bus can; one position per
    /// event. On an error, the events before the failing one may have been published.
    async fn publish_batch(
        &self,
        events: &[(String, Arc<Event>)],
    ) -> Result<Vec<StreamPosition>, BusError> {
        let mut positions = Vec::with_capacity(events.len());
        for (channel, event) in events {
            positions.push(self.publish(channel, event.clone()).await?);
        }
        Ok(positions)
    }

    /// Which of `channels` an event published now could reach: those with a subscriber, or
    /// with a position someone was given (by `position`, `subscribe` or `publish`) that a later
    /// `recover` may start from. The others stay unobserved until one of those calls, or forever
    /// once the bus has forgotten them, so an event there would reach no one: a publisher whose
    /// events are costly to make (the orchestrator, one per task transition) skips them.
    /// The default says every channel is observed.
    async fn observed(&self, channels: &[String]) -> Result<Vec<bool>, BusError> {
        Ok(vec![true; channels.len()])
    }

    /// Every event published on `channel` after this call, on this node, from any node.
    async fn subscribe(&self, channel: &str) -> Result<Subscription, BusError>;

    /// The events after `since`, if the history still holds all of them in the same epoch.
    async fn recover(&self, channel: &str, since: &StreamPosition) -> Result<Recovery, BusError>;

    /// The channel's current position (offset 0 for a channel with no events yet).
    async fn position(&self, channel: &str) -> Result<StreamPosition, BusError>;

    /// A subscription of `channel` was dropped. If nobody on this node listens to it any more,
    /// the buffer that fanned its events out (one slot per delivery a subscriber may fall behind,
    /// allocated whole) is freed now instead of at some later sweep; its position and history
    /// stay, as for any channel nobody listens to. Cheap, never fails, never waits on I/O.
    fn release(&self, _channel: &str) {}
}
