//! The pool of Lua contexts used for realtime events (§1.5).
//!
//! A state is retired instead of reused when it is older than the maximum
//! age (300 s), when it has been used the maximum number of times (1024),
//! when the pool already holds the maximum number of spares (8192), or
//! when the configuration epoch changed since it was made. New states
//! re-read the policy file, which is how policy edits reach realtime events
//! without a restart.

use mlua::Lua;
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The tunables behind `kumo.set_max_lua_context_age`,
/// `kumo.set_max_lua_context_use_count`, `kumo.set_max_spare_lua_contexts`
/// and `kumo.set_lua_gc_on_put`.
pub struct PoolLimits {
    max_age_secs: AtomicU64,
    max_use_count: AtomicUsize,
    max_spare: AtomicUsize,
    gc_on_put_percent: AtomicUsize,
}

impl Default for PoolLimits {
    fn default() -> Self {
        Self {
            max_age_secs: AtomicU64::new(300),
            max_use_count: AtomicUsize::new(1024),
            max_spare: AtomicUsize::new(8192),
            gc_on_put_percent: AtomicUsize::new(0),
        }
    }
}

impl PoolLimits {
    pub fn set_max_age(&self, age: Duration) {
        self.max_age_secs
            .store(age.as_secs().max(1), Ordering::Relaxed);
    }
    pub fn max_age(&self) -> Duration {
        Duration::from_secs(self.max_age_secs.load(Ordering::Relaxed))
    }
    pub fn set_max_use_count(&self, n: usize) {
        self.max_use_count.store(n.max(1), Ordering::Relaxed);
    }
    pub fn max_use_count(&self) -> usize {
        self.max_use_count.load(Ordering::Relaxed)
    }
    pub fn set_max_spare(&self, n: usize) {
        self.max_spare.store(n, Ordering::Relaxed);
    }
    pub fn max_spare(&self) -> usize {
        self.max_spare.load(Ordering::Relaxed)
    }
    pub fn set_gc_on_put(&self, percent: usize) {
        self.gc_on_put_percent
            .store(percent.min(100), Ordering::Relaxed);
    }
    pub fn gc_on_put(&self) -> usize {
        self.gc_on_put_percent.load(Ordering::Relaxed)
    }
}

/// A Lua state with the bookkeeping that decides when it is retired.
pub struct PooledState {
    pub lua: Lua,
    pub created: Instant,
    pub uses: usize,
    pub epoch: u64,
    /// Counts this state among the live ones until it is dropped.
    pub alive: LiveCount,
}

/// One share of a live-state count (the `lua_count` metric): counted when
/// made, uncounted when dropped, wherever the state ends (retired, purged,
/// or dropped by a task that failed mid-event).
pub struct LiveCount(Arc<AtomicUsize>);

impl LiveCount {
    pub fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count.clone())
    }
}

impl Drop for LiveCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl PooledState {
    fn expired(&self, limits: &PoolLimits, epoch: u64, now: Instant) -> bool {
        self.epoch != epoch
            || self.uses >= limits.max_use_count()
            || now.duration_since(self.created) > limits.max_age()
    }
}

#[derive(Default)]
pub struct Pool {
    spares: Mutex<Vec<PooledState>>,
}

impl Pool {
    /// Take a usable spare, dropping any expired ones found on the way.
    pub fn take(&self, limits: &PoolLimits, epoch: u64) -> Option<PooledState> {
        let now = Instant::now();
        let mut expired = Vec::new();
        let found = {
            let mut spares = self.spares.lock();
            loop {
                match spares.pop() {
                    None => break None,
                    Some(state) if state.expired(limits, epoch, now) => expired.push(state),
                    Some(state) => break Some(state),
                }
            }
        };
        // Lua states are freed outside the lock: closing one can take a while.
        drop(expired);
        found
    }

    /// Return a state after use; it is dropped if it may not be reused.
    pub fn put(&self, mut state: PooledState, limits: &PoolLimits, epoch: u64) {
        state.uses += 1;
        if state.expired(limits, epoch, Instant::now()) {
            return;
        }
        let gc = limits.gc_on_put();
        if gc > 0 && (gc >= 100 || rand_percent() < gc) {
            let _ = state.lua.gc_collect();
        }
        let mut spares = self.spares.lock();
        if spares.len() < limits.max_spare() {
            spares.push(state);
        }
    }

    /// Drop spares that have expired; called periodically.
    pub fn purge(&self, limits: &PoolLimits, epoch: u64) -> usize {
        let now = Instant::now();
        let expired: Vec<PooledState> = {
            let mut spares = self.spares.lock();
            let (keep, drop): (Vec<_>, Vec<_>) = spares
                .drain(..)
                .partition(|s| !s.expired(limits, epoch, now));
            *spares = keep;
            drop
        };
        expired.len()
    }

    pub fn spare_count(&self) -> usize {
        self.spares.lock().len()
    }
}

fn rand_percent() -> usize {
    // A cheap per-thread xorshift: this only decides whether to run a GC.
    use std::cell::Cell;
    thread_local!(static SEED: Cell<u64> = const { Cell::new(0x9e37_79b9_7f4a_7c15) });
    SEED.with(|seed| {
        let mut x = seed.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        seed.set(x);
        (x % 100) as usize
    })
}
