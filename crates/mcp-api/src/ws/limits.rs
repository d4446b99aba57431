//! What one principal may hold and send on the WebSocket, across all its connections: distinct
//! channels on this node (each costs the node a fan-out buffer while subscribed), and the rate
//! and size of what it publishes and creates (history and tasks are paid for by everyone).
//! Rates count against the same per-principal write limit as REST writes, so a socket is no way
//! around it.

use super::connection::{Connection, ws_error};
use crate::auth::Principal;
use crate::error::ApiError;
use mcp_core::limiter::Quota;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// The channels each principal is subscribed to on this node, with how many of its
/// subscriptions hold each one.
#[derive(Debug, Default)]
pub struct ChannelClaims {
    by_subject: Mutex<HashMap<String, HashMap<String, usize>>>,
}

/// One subscription's hold on its channel; let go of when dropped.
#[derive(Debug)]
pub(super) struct Claim {
    claims: Arc<ChannelClaims>,
    subject: String,
    channel: String,
}

impl ChannelClaims {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, HashMap<String, usize>>> {
        // Every update leaves the map consistent, so a lock poisoned by a panic is still usable.
        self.by_subject.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A hold on `channel` for `subject`, unless it would make more than `max` distinct channels.
    /// A channel the subject holds already (from another connection) costs nothing more.
    pub(super) fn claim(
        self: &Arc<Self>,
        subject: &str,
        channel: &str,
        max: usize,
    ) -> Option<Claim> {
        let mut by_subject = self.lock();
        let held = by_subject.entry(subject.to_owned()).or_default();
        if let Some(count) = held.get_mut(channel) {
            *count += 1;
        } else if held.len() >= max {
            if held.is_empty() {
                by_subject.remove(subject);
            }
            return None;
        } else {
            held.insert(channel.to_owned(), 1);
        }
        Some(Claim {
            claims: self.clone(),
            subject: subject.to_owned(),
            channel: channel.to_owned(),
        })
    }

    /// Distinct channels `subject` holds now.
    pub fn held(&self, subject: &str) -> usize {
        self.lock().get(subject).map_or(0, HashMap::len)
    }

    /// Principals holding at least one channel now.
    pub fn principals(&self) -> usize {
        self.lock().len()
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut by_subject = self.claims.lock();
        let Some(held) = by_subject.get_mut(&self.subject) else {
            return;
        };
        if let Some(count) = held.get_mut(&self.channel) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&self.channel);
            }
        }
        if held.is_empty() {
            by_subject.remove(&self.subject);
        }
    }
}

/// Counts the bytes of a JSON text without keeping it.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The size of `data` as JSON text.
pub(super) fn json_len(data: &Value) -> usize {
    let mut counter = Counter(0);
    // Writing a `Value` into a writer that never fails cannot fail.
    let _ = serde_json::to_writer(&mut counter, data);
    counter.0
}

impl Connection {
    /// A hold on `channel` for `principal`, or `too_many_channels`.
    pub(super) fn claim_channel(
        &self,
        principal: &Principal,
        channel: &str,
    ) -> Result<Claim, ApiError> {
        let max = self.state.config.ws.max_channels_per_principal;
        self.state
            .ws_channels
            .claim(&principal.subject, channel, max)
            .ok_or_else(|| {
                ws_error(
                    "too_many_channels",
                    &format!(
                        "this principal is subscribed to {max} distinct channels on this node, \
                         as many as it may; unsubscribe from one first"
                    ),
                )
            })
    }

    /// Counts one write (`publish`, `task.create`) against the principal's write limit, the one
    /// REST writes count against: `rate_limited` beyond it.
    pub(super) async fn count_write(&self, principal: &Principal) -> Result<(), ApiError> {
        let quota = self.state.security.config.limits.get().write;
        self.count(&format!("write:{}", principal.subject), quota, "writes")
            .await
    }

    /// Checks a publish against the size limit and the principal's publish rate (then its write
    /// limit): `payload_too_large` or `rate_limited`.
    pub(super) async fn may_send(
        &self,
        principal: &Principal,
        data: &Value,
    ) -> Result<(), ApiError> {
        let config = &self.state.config.ws;
        let size = json_len(data);
        if size > config.max_publish_bytes {
            return Err(ws_error(
                "payload_too_large",
                &format!(
                    "`data` is {size} bytes as JSON; at most {} may be published",
                    config.max_publish_bytes
                ),
            ));
        }
        let quota = Quota::per_minute(config.publish_per_minute.max(1));
        self.count(
            &format!("publish:{}", principal.subject),
            quota,
            "publishes",
        )
        .await?;
        self.count_write(principal).await
    }

    async fn count(&self, key: &str, quota: Quota, what: &str) -> Result<(), ApiError> {
        match self.state.security.check(key, quota).await {
            Some(decision) if !decision.allowed => {
                let retry = decision
                    .retry_after
                    .map_or(1, |d| d.as_secs_f64().ceil().max(1.0) as u64);
                Err(ws_error(
                    "rate_limited",
                    &format!(
                        "too many {what} for this principal ({} per {} s); retry in {retry} s",
                        quota.limit,
                        quota.period.as_secs()
                    ),
                )
                .with_details(serde_json::json!({"retry_after_seconds": retry})))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts_distinct_channels_per_subject_across_connections() {
        let claims = Arc::new(ChannelClaims::default());
        let a = claims.claim("u", "room:a", 2).expect("first");
        let a_again = claims
            .claim("u", "room:a", 2)
            .expect("same channel, other connection");
        let b = claims.claim("u", "room:b", 2).expect("second");
        assert!(claims.claim("u", "room:c", 2).is_none(), "a third one");
        assert!(claims.claim("v", "room:c", 2).is_some(), "another subject");
        assert_eq!(claims.held("u"), 2);
        drop(a);
        assert_eq!(claims.held("u"), 2, "room:a is still held once");
        drop(a_again);
        assert_eq!(claims.held("u"), 1);
        let c = claims.claim("u", "room:c", 2).expect("room for one more");
        drop((b, c));
        assert_eq!(claims.held("u"), 0);
        assert_eq!(claims.principals(), 0, "nothing left behind");
    }

    #[test]
    fn refusing_a_claim_leaves_nothing_behind() {
        let claims = Arc::new(ChannelClaims::default());
        assert!(claims.claim("u", "room:a", 0).is_none());
        assert_eq!(claims.principals(), 0);
    }

    #[test]
    fn measures_data_as_json_text() {
        let data = json!({"text": "x".repeat(100)});
        assert_eq!(json_len(&data), data.to_string().len());
    }
}
