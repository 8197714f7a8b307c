//! The sign-in rate limit, kept in memory, with two budgets of failed attempts in a sliding
//! window:
//!
//! - per (account, client address): five failures a minute, so one address cannot guess one
//!   account's password; a success clears it;
//! - per client address across all accounts: twenty failures in ten minutes, so one address
//!   cannot try a password against many accounts (password spraying).
//!
//! Once a budget is spent, further attempts are refused (429, with the seconds until the oldest
//! counted failure leaves the window) without checking the password. An IPv6 client is counted
//! by its /64 network, which one host usually has whole.
//!
//! An attempt counts as a failure from the moment it starts ([`SignInLimiter::begin`]): requests
//! sent at once cannot all pass the check before the first of them fails. A success takes its
//! own count back.
//!
//! Memory is bounded: each budget keeps at most [`MAX_KEYS`] keys, each with at most as many
//! instants as its limit. When a new key would exceed that, keys with no failure left in the
//! window are dropped, and if that is not enough, the quarter of keys whose last failure is
//! oldest. In memory means per portal process: a restart forgets, and replicas count separately.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How many keys each budget keeps at most (about 10 MiB for both at the default limits).
pub const MAX_KEYS: usize = 20_000;

/// A budget: at most `failures` failures per `window`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    pub failures: usize,
    pub window: Duration,
}

/// Which budget refused a sign-in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exhausted {
    /// The failures of this account from this address.
    Account,
    /// The failures from this address, whatever the account.
    Address,
}

/// A refusal: which budget, and when the next attempt would be counted again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    pub budget: Exhausted,
    pub retry_after: Duration,
}

/// The address key: an IPv4 address as it is, an IPv6 address's /64 network.
type AddrKey = Option<IpAddr>;
type PairKey = (String, AddrKey);

fn addr_key(addr: Option<IpAddr>) -> AddrKey {
    addr.map(|addr| match addr.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        v4 => v4,
    })
}

/// Failures per key within one [`Limit`], at most `capacity` keys.
struct Budget<K> {
    limit: Limit,
    capacity: usize,
    failures: HashMap<K, VecDeque<Instant>>,
}

impl<K: Hash + Eq + Clone> Budget<K> {
    fn new(limit: Limit, capacity: usize) -> Self {
        Self { limit, capacity, failures: HashMap::new() }
    }

    fn in_window(&self, t: Instant, now: Instant) -> bool {
        now.saturating_duration_since(t) < self.limit.window
    }

    /// How long until `key` may try again, if its budget is spent.
    fn retry_after(&self, key: &K, now: Instant) -> Option<Duration> {
        let times = self.failures.get(key)?;
        let live: Vec<Instant> = times.iter().copied().filter(|&t| self.in_window(t, now)).collect();
        let over = (live.len() + 1).checked_sub(self.limit.failures).filter(|&over| over > 0)?;
        // The attempt is allowed again once `over` of the counted failures have left the window.
        let freeing = live[over - 1];
        Some((freeing + self.limit.window).saturating_duration_since(now).max(Duration::from_secs(1)))
    }

    fn record(&mut self, key: &K, now: Instant) {
        if !self.failures.contains_key(key) && self.failures.len() >= self.capacity {
            self.make_room(now);
        }
        let window = self.limit.window;
        let times = self.failures.entry(key.clone()).or_default();
        times.retain(|&t| now.saturating_duration_since(t) < window);
        times.push_back(now);
        while times.len() > self.limit.failures.max(1) {
            times.pop_front();
        }
    }

    /// Takes back the latest failure of `key`.
    fn forget_one(&mut self, key: &K) {
        if let Some(times) = self.failures.get_mut(key) {
            times.pop_back();
            if times.is_empty() {
                self.failures.remove(key);
            }
        }
    }

    fn clear(&mut self, key: &K) {
        self.failures.remove(key);
    }

    /// Drops the keys with nothing in the window, then, if three quarters of the capacity are
    /// still used, the keys whose last failure is oldest down to three quarters.
    fn make_room(&mut self, now: Instant) {
        let window = self.limit.window;
        self.failures.retain(|_, times| times.back().is_some_and(|&t| now.saturating_duration_since(t) < window));
        let keep = self.capacity * 3 / 4;
        if self.failures.len() <= keep {
            return;
        }
        let mut by_age: Vec<(Instant, K)> =
            self.failures.iter().map(|(key, times)| (*times.back().expect("not empty"), key.clone())).collect();
        let drop = by_age.len() - keep;
        by_age.select_nth_unstable_by_key(drop - 1, |(last, _)| *last);
        for (_, key) in &by_age[..drop] {
            self.failures.remove(key);
        }
    }
}

struct Budgets {
    pairs: Budget<PairKey>,
    addresses: Budget<AddrKey>,
}

/// Counts failed sign-ins.
pub struct SignInLimiter {
    budgets: Mutex<Budgets>,
}

impl Default for SignInLimiter {
    /// Five failures a minute per account and address, twenty in ten minutes per address.
    fn default() -> Self {
        Self::new(
            Limit { failures: 5, window: Duration::from_secs(60) },
            Limit { failures: 20, window: Duration::from_secs(600) },
        )
    }
}

impl SignInLimiter {
    /// At most `per_account` failures per (account, address) and `per_address` per address.
    pub fn new(per_account: Limit, per_address: Limit) -> Self {
        Self::with_capacity(per_account, per_address, MAX_KEYS)
    }

    /// [`SignInLimiter::new`] keeping at most `capacity` keys per budget.
    pub fn with_capacity(per_account: Limit, per_address: Limit, capacity: usize) -> Self {
        let budgets =
            Budgets { pairs: Budget::new(per_account, capacity), addresses: Budget::new(per_address, capacity) };
        Self { budgets: Mutex::new(budgets) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Budgets> {
        self.budgets.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts an attempt to sign in to `account` from `addr`: refused if either budget is spent,
    /// otherwise counted as a failure until [`Self::succeeded`] or [`Self::abandoned`].
    pub fn begin(&self, account: &str, addr: Option<IpAddr>) -> Result<(), Refused> {
        self.begin_at(account, addr, Instant::now())
    }

    /// The attempt begun for `account` from `addr` succeeded: that account's failures from that
    /// address are forgotten, and the attempt no longer counts against the address.
    pub fn succeeded(&self, account: &str, addr: Option<IpAddr>) {
        let mut budgets = self.lock();
        let addr = addr_key(addr);
        budgets.pairs.clear(&(account.to_owned(), addr));
        budgets.addresses.forget_one(&addr);
    }

    /// The attempt begun for `account` from `addr` ended before its password was checked (the
    /// portal was busy, or failed): it does not count.
    pub fn abandoned(&self, account: &str, addr: Option<IpAddr>) {
        let mut budgets = self.lock();
        let addr = addr_key(addr);
        budgets.pairs.forget_one(&(account.to_owned(), addr));
        budgets.addresses.forget_one(&addr);
    }

    /// Why sign-ins to `account` from `addr` are refused now, if they are.
    pub fn check(&self, account: &str, addr: Option<IpAddr>) -> Result<(), Refused> {
        self.check_at(account, addr, Instant::now())
    }

    /// Whether sign-ins to `account` from `addr` are refused now.
    pub fn is_limited(&self, account: &str, addr: Option<IpAddr>) -> bool {
        self.check(account, addr).is_err()
    }

    /// Counts a failed sign-in (for checks that do not [`Self::begin`]).
    pub fn record_failure(&self, account: &str, addr: Option<IpAddr>) {
        let mut budgets = self.lock();
        let addr = addr_key(addr);
        let now = Instant::now();
        budgets.pairs.record(&(account.to_owned(), addr), now);
        budgets.addresses.record(&addr, now);
    }

    /// Forgets the failures of `account` from `addr` (after a successful sign-in).
    pub fn clear(&self, account: &str, addr: Option<IpAddr>) {
        self.lock().pairs.clear(&(account.to_owned(), addr_key(addr)));
    }

    /// How many keys the two budgets hold (for tests of the memory bound).
    pub fn key_counts(&self) -> (usize, usize) {
        let budgets = self.lock();
        (budgets.pairs.failures.len(), budgets.addresses.failures.len())
    }

    fn refusal(budgets: &Budgets, pair: &PairKey, addr: &AddrKey, now: Instant) -> Result<(), Refused> {
        let account =
            budgets.pairs.retry_after(pair, now).map(|d| Refused { budget: Exhausted::Account, retry_after: d });
        let address =
            budgets.addresses.retry_after(addr, now).map(|d| Refused { budget: Exhausted::Address, retry_after: d });
        match account.into_iter().chain(address).max_by_key(|refused| refused.retry_after) {
            Some(refused) => Err(refused),
            None => Ok(()),
        }
    }

    fn check_at(&self, account: &str, addr: Option<IpAddr>, now: Instant) -> Result<(), Refused> {
        let addr = addr_key(addr);
        Self::refusal(&self.lock(), &(account.to_owned(), addr), &addr, now)
    }

    fn begin_at(&self, account: &str, addr: Option<IpAddr>, now: Instant) -> Result<(), Refused> {
        let addr = addr_key(addr);
        let pair = (account.to_owned(), addr);
        let mut budgets = self.lock();
        Self::refusal(&budgets, &pair, &addr, now)?;
        budgets.pairs.record(&pair, now);
        budgets.addresses.record(&addr, now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDR: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1)));
    const OTHER: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2)));

    fn at(start: Instant, secs: u64) -> Instant {
        start + Duration::from_secs(secs)
    }

    #[test]
    fn five_failures_within_a_minute_block_that_account_from_that_address() {
        let limiter = SignInLimiter::default();
        let start = Instant::now();
        for i in 0..4 {
            limiter.begin_at("alice", ADDR, at(start, i)).unwrap();
            assert_eq!(limiter.check_at("alice", ADDR, at(start, i)), Ok(()));
        }
        limiter.begin_at("alice", ADDR, at(start, 10)).unwrap();
        let refused = limiter.begin_at("alice", ADDR, at(start, 10)).unwrap_err();
        assert_eq!(refused, Refused { budget: Exhausted::Account, retry_after: Duration::from_secs(50) });
        assert_eq!(limiter.check_at("alice", OTHER, at(start, 10)), Ok(()), "other address");
        assert_eq!(limiter.check_at("bob", ADDR, at(start, 10)), Ok(()), "other account");
        // The first failure leaves the window 60 s after it happened.
        assert!(limiter.check_at("alice", ADDR, start + Duration::from_millis(59_999)).is_err());
        assert_eq!(limiter.check_at("alice", ADDR, at(start, 60)), Ok(()));
    }

    #[test]
    fn a_success_clears_the_count_of_that_account_only() {
        let limiter = SignInLimiter::new(
            Limit { failures: 2, window: Duration::from_secs(60) },
            Limit { failures: 3, window: Duration::from_secs(600) },
        );
        limiter.begin("alice", ADDR).unwrap();
        limiter.begin("alice", ADDR).unwrap();
        limiter.succeeded("alice", ADDR);
        limiter.begin("alice", ADDR).unwrap();
        assert!(!limiter.is_limited("alice", ADDR));
        // The address has two failures counted; the successful attempt itself is not one.
        limiter.begin("bob", ADDR).unwrap();
        let refused = limiter.check("carol", ADDR).unwrap_err();
        assert_eq!(refused.budget, Exhausted::Address);
    }

    #[test]
    fn twenty_failures_from_one_address_block_every_account_for_ten_minutes() {
        let limiter = SignInLimiter::default();
        let start = Instant::now();
        for i in 0..20 {
            limiter.begin_at(&format!("user{i}@example.com"), ADDR, at(start, i)).unwrap();
        }
        let refused = limiter.begin_at("someone@example.com", ADDR, at(start, 30)).unwrap_err();
        assert_eq!(refused, Refused { budget: Exhausted::Address, retry_after: Duration::from_secs(570) });
        assert_eq!(limiter.check_at("someone@example.com", OTHER, at(start, 30)), Ok(()), "other address");
        assert!(limiter.check_at("someone@example.com", ADDR, at(start, 599)).is_err());
        assert_eq!(limiter.check_at("someone@example.com", ADDR, at(start, 600)), Ok(()));
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_64_network() {
        let limiter = SignInLimiter::new(
            Limit { failures: 5, window: Duration::from_secs(60) },
            Limit { failures: 2, window: Duration::from_secs(600) },
        );
        limiter.begin("a", Some("2001:db8:1:2::1".parse().unwrap())).unwrap();
        limiter.begin("b", Some("2001:db8:1:2:ffff::9".parse().unwrap())).unwrap();
        assert!(limiter.is_limited("c", Some("2001:db8:1:2::77".parse().unwrap())));
        assert!(!limiter.is_limited("c", Some("2001:db8:1:3::1".parse().unwrap())));
    }

    #[test]
    fn an_abandoned_attempt_does_not_count() {
        let limiter = SignInLimiter::new(
            Limit { failures: 1, window: Duration::from_secs(60) },
            Limit { failures: 1, window: Duration::from_secs(600) },
        );
        limiter.begin("alice", ADDR).unwrap();
        assert!(limiter.begin("alice", ADDR).is_err(), "one attempt in flight spends the budget");
        limiter.abandoned("alice", ADDR);
        assert_eq!(limiter.key_counts(), (0, 0));
        limiter.begin("alice", ADDR).unwrap();
    }

    #[test]
    fn memory_stays_bounded_under_many_addresses() {
        let limiter = SignInLimiter::with_capacity(
            Limit { failures: 5, window: Duration::from_secs(60) },
            Limit { failures: 20, window: Duration::from_secs(600) },
            1_000,
        );
        let start = Instant::now();
        for i in 0..10_000u32 {
            let addr = Some(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)));
            limiter.begin_at(&format!("user{i}"), addr, start + Duration::from_millis(u64::from(i))).unwrap();
            let (pairs, addresses) = limiter.key_counts();
            assert!(pairs <= 1_000 && addresses <= 1_000, "{pairs} pairs, {addresses} addresses after {i}");
        }
        // The newest keys are kept.
        let newest = Some(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + 9_999)));
        limiter.begin_at("user9999", newest, start + Duration::from_secs(11)).unwrap();
        assert_eq!(limiter.lock().pairs.failures.get(&("user9999".to_owned(), newest)).map(VecDeque::len), Some(2));
    }

    #[test]
    fn a_failure_list_never_grows_past_its_limit() {
        let limiter = SignInLimiter::default();
        for _ in 0..100 {
            limiter.record_failure("alice", ADDR);
        }
        let budgets = limiter.lock();
        assert_eq!(budgets.pairs.failures[&("alice".to_owned(), ADDR)].len(), 5);
        assert_eq!(budgets.addresses.failures[&ADDR].len(), 20);
    }
}
