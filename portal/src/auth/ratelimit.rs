//! The sign-in rate limit: failed attempts per (account, remote address) within a sliding
//! window, kept in memory. Once the limit is reached further attempts are refused (429) without
//! checking the password, until the oldest failure leaves the window. A success clears the count.
//!
//! In memory means per portal process: a restart forgets, and replicas count separately.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How many distinct (account, address) pairs are kept before old ones are swept.
const SWEEP_ABOVE: usize = 10_000;

type Key = (String, Option<IpAddr>);

/// Counts failed sign-ins.
pub struct SignInLimiter {
    max_failures: usize,
    window: Duration,
    failures: Mutex<HashMap<Key, Vec<Instant>>>,
}

impl Default for SignInLimiter {
    /// Five failures a minute.
    fn default() -> Self {
        Self::new(5, Duration::from_secs(60))
    }
}

impl SignInLimiter {
    /// At most `max_failures` failures per `window`.
    pub fn new(max_failures: usize, window: Duration) -> Self {
        Self { max_failures, window, failures: Mutex::new(HashMap::new()) }
    }

    /// Whether sign-ins to `account` from `addr` are refused now.
    pub fn is_limited(&self, account: &str, addr: Option<IpAddr>) -> bool {
        self.is_limited_at(account, addr, Instant::now())
    }

    /// Counts a failed sign-in.
    pub fn record_failure(&self, account: &str, addr: Option<IpAddr>) {
        self.record_failure_at(account, addr, Instant::now());
    }

    /// Forgets the failures of `account` from `addr` (after a successful sign-in).
    pub fn clear(&self, account: &str, addr: Option<IpAddr>) {
        self.lock().remove(&(account.to_owned(), addr));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Vec<Instant>>> {
        self.failures.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_limited_at(&self, account: &str, addr: Option<IpAddr>, now: Instant) -> bool {
        let failures = self.lock();
        failures.get(&(account.to_owned(), addr)).is_some_and(|times| {
            times.iter().filter(|&&t| now.duration_since(t) < self.window).count() >= self.max_failures
        })
    }

    fn record_failure_at(&self, account: &str, addr: Option<IpAddr>, now: Instant) {
        let mut failures = self.lock();
        if failures.len() > SWEEP_ABOVE {
            failures.retain(|_, times| times.iter().any(|&t| now.duration_since(t) < self.window));
        }
        let times = failures.entry((account.to_owned(), addr)).or_default();
        times.retain(|&t| now.duration_since(t) < self.window);
        times.push(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDR: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1)));
    const OTHER: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2)));

    #[test]
    fn five_failures_within_a_minute_block_that_account_from_that_address() {
        let limiter = SignInLimiter::default();
        let start = Instant::now();
        for i in 0..4 {
            limiter.record_failure_at("alice", ADDR, start + Duration::from_secs(i));
            assert!(!limiter.is_limited_at("alice", ADDR, start + Duration::from_secs(i)));
        }
        limiter.record_failure_at("alice", ADDR, start + Duration::from_secs(10));
        assert!(limiter.is_limited_at("alice", ADDR, start + Duration::from_secs(10)));
        assert!(!limiter.is_limited_at("alice", OTHER, start + Duration::from_secs(10)), "other address");
        assert!(!limiter.is_limited_at("bob", ADDR, start + Duration::from_secs(10)), "other account");
        // The first failure leaves the window 60 s after it happened.
        assert!(limiter.is_limited_at("alice", ADDR, start + Duration::from_millis(59_999)));
        assert!(!limiter.is_limited_at("alice", ADDR, start + Duration::from_secs(60)));
    }

    #[test]
    fn a_success_clears_the_count() {
        let limiter = SignInLimiter::new(2, Duration::from_secs(60));
        limiter.record_failure("alice", ADDR);
        limiter.clear("alice", ADDR);
        limiter.record_failure("alice", ADDR);
        assert!(!limiter.is_limited("alice", ADDR));
        limiter.record_failure("alice", ADDR);
        assert!(limiter.is_limited("alice", ADDR));
    }
}
