//! The cluster's rate limiter: GCRA (see `mcp_core::limiter`) run atomically in Redis by one Lua
//! script, with Redis's own clock, so every node enforces the same limit for a key.
//!
//! Losing Redis must not slow a single request: the first call that fails (or takes longer than
//! `RedisOptions::timeout`) switches the limiter to `RedisMode::Local`, where this node's
//! in-process limiter (`LocalLimiter`) answers, per node, without touching Redis at all. A
//! background task looks for Redis with backoff and switches back once it answers a PING. Each
//! switch is logged once (`warn` going local, `info` coming back). A limiter started while Redis
//! is down serves locally from the start and picks Redis up the same way.

use crate::redis::link::{self, RETRY_MIN, RedisMode, RedisOptions};
use async_trait::async_trait;
use mcp_core::limiter::{Decision, Limiter, LimiterError, LocalLimiter, Quota};
use redis::aio::MultiplexedConnection;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;
use tracing::{info, warn};

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

/// How long `connect` waits for Redis to answer before it reports it unreachable.
const CONNECT_PATIENCE: Duration = Duration::from_secs(5);

/// Rate limits shared through Redis, per node while Redis is away (see the module comment).
#[derive(Clone)]
pub struct RedisLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    options: RedisOptions,
    prefix: String,
    script: redis::Script,
    fallback: LocalLimiter,
    link: Mutex<Link>,
    mode: watch::Sender<RedisMode>,
    /// Wakes the background task when a call finds Redis gone.
    lost: Arc<Notify>,
    background: Mutex<Option<AbortHandle>>,
}

/// The connection while Redis answers.
struct Link {
    connection: Option<MultiplexedConnection>,
    /// Counts installed connections, so a late failure of an old one leaves a newer one alone.
    generation: u64,
    last_error: String,
    /// Whether the current outage was logged already.
    warned: bool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.background.get_mut().ok().and_then(Option::take) {
            task.abort();
        }
    }
}

impl RedisLimiter {
    /// Starts a limiter for `url` without waiting for Redis: it limits locally until Redis
    /// answers. Every key is stored under `prefix` (one per deployment or test run). Fails only
    /// on a malformed URL.
    pub fn start(url: &str, prefix: &str, options: RedisOptions) -> Result<Self, LimiterError> {
        let client =
            redis::Client::open(url).map_err(|e| LimiterError::Unavailable(e.to_string()))?;
        let lost = Arc::new(Notify::new());
        let inner = Arc::new(Inner {
            client,
            options,
            prefix: prefix.to_owned(),
            script: redis::Script::new(GCRA),
            fallback: LocalLimiter::default(),
            link: Mutex::new(Link {
                connection: None,
                generation: 0,
                last_error: "Redis not reached yet".into(),
                warned: false,
            }),
            mode: watch::channel(RedisMode::Local).0,
            lost: lost.clone(),
            background: Mutex::new(None),
        });
        let task = tokio::spawn(reconnect(Arc::downgrade(&inner), lost)).abort_handle();
        *inner.lock_background() = Some(task);
        Ok(RedisLimiter { inner })
    }

    /// Connects to `url` and waits until Redis answers (up to 5 s): an error says Redis is
    /// unreachable. Tests use it as their "is Redis there?" probe.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, LimiterError> {
        let limiter = RedisLimiter::start(url, prefix, RedisOptions::default())?;
        match limiter.ready(CONNECT_PATIENCE).await {
            RedisMode::Shared => Ok(limiter),
            RedisMode::Local => Err(LimiterError::Unavailable(
                limiter.inner.lock().last_error.clone(),
            )),
        }
    }

    /// Waits until Redis is reached, for at most `patience`; the mode then.
    pub async fn ready(&self, patience: Duration) -> RedisMode {
        link::ready(self.mode_changes(), patience).await
    }

    /// Whether limits are shared through Redis right now, or held by this node.
    pub fn mode(&self) -> RedisMode {
        *self.inner.mode.borrow()
    }

    /// Every change of `mode`, for whoever reports on health.
    pub fn mode_changes(&self) -> watch::Receiver<RedisMode> {
        self.inner.mode.subscribe()
    }

    /// A PING, within the timeout: `Err` at once (without touching Redis) while the limiter is
    /// local, with the last error seen.
    pub async fn ping(&self) -> Result<(), String> {
        let Some((mut connection, generation)) = self.inner.current() else {
            return Err(self.inner.lock().last_error.clone());
        };
        let pinged = link::ping(&mut connection, &self.inner.options).await;
        if let Err(e) = &pinged {
            self.inner.lost(generation, e);
        }
        pinged
    }

    fn key(&self, key: &str) -> String {
        format!("{}rl:{key}", self.inner.prefix)
    }

    /// Deletes every key under the prefix (test clean-up).
    pub async fn clear(&self) -> Result<(), LimiterError> {
        let unavailable = |e: String| LimiterError::Unavailable(e);
        let Some((mut connection, _)) = self.inner.current() else {
            return Err(unavailable(self.inner.lock().last_error.clone()));
        };
        let options = self.inner.options;
        let pattern = format!("{}*", self.inner.prefix);
        let keys: Vec<String> = link::within(
            &options,
            redis::cmd("KEYS")
                .arg(&pattern)
                .query_async(&mut connection),
        )
        .await
        .map_err(unavailable)?;
        if !keys.is_empty() {
            link::within(
                &options,
                redis::cmd("DEL")
                    .arg(&keys)
                    .query_async::<()>(&mut connection),
            )
            .await
            .map_err(unavailable)?;
        }
        Ok(())
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Link> {
        // Every update leaves the link consistent, so a lock poisoned by a panic is still usable.
        self.link.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_background(&self) -> MutexGuard<'_, Option<AbortHandle>> {
        self.background.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connection to use, while Redis is known to answer.
    fn current(&self) -> Option<(MultiplexedConnection, u64)> {
        let link = self.lock();
        link.connection.clone().map(|c| (c, link.generation))
    }

    /// A call on connection `generation` failed: local from now on (logged once per outage),
    /// and the background task looks for Redis again.
    fn lost(&self, generation: u64, error: &str) {
        let mut link = self.lock();
        if link.generation != generation || link.connection.is_none() {
            return;
        }
        link.connection = None;
        link.last_error = error.to_owned();
        link.warned = true;
        drop(link);
        self.mode.send_replace(RedisMode::Local);
        warn!(
            error,
            "rate limiter: Redis unavailable; limits are per node until it answers again"
        );
        self.lost.notify_one();
    }

    fn found(&self, connection: MultiplexedConnection) {
        let mut link = self.lock();
        link.generation += 1;
        link.connection = Some(connection);
        link.warned = false;
        drop(link);
        self.mode.send_replace(RedisMode::Shared);
        info!("rate limiter: limits shared through Redis");
    }

    /// An attempt to reach Redis failed while local.
    fn still_lost(&self, error: String) {
        let mut link = self.lock();
        let first = !link.warned;
        link.warned = true;
        link.last_error = error;
        if first {
            warn!(
                error = %link.last_error,
                "rate limiter: Redis unreachable; limits are per node until it answers"
            );
        }
    }
}

/// The background task: whenever the limiter is local, tries Redis with backoff until it
/// answers, then waits for the next loss.
async fn reconnect(inner: Weak<Inner>, lost: Arc<Notify>) {
    let mut pause = Duration::ZERO;
    loop {
        let options = {
            let Some(inner) = inner.upgrade() else { return };
            if inner.lock().connection.is_some() {
                None
            } else {
                Some(inner.options)
            }
        };
        let Some(options) = options else {
            lost.notified().await;
            // Straight away: Redis may have dropped one connection and still be there.
            pause = Duration::ZERO;
            continue;
        };
        tokio::time::sleep(pause).await;
        let Some(client) = inner.upgrade().map(|i| i.client.clone()) else {
            return;
        };
        let opened = link::open(&client, &options).await;
        let Some(inner) = inner.upgrade() else { return };
        match opened {
            Ok(connection) => {
                inner.found(connection);
                pause = Duration::ZERO;
            }
            Err(e) => {
                inner.still_lost(e);
                pause = if pause.is_zero() {
                    RETRY_MIN
                } else {
                    options.next_pause(pause)
                };
            }
        }
    }
}

#[async_trait]
impl Limiter for RedisLimiter {
    /// Through Redis while it answers; by this node's own limiter while it does not (never an
    /// error, never a wait beyond the timeout).
    async fn check(&self, key: &str, quota: Quota) -> Result<Decision, LimiterError> {
        let Some((mut connection, generation)) = self.inner.current() else {
            return self.inner.fallback.check(key, quota).await;
        };
        let invoked = link::within(
            &self.inner.options,
            self.inner
                .script
                .key(self.key(key))
                .arg(quota.interval_us())
                .arg(quota.period_us())
                .arg(quota.limit)
                .invoke_async::<(i64, i64, i64, i64)>(&mut connection),
        )
        .await;
        let (allowed, remaining, reset_after, retry_after) = match invoked {
            Ok(reply) => reply,
            Err(e) => {
                self.inner.lost(generation, &e);
                return self.inner.fallback.check(key, quota).await;
            }
        };
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
