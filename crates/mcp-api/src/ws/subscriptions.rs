//! Subscriptions: live events after recovered history, and one forwarder per subscription that
//! moves the bus's deliveries into the connection's queue.

use super::close;
use super::connection::{Closing, Connection, Subscribed, reply, ws_error};
use crate::auth::Principal;
use crate::error::ApiError;
use axum::extract::ws::Utf8Bytes;
use mcp_core::events::{Delivery, EventBus, Recovery, StreamPosition};
use serde_json::{Value, json};
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc, watch};

impl Connection {
    pub(super) async fn subscribe(
        &mut self,
        principal: &Principal,
        channel: String,
        since: Option<StreamPosition>,
        id: &Option<Value>,
    ) -> Result<Option<Value>, ApiError> {
        if self.subscriptions.contains_key(&channel) {
            return Err(ws_error(
                "already_subscribed",
                "already subscribed to that channel",
            ));
        }
        if self.subscriptions.len() >= self.state.config.ws.max_subscriptions {
            return Err(ws_error(
                "too_many_subscriptions",
                "this connection has as many subscriptions as it may",
            ));
        }
        self.may_subscribe(principal, &channel).await?;
        let claim = self.claim_channel(principal, &channel)?;
        let bus = &self.state.events;
        let unavailable = |e: mcp_core::events::BusError| ws_error("unavailable", &e.to_string());
        // Live first, then history: nothing published in between is missed; the forwarder
        // skips what the history already delivered.
        let live = Live::new(
            bus.subscribe(&channel).await.map_err(unavailable)?,
            bus.clone(),
            &channel,
        );
        let position = bus.position(&channel).await.map_err(unavailable)?;
        let (result, missed, mut delivered) = match since {
            None => (
                json!({"offset": position.offset, "epoch": position.epoch}),
                Vec::new(),
                position.offset,
            ),
            Some(since) => match bus.recover(&channel, &since).await.map_err(unavailable)? {
                Recovery::Recovered(missed) => {
                    let last = missed.last().map_or(since.offset, |d| d.offset);
                    (
                        json!({"recovered": true, "offset": last.max(since.offset), "epoch": position.epoch}),
                        missed,
                        last.max(since.offset),
                    )
                }
                Recovery::Lost => (
                    json!({"recovered": false, "offset": position.offset, "epoch": position.epoch}),
                    Vec::new(),
                    position.offset,
                ),
            },
        };
        self.send(reply(id, result));
        for delivery in &missed {
            self.send(frame_text(delivery));
            delivered = delivered.max(delivery.offset);
        }
        let forwarder = tokio::spawn(forward(
            live,
            delivered,
            self.out.clone(),
            self.closing.clone(),
        ));
        self.subscriptions.insert(
            channel,
            Subscribed {
                forwarder,
                _claim: claim,
                _counted: super::gauges::Counted::new("mcp_ws_subscriptions"),
            },
        );
        Ok(None)
    }
}

/// A subscription's bus receiver. Dropping it (the forwarder ends or is aborted, or the
/// subscribe op fails half-way) tells the bus once the receiver is gone, so the channel's
/// buffer is freed as soon as its last subscriber on this node leaves.
struct Live {
    receiver: Option<broadcast::Receiver<Delivery>>,
    bus: Option<(Arc<dyn EventBus>, String)>,
}

impl Live {
    fn new(receiver: broadcast::Receiver<Delivery>, bus: Arc<dyn EventBus>, channel: &str) -> Live {
        Live {
            receiver: Some(receiver),
            bus: Some((bus, channel.to_owned())),
        }
    }

    async fn recv(&mut self) -> Result<Delivery, broadcast::error::RecvError> {
        match &mut self.receiver {
            Some(receiver) => receiver.recv().await,
            None => Err(broadcast::error::RecvError::Closed),
        }
    }

    fn try_recv(&mut self) -> Result<Delivery, broadcast::error::TryRecvError> {
        match &mut self.receiver {
            Some(receiver) => receiver.try_recv(),
            None => Err(broadcast::error::TryRecvError::Closed),
        }
    }
}

impl From<broadcast::Receiver<Delivery>> for Live {
    /// A receiver no bus hears about when it goes (tests).
    fn from(receiver: broadcast::Receiver<Delivery>) -> Live {
        Live {
            receiver: Some(receiver),
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
fn frame_text(delivery: &Delivery) -> Utf8Bytes {
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

/// Close reasons of `4008`.
const TOO_SLOW: &str = "too slow: resubscribe with since";
const INTERRUPTED: &str =
    "events interrupted (the node's link to Redis changed): resubscribe with since";

/// Moves one subscription's deliveries into the connection's queue, skipping what was already
/// delivered (offsets are increasing per channel).
async fn forward(
    mut live: Live,
    mut delivered: u64,
    out: Option<mpsc::Sender<Utf8Bytes>>,
    closing: watch::Sender<Option<Closing>>,
) {
    let Some(out) = out else {
        return;
    };
    let slow = |reason: &'static str| {
        closing.send_if_modified(|current| {
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
    };
    loop {
        match live.recv().await {
            // The bus's offset-0 filler: the node's link to Redis changed, so the stream this
            // subscription followed ended (a receiver that kept up sees it instead of lagging).
            Ok(delivery) if delivery.offset == 0 => return slow(INTERRUPTED),
            Ok(delivery) => {
                if delivery.offset <= delivered {
                    continue;
                }
                delivered = delivery.offset;
                if out.try_send(frame_text(&delivery)).is_err() {
                    return slow(TOO_SLOW);
                }
            }
            // Lagged by the filler, or really too slow; the cure is the same.
            Err(broadcast::error::RecvError::Lagged(_)) => match live.try_recv() {
                Ok(filler) if filler.offset == 0 => return slow(INTERRUPTED),
                _ => return slow(TOO_SLOW),
            },
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcp_core::events::Event;

    fn delivery(offset: u64) -> Delivery {
        Delivery::new(
            "tasks",
            offset,
            "e",
            Arc::new(Event::new("task.created", json!({}), None)),
        )
    }

    #[tokio::test]
    async fn forwards_in_order_skipping_what_was_delivered() {
        let (tx, rx) = broadcast::channel(16);
        let (out_tx, mut out_rx) = mpsc::channel(16);
        let closing = watch::channel(None).0;
        let forwarder = tokio::spawn(forward(rx.into(), 2, Some(out_tx), closing.clone()));
        for offset in 1..=4 {
            tx.send(delivery(offset)).unwrap();
        }
        for expected in [3, 4] {
            let frame: Value = serde_json::from_str(out_rx.recv().await.unwrap().as_str()).unwrap();
            assert_eq!(frame["offset"], expected);
            assert_eq!(frame["op"], "event");
        }
        drop(tx);
        forwarder.await.unwrap();
        assert!(closing.borrow().is_none());
    }

    #[tokio::test]
    async fn closes_a_consumer_whose_queue_is_full() {
        let (tx, rx) = broadcast::channel(16);
        let (out_tx, _out_rx) = mpsc::channel(1);
        let closing = watch::channel(None).0;
        for offset in 1..=3 {
            tx.send(delivery(offset)).unwrap();
        }
        forward(rx.into(), 0, Some(out_tx), closing.clone()).await;
        assert_eq!(closing.borrow().map(|c| c.code), Some(close::SLOW_CONSUMER));
    }

    #[tokio::test]
    async fn closes_a_subscription_whose_stream_was_interrupted_even_if_it_kept_up() {
        let (tx, rx) = broadcast::channel(16);
        let (out_tx, mut out_rx) = mpsc::channel(16);
        let closing = watch::channel(None).0;
        tx.send(delivery(1)).unwrap();
        // What the Redis bus sends when the node switches between Redis and local.
        tx.send(delivery(0)).unwrap();
        forward(rx.into(), 0, Some(out_tx), closing.clone()).await;
        assert!(
            out_rx.recv().await.is_some(),
            "the event before the interruption"
        );
        let why = closing.borrow().expect("closed");
        assert_eq!((why.code, why.reason), (close::SLOW_CONSUMER, INTERRUPTED));
    }

    #[tokio::test]
    async fn closes_a_consumer_that_lagged_behind_the_bus() {
        let (tx, rx) = broadcast::channel(2);
        let (out_tx, _out_rx) = mpsc::channel(16);
        let closing = watch::channel(None).0;
        for offset in 1..=5 {
            tx.send(delivery(offset)).unwrap();
        }
        forward(rx.into(), 0, Some(out_tx), closing.clone()).await;
        assert_eq!(closing.borrow().map(|c| c.code), Some(close::SLOW_CONSUMER));
    }
}
