//! The Tern daemon (`tern serve`).
//!
//! This crate wires the focused library crates into a server and owns the
//! process-level concerns: command-line options ([`options`]), diagnostic
//! logging ([`diag`]), the node id ([`nodeid`]), dropping privileges
//! ([`privileges`]), the `init`-time configuration functions such as
//! `kumo.start_http_listener` ([`init`]), the listeners ([`http`]), and the
//! startup sequence of §1.2 with graceful shutdown ([`startup`]).
//!
//! Init-time functions do not act immediately: they record what the policy
//! asked for in an [`init::InitConfig`]; after `init` returns, the startup
//! sequence validates the whole configuration and then binds listeners and
//! opens spools. That is what lets `--validate` evaluate a policy without
//! binding a port or touching a spool.

pub mod conn_meta;
pub mod diag;
pub mod esmtp;
pub mod http;
pub mod init;
pub mod listener_domain;
pub mod log_hooks;
pub mod machine;
pub mod maintenance;
pub mod memory;
pub mod metrics;
pub mod nodeid;
pub mod options;
pub mod privileges;
pub mod queue;
pub mod reception;
pub mod startup;
pub mod state;
pub mod trace;

pub use options::ServeOptions;
pub use startup::serve;
