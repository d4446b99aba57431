//! The in-process event bus of the embedded deployment: per channel an offset, a bounded history
//! and a broadcast sender, all in this process's memory.
//!
//! A channel's epoch names one incarnation of its stream. Channels nobody listens to are forgotten
//! once their history has aged out (and, beyond `max_channels`, the least recently used first:
//! there is a `task:{id}` channel per task, so memory must not grow with the number of tasks). A
//! forgotten channel that comes back starts again at offset 1 under a new epoch, so an old
//! position is never mistaken for a new one; a restart changes every epoch, as the history dies
//! with the process.

use super::{BusError, Delivery, Event, EventBus, Recovery, StreamPosition, Subscription};
use async_trait::async_trait;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// Limits of an event bus (the Redis one uses the first three too).
#[derive(Debug, Clone, Copy)]
pub struct BusConfig {
    /// Events kept per channel for recovery.
    pub history_size: usize,
    /// Events older than this are dropped from the history; a channel idle this long and with
    /// no subscriber is forgotten.
    pub history_ttl: Duration,
    /// Deliveries a subscriber may fall behind before it lags.
    pub buffer: usize,
    /// Channels without a subscriber held at most (in-process bus only); beyond it the least
    /// recently used are forgotten even if their history has not aged out yet.
    pub max_channels: usize,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            history_size: 1000,
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
}

struct Channel {
    epoch: Arc<str>,
    offset: u64,
    history: VecDeque<Held>,
    /// Made at the first subscription, dropped once nobody listens.
    sender: Option<broadcast::Sender<Delivery>>,
    /// Last publish, subscription or position query.
    touched: Instant,
}

impl Channel {
    fn listened(&self) -> bool {
        self.sender.as_ref().is_some_and(|s| s.receiver_count() > 0)
    }

    fn trim(&mut self, config: &BusConfig, now: Instant) {
        while self.history.len() > config.history_size
            || self
                .history
                .front()
                .is_some_and(|h| now.saturating_duration_since(h.at) > config.history_ttl)
        {
            self.history.pop_front();
        }
    }
}

struct Channels {
    map: HashMap<String, Channel>,
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
            let epoch = format!("{}-{}", self.process, channels.incarnations);
            channels.map.insert(
                name.to_owned(),
                Channel {
                    epoch: epoch.into(),
                    offset: 0,
                    history: VecDeque::new(),
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
        channels.map.retain(|_, channel| {
            channel.trim(config, now);
            if !channel.listened() {
                channel.sender = None;
            }
            channel.sender.is_some()
                || !channel.history.is_empty()
                || now.saturating_duration_since(channel.touched) <= config.history_ttl
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
                channels
                    .map
                    .retain(|_, c| c.sender.is_some() || c.touched > newest_evicted);
            }
        }
        // When subscribed channels alone exceed the bound, look again only after a quarter more.
        channels.sweep_at_len = if channels.map.len() < config.max_channels {
            config.max_channels
        } else {
            channels.map.len() + config.max_channels.div_ceil(4)
        };
    }

    fn publish_locked(
        &self,
        channels: &mut Channels,
        name: &str,
        event: Arc<Event>,
        now: Instant,
    ) -> StreamPosition {
        let config = self.config;
        let channel = self.channel(channels, name, now);
        channel.offset += 1;
        let offset = channel.offset;
        let mut frame = None;
        if channel.listened() {
            let delivery = Delivery::new(name, offset, &channel.epoch, event.clone());
            frame = Some(delivery.frame.clone());
            if let Some(sender) = &channel.sender {
                // Fails only if the last receiver went away meanwhile: the history keeps it.
                let _ = sender.send(delivery);
            }
        } else {
            channel.sender = None;
        }
        if config.history_size > 0 {
            channel.history.push_back(Held {
                offset,
                at: now,
                event,
                frame,
            });
        }
        channel.trim(&config, now);
        StreamPosition {
            offset,
            epoch: channel.epoch.to_string(),
        }
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
        Ok(self.publish_locked(&mut self.lock(), channel, event, now))
    }

    async fn publish_batch(
        &self,
        events: &[(String, Arc<Event>)],
    ) -> Result<Vec<StreamPosition>, BusError> {
        let now = Instant::now();
        let mut channels = self.lock();
        Ok(events
            .iter()
            .map(|(channel, event)| self.publish_locked(&mut channels, channel, event.clone(), now))
            .collect())
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
            .subscribe())
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
            state.trim(&self.config, now);
            state.touched = now;
            let oldest = state
                .history
                .front()
                .map_or(state.offset + 1, |held| held.offset);
            if since.offset + 1 < oldest {
                return Ok(Recovery::Lost);
            }
            let missed: Vec<_> = state
                .history
                .iter()
                .filter(|held| held.offset > since.offset)
                .map(|held| (held.offset, held.event.clone(), held.frame.clone()))
                .collect();
            (state.epoch.clone(), missed)
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
}
