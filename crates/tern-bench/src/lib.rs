//! Tern's benchmarking tools: a load generator (`tern bench send`) and a
//! test SMTP sink (`tern bench sink`). Both are independent of Tern's own
//! SMTP code (they depend only on `tern-types`) so that they check Tern
//! rather than share its bugs. Every socket has `TCP_NODELAY` set.
//!
//! # Usage
//!
//! Start a sink on a free port, keep Maildir copies, fail 5% of recipients
//! temporarily, and stop after 10,000 messages:
//!
//! ```text
//! tern bench sink --listen 127.0.0.1:0 --maildir /tmp/md \
//!     --tempfail-percent 5 --exit-after 10000 --stats-json stats.json
//! sink listening on 127.0.0.1:40123
//! ```
//!
//! Recipient local parts choose the sink's reply: `tempfail` (451),
//! `permfail` (550), `450-…` (450), `421-…` (421, then close), `550-…`
//! (550). `--delay-ms`, `--data-delay-ms` slow replies down;
//! `--no-starttls`, `--no-8bitmime`, `--no-smtputf8`, `--no-pipelining`
//! remove extensions; `--cert/--key` replace the self-signed certificate.
//!
//! Send 10,000 messages of 4 KiB over 8 pipelined STARTTLS connections,
//! capped at 2,000/s, spread over 50 recipient domains:
//!
//! ```text
//! tern bench send 127.0.0.1:2525 -n 10000 -c 8 -s 4k --starttls \
//!     --rate 2000/s --domains 50 --json
//! ```
//!
//! Or through the HTTP injection API, 100 recipients per request, for 30 s:
//!
//! ```text
//! tern bench send 127.0.0.1:8000 --http --batch-size 100 -d 30s --http-auth user:pw
//! ```
//!
//! The send summary reports messages per second, outcome counts per reply
//! code (`"250"`, `"451"`, `"http 200"`, ...) and latency p50/p90/p99/max
//! (per message over SMTP, per request over HTTP) from an HDR histogram.
//!
//! # Modules
//! - [`sink`]: [`sink::Sink::start`] → [`sink::SinkHandle`] for in-process use.
//! - [`send`]: [`send::run`] with a [`send::SendConfig`] → [`send::Summary`].
//! - [`cli`]: clap argument structs and `run_send` / `run_sink`.

pub mod cli;
pub mod send;
pub mod sink;
