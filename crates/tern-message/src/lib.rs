//! The message object of Tern.
//!
//! A [`Message`] is the unit that flows from reception through the spool and
//! the scheduled queues to delivery. It is a cheap-to-clone handle around
//! shared state (envelope, metadata, body bytes, due time, attempt counter,
//! scheduling constraints), so the SMTP server, the queue manager and a Lua
//! policy holding the same message as userdata all see one value.
//!
//! The persisted form is split in two as KumoMTA does (spec §2.2): the raw
//! RFC 5322 bytes go to the `data` spool and a small JSON document
//! ([`Message::meta_spool_bytes`]) goes to the `meta` spool.
//!
//! Modules: [`message`] (the core type), [`headers`] (byte-level header
//! block parsing and editing), [`edit`] (the header API on `Message`),
//! [`address`] (parsed address headers), [`mime`] (MIME walker, text
//! appends, conformance checks and fixes), [`mimepart`] (an owned, editable
//! MIME tree: parsing, building, decoded bodies) and [`mimepart_lua`] (the
//! `kumo.mimepart` module and `msg:parse_mime()` objects), [`scheduling`]
//! (validation of `set_scheduling` values), [`report`] (RFC 3464 delivery
//! status parsing for `msg:parse_rfc3464()`), [`arf`] (RFC 5965 feedback
//! reports for `msg:parse_rfc5965()` and `Feedback` log records), [`auth`]
//! (RFC 8601 authentication results and the `Authentication-Results`
//! header).

pub mod address;
pub mod arf;
pub mod auth;
pub mod edit;
pub mod headers;
pub mod lua;
pub mod message;
pub mod mime;
pub mod mimepart;
pub mod mimepart_lua;
pub mod report;
pub mod scheduling;

pub use address::{AddressHeader, Mailbox};
pub use arf::{ArfReport, parse_rfc5965};
pub use auth::{AuthenticationResult, render_authentication_results};
pub use edit::{ImportHeaderSpec, ImportMatch, KeyTransform};
pub use lua::{LuaAddressHeader, LuaEnvelopeAddress, LuaMailbox, json_to_lua, lua_to_json};
pub use message::{Message, MessageState};
pub use mimepart::MimePart;
pub use mimepart_lua::LuaMimePart;
pub use scheduling::Scheduling;
