//! Delivery against real peers: a second Tern acting as a Maildir sink
//! (byte-for-byte and TLS modes), Postfix's `smtp-sink`, Python's
//! `aiosmtpd`, MX routing through a real DNS server (`dnsmasq`) on
//! loopback, and deferred messages surviving `kill -9`.

mod common;

use common::*;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tern_bench::sink::SinkConfig;
use tern_testkit::{Builder, TernServer};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills a helper process when the test ends, however it ends.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for_port(port: u16) {
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("nothing listens on {port}");
}

const NO_TRACE: &str = "trace_headers = { received_header = false, supplemental_header = false }";

/// A Tern that accepts for any domain from loopback and writes every
/// message to `{dir}/maildir/<domain>/<local part>`.
fn maildir_sink() -> TernServer {
    let policy = format!(
        r#"local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool {{ name = 'data', path = '{{dir}}/spool/data', min_free_space = '1%' }}
  kumo.define_spool {{ name = 'meta', path = '{{dir}}/spool/meta', min_free_space = '1%' }}
  kumo.configure_local_logs {{ log_dir = '{{dir}}/logs', max_segment_duration = '1s' }}
  kumo.start_esmtp_listener {{ listen = '127.0.0.1:0', relay_hosts = {{ '127.0.0.1' }}, {NO_TRACE} }}
end)
kumo.on('get_queue_config', function()
  return kumo.make_queue_config {{
    protocol = {{ maildir_path = '{{dir}}/maildir/{{{{ domain_part }}}}/{{{{ local_part }}}}' }},
  }}
end)
"#
    );
    start_tern(policy)
}

/// A relaying Tern: domain `strict.test` goes through source `strict`
/// (enable_tls = Opportunistic, which verifies), everything else through
/// `loose` (OpportunisticInsecure), both to `port` on loopback.
fn relay(port: u16) -> TernServer {
    let policy = format!(
        r#"local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool {{ name = 'data', path = '{{dir}}/spool/data', min_free_space = '1%' }}
  kumo.define_spool {{ name = 'meta', path = '{{dir}}/spool/meta', min_free_space = '1%' }}
  kumo.configure_local_logs {{ log_dir = '{{dir}}/logs', max_segment_duration = '1s' }}
  kumo.start_esmtp_listener {{ listen = '127.0.0.1:0', relay_hosts = {{ '127.0.0.1' }}, {NO_TRACE} }}
end)
kumo.on('get_egress_source', function(name) return kumo.make_egress_source {{ name = name }} end)
kumo.on('get_egress_pool', function(name)
  return kumo.make_egress_pool {{ name = name, entries = {{ {{ name = name }} }} }}
end)
kumo.on('get_queue_config', function(domain)
  local pool = 'loose'
  if domain == 'strict.test' then pool = 'strict' end
  return kumo.make_queue_config {{
    egress_pool = pool, retry_interval = '1h',
    protocol = {{ smtp = {{ mx_list = {{ '[127.0.0.1]:{port}' }} }} }},
  }}
end)
kumo.on('get_egress_path_config', function(domain, source, site)
  local tls = 'OpportunisticInsecure'
  if source == 'strict' then tls = 'Opportunistic' end
  return kumo.make_egress_path {{ prohibited_hosts = {{}}, enable_tls = tls }}
end)
"#
    );
    start_tern(policy)
}

fn inject(server: &TernServer, to: &str, body: &[u8]) {
    let mut smtp = server.smtp().unwrap();
    smtp.read_reply().unwrap();
    smtp.command("EHLO test").unwrap();
    let (code, text) = smtp.send_message("s@example.com", to, body).unwrap();
    assert_eq!(code, 250, "{text}");
    smtp.command("QUIT").unwrap();
}

#[test]
fn tern_to_tern_maildir_byte_for_byte_and_tls_modes() {
    let sink = maildir_sink();
    let relay = relay(sink.listener("smtp").port());
    // Folded header, dot-stuffed lines (as sent on the wire), 8-bit text,
    // trailing blank lines.
    let wire = b"Subject: bytes\r\n  folded\r\nFrom: s@example.com\r\n\r\n..leading dot\r\n.\t.tab\r\n\xc3\xa9t\xc3\xa9\r\n\r\n\r\n";
    let stored = b"Subject: bytes\r\n  folded\r\nFrom: s@example.com\r\n\r\n.leading dot\r\n.\t.tab\r\n\xc3\xa9t\xc3\xa9\r\n\r\n\r\n";
    inject(&relay, "user@loose.test", wire);
    inject(&relay, "user@strict.test", &body("strict"));

    let relay_logs = relay.dir().join("logs");
    let seen = wait_for_records(&relay_logs, Duration::from_secs(30), |r| {
        count(r, "Delivery") >= 1 && count(r, "TransientFailure") >= 1
    });
    // OpportunisticInsecure delivered over TLS.
    let delivered = of_type(&seen, "Delivery")[0];
    assert_eq!(delivered["recipient"], "user@loose.test");
    let cipher = delivered["tls_cipher"]
        .as_str()
        .expect("delivered over TLS");
    // Opportunistic verifies the self-signed certificate and fails.
    let failed = of_type(&seen, "TransientFailure")[0];
    assert_eq!(failed["recipient"], "user@strict.test");
    let text = failed["response"]["content"]
        .as_str()
        .unwrap()
        .to_lowercase();
    assert!(
        text.contains("certificate") || text.contains("tls"),
        "{failed}"
    );

    // The sink stored exactly the bytes that were sent.
    let maildir = sink
        .dir()
        .join("maildir")
        .join("loose.test")
        .join("user")
        .join("new");
    let mut files = Vec::new();
    for _ in 0..100 {
        files = std::fs::read_dir(&maildir)
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        if !files.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(std::fs::read(&files[0]).unwrap(), stored.to_vec());

    // The TLS fields of both sides agree.
    let sink_seen = wait_for_records(&sink.dir().join("logs"), Duration::from_secs(10), |r| {
        count(r, "Delivery") >= 1
    });
    let reception = of_type(&sink_seen, "Reception")[0];
    assert_eq!(reception["tls_cipher"], cipher, "{reception}");
    assert_eq!(
        reception["tls_protocol_version"],
        delivered["tls_protocol_version"]
    );
    let maildir_delivery = of_type(&sink_seen, "Delivery")[0];
    assert_eq!(maildir_delivery["recipient"], "user@loose.test");
}

#[test]
fn delivers_into_postfix_smtp_sink() {
    let port = free_port();
    let dump = tempfile::tempdir().unwrap();
    let _peer = Peer(
        Command::new("smtp-sink")
            .args(["-u", "nobody", "-d"])
            .arg(dump.path().join("%M.").display().to_string())
            .arg(format!("127.0.0.1:{port}"))
            .arg("10")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("smtp-sink (Debian package postfix)"),
    );
    let _ = std::fs::set_permissions(
        dump.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    );
    wait_for_port(port);
    let relay = relay(port);
    for i in 0..5 {
        inject(&relay, &format!("r{i}@postfix.test"), &body("to postfix"));
    }
    let seen = wait_for_records(&relay.dir().join("logs"), Duration::from_secs(30), |r| {
        count(r, "Delivery") >= 5
    });
    assert_eq!(count(&seen, "TransientFailure"), 0, "{seen:#?}");
    for record in of_type(&seen, "Delivery") {
        assert_eq!(record["response"]["code"], 250);
        assert_eq!(record["peer_address"]["addr"], "127.0.0.1");
    }
}

#[test]
fn delivers_into_python_aiosmtpd() {
    let port = free_port();
    let mut child = Command::new("python3")
        .args([
            "-m",
            "aiosmtpd",
            "-n",
            "-c",
            "aiosmtpd.handlers.Debugging",
            "-l",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 -m aiosmtpd (pip install aiosmtpd)");
    let stdout = child.stdout.take().unwrap();
    let _peer = Peer(child);
    wait_for_port(port);
    let relay = relay(port);
    inject(&relay, "someone@aiosmtpd.test", &body("hello aiosmtpd"));
    let seen = wait_for_records(&relay.dir().join("logs"), Duration::from_secs(30), |r| {
        count(r, "Delivery") >= 1
    });
    let delivery = of_type(&seen, "Delivery")[0];
    assert_eq!(delivery["response"]["code"], 250);
    drop(_peer);
    let printed = std::io::read_to_string(stdout).unwrap_or_default();
    assert!(printed.contains("Subject: hello aiosmtpd"), "{printed}");
}

#[test]
fn mx_routing_through_dnsmasq_on_loopback() {
    let sink = TestSink::start(SinkConfig::default());
    let dns_port = free_port();
    let _dns = Peer(
        Command::new("dnsmasq")
            .args([
                "--no-daemon",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--no-resolv",
                "--no-hosts",
                "--user=root",
                "--mx-host=dnsmasq.test,mx-b.dnsmasq.test,10",
                "--mx-host=dnsmasq.test,mx-a.dnsmasq.test,10",
                "--address=/mx-a.dnsmasq.test/127.0.0.1",
                "--address=/mx-b.dnsmasq.test/127.0.0.1",
            ])
            .arg(format!("--port={dns_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq (Debian package dnsmasq-base)"),
    );
    std::thread::sleep(Duration::from_millis(500));
    let policy = format!(
        r#"{head}
kumo.on('pre_init', function()
  kumo.dns.configure_resolver {{ name_servers = {{ '127.0.0.1:{dns_port}' }} }}
end)
kumo.on('get_egress_path_config', function(domain, source, site)
  return kumo.make_egress_path {{ prohibited_hosts = {{}}, smtp_port = {port}, enable_tls = 'Disabled' }}
end)
"#,
        head = policy_head("LocalDisk"),
        port = sink.port()
    );
    let server = start_tern(policy);
    inject(&server, "user@dnsmasq.test", &body("via dns"));
    let seen = wait_for_records(&server.dir().join("logs"), Duration::from_secs(30), |r| {
        count(r, "Delivery") >= 1
    });
    let delivery = of_type(&seen, "Delivery")[0];
    // Two hosts at one preference, sorted: the §9.3 site name.
    assert_eq!(
        delivery["site"],
        "unspecified->(mx-a|mx-b).dnsmasq.test@smtp_client"
    );
    assert_eq!(sink.stats().messages, 1);
}

#[test]
fn deferred_messages_survive_kill_9_and_are_retried() {
    let count_env = std::env::var("TERN_DEFERRED_MESSAGES").ok();
    let n: usize = count_env.and_then(|v| v.parse().ok()).unwrap_or(300);
    let port = free_port();
    let policy = format!(
        r#"{head}
kumo.on('get_queue_config', function()
  return kumo.make_queue_config {{
    retry_interval = '3s', max_retry_interval = '3s',
    protocol = {{ smtp = {{ mx_list = {{ '[127.0.0.1]:{port}' }} }} }},
  }}
end)
kumo.on('get_egress_path_config', function(domain, source, site)
  return kumo.make_egress_path {{ prohibited_hosts = {{}}, enable_tls = 'Disabled' }}
end)
"#,
        head = policy_head("RocksDB")
    );
    // Nothing listens on `port` yet: every first attempt fails.
    let server = Builder::new(policy.clone())
        .binary(env!("CARGO_BIN_EXE_tern"))
        .start()
        .unwrap();
    let recipients: Vec<String> = (0..n).map(|i| format!("r{i}@example.com")).collect();
    {
        let mut smtp = server.smtp().unwrap();
        smtp.read_reply().unwrap();
        smtp.command("EHLO test").unwrap();
        for rcpt in &recipients {
            let (code, text) = smtp
                .send_message("s@example.com", rcpt, &body("deferred"))
                .unwrap();
            assert_eq!(code, 250, "{text}");
        }
    }
    let logs = server.dir().join("logs");
    wait_for_records(&logs, Duration::from_secs(120), |r| {
        count(r, "TransientFailure") >= n
    });
    let dir = server.kill9();

    let sink = TestSink::start(SinkConfig {
        listen: format!("127.0.0.1:{port}").parse().unwrap(),
        ..SinkConfig::default()
    });
    let server = Builder::new(policy)
        .binary(env!("CARGO_BIN_EXE_tern"))
        .dir(dir)
        .start()
        .unwrap();
    let line = server
        .wait_for_line("spool recovery:", Duration::from_secs(30))
        .unwrap();
    assert!(line.contains(&format!("{n} messages queued")), "{line}");
    let seen = wait_for_records(&logs, Duration::from_secs(120), |r| {
        count(r, "Delivery") >= n
    });
    let mut delivered: Vec<&str> = of_type(&seen, "Delivery")
        .iter()
        .map(|r| r["recipient"].as_str().unwrap())
        .collect();
    delivered.sort_unstable();
    delivered.dedup();
    assert_eq!(delivered.len(), n);
    assert_eq!(sink.stats().messages, n as u64);
}

/// An SMTP server that greets, answers EHLO, then hangs up at MAIL FROM.
const HANG_UP_AT_MAIL: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', int(sys.argv[1])))
s.listen(16)
while True:
    c, _ = s.accept()
    c.sendall(b'220 flaky ESMTP\r\n')
    f = c.makefile('rb')
    for line in f:
        if line.upper().startswith(b'EHLO'):
            c.sendall(b'250-flaky\r\n250 PIPELINING\r\n')
        else:
            break
    # The file object keeps the socket open after close(): shut it down
    # (which fails if the client has already gone).
    try:
        c.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    f.close()
    c.close()
"#;

#[test]
fn try_next_host_on_transport_error_moves_the_message_on() {
    let sink = TestSink::start(SinkConfig::default());
    let flaky_port = free_port();
    let _flaky = Peer(
        Command::new("python3")
            .args(["-c", HANG_UP_AT_MAIL, &flaky_port.to_string()])
            .spawn()
            .unwrap(),
    );
    wait_for_port(flaky_port);
    let policy = format!(
        r#"{head}
kumo.on('get_egress_source', function(name) return kumo.make_egress_source {{ name = name }} end)
kumo.on('get_egress_pool', function(name)
  return kumo.make_egress_pool {{ name = name, entries = {{ {{ name = name }} }} }}
end)
kumo.on('get_queue_config', function(domain)
  -- One source per domain, so each gets its own ready queue and path.
  return kumo.make_queue_config {{
    retry_interval = '1h', egress_pool = domain,
    protocol = {{ smtp = {{ mx_list = {{ '[127.0.0.1]:{flaky_port}', '[127.0.0.1]:{port}' }} }} }},
  }}
end)
kumo.on('get_egress_path_config', function(domain, source)
  return kumo.make_egress_path {{
    prohibited_hosts = {{}}, enable_tls = 'Disabled', connection_limit = 1,
    try_next_host_on_transport_error = (source == 'next.test'),
  }}
end)
"#,
        head = policy_head("LocalDisk"),
        port = sink.port()
    );
    let server = start_tern(policy);
    inject(&server, "a@next.test", &body("moves on"));
    inject(&server, "b@stays.test", &body("fails"));
    let logs = server.dir().join("logs");
    let seen = wait_for_records(&logs, Duration::from_secs(30), |r| {
        count(r, "Delivery") >= 1 && count(r, "TransientFailure") >= 1
    });
    // With the option: delivered through the second host, nothing logged
    // for the hang-up.
    let delivered = of_type(&seen, "Delivery");
    assert_eq!(delivered.len(), 1, "{seen:#?}");
    assert_eq!(delivered[0]["recipient"], "a@next.test");
    assert_eq!(delivered[0]["peer_address"]["addr"], "127.0.0.1");
    // Without it: a TransientFailure for the hang-up.
    let failed = of_type(&seen, "TransientFailure");
    assert!(
        failed.iter().all(|r| r["recipient"] == "b@stays.test"),
        "{seen:#?}"
    );
}
