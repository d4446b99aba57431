//! The cluster's rate limiter: GCRA (see `mcp_core::limiter`) run atomically in Redis by one Lua
//! script, with Redis's own clock, so every node enforces the same limit for a key.

use async_trait::async_trait;
use mcp_core::limiter::{Decision, Limiter, LimiterError, Quota};
use redis::aio::ConnectionManager;
use std::time::Duration;

/// The same arithmetic as `mcp_core::limiter::gcra`. Returns
/// `{allowed, remaining, reset_after_us, retry_after_us}`.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local ahead = new_tat - now
if ahead <= period then
  redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil(ahead / 1000) + 1)
  local remaining = math.floor((period - ahead) / interval)
  if remaining > limit then remaining = limit end
  return {1, remaining, ahead, 0}
end
return {0, 0, tat - now, ahead - period}
"#;

#[derive(Clone)]
pub struct RedisLimiter {
    connection: ConnectionManager,
    prefix: String,
    script: redis::Script,
}

impl RedisLimiter {
    /// Connects to `url`; every key is stored under `prefix` (one per deployment or test run).
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, LimiterError> {
        let client =
            redis::Client::open(url).map_err(|e| LimiterError::Unavailable(e.to_string()))?;
        let connection = ConnectionManager::new(client)
            .await
            .map_err(|e| LimiterError::Unavailable(e.to_string()))?;
        Ok(RedisLimiter {
            connection,
            prefix: prefix.to_owned(),
            script: redis::Script::new(GCRA),
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}rl:{key}", self.prefix)
    }

    /// Deletes every key under the prefix (test clean-up).
    pub async fn clear(&self) -> Result<(), LimiterError> {
        let mut connection = self.connection.clone();
        let pattern = format!("{}*", self.prefix);
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(&pattern)
            .query_async(&mut connection)
            .await
            .map_err(|e| LimiterError::Unavailable(e.to_string()))?;
        if !keys.is_empty() {
            redis::cmd("DEL")
                .arg(&keys)
                .query_async::<()>(&mut connection)
                .await
                .map_err(|e| LimiterError::Unavailable(e.to_string()))?;
        }
        Ok(())
    }
}

#[async_trait]
impl Limiter for RedisLimiter {
    async fn check(&self, key: &str, quota: Quota) -> Result<Decision, LimiterError> {
        let mut connection = self.connection.clone();
        let (allowed, remaining, reset_after, retry_after): (i64, i64, i64, i64) = self
            .script
            .key(self.key(key))
            .arg(quota.interval_us())
            .arg(quota.period_us())
            .arg(quota.limit)
            .invoke_async(&mut connection)
            .await
            .map_err(|e| LimiterError::Unavailable(e.to_string()))?;
        let us = |v: i64| Duration::from_micros(v.max(0) as u64);
        Ok(Decision {
            allowed: allowed == 1,
            limit: quota.limit,
            remaining: remaining.clamp(0, i64::from(quota.limit)) as u32,
            reset_after: us(reset_after),
            retry_after: (allowed != 1).then(|| us(retry_after)),
        })
    }
}
