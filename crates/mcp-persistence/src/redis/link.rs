//! What the Redis limiter and bus share about reaching Redis without ever making a caller wait
//! for it: short connect and response timeouts, the mode a handle is in (`Shared` through Redis,
//! or `Local` to this node while Redis is away), and the backoff of the background task that
//! looks for Redis again. A caller on the request path only uses a connection that is known to
//! work; the first failure flips the handle to `Local` and nothing on the request path touches
//! Redis again until the background task has seen it answer.

use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use std::time::Duration;
use tokio::sync::watch;

/// How a handle reaches Redis; see `RedisLimiter` and `RedisBus` for what `Local` means to each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisMode {
    /// Through Redis: shared by every node.
    Shared,
    /// Redis is unreachable (or not reached yet): this node alone, until it is back.
    Local,
}

impl RedisMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RedisMode::Shared => "shared",
            RedisMode::Local => "local",
        }
    }
}

/// Timeouts and backoff of a Redis handle.
#[derive(Debug, Clone, Copy)]
pub struct RedisOptions {
    /// Longest wait for a connection, and for any answer, before Redis counts as unavailable.
    pub timeout: Duration,
    /// Longest pause between two attempts to reach Redis again (the first is 100 ms, doubling).
    pub retry_max: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            timeout: Duration::from_millis(250),
            retry_max: Duration::from_secs(5),
        }
    }
}

impl RedisOptions {
    /// The pause after `pause`: doubled, within `[RETRY_MIN, retry_max]`.
    pub(crate) fn next_pause(&self, pause: Duration) -> Duration {
        (pause * 2).clamp(RETRY_MIN, self.retry_max.max(RETRY_MIN))
    }

    /// At least 1 ms: a zero timeout would fail everything.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout.max(Duration::from_millis(1))
    }
}

/// The first pause before trying Redis again.
pub(crate) const RETRY_MIN: Duration = Duration::from_millis(100);

/// A fresh connection that answered a PING, within the timeout.
pub(crate) async fn open(
    client: &redis::Client,
    options: &RedisOptions,
) -> Result<MultiplexedConnection, String> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(options.timeout()))
        .set_response_timeout(Some(options.timeout()));
    let connect = async {
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        redis::cmd("PING")
            .query_async::<()>(&mut connection)
            .await?;
        Ok::<_, redis::RedisError>(connection)
    };
    // Twice the timeout: a connect and a PING, each bounded by it.
    match tokio::time::timeout(options.timeout() * 2, connect).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out reaching Redis".into()),
    }
}

/// Whether Redis at `url` answers a PING within the timeouts (for `mkww-mcp doctor`).
pub async fn check(url: &str, options: &RedisOptions) -> Result<(), String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    open(&client, options).await.map(drop)
}

/// A PING on `connection`, within the timeout.
pub(crate) async fn ping(
    connection: &mut MultiplexedConnection,
    options: &RedisOptions,
) -> Result<(), String> {
    within(options, redis::cmd("PING").query_async::<()>(connection)).await
}

/// `call` within the timeout, its error as text.
pub(crate) async fn within<T>(
    options: &RedisOptions,
    call: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(options.timeout(), call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "Redis did not answer within {} ms",
            options.timeout().as_millis()
        )),
    }
}

/// Waits until `mode` says `Shared`, for at most `patience`; the mode then.
pub(crate) async fn ready(mut mode: watch::Receiver<RedisMode>, patience: Duration) -> RedisMode {
    let _ = tokio::time::timeout(patience, mode.wait_for(|m| *m == RedisMode::Shared)).await;
    *mode.borrow()
}
