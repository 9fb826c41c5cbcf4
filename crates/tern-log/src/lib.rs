//! Tern's local logging, compatible with KumoMTA's `configure_local_logs`.
//!
//! * [`record`]: the JSON log record (field order, nulls and omissions as
//!   KumoMTA writes them) and constructors for each record type.
//! * [`config`]: the `configure_local_logs` parameter table and the
//!   meta/header capture rules.
//! * [`writer`]: [`Logger`], a background writer producing zstd-compressed
//!   segment files with rotation, read-only completion and back pressure.
//! * [`format`]: a record as its JSON or `per_record` template text,
//!   shared by the writer and log hooks.
//! * [`filter`]: the `filter_event` decision step ([`RecordFilter`], which
//!   the server implements with the policy engine).
//! * [`hook`]: `configure_log_hook` parameters and the message a hook
//!   makes from a record.
//! * [`reader`]: reading a log folder back in time order, with filters and
//!   a follow mode.
//! * [`cli`]: the `tern logs` subcommand.
//!
//! No Lua here: the policy crate deserialises the Lua table into
//! [`LogConfig`] / [`LogHookConfig`]; the server evaluates `filter_event`
//! through [`RecordFilter`] and submits records.

pub mod cli;
pub mod config;
pub mod filter;
pub mod format;
pub mod hook;
pub mod reader;
pub mod record;
pub mod segment_name;
pub mod writer;

pub use config::{
    LogConfig, PerRecordConfig, PerRecordKey, capture_headers, capture_headers_matching,
    capture_meta, capture_meta_matching,
};
pub use filter::{FilterDecisions, FilterFuture, RecordFilter};
pub use format::{FormatError, RecordFormatter};
pub use hook::{HookMessage, LogHook, LogHookConfig};
pub use reader::{LogFilter, LogLine, LogReader};
pub use record::{
    EnhancedCode, LogRecord, MessageInfo, PeerAddress, RecordType, Response, SourceAddress,
};
pub use writer::{Logger, LoggerClosed, TrySubmitError};
