//! A connection's queue of outgoing frames: bounded, many senders (the reader, the channels'
//! forwarders), one receiver (the writer). Unlike `tokio::sync::mpsc`, which allocates a block
//! of 32 slots and a cache-padded channel (about 1.5 KiB) per queue up front, it allocates
//! nothing until frames are queued and gives a burst's memory back once drained: most
//! connections are idle most of the time, and they are counted by the thousand.
//!
//! Full means the client is too slow, and only the client: the queue refuses frames beyond its
//! capacity only while the writer is held up by the socket (the client does not read what was
//! sent). A queue that grows because the writer has not had its turn on a busy node yet (the
//! workers' bursts come faster than it is scheduled) is the server's doing, and grows up to
//! `OVERLOAD` times the capacity before the connection is closed all the same.
//!
//! It is also the one thing the writer waits on: a frame, a ping the reader asks for, or a
//! nudge (the connection is closing) all wake it through the queue's own lock and waker, so a
//! delivery costs the writer no other wake-up registration (at 2,000 subscribers of a channel,
//! every registration is paid 2,000 times per event).

use axum::extract::ws::Utf8Bytes;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// Slots kept allocated once the queue is empty again; a larger buffer is freed.
const KEPT: usize = 16;

/// How many times its capacity a queue may hold while its writer is not held up by the socket
/// (see the module comment): the bound of a node too busy to write.
const OVERLOAD: usize = 8;

struct Shared {
    state: Mutex<State>,
    capacity: usize,
}

struct State {
    frames: VecDeque<Utf8Bytes>,
    senders: usize,
    receiver_gone: bool,
    /// The writer waits for the socket to take what it wrote.
    stalled: bool,
    /// The reader asked for a ping.
    ping: bool,
    /// Someone wants the writer to look at the connection's state (it is closing).
    nudged: bool,
    /// The receiver waiting for any of the above.
    waiter: Option<Waker>,
}

impl State {
    /// Why more frames would overflow a queue of `capacity`, if they would: it is full and the
    /// writer is held up by the socket, or it is overloaded whatever the reason.
    fn refuses(&self, capacity: usize) -> Option<Refused> {
        let queued = self.frames.len();
        if queued < capacity {
            None
        } else if self.stalled {
            Some(Refused::Full)
        } else if queued >= capacity.saturating_mul(OVERLOAD) {
            Some(Refused::Overloaded)
        } else {
            None
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update leaves the queue consistent, so a lock poisoned by a panic is usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `change` and wakes the receiver if it was waiting; the wake happens after the
    /// lock is let go.
    fn update<R>(&self, change: impl FnOnce(&mut State) -> R) -> R {
        let (result, waiter) = {
            let mut state = self.lock();
            let result = change(&mut state);
            (result, state.waiter.take())
        };
        if let Some(waiter) = waiter {
            waiter.wake();
        }
        result
    }
}

/// What the writer is woken for.
#[derive(Debug)]
pub(super) enum Next {
    Frame(Utf8Bytes),
    /// The reader asked for a ping.
    Ping,
    /// Look at the connection's state: it may be closing.
    Nudged,
    /// Every sender is gone and nothing is left.
    End,
}

/// A bounded queue of at most `capacity` frames (at least one).
pub(super) fn queue(capacity: usize) -> (Sender, Receiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            frames: VecDeque::new(),
            senders: 1,
            receiver_gone: false,
            stalled: false,
            ping: false,
            nudged: false,
            waiter: None,
        }),
        capacity: capacity.max(1),
    });
    (Sender(shared.clone()), Receiver(shared))
}

pub(super) struct Sender(Arc<Shared>);

/// Why a frame was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refused {
    /// Full while the client does not read what was sent: it is too slow.
    Full,
    /// Beyond the overload bound while the writer waits for its turn: the node is too busy.
    Overloaded,
    Closed,
}

impl Sender {
    /// Queues a frame without waiting.
    pub(super) fn try_send(&self, frame: Utf8Bytes) -> Result<(), Refused> {
        self.try_send_all(std::slice::from_ref(&frame))
    }

    /// Queues all of `frames` (one publication's burst), in order, unless the queue is full
    /// already; the receiver wakes once. A burst is taken whole even beyond the capacity, by at
    /// most its own size: a client that had read everything before the server made a burst
    /// must not be dropped for the burst's size.
    pub(super) fn try_send_all(&self, frames: &[Utf8Bytes]) -> Result<(), Refused> {
        let capacity = self.0.capacity;
        self.0.update(|state| {
            if state.receiver_gone {
                return Err(Refused::Closed);
            }
            if let Some(refused) = state.refuses(capacity) {
                return Err(refused);
            }
            state.frames.extend(frames.iter().cloned());
            Ok(())
        })
    }

    /// Asks the writer for a ping (at most one is pending).
    pub(super) fn ping(&self) {
        self.0.update(|state| state.ping = true);
    }

    /// Wakes the writer to look at the connection's state (it is closing).
    pub(super) fn nudge(&self) {
        self.0.update(|state| state.nudged = true);
    }

    pub(super) fn max_capacity(&self) -> usize {
        self.0.capacity
    }
}

impl Clone for Sender {
    fn clone(&self) -> Sender {
        self.0.lock().senders += 1;
        Sender(self.0.clone())
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let waiter = {
            let mut state = self.0.lock();
            state.senders -= 1;
            if state.senders == 0 {
                state.waiter.take()
            } else {
                None
            }
        };
        // The last one: the receiver learns that nothing more will come.
        if let Some(waiter) = waiter {
            waiter.wake();
        }
    }
}

pub(super) struct Receiver(Arc<Shared>);

impl Receiver {
    /// What the writer has to do next: a nudge first, then the frames in order, then a ping;
    /// `End` once every sender is gone and the queue is empty. Cancel-safe: nothing is taken
    /// but by the poll that returns it.
    pub(super) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Next> {
        let mut state = self.0.lock();
        if std::mem::take(&mut state.nudged) {
            return Poll::Ready(Next::Nudged);
        }
        if let Some(frame) = take(&mut state) {
            return Poll::Ready(Next::Frame(frame));
        }
        if std::mem::take(&mut state.ping) {
            return Poll::Ready(Next::Ping);
        }
        if state.senders == 0 {
            return Poll::Ready(Next::End);
        }
        // Checked and registered under one lock: a sender that comes after sees the waker.
        match &mut state.waiter {
            Some(waiter) => waiter.clone_from(cx.waker()),
            None => state.waiter = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// What the writer has to do next (see `poll_next`).
    pub(super) async fn next(&mut self) -> Next {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    /// The next frame; `None` once every sender is gone and the queue is empty (pings and
    /// nudges are skipped).
    #[cfg(test)]
    pub(super) async fn recv(&mut self) -> Option<Utf8Bytes> {
        loop {
            match self.next().await {
                Next::Frame(frame) => return Some(frame),
                Next::End => return None,
                Next::Ping | Next::Nudged => {}
            }
        }
    }

    /// The next frame if one is queued.
    pub(super) fn try_recv(&mut self) -> Option<Utf8Bytes> {
        take(&mut self.0.lock())
    }

    /// Runs `write` (a write or a flush of the socket), noting while it waits for the socket:
    /// only then does a full queue mean the client is too slow. The write is exempt from Tokio's
    /// cooperative budget: a writer catching up on a long queue would otherwise be told to wait
    /// for its budget, which would look the same as waiting for the socket.
    pub(super) async fn writing<F: std::future::Future>(&self, write: F) -> F::Output {
        let mut write = std::pin::pin!(tokio::task::unconstrained(write));
        if let std::task::Poll::Ready(done) = futures::poll!(write.as_mut()) {
            return done;
        }
        self.0.lock().stalled = true;
        let done = write.await;
        self.0.lock().stalled = false;
        done
    }
}

#[cfg(test)]
impl Receiver {
    /// As if the writer waited for the socket from now on (tests of what a full queue does).
    pub(super) fn stall(&self) {
        self.0.lock().stalled = true;
    }
}

fn take(state: &mut State) -> Option<Utf8Bytes> {
    let frame = state.frames.pop_front()?;
    if state.frames.is_empty() && state.frames.capacity() > KEPT {
        state.frames = VecDeque::new();
    }
    Some(frame)
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.receiver_gone = true;
        state.frames.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn delivers_in_order_and_refuses_beyond_capacity() {
        let (tx, mut rx) = queue(2);
        tx.0.lock().stalled = true;
        tx.try_send("a".into()).unwrap();
        tx.clone().try_send("b".into()).unwrap();
        assert_eq!(tx.try_send("c".into()), Err(Refused::Full));
        assert_eq!(rx.recv().await.unwrap().as_str(), "a");
        assert_eq!(rx.try_recv().unwrap().as_str(), "b");
        assert!(rx.try_recv().is_none());
    }

    #[tokio::test]
    async fn takes_a_burst_whole_unless_the_queue_is_full_already() {
        let (tx, mut rx) = queue(2);
        tx.0.lock().stalled = true;
        tx.try_send("a".into()).unwrap();
        let burst: Vec<Utf8Bytes> = vec!["b".into(), "c".into()];
        tx.try_send_all(&burst).unwrap();
        assert_eq!(tx.try_send_all(&burst), Err(Refused::Full));
        assert_eq!(tx.try_send("d".into()), Err(Refused::Full));
        for expected in ["a", "b", "c"] {
            assert_eq!(rx.recv().await.unwrap().as_str(), expected);
        }
        assert!(rx.try_recv().is_none());
    }

    #[tokio::test]
    async fn refuses_beyond_capacity_only_while_the_socket_holds_the_writer_up() {
        let (tx, rx) = queue(2);
        // The writer has not had its turn: the node's doing, up to the overload bound.
        for n in 0..2 * OVERLOAD {
            tx.try_send(n.to_string().into()).unwrap();
        }
        assert_eq!(tx.try_send("over".into()), Err(Refused::Overloaded));
        while rx.0.lock().frames.len() > 2 {
            rx.0.lock().frames.pop_front();
        }
        // The socket does not take what the writer wrote: the client's doing.
        let (release, held) = tokio::sync::oneshot::channel::<()>();
        let writer = async { rx.writing(async { held.await.ok() }).await };
        tokio::pin!(writer);
        assert!(futures::poll!(writer.as_mut()).is_pending());
        assert_eq!(tx.try_send("slow".into()), Err(Refused::Full));
        drop(release);
        writer.await;
        tx.try_send("fine again".into()).unwrap();
    }

    #[tokio::test]
    async fn ends_when_the_last_sender_leaves_after_what_was_queued() {
        let (tx, mut rx) = queue(4);
        let other = tx.clone();
        tx.try_send("last".into()).unwrap();
        drop(tx);
        let waiting = tokio::spawn(async move {
            let first = rx.recv().await;
            (first, rx.recv().await)
        });
        tokio::task::yield_now().await;
        drop(other);
        let (first, end) = waiting.await.unwrap();
        assert_eq!(first.unwrap().as_str(), "last");
        assert!(end.is_none());
    }

    #[tokio::test]
    async fn wakes_a_waiting_receiver_and_refuses_once_it_is_gone() {
        let (tx, mut rx) = queue(4);
        let waiting = tokio::spawn(async move { rx.recv().await.map(|f| f.to_string()) });
        tokio::task::yield_now().await;
        tx.try_send("x".into()).unwrap();
        assert_eq!(waiting.await.unwrap().as_deref(), Some("x"));
        assert_eq!(tx.try_send("y".into()), Err(Refused::Closed));
    }

    #[test]
    fn gives_a_bursts_memory_back_once_drained() {
        let (tx, mut rx) = queue(1024);
        for n in 0..100 {
            tx.try_send(n.to_string().into()).unwrap();
        }
        while rx.try_recv().is_some() {}
        assert_eq!(tx.0.lock().frames.capacity(), 0);
    }
}

#[cfg(test)]
mod wake_tests {
    use super::*;

    #[tokio::test]
    async fn wakes_the_writer_for_a_ping_or_a_nudge_and_gives_frames_first() {
        let (tx, mut rx) = queue(4);
        let waiting = tokio::spawn(async move {
            let first = rx.next().await;
            (first, rx)
        });
        tokio::task::yield_now().await;
        tx.ping();
        let (first, mut rx) = waiting.await.unwrap();
        assert!(matches!(first, Next::Ping));
        tx.ping();
        tx.try_send("x".into()).unwrap();
        tx.nudge();
        assert!(matches!(rx.next().await, Next::Nudged));
        assert!(matches!(rx.next().await, Next::Frame(f) if f.as_str() == "x"));
        assert!(matches!(rx.next().await, Next::Ping));
        drop(tx);
        assert!(matches!(rx.next().await, Next::End));
    }
}
