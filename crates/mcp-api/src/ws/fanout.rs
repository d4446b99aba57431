//! Fan-out of the bus's deliveries to this node's WebSocket subscribers: one forwarder per
//! channel, not per subscription. It receives each batch of deliveries once (a publication: one
//! event, or the hundreds of a claim or an outcome batch) and hands their frames (serialised
//! once, shared, never copied) to the queue of every connection subscribed to the channel, a
//! whole batch at a time; only the connections' writers wake, once per subscriber and batch.
//!
//! The guarantees are those of one receiver per subscription: a subscriber gets the channel's
//! events in order, each once, after what `since` recovered (a member joins pending: what the
//! forwarder delivers while the history is being read is kept and sent after it, skipping what
//! the history already held); a subscriber whose queue is full is closed with `4008` (too
//! slow) and no one else waits for it; when the forwarder itself lags behind the bus, or the
//! bus's stream is interrupted (the offset-0 filler), every subscriber of the channel on this
//! node is closed with `4008` and recovers with `since`.
//!
//! The forwarders and the connections' writers run on a small runtime of their own (the
//! `ws_fanout_threads` setting), not among the node's other tasks: when a claim hands hundreds of
//! tasks to in-process handlers, a writer woken behind them in the shared run queue would wait
//! its turn while its queue grows past the overload bound, and a subscriber that keeps up would
//! be closed for the node's business. On threads of their own they get the operating system's
//! fair share of the cores at once instead.

use super::close;
use super::connection::Closing;
use super::queue::{Refused, Sender};
use axum::extract::ws::Utf8Bytes;
use mcp_core::events::{Batch, BusError, Delivery, EventBus, Subscription};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

/// Close reasons of `4008`.
pub(super) const TOO_SLOW: &str = "too slow: resubscribe with since";
pub(super) const OVERLOADED: &str = "server overloaded: resubscribe with since";
pub(super) const INTERRUPTED: &str =
    "events interrupted (the node's link to Redis changed): resubscribe with since";

/// The channels this node's connections subscribe to, each with its forwarder, and the
/// runtime the forwarders and writers run on.
#[derive(Default)]
pub struct Fanout {
    channels: Mutex<HashMap<String, Channel>>,
    runtime: Threads,
}

/// The fan-out's own runtime; none: the caller's.
#[derive(Default)]
struct Threads(Option<tokio::runtime::Runtime>);

impl Drop for Threads {
    fn drop(&mut self) {
        // The node's state may be dropped inside another runtime, where waiting for the
        // threads to end is not allowed: they end on their own once their tasks are dropped.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

struct Channel {
    hub: Arc<Hub>,
    forwarder: JoinHandle<()>,
}

/// One channel's subscribers on this node.
#[derive(Default)]
struct Hub {
    members: Mutex<Members>,
}

#[derive(Default)]
struct Members {
    next_id: u64,
    list: Vec<Member>,
}

/// One subscription: where its frames go and how its connection is closed.
struct Member {
    id: u64,
    out: Sender,
    closing: watch::Sender<Option<Closing>>,
    state: State,
}

enum State {
    /// Joined, its history not yet sent: deliveries wait here.
    Pending(Vec<Delivery>),
    /// Offsets up to this one were sent.
    Live(u64),
}

/// A connection's place in a channel's fan-out; leaves it when dropped.
pub(super) struct Joined {
    fanout: Arc<Fanout>,
    channel: String,
    hub: Arc<Hub>,
    id: u64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update leaves the state consistent, so a lock poisoned by a panic is still usable.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The close reason of a queue's refusal.
fn why(refused: Refused) -> &'static str {
    match refused {
        Refused::Overloaded => OVERLOADED,
        Refused::Full | Refused::Closed => TOO_SLOW,
    }
}

/// Closes a member's connection as a slow consumer (unless it is closing already), and wakes
/// its writer to send the close.
fn close_slow(member: &Member, reason: &'static str) {
    let changed = member.closing.send_if_modified(|current| {
        if current.is_none() {
            *current = Some(Closing {
                code: close::SLOW_CONSUMER,
                reason,
            });
            true
        } else {
            false
        }
    });
    if changed {
        member.out.nudge();
    }
}

impl Fanout {
    /// A fan-out running on `threads` threads of its own (0: on the runtime of whoever
    /// subscribes, as tests do).
    pub fn new(threads: usize) -> std::io::Result<Fanout> {
        let runtime = match threads {
            0 => None,
            threads => Some(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(threads)
                    .thread_name("mcp-ws-fanout")
                    // Timers only: the sockets stay registered with the node's own I/O driver,
                    // and a second one would cost descriptors that connections need.
                    .enable_time()
                    .build()?,
            ),
        };
        Ok(Fanout {
            channels: Mutex::default(),
            runtime: Threads(runtime),
        })
    }

    /// Runs `task` where the fan-out runs (a forwarder, a connection's writer).
    pub(super) fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.runtime.0 {
            Some(runtime) => runtime.spawn(task),
            None => tokio::spawn(task),
        }
    }

    /// Joins `channel`'s fan-out, pending: deliveries from now on are kept until `go_live`.
    /// The channel's bus subscription is made by its first member on this node.
    pub(super) async fn join(
        self: &Arc<Self>,
        bus: &Arc<dyn EventBus>,
        channel: &str,
        out: Sender,
        closing: watch::Sender<Option<Closing>>,
    ) -> Result<Joined, BusError> {
        let mut receiver = None;
        loop {
            {
                let mut channels = lock(&self.channels);
                if let Some(held) = channels.get(channel) {
                    // Someone else subscribed meanwhile: the receiver made here (if any) is
                    // dropped, theirs serves.
                    let id = held.hub.add(out, closing);
                    return Ok(Joined {
                        fanout: self.clone(),
                        channel: channel.to_owned(),
                        hub: held.hub.clone(),
                        id,
                    });
                }
                if let Some(live) = receiver.take() {
                    let hub = Arc::new(Hub::default());
                    let id = hub.add(out, closing);
                    let forwarder = self.spawn(forward(live, hub.clone()));
                    channels.insert(
                        channel.to_owned(),
                        Channel {
                            hub: hub.clone(),
                            forwarder,
                        },
                    );
                    return Ok(Joined {
                        fanout: self.clone(),
                        channel: channel.to_owned(),
                        hub,
                        id,
                    });
                }
            }
            // No lock is held across the bus call.
            receiver = Some(Live::new(
                bus.subscribe(channel).await?,
                bus.clone(),
                channel,
            ));
        }
    }

    /// Channels with a forwarder on this node (for tests).
    pub fn channels(&self) -> usize {
        lock(&self.channels).len()
    }
}

impl Hub {
    fn add(&self, out: Sender, closing: watch::Sender<Option<Closing>>) -> u64 {
        let mut members = lock(&self.members);
        members.next_id += 1;
        let id = members.next_id;
        members.list.push(Member {
            id,
            out,
            closing,
            state: State::Pending(Vec::new()),
        });
        id
    }

    /// Hands a batch of deliveries (in offset order) to every member, each member's share in one
    /// go; closes and drops those that cannot take it.
    fn deliver(&self, batch: &[Delivery]) {
        let frames: Vec<Utf8Bytes> = batch.iter().map(frame_text).collect();
        let Some(last) = batch.last().map(|d| d.offset) else {
            return;
        };
        let mut members = lock(&self.members);
        members.list.retain_mut(|member| match &mut member.state {
            State::Live(delivered) => {
                // Those it has (from its history) are skipped: the rest of the batch is new.
                let from = batch.partition_point(|d| d.offset <= *delivered);
                if from == batch.len() {
                    return true;
                }
                *delivered = last;
                match member.out.try_send_all(&frames[from..]) {
                    Ok(()) => true,
                    Err(refused) => {
                        close_slow(member, why(refused));
                        false
                    }
                }
            }
            // More waiting than its queue could take is too slow as well (a burst that finds
            // room is kept whole, as the queue would take it).
            State::Pending(waiting) if waiting.len() < member.out.max_capacity() => {
                waiting.extend(batch.iter().cloned());
                true
            }
            State::Pending(_) => {
                close_slow(member, TOO_SLOW);
                false
            }
        });
    }

    /// Closes every member (the forwarder lagged, or the stream was interrupted).
    fn close_all(&self, reason: &'static str) {
        for member in lock(&self.members).list.drain(..) {
            close_slow(&member, reason);
        }
    }
}

impl Joined {
    /// The member's history (up to offset `delivered`) is queued: what waited is sent after it
    /// (skipping what the history held), and deliveries go straight to its queue from now on.
    pub(super) fn go_live(&self, delivered: u64) {
        let mut members = lock(&self.hub.members);
        let Some(at) = members.list.iter().position(|m| m.id == self.id) else {
            return; // closed meanwhile
        };
        let member = &mut members.list[at];
        let waiting = match std::mem::replace(&mut member.state, State::Live(delivered)) {
            State::Pending(waiting) => waiting,
            State::Live(_) => return,
        };
        let mut last = delivered;
        let mut frames = Vec::with_capacity(waiting.len());
        for delivery in &waiting {
            if delivery.offset > last {
                last = delivery.offset;
                frames.push(frame_text(delivery));
            }
        }
        member.state = State::Live(last);
        if !frames.is_empty()
            && let Err(refused) = member.out.try_send_all(&frames)
        {
            close_slow(member, why(refused));
            members.list.swap_remove(at);
        }
    }
}

impl Drop for Joined {
    fn drop(&mut self) {
        // The channel map first, then the hub: the order `join` takes them in.
        let mut channels = lock(&self.fanout.channels);
        let empty = {
            let mut members = lock(&self.hub.members);
            members.list.retain(|m| m.id != self.id);
            members.list.is_empty()
        };
        // The last member on this node: the forwarder ends and the bus frees the channel's
        // buffer (`Live`'s drop). A hub of the same name made since is not this one.
        if empty
            && channels
                .get(&self.channel)
                .is_some_and(|c| Arc::ptr_eq(&c.hub, &self.hub))
            && let Some(gone) = channels.remove(&self.channel)
        {
            gone.forwarder.abort();
        }
    }
}

/// The channel's bus receiver. Dropping it (the forwarder is aborted, or a `join` that lost
/// the race lets it go) tells the bus once the receiver is gone, so the channel's buffer is
/// freed as soon as its last subscriber on this node leaves.
struct Live {
    receiver: Option<Subscription>,
    bus: Option<(Arc<dyn EventBus>, String)>,
}

impl Live {
    fn new(receiver: Subscription, bus: Arc<dyn EventBus>, channel: &str) -> Live {
        Live {
            receiver: Some(receiver),
            bus: Some((bus, channel.to_owned())),
        }
    }

    async fn recv(&mut self) -> Result<Batch, broadcast::error::RecvError> {
        match &mut self.receiver {
            Some(receiver) => receiver.recv_batch().await,
            None => Err(broadcast::error::RecvError::Closed),
        }
    }

    fn try_recv(&mut self) -> Result<Batch, broadcast::error::TryRecvError> {
        match &mut self.receiver {
            Some(receiver) => receiver.try_recv_batch(),
            None => Err(broadcast::error::TryRecvError::Closed),
        }
    }
}

impl From<broadcast::Receiver<Batch>> for Live {
    /// A receiver no bus hears about when it goes (tests).
    fn from(receiver: broadcast::Receiver<Batch>) -> Live {
        Live {
            receiver: Some(receiver.into()),
            bus: None,
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        // The receiver first: the bus frees the buffer only when no receiver is left.
        self.receiver = None;
        if let Some((bus, channel)) = &self.bus {
            bus.release(channel);
        }
    }
}

/// The delivery's frame as a WebSocket text payload that shares the bytes serialised once per
/// channel instead of copying them for every subscriber.
pub(super) fn frame_text(delivery: &Delivery) -> Utf8Bytes {
    struct Frame(Arc<str>);
    impl AsRef<[u8]> for Frame {
        fn as_ref(&self) -> &[u8] {
            self.0.as_bytes()
        }
    }
    let shared = axum::body::Bytes::from_owner(Frame(delivery.frame.clone()));
    // Always valid (it is a `str`); the check is a fast scan, not a copy.
    Utf8Bytes::try_from(shared).unwrap_or_else(|_| Utf8Bytes::from(&*delivery.frame))
}

/// Whether a batch is the bus's offset-0 filler (see `Subscription`).
fn is_filler(batch: &[Delivery]) -> bool {
    batch.iter().any(|d| d.offset == 0)
}

/// Moves the channel's deliveries to its members until the bus closes the channel or the last
/// member leaves (then it is aborted).
async fn forward(mut live: Live, hub: Arc<Hub>) {
    loop {
        match live.recv().await {
            // The bus's offset-0 filler: the node's link to Redis changed, so the stream these
            // subscriptions followed ended (a receiver that kept up sees it instead of lagging).
            Ok(batch) if is_filler(&batch) => hub.close_all(INTERRUPTED),
            Ok(batch) => hub.deliver(&batch),
            // Lagged by the filler, or really too slow; the cure is the same.
            Err(broadcast::error::RecvError::Lagged(_)) => match live.try_recv() {
                Ok(filler) if is_filler(&filler) => hub.close_all(INTERRUPTED),
                _ => hub.close_all(TOO_SLOW),
            },
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::queue::{Receiver, queue};
    use super::*;
    use mcp_core::events::Event;
    use serde_json::{Value, json};

    fn delivery(offset: u64) -> Batch {
        Batch::from([Delivery::new(
            "tasks",
            offset,
            "e",
            Arc::new(Event::new("task.created", json!({}), None)),
        )])
    }

    /// A hub fed by `rx`, its forwarder, and a member joined pending.
    fn hub_with_member(
        rx: broadcast::Receiver<Batch>,
        capacity: usize,
    ) -> (Arc<Hub>, u64, Receiver, watch::Sender<Option<Closing>>) {
        let hub = Arc::new(Hub::default());
        let (out_tx, out_rx) = queue(capacity);
        let closing = watch::channel(None).0;
        let id = hub.add(out_tx, closing.clone());
        tokio::spawn(forward(rx.into(), hub.clone()));
        (hub, id, out_rx, closing)
    }

    fn go_live(hub: &Arc<Hub>, id: u64, delivered: u64) {
        let joined = Joined {
            fanout: Arc::default(),
            channel: "tasks".into(),
            hub: hub.clone(),
            id,
        };
        joined.go_live(delivered);
        std::mem::forget(joined);
    }

    async fn offset_of(out: &mut Receiver) -> Value {
        let frame: Value = serde_json::from_str(out.recv().await.unwrap().as_str()).unwrap();
        assert_eq!(frame["op"], "event");
        frame["offset"].clone()
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn forwards_in_order_after_the_history_skipping_what_it_held() {
        let (tx, rx) = broadcast::channel(16);
        let (hub, id, mut out, closing) = hub_with_member(rx, 16);
        for offset in 1..=4 {
            tx.send(delivery(offset)).unwrap();
        }
        settle().await;
        assert!(out.try_recv().is_none(), "nothing before the history");
        // The history delivered up to 2.
        go_live(&hub, id, 2);
        tx.send(delivery(5)).unwrap();
        for expected in [3, 4, 5] {
            assert_eq!(offset_of(&mut out).await, expected);
        }
        assert!(closing.borrow().is_none());
    }

    #[tokio::test]
    async fn closes_a_consumer_whose_queue_is_full_and_no_one_else() {
        let (tx, rx) = broadcast::channel(16);
        let (hub, slow, full, slow_closing) = hub_with_member(rx, 1);
        // Its client does not read: the writer waits for the socket.
        full.stall();
        let (out_tx, mut out) = queue(16);
        let closing = watch::channel(None).0;
        let fast = hub.add(out_tx, closing.clone());
        go_live(&hub, slow, 0);
        go_live(&hub, fast, 0);
        for offset in 1..=3 {
            tx.send(delivery(offset)).unwrap();
        }
        for expected in [1, 2, 3] {
            assert_eq!(offset_of(&mut out).await, expected);
        }
        assert_eq!(
            slow_closing.borrow().map(|c| c.code),
            Some(close::SLOW_CONSUMER)
        );
        assert!(closing.borrow().is_none());
        assert_eq!(lock(&hub.members).list.len(), 1, "the slow one is dropped");
    }

    #[tokio::test]
    async fn closes_a_pending_member_that_would_overflow_its_queue() {
        let (tx, rx) = broadcast::channel(16);
        let (_hub, _id, _out, closing) = hub_with_member(rx, 2);
        for offset in 1..=3 {
            tx.send(delivery(offset)).unwrap();
        }
        settle().await;
        assert_eq!(closing.borrow().map(|c| c.code), Some(close::SLOW_CONSUMER));
    }

    #[tokio::test]
    async fn closes_every_member_when_the_stream_was_interrupted_even_if_it_kept_up() {
        let (tx, rx) = broadcast::channel(16);
        let (hub, id, mut out, closing) = hub_with_member(rx, 16);
        go_live(&hub, id, 0);
        tx.send(delivery(1)).unwrap();
        assert_eq!(
            offset_of(&mut out).await,
            1,
            "the event before the interruption"
        );
        // What the Redis bus sends when the node switches between Redis and local.
        tx.send(delivery(0)).unwrap();
        settle().await;
        let why = closing.borrow().expect("closed");
        assert_eq!((why.code, why.reason), (close::SLOW_CONSUMER, INTERRUPTED));
    }

    #[tokio::test]
    async fn closes_every_member_when_the_forwarder_lagged_behind_the_bus() {
        let (tx, rx) = broadcast::channel(2);
        for offset in 1..=5 {
            tx.send(delivery(offset)).unwrap();
        }
        let (hub, id, _out, closing) = hub_with_member(rx, 16);
        go_live(&hub, id, 0);
        settle().await;
        let why = closing.borrow().expect("closed");
        assert_eq!((why.code, why.reason), (close::SLOW_CONSUMER, TOO_SLOW));
    }
}
