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
    /// Subscriptions (distinct channels) per connection: `too_many_subscriptions` beyond.
    pub max_subscriptions: usize,
    /// Distinct channels one principal may be subscribed to on this node, across all its
    /// connections: `too_many_channels` beyond.
    pub max_channels_per_principal: usize,
    /// Largest `data` of a `publish`, as JSON text: `payload_too_large` beyond.
    pub max_publish_bytes: usize,
    /// Publishes per principal per minute (bursts of that many): `rate_limited` beyond. Each
    /// also counts against the principal's write limit.
    pub publish_per_minute: u32,
    /// Browser origins allowed to open a WebSocket (`https://app.example.com`; `*`: any). Empty:
    /// no check. An upgrade without `Origin` (not a browser) is always allowed.
    pub allowed_origins: Vec<String>,
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
            max_channels_per_principal: 200,
            max_publish_bytes: 16 * 1024,
            publish_per_minute: 600,
            allowed_origins: Vec::new(),
            ops_per_second: 50,
            refresh_notice: Duration::from_secs(30),
            open_namespaces: vec!["room".into()],
        }
    }
}
