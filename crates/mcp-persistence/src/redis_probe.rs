//! The health monitor's check of Redis: a PING on a connection of its own, made for the check
//! and bounded by a short timeout, so it neither waits behind nor disturbs the bus's and the
//! limiter's connections (which reconnect by themselves).

use redis::AsyncConnectionConfig;
use std::time::Duration;

pub struct RedisProbe {
    client: redis::Client,
    config: AsyncConnectionConfig,
}

impl RedisProbe {
    /// Fails only on a malformed URL; reachability is what `ping` tells.
    pub fn new(url: &str, timeout: Duration) -> Result<RedisProbe, String> {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        Ok(RedisProbe { client, config })
    }

    /// Whether Redis answers PING now.
    pub async fn ping(&self) -> Result<(), String> {
        let mut connection = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await
            .map_err(|e| e.to_string())?;
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}
