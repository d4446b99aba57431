//! Rate limits: the `Limiter` port and the rule every implementation follows, GCRA (the generic
//! cell rate algorithm). A key may make `limit` requests per `period`, in bursts of up to `limit`,
//! refilling smoothly. One "theoretical arrival time" per key is the whole state.
//!
//! The in-memory limiter serves the embedded default; the Redis one (in `mcp-persistence`) runs
//! the same arithmetic in a Lua script so that every node of a cluster shares each limit.

use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `limit` requests per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub limit: u32,
    pub period: Duration,
}

impl Quota {
    pub fn per_second(limit: u32) -> Self {
        Quota {
            limit,
            period: Duration::from_secs(1),
        }
    }

    pub fn per_minute(limit: u32) -> Self {
        Quota {
            limit,
            period: Duration::from_secs(60),
        }
    }

    /// Time between two requests at the sustained rate, in microseconds (at least 1).
    pub fn interval_us(&self) -> i64 {
        (self.period.as_micros() as i64 / i64::from(self.limit.max(1))).max(1)
    }

    pub fn period_us(&self) -> i64 {
        self.interval_us() * i64::from(self.limit.max(1))
    }
}

/// The verdict on one request, with what the `RateLimit-*` and `Retry-After` headers need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    /// Requests still allowed right now.
    pub remaining: u32,
    /// When the key is back to its full burst.
    pub reset_after: Duration,
    /// When a refused request may be tried again.
    pub retry_after: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum LimiterError {
    #[error("rate limiter unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait Limiter: Send + Sync + 'static {
    /// Counts one request for `key` against `quota`.
    async fn check(&self, key: &str, quota: Quota) -> Result<Decision, LimiterError>;
}

/// GCRA for one request: given the key's stored theoretical arrival time (`None` for a new key)
/// and the time now (microseconds), returns the decision and the arrival time to store (`None`
/// when refused: nothing changes).
pub fn gcra(stored: Option<i64>, now: i64, quota: Quota) -> (Decision, Option<i64>) {
    let interval = quota.interval_us();
    let period = quota.period_us();
    let tat = stored.unwrap_or(now).max(now);
    let new_tat = tat + interval;
    let ahead = new_tat - now;
    let us = |v: i64| Duration::from_micros(v.max(0) as u64);
    if ahead <= period {
        let decision = Decision {
            allowed: true,
            limit: quota.limit,
            remaining: ((period - ahead) / interval).clamp(0, i64::from(quota.limit)) as u32,
            reset_after: us(ahead),
            retry_after: None,
        };
        (decision, Some(new_tat))
    } else {
        let decision = Decision {
            allowed: false,
            limit: quota.limit,
            remaining: 0,
            reset_after: us(tat - now),
            retry_after: Some(us(ahead - period)),
        };
        (decision, None)
    }
}

pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// The embedded default: limits held in this process.
#[derive(Debug, Default)]
pub struct LocalLimiter {
    arrivals: Mutex<HashMap<String, i64>>,
}

/// How many keys the memory limiter holds before it forgets the idle ones.
const MEMORY_SWEEP_AT: usize = 100_000;

#[async_trait]
impl Limiter for LocalLimiter {
    async fn check(&self, key: &str, quota: Quota) -> Result<Decision, LimiterError> {
        let now = now_us();
        let mut arrivals = self.arrivals.lock().unwrap_or_else(|e| e.into_inner());
        if arrivals.len() >= MEMORY_SWEEP_AT {
            // A key whose arrival time has passed is back to a full burst: forgetting it changes
            // nothing.
            arrivals.retain(|_, tat| *tat > now);
        }
        // A known key is updated in place: no copy of the key, one hash.
        if let Some(stored) = arrivals.get_mut(key) {
            let (decision, new_tat) = gcra(Some(*stored), now, quota);
            if let Some(tat) = new_tat {
                *stored = tat;
            }
            return Ok(decision);
        }
        let (decision, new_tat) = gcra(None, now, quota);
        if let Some(tat) = new_tat {
            arrivals.insert(key.to_owned(), tat);
        }
        Ok(decision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    #[test]
    fn allows_a_burst_then_refuses_until_the_next_interval() {
        let quota = Quota::per_second(3);
        let mut tat = None;
        let now = 10 * S;
        for remaining in [2, 1, 0] {
            let (d, next) = gcra(tat, now, quota);
            assert!(d.allowed);
            assert_eq!(d.remaining, remaining);
            tat = next;
        }
        let (refused, unchanged) = gcra(tat, now, quota);
        assert!(!refused.allowed);
        assert_eq!(unchanged, None);
        assert_eq!(refused.retry_after, Some(Duration::from_micros(333_333)));
        // One interval later exactly one more request fits.
        let later = now + quota.interval_us();
        let (d, next) = gcra(tat, later, quota);
        assert!(d.allowed && d.remaining == 0);
        assert!(!gcra(next, later, quota).0.allowed);
    }

    #[test]
    fn an_idle_key_returns_to_a_full_burst() {
        let quota = Quota::per_minute(10);
        let (_, tat) = gcra(None, 0, quota);
        let (d, _) = gcra(tat, 61 * S, quota);
        assert_eq!(d.remaining, 9);
    }

    #[tokio::test]
    async fn memory_limiter_keeps_keys_apart() {
        let limiter = LocalLimiter::default();
        let quota = Quota::per_minute(2);
        assert!(limiter.check("a", quota).await.unwrap().allowed);
        assert!(limiter.check("a", quota).await.unwrap().allowed);
        assert!(!limiter.check("a", quota).await.unwrap().allowed);
        assert!(limiter.check("b", quota).await.unwrap().allowed);
    }
}
