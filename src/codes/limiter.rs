//! The brake on guessing codes (docs/contract.md §7): more than `codes.max_failures_per_minute` failed
//! redemptions (404/409) by one user within a sliding minute → 429 with `Retry-After`.
//!
//! Each attempt is counted as a failure *when it starts* and forgiven when it succeeds (or the
//! server, not the caller, failed). Counting up front means a burst of parallel guesses cannot
//! slip through before the first of them has failed; the price is that a user redeeming more
//! than the limit of valid codes *at the same instant* may see a 429 for one of them.
//!
//! The window is per replica (a moka cache in memory, bounded, idle users dropped after a
//! minute): with N replicas behind a round-robin gateway a guesser gets at most N × the limit
//! per minute, which at 125 bits per code changes nothing. A limit of 0 turns the brake off.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Failure timestamps per subject.
pub struct FailureLimiter {
    max: usize,
    window: Duration,
    failures: moka::sync::Cache<String, Arc<Mutex<VecDeque<Instant>>>>,
}

/// An attempt in progress. Dropped, it stays counted as a failure; [`Attempt::forgive`] takes
/// it back.
#[must_use = "an attempt counts as a failure unless forgiven"]
pub struct Attempt {
    slot: Option<(Arc<Mutex<VecDeque<Instant>>>, Instant)>,
}

impl Attempt {
    /// The attempt succeeded, or failed for reasons that are not the caller's: it does not count.
    pub fn forgive(mut self) {
        if let Some((failures, at)) = self.slot.take() {
            let mut failures = failures.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(i) = failures.iter().position(|t| *t == at) {
                failures.remove(i);
            }
        }
    }
}

impl FailureLimiter {
    /// At most `max_per_minute` failures per subject in any minute (0: unlimited), tracking up to
    /// `capacity` subjects.
    pub fn new(max_per_minute: u32, capacity: u64) -> FailureLimiter {
        Self::with_window(max_per_minute, Duration::from_secs(60), capacity)
    }

    fn with_window(max: u32, window: Duration, capacity: u64) -> FailureLimiter {
        FailureLimiter {
            max: max as usize,
            window,
            failures: moka::sync::Cache::builder().max_capacity(capacity).time_to_idle(window).build(),
        }
    }

    /// Starts an attempt by `sub`, or refuses it with the seconds until the oldest failure in
    /// the window leaves it.
    pub fn begin(&self, sub: &str) -> Result<Attempt, u64> {
        self.begin_at(sub, Instant::now())
    }

    fn begin_at(&self, sub: &str, now: Instant) -> Result<Attempt, u64> {
        if self.max == 0 {
            return Ok(Attempt { slot: None });
        }
        let entry = self.failures.get_with_by_ref(sub, || Arc::new(Mutex::new(VecDeque::new())));
        let mut failures = entry.lock().unwrap_or_else(|e| e.into_inner());
        while failures.front().is_some_and(|t| now.saturating_duration_since(*t) >= self.window) {
            failures.pop_front();
        }
        if failures.len() >= self.max {
            let oldest = *failures.front().expect("max > 0, so the window holds a failure");
            let left = self.window.saturating_sub(now.saturating_duration_since(oldest));
            // Whole seconds, rounded up: retrying at that moment succeeds.
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            return Err(secs.max(1));
        }
        failures.push_back(now);
        drop(failures);
        Ok(Attempt { slot: Some((entry, now)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_attempt_after_the_limit_waits_until_the_oldest_failure_leaves_the_window() {
        let limiter = FailureLimiter::with_window(3, Duration::from_secs(60), 100);
        let t0 = Instant::now();
        for i in 0..3 {
            drop(limiter.begin_at("ann", t0 + Duration::from_secs(i * 10)).unwrap());
        }
        assert_eq!(limiter.begin_at("ann", t0 + Duration::from_secs(25)).err(), Some(35));
        assert_eq!(limiter.begin_at("ann", t0 + Duration::from_millis(59_500)).err(), Some(1));
        assert!(limiter.begin_at("bob", t0).is_ok(), "per user");
        // The first failure left the window: one attempt is free again, then the next waits for
        // the second failure.
        drop(limiter.begin_at("ann", t0 + Duration::from_secs(60)).unwrap());
        assert_eq!(limiter.begin_at("ann", t0 + Duration::from_secs(61)).err(), Some(9));
    }

    #[test]
    fn forgiven_attempts_do_not_count() {
        let limiter = FailureLimiter::with_window(2, Duration::from_secs(60), 100);
        let t0 = Instant::now();
        for _ in 0..10 {
            limiter.begin_at("ann", t0).unwrap().forgive();
        }
        drop(limiter.begin_at("ann", t0).unwrap());
        let pending = limiter.begin_at("ann", t0).unwrap();
        assert!(limiter.begin_at("ann", t0).is_err(), "an attempt in flight counts");
        pending.forgive();
        assert!(limiter.begin_at("ann", t0).is_ok());
    }

    #[test]
    fn zero_turns_the_limit_off() {
        let limiter = FailureLimiter::new(0, 100);
        for _ in 0..100 {
            drop(limiter.begin("ann").unwrap());
        }
    }
}
