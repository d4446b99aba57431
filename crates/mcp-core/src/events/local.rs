//! The in-process event bus of the embedded deployment: per channel an offset, a bounded history
//! and a broadcast sender, all in this process's memory.
//!
//! Memory is bounded three ways. A channel's broadcast sender (its buffer is allocated whole, one
//! slot per batch a subscriber may fall behind: about 50 KiB at the default 1024) exists only
//! while someone listens, and is dropped as soon as the last subscription is released. History is
//! bounded per channel in events and in bytes, and across all channels in bytes: beyond the global
//! budget the oldest events of any channel go first (a position before them then recovers as
//! lost, like any other gap). Channels nobody listens to are bounded in number (below).
//!
//! A channel's epoch names one incarnation of its stream. Channels nobody listens to are forgotten
//! once their history has aged out (and, beyond `max_channels`, the least recently used first:
//! there is a `task:{id}` channel per task, so memory must not grow with the number of tasks). A
//! forgotten channel that comes back starts again at offset 1 under a new epoch, so an old
//! position is never mistaken for a new one; a restart changes every epoch, as the history dies
//! with the process.

use super::{Batch, BusError, Delivery, Event, EventBus, Recovery, StreamPosition, Subscription};
use async_trait::async_trait;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// Limits of an event bus (the Redis one uses `history_size`, `history_ttl` and `buffer` too).
#[derive(Debug, Clone, Copy)]
pub struct BusConfig {
    /// Events kept per channel for recovery.
    pub history_size: usize,
    /// Bytes of history kept per channel (the events' estimated memory); the oldest go first.
    pub history_channel_bytes: usize,
    /// Bytes of history kept across every channel; beyond it the oldest events of any channel
    /// go first (in-process bus only: the Redis bus keeps its history in Redis).
    pub history_bytes: usize,
    /// Events older than this are dropped from the history; a channel idle this long and with
    /// no subscriber is forgotten.
    pub history_ttl: Duration,
    /// Batches a subscriber may fall behind before it lags: publications, each of one event or
    /// of all the events one `publish_batch` put on the channel.
    pub buffer: usize,
    /// Channels without a subscriber held at most (in-process bus only); beyond it the least
    /// recently used are forgotten even if their history has not aged out yet.
    pub max_channels: usize,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            history_size: 1000,
            history_channel_bytes: 1024 * 1024,
            history_bytes: 64 * 1024 * 1024,
            history_ttl: Duration::from_secs(3600),
            buffer: 1024,
            max_channels: 10_000,
        }
    }
}

/// Bounds of the time-driven sweep of aged-out channels: half the history TTL, within these.
const SWEEP_PERIOD_MIN: Duration = Duration::from_millis(1);
const SWEEP_PERIOD_MAX: Duration = Duration::from_secs(60);

/// One held event. The WebSocket frame is made only when someone needs it.
struct Held {
    offset: u64,
    at: Instant,
    event: Arc<Event>,
    frame: Option<Arc<str>>,
    /// What it counts against the byte budgets.
    bytes: usize,
}

/// Held events and bytes let go of, for the bus-wide totals.
#[derive(Debug, Default, Clone, Copy)]
struct Freed {
    events: usize,
    bytes: usize,
}

impl Freed {
    fn add(&mut self, bytes: usize) {
        self.events += 1;
        self.bytes += bytes;
    }
}

/// An event's place in the bus-wide publication order, for evicting the oldest across channels.
struct Published {
    channel: Arc<str>,
    incarnation: u64,
    offset: u64,
}

struct Channel {
    /// Its name, shared by its entries in the publication order.
    name: Arc<str>,
    /// Which incarnation of the name this is (also numbers its epoch).
    incarnation: u64,
    epoch: Arc<str>,
    offset: u64,
    history: VecDeque<Held>,
    /// Sum of the held events' `bytes`.
    history_bytes: usize,
    /// Made at the first subscription, dropped once nobody listens.
    sender: Option<broadcast::Sender<Batch>>,
    /// Last publish, subscription or position query.
    touched: Instant,
}

impl Channel {
    fn listened(&self) -> bool {
        self.sender.as_ref().is_some_and(|s| s.receiver_count() > 0)
    }

    /// Drops the oldest held event; its bytes.
    fn pop_oldest(&mut self) -> Option<usize> {
        let held = self.history.pop_front()?;
        self.history_bytes = self.history_bytes.saturating_sub(held.bytes);
        Some(held.bytes)
    }

    fn trim(&mut self, config: &BusConfig, now: Instant) -> Freed {
        let mut freed = Freed::default();
        while self.history.len() > config.history_size
            || self.history_bytes > config.history_channel_bytes
            || self
                .history
                .front()
                .is_some_and(|h| now.saturating_duration_since(h.at) > config.history_ttl)
        {
            match self.pop_oldest() {
                Some(bytes) => freed.add(bytes),
                None => break,
            }
        }
        freed
    }

    /// What forgetting the whole channel lets go of.
    fn held(&self) -> Freed {
        Freed {
            events: self.history.len(),
            bytes: self.history_bytes,
        }
    }
}

/// Fixed cost counted per JSON value and per object entry on top of its text: about what
/// `serde_json::Value` and its map take in memory beyond the bytes themselves.
const VALUE_OVERHEAD: usize = 32;
const ENTRY_OVERHEAD: usize = 32;

/// About what `event` takes in memory, counted by walking its data (cheaper than serialising
/// it, which this bus avoids for events nobody listens to).
fn weight(event: &Event) -> usize {
    fn value(v: &serde_json::Value) -> usize {
        use serde_json::Value;
        VALUE_OVERHEAD
            + match v {
                Value::String(s) => s.len(),
                Value::Array(items) => items.iter().map(value).sum(),
                Value::Object(map) => map
                    .iter()
                    .map(|(k, v)| ENTRY_OVERHEAD + k.len() + value(v))
                    .sum(),
                _ => 0,
            }
    }
    std::mem::size_of::<Event>()
        + event.event_type.len()
        + event.correlation_id.as_ref().map_or(0, String::len)
        + event.data.text_len().unwrap_or_else(|| value(&event.data))
}

/// The JSON of the event published last: an event published on several channels in a row
/// (`tasks`, then `task:{id}`) is serialised once.
#[derive(Default)]
struct EventText {
    last: Option<(Arc<Event>, String)>,
}

impl EventText {
    fn of(&mut self, event: &Arc<Event>) -> &str {
        let made = matches!(&self.last, Some((last, _)) if Arc::ptr_eq(last, event));
        if !made {
            let text = serde_json::to_string(&**event).unwrap_or_default();
            self.last = Some((event.clone(), text));
        }
        self.last.as_ref().map_or("", |(_, text)| text)
    }
}

struct Channels {
    map: HashMap<String, Channel>,
    /// Events held across every channel, and their bytes.
    held: usize,
    bytes: usize,
    /// Held events in publication order (with entries for some already let go of, skipped when
    /// met and compacted away when they pile up).
    order: VecDeque<Published>,
    /// Channels made so far: numbers the epochs of this process.
    incarnations: u64,
    last_sweep: Instant,
    /// Size of `map` at which the next sweep for room runs (amortises it when many channels have
    /// subscribers and cannot be forgotten).
    sweep_at_len: usize,
}

/// The embedded default bus. See the module comment for epochs and forgetting.
pub struct LocalBus {
    config: BusConfig,
    /// Random per bus: epochs of this process never repeat those of an earlier one.
    process: String,
    channels: Mutex<Channels>,
}

impl LocalBus {
    pub fn new(config: BusConfig) -> Self {
        let config = BusConfig {
            buffer: config.buffer.max(1),
            max_channels: config.max_channels.max(1),
            ..config
        };
        LocalBus {
            config,
            process: uuid::Uuid::new_v4().simple().to_string(),
            channels: Mutex::new(Channels {
                map: HashMap::new(),
                held: 0,
                bytes: 0,
                order: VecDeque::new(),
                incarnations: 0,
                last_sweep: Instant::now(),
                sweep_at_len: config.max_channels,
            }),
        }
    }

    /// Channels held now (for tests of the memory bound).
    pub fn channel_count(&self) -> usize {
        self.lock().map.len()
    }

    /// Channels with a broadcast sender (someone listens, or did until a sweep or a release).
    pub fn sender_count(&self) -> usize {
        self.lock()
            .map
            .values()
            .filter(|c| c.sender.is_some())
            .count()
    }

    /// Bytes of history held across every channel (for tests of the memory bound).
    pub fn history_bytes(&self) -> usize {
        self.lock().bytes
    }

    fn lock(&self) -> MutexGuard<'_, Channels> {
        // Every update leaves the map consistent, so a lock poisoned by a panic is still usable.
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sweep_period(&self) -> Duration {
        (self.config.history_ttl / 2).clamp(SWEEP_PERIOD_MIN, SWEEP_PERIOD_MAX)
    }

    /// The channel named `name`, made (with a new epoch) if it is not held; sweeps first when
    /// it is time.
    fn channel<'a>(&self, channels: &'a mut Channels, name: &str, now: Instant) -> &'a mut Channel {
        if now.saturating_duration_since(channels.last_sweep) >= self.sweep_period()
            || (channels.map.len() >= channels.sweep_at_len && !channels.map.contains_key(name))
        {
            self.sweep(channels, now);
        }
        if !channels.map.contains_key(name) {
            channels.incarnations += 1;
            let incarnation = channels.incarnations;
            let epoch = format!("{}-{incarnation}", self.process);
            channels.map.insert(
                name.to_owned(),
                Channel {
                    name: name.into(),
                    incarnation,
                    epoch: epoch.into(),
                    offset: 0,
                    history: VecDeque::new(),
                    history_bytes: 0,
                    sender: None,
                    touched: now,
                },
            );
        }
        let channel = channels
            .map
            .get_mut(name)
            .unwrap_or_else(|| unreachable!("inserted above"));
        channel.touched = now;
        channel
    }

    /// Forgets channels nobody listens to whose history has aged out, then, while more than
    /// `max_channels` are held, the least recently used of those nobody listens to.
    fn sweep(&self, channels: &mut Channels, now: Instant) {
        let config = &self.config;
        channels.last_sweep = now;
        let mut freed = Freed::default();
        channels.map.retain(|_, channel| {
            let trimmed = channel.trim(config, now);
            freed.events += trimmed.events;
            freed.bytes += trimmed.bytes;
            if !channel.listened() {
                channel.sender = None;
            }
            let keep = channel.sender.is_some()
                || !channel.history.is_empty()
                || now.saturating_duration_since(channel.touched) <= config.history_ttl;
            if !keep {
                let held = channel.held();
                freed.events += held.events;
                freed.bytes += held.bytes;
            }
            keep
        });
        // `>=`: room is made before a channel is added, so the bound holds after it.
        if channels.map.len() >= config.max_channels {
            // Down to three quarters, so the next sweep for room is a quarter of the bound away.
            let excess = channels.map.len() - config.max_channels * 3 / 4;
            let mut idle: Vec<Instant> = channels
                .map
                .values()
                .filter(|c| c.sender.is_none())
                .map(|c| c.touched)
                .collect();
            if !idle.is_empty() {
                let nth = excess.min(idle.len()) - 1;
                let (_, newest_evicted, _) = idle.select_nth_unstable(nth);
                let newest_evicted = *newest_evicted;
                channels.map.retain(|_, c| {
                    let keep = c.sender.is_some() || c.touched > newest_evicted;
                    if !keep {
                        let held = c.held();
                        freed.events += held.events;
                        freed.bytes += held.bytes;
                    }
                    keep
                });
            }
        }
        channels.let_go(freed);
        channels.compact();
        // When subscribed channels alone exceed the bound, look again only after a quarter more.
        channels.sweep_at_len = if channels.map.len() < config.max_channels {
            config.max_channels
        } else {
            channels.map.len() + config.max_channels.div_ceil(4)
        };
    }

    /// Publishes one event: its offset, its history entry, and, if someone listens, the delivery
    /// for the caller to send (a batch's deliveries on one channel go out together).
    fn publish_locked(
        &self,
        channels: &mut Channels,
        name: &str,
        event: Arc<Event>,
        now: Instant,
        text: &mut EventText,
    ) -> (StreamPosition, Option<Delivery>) {
        let config = self.config;
        let channel = self.channel(channels, name, now);
        let incarnation = channel.incarnation;
        let shared_name = channel.name.clone();
        channel.offset += 1;
        let offset = channel.offset;
        let mut frame = None;
        let mut delivery = None;
        if channel.listened() {
            let json = text.of(&event);
            let made = Delivery::framed(name, offset, &channel.epoch, event.clone(), json);
            frame = Some(made.frame.clone());
            delivery = Some(made);
        } else {
            channel.sender = None;
        }
        let mut added = 0;
        if config.history_size > 0 {
            added = weight(&event) + frame.as_ref().map_or(0, |f| f.len());
            channel.history_bytes += added;
            channel.history.push_back(Held {
                offset,
                at: now,
                event,
                frame,
                bytes: added,
            });
        }
        let freed = channel.trim(&config, now);
        let position = StreamPosition {
            offset,
            epoch: channel.epoch.to_string(),
        };
        if config.history_size > 0 {
            channels.held += 1;
            channels.bytes += added;
            channels.order.push_back(Published {
                channel: shared_name,
                incarnation,
                offset,
            });
        }
        channels.let_go(freed);
        self.keep_within_budget(channels);
        (position, delivery)
    }

    /// Hands `deliveries` (of one channel, in order) to its subscribers as one batch. Called
    /// under the lock, so that batches of one channel reach every subscriber in offset order.
    fn send(channels: &Channels, name: &str, deliveries: Vec<Delivery>) {
        if let Some(sender) = channels.map.get(name).and_then(|c| c.sender.as_ref()) {
            // Fails only if the last receiver went away meanwhile: the history keeps them.
            let _ = sender.send(Batch::from(deliveries));
        }
    }

    /// Evicts the oldest held events, whatever their channel, while the bus-wide history is
    /// over its byte budget.
    fn keep_within_budget(&self, channels: &mut Channels) {
        while channels.bytes > self.config.history_bytes {
            let Some(oldest) = channels.order.pop_front() else {
                break;
            };
            // An entry whose event is gone already (trimmed, or its channel forgotten) is skipped.
            let Some(channel) = channels.map.get_mut(&*oldest.channel) else {
                continue;
            };
            if channel.incarnation != oldest.incarnation
                || channel.history.front().map(|h| h.offset) != Some(oldest.offset)
            {
                continue;
            }
            if let Some(bytes) = channel.pop_oldest() {
                let mut freed = Freed::default();
                freed.add(bytes);
                channels.let_go(freed);
            }
        }
        channels.compact();
    }
}

impl Channels {
    fn let_go(&mut self, freed: Freed) {
        self.held = self.held.saturating_sub(freed.events);
        self.bytes = self.bytes.saturating_sub(freed.bytes);
    }

    /// Drops the order's entries of events no longer held once they outnumber the held ones
    /// (amortised: each compaction at least halves the queue).
    fn compact(&mut self) {
        if self.order.len() <= 2 * self.held + 64 {
            return;
        }
        let map = &self.map;
        self.order.retain(|entry| {
            map.get(&*entry.channel).is_some_and(|c| {
                c.incarnation == entry.incarnation
                    && c.history.front().is_some_and(|h| h.offset <= entry.offset)
            })
        });
    }
}

impl Default for LocalBus {
    fn default() -> Self {
        LocalBus::new(BusConfig::default())
    }
}

#[async_trait]
impl EventBus for LocalBus {
    async fn publish(&self, channel: &str, event: Arc<Event>) -> Result<StreamPosition, BusError> {
        let now = Instant::now();
        let mut channels = self.lock();
        let (position, delivery) = self.publish_locked(
            &mut channels,
            channel,
            event,
            now,
            &mut EventText::default(),
        );
        if let Some(delivery) = delivery {
            Self::send(&channels, channel, vec![delivery]);
        }
        Ok(position)
    }

    async fn publish_batch(
        &self,
        events: &[(String, Arc<Event>)],
    ) -> Result<Vec<StreamPosition>, BusError> {
        let now = Instant::now();
        let mut channels = self.lock();
        let mut positions = Vec::with_capacity(events.len());
        // Per listened channel, its deliveries in order: one batch each, sent once all are made.
        let mut batches: Vec<(&str, Vec<Delivery>)> = Vec::new();
        let mut text = EventText::default();
        for (channel, event) in events {
            let (position, delivery) =
                self.publish_locked(&mut channels, channel, event.clone(), now, &mut text);
            positions.push(position);
            if let Some(delivery) = delivery {
                // Few channels per batch (`tasks` and a `task:{id}` per task at most): a scan
                // from the end finds the common case, a run on one channel, at once.
                match batches.iter_mut().rev().find(|(name, _)| *name == channel) {
                    Some((_, deliveries)) => deliveries.push(delivery),
                    None => batches.push((channel, vec![delivery])),
                }
            }
        }
        for (channel, deliveries) in batches {
            Self::send(&channels, channel, deliveries);
        }
        Ok(positions)
    }

    /// Every channel held was made by a call that handed out its position.
    async fn observed(&self, channels: &[String]) -> Result<Vec<bool>, BusError> {
        let held = self.lock();
        Ok(channels
            .iter()
            .map(|channel| held.map.contains_key(channel))
            .collect())
    }

    async fn subscribe(&self, channel: &str) -> Result<Subscription, BusError> {
        let buffer = self.config.buffer;
        let mut channels = self.lock();
        let channel = self.channel(&mut channels, channel, Instant::now());
        Ok(channel
            .sender
            .get_or_insert_with(|| broadcast::channel(buffer).0)
            .subscribe()
            .into())
    }

    async fn recover(&self, channel: &str, since: &StreamPosition) -> Result<Recovery, BusError> {
        let now = Instant::now();
        let (epoch, missed) = {
            let mut channels = self.lock();
            // A channel not held was forgotten, with its history: whatever `since` saw is gone.
            let Some(state) = channels.map.get_mut(channel) else {
                return Ok(Recovery::Lost);
            };
            if *state.epoch != since.epoch || since.offset > state.offset {
                return Ok(Recovery::Lost);
            }
            let freed = state.trim(&self.config, now);
            state.touched = now;
            let oldest = state
                .history
                .front()
                .map_or(state.offset + 1, |held| held.offset);
            let found = (since.offset + 1 >= oldest).then(|| {
                let missed: Vec<_> = state
                    .history
                    .iter()
                    .filter(|held| held.offset > since.offset)
                    .map(|held| (held.offset, held.event.clone(), held.frame.clone()))
                    .collect();
                (state.epoch.clone(), missed)
            });
            channels.let_go(freed);
            match found {
                Some(found) => found,
                None => return Ok(Recovery::Lost),
            }
        };
        // Frames are made outside the lock: publishers need not wait for a recovery.
        Ok(Recovery::Recovered(
            missed
                .into_iter()
                .map(|(offset, event, frame)| match frame {
                    Some(frame) => Delivery {
                        channel: channel.to_owned(),
                        offset,
                        epoch: epoch.to_string(),
                        event,
                        frame,
                    },
                    None => Delivery::new(channel, offset, &epoch, event),
                })
                .collect(),
        ))
    }

    async fn position(&self, channel: &str) -> Result<StreamPosition, BusError> {
        let mut channels = self.lock();
        // Held from now on, so the epoch answered here is the one later events carry.
        let channel = self.channel(&mut channels, channel, Instant::now());
        Ok(StreamPosition {
            offset: channel.offset,
            epoch: channel.epoch.to_string(),
        })
    }

    /// Drops the channel's sender (and with it the buffer) once nobody listens.
    fn release(&self, channel: &str) {
        let mut channels = self.lock();
        if let Some(state) = channels.map.get_mut(channel)
            && !state.listened()
        {
            state.sender = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(n: u64) -> Arc<Event> {
        Arc::new(Event::new("test", json!({"n": n}), None))
    }

    fn offsets(recovery: Recovery) -> Option<Vec<u64>> {
        match recovery {
            Recovery::Recovered(missed) => Some(missed.iter().map(|d| d.offset).collect()),
            Recovery::Lost => None,
        }
    }

    #[tokio::test]
    async fn offsets_increase_per_channel_and_subscribers_see_them_in_order() {
        let bus = LocalBus::default();
        let mut rx = bus.subscribe("a").await.unwrap();
        for n in 1..=3 {
            assert_eq!(bus.publish("a", event(n)).await.unwrap().offset, n);
        }
        assert_eq!(bus.publish("b", event(9)).await.unwrap().offset, 1);
        for n in 1..=3 {
            let d = rx.recv().await.unwrap();
            assert_eq!((d.offset, d.event.data["n"].as_u64()), (n, Some(n)));
            let frame: serde_json::Value = serde_json::from_str(&d.frame).unwrap();
            assert_eq!(frame["op"], "event");
            assert_eq!(frame["event"]["type"], "test");
        }
    }

    #[tokio::test]
    async fn a_burst_takes_one_slot_per_channel_however_many_events_it_holds() {
        let bus = LocalBus::new(BusConfig {
            buffer: 4,
            ..BusConfig::default()
        });
        let mut all = bus.subscribe("tasks").await.unwrap();
        let mut one = bus.subscribe("task:7").await.unwrap();
        // Three claim-sized bursts, each event on `tasks` and one of them on `task:7` too, before
        // either subscriber reads: 1,500 events in three slots, nothing lags.
        for burst in 0..3u64 {
            let mut events = Vec::new();
            for n in 0..500 {
                let e = event(burst * 500 + n);
                if n == 7 {
                    events.push(("task:7".to_owned(), e.clone()));
                }
                events.push(("tasks".to_owned(), e));
            }
            bus.publish_batch(&events).await.unwrap();
        }
        let mut offsets = Vec::new();
        // One at a time and a batch at a time, mixed.
        offsets.push(all.recv().await.unwrap().offset);
        while offsets.len() < 1500 {
            offsets.extend(all.recv_batch().await.unwrap().iter().map(|d| d.offset));
        }
        assert_eq!(offsets, (1..=1500).collect::<Vec<_>>());
        assert!(all.try_recv().is_err(), "nothing more");
        for n in [7, 507, 1007] {
            assert_eq!(one.recv().await.unwrap().event.data["n"], n);
        }
    }

    #[tokio::test]
    async fn recovers_exactly_the_missed_events_or_says_lost() {
        let bus = LocalBus::new(BusConfig {
            history_size: 3,
            ..BusConfig::default()
        });
        let first = bus.publish("c", event(1)).await.unwrap();
        for n in 2..=3 {
            bus.publish("c", event(n)).await.unwrap();
        }
        assert_eq!(
            offsets(bus.recover("c", &first).await.unwrap()),
            Some(vec![2, 3])
        );
        for n in 4..=5 {
            bus.publish("c", event(n)).await.unwrap();
        }
        assert_eq!(offsets(bus.recover("c", &first).await.unwrap()), None);
        let other_epoch = StreamPosition {
            offset: 4,
            epoch: "x".into(),
        };
        assert_eq!(offsets(bus.recover("c", &other_epoch).await.unwrap()), None);
        let future = StreamPosition {
            offset: 99,
            epoch: first.epoch.clone(),
        };
        assert_eq!(offsets(bus.recover("c", &future).await.unwrap()), None);
    }

    #[tokio::test]
    async fn recovered_frames_match_live_ones() {
        let bus = LocalBus::default();
        let start = bus.position("f").await.unwrap();
        let mut rx = bus.subscribe("f").await.unwrap();
        bus.publish("f", event(1)).await.unwrap();
        drop(rx.recv().await.unwrap());
        drop(rx);
        bus.publish("f", event(2)).await.unwrap();
        let Recovery::Recovered(missed) = bus.recover("f", &start).await.unwrap() else {
            panic!("lost");
        };
        let live = Delivery::new("f", 2, &start.epoch, event(2));
        assert_eq!(missed.len(), 2);
        let frame: serde_json::Value = serde_json::from_str(&missed[1].frame).unwrap();
        let expected: serde_json::Value = serde_json::from_str(&live.frame).unwrap();
        assert_eq!(frame["offset"], expected["offset"]);
        assert_eq!(frame["epoch"], expected["epoch"]);
        assert_eq!(frame["event"]["data"], expected["event"]["data"]);
    }

    #[tokio::test]
    async fn forgets_idle_channels_and_never_reuses_their_epoch() {
        let bus = LocalBus::new(BusConfig {
            history_ttl: Duration::ZERO,
            ..BusConfig::default()
        });
        let _kept = bus.subscribe("watched").await.unwrap();
        let old = bus.publish("task:1", event(1)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        for n in 2..1000 {
            bus.publish(&format!("task:{n}"), event(n)).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        bus.publish("other", event(0)).await.unwrap();
        assert!(bus.channel_count() < 10, "{}", bus.channel_count());
        assert_eq!(bus.position("watched").await.unwrap().offset, 0);
        let again = bus.publish("task:1", event(1)).await.unwrap();
        assert_eq!(again.offset, 1);
        assert_ne!(again.epoch, old.epoch, "a new incarnation, a new epoch");
        assert_eq!(offsets(bus.recover("task:1", &old).await.unwrap()), None);
    }

    #[tokio::test]
    async fn holds_at_most_max_channels_without_subscribers() {
        let bus = LocalBus::new(BusConfig {
            max_channels: 100,
            ..BusConfig::default()
        });
        let _kept = bus.subscribe("watched").await.unwrap();
        for n in 0..10_000 {
            bus.publish(&format!("task:{n}"), event(n)).await.unwrap();
            assert!(bus.channel_count() <= 100, "{}", bus.channel_count());
        }
        bus.publish("watched", event(1)).await.unwrap();
        assert_eq!(bus.position("watched").await.unwrap().offset, 1);
        // The most recent channels are the ones kept.
        assert_eq!(bus.position("task:9999").await.unwrap().offset, 1);
    }

    fn sized(n: u64, bytes: usize) -> Arc<Event> {
        Arc::new(Event::new(
            "test",
            json!({"n": n, "pad": "x".repeat(bytes)}),
            None,
        ))
    }

    #[tokio::test]
    async fn frees_the_broadcast_buffer_when_the_last_subscriber_leaves() {
        let bus = LocalBus::default();
        let start = bus.position("room:a").await.unwrap();
        let first = bus.subscribe("room:a").await.unwrap();
        let second = bus.subscribe("room:a").await.unwrap();
        drop(first);
        bus.release("room:a");
        assert_eq!(bus.sender_count(), 1, "one subscriber is left");
        drop(second);
        bus.release("room:a");
        assert_eq!(bus.sender_count(), 0);
        // Position and history outlive the buffer: what was missed meanwhile is recovered.
        bus.publish("room:a", event(1)).await.unwrap();
        assert_eq!(
            offsets(bus.recover("room:a", &start).await.unwrap()),
            Some(vec![1])
        );
        let mut again = bus.subscribe("room:a").await.unwrap();
        bus.publish("room:a", event(2)).await.unwrap();
        assert_eq!(again.recv().await.unwrap().offset, 2);
    }

    #[tokio::test]
    async fn bounds_each_channels_history_in_bytes() {
        let bus = LocalBus::new(BusConfig {
            history_channel_bytes: 10_000,
            ..BusConfig::default()
        });
        let start = bus.position("room:big").await.unwrap();
        for n in 1..=100 {
            bus.publish("room:big", sized(n, 1000)).await.unwrap();
        }
        assert!(bus.history_bytes() <= 10_000, "{}", bus.history_bytes());
        assert_eq!(
            offsets(bus.recover("room:big", &start).await.unwrap()),
            None
        );
        let recent = StreamPosition {
            offset: 97,
            epoch: start.epoch.clone(),
        };
        assert_eq!(
            offsets(bus.recover("room:big", &recent).await.unwrap()),
            Some(vec![98, 99, 100])
        );
        // An event larger than the whole budget is published, but not held.
        let position = bus.publish("room:big", sized(101, 20_000)).await.unwrap();
        assert_eq!(position.offset, 101);
        assert!(bus.history_bytes() <= 10_000, "{}", bus.history_bytes());
    }

    #[tokio::test]
    async fn evicts_the_oldest_events_of_any_channel_beyond_the_global_budget() {
        let bus = LocalBus::new(BusConfig {
            history_bytes: 50_000,
            ..BusConfig::default()
        });
        let old = bus.position("room:old").await.unwrap();
        for n in 1..=10 {
            bus.publish("room:old", sized(n, 1000)).await.unwrap();
        }
        let new = bus.position("room:new").await.unwrap();
        for n in 1..=200 {
            bus.publish(&format!("room:{}", n % 7), sized(n, 1000))
                .await
                .unwrap();
            assert!(bus.history_bytes() <= 50_000, "{}", bus.history_bytes());
        }
        bus.publish("room:new", sized(1, 1000)).await.unwrap();
        assert_eq!(offsets(bus.recover("room:old", &old).await.unwrap()), None);
        assert_eq!(
            offsets(bus.recover("room:new", &new).await.unwrap()),
            Some(vec![1])
        );
        // The publication order does not grow with events already let go of.
        let channels = bus.lock();
        assert!(channels.order.len() <= 2 * channels.held + 64);
    }

    #[tokio::test]
    async fn forgetting_channels_gives_their_bytes_back() {
        let bus = LocalBus::new(BusConfig {
            history_ttl: Duration::from_millis(1),
            ..BusConfig::default()
        });
        for n in 0..100 {
            bus.publish(&format!("room:{n}"), sized(n, 1000))
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        bus.publish("room:last", event(0)).await.unwrap();
        assert!(bus.history_bytes() < 2_000, "{}", bus.history_bytes());
        let channels = bus.lock();
        assert_eq!(
            channels.held,
            channels
                .map
                .values()
                .map(|c| c.history.len())
                .sum::<usize>()
        );
    }
}
