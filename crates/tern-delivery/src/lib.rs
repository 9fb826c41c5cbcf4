//! Outbound delivery for Tern: connection plans, the async SMTP client and
//! Maildir delivery.
//!
//! * [`plan`]: turn an MX answer or an `mx_list` into the ordered list of
//!   addresses to try, applying `prohibited_hosts`, `skip_hosts`, the lookup
//!   strategy and the port rules (spec §9.5).
//! * [`client`]: [`SmtpConnection`], one outbound SMTP session: connect
//!   along a plan, STARTTLS, AUTH, then transactions with pipelining
//!   (spec §11.2, §11.3).
//! * [`maildir`]: write a message into a Maildir (spec §22).
//! * [`response`]: [`DeliveryResponse`], the `response` of a log record.
//! * [`tls`]: rustls client configurations and [`TlsInfo`].
//!
//! The queue runtime (tern-server) owns the scheduling, throttles and
//! logging; this crate only moves bytes and reports what happened.

pub mod client;
pub mod maildir;
pub mod plan;
pub mod response;
pub mod tls;

pub use client::{
    ClientSettings, ConnectError, ConnectStage, HostFailure, RecipientResult, SmtpConnection,
    TransportError,
};
pub use maildir::{MaildirError, deliver_maildir};
pub use plan::{
    ConnectionPlan, PlanError, PlanResponse, PlannedHost, plan_for_mx, plan_for_mx_list,
};
pub use response::DeliveryResponse;
pub use tern_smtp::client::Outcome;
pub use tls::TlsInfo;
