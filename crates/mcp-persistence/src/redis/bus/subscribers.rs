//! This node's side of the bus: its subscribers and their broadcast senders, the fan-out of
//! frames read from Redis to them, and the switch between `Shared` (through Redis) and `Local`
//! (the in-process bus of one outage), with the lag every switch gives each receiver.

use super::{Head, LOCAL_SWEEP_AT, PUBLISHED_LOCALLY_MAX, decode};
use crate::redis::link::RedisMode;
use mcp_core::events::{Batch, BusConfig, Delivery, Event, LocalBus, Subscription};
use redis::aio::MultiplexedConnection;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{Notify, broadcast, watch};
use tracing::{info, warn};

/// The subscribers of this node, and how the node reaches Redis.
pub(super) struct Local {
    pub(super) buffer: usize,
    pub(super) config: BusConfig,
    pub(super) state: Mutex<LocalState>,
    pub(super) mode: watch::Sender<RedisMode>,
    /// Told when a command finds Redis gone, so the link keeper drops the link and relinks.
    pub(super) trouble: Notify,
}

pub(super) struct LocalState {
    /// The command connection while the bus is shared; `None` while it is local.
    pub(super) connection: Option<MultiplexedConnection>,
    /// Counts installed connections, so a late failure of an old one leaves a newer one alone.
    pub(super) generation: u64,
    pub(super) last_error: String,
    /// Whether the current outage was logged already.
    pub(super) warned: bool,
    /// The bus of this node while local: a fresh one per outage.
    pub(super) memory: Arc<LocalBus>,
    /// Channels published to locally during this outage (their Redis epochs end when Redis
    /// returns), or too many to remember.
    pub(super) published: HashSet<String>,
    pub(super) published_overflow: bool,
    pub(super) channels: HashMap<String, LocalChannel>,
    pub(super) sweep_at_len: usize,
}

pub(super) struct LocalChannel {
    pub(super) sender: broadcast::Sender<Batch>,
    /// Epoch and offset of the last delivery, to notice a gap.
    pub(super) last: Option<(String, u64)>,
}

/// What must happen in Redis before the bus may be shared again.
pub(super) enum Pending {
    /// End the epochs of these channels.
    Channels(Vec<String>),
    /// End the epoch of every channel of the deployment.
    All,
}

impl Local {
    pub(super) fn lock(&self) -> MutexGuard<'_, LocalState> {
        // Every update leaves the map consistent, so a lock poisoned by a panic is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connection to use, while the bus is shared.
    pub(super) fn shared(&self) -> Option<(MultiplexedConnection, u64)> {
        let state = self.lock();
        state.connection.clone().map(|c| (c, state.generation))
    }

    /// The outage's in-process bus.
    pub(super) fn memory(&self) -> Arc<LocalBus> {
        self.lock().memory.clone()
    }

    /// A command on connection `generation` failed: local from now on, and the link keeper
    /// relinks.
    pub(super) fn lost(&self, generation: u64, error: &str) {
        if self.go_local(Some(generation), error) {
            self.trouble.notify_one();
        }
    }

    /// Switches to local (for connection `generation`, or whichever is current); whether it did.
    pub(super) fn go_local(&self, generation: Option<u64>, error: &str) -> bool {
        let mut state = self.lock();
        if state.connection.is_none() || generation.is_some_and(|g| g != state.generation) {
            return false;
        }
        state.connection = None;
        state.last_error = error.to_owned();
        state.warned = true;
        state.memory = Arc::new(LocalBus::new(self.config));
        state.published.clear();
        state.published_overflow = false;
        self.lag_all(&mut state);
        drop(state);
        self.mode.send_replace(RedisMode::Local);
        warn!(
            error,
            "event bus: Redis unavailable; events stay on this node until it is back, and its \
             subscribers must recover"
        );
        true
    }

    /// An attempt to link failed while local.
    pub(super) fn still_lost(&self, error: String) {
        let mut state = self.lock();
        let first = !state.warned;
        state.warned = true;
        state.last_error = error;
        if first {
            warn!(
                error = %state.last_error,
                "event bus: Redis unreachable; events stay on this node until it answers"
            );
        }
    }

    /// Switches to shared over `connection`, unless channels were published to locally whose
    /// Redis epochs must end first (then those are returned, and forgotten).
    pub(super) fn go_shared(&self, connection: MultiplexedConnection) -> Result<(), Pending> {
        let mut state = self.lock();
        if state.published_overflow {
            state.published_overflow = false;
            state.published.clear();
            return Err(Pending::All);
        }
        if !state.published.is_empty() {
            return Err(Pending::Channels(state.published.drain().collect()));
        }
        state.connection = Some(connection);
        state.generation += 1;
        state.warned = false;
        self.lag_all(&mut state);
        drop(state);
        self.mode.send_replace(RedisMode::Shared);
        info!("event bus: events shared through Redis");
        Ok(())
    }

    /// The outage's bus, once `channels` are noted as published to locally; `None` if the bus
    /// is shared again.
    pub(super) fn begin_local<'a>(
        &self,
        channels: impl Iterator<Item = &'a String>,
    ) -> Option<Arc<LocalBus>> {
        let mut state = self.lock();
        if state.connection.is_some() {
            return None;
        }
        if !state.published_overflow {
            for channel in channels {
                if !state.published.contains(channel) {
                    state.published.insert(channel.clone());
                }
            }
            if state.published.len() > PUBLISHED_LOCALLY_MAX {
                state.published.clear();
                state.published_overflow = true;
            }
        }
        Some(state.memory.clone())
    }

    pub(super) fn subscribe(&self, channel: &str) -> Subscription {
        let mut state = self.lock();
        if state.channels.len() >= state.sweep_at_len {
            state
                .channels
                .retain(|_, local| local.sender.receiver_count() > 0);
            state.sweep_at_len = (state.channels.len() * 2).max(LOCAL_SWEEP_AT);
        }
        let buffer = self.buffer;
        state
            .channels
            .entry(channel.to_owned())
            .or_insert_with(|| LocalChannel {
                sender: broadcast::channel(buffer).0,
                last: None,
            })
            .sender
            .subscribe()
            .into()
    }

    /// Forgets `channel`'s sender (and its buffer) once nobody on this node listens to it.
    pub(super) fn release(&self, channel: &str) {
        let mut state = self.lock();
        if state
            .channels
            .get(channel)
            .is_some_and(|local| local.sender.receiver_count() == 0)
        {
            state.channels.remove(channel);
        }
    }

    /// Whether someone on this node listens to `channel`.
    pub(super) fn listened(&self, channel: &str) -> bool {
        self.lock()
            .channels
            .get(channel)
            .is_some_and(|local| local.sender.receiver_count() > 0)
    }

    /// Hands a frame from Redis's pub/sub to this node's subscribers of its channel.
    pub(super) fn dispatch(&self, payload: &[u8]) {
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
            if state.connection.is_none() {
                // Switched to local just now: this node's subscribers follow its own events.
                return;
            }
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
        let lag = chrono::Utc::now() - delivery.event.at;
        metrics::histogram!("mcp_bus_publish_lag_seconds").record(
            lag.num_microseconds()
                .map_or(0.0, |us| us.max(0) as f64 / 1e6),
        );
        self.deliver(delivery);
    }

    /// Hands a delivery to this node's subscribers of its channel; a gap in offsets or a new
    /// epoch makes them lag first.
    pub(super) fn deliver(&self, delivery: Delivery) {
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
        let _ = local.sender.send(Batch::from([delivery]));
    }

    /// The node switched between Redis and local: what its subscribers were following ended.
    pub(super) fn lag_all(&self, state: &mut LocalState) {
        state
            .channels
            .retain(|_, local| local.sender.receiver_count() > 0);
        for (channel, local) in &mut state.channels {
            lag(&local.sender, channel, self.buffer);
            local.last = None;
        }
    }

    /// Channels someone on this node listens to.
    pub(super) fn watched(&self) -> Vec<String> {
        self.lock()
            .channels
            .iter()
            .filter(|(_, local)| local.sender.receiver_count() > 0)
            .map(|(channel, _)| channel.clone())
            .collect()
    }
}

/// Makes every receiver of `sender` lag, by overrunning its buffer with offset-0 fillers.
pub(super) fn lag(sender: &broadcast::Sender<Batch>, channel: &str, buffer: usize) {
    let filler = Batch::from([Delivery {
        channel: channel.to_owned(),
        offset: 0,
        epoch: String::new(),
        event: Arc::new(Event::new("bus.lagged", serde_json::Value::Null, None)),
        frame: Arc::from(""),
    }]);
    // A receiver lags once the slot it would read next is overwritten: capacity + 1 sends.
    for _ in 0..=buffer.next_power_of_two() {
        let _ = sender.send(filler.clone());
    }
}
