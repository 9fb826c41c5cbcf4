//! ESMTP reception against the real server: replies, durability in the
//! spool, Reception/Rejection records, and bad input.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};
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

/// Every id stored in spool `name` (sorted); call after `server.stop()`.
fn spooled_ids(dir: &std::path::Path, name: &str, kind: &str) -> Vec<String> {
    let spool = open_spool(dir, name, kind);
    let mut entries = spool.enumerate();
    let mut ids = Vec::new();
    while let Some(entry) = entries.blocking_next() {
        ids.push(entry.unwrap().id.to_string());
    }
    ids.sort();
    ids
}

const NOOP_REPLY: &str = "250 the goggles do nothing\r\n";

/// Sends each command in turn and checks its whole reply (given without
/// the final CRLF).
fn expect_replies(smtp: &mut tern_testkit::SmtpClient, exchanges: &[(&str, &str)]) {
    for (command, reply) in exchanges {
        assert_eq!(
            smtp.command(command).unwrap().1,
            format!("{reply}\r\n"),
            "after {command}"
        );
    }
}

/// A whole transaction from a fresh client (banner, EHLO, MAIL, RCPT,
/// DATA, QUIT): the id the server gave the message.
fn send_control_message(server: &TernServer, rcpt: &str) -> String {
    let mut smtp = server.smtp().unwrap();
    assert_eq!(smtp.read_reply().unwrap().1, "220 mx.test KumoMTA\r\n");
    assert_eq!(smtp.command("EHLO control.test").unwrap().0, 250);
    let (code, reply) = smtp
        .send_message(
            "a@example.com",
            rcpt,
            b"Subject: control\r\n\r\ncomplete\r\n",
        )
        .unwrap();
    assert_eq!(code, 250, "{reply}");
    let ids = ids_from(&reply);
    assert_eq!(ids.len(), 1, "{reply}");
    assert_eq!(reply, format!("250 OK ids={}\r\n", ids[0]));
    assert_eq!(smtp.command("QUIT").unwrap().0, 221);
    ids[0].clone()
}

/// After `server.stop()`: the control message sent to
/// `control@example.com` is the only one received, that is the only
/// Reception record and the only id in both LocalDisk spools.
fn assert_only_the_control_was_received(dir: &std::path::Path, control: &str) {
    let records = read_records(dir);
    let receptions = common::of_type(&records, "Reception");
    assert_eq!(receptions.len(), 1, "{records:?}");
    assert_eq!(receptions[0]["id"], control);
    assert_eq!(receptions[0]["recipient"], "control@example.com");
    let expected = vec![control.to_string()];
    assert_eq!(spooled_ids(dir, "data", "LocalDisk"), expected);
    assert_eq!(spooled_ids(dir, "meta", "LocalDisk"), expected);
}

/// Wait (while the server runs) until `n` Reception records were logged.
fn wait_for_receptions(server: &TernServer, n: usize) {
    common::wait_for_records(&server.dir().join("logs"), Duration::from_secs(60), |r| {
        common::count(r, "Reception") >= n
    });
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
    let receptions = common::of_type(&records, "Reception");
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

/// Each kind of bad input gets its exact reply (§3.4, §3.1
/// `line_length_hard_limit`), a DATA line may hold 998 bytes but not 999,
/// the session keeps working after every refusal, and the server keeps
/// serving other clients.
#[test]
fn bad_input_gets_the_right_replies() {
    let server = start("LocalDisk");
    let mut smtp = server.smtp().unwrap();
    smtp.read_reply().unwrap();
    // commands out of order, and unknown verbs
    expect_replies(
        &mut smtp,
        &[
            (
                "RCPT TO:<a@example.com>",
                "503 5.5.0 MAIL FROM must be issued first",
            ),
            ("DATA", "503 5.5.0 MAIL FROM must be issued first"),
            ("VRFY someone", "502 5.5.1 Command unimplemented"),
            ("FROBNICATE", "502 5.5.1 Command unimplemented"),
        ],
    );
    // non-UTF-8 command
    smtp.send_raw(b"EHLO \xff\xfe\r\n").unwrap();
    assert_eq!(
        smtp.read_reply().unwrap().1,
        "501 5.5.2 Invalid UTF-8 in command\r\n"
    );
    // over-long command line: one reply, and the rest of the line is not
    // read as further commands
    smtp.send_raw(format!("NOOP {}\r\n", "x".repeat(2000)).as_bytes())
        .unwrap();
    assert_eq!(smtp.read_reply().unwrap().1, "500 5.2.3 line too long\r\n");
    expect_replies(
        &mut smtp,
        &[
            ("NOOP", NOOP_REPLY.trim_end()),
            ("MAIL FROM:<a@example.com>", "250 OK <a@example.com>"),
            (
                "MAIL FROM:<a@example.com>",
                "503 5.5.0 MAIL FROM already issued; you must RSET first",
            ),
            (
                "RCPT TO:<x@example.com:2025>",
                "501 5.1.3 Invalid recipient address syntax",
            ),
            ("DATA", "503 5.5.0 RCPT TO must be issued first"),
        ],
    );
    assert_eq!(smtp.command("RCPT TO:<x@example.com>").unwrap().0, 250);
    assert_eq!(smtp.command("DATA").unwrap().0, 354);
    // DATA line over 998 bytes
    smtp.send_raw(format!("Subject: long\r\n\r\n{}\r\n", "y".repeat(1200)).as_bytes())
        .unwrap();
    assert_eq!(smtp.command(".").unwrap().1, "500 5.2.3 line too long\r\n");
    // the session is still usable
    assert_eq!(smtp.command("NOOP").unwrap().1, NOOP_REPLY);

    // the boundary: 998 bytes (without the CRLF) pass, 999 do not
    let mut accepted = Vec::new();
    for (len, subject) in [(998, "exactly 998"), (999, "one too many")] {
        assert_eq!(smtp.command("MAIL FROM:<a@example.com>").unwrap().0, 250);
        assert_eq!(smtp.command("RCPT TO:<x@example.com>").unwrap().0, 250);
        assert_eq!(smtp.command("DATA").unwrap().0, 354);
        smtp.send_raw(format!("Subject: {subject}\r\n\r\n{}\r\n", "y".repeat(len)).as_bytes())
            .unwrap();
        let (code, reply) = smtp.command(".").unwrap();
        if len == 998 {
            assert_eq!(code, 250, "{reply}");
            let ids = ids_from(&reply);
            assert_eq!(reply, format!("250 OK ids={}\r\n", ids[0]));
            accepted.extend(ids);
        } else {
            assert_eq!(reply, "500 5.2.3 line too long\r\n");
        }
        // exactly one reply per message: the next one is the NOOP's
        assert_eq!(smtp.command("NOOP").unwrap().1, NOOP_REPLY);
    }
    // the transaction was consumed by the refusal (no RSET needed)
    assert_eq!(
        smtp.command("MAIL FROM:<a@example.com>").unwrap().1,
        "250 OK <a@example.com>\r\n"
    );
    assert_eq!(smtp.command("QUIT").unwrap().0, 221);
    // another client is served afterwards
    accepted.push(send_control_message(&server, "other@example.com"));

    let dir = server.stop();
    // only the 998-byte message and the other client's were received
    let records = read_records(dir.path());
    let mut received: Vec<String> = records
        .iter()
        .filter(|r| r["type"] == "Reception")
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    received.sort();
    accepted.sort();
    assert_eq!(received, accepted, "{records:?}");
    assert_eq!(spooled_ids(dir.path(), "data", "LocalDisk"), accepted);
}

/// The DATA ends only at `<CRLF>.<CRLF>`: a `<LF>.<LF>` followed by a
/// whole second transaction stays part of the first message, whatever
/// `invalid_line_endings` (`mode`) then does with the bare LFs. Exactly one
/// reply answers the DATA, so none of the smuggled commands was executed.
fn smuggled_terminator_never_ends_a_message(mode: &str) {
    let extra = format!(", invalid_line_endings = '{mode}'");
    let server = Builder::new(policy("LocalDisk", &extra))
        .binary(env!("CARGO_BIN_EXE_tern"))
        .start()
        .unwrap();
    let mut smtp = server.smtp().unwrap();
    smtp.read_reply().unwrap();
    smtp.command("EHLO c").unwrap();
    assert_eq!(smtp.command("MAIL FROM:<a@example.com>").unwrap().0, 250);
    assert_eq!(smtp.command("RCPT TO:<b@example.com>").unwrap().0, 250);
    assert_eq!(smtp.command("DATA").unwrap().0, 354);
    // <LF>.<LF> followed by a smuggled second transaction
    const SMUGGLED: &str = "MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n";
    smtp.send_raw(format!("Subject: s\r\n\r\nhello\n.\n{SMUGGLED}").as_bytes())
        .unwrap();
    let (code, reply) = smtp.command(".").unwrap();
    // Exactly one reply came back for the whole DATA: had the message ended
    // at <LF>.<LF>, the replies to the smuggled MAIL, RCPT and DATA would
    // be waiting, and these NOOPs would read them.
    assert_eq!(smtp.command("NOOP").unwrap().1, NOOP_REPLY);
    assert_eq!(smtp.command("NOOP").unwrap().1, NOOP_REPLY);
    assert_eq!(smtp.command("QUIT").unwrap().0, 221);

    let dir = server.stop();
    let records = read_records(dir.path());
    let receptions = common::of_type(&records, "Reception");
    if mode == "Deny" {
        assert_eq!(
            reply, "552 5.6.0 message data must use CRLF for line endings\r\n",
            "bare LF is refused under Deny"
        );
        assert!(receptions.is_empty(), "{records:?}");
        assert!(
            records
                .iter()
                .any(|r| r["type"] == "Rejection" && r["response"]["code"] == 552),
            "{records:?}"
        );
        assert!(spooled_ids(dir.path(), "data", "LocalDisk").is_empty());
        return;
    }
    // one message, for the real recipient only, holding the smuggled text
    assert_eq!(code, 250, "{reply}");
    let ids = ids_from(&reply);
    assert_eq!(ids.len(), 1, "{reply}");
    assert_eq!(reply, format!("250 OK ids={}\r\n", ids[0]));
    assert_eq!(receptions.len(), 1, "{records:?}");
    assert_eq!(receptions[0]["id"], ids[0].as_str());
    assert_eq!(receptions[0]["recipient"], "b@example.com");
    assert_eq!(spooled_ids(dir.path(), "data", "LocalDisk"), ids);
    let data = open_spool(dir.path(), "data", "LocalDisk");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let id: tern_types::SpoolId = ids[0].parse().unwrap();
    let text = String::from_utf8(rt.block_on(data.load(id)).unwrap()).unwrap();
    let body = match mode {
        "Fix" => format!("\r\n\r\nhello\r\n.\r\n{SMUGGLED}"),
        _ => format!("\r\n\r\nhello\n.\n{SMUGGLED}"),
    };
    assert!(text.ends_with(&body), "{text:?}");
}

#[test]
fn smuggled_terminator_is_refused_under_deny() {
    smuggled_terminator_never_ends_a_message("Deny");
}

#[test]
fn smuggled_terminator_stays_in_the_message_under_allow() {
    smuggled_terminator_never_ends_a_message("Allow");
}

#[test]
fn smuggled_terminator_stays_in_the_message_under_fix() {
    smuggled_terminator_never_ends_a_message("Fix");
}

/// A client that vanishes mid-DATA leaves no Reception and nothing in the
/// spool, while a complete message from another client on the same server
/// is received, logged and spooled (so the log and spool checks can see a
/// message when there is one).
#[test]
fn client_disconnecting_mid_data_leaves_nothing() {
    let server = start("LocalDisk");
    let mut smtp = server.smtp().unwrap();
    smtp.read_reply().unwrap();
    assert_eq!(smtp.command("EHLO c").unwrap().0, 250);
    assert_eq!(smtp.command("MAIL FROM:<a@example.com>").unwrap().0, 250);
    assert_eq!(
        smtp.command("RCPT TO:<aborted@example.com>").unwrap().0,
        250
    );
    assert_eq!(smtp.command("DATA").unwrap().0, 354);
    smtp.send_raw(b"Subject: partial\r\n\r\nnot finished")
        .unwrap();
    drop(smtp);
    // the server keeps serving others: a whole transaction, logged
    let control = send_control_message(&server, "control@example.com");
    wait_for_receptions(&server, 1);
    let dir = server.stop();
    // nothing of the aborted message was logged or spooled
    assert_only_the_control_was_received(dir.path(), &control);
}

/// An idle client gets `421 4.3.2 <hostname> idle too long` after
/// `client_timeout` and is disconnected; meanwhile another client is
/// served in full.
#[test]
fn idle_client_is_timed_out() {
    let server = Builder::new(policy("LocalDisk", ", client_timeout = '2s'"))
        .binary(env!("CARGO_BIN_EXE_tern"))
        .start()
        .unwrap();
    let connected = Instant::now();
    let mut smtp = server.smtp().unwrap();
    smtp.read_reply().unwrap();
    // Another client completes a transaction while this one idles (no
    // upper bound on its time: a shared CI machine can be slow to sync).
    send_control_message(&server, "other@example.com");
    let (code, text) = smtp.read_reply().unwrap();
    assert_eq!(code, 421, "{text}");
    assert_eq!(text, "421 4.3.2 mx.test idle too long\r\n");
    assert!(
        connected.elapsed() >= Duration::from_millis(1900),
        "timed out after only {:?}",
        connected.elapsed()
    );
    assert!(smtp.is_closed());
}

/// `client_timeout` also applies inside DATA: a client that stalls after
/// some body lines gets `421 4.3.2 <hostname> idle too long`, is
/// disconnected, and nothing of its message is received or spooled (a
/// complete message from another client is, as a control).
#[test]
fn client_stalling_in_data_is_timed_out() {
    let server = Builder::new(policy("LocalDisk", ", client_timeout = '1s'"))
        .binary(env!("CARGO_BIN_EXE_tern"))
        .start()
        .unwrap();
    let mut smtp = server.smtp().unwrap();
    smtp.read_reply().unwrap();
    assert_eq!(smtp.command("EHLO c").unwrap().0, 250);
    assert_eq!(smtp.command("MAIL FROM:<a@example.com>").unwrap().0, 250);
    assert_eq!(
        smtp.command("RCPT TO:<stalled@example.com>").unwrap().0,
        250
    );
    assert_eq!(smtp.command("DATA").unwrap().0, 354);
    smtp.send_raw(b"Subject: stalled\r\n\r\nline one\r\nline two\r\n")
        .unwrap();
    let (code, text) = smtp.read_reply().unwrap();
    assert_eq!(code, 421, "{text}");
    assert_eq!(text, "421 4.3.2 mx.test idle too long\r\n");
    assert!(smtp.is_closed());

    let control = send_control_message(&server, "control@example.com");
    wait_for_receptions(&server, 1);
    let dir = server.stop();
    assert_only_the_control_was_received(dir.path(), &control);
}

/// An oversized message gets exactly `552 5.3.4 message too big`, once:
/// the rest of its data is read and dropped up to the terminator (not
/// taken as commands), so the session and the server go on working.
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
    assert_eq!(smtp.command("DATA").unwrap().0, 354);
    for _ in 0..50 {
        smtp.send_raw(format!("{}\r\n", "z".repeat(100)).as_bytes())
            .unwrap();
    }
    // past the limit: lines that would be commands if they were read as such
    smtp.send_raw(b"RSET\r\nMAIL FROM:<evil@example.com>\r\n")
        .unwrap();
    let (code, text) = smtp.command(".").unwrap();
    assert_eq!(code, 552, "{text}");
    assert_eq!(text, "552 5.3.4 message too big\r\n");
    // the next reply is the NOOP's: nothing of the data was a command
    assert_eq!(smtp.command("NOOP").unwrap().1, NOOP_REPLY);
    assert_eq!(smtp.command("NOOP").unwrap().1, NOOP_REPLY);
    // a normal message from another client is accepted
    send_control_message(&server, "other@example.com");
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

/// Beyond `max_connections` a client gets exactly
/// `421 4.3.2 <hostname> too many concurrent sessions. Try later` and is
/// disconnected; the sessions already open keep working, and a slot freed
/// by a closed session is given to the next client.
#[test]
fn max_connections_is_enforced() {
    let server = Builder::new(policy("LocalDisk", ", max_connections = 2"))
        .binary(env!("CARGO_BIN_EXE_tern"))
        .start()
        .unwrap();
    const BANNER: &str = "220 mx.test KumoMTA\r\n";
    const REFUSAL: &str = "421 4.3.2 mx.test too many concurrent sessions. Try later\r\n";
    let mut a = server.smtp().unwrap();
    let mut b = server.smtp().unwrap();
    assert_eq!(a.read_reply().unwrap().1, BANNER);
    assert_eq!(b.read_reply().unwrap().1, BANNER);
    let mut c = server.smtp().unwrap();
    let (code, text) = c.read_reply().unwrap();
    assert_eq!(code, 421, "{text}");
    assert_eq!(text, REFUSAL);
    assert!(c.is_closed());
    // at the limit, the open sessions are still served
    assert_eq!(a.command("NOOP").unwrap().1, NOOP_REPLY);
    assert_eq!(b.command("EHLO b").unwrap().0, 250);
    let (code, reply) = b
        .send_message(
            "a@example.com",
            "b@example.com",
            b"Subject: x\r\n\r\nbody\r\n",
        )
        .unwrap();
    assert_eq!(code, 250, "{reply}");
    assert!(reply.starts_with("250 OK ids="), "{reply}");
    drop(a);
    // the server notices the close asynchronously: retry until the slot is free
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut d = server.smtp().unwrap();
        let (_, text) = d.read_reply().unwrap();
        if text == BANNER {
            assert_eq!(d.command("NOOP").unwrap().1, NOOP_REPLY);
            break;
        }
        assert_eq!(text, REFUSAL);
        assert!(Instant::now() < deadline, "the freed slot was never reused");
        std::thread::sleep(Duration::from_millis(100));
    }
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
