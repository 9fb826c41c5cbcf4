//! Plain value types shared by every Tern crate.
//!
//! Nothing in here knows about Lua, sockets or disks: these are the values
//! that a KumoMTA-compatible policy passes around (durations, throttle and
//! connection-limit specs, CIDR sets, key sources, spool ids, envelope
//! addresses and scheduled-queue names), with their parsers and serde
//! implementations. The policy crate converts Lua tables into these types
//! through serde, so every parser here is also the one that produces the
//! operator-facing error message.

pub mod address;
pub mod cidr;
pub mod duration;
pub mod id;
pub mod keysource;
pub mod limit;
pub mod queue_name;
pub mod throttle;

pub use address::EnvelopeAddress;
pub use cidr::{CidrMap, CidrSet};
pub use duration::{DurationSpec, parse_duration};
pub use id::SpoolId;
pub use keysource::KeySource;
pub use limit::LimitSpec;
pub use queue_name::QueueName;
pub use throttle::ThrottleSpec;
