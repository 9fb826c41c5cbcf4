//! Shared pieces of the server tests: an in-process sink on its own
//! runtime, reading the log records back with `tern logs`, waiting for
//! records to appear, policy fragments, a closed port and Python as an
//! independent client.

#![allow(dead_code)]

use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tern_bench::sink::{Sink, SinkConfig, SinkHandle, SinkStats};

/// A `tern bench sink` running in this test process.
pub struct TestSink {
    pub handle: SinkHandle,
    runtime: tokio::runtime::Runtime,
}

impl TestSink {
    pub fn start(config: SinkConfig) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let handle = runtime.block_on(Sink::start(config)).unwrap();
        Self { handle, runtime }
    }

    pub fn port(&self) -> u16 {
        self.handle.local_addr.port()
    }

    pub fn stats(&self) -> SinkStats {
        self.handle.stats()
    }
}

impl Drop for TestSink {
    fn drop(&mut self) {
        self.handle.shutdown();
        let _enter = self.runtime.enter();
    }
}

/// Every record under `log_dir`, in time order, via `tern logs`.
pub fn records(log_dir: &Path) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_tern"))
        .arg("logs")
        .arg(log_dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// Poll the records until `done` says so; panics with the records seen
/// after `timeout`.
pub fn wait_for_records(
    log_dir: &Path,
    timeout: Duration,
    mut done: impl FnMut(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = records(log_dir);
        if done(&seen) {
            return seen;
        }
        if Instant::now() > deadline {
            let summary: Vec<String> = seen.iter().map(brief).collect();
            panic!(
                "timed out after {timeout:?}; records so far:\n{}",
                summary.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `type recipient code content` for failure messages.
pub fn brief(record: &Value) -> String {
    format!(
        "{} {} {} {}",
        record["type"].as_str().unwrap_or("?"),
        record["recipient"],
        record["response"]["code"],
        record["response"]["content"].as_str().unwrap_or("")
    )
}

pub fn of_type<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["type"] == kind).collect()
}

pub fn count(records: &[Value], kind: &str) -> usize {
    of_type(records, kind).len()
}

/// Seconds since the epoch of a record's `event_time`, with fractions.
pub fn event_seconds(record: &Value) -> f64 {
    let text = record["event_time"].as_str().expect("event_time");
    let parsed = chrono::DateTime::parse_from_rfc3339(text).expect("RFC 3339 event_time");
    parsed.timestamp() as f64 + f64::from(parsed.timestamp_subsec_nanos()) / 1e9
}

/// The start of a policy: spools, a log directory flushed every second,
/// and an SMTP listener that relays for loopback.
pub fn policy_head(spool_kind: &str) -> String {
    policy_head_with_listener(spool_kind, "relay_hosts = { '127.0.0.1' }")
}

/// [`policy_head`] with other listener options (`listen` is set).
pub fn policy_head_with_listener(spool_kind: &str, listener: &str) -> String {
    format!(
        r#"local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool {{ name = 'data', path = '{{dir}}/spool/data', kind = '{spool_kind}', min_free_space = '1%' }}
  kumo.define_spool {{ name = 'meta', path = '{{dir}}/spool/meta', kind = '{spool_kind}', min_free_space = '1%' }}
  kumo.configure_local_logs {{ log_dir = '{{dir}}/logs', max_segment_duration = '1s' }}
  kumo.start_esmtp_listener {{ listen = '127.0.0.1:0', {listener} }}
end)
"#
    )
}

/// Policy handlers: queues with `retry_interval` that deliver to `[127.0.0.1]:port`.
pub fn routed(port: u16, retry_interval: &str) -> String {
    format!(
        r#"
kumo.on('get_queue_config', function()
  return kumo.make_queue_config {{
    retry_interval = '{retry_interval}',
    protocol = {{ smtp = {{ mx_list = {{ '[127.0.0.1]:{port}' }} }} }},
  }}
end)
kumo.on('get_egress_path_config', function()
  return kumo.make_egress_path {{ prohibited_hosts = {{}}, enable_tls = 'Disabled' }}
end)
"#
    )
}

/// Start the real `tern serve` on `policy` in a fresh folder.
pub fn start_tern(policy: impl Into<String>) -> tern_testkit::TernServer {
    tern_testkit::Builder::new(policy)
        .binary(env!("CARGO_BIN_EXE_tern"))
        .start()
        .unwrap()
}

/// A short message body (dot-stuffed, CRLF-terminated).
pub fn body(subject: &str) -> Vec<u8> {
    format!("Subject: {subject}\r\nFrom: s@example.com\r\n\r\nhello\r\n").into_bytes()
}

/// The fields every log record has (§12.2), in serialisation order. A test
/// list rather than tern-log's own, so that a change there is caught.
pub const RECORD_FIELDS: &[&str] = &[
    "type",
    "id",
    "sender",
    "recipient",
    "queue",
    "site",
    "size",
    "response",
    "peer_address",
    "timestamp",
    "event_time",
    "created",
    "created_time",
    "num_attempts",
    "bounce_classification",
    "egress_pool",
    "egress_source",
    "source_address",
    "feedback_report",
    "meta",
    "headers",
    "delivery_protocol",
    "reception_protocol",
    "nodeid",
];

/// A loopback port nothing listens on (it was bound and released), for
/// deliveries that must fail and stay queued.
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Runs a Python script with arguments and returns its stdout; the script
/// must succeed.
pub fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
