//! The limits and timings of WebSocket connections, with their defaults.

use std::time::Duration;

/// Limits and timings of WebSocket connections.
#[derive(Debug, Clone)]
pub struct WsConfig {
    /// Time allowed for the `auth` op when the upgrade carried no credentials.
    pub auth_timeout: Duration,
    /// How often the server pings.
    pub ping_interval: Duration,
    /// A connection that sends nothing (not even a pong) this long is closed.
    pub idle_timeout: Duration,
    /// Frames queued for one client before it counts as too slow.
    pub send_queue: usize,
    /// Largest accepted client frame, in bytes.
    pub max_frame_bytes: usize,
    pub max_subscriptions: usize,
    /// Client frames per second (bursts of that many).
    pub ops_per_second: u32,
    /// How long before an access token expires the server asks for a new one.
    pub refresh_notice: Duration,
    /// Namespaces (`room` for `room:*`) any authenticated client may subscribe and publish to.
    pub open_namespaces: Vec<String>,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            auth_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            send_queue: 1024,
            max_frame_bytes: 64 * 1024,
            max_subscriptions: 100,
            ops_per_second: 50,
            refresh_notice: Duration::from_secs(30),
            open_namespaces: vec!["room".into()],
        }
    }
}
