//! Subscriptions: live events after recovered history; the channel's forwarder (`fanout.rs`)
//! moves the bus's deliveries into the connection's queue.

use super::connection::{Connection, Subscribed, reply, ws_error};
use super::fanout::frame_text;
use crate::auth::Principal;
use crate::error::ApiError;
use mcp_core::events::{Recovery, StreamPosition};
use serde_json::{Value, json};

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
        let Some(out) = self.out.clone() else {
            return Err(ws_error("unavailable", "the connection is closing"));
        };
        // Live first (pending), then history: nothing published in between is missed; what
        // waited and the history both held is sent once.
        let joined = self
            .state
            .ws_fanout
            .join(bus, &channel, out, self.closing.clone())
            .await
            .map_err(unavailable)?;
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
        joined.go_live(delivered);
        self.subscriptions.insert(
            channel,
            Subscribed {
                _joined: joined,
                _claim: claim,
                _counted: super::gauges::Counted::new("mcp_ws_subscriptions"),
            },
        );
        Ok(None)
    }
}
