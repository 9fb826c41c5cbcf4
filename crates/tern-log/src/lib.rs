//! Tern's local logging, compatible with KumoMTA's `configure_local_logs`.
//!
//! * [`record`]: the JSON log record (field order, nulls and omissions as
//!   KumoMTA writes them) and constructors for each record type.
//! * [`config`]: the `configure_local_logs` parameter table and the
//!   meta/header capture rules.
//! * [`writer`]: [`Logger`], a background writer producing zstd-compressed
//!   segment files with rotation, read-only completion and back pressure.
//! * [`reader`]: reading a log folder back in time order, with filters and
//!   a follow mode.
//! * [`cli`]: the `tern logs` subcommand.
//!
//! No Lua here: the policy crate deserialises the Lua table into
//! [`LogConfig`], evaluates `filter_event`, and submits records.

pub mod cli;
pub mod config;
pub mod reader;
pub mod record;
pub mod segment_name;
pub mod writer;

pub use config::{LogConfig, PerRecordConfig, PerRecordKey, capture_headers, capture_meta};
pub use reader::{LogFilter, LogLine, LogReader};
pub use record::{
    EnhancedCode, LogRecord, MessageInfo, PeerAddress, RecordType, Response, SourceAddress,
};
pub use writer::{Logger, LoggerClosed, TrySubmitError};
