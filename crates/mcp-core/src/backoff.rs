//! Retry delays: exponential backoff with full jitter, capped (the AWS "full jitter" scheme),
//! so that many tasks failing together do not retry together.

use crate::task::Backoff;
use rand::Rng;
use std::time::Duration;

/// The upper bound of the delay after `attempt` failed attempts (1-based): `base * 2^(attempt-1)`,
/// capped at `max`.
pub fn ceiling(backoff: Backoff, attempt: i32) -> Duration {
    let exponent = attempt.saturating_sub(1).clamp(0, 62) as u32;
    let ms = backoff
        .base_ms
        .saturating_mul(1u64.checked_shl(exponent).unwrap_or(u64::MAX))
        .min(backoff.max_ms);
    Duration::from_millis(ms)
}

/// A random delay in `[0, ceiling]`.
pub fn delay(backoff: Backoff, attempt: i32) -> Duration {
    let ceiling = ceiling(backoff, attempt).as_millis() as u64;
    Duration::from_millis(rand::rng().random_range(0..=ceiling))
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff {
        base_ms: 1_000,
        max_ms: 600_000,
    };

    #[test]
    fn doubles_until_the_cap() {
        assert_eq!(ceiling(B, 1), Duration::from_secs(1));
        assert_eq!(ceiling(B, 2), Duration::from_secs(2));
        assert_eq!(ceiling(B, 5), Duration::from_secs(16));
        assert_eq!(ceiling(B, 11), Duration::from_secs(600));
        assert_eq!(ceiling(B, 1_000), Duration::from_secs(600));
    }

    #[test]
    fn jitter_stays_within_the_ceiling() {
        for attempt in 1..20 {
            for _ in 0..50 {
                assert!(delay(B, attempt) <= ceiling(B, attempt));
            }
        }
    }

    #[test]
    fn zero_base_never_waits() {
        let b = Backoff {
            base_ms: 0,
            max_ms: 0,
        };
        assert_eq!(delay(b, 3), Duration::ZERO);
    }
}
