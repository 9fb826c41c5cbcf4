//! The ESMTP listener (`kumo.start_esmtp_listener`, §3).
//!
//! [`params`] computes each connection's effective parameters, [`listener`]
//! accepts connections, and [`session`] drives one SMTP session: it reads
//! bytes, feeds them to the sans-IO parser of `tern-smtp`, consults the
//! policy at each `smtp_server_*` event, and hands accepted messages to
//! [`crate::reception`], which makes them durable before the `250`.

pub mod listener;
pub mod params;
pub mod session;
pub mod tls;
