//! A circuit breaker: closed → open when the failure rate over a rolling window passes a
//! threshold (after enough calls) → half-open after a cool-down, letting a few probes through →
//! closed when they succeed, open again when one fails. Pure state; the caller supplies time.
//!
//! The rolling window keeps counts per slice of time, not one entry per call: a route that ends
//! 50,000 calls a second over a 60-second window would otherwise hold three million outcomes
//! and count its failures by walking them on every call (which made a queue's throughput fall
//! the longer it ran).

use serde::Serialize;
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Outcomes older than this no longer count (they are forgotten a `1 / SLICES` of the
    /// window early at most: the window is kept as counts per slice of time).
    pub window: Duration,
    /// Fewest outcomes in the window before the breaker may open.
    pub min_calls: usize,
    /// Failure rate (0–1) at or above which it opens.
    pub failure_rate: f64,
    /// How long it stays open before probing.
    pub open_for: Duration,
    /// Probes allowed at once while half-open; this many successes close it.
    pub probes: usize,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            window: Duration::from_secs(60),
            min_calls: 10,
            failure_rate: 0.5,
            open_for: Duration::from_secs(30),
            probes: 1,
        }
    }
}

/// Slices a window is counted in.
const SLICES: u32 = 32;

/// The calls and failures that ended within one slice of the window, from its first call on.
#[derive(Debug, Clone, Copy)]
struct Slice {
    start: Instant,
    calls: usize,
    failures: usize,
}

/// The outcomes of a rolling window as counts per slice, with their running totals.
#[derive(Debug, Clone, Default)]
struct Outcomes {
    slices: VecDeque<Slice>,
    calls: usize,
    failures: usize,
}

impl Outcomes {
    /// Counts one outcome at `now`, and forgets the slices that began more than `window` ago.
    fn record(&mut self, succeeded: bool, now: Instant, window: Duration) {
        while let Some(oldest) = self.slices.front()
            && now.duration_since(oldest.start) > window
        {
            self.calls -= oldest.calls;
            self.failures -= oldest.failures;
            self.slices.pop_front();
        }
        let failed = usize::from(!succeeded);
        match self.slices.back_mut() {
            Some(slice) if now.duration_since(slice.start) < window / SLICES => {
                slice.calls += 1;
                slice.failures += failed;
            }
            _ => self.slices.push_back(Slice {
                start: now,
                calls: 1,
                failures: failed,
            }),
        }
        self.calls += 1;
        self.failures += failed;
    }

    fn clear(&mut self) {
        *self = Outcomes::default();
    }
}

#[derive(Debug, Clone)]
pub struct Breaker {
    config: BreakerConfig,
    state: BreakerState,
    /// The outcomes within the window while closed.
    outcomes: Outcomes,
    opened_at: Option<Instant>,
    probes_in_flight: usize,
    probe_successes: usize,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        Breaker {
            config,
            state: BreakerState::Closed,
            outcomes: Outcomes::default(),
            opened_at: None,
            probes_in_flight: 0,
            probe_successes: 0,
        }
    }

    /// Takes new thresholds (a runtime setting); the outcomes seen so far still count.
    pub fn reconfigure(&mut self, config: BreakerConfig) {
        self.config = config;
    }

    /// The state at `now` (an open breaker turns half-open once its cool-down is over).
    pub fn state(&mut self, now: Instant) -> BreakerState {
        if self.state == BreakerState::Open
            && self
                .opened_at
                .is_some_and(|at| now.duration_since(at) >= self.config.open_for)
        {
            self.state = BreakerState::HalfOpen;
            self.probes_in_flight = 0;
            self.probe_successes = 0;
        }
        self.state
    }

    /// How many new calls may start now: unlimited (`usize::MAX`) when closed, none when open,
    /// the free probe slots when half-open.
    pub fn admits(&mut self, now: Instant) -> usize {
        match self.state(now) {
            BreakerState::Closed => usize::MAX,
            BreakerState::Open => 0,
            BreakerState::HalfOpen => self.config.probes.saturating_sub(self.probes_in_flight),
        }
    }

    /// A call starts (counts as a probe while half-open).
    pub fn started(&mut self, now: Instant) {
        if self.state(now) == BreakerState::HalfOpen {
            self.probes_in_flight += 1;
        }
    }

    /// A call ended. Returns the new state when it changed.
    pub fn record(&mut self, succeeded: bool, now: Instant) -> Option<BreakerState> {
        let before = self.state(now);
        match before {
            BreakerState::HalfOpen => {
                self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
                if succeeded {
                    self.probe_successes += 1;
                    if self.probe_successes >= self.config.probes {
                        self.state = BreakerState::Closed;
                        self.outcomes.clear();
                    }
                } else {
                    self.open(now);
                }
            }
            BreakerState::Closed => {
                self.outcomes.record(succeeded, now, self.config.window);
                let (calls, failures) = (self.outcomes.calls, self.outcomes.failures);
                if calls >= self.config.min_calls
                    && failures as f64 / calls as f64 >= self.config.failure_rate
                {
                    self.open(now);
                }
            }
            // Calls that started before it opened: they change nothing.
            BreakerState::Open => {}
        }
        let after = self.state;
        (after != before).then_some(after)
    }

    fn open(&mut self, now: Instant) {
        self.state = BreakerState::Open;
        self.opened_at = Some(now);
        self.outcomes.clear();
        self.probes_in_flight = 0;
        self.probe_successes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            window: Duration::from_secs(10),
            min_calls: 4,
            failure_rate: 0.5,
            open_for: Duration::from_secs(5),
            probes: 1,
        }
    }

    #[test]
    fn opens_on_a_failure_rate_over_enough_calls() {
        let t0 = Instant::now();
        let mut breaker = Breaker::new(config());
        assert_eq!(breaker.record(false, t0), None);
        assert_eq!(breaker.record(false, t0), None, "too few calls yet");
        assert_eq!(breaker.record(true, t0), None);
        assert_eq!(breaker.record(false, t0), Some(BreakerState::Open));
        assert_eq!(breaker.admits(t0), 0);
    }

    #[test]
    fn forgets_outcomes_older_than_the_window() {
        let t0 = Instant::now();
        let mut breaker = Breaker::new(config());
        for _ in 0..3 {
            breaker.record(false, t0);
        }
        let later = t0 + Duration::from_secs(11);
        assert_eq!(breaker.record(false, later), None, "old failures expired");
        assert_eq!(breaker.state(later), BreakerState::Closed);
    }

    #[test]
    fn counts_a_busy_window_in_slices() {
        let t0 = Instant::now();
        let mut breaker = Breaker::new(config());
        // A million successes over nine seconds stay a bounded number of counts.
        for i in 0..1_000_000u64 {
            breaker.record(true, t0 + Duration::from_micros(i * 9));
        }
        assert!(breaker.outcomes.slices.len() <= SLICES as usize + 1);
        assert_eq!(breaker.outcomes.calls, 1_000_000);
        // Failures at nine seconds: the successes still outweigh them.
        let t1 = t0 + Duration::from_secs(9);
        for _ in 0..1_000 {
            assert_eq!(breaker.record(false, t1), None);
        }
        // Ten seconds after the last of them every slice is forgotten: four new failures open it.
        let t2 = t0 + Duration::from_secs(20);
        assert_eq!(breaker.record(false, t2), None);
        assert_eq!(breaker.outcomes.calls, 1);
        assert_eq!(breaker.record(false, t2), None);
        assert_eq!(breaker.record(false, t2), None);
        assert_eq!(breaker.record(false, t2), Some(BreakerState::Open));
    }

    #[test]
    fn forgets_each_slice_once_it_is_older_than_the_window() {
        let t0 = Instant::now();
        let mut breaker = Breaker::new(config());
        breaker.record(true, t0);
        breaker.record(false, t0 + Duration::from_secs(5));
        breaker.record(false, t0 + Duration::from_secs(10));
        // At 10.5 s the success at 0 s is out; the two failures remain, with one more: 3 calls.
        breaker.record(false, t0 + Duration::from_millis(10_500));
        assert_eq!(breaker.outcomes.calls, 3);
        assert_eq!(breaker.outcomes.failures, 3);
    }

    #[test]
    fn probes_after_the_cool_down_then_closes_or_reopens() {
        let t0 = Instant::now();
        let mut breaker = Breaker::new(config());
        for _ in 0..4 {
            breaker.record(false, t0);
        }
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(breaker.state(t1), BreakerState::HalfOpen);
        assert_eq!(breaker.admits(t1), 1);
        breaker.started(t1);
        assert_eq!(breaker.admits(t1), 0, "one probe at a time");
        assert_eq!(breaker.record(false, t1), Some(BreakerState::Open));
        let t2 = t1 + Duration::from_secs(5);
        breaker.started(t2);
        assert_eq!(breaker.record(true, t2), Some(BreakerState::Closed));
        assert_eq!(breaker.admits(t2), usize::MAX);
    }
}
