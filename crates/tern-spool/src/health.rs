//! The RocksDB spool's error latch (`error_latch_duration`,
//! `error_unlatch_duration`, `allow_error_unlatch`).
//!
//! A `Corruption` or `IOError` from a write latches the gate at once. Any
//! other write error (or a store that missed `store_deadline`) starts a
//! debounce: if no write succeeds within `error_latch_duration`, the gate
//! latches. While latched, stores fail and [`crate::Spool::health`] reports
//! the reason, which reception turns into `421 4.3.2 <host> <reason>. Try
//! later`. With `allow_error_unlatch`, the gate reopens once
//! `error_unlatch_duration` has passed since the later of the latch and the
//! last error. The state is evaluated when asked, so no monitor task runs.

use crate::RocksParams;
use parking_lot::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct HealthGate {
    latch_after: Duration,
    unlatch_after: Duration,
    allow_unlatch: bool,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// First error of the current run of failures, if not yet recovered.
    failing_since: Option<Instant>,
    last_error: Option<Instant>,
    latched_at: Option<Instant>,
    reason: String,
    /// Latched for good: the database must not be written again in this
    /// process (see [`HealthGate::poison`]).
    poisoned: bool,
}

impl HealthGate {
    pub(crate) fn new(params: &RocksParams) -> Self {
        Self {
            latch_after: params.error_latch_duration,
            unlatch_after: params.error_unlatch_duration,
            allow_unlatch: params.allow_error_unlatch,
            state: Mutex::new(State::default()),
        }
    }

    pub(crate) fn record_error(&self, fatal: bool, reason: String) {
        self.record_error_at(Instant::now(), fatal, reason);
    }

    fn record_error_at(&self, now: Instant, fatal: bool, reason: String) {
        let mut state = self.state.lock();
        state.last_error = Some(now);
        state.failing_since.get_or_insert(now);
        state.reason = reason;
        if fatal && state.latched_at.is_none() {
            state.latched_at = Some(now);
        }
    }

    /// Latch for the rest of the process, whatever `allow_error_unlatch`
    /// says. After a failed WAL write, Debian's RocksDB (built with
    /// assertions) aborts the process on the next write, and its C API
    /// has no `Resume`, so the only safe way back is a restart.
    pub(crate) fn poison(&self, reason: String) {
        let mut state = self.state.lock();
        let now = Instant::now();
        state.last_error = Some(now);
        state.failing_since.get_or_insert(now);
        state.latched_at.get_or_insert(now);
        state.reason = format!("{reason} (restart after fixing the storage)");
        state.poisoned = true;
    }

    pub(crate) fn is_poisoned(&self) -> bool {
        self.state.lock().poisoned
    }

    /// A successful write ends a run of non-fatal errors (but does not
    /// clear a latch: only time does).
    pub(crate) fn record_success(&self) {
        let mut state = self.state.lock();
        if state.latched_at.is_none() {
            state.failing_since = None;
        }
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        self.check_at(Instant::now())
    }

    fn check_at(&self, now: Instant) -> Result<(), String> {
        let mut state = self.state.lock();
        if state.latched_at.is_none() {
            match state.failing_since {
                Some(since) if now.duration_since(since) >= self.latch_after => {
                    state.latched_at = Some(since + self.latch_after);
                }
                _ => return Ok(()),
            }
        }
        if state.poisoned {
            return Err(state.reason.clone());
        }
        let latched_at = state.latched_at.unwrap_or(now);
        let quiet_since = state
            .last_error
            .map_or(latched_at, |last| last.max(latched_at));
        if self.allow_unlatch && now.duration_since(quiet_since) >= self.unlatch_after {
            *state = State::default();
            return Ok(());
        }
        Err(state.reason.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(allow_unlatch: bool) -> HealthGate {
        HealthGate::new(&RocksParams {
            error_latch_duration: Duration::from_secs(15),
            error_unlatch_duration: Duration::from_secs(300),
            allow_error_unlatch: allow_unlatch,
            ..RocksParams::default()
        })
    }

    #[test]
    fn fatal_errors_latch_at_once_and_unlatch_after_quiet_time() {
        let gate = gate(true);
        let t0 = Instant::now();
        gate.record_error_at(t0, true, "IO error: disk gone".into());
        assert_eq!(gate.check_at(t0).unwrap_err(), "IO error: disk gone");
        gate.record_success();
        assert!(gate.check_at(t0 + Duration::from_secs(299)).is_err());
        assert!(gate.check_at(t0 + Duration::from_secs(300)).is_ok());
        assert!(gate.check_at(t0 + Duration::from_secs(301)).is_ok());
    }

    #[test]
    fn transient_errors_latch_only_if_not_recovered_in_time() {
        let gate = gate(true);
        let t0 = Instant::now();
        gate.record_error_at(t0, false, "busy".into());
        assert!(gate.check_at(t0 + Duration::from_secs(14)).is_ok());
        gate.record_success();
        assert!(gate.check_at(t0 + Duration::from_secs(20)).is_ok());

        gate.record_error_at(t0 + Duration::from_secs(30), false, "busy again".into());
        assert!(gate.check_at(t0 + Duration::from_secs(46)).is_err());
    }

    #[test]
    fn a_poisoned_gate_never_unlatches() {
        let gate = gate(true);
        gate.poison("IO error: No space left on device".into());
        assert!(gate.is_poisoned());
        let later = Instant::now() + Duration::from_secs(100_000);
        let reason = gate.check_at(later).unwrap_err();
        assert!(
            reason.starts_with("IO error: No space left on device"),
            "{reason}"
        );
        gate.record_success();
        assert!(gate.check_at(later).is_err());
    }

    #[test]
    fn without_unlatch_the_gate_stays_shut() {
        let gate = gate(false);
        let t0 = Instant::now();
        gate.record_error_at(t0, true, "Corruption: bad block".into());
        assert!(gate.check_at(t0 + Duration::from_secs(100_000)).is_err());
    }
}
