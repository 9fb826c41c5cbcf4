//! Shared pieces of the server tests: an in-process sink on its own
//! runtime, reading the log records back with `tern logs`, waiting for
//! records to appear, policy fragments, a closed port and Python as an
//! independent client.

#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
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
    routed_with(port, &format!("retry_interval = '{retry_interval}',"), "")
}

/// Policy handlers: queues that deliver to `[127.0.0.1]:port` in the clear,
/// with extra `make_queue_config` and `make_egress_path` options (each a
/// comma-terminated list of `key = value`, or empty).
pub fn routed_with(port: u16, queue_options: &str, path_options: &str) -> String {
    format!(
        r#"
kumo.on('get_queue_config', function()
  return kumo.make_queue_config {{
    {queue_options}
    protocol = {{ smtp = {{ mx_list = {{ '[127.0.0.1]:{port}' }} }} }},
  }}
end)
kumo.on('get_egress_path_config', function()
  return kumo.make_egress_path {{
    prohibited_hosts = {{}}, enable_tls = 'Disabled', {path_options}
  }}
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

/// Runs `curl` (an independent HTTP client) with `args`; returns the
/// status code and the body.
pub fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-S", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// A raw SMTP connection that returns replies exactly as they were sent
/// (a read waits at most 60 s).
pub struct Conn {
    pub reader: BufReader<TcpStream>,
    pub writer: TcpStream,
}

impl Conn {
    pub fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Self {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    /// Connect, read the banner and say `EHLO client.test`.
    pub fn greeted(addr: SocketAddr) -> Self {
        let mut conn = Self::connect(addr);
        let banner = conn.reply();
        assert!(banner.starts_with("220 "), "{banner:?}");
        let ehlo = conn.cmd("EHLO client.test");
        assert!(ehlo.starts_with("250-"), "{ehlo:?}");
        conn
    }

    /// One complete (possibly multi-line) reply, every line with its CRLF.
    pub fn reply(&mut self) -> String {
        let mut text = Vec::new();
        loop {
            let mut line = Vec::new();
            let n = self
                .reader
                .read_until(b'\n', &mut line)
                .unwrap_or_else(|e| {
                    panic!(
                        "reading a reply: {e}; read so far: {:?}",
                        String::from_utf8_lossy(&text)
                    )
                });
            assert!(
                n > 0,
                "connection closed; read so far: {:?}",
                String::from_utf8_lossy(&text)
            );
            text.extend_from_slice(&line);
            if line.len() < 4 || line[3] != b'-' {
                break;
            }
        }
        String::from_utf8(text).expect("replies are UTF-8")
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    /// Send one command line (CRLF added) and read its reply.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// The server closed the connection and sent nothing more.
    pub fn expect_closed(&mut self) {
        let mut buf = [0u8; 256];
        match self.reader.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!(
                "expected the server to close, got {:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("expected the server to close, got {e}"),
        }
    }

    /// MAIL, each RCPT (all must get 250), DATA, the body (CRLF-terminated,
    /// already dot-stuffed) and the dot: the final reply.
    pub fn transaction(&mut self, from: &str, to: &[&str], body: &[u8]) -> String {
        let reply = self.cmd(&format!("MAIL FROM:<{from}>"));
        assert!(reply.starts_with("250 "), "MAIL: {reply:?}");
        for rcpt in to {
            let reply = self.cmd(&format!("RCPT TO:<{rcpt}>"));
            assert!(reply.starts_with("250 "), "RCPT {rcpt}: {reply:?}");
        }
        let reply = self.cmd("DATA");
        assert_eq!(reply, "354 Send body; end with CRLF.CRLF\r\n");
        self.send(body);
        self.cmd(".")
    }
}

/// The ids of a `250 OK ids=<id> <id> ...` reply.
pub fn ids_from(reply: &str) -> Vec<String> {
    reply
        .trim_end()
        .split_once("ids=")
        .map(|(_, ids)| ids.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// The contents of every file under `dir` (a LocalDisk spool or part of
/// one), read lossily as text, in no particular order.
pub fn files_under(dir: &Path) -> Vec<String> {
    fn walk(path: &Path, out: &mut Vec<String>) {
        if let Ok(entries) = std::fs::read_dir(path) {
            for entry in entries.flatten() {
                let p = entry.path();
                if p.is_dir() {
                    walk(&p, out);
                } else if let Ok(bytes) = std::fs::read(&p) {
                    out.push(String::from_utf8_lossy(&bytes).into_owned());
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out
}

/// A new 2048-bit RSA key written to `dir/key.pem` by `openssl`, and its
/// public half as base64 DER (the `p=` of a DKIM DNS record).
pub fn rsa_key(dir: &Path) -> (std::path::PathBuf, String) {
    let key = dir.join("key.pem");
    let out = Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&key)
        .arg("2048")
        .output()
        .unwrap();
    assert!(out.status.success());
    let public = Command::new("openssl")
        .args(["rsa", "-pubout", "-outform", "DER", "-in"])
        .arg(&key)
        .output()
        .unwrap();
    use base64::Engine;
    (
        key,
        base64::engine::general_purpose::STANDARD.encode(&public.stdout),
    )
}
