//! ESMTP conformance of the listener over real sockets (spec §3, §12.2,
//! §12.3), for the behaviours an audit found untested:
//!
//! * the exact reply texts of §3.4 (banner, EHLO lines and order, HELO,
//!   MAIL/RCPT echoing the address, the null sender, RSET, NOOP, DATA,
//!   QUIT), byte for byte on a raw socket and through Python's smtplib
//!   and swaks;
//! * `invalid_line_endings` Deny/Allow/Fix, with the stored bytes read
//!   back from a Maildir the server delivers to;
//! * 2,000 recipients in one transaction (1,024 accepted, the rest `452`)
//!   and `max_messages_per_connection`;
//! * a pipelined burst of garbage and 1,000 concurrent idle connections,
//!   with other clients still served;
//! * the `smtp_server_*` events of §3.8: `smtp_server_rewrite_response`
//!   (also for a refusal sent in place of the banner),
//!   the three `kumo.disconnect` modes, plain Lua errors,
//!   `smtp_server_ehlo`, `kumo.reject` in `smtp_server_rcpt_to` and
//!   `smtp_server_data`, `smtp_server_split_transaction`, and
//!   `batch_handling = "BatchByDomain"`;
//! * STARTTLS with a configured certificate, and STARTTLS inside TLS;
//! * `peer` / `via` / `smtp_server_get_dynamic_parameters` overrides and
//!   the top-level plus `peer` `meta` (§3.1, §3.9);
//! * the `null` queue (§3.7), Rejection records (§12.3),
//!   `data_processing_timeout`, and the `Received` header (§3.10) for
//!   ESMTP and ESMTPS.
//!
//! Every server is the real `tern serve` on a policy in a fresh folder
//! (ephemeral ports). Spools use `min_free_space = '1%'`: shared build
//! machines often have less than the default 10% free.

mod common;

use common::{Conn, count, ids_from, of_type, python, wait_for_records};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tern_testkit::{Builder, TernServer};

/// Read timeout for every socket, and the patience for anything polled:
/// generous, the build machine is shared and loaded.
const TIMEOUT: Duration = Duration::from_secs(60);

/// The spools, a log directory flushed every second (with the meta keys
/// the tests look at), one listener on an ephemeral port with
/// `hostname = 'mx.test'` plus `listener` options, then `handlers`.
fn policy(listener: &str, handlers: &str) -> String {
    format!(
        r#"local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool {{ name = 'data', path = '{{dir}}/spool/data', min_free_space = '1%' }}
  kumo.define_spool {{ name = 'meta', path = '{{dir}}/spool/meta', min_free_space = '1%' }}
  kumo.configure_local_logs {{
    log_dir = '{{dir}}/logs', max_segment_duration = '1s',
    meta = {{ 'x_top', 'x_peer', 'x_via', 'x_seen' }},
  }}
  kumo.start_esmtp_listener {{ listen = '127.0.0.1:0', hostname = 'mx.test', {listener} }}
end)
{handlers}
"#
    )
}

/// Every accepted message goes to the `null` queue.
const NULL_QUEUE: &str = r#"
kumo.on('smtp_server_message_received', function(msg)
  msg:set_meta('queue', 'null')
end)
"#;

/// Every scheduled queue delivers into the Maildir `{dir}/maildir`.
const MAILDIR_QUEUE: &str = r#"
kumo.on('get_queue_config', function()
  return kumo.make_queue_config { protocol = { maildir_path = '{dir}/maildir' } }
end)
"#;

fn start(policy: String) -> TernServer {
    Builder::new(policy)
        .binary(env!("CARGO_BIN_EXE_tern"))
        .start()
        .unwrap()
}

fn logs(server: &TernServer) -> PathBuf {
    server.dir().join("logs")
}

/// Files under the LocalDisk spools (`data/` and `new/` of both).
fn spool_files(dir: &Path) -> Vec<PathBuf> {
    fn walk(path: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(path) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    for spool in ["data", "meta"] {
        for sub in ["data", "new"] {
            walk(&dir.join("spool").join(spool).join(sub), &mut files);
        }
    }
    files
}

/// Poll until `done` holds; panics with `what` after [`TIMEOUT`].
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The messages in `{dir}/maildir/new`, once there are at least `n`.
fn maildir_messages(server: &TernServer, n: usize) -> Vec<Vec<u8>> {
    let new = server.dir().join("maildir").join("new");
    let read = || -> Vec<Vec<u8>> {
        let Ok(entries) = std::fs::read_dir(&new) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| std::fs::read(e.path()).ok())
            .collect()
    };
    wait_until(&format!("{n} message(s) in {}", new.display()), || {
        read().len() >= n
    });
    read()
}

/// The stored message whose headers contain `Subject: <subject>`.
fn message_with_subject(messages: &[Vec<u8>], subject: &str) -> Vec<u8> {
    let needle = format!("\r\nSubject: {subject}\r\n");
    messages
        .iter()
        .find(|m| {
            m.windows(needle.len()).any(|w| w == needle.as_bytes())
                || m.starts_with(&needle.as_bytes()[2..])
        })
        .unwrap_or_else(|| panic!("no stored message with Subject: {subject}"))
        .clone()
}

/// The bytes of `message` from the first occurrence of `header` on.
fn from_header<'a>(message: &'a [u8], header: &str) -> &'a [u8] {
    let at = message
        .windows(header.len())
        .position(|w| w == header.as_bytes())
        .unwrap_or_else(|| panic!("no {header:?} in {:?}", String::from_utf8_lossy(message)));
    &message[at..]
}

/// The bytes of `message` from its `Subject:` header on.
fn from_subject(message: &[u8]) -> &[u8] {
    let at = message
        .windows(9)
        .position(|w| w == b"Subject: ")
        .expect("a Subject header");
    &message[at..]
}

// ---------------------------------------------------------------------
// 1. Exact reply texts (§3.4)
// ---------------------------------------------------------------------

#[test]
fn command_replies_are_byte_exact() {
    let server = start(policy("", NULL_QUEUE));
    let addr = server.listener("smtp");
    let mut c = Conn::connect(addr);
    assert_eq!(c.reply(), "220 mx.test KumoMTA\r\n");
    // The default extensions, in the order of §3.5; STARTTLS without TLS.
    assert_eq!(
        c.cmd("EHLO client.test"),
        "250-mx.test Aloha client.test\r\n\
         250-PIPELINING\r\n\
         250-ENHANCEDSTATUSCODES\r\n\
         250-8BITMIME\r\n\
         250-SMTPUTF8\r\n\
         250 STARTTLS\r\n"
    );
    assert_eq!(c.cmd("HELO helo.test"), "250 Hello helo.test!\r\n");
    assert_eq!(c.cmd("RSET"), "250 Reset state\r\n");
    assert_eq!(c.cmd("NOOP"), "250 the goggles do nothing\r\n");
    assert_eq!(
        c.cmd("NOOP with an argument"),
        "250 the goggles do nothing\r\n"
    );
    for verb in [
        "VRFY someone",
        "EXPN list",
        "HELP",
        "LHLO x.test",
        "BDAT 10",
    ] {
        assert_eq!(c.cmd(verb), "502 5.5.1 Command unimplemented\r\n", "{verb}");
    }
    assert_eq!(
        c.cmd("QUIT"),
        "221 So long, and thanks for all the fish!\r\n"
    );
    c.expect_closed();

    // Greeting is not required before MAIL; DATA's 354 text.
    let mut c = Conn::connect(addr);
    c.reply();
    assert!(c.cmd("MAIL FROM:<a@example.com>").starts_with("250 "));
    assert!(c.cmd("RCPT TO:<b@example.com>").starts_with("250 "));
    assert_eq!(c.cmd("DATA"), "354 Send body; end with CRLF.CRLF\r\n");
    c.send(b"Subject: x\r\n\r\nbody\r\n");
    let reply = c.cmd(".");
    assert!(reply.starts_with("250 OK ids="), "{reply:?}");
    assert_eq!(ids_from(&reply).len(), 1, "{reply:?}");

    // The same texts as an independent client sees them.
    let script = r#"
import smtplib, sys
s = smtplib.SMTP(local_hostname='py.test')
code, msg = s.connect('127.0.0.1', int(sys.argv[1]))
print('banner', code, msg.decode())
code, msg = s.ehlo()
print('ehlo', code, repr(msg.decode()))
print('helo', *s.helo('helo.test'))
print('rset', *s.rset())
print('noop', *s.noop())
print('vrfy', *s.verify('x'))
print('quit', *s.quit())
"#;
    let out = python(script, &[&addr.port().to_string()]);
    let expect = [
        "banner 220 mx.test KumoMTA",
        "ehlo 250 'mx.test Aloha py.test\\nPIPELINING\\nENHANCEDSTATUSCODES\\n8BITMIME\\nSMTPUTF8\\nSTARTTLS'",
        "helo 250 b'Hello helo.test!'",
        "rset 250 b'Reset state'",
        "noop 250 b'the goggles do nothing'",
        "vrfy 502 b'5.5.1 Command unimplemented'",
        "quit 221 b'So long, and thanks for all the fish!'",
    ];
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, expect, "{out}");
}

#[test]
fn mail_and_rcpt_replies_echo_the_address_once() {
    let server = start(policy("", NULL_QUEUE));
    let addr = server.listener("smtp");
    let mut c = Conn::greeted(addr);
    assert_eq!(
        c.cmd("MAIL FROM:<a@example.com>"),
        "250 OK <a@example.com>\r\n"
    );
    assert_eq!(
        c.cmd("RCPT TO:<b@example.com>"),
        "250 OK <b@example.com>\r\n"
    );
    assert_eq!(c.cmd("RSET"), "250 Reset state\r\n");
    // ESMTP parameters are parsed and ignored.
    assert_eq!(
        c.cmd("MAIL FROM:<a@example.com> BODY=8BITMIME SMTPUTF8"),
        "250 OK <a@example.com>\r\n"
    );
    assert_eq!(c.cmd("RSET"), "250 Reset state\r\n");
    // The null sender is allowed.
    assert_eq!(c.cmd("MAIL FROM:<>"), "250 OK <>\r\n");
    assert_eq!(
        c.cmd("RCPT TO:<postmaster@example.com>"),
        "250 OK <postmaster@example.com>\r\n"
    );

    // Python's smtplib sees the same.
    let script = r#"
import smtplib, sys
s = smtplib.SMTP('127.0.0.1', int(sys.argv[1]), local_hostname='py.test')
s.ehlo()
print('mail', *s.mail('a@example.com'))
print('rcpt', *s.rcpt('b@example.com'))
s.rset()
print('null', *s.mail(''))
s.quit()
"#;
    let out = python(script, &[&addr.port().to_string()]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "mail 250 b'OK <a@example.com>'",
            "rcpt 250 b'OK <b@example.com>'",
            "null 250 b'OK <>'",
        ],
        "{out}"
    );

    // And swaks.
    let out = Command::new("swaks")
        .args(["--server", "127.0.0.1", "--port", &addr.port().to_string()])
        .args(["--from", "s@example.com", "--to", "r@example.com"])
        .args(["--helo", "swaks.test"])
        .output()
        .expect("swaks");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("<-  250 OK <s@example.com>\n"), "{text}");
    assert!(text.contains("<-  250 OK <r@example.com>\n"), "{text}");
    assert!(text.contains("<-  250 OK ids="), "{text}");
}

// ---------------------------------------------------------------------
// 2. invalid_line_endings over a socket (§3.1, §3.7 step 1)
// ---------------------------------------------------------------------

#[test]
fn invalid_line_endings_deny_allow_and_fix() {
    // One server, three listeners that differ only in the mode; each
    // names itself in its banner.
    let policy = format!(
        r#"local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool {{ name = 'data', path = '{{dir}}/spool/data', min_free_space = '1%' }}
  kumo.define_spool {{ name = 'meta', path = '{{dir}}/spool/meta', min_free_space = '1%' }}
  for _, mode in ipairs {{ 'Deny', 'Allow', 'Fix' }} do
    kumo.start_esmtp_listener {{
      listen = '127.0.0.1:0', hostname = mode .. '.test', invalid_line_endings = mode,
    }}
  end
end)
{MAILDIR_QUEUE}
"#
    );
    let server = start(policy);
    let listeners = server.listeners("smtp");
    assert_eq!(listeners.len(), 3, "{}", server.output());
    let mut by_mode = std::collections::HashMap::new();
    for addr in listeners {
        let mut c = Conn::connect(addr);
        let banner = c.reply();
        let mode = banner
            .strip_prefix("220 ")
            .and_then(|b| b.split_once(".test KumoMTA\r\n"))
            .map(|(mode, _)| mode.to_string())
            .unwrap_or_else(|| panic!("{banner:?}"));
        c.cmd("EHLO client.test");
        by_mode.insert(mode, c);
    }
    // The default is Deny; `<LF>.<LF>` never ends a message.
    let bare_cr = b"Subject: bare cr\r\n\r\nbare\rCR\r\n";
    let bare_lf = b"Subject: bare lf\r\n\r\nbare\nLF\n.\nstill data\r\n";
    let deny = by_mode.get_mut("Deny").unwrap();
    for body in [&bare_cr[..], &bare_lf[..]] {
        assert_eq!(
            deny.transaction("a@example.com", &["b@example.com"], body),
            "552 5.6.0 message data must use CRLF for line endings\r\n"
        );
    }
    assert_eq!(deny.cmd("NOOP"), "250 the goggles do nothing\r\n");

    // Each body also carries an SMTP smuggling attempt: `<LF>.<LF>`
    // followed by a second transaction. It must stay message data in
    // every mode: one `250` for the whole DATA, nothing answered for the
    // smuggled commands, and the smuggled text inside the stored message.
    let smuggled = "MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\n\
                    Subject: smuggled\r\n\r\nevil\r\n";
    let body = |mode: &str| {
        format!("Subject: {mode}\r\n\r\nbare\rCR and\nbare LF\r\nend\n.\n{smuggled}").into_bytes()
    };
    for mode in ["Allow", "Fix"] {
        let c = by_mode.get_mut(mode).unwrap();
        let reply = c.transaction("a@example.com", &["b@example.com"], &body(mode));
        assert!(reply.starts_with("250 OK ids="), "{mode}: {reply:?}");
        assert_eq!(ids_from(&reply).len(), 1, "{mode}: {reply:?}");
        // Had the message ended at `<LF>.<LF>`, the replies to the
        // smuggled MAIL, RCPT and DATA would be read here instead.
        assert_eq!(c.cmd("NOOP"), "250 the goggles do nothing\r\n", "{mode}");
    }
    let stored = maildir_messages(&server, 2);
    // Allow keeps the bare bytes exactly, the smuggled lines included.
    assert_eq!(
        String::from_utf8_lossy(from_subject(&message_with_subject(&stored, "Allow"))),
        format!("Subject: Allow\r\n\r\nbare\rCR and\nbare LF\r\nend\n.\n{smuggled}")
    );
    // Fix turns each bare CR or LF into CRLF; the smuggled lines are
    // still part of the body.
    assert_eq!(
        String::from_utf8_lossy(from_subject(&message_with_subject(&stored, "Fix"))),
        format!("Subject: Fix\r\n\r\nbare\r\nCR and\r\nbare LF\r\nend\r\n.\r\n{smuggled}")
    );
    // Nothing from the Deny listener was stored, and no smuggled message.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(maildir_messages(&server, 2).len(), 2);
}

// ---------------------------------------------------------------------
// 3. Recipient limits
// ---------------------------------------------------------------------

/// Listener options set away from their defaults take effect (the
/// defaults are covered by the other tests): `max_recipients_per_message`,
/// `line_length_hard_limit` for command and DATA lines, and
/// `trace_headers` with `received_header = false`, another `header_name`
/// and `include_meta_names` (a name that is set, and one that is not).
#[test]
fn non_default_limits_and_trace_headers_take_effect() {
    let listener = "max_recipients_per_message = 3, line_length_hard_limit = 100,
      trace_headers = { received_header = false, header_name = 'X-Tern-Ref',
                        include_meta_names = { 'x_tag', 'x_unset' } },";
    let handlers = format!(
        "{MAILDIR_QUEUE}
kumo.on('smtp_server_message_received', function(msg)
  msg:set_meta('x_tag', 'tagged')
end)
"
    );
    let server = start(policy(listener, &handlers));
    let mut c = Conn::greeted(server.listener("smtp"));
    // A command line of exactly 100 bytes is read; 101 is too long.
    assert_eq!(
        c.cmd(&format!("NOOP {}", "x".repeat(95))),
        "250 the goggles do nothing\r\n"
    );
    assert_eq!(
        c.cmd(&format!("NOOP {}", "x".repeat(96))),
        "500 5.2.3 line too long\r\n"
    );

    // Three recipients, then the limit; DATA lines of 100 bytes pass.
    assert!(c.cmd("MAIL FROM:<a@example.com>").starts_with("250 "));
    for n in 1..=3 {
        let reply = c.cmd(&format!("RCPT TO:<r{n}@example.com>"));
        assert!(reply.starts_with("250 "), "{reply:?}");
    }
    assert_eq!(
        c.cmd("RCPT TO:<r4@example.com>"),
        "452 4.5.3 too many recipients\r\n"
    );
    assert_eq!(c.cmd("DATA"), "354 Send body; end with CRLF.CRLF\r\n");
    let long_line = "y".repeat(100);
    c.send(format!("Subject: limits\r\n\r\n{long_line}\r\n").as_bytes());
    let reply = c.cmd(".");
    assert_eq!(ids_from(&reply).len(), 3, "{reply:?}");

    // A DATA line of 101 bytes refuses the message.
    let body = format!("Subject: too long\r\n\r\n{long_line}z\r\n");
    assert_eq!(
        c.transaction("a@example.com", &["r1@example.com"], body.as_bytes()),
        "500 5.2.3 line too long\r\n"
    );
    assert_eq!(c.cmd("NOOP"), "250 the goggles do nothing\r\n");

    // Each of the three messages starts with the renamed supplemental
    // header and has no Received header.
    let stored = maildir_messages(&server, 3);
    let mut recipients = Vec::new();
    for message in &stored {
        let text = String::from_utf8_lossy(from_header(message, "X-Tern-Ref: ")).into_owned();
        assert!(!text.contains("\r\nReceived: "), "{text}");
        let mut lines = text.split("\r\n");
        let mut token = lines.next().unwrap()["X-Tern-Ref: ".len()..].to_string();
        for line in lines.take_while(|l| l.starts_with([' ', '\t'])) {
            token.push_str(line.trim());
        }
        use base64::Engine as _;
        let json = base64::engine::general_purpose::STANDARD
            .decode(token.trim())
            .unwrap();
        let mut payload: Value = serde_json::from_slice(&json).unwrap();
        recipients.push(payload["recipient"].take());
        assert_eq!(
            payload,
            serde_json::json!({"_@_": "\\_/", "recipient": null, "x_tag": "tagged"})
        );
    }
    recipients.sort_by_key(|r| r.to_string());
    assert_eq!(
        recipients,
        ["r1@example.com", "r2@example.com", "r3@example.com"]
    );
    assert!(
        stored
            .iter()
            .all(|m| !String::from_utf8_lossy(m).contains("Subject: too long"))
    );
}

#[test]
fn two_thousand_recipients_in_one_transaction() {
    let server = start(policy("", NULL_QUEUE));
    let addr = server.listener("smtp");
    let mut c = Conn::greeted(addr);
    assert!(c.cmd("MAIL FROM:<a@example.com>").starts_with("250 "));
    // All 2,000 RCPTs pipelined, written by another thread so neither side
    // can block the other.
    let mut writer = c.writer.try_clone().unwrap();
    let sending = std::thread::spawn(move || {
        let mut burst = Vec::new();
        for n in 0..2000 {
            burst.extend_from_slice(format!("RCPT TO:<r{n}@example.com>\r\n").as_bytes());
        }
        writer.write_all(&burst).unwrap();
    });
    for n in 0..2000 {
        let reply = c.reply();
        if n < 1024 {
            // (The exact `250 OK <addr>` text is checked elsewhere.)
            assert!(
                reply.starts_with("250 ") && reply.contains(&format!("r{n}@example.com>")),
                "RCPT #{n}: {reply:?}"
            );
        } else {
            assert_eq!(reply, "452 4.5.3 too many recipients\r\n", "RCPT #{n}");
        }
    }
    sending.join().unwrap();

    // The server keeps serving another client meanwhile.
    let mut other = Conn::greeted(addr);
    assert_eq!(other.cmd("NOOP"), "250 the goggles do nothing\r\n");

    assert_eq!(c.cmd("DATA"), "354 Send body; end with CRLF.CRLF\r\n");
    c.send(b"Subject: many\r\n\r\nbody\r\n");
    let reply = c.cmd(".");
    assert!(
        reply.starts_with("250 OK ids="),
        "{}",
        &reply[..80.min(reply.len())]
    );
    // One message per recipient (BifurcateAlways).
    assert_eq!(ids_from(&reply).len(), 1024);

    let reply = other.transaction(
        "a@example.com",
        &["b@example.com"],
        b"Subject: o\r\n\r\nx\r\n",
    );
    assert!(reply.starts_with("250 OK ids="), "{reply:?}");
}

#[test]
fn max_messages_per_connection_caps_recipients_per_connection() {
    let server = start(policy("max_messages_per_connection = 3,", NULL_QUEUE));
    let mut c = Conn::greeted(server.listener("smtp"));
    let reply = c.transaction(
        "a@example.com",
        &["r1@example.com", "r2@example.com"],
        b"Subject: one\r\n\r\nx\r\n",
    );
    assert!(reply.starts_with("250 OK ids="), "{reply:?}");
    // The third RCPT of the connection is accepted, the fourth refused
    // mid-transaction without closing.
    assert!(c.cmd("MAIL FROM:<a@example.com>").starts_with("250 "));
    assert!(c.cmd("RCPT TO:<r3@example.com>").starts_with("250 "));
    assert_eq!(
        c.cmd("RCPT TO:<r4@example.com>"),
        "452 4.5.3 too many recipients on this connection\r\n"
    );
    assert_eq!(c.cmd("DATA"), "354 Send body; end with CRLF.CRLF\r\n");
    c.send(b"Subject: two\r\n\r\nx\r\n");
    let reply = c.cmd(".");
    assert!(reply.starts_with("250 OK ids="), "{reply:?}");
    // A transaction with no recipients yet: 421 and close.
    assert!(c.cmd("MAIL FROM:<a@example.com>").starts_with("250 "));
    assert_eq!(
        c.cmd("RCPT TO:<r5@example.com>"),
        "421 4.5.3 mx.test too many recipients on this connection\r\n"
    );
    c.expect_closed();
    // A new connection starts counting again.
    let mut c = Conn::greeted(server.listener("smtp"));
    assert!(c.cmd("MAIL FROM:<a@example.com>").starts_with("250 "));
    assert!(c.cmd("RCPT TO:<r6@example.com>").starts_with("250 "));
}

// ---------------------------------------------------------------------
// 4. A pipelined burst of garbage
// ---------------------------------------------------------------------

/// A small deterministic generator (xorshift64*), so failures replay.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Random bytes of every value except CR and LF.
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len)
            .map(|_| {
                loop {
                    let b = (self.next() >> 32) as u8;
                    if b != b'\r' && b != b'\n' {
                        break b;
                    }
                }
            })
            .collect()
    }
}

#[test]
fn pipelined_garbage_gets_one_correct_reply_per_line() {
    let server = start(policy("", NULL_QUEUE));
    let addr = server.listener("smtp");
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut lines: Vec<Vec<u8>> = Vec::new();
    for n in 0..400 {
        let line = match n % 8 {
            // Random bytes (NUL and non-UTF-8 included) behind a verb
            // that cannot be a command.
            0..=2 => {
                let len = (rng.next() % 200) as usize;
                [b"ZZ".to_vec(), rng.bytes(len)].concat()
            }
            // Printable junk with NULs.
            3 => b"ZZ\0junk\0 with NUL \x01\x02\x7f".to_vec(),
            // Non-UTF-8 after a real verb.
            4 => b"MAIL FROM:<\xff\xfe@example.com>".to_vec(),
            // Over-long lines, some huge.
            5 => {
                let len = if n % 40 == 5 {
                    300_000
                } else {
                    999 + (rng.next() % 5000) as usize
                };
                [b"ZZ".to_vec(), rng.bytes(len)].concat()
            }
            // Exactly at the limit: 998 bytes is still a line.
            6 => [b"ZZ".to_vec(), vec![b'a'; 996]].concat(),
            // Empty and blank lines.
            _ => {
                if n % 16 == 7 {
                    Vec::new()
                } else {
                    b"   ".to_vec()
                }
            }
        };
        lines.push(line);
    }
    let expected: Vec<&str> = lines
        .iter()
        .map(|line| {
            if line.len() > 998 {
                "500 5.2.3 line too long\r\n"
            } else if std::str::from_utf8(line).is_err() {
                "501 5.5.2 Invalid UTF-8 in command\r\n"
            } else if line.iter().all(|b| *b == b' ') {
                "501 Syntax error in command or arguments: "
            } else {
                "502 5.5.1 Command unimplemented\r\n"
            }
        })
        .collect();
    let mut burst = Vec::new();
    for line in &lines {
        burst.extend_from_slice(line);
        burst.extend_from_slice(b"\r\n");
    }
    burst.extend_from_slice(b"NOOP\r\n");

    let mut c = Conn::connect(addr);
    assert_eq!(c.reply(), "220 mx.test KumoMTA\r\n");
    let mut writer = c.writer.try_clone().unwrap();
    let sending = std::thread::spawn(move || writer.write_all(&burst).unwrap());
    for (n, want) in expected.iter().enumerate() {
        let reply = c.reply();
        if want.ends_with("\r\n") {
            assert_eq!(
                reply,
                *want,
                "line #{n}: {:?}",
                String::from_utf8_lossy(&lines[n][..lines[n].len().min(40)])
            );
        } else {
            assert!(
                reply.starts_with(want)
                    && reply.ends_with("\r\n")
                    && reply.matches('\n').count() == 1,
                "line #{n}: {reply:?}"
            );
        }
    }
    sending.join().unwrap();
    // Exactly one reply per line: the NOOP's is next.
    assert_eq!(c.reply(), "250 the goggles do nothing\r\n");
    // The session is still usable, and so is the server.
    let reply = c.transaction(
        "a@example.com",
        &["b@example.com"],
        b"Subject: g\r\n\r\nx\r\n",
    );
    assert!(reply.starts_with("250 OK ids="), "{reply:?}");
    let mut other = Conn::greeted(addr);
    assert_eq!(other.cmd("NOOP"), "250 the goggles do nothing\r\n");
}

// ---------------------------------------------------------------------
// 5. 1,000 concurrent idle connections
// ---------------------------------------------------------------------

/// Make sure this process (and the server it starts, which inherits the
/// limit) may open `want` descriptors; false when the hard limit is lower.
fn ensure_nofile(want: u64) -> bool {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    if limit.rlim_cur >= want {
        return true;
    }
    if limit.rlim_max < want {
        return false;
    }
    limit.rlim_cur = want;
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 }
}

/// One line from an unbuffered socket (byte by byte: nothing after the
/// line is consumed).
fn read_line(stream: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.last() != Some(&b'\n') {
        match stream.read(&mut byte) {
            Ok(1) => line.push(byte[0]),
            other => panic!(
                "reading a line: {other:?}; read so far: {:?}",
                String::from_utf8_lossy(&line)
            ),
        }
    }
    String::from_utf8(line).expect("replies are UTF-8")
}

#[test]
fn a_thousand_idle_connections_all_get_banners() {
    const IDLE: usize = 1000;
    // 1,000 sockets here and 1,000 in the server (which inherits the
    // limit, and raises its own), plus what parallel tests hold.
    assert!(
        ensure_nofile(2048),
        "the RLIMIT_NOFILE hard limit is below 2048: cannot open {IDLE} connections"
    );
    let server = start(policy("", NULL_QUEUE));
    let addr = server.listener("smtp");
    // Plain sockets (one descriptor each), none of them read yet.
    let mut idle: Vec<TcpStream> = (0..IDLE)
        .map(|n| {
            let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connection #{n}: {e}"));
            s.set_read_timeout(Some(TIMEOUT)).unwrap();
            s
        })
        .collect();

    // Meanwhile an independent client completes a transaction.
    let script = r#"
import smtplib, sys
s = smtplib.SMTP('127.0.0.1', int(sys.argv[1]), local_hostname='py.test', timeout=60)
s.sendmail('a@example.com', ['b@example.com'], 'Subject: busy\r\n\r\nbody\r\n')
print('sent')
s.quit()
"#;
    let out = python(script, &[&addr.port().to_string()]);
    assert_eq!(out.trim(), "sent");

    for (n, stream) in idle.iter_mut().enumerate() {
        assert_eq!(
            read_line(stream),
            "220 mx.test KumoMTA\r\n",
            "connection #{n}"
        );
    }
    // They are all still open and served.
    for stream in idle.iter_mut().step_by(97) {
        stream.write_all(b"NOOP\r\n").unwrap();
        assert_eq!(read_line(stream), "250 the goggles do nothing\r\n");
    }
    drop(idle);
    let mut c = Conn::greeted(addr);
    assert_eq!(c.cmd("NOOP"), "250 the goggles do nothing\r\n");
}

// ---------------------------------------------------------------------
// 6. Events (§3.3, §3.8)
// ---------------------------------------------------------------------

#[test]
fn rewrite_response_changes_replies_and_a_421_closes() {
    let handlers = r#"
kumo.on('smtp_server_rewrite_response', function(status, text, command, conn_meta)
  if text == 'the goggles do nothing' then
    return 252, '2.1.5 goggles rewritten'
  end
  if text == 'Reset state' then
    return nil, 'state reset, rewritten'
  end
  if status == 502 and conn_meta:get_meta('ehlo_domain') == 'echo.test' then
    return nil, 'saw ' .. status .. ' ' .. text
  end
  if status == 502 and conn_meta:get_meta('ehlo_domain') == 'close.test' then
    return 421, '4.7.0 rewritten goodbye'
  end
end)
"#;
    let server = start(policy("", &format!("{handlers}{NULL_QUEUE}")));
    let addr = server.listener("smtp");
    let mut c = Conn::greeted(addr);
    assert_eq!(c.cmd("NOOP"), "252 2.1.5 goggles rewritten\r\n");
    assert_eq!(c.cmd("RSET"), "250 state reset, rewritten\r\n");
    // Untouched replies stay as they are.
    assert_eq!(c.cmd("VRFY x"), "502 5.5.1 Command unimplemented\r\n");
    // The handler sees the status and the text with its enhanced code.
    assert!(
        c.cmd("EHLO echo.test")
            .starts_with("250-mx.test Aloha echo.test\r\n")
    );
    assert_eq!(
        c.cmd("VRFY x"),
        "502 saw 502 5.5.1 Command unimplemented\r\n"
    );
    // Rewriting to 421 closes the connection after the reply.
    assert!(c.cmd("EHLO close.test").starts_with("250-"));
    assert_eq!(c.cmd("VRFY x"), "421 4.7.0 rewritten goodbye\r\n");
    c.expect_closed();
}

/// A refusal sent instead of the banner (here: the data spool's
/// filesystem is "too full" because `min_free_space` asks for all of it)
/// passes through `smtp_server_rewrite_response` like any other reply,
/// with a nil command, and the connection still closes after it.
#[test]
fn a_refusal_in_place_of_the_banner_is_rewritten_too() {
    let handlers = r#"
kumo.on('smtp_server_rewrite_response', function(status, text, command, conn_meta)
  if status == 421 then
    return nil, text .. ' (rewritten; command ' .. tostring(command) .. ')'
  end
end)
"#;
    let full = policy("", handlers).replacen(
        "path = '{dir}/spool/data', min_free_space = '1%'",
        "path = '{dir}/spool/data', min_free_space = '100%'",
        1,
    );
    assert!(full.contains("'100%'"), "the policy template changed");
    let server = start(full);
    let mut c = Conn::connect(server.listener("smtp"));
    assert_eq!(
        c.reply(),
        "421 4.3.2 mx.test disk is too full. Try later (rewritten; command nil)\r\n"
    );
    c.expect_closed();
}

/// Handlers that refuse or fail depending on the sender's local part.
const DISCONNECT_HANDLERS: &str = r#"
kumo.on('smtp_server_mail_from', function(sender, conn_meta)
  local user = sender.user
  if user == 'force' then
    kumo.disconnect(550, '5.7.1 forced')
  elseif user == 'follow' then
    kumo.disconnect(550, '5.7.1 followed', 'FollowWith421')
  elseif user == 'if421keep' then
    kumo.disconnect(550, '5.7.1 kept open', 'If421')
  elseif user == 'if421close' then
    kumo.disconnect(421, '4.7.0 closing', 'If421')
  elseif user == 'reject421' then
    kumo.reject(421, '4.7.0 rejected and closed')
  elseif user == 'reject' then
    kumo.reject(550, '5.7.1 rejected, stay')
  elseif user == 'boom' then
    error('boom in mail_from')
  end
end)
kumo.on('smtp_server_message_received', function(msg)
  if msg:get_first_named_header_value('Subject') == 'boom' then
    error('boom in message_received')
  end
  msg:set_meta('queue', 'null')
end)
"#;

#[test]
fn disconnect_modes_reject_and_lua_errors() {
    let server = start(policy("", DISCONNECT_HANDLERS));
    let addr = server.listener("smtp");
    let cases: &[(&str, &str, bool)] = &[
        // Default ForceDisconnect: the reply, then close.
        ("force", "550 5.7.1 forced\r\n", true),
        // FollowWith421: the reply, a 421, then close.
        (
            "follow",
            "550 5.7.1 followed\r\n421 mx.test disconnecting due to previous error\r\n",
            true,
        ),
        // If421: closes only for a 421.
        ("if421keep", "550 5.7.1 kept open\r\n", false),
        ("if421close", "421 4.7.0 closing\r\n", true),
        // kumo.reject closes only for a 421.
        ("reject421", "421 4.7.0 rejected and closed\r\n", true),
        ("reject", "550 5.7.1 rejected, stay\r\n", false),
        // Any other Lua error.
        ("boom", "421 4.3.0 mx.test technical difficulties\r\n", true),
    ];
    for (user, want, closes) in cases {
        let mut c = Conn::greeted(addr);
        c.send(format!("MAIL FROM:<{user}@example.com>\r\n").as_bytes());
        let mut got = c.reply();
        if *user == "follow" {
            got.push_str(&c.reply());
        }
        assert_eq!(got, *want, "{user}");
        if *closes {
            c.expect_closed();
        } else {
            assert_eq!(c.cmd("NOOP"), "250 the goggles do nothing\r\n", "{user}");
            assert!(
                c.cmd("MAIL FROM:<ok@example.com>").starts_with("250 "),
                "{user}"
            );
        }
    }
    // A Lua error after DATA: the same 421, and close.
    let mut c = Conn::greeted(addr);
    assert_eq!(
        c.transaction(
            "a@example.com",
            &["b@example.com"],
            b"Subject: boom\r\n\r\nx\r\n"
        ),
        "421 4.3.0 mx.test technical difficulties\r\n"
    );
    c.expect_closed();
    // The server still serves others.
    let mut c = Conn::greeted(addr);
    let reply = c.transaction(
        "a@example.com",
        &["b@example.com"],
        b"Subject: fine\r\n\r\nx\r\n",
    );
    assert!(reply.starts_with("250 OK ids="), "{reply:?}");
}

#[test]
fn ehlo_event_replaces_extensions_and_sees_helo() {
    let handlers = r#"
kumo.on('smtp_server_ehlo', function(domain, conn_meta, extensions)
  if domain == 'custom.test' then
    return { 'PIPELINING', 'X-CUSTOM' }
  end
  if domain == 'echo.test' then
    table.insert(extensions, 'X-ECHO')
    return extensions
  end
  if domain == 'refused.test' then
    if extensions == nil then
      kumo.reject(550, '5.7.1 HELO refused')
    end
    kumo.reject(550, '5.7.1 EHLO refused')
  end
end)
"#;
    let server = start(policy("", &format!("{handlers}{NULL_QUEUE}")));
    let mut c = Conn::connect(server.listener("smtp"));
    c.reply();
    assert_eq!(
        c.cmd("EHLO custom.test"),
        "250-mx.test Aloha custom.test\r\n250-PIPELINING\r\n250 X-CUSTOM\r\n"
    );
    // The handler received the default list.
    assert_eq!(
        c.cmd("EHLO echo.test"),
        "250-mx.test Aloha echo.test\r\n\
         250-PIPELINING\r\n\
         250-ENHANCEDSTATUSCODES\r\n\
         250-8BITMIME\r\n\
         250-SMTPUTF8\r\n\
         250-STARTTLS\r\n\
         250 X-ECHO\r\n"
    );
    assert_eq!(c.cmd("EHLO refused.test"), "550 5.7.1 EHLO refused\r\n");
    // HELO calls the event too, without the extensions argument; a
    // returned list does not matter for HELO.
    assert_eq!(c.cmd("HELO refused.test"), "550 5.7.1 HELO refused\r\n");
    assert_eq!(c.cmd("HELO custom.test"), "250 Hello custom.test!\r\n");
    // Replacing the list is cosmetic: the session still works.
    let reply = c.transaction(
        "a@example.com",
        &["b@example.com"],
        b"Subject: e\r\n\r\nx\r\n",
    );
    assert!(reply.starts_with("250 OK ids="), "{reply:?}");
}

#[test]
fn rcpt_to_and_data_events_reject() {
    let handlers = r#"
kumo.on('smtp_server_rcpt_to', function(rcpt, conn_meta)
  if rcpt.user == 'nobody' then
    kumo.reject(550, '5.1.1 no such user')
  end
end)
kumo.on('smtp_server_data', function(msg, conn_meta)
  if msg:get_first_named_header_value('Subject') == 'refuse at data' then
    kumo.reject(554, '5.7.0 refused at data')
  end
end)
"#;
    let server = start(policy("", &format!("{handlers}{NULL_QUEUE}")));
    let mut c = Conn::greeted(server.listener("smtp"));
    assert!(c.cmd("MAIL FROM:<a@example.com>").starts_with("250 "));
    assert!(c.cmd("RCPT TO:<someone@example.com>").starts_with("250 "));
    assert_eq!(
        c.cmd("RCPT TO:<nobody@example.com>"),
        "550 5.1.1 no such user\r\n"
    );
    // The transaction goes on with the accepted recipient only.
    assert_eq!(c.cmd("DATA"), "354 Send body; end with CRLF.CRLF\r\n");
    c.send(b"Subject: fine\r\n\r\nx\r\n");
    let reply = c.cmd(".");
    assert_eq!(ids_from(&reply).len(), 1, "{reply:?}");

    assert_eq!(
        c.transaction(
            "a@example.com",
            &["b@example.com"],
            b"Subject: refuse at data\r\n\r\nx\r\n"
        ),
        "554 5.7.0 refused at data\r\n"
    );
    // The transaction is consumed, the session goes on.
    assert_eq!(
        c.cmd("DATA"),
        "503 5.5.0 MAIL FROM must be issued first\r\n"
    );
    assert_eq!(c.cmd("NOOP"), "250 the goggles do nothing\r\n");
    let seen = wait_for_records(&logs(&server), TIMEOUT, |r| {
        count(r, "Reception") >= 1 && count(r, "Rejection") >= 3
    });
    // Only the first message was received.
    assert_eq!(count(&seen, "Reception"), 1, "{seen:?}");
    assert_eq!(
        of_type(&seen, "Reception")[0]["recipient"],
        "someone@example.com"
    );
}

/// A policy whose `smtp_server_split_transaction` answers by `X-Split`.
fn split_policy(listener: &str) -> String {
    let handlers = r#"
kumo.on('smtp_server_split_transaction', function(msg, conn_meta)
  local mode = msg:get_first_named_header_value('X-Split')
  if mode == 'strings' then
    return { { 'a@one.example', 'b@two.example' }, { 'c@three.example' } }
  elseif mode == 'objects' then
    local list = msg:recipient_list()
    return { { list[1], list[2] }, { list[3] } }
  end
end)
"#;
    policy(listener, &format!("{handlers}{NULL_QUEUE}"))
}

/// The Reception records of `ids`, keyed by id, once all are logged.
fn receptions_of(server: &TernServer, ids: &[String]) -> Vec<Value> {
    let seen = wait_for_records(&logs(server), TIMEOUT, |r| {
        ids.iter().all(|id| {
            of_type(r, "Reception")
                .iter()
                .any(|x| x["id"] == id.as_str())
        })
    });
    ids.iter()
        .map(|id| {
            of_type(&seen, "Reception")
                .into_iter()
                .find(|r| r["id"] == id.as_str())
                .unwrap()
                .clone()
        })
        .collect()
}

fn split_transaction_makes_one_message_per_batch(mode: &str) {
    let server = start(split_policy(""));
    let mut c = Conn::greeted(server.listener("smtp"));
    let reply = c.transaction(
        "s@example.com",
        &["a@one.example", "b@two.example", "c@three.example"],
        format!("X-Split: {mode}\r\nSubject: split\r\n\r\nx\r\n").as_bytes(),
    );
    assert!(reply.starts_with("250 OK ids="), "{reply:?}");
    let ids = ids_from(&reply);
    assert_eq!(ids.len(), 2, "one message per batch: {reply:?}");
    let receptions = receptions_of(&server, &ids);
    assert_eq!(
        receptions[0]["recipient"],
        serde_json::json!(["a@one.example", "b@two.example"])
    );
    assert_eq!(receptions[1]["recipient"], "c@three.example");
}

#[test]
fn split_transaction_with_address_strings() {
    split_transaction_makes_one_message_per_batch("strings");
}

#[test]
fn split_transaction_with_envelope_address_objects() {
    split_transaction_makes_one_message_per_batch("objects");
}

#[test]
fn batch_by_domain_groups_recipients_by_lowercased_domain() {
    let server = start(split_policy("batch_handling = 'BatchByDomain',"));
    let mut c = Conn::greeted(server.listener("smtp"));
    let reply = c.transaction(
        "s@example.com",
        &["x@one.example", "y@two.example", "z@ONE.example"],
        b"Subject: by domain\r\n\r\nx\r\n",
    );
    let ids = ids_from(&reply);
    assert_eq!(ids.len(), 2, "{reply:?}");
    let receptions = receptions_of(&server, &ids);
    assert_eq!(
        receptions[0]["recipient"],
        serde_json::json!(["x@one.example", "z@ONE.example"])
    );
    assert_eq!(receptions[1]["recipient"], "y@two.example");
    // The default, BifurcateAlways, makes one message per recipient.
    let server = start(split_policy(""));
    let mut c = Conn::greeted(server.listener("smtp"));
    let reply = c.transaction(
        "s@example.com",
        &["x@one.example", "y@two.example", "z@ONE.example"],
        b"Subject: bifurcate\r\n\r\nx\r\n",
    );
    assert_eq!(ids_from(&reply).len(), 3, "{reply:?}");
}

// ---------------------------------------------------------------------
// 7. STARTTLS with a configured certificate
// ---------------------------------------------------------------------

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed certificate for `mx.test` and 127.0.0.1 in `dir`:
/// (`cert.pem`, `key.pem`).
fn make_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
            "-days",
            "2",
            "-subj",
            "/CN=mx.test",
            "-addext",
            "subjectAltName=DNS:mx.test,IP:127.0.0.1",
        ],
    );
    (dir.join("cert.pem"), dir.join("key.pem"))
}

#[test]
fn starttls_uses_the_configured_certificate() {
    let keys = tempfile::tempdir().unwrap();
    let (cert, key) = make_certificate(keys.path());
    let listener = format!(
        "tls_certificate = '{}', tls_private_key = '{}',",
        cert.display(),
        key.display()
    );
    let server = start(policy(&listener, NULL_QUEUE));
    let port = server.listener("smtp").port().to_string();
    // The client trusts only this certificate and checks the host name.
    let script = r#"
import hashlib, smtplib, ssl, sys
port, cafile = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=cafile)
s = smtplib.SMTP('127.0.0.1', port, local_hostname='py.test')
s.ehlo()
print('starttls', *s.starttls(context=ctx))
der = s.sock.getpeercert(binary_form=True)
mine = ssl.PEM_cert_to_DER_cert(open(cafile).read())
print('same certificate', hashlib.sha256(der).hexdigest() == hashlib.sha256(mine).hexdigest())
code, msg = s.ehlo()
print('ehlo', code, repr(msg.decode()))
print('again', *s.docmd('STARTTLS'))
print('noop', *s.noop())
s.quit()
"#;
    let out = python(script, &[&port, cert.to_str().unwrap()]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "starttls 220 b'Ready to Start TLS'",
            "same certificate True",
            "ehlo 250 'mx.test Aloha py.test\\nPIPELINING\\nENHANCEDSTATUSCODES\\n8BITMIME\\nSMTPUTF8\\nAUTH PLAIN'",
            "again 501 b'Cannot STARTTLS as TLS is already active'",
            "noop 250 b'the goggles do nothing'",
        ],
        "{out}"
    );
}

// ---------------------------------------------------------------------
// 8. Listener parameter overrides and connection meta (§3.1, §3.9)
// ---------------------------------------------------------------------

/// Two listeners (127.0.0.1 and 127.0.0.2) with the same table: top-level
/// values, a `peer` block for 127.0.0.1, a `via` block for the local
/// address 127.0.0.2, and dynamic parameters for peers from 127.0.0.4.
fn override_policy() -> String {
    r#"local kumo = require 'kumo'
local function listener(listen)
  return {
    listen = listen, hostname = 'mx.test', banner = 'top banner',
    relay_hosts = { '127.0.0.0/8' }, max_message_size = 4000,
    meta = { x_top = 'top' },
    peer = {
      ['127.0.0.1'] = {
        hostname = 'peer.test', banner = 'peer banner', max_message_size = 2000,
        meta = { x_peer = 'peer' },
      },
    },
    via = {
      ['127.0.0.2'] = {
        hostname = 'via.test', banner = 'via banner', max_message_size = 1000,
        meta = { x_via = 'via' },
      },
    },
  }
end
kumo.on('init', function()
  kumo.define_spool { name = 'data', path = '{dir}/spool/data', min_free_space = '1%' }
  kumo.define_spool { name = 'meta', path = '{dir}/spool/meta', min_free_space = '1%' }
  kumo.configure_local_logs {
    log_dir = '{dir}/logs', max_segment_duration = '1s',
    meta = { 'x_top', 'x_peer', 'x_via', 'x_seen' },
  }
  kumo.start_esmtp_listener(listener('127.0.0.1:0'))
  kumo.start_esmtp_listener(listener('127.0.0.2:0'))
end)
kumo.on('smtp_server_get_dynamic_parameters', function(listener, conn_meta)
  if string.sub(conn_meta:get_meta('received_from'), 1, 10) == '127.0.0.4:' then
    return { hostname = 'dyn.test', banner = 'dynamic banner', max_message_size = 500 }
  end
end)
kumo.on('smtp_server_message_received', function(msg, conn_meta)
  msg:set_meta('x_seen', tostring(conn_meta:get_meta('x_top')) .. ','
    .. tostring(conn_meta:get_meta('x_peer')) .. ',' .. tostring(conn_meta:get_meta('x_via')))
  msg:set_meta('queue', 'null')
end)
"#
    .to_string()
}

/// Connect to `host:port` from `source`, print the banner and the first
/// EHLO line, and send one message of about each size to `rcpt`.
const OVERRIDE_CLIENT: &str = r#"
import smtplib, sys
host, port, source, rcpt = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
s = smtplib.SMTP(local_hostname='py.test', source_address=(source, 0), timeout=60)
code, msg = s.connect(host, port)
print('banner', code, msg.decode())
s.ehlo()
print('ehlo', s.ehlo_resp.decode().split('\n')[0])
for size in sys.argv[5:]:
    body = 'Subject: size %s\r\n\r\n' % size
    while len(body) < int(size):
        body += 'x' * 70 + '\r\n'
    try:
        s.sendmail('a@example.com', [rcpt], body)
        print('size', size, 'accepted')
    except smtplib.SMTPDataError as e:
        print('size', size, e.smtp_code, e.smtp_error.decode())
s.quit()
"#;

struct OverrideServer {
    server: TernServer,
    port_1: String,
    port_2: String,
}

fn start_override_server() -> OverrideServer {
    let server = start(override_policy());
    let port = |ip: &str| {
        server
            .listeners("smtp")
            .into_iter()
            .find(|a| a.ip().to_string() == ip)
            .unwrap_or_else(|| panic!("no listener on {ip}: {}", server.output()))
            .port()
            .to_string()
    };
    let (port_1, port_2) = (port("127.0.0.1"), port("127.0.0.2"));
    OverrideServer {
        server,
        port_1,
        port_2,
    }
}

#[test]
fn peer_via_and_dynamic_parameters_override_the_listener() {
    let s = start_override_server();
    let run = |host: &str, port: &str, source: &str, rcpt: &str, sizes: &[&str]| {
        let mut args = vec![host, port, source, rcpt];
        args.extend_from_slice(sizes);
        python(OVERRIDE_CLIENT, &args)
    };
    let too_big = "552 5.3.4 message too big";
    // No block matches 127.0.0.3 → 127.0.0.1: the top-level values.
    let out = run(
        "127.0.0.1",
        &s.port_1,
        "127.0.0.3",
        "plain@example.com",
        &["3000", "5000"],
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "banner 220 mx.test top banner",
            "ehlo mx.test Aloha py.test",
            "size 3000 accepted",
            &format!("size 5000 {too_big}"),
        ],
        "{out}"
    );
    // The peer block for 127.0.0.1.
    let out = run(
        "127.0.0.1",
        &s.port_1,
        "127.0.0.1",
        "peer@example.com",
        &["1500", "2500"],
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "banner 220 peer.test peer banner",
            "ehlo peer.test Aloha py.test",
            "size 1500 accepted",
            &format!("size 2500 {too_big}"),
        ],
        "{out}"
    );
    // Peer and via both match: via is applied last and wins.
    let out = run(
        "127.0.0.2",
        &s.port_2,
        "127.0.0.1",
        "via@example.com",
        &["800", "1500"],
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "banner 220 via.test via banner",
            "ehlo via.test Aloha py.test",
            "size 800 accepted",
            &format!("size 1500 {too_big}"),
        ],
        "{out}"
    );
    // smtp_server_get_dynamic_parameters is applied after via.
    let out = run(
        "127.0.0.2",
        &s.port_2,
        "127.0.0.4",
        "dyn@example.com",
        &["300", "700"],
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "banner 220 dyn.test dynamic banner",
            "ehlo dyn.test Aloha py.test",
            "size 300 accepted",
            &format!("size 700 {too_big}"),
        ],
        "{out}"
    );
}

#[test]
fn top_level_and_block_meta_all_reach_the_connection() {
    let s = start_override_server();
    for (host, port, source, rcpt) in [
        ("127.0.0.1", &s.port_1, "127.0.0.3", "plain@example.com"),
        ("127.0.0.1", &s.port_1, "127.0.0.1", "peer@example.com"),
        ("127.0.0.2", &s.port_2, "127.0.0.1", "via@example.com"),
    ] {
        let out = python(OVERRIDE_CLIENT, &[host, port, source, rcpt, "100"]);
        assert!(out.contains("size 100 accepted"), "{out}");
    }
    let seen = wait_for_records(&logs(&s.server), TIMEOUT, |r| count(r, "Reception") >= 3);
    let meta = |rcpt: &str| {
        of_type(&seen, "Reception")
            .into_iter()
            .find(|r| r["recipient"] == rcpt)
            .unwrap_or_else(|| panic!("no Reception for {rcpt}"))["meta"]
            .clone()
    };
    // Meta is merged, never removed: the top-level keys stay when a
    // block adds its own. x_seen is what conn_meta:get_meta returned.
    assert_eq!(
        meta("plain@example.com"),
        serde_json::json!({ "x_top": "top", "x_seen": "top,nil,nil" })
    );
    assert_eq!(
        meta("peer@example.com"),
        serde_json::json!({ "x_top": "top", "x_peer": "peer", "x_seen": "top,peer,nil" })
    );
    assert_eq!(
        meta("via@example.com"),
        serde_json::json!({
            "x_top": "top", "x_peer": "peer", "x_via": "via", "x_seen": "top,peer,via"
        })
    );
}

// ---------------------------------------------------------------------
// 9. The null queue (§3.7, §5.3)
// ---------------------------------------------------------------------

#[test]
fn null_queue_is_logged_and_leaves_nothing_in_the_spool() {
    let server = start(policy("", NULL_QUEUE));
    let addr = server.listener("smtp");
    // swaks as the client.
    let out = Command::new("swaks")
        .args(["--server", "127.0.0.1", "--port", &addr.port().to_string()])
        .args(["--from", "s@example.com", "--to", "r@example.com"])
        .args(["--helo", "swaks.test"])
        .output()
        .expect("swaks");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("<-  250 OK ids="))
        .unwrap_or_else(|| panic!("{text}"));
    let ids = ids_from(line);
    assert_eq!(ids.len(), 1, "{line}");
    assert_eq!(line, format!("<-  250 OK ids={}", ids[0]));
    let reception = receptions_of(&server, &ids).remove(0);
    assert_eq!(reception["queue"], "null");
    assert_eq!(reception["recipient"], "r@example.com");
    assert_eq!(reception["response"]["code"], 250);
    assert_eq!(spool_files(server.dir()), Vec::<PathBuf>::new());
}

#[test]
fn null_queue_from_a_peer_that_may_not_relay_gets_250() {
    // 127.0.0.1 may not relay. RCPT to reports.example is accepted (the
    // domain logs DSNs), but an ordinary message there is not relayed.
    let handlers = r#"
kumo.on('get_listener_domain', function(domain, listener, conn_meta)
  if domain == 'reports.example' then
    return kumo.make_listener_domain { log_oob = 'LogThenDrop' }
  end
end)
kumo.on('smtp_server_message_received', function(msg)
  if msg:get_first_named_header_value('Subject') == 'discard' then
    msg:set_meta('queue', 'null')
  end
end)
"#;
    let server = start(policy("relay_hosts = {},", handlers));
    let mut c = Conn::greeted(server.listener("smtp"));
    // Not relayed, not black-holed, not a report: 550.
    assert_eq!(
        c.transaction(
            "a@example.com",
            &["x@reports.example"],
            b"Subject: keep\r\n\r\nx\r\n"
        ),
        "550 5.7.1 relaying not permitted\r\n"
    );
    // Black-holed into the null queue: accepted.
    let reply = c.transaction(
        "a@example.com",
        &["x@reports.example"],
        b"Subject: discard\r\n\r\nx\r\n",
    );
    assert!(reply.starts_with("250 OK ids="), "{reply:?}");
    let seen = wait_for_records(&logs(&server), TIMEOUT, |r| count(r, "Reception") >= 2);
    assert!(
        of_type(&seen, "Reception")
            .iter()
            .any(|r| r["queue"] == "null"),
        "{seen:?}"
    );
    assert_eq!(spool_files(server.dir()), Vec::<PathBuf>::new());
}

// ---------------------------------------------------------------------
// 10. Rejection records (§12.2, §12.3)
// ---------------------------------------------------------------------

const REJECTION_HANDLERS: &str = r#"
kumo.on('smtp_server_rcpt_to', function(rcpt, conn_meta)
  if rcpt.user == 'blocked' then
    kumo.reject(550, '5.1.1 blocked recipient')
  end
end)
kumo.on('smtp_server_message_received', function(msg, conn_meta)
  if msg:get_first_named_header_value('Subject') == 'reject me' then
    kumo.reject(550, '5.7.1 content refused')
  end
  msg:set_meta('queue', 'null')
end)
"#;

/// The fields every Rejection of a session from `ehlo` has.
fn assert_rejection_common(record: &Value, ehlo: &str) {
    assert_eq!(record["type"], "Rejection");
    assert_eq!(record["id"], "", "{record}");
    assert_eq!(record["queue"], "", "{record}");
    assert_eq!(record["site"], "", "{record}");
    assert_eq!(record["size"], 0, "{record}");
    assert_eq!(
        record["peer_address"],
        serde_json::json!({ "name": ehlo, "addr": "127.0.0.1" }),
        "{record}"
    );
    let session = record["session_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{record}"));
    assert_eq!(session.len(), 36, "a dashed UUID: {record}");
    assert_eq!(record["reception_protocol"], "ESMTP", "{record}");
}

#[test]
fn rcpt_rejection_record_carries_the_transaction() {
    let server = start(policy("", REJECTION_HANDLERS));
    let mut c = Conn::connect(server.listener("smtp"));
    c.reply();
    c.cmd("EHLO rcpt-reject.test");
    assert!(c.cmd("MAIL FROM:<a@example.com>").starts_with("250 "));
    assert!(c.cmd("RCPT TO:<ok@example.com>").starts_with("250 "));
    assert_eq!(
        c.cmd("RCPT TO:<blocked@example.com>"),
        "550 5.1.1 blocked recipient\r\n"
    );
    let seen = wait_for_records(&logs(&server), TIMEOUT, |r| count(r, "Rejection") >= 1);
    let record = of_type(&seen, "Rejection")[0];
    assert_rejection_common(record, "rcpt-reject.test");
    assert_eq!(record["sender"], "a@example.com", "{record}");
    // The recipient of the RCPT the reply answers (the transaction's last
    // RCPT), not the earlier accepted one.
    assert_eq!(record["recipient"], "blocked@example.com", "{record}");
    assert_eq!(record["response"]["code"], 550);
    assert_eq!(
        record["response"]["enhanced_code"],
        serde_json::json!({ "class": 5, "subject": 1, "detail": 1 })
    );
    assert_eq!(record["response"]["content"], "blocked recipient");
}

#[test]
fn data_rejection_record_carries_the_transaction() {
    let server = start(policy("", REJECTION_HANDLERS));
    let mut c = Conn::connect(server.listener("smtp"));
    c.reply();
    c.cmd("EHLO data-reject.test");
    assert_eq!(
        c.transaction(
            "a@example.com",
            &["r1@example.com", "r2@example.com"],
            b"Subject: reject me\r\n\r\nx\r\n"
        ),
        "550 5.7.1 content refused\r\n"
    );
    // A second rejection in the same session shares its session_id.
    assert_eq!(c.cmd("VRFY x"), "502 5.5.1 Command unimplemented\r\n");
    let seen = wait_for_records(&logs(&server), TIMEOUT, |r| count(r, "Rejection") >= 2);
    let rejections = of_type(&seen, "Rejection");
    let record = rejections
        .iter()
        .find(|r| r["response"]["code"] == 550)
        .unwrap_or_else(|| panic!("{rejections:?}"));
    let vrfy = rejections
        .iter()
        .find(|r| r["response"]["code"] == 502)
        .unwrap_or_else(|| panic!("{rejections:?}"));
    assert_rejection_common(record, "data-reject.test");
    assert_eq!(record["session_id"], vrfy["session_id"]);
    assert_eq!(
        record["response"]["enhanced_code"],
        serde_json::json!({ "class": 5, "subject": 7, "detail": 1 })
    );
    assert_eq!(record["response"]["content"], "content refused");
    // Nothing was received.
    assert_eq!(count(&seen, "Reception"), 0);
    // The sender and last recipient of the transaction the reply ended.
    assert_eq!(record["sender"], "a@example.com", "{record}");
    assert_eq!(record["recipient"], "r2@example.com", "{record}");
}

// ---------------------------------------------------------------------
// 11. data_processing_timeout (§3.7)
// ---------------------------------------------------------------------

#[test]
fn data_processing_timeout_answers_451_and_keeps_nothing() {
    let handlers = format!(
        r#"
kumo.on('smtp_server_message_received', function(msg)
  if msg:get_first_named_header_value('Subject') == 'slow' then
    kumo.sleep(6)
  end
end)
{MAILDIR_QUEUE}
"#
    );
    let server = start(policy("data_processing_timeout = '3s',", &handlers));
    let mut c = Conn::greeted(server.listener("smtp"));
    let reply = c.transaction(
        "a@example.com",
        &["b@example.com"],
        b"Subject: slow\r\n\r\nx\r\n",
    );
    let stage = reply
        .strip_prefix("451 4.4.5 data_processing_timeout exceeded ")
        .unwrap_or_else(|| panic!("{reply:?}"));
    assert!(
        ["(rx)\r\n", "(resolve)\r\n", "(spool)\r\n", "(insert)\r\n"].contains(&stage),
        "{reply:?}"
    );
    // The next transaction on the same connection works.
    let reply = c.transaction(
        "a@example.com",
        &["b@example.com"],
        b"Subject: fast\r\n\r\nx\r\n",
    );
    assert!(reply.starts_with("250 OK ids="), "{reply:?}");
    let delivered = maildir_messages(&server, 1);
    assert_eq!(delivered.len(), 1);
    message_with_subject(&delivered, "fast");
    // The fast message left the spool after delivery; the slow one never
    // entered it.
    wait_until("an empty spool", || spool_files(server.dir()).is_empty());
    let seen = wait_for_records(&logs(&server), TIMEOUT, |r| count(r, "Delivery") >= 1);
    assert_eq!(count(&seen, "Reception"), 1, "{seen:?}");
    assert_eq!(maildir_messages(&server, 1).len(), 1);
}

// ---------------------------------------------------------------------
// 12. The Received header (§3.10)
// ---------------------------------------------------------------------

const NO_SUPPLEMENTAL: &str = "trace_headers = { supplemental_header = false },";

/// Check that `message` starts with the Received header of §3.10 and
/// that its date is RFC 2822, UTC and recent.
fn assert_received(message: &[u8], with: &str, id: &str, rcpt: &str, ehlo: &str) {
    let text = String::from_utf8_lossy(message);
    let prefix = format!(
        "Received: from {ehlo} (127.0.0.1)\r\n  by mx.test (KumoMTA 127.0.0.1) \r\n  with {with} id {id} for <{rcpt}>;\r\n  "
    );
    assert!(
        text.starts_with(&prefix),
        "expected the message to start with\n{prefix:?}\ngot\n{:?}",
        &text[..text.len().min(prefix.len() + 60)]
    );
    let rest = &text[prefix.len()..];
    let (date, after) = rest.split_once("\r\n").expect("the header ends in CRLF");
    assert!(
        !after.starts_with(' ') && !after.starts_with('\t'),
        "the header has no further lines: {rest:?}"
    );
    assert!(date.ends_with(" +0000"), "UTC: {date:?}");
    let parsed = chrono::DateTime::parse_from_rfc2822(date)
        .unwrap_or_else(|e| panic!("{date:?} is not RFC 2822: {e}"));
    let age = chrono::Utc::now().signed_duration_since(parsed);
    assert!(age.num_seconds().abs() < 600, "{date:?}");
}

#[test]
fn received_header_for_plain_esmtp() {
    let server = start(policy(NO_SUPPLEMENTAL, MAILDIR_QUEUE));
    let mut c = Conn::greeted(server.listener("smtp"));
    let reply = c.transaction(
        "a@example.com",
        &["First@Example.com", "second@example.com"],
        b"Subject: trace\r\n\r\nx\r\n",
    );
    let ids = ids_from(&reply);
    assert_eq!(ids.len(), 2, "{reply:?}");
    let stored = maildir_messages(&server, 2);
    for (id, rcpt) in ids.iter().zip(["First@Example.com", "second@example.com"]) {
        let message = stored
            .iter()
            .find(|m| String::from_utf8_lossy(m).contains(&format!(" id {id} ")))
            .unwrap_or_else(|| panic!("no stored message with id {id}"));
        assert_received(message, "ESMTP", id, rcpt, "client.test");
        assert!(message.ends_with(b"\r\nSubject: trace\r\n\r\nx\r\n"));
    }
    // Without a greeting the EHLO name is "unspecified".
    let mut c = Conn::connect(server.listener("smtp"));
    c.reply();
    let reply = c.transaction(
        "a@example.com",
        &["third@example.com"],
        b"Subject: nohelo\r\n\r\nx\r\n",
    );
    let id = ids_from(&reply).remove(0);
    let stored = maildir_messages(&server, 3);
    let message = message_with_subject(&stored, "nohelo");
    assert_received(&message, "ESMTP", &id, "third@example.com", "unspecified");
}

#[test]
fn received_header_for_esmtps() {
    let server = start(policy(NO_SUPPLEMENTAL, MAILDIR_QUEUE));
    let port = server.listener("smtp").port().to_string();
    let script = r#"
import smtplib, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP('127.0.0.1', int(sys.argv[1]), local_hostname='tls.test')
s.starttls(context=ctx)
s.ehlo()
s.mail('a@example.com')
s.rcpt('b@example.com')
code, msg = s.data('Subject: tls trace\r\n\r\nx\r\n')
print(code, msg.decode())
print(s.sock.version(), s.sock.cipher()[0])
s.quit()
"#;
    let out = python(script, &[&port]);
    let mut lines = out.lines();
    let reply = lines.next().unwrap_or_default();
    assert!(reply.starts_with("250 OK ids="), "{out}");
    let id = ids_from(reply).remove(0);
    // What the client negotiated, in OpenSSL's names.
    let (py_version, py_cipher) = lines
        .next()
        .and_then(|l| l.split_once(' '))
        .unwrap_or_else(|| panic!("{out}"));
    let seen = wait_for_records(&logs(&server), TIMEOUT, |r| count(r, "Reception") >= 1);
    let reception = of_type(&seen, "Reception")[0];
    let version = reception["tls_protocol_version"]
        .as_str()
        .expect("tls_protocol_version");
    let cipher = reception["tls_cipher"].as_str().expect("tls_cipher");
    // The same session in rustls' names (§12.2): TLSv1_3 and
    // TLS13_AES_256_GCM_SHA384 for OpenSSL's TLSv1.3 and
    // TLS_AES_256_GCM_SHA384.
    assert_eq!(py_version, "TLSv1.3", "{out}");
    assert_eq!(version, "TLSv1_3");
    assert_eq!(
        Some(cipher),
        py_cipher
            .strip_prefix("TLS_")
            .map(|rest| format!("TLS13_{rest}"))
            .as_deref(),
        "{out}"
    );
    let stored = maildir_messages(&server, 1);
    assert_received(
        &stored[0],
        &format!("ESMTPS ({version}:{cipher})"),
        &id,
        "b@example.com",
        "tls.test",
    );
}
