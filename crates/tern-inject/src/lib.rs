//! The HTTP injection API's pure core (spec §4.3): request types,
//! template expansion and the MIME builder. No sockets, no Lua: the
//! server's HTTP module parses a request into [`InjectRequest`], builds a
//! [`Generator`] once per request (templates are compiled once) and calls
//! [`Generator::generate`] per recipient to get that recipient's message
//! bytes, which it wraps into spool messages.
//!
//! Modules: [`request`] (serde types of the request and response),
//! [`generate`] (per-recipient assembly), `template` (the Jinja,
//! Handlebars and Static dialects), [`mime`] (MIME
//! trees and the parse-and-rebuild of complete messages), [`encode`]
//! (transfer encodings, header encoding and folding, boundaries).

pub mod encode;
pub mod generate;
pub mod mime;
pub mod request;
mod template;

pub use generate::{Generator, RequestError};
pub use request::{
    AddressSpec, Attachment, BuilderContent, Content, InjectRequest, InjectResponse, Recipient,
    TemplateDialect, TraceHeaders,
};
