//! A connection's queue of outgoing frames: bounded, many senders (the reader, the channels'
//! forwarders), one receiver (the writer). Unlike `tokio::sync::mpsc`, which allocates a block
//! of 32 slots and a cache-padded channel (about 1.5 KiB) per queue up front, it allocates
//! nothing until frames are queued and gives a burst's memory back once drained: most
//! connections are idle most of the time, and they are counted by the thousand.

use axum::extract::ws::Utf8Bytes;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

/// Slots kept allocated once the queue is empty again; a larger buffer is freed.
const KEPT: usize = 16;

struct Shared {
    state: Mutex<State>,
    /// Wakes the receiver: a frame was queued, or the last sender left.
    ready: Notify,
    capacity: usize,
}

struct State {
    frames: VecDeque<Utf8Bytes>,
    senders: usize,
    receiver_gone: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update leaves the queue consistent, so a lock poisoned by a panic is usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A bounded queue of at most `capacity` frames (at least one).
pub(super) fn queue(capacity: usize) -> (Sender, Receiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            frames: VecDeque::new(),
            senders: 1,
            receiver_gone: false,
        }),
        ready: Notify::new(),
        capacity: capacity.max(1),
    });
    (Sender(shared.clone()), Receiver(shared))
}

pub(super) struct Sender(Arc<Shared>);

/// Why a frame was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refused {
    Full,
    Closed,
}

impl Sender {
    /// Queues a frame without waiting.
    pub(super) fn try_send(&self, frame: Utf8Bytes) -> Result<(), Refused> {
        {
            let mut state = self.0.lock();
            if state.receiver_gone {
                return Err(Refused::Closed);
            }
            if state.frames.len() >= self.0.capacity {
                return Err(Refused::Full);
            }
            state.frames.push_back(frame);
        }
        self.0.ready.notify_one();
        Ok(())
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
        let last = {
            let mut state = self.0.lock();
            state.senders -= 1;
            state.senders == 0
        };
        if last {
            self.0.ready.notify_one();
        }
    }
}

pub(super) struct Receiver(Arc<Shared>);

impl Receiver {
    /// The next frame; `None` once every sender is gone and the queue is empty. Cancel-safe: a
    /// frame is taken only by the poll that returns it.
    pub(super) async fn recv(&mut self) -> Option<Utf8Bytes> {
        loop {
            {
                let mut state = self.0.lock();
                if let Some(frame) = take(&mut state) {
                    return Some(frame);
                }
                if state.senders == 0 {
                    return None;
                }
            }
            // A frame queued since the check left a permit: this does not sleep through it.
            self.0.ready.notified().await;
        }
    }

    /// The next frame if one is queued.
    pub(super) fn try_recv(&mut self) -> Option<Utf8Bytes> {
        take(&mut self.0.lock())
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
        tx.try_send("a".into()).unwrap();
        tx.clone().try_send("b".into()).unwrap();
        assert_eq!(tx.try_send("c".into()), Err(Refused::Full));
        assert_eq!(rx.recv().await.unwrap().as_str(), "a");
        assert_eq!(rx.try_recv().unwrap().as_str(), "b");
        assert!(rx.try_recv().is_none());
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
