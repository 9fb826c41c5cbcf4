//! Throttles shared by every node through Redis (§19), and [`Throttles`],
//! the one object the server and the policy check throttles through.
//!
//! Without `kumo.configure_redis_throttles` every check goes to the
//! node-local [`ThrottleRegistry`]. With it, every spec without the
//! `local:` prefix is checked in Redis instead, so N nodes sharing one
//! Redis share one limit. Redis runs the same GCRA as the local registry,
//! as a Lua script evaluated atomically on the server, with the server's
//! own clock (`TIME`), so nodes whose clocks differ still agree.
//!
//! When Redis cannot be reached, the check falls back to the node-local
//! registry and a warning is logged (at most once a minute): a throttle
//! that stopped all mail because its store is down would turn a Redis
//! outage into a delivery outage. Each Redis check is bounded
//! ([`REDIS_CHECK_TIMEOUT`]), and after a failure the node stays local for
//! [`REDIS_RETRY_AFTER`] before trying Redis again, so an outage costs at
//! most one slow check per interval, not one per message. Each node then
//! enforces the limit on its own until Redis is back.

use crate::throttle::{ThrottleOutcome, ThrottleRegistry};
use parking_lot::Mutex;
use redis::aio::ConnectionManager;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tern_types::ThrottleSpec;

/// GCRA in Redis. KEYS[1]: the throttle; ARGV: the emission interval and
/// the burst tolerance in microseconds, and the burst. The stored value is
/// the theoretical arrival time in microseconds of the server's clock; it
/// expires once the throttle has fully recovered. Returns
/// `{allowed, remaining, retry_after_us, reset_after_us}`.
const GCRA_SCRIPT: &str = r#"
-- Redis 3.2 to 4 refuse a write after TIME without this; a no-op on 5+.
if redis.replicate_commands then redis.replicate_commands() end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local next_tat = tat + interval
local ahead = next_tat - now
if ahead > tolerance then
  local used = tat - now
  local remaining = math.floor((tolerance - used) / interval)
  if remaining < 0 then remaining = 0 end
  return {0, remaining, ahead - tolerance, used}
end
-- Integers as strings: Redis 7 may write a large float as "3e+09".
redis.call('SET', KEYS[1], string.format('%d', next_tat), 'PX',
  string.format('%d', math.ceil(ahead / 1000) + 1))
return {1, math.floor((tolerance - ahead) / interval), 0, ahead}
"#;

/// The longest one shared check may take before the local throttle
/// answers instead: throttle checks sit on the promotion and delivery
/// paths, one message at a time.
pub const REDIS_CHECK_TIMEOUT: Duration = Duration::from_millis(500);
/// How long checks stay node-local after Redis failed one.
pub const REDIS_RETRY_AFTER: Duration = Duration::from_secs(5);

/// A connection to the Redis that holds shared throttles.
pub struct RedisThrottles {
    conn: ConnectionManager,
    script: redis::Script,
    /// The address, for messages (without credentials).
    pub node: String,
}

/// How to reach Redis (`kumo.configure_redis_throttles`).
#[derive(Clone, Debug)]
pub struct RedisParams {
    pub url: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
}

impl RedisThrottles {
    /// Connect and check that the server answers (a `PING`), so a wrong
    /// address fails at startup rather than at the first message.
    pub async fn connect(params: &RedisParams) -> Result<Self, String> {
        use redis::IntoConnectionInfo;
        let mut info = params
            .url
            .as_str()
            .into_connection_info()
            .map_err(|err| format!("'{}' is not a Redis URL: {err}", params.url))?;
        let node = info.addr().to_string();
        let mut redis_settings = info.redis_settings().clone();
        if let Some(user) = &params.username {
            redis_settings = redis_settings.set_username(user);
        }
        if let Some(password) = &params.password {
            redis_settings = redis_settings.set_password(password);
        }
        info = info.set_redis_settings(redis_settings);
        let client = redis::Client::open(info).map_err(|err| format!("Redis {node}: {err}"))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(params.connect_timeout))
            .set_response_timeout(Some(params.response_timeout))
            .set_number_of_retries(2);
        let mut conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|err| format!("cannot connect to Redis at {node}: {err}"))?;
        let pong: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|err| format!("Redis at {node} did not answer PING: {err}"))?;
        if pong != "PONG" {
            return Err(format!("Redis at {node} answered PING with {pong:?}"));
        }
        Ok(Self {
            conn,
            script: redis::Script::new(GCRA_SCRIPT),
            node,
        })
    }

    /// One check of `spec` for `key`, counted when allowed.
    pub async fn check(&self, key: &str, spec: &ThrottleSpec) -> Result<ThrottleOutcome, String> {
        let interval = spec.emission_interval().as_micros().max(1) as u64;
        let burst = spec.max_burst.clamp(1, u32::MAX as u64);
        let tolerance = interval.saturating_mul(burst);
        let mut conn = self.conn.clone();
        let (allowed, remaining, retry_us, reset_us): (i64, i64, i64, i64) = self
            .script
            .key(key)
            .arg(interval)
            .arg(tolerance)
            .invoke_async(&mut conn)
            .await
            .map_err(|err| format!("Redis at {}: {err}", self.node))?;
        let micros = |us: i64| Duration::from_micros(us.max(0) as u64);
        Ok(ThrottleOutcome {
            throttled: allowed == 0,
            limit: burst,
            remaining: remaining.max(0) as u64,
            reset_after: micros(reset_us),
            retry_after: (allowed == 0).then(|| micros(retry_us)),
        })
    }
}

/// Every throttle check of the server and the policy goes through here.
#[derive(Default)]
pub struct Throttles {
    local: ThrottleRegistry,
    redis: OnceLock<RedisThrottles>,
    /// When the last "Redis unavailable" warning was logged.
    last_warning: Mutex<Option<Instant>>,
    /// Until when checks stay node-local after a Redis failure.
    redis_down_until: Mutex<Option<Instant>>,
}

impl Throttles {
    pub fn new() -> Self {
        Self::default()
    }

    /// The node-local registry (for checks that must not wait on the
    /// network, and for `local:` specs).
    pub fn local(&self) -> &ThrottleRegistry {
        &self.local
    }

    /// Share throttles through `redis` from now on. Only once per process.
    pub fn use_redis(&self, redis: RedisThrottles) -> Result<(), String> {
        let node = redis.node.clone();
        self.redis.set(redis).map_err(|_| {
            format!("kumo.configure_redis_throttles was already called; cannot also use {node}")
        })
    }

    /// Whether specs without `local:` are shared through Redis.
    pub fn is_shared(&self) -> bool {
        self.redis.get().is_some()
    }

    /// Check `spec` for `key`: in Redis when configured and the spec is
    /// not `local:`, else (or when Redis fails) in the local registry.
    pub async fn check(&self, key: &str, spec: &ThrottleSpec) -> ThrottleOutcome {
        if !spec.force_local
            && let Some(redis) = self.redis.get()
            && !self.redis_resting()
        {
            match tokio::time::timeout(REDIS_CHECK_TIMEOUT, redis.check(key, spec)).await {
                Ok(Ok(outcome)) => return outcome,
                Ok(Err(err)) => self.redis_failed(&err),
                Err(_) => self.redis_failed(&format!(
                    "Redis at {} did not answer within {REDIS_CHECK_TIMEOUT:?}",
                    redis.node
                )),
            }
        }
        self.local.check_detailed(key, spec, Instant::now())
    }

    /// Whether Redis failed recently enough that checks stay local.
    fn redis_resting(&self) -> bool {
        let mut until = self.redis_down_until.lock();
        match *until {
            Some(at) if Instant::now() < at => true,
            Some(_) => {
                *until = None;
                false
            }
            None => false,
        }
    }

    fn redis_failed(&self, err: &str) {
        *self.redis_down_until.lock() = Some(Instant::now() + REDIS_RETRY_AFTER);
        self.warn(err);
    }

    fn warn(&self, err: &str) {
        let mut last = self.last_warning.lock();
        if last.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
            *last = Some(Instant::now());
            tracing::warn!("shared throttle check failed, using node-local throttles: {err}");
        }
    }
}
