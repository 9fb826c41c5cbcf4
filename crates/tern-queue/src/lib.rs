//! Tern's scheduling core: the pure, mostly synchronous part of the queue
//! layer.
//!
//! This crate knows nothing about sockets or disks. It provides:
//!
//! * [`config`] — the parameter tables of `kumo.make_queue_config`,
//!   `kumo.make_egress_source`, `kumo.make_egress_pool` and
//!   `kumo.make_egress_path`, as strict serde structs with KumoMTA's
//!   defaults, plus `validate()` for options Tern cannot honour yet;
//! * [`backoff`] — retry delay, jitter, expiry decisions (with the exact
//!   `551 5.4.7` texts) and the attempt counter inferred after a restart;
//! * [`timer`] — a hierarchical timer wheel that holds millions of waiting
//!   messages in a few dozen bytes each;
//! * [`wrr`] — the weighted round-robin egress source selection;
//! * [`throttle`] — in-process GCRA throttles and connection-limit leases;
//! * [`scheduling`] — `msg:set_scheduling` windows (days of week, time zone,
//!   start/end) and due-time adjustment;
//! * [`ready_name`] — ready-queue naming (`source->site@smtp_client`);
//! * [`lua`] — the thin Lua layer: the `kumo.make_*` constructors for the
//!   [`config`] structs ([`QueueLuaRegistrar`]) and the helpers that take
//!   the structs back out of a handler's return value.
//!
//! The server crate wires these to the spool, the policy engine and the
//! delivery dispatchers.

pub mod backoff;
pub mod config;
pub mod lua;
pub mod ready_name;
pub mod scheduling;
pub mod shared_throttle;
pub mod throttle;
pub mod throttle_lua;
pub mod timer;
pub mod wrr;

pub use backoff::{Expiry, RetrySchedule};
pub use config::{
    DeliveryProtocol, EgressPathConfig, EgressPool, EgressPoolEntry, EgressSource, QueueConfig, Tls,
};
pub use lua::{
    LuaEgressPathConfig, LuaEgressPool, LuaEgressSource, LuaQueueConfig, QueueLuaRegistrar,
    egress_path_config_from_lua, egress_pool_from_lua, egress_source_from_lua,
    queue_config_from_lua,
};
pub use ready_name::ready_queue_name;
pub use scheduling::Scheduling;
pub use shared_throttle::{RedisParams, RedisThrottles, Throttles};
pub use throttle::{ConnectionLimiter, Lease, ThrottleOutcome, ThrottleRegistry};
pub use throttle_lua::ThrottleLuaRegistrar;
pub use timer::TimerWheel;
pub use wrr::WeightedRoundRobin;
