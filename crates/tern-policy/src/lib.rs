//! The Lua policy engine.
//!
//! A Tern server is configured by a KumoMTA-compatible Lua policy. This
//! crate owns everything about running that policy and nothing about mail:
//!
//! * [`PolicyEngine`] loads the policy file into fresh Lua 5.4 states,
//!   keeps a pool of them for realtime events, and retires states by age,
//!   use count and configuration epoch so that policy edits take effect
//!   without a restart ([`pool`], [`epoch`]).
//! * [`events`] implements `kumo.on` with KumoMTA's registration rules
//!   (single- versus multi-handler events, top level only) and the dispatch
//!   semantics of handler chains.
//! * [`kumo_module`] builds the `kumo` module table that every state gets:
//!   the core functions, the data helpers ([`data`]), `kumo.memoize`
//!   ([`memoize`]), `kumo.reject` / `kumo.disconnect` ([`reject`]).
//! * [`params`] turns a Lua parameter table into a strict Rust struct, so
//!   the bindings of other crates stay a thin layer over their Rust types.
//!
//! Other crates add their own `kumo.*` functions through the
//! [`LuaRegistrar`] trait; the engine calls every registrar on every new
//! state. A `kumo.*` name that nobody registered raises
//! `kumo.<name> is not supported by Tern yet` instead of returning nil.

pub mod data;
pub mod engine;
pub mod epoch;
pub mod events;
pub mod kumo_module;
pub mod memoize;
pub mod params;
pub mod pool;
pub mod reject;

pub use engine::{EngineOptions, LuaRegistrar, PolicyEngine, PolicyError};
pub use epoch::ConfigEpoch;
pub use params::{from_lua_params, json_to_lua, lua_to_json};
pub use reject::{DisconnectMode, Rejection};
