//! AUTH PLAIN, XCLIENT, the inbound PROXY protocol, the per-message
//! relay re-check, the per-message free-space check and the pre-banner
//! refusal of the ESMTP listener, against the real server with real
//! clients (Python's smtplib, swaks, raw sockets).
//!
//! The spools use `min_free_space = '1%'`: shared build machines often
//! have less than the default 10% free, which would refuse every session.

mod common;

use common::{python, start_tern};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;
use tern_testkit::{Builder, SmtpClient};

/// A server whose listener lets nobody relay by address; relaying is
/// granted by `get_listener_domain` to authenticated sessions only.
/// `extra_listener` is spliced into the listener table, `extra_policy`
/// appended to the policy.
fn auth_policy(extra_listener: &str, extra_policy: &str) -> String {
    format!(
        r#"local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool {{ name = 'data', path = '{{dir}}/spool/data', min_free_space = '1%' }}
  kumo.define_spool {{ name = 'meta', path = '{{dir}}/spool/meta', min_free_space = '1%' }}
  kumo.configure_local_logs {{ log_dir = '{{dir}}/logs', meta = {{ 'authn_id', 'authz_id', 'x_identities' }} }}
  kumo.start_esmtp_listener {{ listen = '127.0.0.1:0', hostname = 'mx.test', relay_hosts = {{}} {extra_listener} }}
end)
kumo.on('smtp_server_auth_plain', function(authz, authc, password, conn_meta)
  if authc == 'scott' then
    return password == 'tiger'
  end
  if authc == 'info' and password == 'secret' then
    return {{ identities = {{ {{ identity = 'extra', context = 'Custom' }} }}, groups = {{ 'staff' }} }}
  end
  if authc == 'boom' then
    kumo.reject(454, '4.7.0 try later')
  end
  return false
end)
kumo.on('get_listener_domain', function(domain, listener, conn_meta)
  if conn_meta:get_meta('authz_id') then
    return kumo.make_listener_domain {{ relay_to = true }}
  end
end)
kumo.on('smtp_server_message_received', function(msg, conn_meta)
  local names = {{}}
  for _, id in ipairs(conn_meta:auth_info().identities) do
    table.insert(names, id.context .. '=' .. id.identity)
  end
  msg:set_meta('x_identities', table.concat(names, ','))
end)
{extra_policy}
"#
    )
}

fn read_records(dir: &std::path::Path) -> Vec<serde_json::Value> {
    let mut records = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir.join("logs")) else {
        return records;
    };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.path());
    for entry in entries {
        let out = Command::new("zstd")
            .arg("-dc")
            .arg(entry.path())
            .output()
            .unwrap();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            records.push(serde_json::from_str(line).unwrap());
        }
    }
    records
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn auth_plain_over_starttls_with_smtplib() {
    let server = start_tern(auth_policy("", ""));
    let port = server.listener("smtp").port();
    let script = format!(
        r#"
import smtplib, ssl, base64
def b64(b): return base64.b64encode(b).decode()
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP('127.0.0.1', {port})
s.ehlo('py.test')
print('clear auth advertised', s.has_extn('auth'))
s.starttls(context=ctx)
s.ehlo('py.test')
print('tls auth', s.esmtp_features.get('auth').strip())
s.mail('a@example.com')
print('before auth', *s.rcpt('b@remote.example'))
s.rset()
print('wrong password', *s.docmd('AUTH', 'PLAIN ' + b64(b'\0scott\0wrong')))
print('bad base64', *s.docmd('AUTH', 'PLAIN !!!notbase64'))
print('continuation', *s.docmd('AUTH', 'PLAIN'))
print('cancel', *s.docmd('*'))
print('continuation', *s.docmd('AUTH', 'PLAIN'))
print('two fields', *s.docmd(b64(b'scott\0tiger')))
print('bad utf8', *s.docmd('AUTH', 'PLAIN ' + b64(b'\0sc\xffott\0tiger')))
print('mechanism', *s.docmd('AUTH', 'LOGIN'))
s.mail('a@example.com')
print('in transaction', *s.docmd('AUTH', 'PLAIN ' + b64(b'\0scott\0tiger')))
s.rset()
print('login', *s.login('scott', 'tiger'))
print('again', *s.docmd('AUTH', 'PLAIN ' + b64(b'\0scott\0tiger')))
s.sendmail('a@example.com', ['b@remote.example'], 'Subject: authed\r\n\r\nbody\r\n')
print('sent')
s.quit()
"#
    );
    let text = python(&script, &[]);
    let expect = [
        "clear auth advertised False",
        "tls auth PLAIN",
        "before auth 550 b'5.7.1 relaying not permitted for 127.0.0.1:",
        "wrong password 535 b'5.7.8 AUTH invalid'",
        "bad base64 501 b'5.5.2 Invalid base64 response'",
        "continuation 334 b''",
        "cancel 501 b'5.5.0 AUTH cancelled by client'",
        "two fields 501 b'5.5.2 Invalid decoded PLAIN response'",
        "bad utf8 501 b'5.5.2 Invalid UTF8 in decoded PLAIN response'",
        "mechanism 504 b'5.5.4 AUTH LOGIN not supported'",
        "in transaction 503 b'5.5.1 AUTH not permitted inside a transaction'",
        "login 235 b'2.7.0 AUTH OK!'",
        "again 503 b\"5.5.1 AUTH me once, can't get authed again!\"",
        "sent",
    ];
    for line in expect {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }

    let dir = server.stop();
    let records = read_records(dir.path());
    let reception = records
        .iter()
        .find(|r| r["type"] == "Reception")
        .expect("a Reception record");
    assert_eq!(reception["meta"]["authn_id"], "scott");
    // An empty authorization identity is replaced by the authentication one.
    assert_eq!(reception["meta"]["authz_id"], "scott");
    assert_eq!(
        reception["meta"]["x_identities"],
        "SmtpAuthPlainAuthorization=scott,SmtpAuthPlainAuthentication=scott"
    );
    // Refused AUTH attempts are Rejections like any other 5xx reply.
    assert!(records.iter().any(|r| r["type"] == "Rejection"
        && r["response"]["code"] == 535
        && r["response"]["content"] == "AUTH invalid"));
    // Never the password.
    assert!(!serde_json::to_string(&records).unwrap().contains("tiger"));
}

#[test]
fn auth_info_table_and_authz_are_kept() {
    let server = start_tern(auth_policy("", ""));
    let port = server.listener("smtp").port();
    let script = format!(
        r#"
import smtplib, ssl, base64
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP('127.0.0.1', {port})
s.starttls(context=ctx)
s.ehlo('py.test')
print('auth', *s.docmd('AUTH', 'PLAIN ' + base64.b64encode(b'boss\0info\0secret').decode()))
s.sendmail('a@example.com', ['b@remote.example'], 'Subject: authed\r\n\r\nbody\r\n')
print('sent')
s.quit()
"#
    );
    let text = python(&script, &[]);
    assert!(text.contains("auth 235") && text.contains("sent"), "{text}");
    let dir = server.stop();
    let records = read_records(dir.path());
    let reception = records
        .iter()
        .find(|r| r["type"] == "Reception")
        .expect("a Reception record");
    assert_eq!(reception["meta"]["authz_id"], "boss");
    assert_eq!(reception["meta"]["authn_id"], "info");
    assert_eq!(
        reception["meta"]["x_identities"],
        "SmtpAuthPlainAuthorization=boss,SmtpAuthPlainAuthentication=info,Custom=extra"
    );
}

#[test]
fn auth_needs_tls_a_handler_and_a_true_verdict() {
    // Without TLS: 524 (also before any EHLO), and nothing advertised.
    let server = start_tern(auth_policy("", ""));
    let mut smtp = server.smtp().unwrap();
    smtp.read_reply().unwrap();
    let auth = format!("AUTH PLAIN {}", b64(b"\0scott\0tiger"));
    let (code, text) = smtp.command(&auth).unwrap();
    assert_eq!(
        (code, text.as_str()),
        (
            524,
            "524 5.7.11 AUTH PLAIN requires an encrypted channel\r\n"
        )
    );
    let (_, ehlo) = smtp.command("EHLO c.test").unwrap();
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    assert_eq!(smtp.command(&auth).unwrap().0, 524);
    // The policy can refuse with its own reply.
    drop(smtp);
    let port = server.listener("smtp").port();
    let text = python(
        &format!(
            r#"
import smtplib, ssl
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP('127.0.0.1', {port})
s.starttls(context=ctx)
s.ehlo('py.test')
try:
    s.login('boom', 'x')
except smtplib.SMTPAuthenticationError as e:
    print('refused', e.smtp_code, e.smtp_error.decode())
print('noop', *s.noop())
"#
        ),
        &[],
    );
    assert!(text.contains("refused 454 4.7.0 try later"), "{text}");
    assert!(text.contains("noop 250"), "{text}");
    drop(server);

    // No smtp_server_auth_plain handler at all: every attempt is refused.
    let policy = auth_policy("", "").replace("'smtp_server_auth_plain'", "'x_unused_event'");
    let server = start_tern(policy);
    let port = server.listener("smtp").port();
    let text = python(
        &format!(
            r#"
import smtplib, ssl
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP('127.0.0.1', {port})
s.starttls(context=ctx)
s.ehlo('py.test')
try:
    s.login('scott', 'tiger')
except smtplib.SMTPAuthenticationError as e:
    print('refused', e.smtp_code, e.smtp_error.decode())
"#
        ),
        &[],
    );
    assert!(text.contains("refused 535 5.7.8 AUTH invalid"), "{text}");
}

#[test]
fn swaks_authenticates_over_tls() {
    let server = start_tern(auth_policy("", ""));
    let addr = server.listener("smtp");
    let swaks = |password: &str| {
        Command::new("swaks")
            .args(["--server", "127.0.0.1", "--port", &addr.port().to_string()])
            .args(["--from", "a@example.com", "--to", "b@remote.example"])
            .args(["--tls", "--auth", "PLAIN", "--auth-user", "scott"])
            .args(["--auth-password", password])
            .output()
            .expect("swaks is installed by scripts/setup.sh")
    };
    let good = swaks("tiger");
    let text = String::from_utf8_lossy(&good.stdout);
    assert!(good.status.success(), "{text}");
    assert!(text.contains("<~  235 2.7.0 AUTH OK!"), "{text}");
    assert!(text.contains("<~  250 OK ids="), "{text}");
    let bad = swaks("wrong");
    let text = String::from_utf8_lossy(&bad.stdout);
    assert!(!bad.status.success(), "{text}");
    assert!(text.contains("<~* 535 5.7.8 AUTH invalid"), "{text}");
}

/// A policy whose MAIL FROM handler reports the session's addresses, and
/// whose `peer` blocks are the subject of the test.
fn address_policy(extra_listener: &str) -> String {
    format!(
        r#"local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool {{ name = 'data', path = '{{dir}}/spool/data', min_free_space = '1%' }}
  kumo.define_spool {{ name = 'meta', path = '{{dir}}/spool/meta', min_free_space = '1%' }}
  kumo.start_esmtp_listener {{ listen = '127.0.0.1:0', hostname = 'mx.test' {extra_listener} }}
end)
kumo.on('smtp_server_get_dynamic_parameters', function(listener, conn_meta)
  if conn_meta:get_meta('received_from') == '198.51.100.1:1000' then
    return {{ banner = 'dynamic for ' .. conn_meta:get_meta('received_from') }}
  end
end)
kumo.on('smtp_server_mail_from', function(sender, conn_meta)
  if sender.user == 'whoami' then
    kumo.reject(550, string.format('5.0.0 from=%s via=%s orig_from=%s orig_via=%s',
      conn_meta:get_meta('received_from'), conn_meta:get_meta('received_via'),
      tostring(conn_meta:get_meta('orig_received_from')), tostring(conn_meta:get_meta('orig_received_via'))))
  end
end)
"#
    )
}

#[test]
fn xclient_from_an_allowed_peer_changes_the_addresses() {
    let server = start_tern(address_policy(
        ", peer = { ['127.0.0.1'] = { allow_xclient = true }, ['192.0.2.0/24'] = { banner = 'xclient banner' } }",
    ));
    let listener = server.listener("smtp");
    let mut smtp = server.smtp().unwrap();
    smtp.read_reply().unwrap();
    let (_, ehlo) = smtp.command("EHLO c.test").unwrap();
    assert!(
        ehlo.ends_with("250 XCLIENT ADDR PORT DESTADDR DESTPORT\r\n"),
        "{ehlo}"
    );
    let (code, text) = smtp.command("XCLIENT NAME=spike.example").unwrap();
    assert_eq!(
        (code, text.as_str()),
        (501, "501 parameter NAME is not supported\r\n")
    );
    let (code, text) = smtp.command("XCLIENT ADDR=not-an-ip").unwrap();
    assert_eq!(
        (code, text.as_str()),
        (501, "501 ADDR not-an-ip is invalid\r\n")
    );
    assert_eq!(smtp.command("MAIL FROM:<a@example.com>").unwrap().0, 250);
    let (code, text) = smtp.command("XCLIENT ADDR=192.0.2.7").unwrap();
    assert_eq!(
        (code, text.as_str()),
        (503, "503 mail transaction in progress\r\n")
    );
    assert_eq!(smtp.command("RSET").unwrap().0, 250);

    // Success: the banner of the new peer's block is the reply.
    let (code, text) = smtp
        .command("XCLIENT ADDR=192.0.2.7 PORT=4242 DESTADDR=203.0.113.9 DESTPORT=2525")
        .unwrap();
    assert_eq!(
        (code, text.as_str()),
        (220, "220 mx.test xclient banner\r\n")
    );
    let (_, text) = smtp.command("MAIL FROM:<whoami@example.com>").unwrap();
    assert!(
        text.starts_with("550 5.0.0 from=192.0.2.7:4242 via=203.0.113.9:2525 orig_from=127.0.0.1:"),
        "{text}"
    );
    assert!(
        text.ends_with(&format!(" orig_via={listener}\r\n")),
        "{text}"
    );
    // The new peer is not in relay_hosts, and not allowed XCLIENT either.
    assert_eq!(smtp.command("MAIL FROM:<a@example.com>").unwrap().0, 250);
    let (code, text) = smtp.command("RCPT TO:<b@remote.example>").unwrap();
    assert_eq!(
        (code, text.as_str()),
        (
            550,
            "550 5.7.1 relaying not permitted for 192.0.2.7:4242\r\n"
        )
    );
    assert_eq!(smtp.command("RSET").unwrap().0, 250);
    let (_, ehlo) = smtp.command("EHLO c.test").unwrap();
    assert!(!ehlo.contains("XCLIENT"), "{ehlo}");
    let (code, text) = smtp.command("XCLIENT ADDR=127.0.0.1").unwrap();
    assert_eq!(
        (code, text.as_str()),
        (550, "550 insufficient authorization\r\n")
    );

    // Dynamic parameters are recomputed for the new address.
    let mut smtp = server.smtp().unwrap();
    smtp.read_reply().unwrap();
    let (code, text) = smtp.command("XCLIENT ADDR=198.51.100.1 PORT=1000").unwrap();
    assert_eq!(
        (code, text.as_str()),
        (220, "220 mx.test dynamic for 198.51.100.1:1000\r\n")
    );
}

#[test]
fn xclient_from_a_stranger_is_refused() {
    // allow_xclient only for a network the test client is not in.
    let server = start_tern(address_policy(
        ", peer = { ['10.0.0.0/8'] = { allow_xclient = true } }",
    ));
    let mut smtp = server.smtp().unwrap();
    smtp.read_reply().unwrap();
    let (_, ehlo) = smtp.command("EHLO c.test").unwrap();
    assert!(!ehlo.contains("XCLIENT"), "{ehlo}");
    let (code, text) = smtp.command("XCLIENT ADDR=10.1.1.1").unwrap();
    assert_eq!(
        (code, text.as_str()),
        (550, "550 insufficient authorization\r\n")
    );
    // Whatever the arguments: a stranger learns nothing from a syntax
    // error, and nothing is changed by XCLIENT inside a transaction.
    for line in ["XCLIENT", "XCLIENT ADDR", "XCLIENT ADDR=+zz"] {
        let (code, text) = smtp.command(line).unwrap();
        assert_eq!(
            (code, text.as_str()),
            (550, "550 insufficient authorization\r\n"),
            "{line}"
        );
    }
    assert_eq!(smtp.command("MAIL FROM:<a@example.com>").unwrap().0, 250);
    let (code, text) = smtp.command("XCLIENT ADDR=10.1.1.1").unwrap();
    assert_eq!(
        (code, text.as_str()),
        (550, "550 insufficient authorization\r\n")
    );
    assert_eq!(smtp.command("RSET").unwrap().0, 250);
    let (_, text) = smtp.command("MAIL FROM:<whoami@example.com>").unwrap();
    assert!(text.contains("from=127.0.0.1:"), "unchanged: {text}");
    assert!(text.contains("orig_from=nil"), "{text}");
}

const PROXY_LISTENER: &str = ", peer = { ['127.0.0.1'] = { require_proxy_protocol = true }, ['203.0.113.0/24'] = { banner = 'behind a proxy' } }";

fn proxy_v2_ipv4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.push(0x21); // version 2, PROXY
    header.push(0x11); // TCP over IPv4
    header.extend_from_slice(&12u16.to_be_bytes());
    header.extend_from_slice(&src);
    header.extend_from_slice(&dst);
    header.extend_from_slice(&sport.to_be_bytes());
    header.extend_from_slice(&dport.to_be_bytes());
    header
}

/// True when the server closes the connection without sending anything.
fn closed_without_banner(addr: SocketAddr, send: &[u8]) -> bool {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(send).unwrap();
    let mut buf = Vec::new();
    match stream.read_to_end(&mut buf) {
        Ok(_) => buf.is_empty(),
        // A reset after our unread bytes also means "closed".
        Err(err) => err.kind() == std::io::ErrorKind::ConnectionReset && buf.is_empty(),
    }
}

#[test]
fn proxy_protocol_v1_and_v2_set_the_client_address() {
    let server = start_tern(address_policy(PROXY_LISTENER));
    let addr = server.listener("smtp");

    let mut smtp = SmtpClient::connect(addr).unwrap();
    smtp.send_raw(b"PROXY TCP4 203.0.113.5 192.0.2.25 5555 25\r\n")
        .unwrap();
    let (code, banner) = smtp.read_reply().unwrap();
    assert_eq!(
        (code, banner.as_str()),
        (220, "220 mx.test behind a proxy\r\n")
    );
    let (_, text) = smtp.command("MAIL FROM:<whoami@example.com>").unwrap();
    assert!(
        text.starts_with("550 5.0.0 from=203.0.113.5:5555 via=192.0.2.25:25 orig_from=127.0.0.1:"),
        "{text}"
    );
    assert!(text.contains(&format!("orig_via={addr}")), "{text}");

    let mut smtp = SmtpClient::connect(addr).unwrap();
    let mut v2 = proxy_v2_ipv4([198, 51, 100, 1], 1000, [192, 0, 2, 26], 587);
    // A client may pipeline its EHLO right behind the header.
    v2.extend_from_slice(b"EHLO c.test\r\n");
    smtp.send_raw(&v2).unwrap();
    let (code, banner) = smtp.read_reply().unwrap();
    // Dynamic parameters saw the proxied address.
    assert_eq!(
        (code, banner.as_str()),
        (220, "220 mx.test dynamic for 198.51.100.1:1000\r\n")
    );
    assert_eq!(smtp.read_reply().unwrap().0, 250);
    let (_, text) = smtp.command("MAIL FROM:<whoami@example.com>").unwrap();
    assert!(
        text.starts_with("550 5.0.0 from=198.51.100.1:1000 via=192.0.2.26:587"),
        "{text}"
    );

    // v1 UNKNOWN keeps the TCP addresses.
    let mut smtp = SmtpClient::connect(addr).unwrap();
    smtp.send_raw(b"PROXY UNKNOWN\r\n").unwrap();
    assert_eq!(smtp.read_reply().unwrap().0, 220);
    let (_, text) = smtp.command("MAIL FROM:<whoami@example.com>").unwrap();
    assert!(text.contains("from=127.0.0.1:"), "{text}");
    assert!(text.contains("orig_from=nil"), "{text}");
}

#[test]
fn bad_or_missing_proxy_header_closes_without_banner() {
    let server = start_tern(address_policy(PROXY_LISTENER));
    let addr = server.listener("smtp");
    for bad in [
        &b"PROXY TCP4 garbage\r\n"[..],
        b"PROXY TCP4 203.0.113.5 192.0.2.25 99999 25\r\n",
        b"EHLO not-a-proxy\r\n",
        b"\r\n\r\n\0\r\nQUIT\n\x11\x11\x00\x00",
    ] {
        assert!(
            closed_without_banner(addr, bad),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    // A client that waits for the banner gets nothing, then is dropped
    // after client_timeout.
    drop(server);
    let server = start_tern(address_policy(
        ", peer = { ['127.0.0.1'] = { require_proxy_protocol = true, client_timeout = '1s' } }",
    ));
    let started = std::time::Instant::now();
    assert!(closed_without_banner(server.listener("smtp"), b""));
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn proxy_header_is_not_required_elsewhere() {
    // Without require_proxy_protocol a PROXY line is just an unknown verb.
    let server = start_tern(address_policy(""));
    let mut smtp = server.smtp().unwrap();
    assert_eq!(smtp.read_reply().unwrap().0, 220);
    let (code, _) = smtp
        .command("PROXY TCP4 203.0.113.5 192.0.2.25 5555 25")
        .unwrap();
    assert_eq!(code, 502);
}

/// Free bytes available to unprivileged writers on the filesystem of `path`.
fn free_bytes(path: &std::path::Path) -> u64 {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut stat) }, 0);
    stat.f_bavail as u64 * stat.f_frsize as u64
}

#[test]
fn disk_filling_up_mid_session_refuses_the_next_message_only() {
    const GIB: u64 = 1 << 30;
    let dir = tempfile::tempdir().unwrap();
    let free = free_bytes(dir.path());
    if free < 8 * GIB {
        eprintln!("skipping: needs 8 GiB free, have {free}");
        return;
    }
    // Leave 2 GiB of headroom at connect time, then take 4 GiB away.
    let min_free = free - 2 * GIB;
    let policy = format!(
        r#"local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool {{ name = 'data', path = '{{dir}}/spool/data', min_free_space = {min_free} }}
  kumo.define_spool {{ name = 'meta', path = '{{dir}}/spool/meta', min_free_space = '1%' }}
  kumo.start_esmtp_listener {{ listen = '127.0.0.1:0', hostname = 'mx.test' }}
end)
"#
    );
    let server = Builder::new(policy)
        .binary(env!("CARGO_BIN_EXE_tern"))
        .dir(dir)
        .start()
        .unwrap();
    let mut smtp = server.smtp().unwrap();
    assert_eq!(smtp.read_reply().unwrap().0, 220);
    smtp.command("EHLO c.test").unwrap();
    let (code, first) = smtp
        .send_message(
            "a@example.com",
            "b@example.com",
            b"Subject: one\r\n\r\nx\r\n",
        )
        .unwrap();
    assert_eq!(code, 250, "{first}");

    let filler = server.dir().join("filler");
    let file = std::fs::File::create(&filler).unwrap();
    let rc = unsafe {
        libc::fallocate(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            0,
            0,
            (4 * GIB) as libc::off_t,
        )
    };
    if rc != 0 {
        eprintln!("skipping: fallocate is not supported here");
        return;
    }
    // The spool reuses a free-space verdict for 50 ms.
    std::thread::sleep(std::time::Duration::from_millis(100));
    let (code, text) = smtp
        .send_message(
            "a@example.com",
            "b@example.com",
            b"Subject: two\r\n\r\nx\r\n",
        )
        .unwrap();
    assert_eq!(
        (code, text.as_str()),
        (421, "421 4.3.2 mx.test disk is too full. Try later\r\n")
    );
    assert!(smtp.is_closed());
    drop(file);
    std::fs::remove_file(&filler).unwrap();

    // The first message is still in the spool.
    let id: tern_types::SpoolId = first
        .trim()
        .trim_start_matches("250 OK ids=")
        .parse()
        .unwrap();
    let dir = server.stop();
    let config = tern_spool::SpoolConfig::new(
        "data",
        dir.path().join("spool/data"),
        tern_spool::SpoolKind::LocalDisk,
    );
    let data = tern_spool::Spool::open(&config).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bytes = rt.block_on(data.load(id)).unwrap();
    assert!(String::from_utf8_lossy(&bytes).contains("Subject: one"));
}

#[test]
fn relaying_is_decided_again_for_each_message() {
    let policy = r#"local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool { name = 'data', path = '{dir}/spool/data', min_free_space = '1%' }
  kumo.define_spool { name = 'meta', path = '{dir}/spool/meta', min_free_space = '1%' }
  kumo.configure_local_logs { log_dir = '{dir}/logs' }
  kumo.start_esmtp_listener { listen = '127.0.0.1:0', hostname = 'mx.test', relay_hosts = {} }
end)
kumo.on('get_listener_domain', function(domain, listener, conn_meta)
  if domain == 'open.example' then
    return kumo.make_listener_domain { relay_to = true }
  end
  if domain == 'reports.example' then
    return kumo.make_listener_domain { log_arf = 'LogThenDrop' }
  end
  if domain == 'later.example' then
    kumo.reject(450, '4.1.0 ask again later')
  end
end)
"#;
    let server = start_tern(policy.to_string());
    let mut smtp = server.smtp().unwrap();
    smtp.read_reply().unwrap();
    smtp.command("EHLO c.test").unwrap();
    let body = b"Subject: not a report\r\n\r\nx\r\n";
    // Accepted at RCPT (reports are logged for that domain), but an
    // ordinary message is not relayed: 550 after the data.
    let (code, text) = smtp
        .send_message("a@sender.example", "abuse@reports.example", body)
        .unwrap();
    assert_eq!(
        (code, text.as_str()),
        (550, "550 5.7.1 relaying not permitted\r\n")
    );
    // A transaction mixing both: only the relayable message is kept.
    assert_eq!(smtp.command("MAIL FROM:<a@sender.example>").unwrap().0, 250);
    assert_eq!(
        smtp.command("RCPT TO:<abuse@reports.example>").unwrap().0,
        250
    );
    assert_eq!(smtp.command("RCPT TO:<b@open.example>").unwrap().0, 250);
    assert_eq!(smtp.command("DATA").unwrap().0, 354);
    smtp.send_raw(body).unwrap();
    let (code, text) = smtp.command(".").unwrap();
    assert_eq!(code, 250, "{text}");
    let ids: Vec<&str> = text
        .trim()
        .trim_start_matches("250 OK ids=")
        .split(' ')
        .collect();
    assert_eq!(ids.len(), 1, "{text}");
    // A rejection from get_listener_domain is the one and only reply.
    assert_eq!(smtp.command("MAIL FROM:<a@sender.example>").unwrap().0, 250);
    let (code, text) = smtp.command("RCPT TO:<x@later.example>").unwrap();
    assert_eq!(
        (code, text.as_str()),
        (450, "450 4.1.0 ask again later\r\n")
    );
    assert_eq!(smtp.command("NOOP").unwrap().0, 250);
    let dir = server.stop();
    let records = read_records(dir.path());
    let receptions: Vec<_> = records
        .iter()
        .filter(|r| r["type"] == "Reception")
        .collect();
    // A Reception record for every message, relayed or not.
    assert_eq!(receptions.len(), 3, "{receptions:?}");
    assert!(receptions.iter().any(|r| r["id"] == ids[0]));
    let config = tern_spool::SpoolConfig::new(
        "data",
        dir.path().join("spool/data"),
        tern_spool::SpoolKind::LocalDisk,
    );
    let data = tern_spool::Spool::open(&config).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for record in &receptions {
        let id: tern_types::SpoolId = record["id"].as_str().unwrap().parse().unwrap();
        let stored = rt.block_on(data.load(id)).is_ok();
        assert_eq!(stored, record["id"] == ids[0], "{record}");
    }
}

#[test]
fn connection_accepted_rejection_is_sent_before_closing() {
    let policy = r#"local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool { name = 'data', path = '{dir}/spool/data', min_free_space = '1%' }
  kumo.define_spool { name = 'meta', path = '{dir}/spool/meta', min_free_space = '1%' }
  kumo.start_esmtp_listener { listen = '127.0.0.1:0', hostname = 'mx.test' }
end)
kumo.on('smtp_server_connection_accepted', function(conn_meta)
  kumo.reject(554, '5.7.1 not from here')
end)
"#;
    let server = start_tern(policy.to_string());
    let mut smtp = server.smtp().unwrap();
    let (code, text) = smtp.read_reply().unwrap();
    assert_eq!((code, text.as_str()), (554, "554 5.7.1 not from here\r\n"));
    assert!(smtp.is_closed());
}
