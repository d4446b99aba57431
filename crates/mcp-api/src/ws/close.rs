//! Close codes (documented in `docs/websocket.md`).

/// No valid credentials in time, or bad ones.
pub const UNAUTHENTICATED: u16 = 4001;
/// The access token expired and no new one came.
pub const TOKEN_EXPIRED: u16 = 4002;
/// The connection's credential was revoked (logout, a disabled user, a role or password change,
/// a revoked API key); authenticate anew on a new connection.
pub const REVOKED: u16 = 4003;
/// The client did not read fast enough; resubscribe with `since`.
pub const SLOW_CONSUMER: u16 = 4008;
/// Nothing heard from the client within the idle timeout.
pub const IDLE_TIMEOUT: u16 = 4009;
/// Far too many frames, after `rate_limited` errors.
pub const FLOOD: u16 = 4029;
/// A binary frame (this protocol is JSON text).
pub const UNSUPPORTED_DATA: u16 = 1003;
/// The server is shutting down.
pub const GOING_AWAY: u16 = 1001;
/// The reason of `GOING_AWAY`, with the reconnect hint of the `server.shutdown` frame before it.
pub const GOING_AWAY_REASON: &str = "server shutting down; reconnect_after_ms=1000";
/// How long a client closed with `GOING_AWAY` should wait (plus its own jitter) before it
/// reconnects: by then load balancers have taken the node out of rotation.
pub const RECONNECT_AFTER_MS: u64 = 1000;
/// A frame larger than the limit.
pub const TOO_BIG: u16 = 1009;
