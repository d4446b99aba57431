//! Discord's rate limits as its answers describe them: which bucket each route falls in, what
//! is left in it and when it refills, and the global limit a 429 can set.

use reqwest::header::HeaderMap;
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

/// One rate-limit bucket, as Discord last described it.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    remaining: u64,
    reset_at: Instant,
}

#[derive(Debug, Default)]
pub(super) struct Limits {
    /// Route key (`POST /channels/123/messages`) → bucket id from `X-RateLimit-Bucket`.
    route_bucket: HashMap<String, String>,
    /// Bucket id (or the route key, before Discord named one) → its state.
    buckets: HashMap<String, Bucket>,
    /// Set by a global 429: nothing is sent before.
    pub(super) global_until: Option<Instant>,
}

impl Limits {
    fn bucket_key(&self, route: &str) -> String {
        self.route_bucket
            .get(route)
            .cloned()
            .unwrap_or_else(|| route.to_owned())
    }

    /// How long to wait before sending on `route`, or `None` to send now (taking one request
    /// from the bucket, so concurrent tasks do not overshoot it).
    pub(super) fn reserve(&mut self, route: &str, now: Instant) -> Option<Duration> {
        if let Some(until) = self.global_until {
            if until > now {
                return Some(until - now);
            }
            self.global_until = None;
        }
        let key = self.bucket_key(route);
        match self.buckets.get_mut(&key) {
            Some(bucket) if bucket.reset_at <= now => {
                self.buckets.remove(&key);
                None
            }
            Some(bucket) if bucket.remaining == 0 => Some(bucket.reset_at - now),
            Some(bucket) => {
                bucket.remaining -= 1;
                None
            }
            None => None,
        }
    }

    /// Records what an answer said about `route`'s bucket.
    pub(super) fn update(&mut self, route: &str, headers: &HeaderMap, now: Instant) {
        let bucket_id = header(headers, "x-ratelimit-bucket").map(str::to_owned);
        let remaining = header(headers, "x-ratelimit-remaining").and_then(|v| v.parse().ok());
        let reset_after = header(headers, "x-ratelimit-reset-after").and_then(seconds);
        if let Some(id) = &bucket_id {
            self.route_bucket.insert(route.to_owned(), id.clone());
        }
        if let (Some(remaining), Some(reset_after)) = (remaining, reset_after) {
            let key = bucket_id.unwrap_or_else(|| self.bucket_key(route));
            self.buckets.insert(
                key,
                Bucket {
                    remaining,
                    reset_at: now + reset_after,
                },
            );
        }
    }

    /// A 429: nothing on `route` (or anywhere, when `global`) before `wait` has passed.
    pub(super) fn limited(&mut self, route: &str, global: bool, wait: Duration, now: Instant) {
        if global {
            self.global_until = Some(now + wait);
        } else {
            let key = self.bucket_key(route);
            self.buckets.insert(
                key,
                Bucket {
                    remaining: 0,
                    reset_at: now + wait,
                },
            );
        }
    }
}

pub(super) fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// `"1.5"` → 1.5 s; negative or unreadable → `None`.
pub(super) fn seconds(value: &str) -> Option<Duration> {
    value
        .parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
}

#[cfg(test)]
mod tests {
    use super::Limits;
    use reqwest::header::{HeaderMap, HeaderValue};
    use std::time::Duration;
    use tokio::time::Instant;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }
    #[test]
    fn an_exhausted_bucket_waits_for_its_reset() {
        let now = Instant::now();
        let mut limits = Limits::default();
        let route = "POST /channels/1/messages";
        assert_eq!(limits.reserve(route, now), None);
        limits.update(
            route,
            &headers(&[
                ("x-ratelimit-bucket", "abcd"),
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset-after", "0.5"),
            ]),
            now,
        );
        assert_eq!(limits.reserve(route, now), Some(Duration::from_millis(500)));
        assert_eq!(
            limits.reserve(route, now + Duration::from_millis(500)),
            None
        );
    }

    #[test]
    fn a_global_limit_holds_every_route() {
        let now = Instant::now();
        let mut limits = Limits::default();
        limits.limited("a", true, Duration::from_secs(2), now);
        assert_eq!(limits.reserve("b", now), Some(Duration::from_secs(2)));
        assert_eq!(limits.reserve("b", now + Duration::from_secs(2)), None);
    }
}
