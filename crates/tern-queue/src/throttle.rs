//! In-process throttles and connection limits (spec §0.3, §0.4).
//!
//! [`ThrottleRegistry`] enforces [`ThrottleSpec`]s with GCRA (generic cell
//! rate algorithm): each key keeps one "theoretical arrival time", so a
//! throttle costs one map entry no matter how busy it is. A refused check
//! returns how long to wait, which the scheduler uses as the re-delay.
//!
//! [`ConnectionLimiter`] enforces [`LimitSpec`]s by handing out RAII
//! [`Lease`]s: a lease is one slot of a named limit and gives it back when
//! dropped, so a connection task simply holds its lease for its lifetime.
//!
//! Both are node-local. Redis-shared throttles (§19) are a separate layer
//! that the server crate can put in front of these for specs without
//! `local:`.

use dashmap::DashMap;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tern_types::{LimitSpec, ThrottleSpec};

/// What one check of a throttle found (see
/// [`ThrottleRegistry::check_detailed`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThrottleOutcome {
    /// The event was refused (and not counted).
    pub throttled: bool,
    /// How many events may happen back to back (the burst).
    pub limit: u64,
    /// How many more may happen right now.
    pub remaining: u64,
    /// Until the throttle is fully recovered.
    pub reset_after: Duration,
    /// When refused: how long until the event would be allowed.
    pub retry_after: Option<Duration>,
}

/// GCRA state for many named throttles.
#[derive(Debug, Default)]
pub struct ThrottleRegistry {
    /// key -> theoretical arrival time of the next conforming event.
    arrivals: DashMap<Box<str>, Instant>,
}

impl ThrottleRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Ask to perform one event under `spec` for `key` at `now`.
    /// `Ok(())` means go ahead (and the event is counted); `Err(wait)`
    /// means refused, retry after `wait`.
    pub fn check(&self, key: &str, spec: &ThrottleSpec, now: Instant) -> Result<(), Duration> {
        match self.check_detailed(key, spec, now).retry_after {
            None => Ok(()),
            Some(wait) => Err(wait),
        }
    }

    /// [`Self::check`] with the figures a policy's `throttle:throttle()`
    /// reports: the burst limit, what remains of it, and when the
    /// throttle is fully recovered.
    pub fn check_detailed(&self, key: &str, spec: &ThrottleSpec, now: Instant) -> ThrottleOutcome {
        let interval = spec.emission_interval();
        let burst = spec.max_burst.clamp(1, u32::MAX as u64);
        let tolerance = interval.saturating_mul(burst as u32);
        // GCRA: `tat` is when the throttle would be fully recovered; an
        // event is allowed while it stays within `tolerance` of now.
        let decide = |tat: Instant| -> Result<Instant, Duration> {
            let next = tat.max(now) + interval;
            let ahead = next - now;
            if ahead > tolerance {
                Err(ahead - tolerance)
            } else {
                Ok(next)
            }
        };
        // The common case (a key seen before) takes no allocation.
        let mut tat = match self.arrivals.get_mut(key) {
            Some(tat) => tat,
            None => self.arrivals.entry(key.into()).or_insert(now),
        };
        let (result, stored) = match decide(*tat) {
            Ok(next) => {
                *tat = next;
                (None, next)
            }
            Err(wait) => (Some(wait), *tat),
        };
        drop(tat);
        let used = stored.saturating_duration_since(now);
        let remaining = if interval.is_zero() {
            burst
        } else {
            (tolerance.saturating_sub(used).as_nanos() / interval.as_nanos()) as u64
        };
        ThrottleOutcome {
            throttled: result.is_some(),
            limit: burst,
            remaining,
            reset_after: used,
            retry_after: result,
        }
    }

    /// Drop the state of throttles that have fully recovered (their next
    /// check would behave exactly as for a new key). Call periodically.
    pub fn purge_idle(&self, now: Instant) {
        self.arrivals.retain(|_, tat| *tat > now);
    }

    pub fn len(&self) -> usize {
        self.arrivals.len()
    }

    pub fn is_empty(&self) -> bool {
        self.arrivals.is_empty()
    }
}

/// Counters for named connection limits.
#[derive(Debug, Default)]
pub struct ConnectionLimiter {
    counters: Mutex<HashMap<Box<str>, Arc<AtomicUsize>>>,
}

/// One slot of a connection limit; released when dropped.
#[derive(Debug)]
#[must_use = "the slot is released as soon as the lease is dropped"]
pub struct Lease {
    counter: Arc<AtomicUsize>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConnectionLimiter {
    pub fn new() -> Self {
        Self::default()
    }

    fn counter(&self, key: &str) -> Arc<AtomicUsize> {
        let mut counters = self.counters.lock();
        if let Some(counter) = counters.get(key) {
            return Arc::clone(counter);
        }
        let counter = Arc::new(AtomicUsize::new(0));
        counters.insert(key.into(), Arc::clone(&counter));
        counter
    }

    /// Take a slot of `key` if fewer than `limit.limit` are held.
    pub fn try_acquire(&self, key: &str, limit: &LimitSpec) -> Option<Lease> {
        let counter = self.counter(key);
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held < limit.limit).then_some(held + 1)
            })
            .ok()?;
        Some(Lease { counter })
    }

    /// Take one slot of every listed limit (e.g. `connection_limit` plus the
    /// `additional_connection_limits`), or none at all.
    pub fn try_acquire_all<'a>(
        &self,
        limits: impl IntoIterator<Item = (&'a str, &'a LimitSpec)>,
    ) -> Option<Vec<Lease>> {
        limits
            .into_iter()
            .map(|(key, limit)| self.try_acquire(key, limit))
            .collect()
    }

    /// How many slots of `key` are held right now.
    pub fn in_use(&self, key: &str) -> usize {
        self.counters
            .lock()
            .get(key)
            .map_or(0, |c| c.load(Ordering::Acquire))
    }

    /// Forget keys with no lease outstanding.
    pub fn purge_unused(&self) {
        self.counters
            .lock()
            .retain(|_, c| Arc::strong_count(c) > 1 || c.load(Ordering::Acquire) > 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> ThrottleSpec {
        text.parse().unwrap()
    }

    #[test]
    fn ten_per_second_bursts_ten_then_one_per_100ms() {
        let throttles = ThrottleRegistry::new();
        let t0 = Instant::now();
        let s = spec("10/s");
        for k in 0..10 {
            assert_eq!(throttles.check("k", &s, t0), Ok(()), "event {k}");
        }
        assert_eq!(
            throttles.check("k", &s, t0),
            Err(Duration::from_millis(100))
        );
        // 50 ms later still refused, with the remaining wait.
        let t = t0 + Duration::from_millis(50);
        assert_eq!(throttles.check("k", &s, t), Err(Duration::from_millis(50)));
        let t = t0 + Duration::from_millis(100);
        assert_eq!(throttles.check("k", &s, t), Ok(()));
        assert!(throttles.check("k", &s, t).is_err());
        let t = t0 + Duration::from_millis(200);
        assert_eq!(throttles.check("k", &s, t), Ok(()));
        // Another key is independent.
        assert_eq!(throttles.check("other", &s, t0), Ok(()));
    }

    #[test]
    fn detailed_checks_report_limit_remaining_and_reset() {
        let throttles = ThrottleRegistry::new();
        let t0 = Instant::now();
        let s = spec("4/s");
        let first = throttles.check_detailed("k", &s, t0);
        assert_eq!(
            first,
            ThrottleOutcome {
                throttled: false,
                limit: 4,
                remaining: 3,
                reset_after: Duration::from_millis(250),
                retry_after: None,
            }
        );
        for left in [2, 1, 0] {
            assert_eq!(throttles.check_detailed("k", &s, t0).remaining, left);
        }
        let refused = throttles.check_detailed("k", &s, t0);
        assert!(refused.throttled);
        assert_eq!(refused.remaining, 0);
        assert_eq!(refused.retry_after, Some(Duration::from_millis(250)));
        assert_eq!(refused.reset_after, Duration::from_secs(1));
        // A refused check is not counted: half a second later two slots
        // have come back.
        let later = throttles.check_detailed("k", &s, t0 + Duration::from_millis(500));
        assert!(!later.throttled);
        assert_eq!(later.remaining, 1);
    }

    #[test]
    fn six_per_minute_burst_one_allows_one_per_ten_seconds() {
        let throttles = ThrottleRegistry::new();
        let t0 = Instant::now();
        let s = spec("6/m,max_burst=1");
        assert_eq!(throttles.check("k", &s, t0), Ok(()));
        assert_eq!(throttles.check("k", &s, t0), Err(Duration::from_secs(10)));
        let t = t0 + Duration::from_secs(9);
        assert_eq!(throttles.check("k", &s, t), Err(Duration::from_secs(1)));
        let t = t0 + Duration::from_secs(10);
        assert_eq!(throttles.check("k", &s, t), Ok(()));
        let mut admitted = 0;
        // Over the following minute, exactly six more get through.
        for second in 20..80 {
            if throttles
                .check("k", &s, t0 + Duration::from_secs(second))
                .is_ok()
            {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 6);
    }

    #[test]
    fn idle_throttles_are_purged() {
        let throttles = ThrottleRegistry::new();
        let t0 = Instant::now();
        throttles.check("k", &spec("1/s"), t0).unwrap();
        throttles.purge_idle(t0);
        assert_eq!(throttles.len(), 1);
        throttles.purge_idle(t0 + Duration::from_secs(2));
        assert!(throttles.is_empty());
    }

    #[test]
    fn leases_are_limited_and_released_on_drop() {
        let limiter = ConnectionLimiter::new();
        let limit = LimitSpec::new(2);
        let a = limiter.try_acquire("site", &limit).unwrap();
        let b = limiter.try_acquire("site", &limit).unwrap();
        assert!(limiter.try_acquire("site", &limit).is_none());
        assert_eq!(limiter.in_use("site"), 2);
        drop(a);
        assert_eq!(limiter.in_use("site"), 1);
        let c = limiter.try_acquire("site", &limit).unwrap();
        assert!(limiter.try_acquire("site", &limit).is_none());
        drop((b, c));
        assert_eq!(limiter.in_use("site"), 0);
        limiter.purge_unused();
        assert!(limiter.counters.lock().is_empty());
        assert!(limiter.try_acquire("x", &LimitSpec::new(0)).is_none());
    }

    #[test]
    fn acquire_all_is_all_or_nothing() {
        let limiter = ConnectionLimiter::new();
        let one = LimitSpec::new(1);
        let ten = LimitSpec::new(10);
        let held = limiter.try_acquire("global", &one).unwrap();
        assert!(
            limiter
                .try_acquire_all([("path", &ten), ("global", &one)])
                .is_none()
        );
        assert_eq!(limiter.in_use("path"), 0);
        drop(held);
        let leases = limiter
            .try_acquire_all([("path", &ten), ("global", &one)])
            .unwrap();
        assert_eq!(leases.len(), 2);
        assert_eq!(limiter.in_use("global"), 1);
    }

    #[test]
    fn leases_work_across_threads() {
        let limiter = Arc::new(ConnectionLimiter::new());
        let limit = LimitSpec::new(3);
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let limiter = Arc::clone(&limiter);
                std::thread::spawn(move || {
                    let mut max_seen = 0;
                    for _ in 0..2000 {
                        if let Some(lease) = limiter.try_acquire("k", &limit) {
                            max_seen = max_seen.max(limiter.in_use("k"));
                            drop(lease);
                        }
                    }
                    max_seen
                })
            })
            .collect();
        for handle in handles {
            assert!(handle.join().unwrap() <= 3);
        }
        assert_eq!(limiter.in_use("k"), 0);
    }
}
