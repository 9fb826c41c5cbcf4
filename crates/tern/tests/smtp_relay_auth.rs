//! Relaying rules (§3.6) and the edges of AUTH PLAIN (§3.11) against the
//! real server: what `get_listener_domain` is asked and with which
//! arguments, `relay_from`, the answers remembered in a session, the
//! parameters `kumo.make_listener_domain` refuses, and the long AUTH
//! response line.
//!
//! The spools use `min_free_space = '1%'`: shared build machines often
//! have less than the default 10% free, which would refuse every session.

mod common;

use common::{python, start_tern};
use std::net::SocketAddr;
use tern_testkit::SmtpClient;

/// A policy whose listener lets nobody relay by address unless
/// `listener` says otherwise; `handlers` is appended.
fn policy(listener: &str, handlers: &str) -> String {
    format!(
        r#"local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool {{ name = 'data', path = '{{dir}}/spool/data', min_free_space = '1%' }}
  kumo.define_spool {{ name = 'meta', path = '{{dir}}/spool/meta', min_free_space = '1%' }}
  kumo.start_esmtp_listener {{ hostname = 'mx.test', {listener} }}
end)
{handlers}
"#
    )
}

fn greeted(addr: SocketAddr) -> SmtpClient {
    let mut smtp = SmtpClient::connect(addr).unwrap();
    assert_eq!(smtp.read_reply().unwrap().0, 220);
    assert_eq!(smtp.command("EHLO c.test").unwrap().0, 250);
    smtp
}

fn reply(smtp: &mut SmtpClient, line: &str) -> String {
    smtp.command(line).unwrap().1
}

/// `get_listener_domain` and `smtp_server_get_dynamic_parameters` are
/// given the local `ip:port` of the connection, as KumoMTA does: the
/// address the client reached, not the wildcard the listener is bound to,
/// and the `DESTADDR`/`DESTPORT` of an XCLIENT once one was accepted.
#[test]
fn events_see_the_local_address_of_the_connection() {
    let server = start_tern(policy(
        "listen = '0.0.0.0:0', relay_hosts = {}, peer = { ['127.0.0.1'] = { allow_xclient = true } }",
        r#"
kumo.on('smtp_server_get_dynamic_parameters', function(listener, conn_meta)
  return { banner = 'listener=' .. listener }
end)
kumo.on('get_listener_domain', function(domain, listener, conn_meta)
  if domain == 'probe.example' then
    kumo.reject(550, '5.0.0 listener=' .. listener)
  end
end)
"#,
    ));
    let port = server.listener("smtp").port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut smtp = SmtpClient::connect(addr).unwrap();
    assert_eq!(
        smtp.read_reply().unwrap().1,
        format!("220 mx.test listener={addr}\r\n")
    );
    assert_eq!(reply(&mut smtp, "EHLO c.test").get(..4), Some("250-"));
    assert_eq!(
        reply(&mut smtp, "MAIL FROM:<a@sender.example>").get(..3),
        Some("250")
    );
    assert_eq!(
        reply(&mut smtp, "RCPT TO:<x@probe.example>"),
        format!("550 5.0.0 listener={addr}\r\n")
    );
    assert_eq!(reply(&mut smtp, "RSET").get(..3), Some("250"));

    assert_eq!(
        reply(&mut smtp, "XCLIENT DESTADDR=203.0.113.9 DESTPORT=2525"),
        "220 mx.test listener=203.0.113.9:2525\r\n"
    );
    assert_eq!(
        reply(&mut smtp, "MAIL FROM:<a@sender.example>").get(..3),
        Some("250")
    );
    assert_eq!(
        reply(&mut smtp, "RCPT TO:<x@probe.example>"),
        "550 5.0.0 listener=203.0.113.9:2525\r\n"
    );
}

/// `relay_from` grants relaying to anywhere when it lists the peer and is
/// returned for the **sender's** domain; for the recipient's domain it
/// grants nothing. The peer is the one XCLIENT names, once it has.
#[test]
fn relay_from_applies_to_the_senders_domain_and_peer() {
    let server = start_tern(policy(
        "listen = '127.0.0.1:0', relay_hosts = {}, peer = { ['127.0.0.1'] = { allow_xclient = true } }",
        r#"
kumo.on('get_listener_domain', function(domain, listener, conn_meta)
  if domain == 'trusted.example' then
    return kumo.make_listener_domain { relay_from = { '127.0.0.0/8' } }
  end
  if domain == 'branch.example' then
    return kumo.make_listener_domain { relay_from = { '10.0.0.0/8' } }
  end
  if domain == 'inbound.example' then
    return kumo.make_listener_domain { relay_from = { '127.0.0.1' }, relay_to = false }
  end
end)
"#,
    ));
    let addr = server.listener("smtp");
    let mut smtp = greeted(addr);
    let (code, text) = smtp
        .send_message(
            "a@trusted.example",
            "b@anywhere.example",
            b"Subject: x\r\n\r\nx\r\n",
        )
        .unwrap();
    assert_eq!(code, 250, "{text}");

    let refused = |smtp: &mut SmtpClient, from: &str, to: &str, peer: &str| {
        assert_eq!(
            reply(smtp, &format!("MAIL FROM:<{from}>")).get(..3),
            Some("250")
        );
        let text = reply(smtp, &format!("RCPT TO:<{to}>"));
        assert!(
            text.starts_with(&format!("550 5.7.1 relaying not permitted for {peer}:")),
            "{from} -> {to}: {text}"
        );
        assert_eq!(reply(smtp, "RSET").get(..3), Some("250"));
    };
    // The sender domain's relay_from does not list 127.0.0.1.
    refused(
        &mut smtp,
        "a@branch.example",
        "b@anywhere.example",
        "127.0.0.1",
    );
    // relay_from of the recipient's domain is not a grant.
    refused(
        &mut smtp,
        "a@other.example",
        "b@inbound.example",
        "127.0.0.1",
    );

    // From 10.1.1.1 (as XCLIENT says), branch.example may relay and
    // trusted.example may not.
    assert_eq!(smtp.command("XCLIENT ADDR=10.1.1.1").unwrap().0, 220);
    assert_eq!(smtp.command("EHLO c.test").unwrap().0, 250);
    let (code, text) = smtp
        .send_message(
            "a@branch.example",
            "b@anywhere.example",
            b"Subject: x\r\n\r\nx\r\n",
        )
        .unwrap();
    assert_eq!(code, 250, "{text}");
    refused(
        &mut smtp,
        "a@trusted.example",
        "b@anywhere.example",
        "10.1.1.1",
    );
}

/// The sender's domain is looked up for every RCPT, even from a peer that
/// `relay_hosts` already lets relay (§3.6 step 2): a policy can refuse a
/// sender domain there for everyone.
#[test]
fn the_sender_domain_is_asked_even_for_relay_hosts() {
    let server = start_tern(policy(
        "listen = '127.0.0.1:0'",
        r#"
kumo.on('get_listener_domain', function(domain, listener, conn_meta)
  if domain == 'blocked.example' then
    kumo.reject(550, '5.7.1 sender domain blocked')
  end
end)
"#,
    ));
    let mut smtp = greeted(server.listener("smtp"));
    assert_eq!(
        reply(&mut smtp, "MAIL FROM:<a@blocked.example>").get(..3),
        Some("250")
    );
    assert_eq!(
        reply(&mut smtp, "RCPT TO:<b@remote.example>"),
        "550 5.7.1 sender domain blocked\r\n"
    );
    assert_eq!(reply(&mut smtp, "RSET").get(..3), Some("250"));
    assert_eq!(
        reply(&mut smtp, "MAIL FROM:<a@fine.example>").get(..3),
        Some("250")
    );
    assert_eq!(
        reply(&mut smtp, "RCPT TO:<b@remote.example>").get(..3),
        Some("250")
    );
}

/// An answer is remembered for the domain exactly as the client wrote it:
/// the policy decides about `OPEN.example` and `open.example` separately,
/// as KumoMTA asks it separately.
#[test]
fn remembered_answers_are_keyed_by_the_exact_domain() {
    let server = start_tern(policy(
        "listen = '127.0.0.1:0', relay_hosts = {}",
        r#"
kumo.on('get_listener_domain', function(domain, listener, conn_meta)
  if domain == 'open.example' then
    return kumo.make_listener_domain { relay_to = true }
  end
end)
"#,
    ));
    let mut smtp = greeted(server.listener("smtp"));
    assert_eq!(
        reply(&mut smtp, "MAIL FROM:<a@sender.example>").get(..3),
        Some("250")
    );
    assert_eq!(
        reply(&mut smtp, "RCPT TO:<x@OPEN.example>").get(..3),
        Some("550")
    );
    assert_eq!(
        reply(&mut smtp, "RCPT TO:<y@open.example>"),
        "250 OK <y@open.example>\r\n"
    );
    assert_eq!(
        reply(&mut smtp, "RCPT TO:<z@OPEN.example>").get(..3),
        Some("550")
    );
}

/// `kumo.make_listener_domain` takes only its own keys (`relay_from_authz`
/// belongs to the `policy-extras.listener_domains` helper, not here) and
/// the three dispositions or booleans; a bad table is a policy error,
/// answered `421 4.3.0 <host> technical difficulties`. The deprecated
/// `ttl` is accepted.
#[test]
fn make_listener_domain_refuses_what_it_does_not_know() {
    let server = start_tern(policy(
        "listen = '127.0.0.1:0', relay_hosts = {}",
        r#"
kumo.on('get_listener_domain', function(domain, listener, conn_meta)
  if domain == 'authz.example' then
    return kumo.make_listener_domain { relay_from_authz = { 'scott' } }
  end
  if domain == 'bogus.example' then
    return kumo.make_listener_domain { log_arf = 'Sometimes' }
  end
  if domain == 'legacy.example' then
    return kumo.make_listener_domain { relay_to = true, ttl = '5 minutes', log_oob = false, log_arf = false }
  end
  if domain == 'reports.example' then
    return kumo.make_listener_domain { log_arf = true }
  end
end)
"#,
    ));
    let addr = server.listener("smtp");
    for domain in ["authz.example", "bogus.example"] {
        let mut smtp = greeted(addr);
        assert_eq!(
            reply(&mut smtp, "MAIL FROM:<a@sender.example>").get(..3),
            Some("250")
        );
        assert_eq!(
            reply(&mut smtp, &format!("RCPT TO:<x@{domain}>")),
            "421 4.3.0 mx.test technical difficulties\r\n",
            "{domain}"
        );
        assert!(smtp.is_closed(), "{domain}");
    }
    let mut smtp = greeted(addr);
    assert_eq!(
        reply(&mut smtp, "MAIL FROM:<a@sender.example>").get(..3),
        Some("250")
    );
    assert_eq!(
        reply(&mut smtp, "RCPT TO:<x@legacy.example>").get(..3),
        Some("250")
    );
    // log_arf = true (LogThenRelay) accepts the recipient for its reports.
    assert_eq!(
        reply(&mut smtp, "RCPT TO:<x@reports.example>").get(..3),
        Some("250")
    );
}

/// The line answering `334 ` may be up to 16384 bytes (a long password
/// fits although commands stop at 998); a longer one is refused with
/// KumoMTA's `500 5.5.6 authentication exchange line too long` and the
/// session goes on.
#[test]
fn long_auth_response_lines() {
    let server = start_tern(policy(
        "listen = '127.0.0.1:0', relay_hosts = {}",
        r#"
kumo.on('smtp_server_auth_plain', function(authz, authc, password, conn_meta)
  return authc == 'long' and password == string.rep('p', 3000)
end)
"#,
    ));
    let port = server.listener("smtp").port();
    let text = python(
        &format!(
            r#"
import smtplib, ssl, base64
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP('127.0.0.1', {port})
s.starttls(context=ctx)
s.ehlo('py.test')
print('start', *s.docmd('AUTH', 'PLAIN'))
print('too long', *s.docmd('A' * 16385))
print('noop', *s.docmd('NOOP'))
print('start', *s.docmd('AUTH', 'PLAIN'))
print('at the limit', *s.docmd('A' * 16384))
print('start', *s.docmd('AUTH', 'PLAIN'))
print('long password', *s.docmd(base64.b64encode(b'\0long\0' + b'p' * 3000).decode()))
"#
        ),
        &[],
    );
    let expect = [
        "start 334 b''",
        "too long 500 b'5.5.6 authentication exchange line too long'",
        "noop 250 b'the goggles do nothing'",
        // 16384 base64 characters decode to NULs only: read whole, then
        // refused for its content.
        "at the limit 501 b'5.5.2 Invalid decoded PLAIN response'",
        "long password 235 b'2.7.0 AUTH OK!'",
    ];
    for line in expect {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
}
