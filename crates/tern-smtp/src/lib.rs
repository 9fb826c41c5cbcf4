//! Sans-IO SMTP protocol core for Tern.
//!
//! Nothing in this crate touches a socket, a runtime or Lua: every type takes
//! bytes (or parsed values) and returns values, so the whole protocol can be
//! unit-tested and fuzzed, and the tokio session driver that sits on top of it
//! stays a thin loop:
//!
//! ```text
//! read into BytesMut ─▶ LineReader::next_line ─▶ parse_command ─▶ SessionState::check_*
//!                                                                 │ (policy events, relay checks)
//!                        DataDecoder::decode  ◀── after 354 ──────┘
//! Reply::write_to ─▶ socket
//! ```
//!
//! Modules:
//! * [`mod@line`]: incremental command-line splitting with a hard length limit.
//! * [`command`]: one line → [`Command`], with the exact error replies.
//! * [`reply`]: [`Reply`] formatting and parsing, and every fixed reply text
//!   of the KumoMTA listener.
//! * [`data`]: the DATA decoder (terminator, dot-unstuffing, size, line
//!   length and line-ending rules; smuggling-safe).
//! * [`session`]: command ordering, EHLO extension list, AUTH PLAIN and
//!   XCLIENT argument decoding.
//! * [`proxy`]: HAProxy PROXY v1/v2 header parsing (`require_proxy_protocol`).
//! * [`client`]: the delivery side: reply reader, EHLO capabilities, command
//!   lines, dot-stuffing, outcome classification.

pub mod client;
pub mod command;
pub mod data;
pub mod line;
pub mod proxy;
pub mod reply;
pub mod session;

pub use command::{Command, CommandError, EsmtpParam, parse_command};
pub use data::{DataDecoder, DataError, DataLimits, DataProgress, InvalidLineEndings};
pub use line::{DEFAULT_LINE_LENGTH_LIMIT, LineReader, LineTooLong};
pub use proxy::{ProxyError, ProxyHeader, parse_proxy_header};
pub use reply::{EnhancedCode, Reply, ReplyParseError};
pub use session::{AuthPlain, SessionState, XClientUpdate, decode_auth_plain};
