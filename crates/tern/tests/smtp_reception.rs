//! ESMTP reception against the real server: replies, durability in the
//! spool, Reception/Rejection records, and bad input.

use std::process::Command;
use std::time::Duration;
use tern_testkit::{Builder, TernServer, minimal_init};

fn policy(kind: &str, extra_listener: &str) -> String {
    format!(
        r#"local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool {{ name = 'data', path = '{{dir}}/spool/data', kind = '{kind}', min_free_space = '1%' }}
  kumo.define_spool {{ name = 'meta', path = '{{dir}}/spool/meta', kind = '{kind}', min_free_space = '1%' }}
  kumo.configure_local_logs {{ log_dir = '{{dir}}/logs', meta = {{ 'tenant' }} }}
  kumo.start_esmtp_listener {{ listen = '127.0.0.1:0', hostname = 'mx.test' {extra_listener} }}
end)
kumo.on('smtp_server_message_received', function(msg, conn_meta)
  msg:set_meta('tenant', msg:get_first_named_header_value('X-Tenant') or 'none')
  if msg:get_first_named_header_value('Subject') == 'reject me' then
    kumo.reject(552, '5.6.0 rejected by policy')
  end
end)
"#
    )
}

fn start(kind: &str) -> TernServer {
    Builder::new(policy(kind, ""))
        .binary(env!("CARGO_BIN_EXE_tern"))
        .start()
        .unwrap()
}

const MESSAGE: &str = "From: a@example.com\r\nTo: b@example.com\r\nSubject: hello\r\nX-Tenant: acme\r\n\r\nline one\r\n..leading dot\r\n";

fn ids_from(reply: &str) -> Vec<String> {
    reply
        .split("ids=")
        .nth(1)
        .map(|ids| ids.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

fn read_records(dir: &std::path::Path) -> Vec<serde_json::Value> {
    let mut records = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir.join("logs"))
        .unwrap()
        .flatten()
        .collect();
    entries.sort_by_key(|e| e.path());
    for entry in entries {
        let out = Command::new("zstd")
            .arg("-dc")
            .arg(entry.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "zstd could not read {:?}",
            entry.path()
        );
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            records.push(serde_json::from_str(line).unwrap());
        }
    }
    records
}

fn open_spool(dir: &std::path::Path, name: &str, kind: &str) -> tern_spool::Spool {
    let kind = match kind {
        "RocksDB" => tern_spool::SpoolKind::RocksDB,
        _ => tern_spool::SpoolKind::LocalDisk,
    };
    let config = tern_spool::SpoolConfig::new(name, dir.join("spool").join(name), kind);
    tern_spool::Spool::open(&config).unwrap()
}

fn accepted_message_is_durable_and_logged(kind: &str) {
    let server = start(kind);
    let mut smtp = server.smtp().unwrap();
    let (code, banner) = smtp.read_reply().unwrap();
    assert_eq!((code, banner.trim()), (220, "220 mx.test KumoMTA"));
    let (code, ehlo) = smtp.command("EHLO client.test").unwrap();
    assert_eq!(code, 250);
    assert!(
        ehlo.starts_with("250-mx.test Aloha client.test\r\n"),
        "{ehlo}"
    );
    for ext in [
        "PIPELINING",
        "ENHANCEDSTATUSCODES",
        "8BITMIME",
        "SMTPUTF8",
        "STARTTLS",
    ] {
        assert!(ehlo.contains(ext), "{ext} missing: {ehlo}");
    }
    assert_eq!(smtp.command("MAIL FROM:<a@example.com>").unwrap().0, 250);
    assert_eq!(smtp.command("RCPT TO:<b@example.com>").unwrap().0, 250);
    assert_eq!(smtp.command("RCPT TO:<c@Example.ORG>").unwrap().0, 250);
    assert_eq!(smtp.command("DATA").unwrap().0, 354);
    smtp.send_raw(MESSAGE.as_bytes()).unwrap();
    let (code, reply) = smtp.command(".").unwrap();
    assert_eq!(code, 250, "{reply}");
    assert!(reply.starts_with("250 OK ids="), "{reply}");
    let ids = ids_from(&reply);
    assert_eq!(ids.len(), 2, "one message per recipient: {reply}");
    assert_eq!(smtp.command("QUIT").unwrap().0, 221);

    let dir = server.stop();
    let data = open_spool(dir.path(), "data", kind);
    let meta = open_spool(dir.path(), "meta", kind);
    let rt = tokio::runtime::Runtime::new().unwrap();
    for id in &ids {
        let id: tern_types::SpoolId = id.parse().unwrap();
        let bytes = rt.block_on(data.load(id)).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.starts_with("X-KumoRef: ") || text.starts_with("Received: "),
            "{text}"
        );
        assert!(
            text.contains("Received: from client.test (127.0.0.1)\r\n  by mx.test"),
            "{text}"
        );
        assert!(
            text.ends_with("line one\r\n.leading dot\r\n"),
            "dot-unstuffed body intact: {text:?}"
        );
        let meta_json: serde_json::Value =
            serde_json::from_slice(&rt.block_on(meta.load(id)).unwrap()).unwrap();
        assert_eq!(meta_json["meta"]["tenant"], "acme");
        assert_eq!(meta_json["sender"], "a@example.com");
    }
    drop((data, meta));

    let records = read_records(dir.path());
    let receptions: Vec<_> = records
        .iter()
        .filter(|r| r["type"] == "Reception")
        .collect();
    assert_eq!(receptions.len(), 2, "{records:?}");
    let r = receptions
        .iter()
        .find(|r| r["recipient"] == "c@Example.ORG")
        .unwrap();
    // the policy set the tenant from X-Tenant
    assert_eq!(r["queue"], "acme@example.org");
    assert_eq!(r["site"], "");
    assert_eq!(r["reception_protocol"], "ESMTP");
    assert_eq!(r["peer_address"]["name"], "client.test");
    assert_eq!(r["peer_address"]["addr"], "127.0.0.1");
    assert_eq!(r["meta"], serde_json::json!({"tenant": "acme"}));
    assert_eq!(r["response"]["code"], 250);
    assert!(ids.contains(&r["id"].as_str().unwrap().to_string()));
}

#[test]
fn local_disk_reception_is_durable_and_logged() {
    accepted_message_is_durable_and_logged("LocalDisk");
}

#[test]
fn rocksdb_reception_is_durable_and_logged() {
    accepted_message_is_durable_and_logged("RocksDB");
}

#[test]
fn python_smtplib_sends_and_policy_rejects() {
    let server = start("LocalDisk");
    let addr = server.listener("smtp");
    let script = format!(
        r#"
import smtplib, sys
s = smtplib.SMTP('127.0.0.1', {port})
s.ehlo('py.test')
ok = s.sendmail('x@example.com', ['y@example.net'], 'Subject: fine\r\n\r\nbody\r\n')
try:
    s.sendmail('x@example.com', ['y@example.net'], 'Subject: reject me\r\n\r\nbody\r\n')
    print('NOT REJECTED')
except smtplib.SMTPDataError as e:
    print('rejected', e.smtp_code, e.smtp_error.decode())
s.quit()
"#,
        port = addr.port()
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("rejected 552 5.6.0 rejected by policy"),
        "{text}"
    );
    let dir = server.stop();
    let records = read_records(dir.path());
    assert_eq!(
        records.iter().filter(|r| r["type"] == "Reception").count(),
        1
    );
    let rejection = records
        .iter()
        .find(|r| r["type"] == "Rejection")
        .expect("a Rejection record");
    assert_eq!(rejection["response"]["code"], 552);
    assert_eq!(rejection["id"], "");
}

#[test]
fn swaks_delivers_a_message() {
    let server = start("LocalDisk");
    let addr = server.listener("smtp");
    let out = Command::new("swaks")
        .args([
            "--server",
            &addr.ip().to_string(),
            "--port",
            &addr.port().to_string(),
        ])
        .args([
            "--from",
            "sender@example.com",
            "--to",
            "rcpt@example.com",
            "--helo",
            "swaks.test",
        ])
        .output()
        .expect("swaks is installed by scripts/setup.sh");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("<-  250 OK ids="), "{text}");
}

#[test]
fn bad_input_gets_the_right_replies() {
    let server = start("LocalDisk");
    let mut smtp = server.smtp().unwrap();
    smtp.read_reply().unwrap();
    // commands out of order
    assert!(
        smtp.command("RCPT TO:<a@example.com>")
            .unwrap()
            .1
            .starts_with("503 5.5.0 MAIL FROM must be issued first")
    );
    assert!(
        smtp.command("DATA")
            .unwrap()
            .1
            .starts_with("503 5.5.0 MAIL FROM must be issued first")
    );
    assert!(
        smtp.command("VRFY someone")
            .unwrap()
            .1
            .starts_with("502 5.5.1 Command unimplemented")
    );
    assert!(
        smtp.command("FROBNICATE")
            .unwrap()
            .1
            .starts_with("502 5.5.1")
    );
    // non-UTF-8 command
    smtp.send_raw(b"EHLO \xff\xfe\r\n").unwrap();
    assert!(
        smtp.read_reply()
            .unwrap()
            .1
            .starts_with("501 5.5.2 Invalid UTF-8 in command")
    );
    // over-long command line
    smtp.send_raw(format!("NOOP {}\r\n", "x".repeat(2000)).as_bytes())
        .unwrap();
    assert!(
        smtp.read_reply()
            .unwrap()
            .1
            .starts_with("500 5.2.3 line too long")
    );
    assert_eq!(smtp.command("MAIL FROM:<a@example.com>").unwrap().0, 250);
    assert!(
        smtp.command("MAIL FROM:<a@example.com>")
            .unwrap()
            .1
            .starts_with("503 5.5.0 MAIL FROM already issued")
    );
    assert!(
        smtp.command("RCPT TO:<x@example.com:2025>")
            .unwrap()
            .1
            .starts_with("501 5.1.3")
    );
    assert!(
        smtp.command("DATA")
            .unwrap()
            .1
            .starts_with("503 5.5.0 RCPT TO must be issued first")
    );
    assert_eq!(smtp.command("RCPT TO:<x@example.com>").unwrap().0, 250);
    assert_eq!(smtp.command("DATA").unwrap().0, 354);
    // DATA line over 998 bytes
    smtp.send_raw(format!("Subject: long\r\n\r\n{}\r\n", "y".repeat(1200)).as_bytes())
        .unwrap();
    assert!(
        smtp.command(".")
            .unwrap()
            .1
            .starts_with("500 5.2.3 line too long")
    );
    // the session is still usable
    assert_eq!(smtp.command("NOOP").unwrap().0, 250);
}

#[test]
fn smuggled_terminator_never_ends_a_message() {
    let server = start("LocalDisk");
    let mut smtp = server.smtp().unwrap();
    smtp.read_reply().unwrap();
    smtp.command("EHLO c").unwrap();
    smtp.command("MAIL FROM:<a@example.com>").unwrap();
    smtp.command("RCPT TO:<b@example.com>").unwrap();
    assert_eq!(smtp.command("DATA").unwrap().0, 354);
    // <LF>.<LF> followed by a smuggled second transaction
    smtp.send_raw(b"Subject: s\r\n\r\nhello\n.\nMAIL FROM:<evil@example.com>\r\n")
        .unwrap();
    let (code, reply) = smtp.command(".").unwrap();
    assert_eq!(
        code, 552,
        "bare LF is refused under the default Deny: {reply}"
    );
    assert!(reply.contains("5.6.0"), "{reply}");
    // exactly one reply came back: the smuggled MAIL was part of the data
    assert_eq!(smtp.command("NOOP").unwrap().0, 250);
}

#[test]
fn client_disconnecting_mid_data_leaves_nothing() {
    let server = start("LocalDisk");
    let mut smtp = server.smtp().unwrap();
    smtp.read_reply().unwrap();
    smtp.command("EHLO c").unwrap();
    smtp.command("MAIL FROM:<a@example.com>").unwrap();
    smtp.command("RCPT TO:<b@example.com>").unwrap();
    smtp.command("DATA").unwrap();
    smtp.send_raw(b"Subject: partial\r\n\r\nnot finished")
        .unwrap();
    drop(smtp);
    std::thread::sleep(Duration::from_millis(200));
    // the server keeps serving others
    let mut other = server.smtp().unwrap();
    assert_eq!(other.read_reply().unwrap().0, 220);
    let dir = server.stop();
    let records = read_records(dir.path());
    assert!(
        records.iter().all(|r| r["type"] != "Reception"),
        "{records:?}"
    );
}

#[test]
fn idle_client_is_timed_out() {
    let server = Builder::new(policy("LocalDisk", ", client_timeout = '1s'"))
        .binary(env!("CARGO_BIN_EXE_tern"))
        .start()
        .unwrap();
    let mut smtp = server.smtp().unwrap();
    smtp.read_reply().unwrap();
    let (code, text) = smtp.read_reply().unwrap();
    assert_eq!(code, 421, "{text}");
    assert!(text.contains("4.3.2 mx.test idle too long"), "{text}");
    assert!(smtp.is_closed());
}

#[test]
fn oversized_message_is_refused() {
    let server = Builder::new(policy("LocalDisk", ", max_message_size = 1000"))
        .binary(env!("CARGO_BIN_EXE_tern"))
        .start()
        .unwrap();
    let mut smtp = server.smtp().unwrap();
    smtp.read_reply().unwrap();
    smtp.command("EHLO c").unwrap();
    smtp.command("MAIL FROM:<a@example.com>").unwrap();
    smtp.command("RCPT TO:<b@example.com>").unwrap();
    smtp.command("DATA").unwrap();
    for _ in 0..50 {
        smtp.send_raw(format!("{}\r\n", "z".repeat(100)).as_bytes())
            .unwrap();
    }
    let (code, text) = smtp.command(".").unwrap();
    assert_eq!(code, 552, "{text}");
    assert!(text.contains("5.3.4 message too big"), "{text}");
}

#[test]
fn relaying_is_refused_for_untrusted_peers() {
    let server = Builder::new(policy("LocalDisk", ", relay_hosts = {}"))
        .binary(env!("CARGO_BIN_EXE_tern"))
        .start()
        .unwrap();
    let mut smtp = server.smtp().unwrap();
    smtp.read_reply().unwrap();
    smtp.command("EHLO c").unwrap();
    smtp.command("MAIL FROM:<a@example.com>").unwrap();
    let (code, text) = smtp.command("RCPT TO:<b@example.com>").unwrap();
    assert_eq!(code, 550, "{text}");
    assert!(
        text.contains("5.7.1 relaying not permitted for 127.0.0.1:"),
        "{text}"
    );
}

#[test]
fn max_connections_is_enforced() {
    let server = Builder::new(policy("LocalDisk", ", max_connections = 2"))
        .binary(env!("CARGO_BIN_EXE_tern"))
        .start()
        .unwrap();
    let mut a = server.smtp().unwrap();
    let mut b = server.smtp().unwrap();
    assert_eq!(a.read_reply().unwrap().0, 220);
    assert_eq!(b.read_reply().unwrap().0, 220);
    let mut c = server.smtp().unwrap();
    let (code, text) = c.read_reply().unwrap();
    assert_eq!(code, 421, "{text}");
    assert!(text.contains("too many concurrent sessions"), "{text}");
    drop(a);
    std::thread::sleep(Duration::from_millis(200));
    let mut d = server.smtp().unwrap();
    assert_eq!(d.read_reply().unwrap().0, 220);
}

#[test]
fn many_idle_connections_do_not_block_others() {
    let server = start("LocalDisk");
    let addr = server.listener("smtp");
    let idle: Vec<_> = (0..300)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    let mut smtp = server.smtp().unwrap();
    assert_eq!(smtp.read_reply().unwrap().0, 220);
    assert_eq!(smtp.command("NOOP").unwrap().0, 250);
    drop(idle);
}

#[test]
fn minimal_init_helper_policies_start() {
    let server = Builder::new(minimal_init(
        "  kumo.start_esmtp_listener { listen = '127.0.0.1:0' }",
    ))
    .binary(env!("CARGO_BIN_EXE_tern"))
    .start()
    .unwrap();
    let mut smtp = server.smtp().unwrap();
    assert_eq!(smtp.read_reply().unwrap().0, 220);
}

#[test]
fn tern_logs_prints_the_records_of_a_running_server() {
    let server = start("LocalDisk");
    let mut smtp = server.smtp().unwrap();
    smtp.read_reply().unwrap();
    smtp.command("EHLO c").unwrap();
    assert_eq!(
        smtp.send_message(
            "a@example.com",
            "b@example.com",
            b"Subject: x\r\n\r\nbody\r\n"
        )
        .unwrap()
        .0,
        250
    );
    assert_eq!(smtp.command("VRFY x").unwrap().0, 502);
    let logs = server.dir().join("logs");
    // the open segment is readable while the server runs (flushed within ~1 s)
    let mut lines = Vec::new();
    for _ in 0..50 {
        let out = Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(["logs", "--type", "Reception"])
            .arg(&logs)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        lines = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        if !lines.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(lines.len(), 1, "{lines:?}");
    let record: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(record["type"], "Reception");
    assert_eq!(record["recipient"], "b@example.com");
}

#[test]
fn listener_domains_grant_relaying() {
    let policy = r#"local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool { name = 'data', path = '{dir}/spool/data', min_free_space = '1%' }
  kumo.define_spool { name = 'meta', path = '{dir}/spool/meta', min_free_space = '1%' }
  kumo.start_esmtp_listener { listen = '127.0.0.1:0', relay_hosts = {} }
end)
kumo.on('get_listener_domain', function(domain, listener, conn_meta)
  if domain == 'inbound.example' then
    return kumo.make_listener_domain { relay_to = true }
  end
end)
"#;
    let server = Builder::new(policy)
        .binary(env!("CARGO_BIN_EXE_tern"))
        .start()
        .unwrap();
    let mut smtp = server.smtp().unwrap();
    smtp.read_reply().unwrap();
    smtp.command("EHLO c").unwrap();
    smtp.command("MAIL FROM:<a@example.com>").unwrap();
    assert_eq!(smtp.command("RCPT TO:<x@inbound.example>").unwrap().0, 250);
    assert_eq!(
        smtp.command("RCPT TO:<x@elsewhere.example>").unwrap().0,
        550
    );
}

/// Started under a soft limit of 256 open files (the usual default is
/// 1024), the server raises it to the hard limit, so 400 clients are all
/// served instead of `accept` failing with EMFILE.
#[test]
fn the_open_files_limit_is_raised_at_startup() {
    let wrapper_dir = tempfile::tempdir().unwrap();
    let wrapper = wrapper_dir.path().join("tern-low-nofile");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nulimit -Sn 256 || exit 97\nexec '{}' \"$@\"\n",
            env!("CARGO_BIN_EXE_tern")
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let server = Builder::new(policy("LocalDisk", ""))
        .binary(&wrapper)
        .start()
        .unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (soft, hard) = (fields[3], fields[4]);
    assert_eq!(soft, hard, "{line}");
    assert_ne!(soft, "256", "{line}");

    let addr = server.listener("smtp");
    let mut clients: Vec<_> = (0..400)
        .map(|_| tern_testkit::SmtpClient::connect(addr).unwrap())
        .collect();
    for client in &mut clients {
        assert_eq!(client.read_reply().unwrap().0, 220);
    }
}
