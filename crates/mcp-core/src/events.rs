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
use serde_json::value::RawValue;
use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use tokio::sync::broadcast;

/// Something that happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// e.g. `task.succeeded`, `memory.message.created`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The subject after the change (the task, the message, …).
    pub data: EventData,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    pub at: DateTime<Utc>,
}

impl Event {
    pub fn new(event_type: impl Into<String>, data: Value, correlation_id: Option<String>) -> Self {
        Event {
            event_type: event_type.into(),
            data: data.into(),
            correlation_id,
            at: Utc::now(),
        }
    }
}

/// An event's subject as JSON: a tree built by its publisher, or text serialised straight from
/// the subject (a task's events, by far the most frequent), made into a tree only when something
/// reads it as one (a webhook's filter, a test). Reads go through `Deref` to a `Value` either way.
///
/// Why: a task event's tree (some thirty map entries, each key allocated) was built only to be
/// serialised again for the subscribers' frames, on the runtime's threads, and took the core
/// SQLite's writer thread needed: a subscriber cost a fifth to a third of the processing rate
/// (`docs/BENCHMARKS.md`, round 4).
#[derive(Clone)]
pub enum EventData {
    Tree(Value),
    Text {
        text: Box<RawValue>,
        /// The tree, made at the first read.
        tree: OnceLock<Value>,
    },
}

impl EventData {
    /// `subject` serialised as text, without a tree.
    pub fn text_of<T: Serialize + ?Sized>(subject: &T) -> EventData {
        match serde_json::value::to_raw_value(subject) {
            Ok(text) => EventData::Text {
                text,
                tree: OnceLock::new(),
            },
            // A subject that cannot be text (a map with non-string keys) cannot be a tree either.
            Err(_) => EventData::Tree(Value::Null),
        }
    }

    /// The JSON text's length when it is text already: what the bus counts against its memory
    /// bound (`None`: count the tree).
    pub fn text_len(&self) -> Option<usize> {
        match self {
            EventData::Tree(_) => None,
            EventData::Text { text, .. } => Some(text.get().len()),
        }
    }
}

impl From<Value> for EventData {
    fn from(value: Value) -> EventData {
        EventData::Tree(value)
    }
}

impl std::ops::Deref for EventData {
    type Target = Value;

    fn deref(&self) -> &Value {
        match self {
            EventData::Tree(value) => value,
            EventData::Text { text, tree } => {
                tree.get_or_init(|| serde_json::from_str(text.get()).unwrap_or(Value::Null))
            }
        }
    }
}

impl PartialEq for EventData {
    fn eq(&self, other: &EventData) -> bool {
        **self == **other
    }
}

impl PartialEq<Value> for EventData {
    fn eq(&self, other: &Value) -> bool {
        **self == *other
    }
}

impl std::fmt::Debug for EventData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EventData::Tree(value) => value.fmt(f),
            EventData::Text { text, .. } => f.write_str(text.get()),
        }
    }
}

impl Serialize for EventData {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            EventData::Tree(value) => value.serialize(serializer),
            EventData::Text { text, .. } => text.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for EventData {
    /// As a tree: it may come from any deserializer (`RawValue` needs serde_json's own).
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<EventData, D::Error> {
        Value::deserialize(deserializer).map(EventData::Tree)
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

impl Delivery {
    pub fn new(channel: &str, offset: u64, epoch: &str, event: Arc<Event>) -> Delivery {
        let text = serde_json::to_string(&*event).unwrap_or_default();
        Delivery::framed(channel, offset, epoch, event, &text)
    }

    /// The same, with the event's JSON made already: an event published on several channels
    /// (`tasks` and `task:{id}`) is serialised once, and framed for each channel.
    pub fn framed(
        channel: &str,
        offset: u64,
        epoch: &str,
        event: Arc<Event>,
        event_json: &str,
    ) -> Delivery {
        // What serialising `{op, channel, offset, epoch, event}` gives, field by field.
        let (channel_json, epoch_json) = (json_string(channel), json_string(epoch));
        let mut frame =
            String::with_capacity(48 + channel_json.len() + epoch_json.len() + event_json.len());
        frame.push_str(r#"{"op":"event","channel":"#);
        frame.push_str(&channel_json);
        frame.push_str(r#","offset":"#);
        // Writing to a `String` cannot fail.
        let _ = write!(frame, "{offset}");
        frame.push_str(r#","epoch":"#);
        frame.push_str(&epoch_json);
        frame.push_str(r#","event":"#);
        frame.push_str(event_json);
        frame.push('}');
        Delivery {
            channel: channel.to_owned(),
            offset,
            epoch: epoch.to_owned(),
            event,
            frame: frame.into(),
        }
    }
}

/// `text` as a JSON string, quoted and escaped.
fn json_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned())
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

/// The deliveries of one publication on one channel, in offset order. A bus hands its
/// subscribers whole batches (a `publish_batch` makes one per channel it touches), so a burst of
/// events the server makes at once (a claim or an outcome batch: hundreds of task transitions)
/// takes one slot of a subscriber's buffer, not one per event.
pub type Batch = Arc<[Delivery]>;

/// A live subscription: every event published on the channel from now on. A receiver that
/// falls more than its capacity (in batches) behind gets `RecvError::Lagged` and must recover
/// with `since`. A bus whose stream for this node is interrupted (the Redis bus when it switches
/// between Redis and local, either way) makes every receiver lag the same way, by overrunning it
/// with fillers of offset 0, which names no event. A receiver that reads fast enough may see a
/// filler without lagging: an offset-0 delivery means the same as `Lagged`.
///
/// Read it one delivery at a time (`recv`) or a batch at a time (`recv_batch`, what a fan-out
/// does); the two may be mixed.
pub struct Subscription {
    receiver: broadcast::Receiver<Batch>,
    /// The batch being read one delivery at a time, and the index of the next one.
    current: Option<(Batch, usize)>,
}

impl Subscription {
    pub fn new(receiver: broadcast::Receiver<Batch>) -> Subscription {
        Subscription {
            receiver,
            current: None,
        }
    }

    /// The next delivery of the batch being read, if any is left.
    fn next_held(&mut self) -> Option<Delivery> {
        let (batch, at) = self.current.as_mut()?;
        let next = batch.get(*at).cloned();
        *at += 1;
        if next.is_none() || *at >= batch.len() {
            self.current = None;
        }
        next
    }

    /// The rest of the batch being read, if any is left.
    fn rest_held(&mut self) -> Option<Batch> {
        let (batch, at) = self.current.take()?;
        match at {
            0 => Some(batch),
            at if at < batch.len() => Some(batch[at..].iter().cloned().collect()),
            _ => None,
        }
    }

    /// The next delivery.
    pub async fn recv(&mut self) -> Result<Delivery, broadcast::error::RecvError> {
        loop {
            if let Some(delivery) = self.next_held() {
                return Ok(delivery);
            }
            self.current = Some((self.receiver.recv().await?, 0));
        }
    }

    /// The next delivery if one is there.
    pub fn try_recv(&mut self) -> Result<Delivery, broadcast::error::TryRecvError> {
        loop {
            if let Some(delivery) = self.next_held() {
                return Ok(delivery);
            }
            self.current = Some((self.receiver.try_recv()?, 0));
        }
    }

    /// The next batch (or what is left of the one being read).
    pub async fn recv_batch(&mut self) -> Result<Batch, broadcast::error::RecvError> {
        match self.rest_held() {
            Some(rest) => Ok(rest),
            None => self.receiver.recv().await,
        }
    }

    /// The next batch if one is there.
    pub fn try_recv_batch(&mut self) -> Result<Batch, broadcast::error::TryRecvError> {
        match self.rest_held() {
            Some(rest) => Ok(rest),
            None => self.receiver.try_recv(),
        }
    }
}

impl From<broadcast::Receiver<Batch>> for Subscription {
    fn from(receiver: broadcast::Receiver<Batch>) -> Subscription {
        Subscription::new(receiver)
    }
}

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
    /// the buffer that fanned its events out (one slot per batch a subscriber may fall behind,
    /// allocated whole) is freed now instead of at some later sweep; its position and history
    /// stay, as for any channel nobody listens to. Cheap, never fails, never waits on I/O.
    fn release(&self, _channel: &str) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Serialize)]
    struct Subject {
        id: u32,
        name: &'static str,
        tags: Vec<&'static str>,
    }

    #[test]
    fn text_data_reads_and_serialises_as_its_tree_would() {
        let subject = Subject {
            id: 7,
            name: "a \"quoted\" name",
            tags: vec!["x", "y"],
        };
        let tree = json!({"id": 7, "name": "a \"quoted\" name", "tags": ["x", "y"]});
        let text = EventData::text_of(&subject);
        assert_eq!(
            text.text_len(),
            Some(serde_json::to_string(&subject).unwrap().len())
        );
        // Read through `Deref`, as webhooks and tests read it.
        assert_eq!(text["name"], "a \"quoted\" name");
        assert_eq!(text, EventData::from(tree.clone()));
        let event = Event {
            event_type: "task.succeeded".into(),
            data: text,
            correlation_id: None,
            at: Utc::now(),
        };
        let sent: Value = serde_json::from_str(&serde_json::to_string(&event).unwrap()).unwrap();
        assert_eq!(sent["data"], tree);
        // Another node receives it as a tree.
        let received: Event = serde_json::from_value(sent).unwrap();
        assert!(matches!(received.data, EventData::Tree(_)));
        assert_eq!(received, event);
    }
}
