//! Retry arithmetic: exponential backoff, jitter, expiry decisions and the
//! attempt counter inferred after a restart (spec §7.2–§7.4).
//!
//! Everything here is a pure function of its inputs (plus an explicit random
//! number generator), so the scheduled-queue code in the server crate can
//! call it with the message's attempt counter, creation time and the queue's
//! [`QueueConfig`](crate::config::QueueConfig) and act on the answer.
//!
//! Like KumoMTA, delays are computed in whole seconds: the retry interval is
//! truncated to seconds before doubling, and the jitter is truncated towards
//! zero. That keeps the expiry texts (which print durations) identical.

use crate::scheduling::Scheduling;
use chrono::{DateTime, FixedOffset, TimeDelta, Utc};
use rand::Rng;
use std::fmt;
use std::time::{Duration, SystemTime};

/// Longest delay we ever compute (about 292 billion years would overflow
/// `SystemTime` arithmetic; a century is plenty and keeps additions safe).
const MAX_DELAY: Duration = Duration::from_secs(100 * 365 * 86400);

/// Cap on the attempt counter, so a zero retry interval cannot loop forever
/// when inferring attempts from age.
const MAX_ATTEMPTS: u32 = u16::MAX as u32;

/// `delay(n) = min(R * 2^n, M)`, saturating, in whole seconds.
///
/// `attempt` is the message's attempt counter *before* the failure being
/// handled: 0 after the first attempt fails.
pub fn delay_for_attempt(
    attempt: u32,
    retry_interval: Duration,
    max_retry_interval: Option<Duration>,
) -> Duration {
    let base = retry_interval.as_secs();
    let factor = 2u64.saturating_pow(attempt);
    let mut secs = base.saturating_mul(factor);
    if let Some(max) = max_retry_interval {
        secs = secs.min(max.as_secs());
    }
    Duration::from_secs(secs).min(MAX_DELAY)
}

/// The jitter span `J = min(R / 20, 60 s)`; the jitter itself is uniform in
/// `[-J/2, +J/2)`.
pub fn jitter_magnitude(retry_interval: Duration) -> Duration {
    (retry_interval / 20).min(Duration::from_secs(60))
}

/// A random jitter in whole seconds (uniform in `[-J/2, +J/2)`, truncated
/// towards zero). With a retry interval under 40 s this is always 0.
pub fn random_jitter_secs<R: Rng + ?Sized>(retry_interval: Duration, rng: &mut R) -> i64 {
    let magnitude = jitter_magnitude(retry_interval).as_secs_f64();
    if magnitude <= 0.0 {
        return 0;
    }
    let jitter = rng.random::<f64>() * magnitude - magnitude / 2.0;
    jitter as i64
}

/// `delay(n) + jitter`, never negative.
pub fn jittered_delay<R: Rng + ?Sized>(
    attempt: u32,
    retry_interval: Duration,
    max_retry_interval: Option<Duration>,
    rng: &mut R,
) -> Duration {
    let delay = delay_for_attempt(attempt, retry_interval, max_retry_interval);
    apply_jitter(delay, random_jitter_secs(retry_interval, rng))
}

fn apply_jitter(delay: Duration, jitter_secs: i64) -> Duration {
    if jitter_secs >= 0 {
        delay.saturating_add(Duration::from_secs(jitter_secs as u64))
    } else {
        delay.saturating_sub(Duration::from_secs(jitter_secs.unsigned_abs()))
    }
}

/// `now + delay(n) + jitter`.
pub fn next_due<R: Rng + ?Sized>(
    now: SystemTime,
    attempt: u32,
    retry_interval: Duration,
    max_retry_interval: Option<Duration>,
    rng: &mut R,
) -> SystemTime {
    add(
        now,
        jittered_delay(attempt, retry_interval, max_retry_interval, rng),
    )
}

/// The re-delay used when a ready queue is full (`max_ready` reached): a
/// random 0–60 s, attempt counter unchanged.
pub fn ready_queue_full_delay<R: Rng + ?Sized>(rng: &mut R) -> Duration {
    Duration::from_secs(rng.random_range(0..=60))
}

fn add(time: SystemTime, delay: Duration) -> SystemTime {
    time.checked_add(delay.min(MAX_DELAY)).unwrap_or(time)
}

/// How many successive delays `delay(0), delay(1), ...` fit within `age`:
/// the attempt counter a message gets when it is read back from the spool
/// after a restart (the counter is never persisted).
pub fn infer_attempts_from_age(
    age: Duration,
    retry_interval: Duration,
    max_retry_interval: Option<Duration>,
) -> u32 {
    let mut elapsed = Duration::ZERO;
    let mut attempts = 0;
    while attempts < MAX_ATTEMPTS {
        let delay = delay_for_attempt(attempts, retry_interval, max_retry_interval);
        if delay.is_zero() || elapsed.saturating_add(delay) > age {
            break;
        }
        elapsed += delay;
        attempts += 1;
    }
    attempts
}

/// The delay from now until a respooled message is due, given the inferred
/// attempt counter and its age.
///
/// The schedule continues where it left off: a message that fitted `n`
/// delays is next due at `created + delay(0) + ... + delay(n)`, the end of
/// the first delay that had not elapsed. A message younger than the first
/// delay (`n == 0`) may never have been tried, so it is due at once.
///
/// KumoMTA sums `delay(1) .. delay(n-1)` instead, which lands before `age`
/// for nearly every message, so a restart sends the whole deferred backlog
/// at once; Tern keeps the schedule (see docs/compatibility.md).
///
/// Fails with the reason when the message is already at or past
/// `max_age`, or its next slot would be past it (the retry that would have
/// expired it).
pub fn delay_after_restart(
    num_attempts: u32,
    age: Duration,
    retry_interval: Duration,
    max_retry_interval: Option<Duration>,
    max_age: Duration,
) -> Result<Duration, ExpiryReason> {
    if age >= max_age {
        return Err(ExpiryReason::MaxAgeAtRestart { max_age });
    }
    if num_attempts == 0 {
        return Ok(Duration::ZERO);
    }
    let next_slot = (0..=num_attempts).fold(Duration::ZERO, |sum, attempt| {
        sum.saturating_add(delay_for_attempt(
            attempt,
            retry_interval,
            max_retry_interval,
        ))
    });
    if next_slot > max_age {
        return Err(ExpiryReason::MaxAgeAfterFailure {
            delayed_age: next_slot,
            max_age,
        });
    }
    Ok(next_slot.saturating_sub(age))
}

/// Why a message is being expired; [`Expiry::content`] is the log text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExpiryReason {
    /// Attempt counter advanced: `age + delay(n) > max_age`.
    MaxAgeAfterFailure {
        delayed_age: Duration,
        max_age: Duration,
    },
    /// Another requeue path: the age at the new due time is `>= max_age`.
    MaxAgeOnRequeue {
        due_age: Duration,
        max_age: Duration,
    },
    /// Read back from the spool already at or past `max_age`.
    MaxAgeAtRestart { max_age: Duration },
    /// Per-message `expires` from `set_scheduling`: next due `>= expires`.
    ScheduledExpiry {
        next_due: DateTime<Utc>,
        expires: DateTime<FixedOffset>,
    },
}

/// An expiry decision: log an `Expiration` record with
/// [`Expiry::CODE`] / [`Expiry::ENHANCED_CODE`] and [`Expiry::content`], then
/// remove the message from the spool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expiry {
    pub reason: ExpiryReason,
}

impl Expiry {
    pub const CODE: u16 = 551;
    /// Enhanced status code (class, subject, detail) = 5.4.7.
    pub const ENHANCED_CODE: (u8, u16, u16) = (5, 4, 7);

    /// The response text without the codes, e.g.
    /// `Next delivery time would be 7days 1h after creation, which exceeds max_age=7days`.
    pub fn content(&self) -> String {
        match &self.reason {
            ExpiryReason::MaxAgeAfterFailure {
                delayed_age,
                max_age,
            } => format!(
                "Next delivery time would be {} after creation, which exceeds max_age={}",
                humantime::format_duration(*delayed_age),
                humantime::format_duration(*max_age)
            ),
            ExpiryReason::MaxAgeOnRequeue { due_age, max_age } => format!(
                "Next delivery time {} > {}",
                iso_duration(*due_age),
                iso_duration(*max_age)
            ),
            ExpiryReason::MaxAgeAtRestart { max_age } => format!(
                "message is older than max_age={} at spool recovery",
                humantime::format_duration(*max_age)
            ),
            ExpiryReason::ScheduledExpiry { next_due, expires } => format!(
                "Next delivery time would be at {next_due} which exceeds the expiry time \
                 {expires} configured via set_scheduling"
            ),
        }
    }
}

/// ISO 8601 rendering (`PT604800S`), which is how KumoMTA prints the ages in
/// the requeue-path expiry text.
fn iso_duration(duration: Duration) -> String {
    TimeDelta::from_std(duration)
        .unwrap_or(TimeDelta::MAX)
        .to_string()
}

impl fmt::Display for Expiry {
    /// The full response line: `551 5.4.7 <content>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (class, subject, detail) = Self::ENHANCED_CODE;
        write!(
            f,
            "{} {class}.{subject}.{detail} {}",
            Self::CODE,
            self.content()
        )
    }
}

/// Expiry check for paths that advance the attempt counter (§7.3 first
/// variant). `age` is the message age now; `delay` the jittered delay.
pub fn check_max_age_after_failure(
    age: Duration,
    delay: Duration,
    max_age: Duration,
) -> Option<Expiry> {
    let delayed_age = age.saturating_add(delay);
    (delayed_age > max_age).then_some(Expiry {
        reason: ExpiryReason::MaxAgeAfterFailure {
            delayed_age,
            max_age,
        },
    })
}

/// Expiry check for requeues that keep the attempt counter (throttles,
/// ready queue full): expire when the age at the new due time is
/// `>= max_age` (§7.3 second variant).
pub fn check_max_age_on_requeue(
    created: SystemTime,
    due: SystemTime,
    max_age: Duration,
) -> Option<Expiry> {
    let due_age = due.duration_since(created).unwrap_or(Duration::ZERO);
    (due_age >= max_age).then_some(Expiry {
        reason: ExpiryReason::MaxAgeOnRequeue { due_age, max_age },
    })
}

/// Expiry check against a per-message `expires` (§7.3 third variant).
pub fn check_scheduled_expiry(
    next_due: SystemTime,
    expires: DateTime<FixedOffset>,
) -> Option<Expiry> {
    let next_due: DateTime<Utc> = next_due.into();
    (next_due >= expires).then_some(Expiry {
        reason: ExpiryReason::ScheduledExpiry { next_due, expires },
    })
}

/// Content of a `Delayed` record (spec §7.7):
/// `Context: <reasons>. Next due in <humantime> at <RFC 3339 UTC time>`.
pub fn delayed_content(context: &str, now: SystemTime, due: SystemTime) -> String {
    let due_in = due.duration_since(now).unwrap_or(Duration::ZERO);
    let due: DateTime<Utc> = due.into();
    format!(
        "Context: {context}. Next due in {} at {due:?}",
        humantime::format_duration(due_in)
    )
}

/// What to do with a message that has to be retried with the attempt
/// counter advanced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RetryDecision {
    /// Put it back in the scheduled queue, due at `next_due`, with the
    /// attempt counter set to `num_attempts`.
    Retry {
        next_due: SystemTime,
        num_attempts: u32,
    },
    /// Log an `Expiration` and remove it.
    Expire(Expiry),
}

/// The retry parameters of one scheduled queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetrySchedule {
    pub retry_interval: Duration,
    pub max_retry_interval: Option<Duration>,
    pub max_age: Duration,
}

impl RetrySchedule {
    pub fn from_config(config: &crate::config::QueueConfig) -> Self {
        Self {
            retry_interval: config.retry_interval,
            max_retry_interval: config.max_retry_interval,
            max_age: config.max_age,
        }
    }

    pub fn delay_for_attempt(&self, attempt: u32) -> Duration {
        delay_for_attempt(attempt, self.retry_interval, self.max_retry_interval)
    }

    /// Handle a requeue that advances the attempt counter (transient
    /// failure, suspension, "no sources eligible", DNS failure).
    ///
    /// `num_attempts` is the counter before this failure; `created` the
    /// creation time from the spool id. A per-message `expires` replaces
    /// `max_age`; a delivery window moves the due time forward.
    pub fn after_failure<R: Rng + ?Sized>(
        &self,
        num_attempts: u32,
        created: SystemTime,
        now: SystemTime,
        scheduling: Option<&Scheduling>,
        rng: &mut R,
    ) -> RetryDecision {
        let delay = jittered_delay(
            num_attempts,
            self.retry_interval,
            self.max_retry_interval,
            rng,
        );
        let num_attempts = num_attempts.saturating_add(1);
        let adjust = |due: SystemTime| match scheduling {
            Some(sched) => sched.adjust(due),
            None => due,
        };
        if let Some(expires) = scheduling.and_then(|s| s.expires) {
            let next_due = adjust(add(now, delay));
            return match check_scheduled_expiry(next_due, expires) {
                Some(expiry) => RetryDecision::Expire(expiry),
                None => RetryDecision::Retry {
                    next_due,
                    num_attempts,
                },
            };
        }
        let age = now.duration_since(created).unwrap_or(Duration::ZERO);
        if let Some(expiry) = check_max_age_after_failure(age, delay, self.max_age) {
            return RetryDecision::Expire(expiry);
        }
        RetryDecision::Retry {
            next_due: adjust(add(now, delay)),
            num_attempts,
        }
    }

    /// Attempt counter and due time for a message read back from the spool
    /// at `now`, or the expiry that ends it.
    pub fn after_restart(
        &self,
        created: SystemTime,
        now: SystemTime,
    ) -> Result<(u32, SystemTime), Expiry> {
        let age = now.duration_since(created).unwrap_or(Duration::ZERO);
        let attempts = infer_attempts_from_age(age, self.retry_interval, self.max_retry_interval);
        let delay = delay_after_restart(
            attempts,
            age,
            self.retry_interval,
            self.max_retry_interval,
            self.max_age,
        )
        .map_err(|reason| Expiry { reason })?;
        Ok((attempts, add(now, delay)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const MIN: u64 = 60;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn default_schedule_doubles_from_twenty_minutes() {
        let r = secs(20 * MIN);
        let delays: Vec<u64> = (0..5)
            .map(|n| delay_for_attempt(n, r, None).as_secs() / MIN)
            .collect();
        assert_eq!(delays, vec![20, 40, 80, 160, 320]);
    }

    #[test]
    fn five_second_interval_gives_5_10_20() {
        let r = secs(5);
        let delays: Vec<u64> = (0..3)
            .map(|n| delay_for_attempt(n, r, None).as_secs())
            .collect();
        assert_eq!(delays, vec![5, 10, 20]);
        // J = 0.25 s, so the whole-second jitter is always zero.
        let mut rng = StdRng::seed_from_u64(1);
        for n in 0..3 {
            assert_eq!(jittered_delay(n, r, None, &mut rng), secs(5 << n));
        }
    }

    #[test]
    fn max_retry_interval_caps_and_huge_attempts_saturate() {
        let r = secs(20 * MIN);
        assert_eq!(delay_for_attempt(3, r, Some(secs(3600))), secs(3600));
        assert_eq!(delay_for_attempt(0, r, Some(r)), r);
        assert_eq!(delay_for_attempt(10, r, Some(r)), r);
        assert_eq!(delay_for_attempt(200, r, None), MAX_DELAY);
        assert_eq!(
            delay_for_attempt(u32::MAX, r, Some(secs(86400))),
            secs(86400)
        );
    }

    #[test]
    fn jitter_stays_within_half_the_magnitude() {
        assert_eq!(jitter_magnitude(secs(20 * MIN)), secs(60));
        assert_eq!(jitter_magnitude(secs(5 * 3600)), secs(60));
        assert_eq!(jitter_magnitude(secs(200)), secs(10));
        let mut rng = StdRng::seed_from_u64(7);
        let mut seen_negative = false;
        let mut seen_positive = false;
        for _ in 0..2000 {
            let j = random_jitter_secs(secs(20 * MIN), &mut rng);
            assert!((-30..=30).contains(&j), "{j}");
            seen_negative |= j < 0;
            seen_positive |= j > 0;
        }
        assert!(seen_negative && seen_positive);
        let now = SystemTime::UNIX_EPOCH + secs(1_000_000);
        let due = next_due(now, 1, secs(20 * MIN), None, &mut rng);
        let delta = due.duration_since(now).unwrap().as_secs();
        assert!((40 * MIN - 30..=40 * MIN + 30).contains(&delta), "{delta}");
    }

    #[test]
    fn ready_queue_full_delay_is_at_most_a_minute() {
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..500 {
            assert!(ready_queue_full_delay(&mut rng) <= secs(60));
        }
    }

    #[test]
    fn infers_attempts_from_age() {
        let r = secs(20 * MIN);
        assert_eq!(infer_attempts_from_age(secs(0), r, None), 0);
        assert_eq!(infer_attempts_from_age(secs(19 * MIN), r, None), 0);
        assert_eq!(infer_attempts_from_age(secs(20 * MIN), r, None), 1);
        assert_eq!(infer_attempts_from_age(secs(59 * MIN), r, None), 1);
        assert_eq!(infer_attempts_from_age(secs(60 * MIN), r, None), 2);
        assert_eq!(infer_attempts_from_age(secs(140 * MIN), r, None), 3);
        // With a cap every attempt adds one hour.
        assert_eq!(
            infer_attempts_from_age(secs(10 * 3600), secs(3600), Some(secs(3600))),
            10
        );
        // A zero interval must not loop forever.
        assert_eq!(infer_attempts_from_age(secs(100), secs(0), None), 0);
    }

    #[test]
    fn restart_continues_the_schedule_unless_too_old() {
        let schedule = RetrySchedule {
            retry_interval: secs(20 * MIN),
            max_retry_interval: None,
            max_age: secs(7 * 86400),
        };
        let created = SystemTime::UNIX_EPOCH + secs(1_000_000);
        // Tried at 0, 20 m and 60 m; the next slot is 140 m.
        let now = created + secs(70 * MIN);
        let (attempts, due) = schedule.after_restart(created, now).unwrap();
        assert_eq!(attempts, 2);
        assert_eq!(due, created + secs(140 * MIN));
        // Younger than the first delay: maybe never tried, due at once.
        let young = created + secs(5 * MIN);
        assert_eq!(schedule.after_restart(created, young), Ok((0, young)));
        assert_eq!(
            schedule
                .after_restart(created, created + secs(7 * 86400))
                .unwrap_err()
                .content(),
            "message is older than max_age=7days at spool recovery"
        );
        // A next slot past max_age expires (as the retry would have).
        let short = RetrySchedule {
            max_age: secs(100 * MIN),
            ..schedule
        };
        assert_eq!(
            short.after_restart(created, now).unwrap_err().content(),
            "Next delivery time would be 2h 20m after creation, which exceeds max_age=1h 40m"
        );
        // A future creation time (clock skew) counts as age zero.
        assert_eq!(schedule.after_restart(now, created), Ok((0, created)));
    }

    #[test]
    fn expiry_after_failure_uses_age_plus_next_delay() {
        let max_age = secs(7 * 86400);
        // 6 days old, next delay 1 day 1 hour: expire.
        let expiry = check_max_age_after_failure(secs(6 * 86400), secs(90_000), max_age).unwrap();
        assert_eq!(
            expiry.to_string(),
            "551 5.4.7 Next delivery time would be 7days 1h after creation, which exceeds max_age=7days"
        );
        // Exactly max_age is not "greater than".
        assert!(check_max_age_after_failure(secs(6 * 86400), secs(86400), max_age).is_none());
    }

    #[test]
    fn expiry_on_requeue_is_inclusive_and_iso_formatted() {
        let created = SystemTime::UNIX_EPOCH + secs(1_000_000);
        let max_age = secs(3600);
        assert!(check_max_age_on_requeue(created, created + secs(3599), max_age).is_none());
        let expiry = check_max_age_on_requeue(created, created + secs(3600), max_age).unwrap();
        assert_eq!(expiry.content(), "Next delivery time PT3600S > PT3600S");
    }

    #[test]
    fn scheduled_expiry_text() {
        let expires = DateTime::parse_from_rfc3339("2024-01-01T00:00:00+00:00").unwrap();
        let due: SystemTime = DateTime::parse_from_rfc3339("2024-01-01T00:00:01Z")
            .unwrap()
            .with_timezone(&Utc)
            .into();
        let expiry = check_scheduled_expiry(due, expires).unwrap();
        assert_eq!(
            expiry.content(),
            "Next delivery time would be at 2024-01-01 00:00:01 UTC which exceeds the expiry \
             time 2024-01-01 00:00:00 +00:00 configured via set_scheduling"
        );
        let earlier: SystemTime = SystemTime::from(expires) - secs(1);
        assert!(check_scheduled_expiry(earlier, expires).is_none());
    }

    #[test]
    fn delayed_record_text() {
        let now = SystemTime::UNIX_EPOCH + secs(1_704_067_200); // 2024-01-01T00:00:00Z
        assert_eq!(
            delayed_content("ScheduledForLater", now, now + secs(3661)),
            "Context: ScheduledForLater. Next due in 1h 1m 1s at 2024-01-01T01:01:01Z"
        );
    }

    #[test]
    fn after_failure_retries_then_expires() {
        let schedule = RetrySchedule {
            retry_interval: secs(5),
            max_retry_interval: None,
            max_age: secs(60),
        };
        let mut rng = StdRng::seed_from_u64(9);
        let created = SystemTime::UNIX_EPOCH + secs(1_000_000);
        let now = created + secs(10);
        assert_eq!(
            schedule.after_failure(2, created, now, None, &mut rng),
            RetryDecision::Retry {
                next_due: now + secs(20),
                num_attempts: 3
            }
        );
        // 10 s old + 80 s delay > 60 s.
        match schedule.after_failure(4, created, now, None, &mut rng) {
            RetryDecision::Expire(expiry) => assert!(
                expiry.content().contains("1m 30s after creation"),
                "{}",
                expiry.content()
            ),
            other => panic!("expected expiry, got {other:?}"),
        }
    }

    #[test]
    fn per_message_expires_replaces_max_age() {
        let schedule = RetrySchedule {
            retry_interval: secs(5),
            max_retry_interval: None,
            max_age: secs(1),
        };
        let created = SystemTime::UNIX_EPOCH + secs(1_700_000_000);
        let now = created + secs(10);
        let expires: DateTime<Utc> = (now + secs(30)).into();
        let sched = Scheduling {
            expires: Some(expires.fixed_offset()),
            ..Scheduling::default()
        };
        let mut rng = StdRng::seed_from_u64(1);
        // max_age (1 s) would expire it, but expires is 30 s away.
        assert!(matches!(
            schedule.after_failure(0, created, now, Some(&sched), &mut rng),
            RetryDecision::Retry { .. }
        ));
        assert!(matches!(
            schedule.after_failure(3, created, now, Some(&sched), &mut rng),
            RetryDecision::Expire(Expiry {
                reason: ExpiryReason::ScheduledExpiry { .. }
            })
        ));
    }
}
