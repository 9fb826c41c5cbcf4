//! The order and arguments of the `smtp_server_*` events (spec §3.2,
//! §3.7, §3.8), what `kumo.reject` / `kumo.disconnect` do after DATA,
//! `smtp_server_rewrite_response` errors and the command it is given for
//! the final DATA reply (§3.3), the end of a session at QUIT, and
//! RSET/HELO/EHLO in the middle of a transaction (§3.4). Over real
//! sockets against the real `tern serve`.

mod common;

use common::{Conn, ids_from, of_type, start_tern, wait_for_records};
use serde_json::Value;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(60);

/// Spools, logs flushed every second carrying the `x_*` meta keys below,
/// a listener with `hostname = 'mx.test'`, then `handlers`.
fn policy(handlers: &str) -> String {
    format!(
        r#"local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool {{ name = 'data', path = '{{dir}}/spool/data', min_free_space = '1%' }}
  kumo.define_spool {{ name = 'meta', path = '{{dir}}/spool/meta', min_free_space = '1%' }}
  kumo.configure_local_logs {{
    log_dir = '{{dir}}/logs', max_segment_duration = '1s',
    meta = {{ 'x_seen', 'x_conn_seen', 'x_from_data', 'x_subject' }},
  }}
  kumo.start_esmtp_listener {{ listen = '127.0.0.1:0', hostname = 'mx.test' }}
end)
{handlers}
"#
    )
}

/// Every event appends its name (and what it saw) to the connection
/// metadata `x_seen`; `smtp_server_message_received` copies the live
/// connection value into the message as `x_conn_seen`.
const RECORDING: &str = r#"
local function seen(conn_meta, what)
  conn_meta:set_meta('x_seen', (conn_meta:get_meta('x_seen') or '') .. what .. ';')
end
kumo.on('smtp_server_get_dynamic_parameters', function(listener, conn_meta)
  seen(conn_meta, 'dynamic')
end)
kumo.on('smtp_server_connection_accepted', function(conn_meta)
  seen(conn_meta, 'accepted')
end)
kumo.on('smtp_server_ehlo', function(domain, conn_meta, extensions)
  seen(conn_meta, 'ehlo ' .. domain .. ' ' .. tostring(extensions ~= nil))
end)
kumo.on('smtp_server_mail_from', function(sender, conn_meta)
  seen(conn_meta, 'mail ' .. tostring(sender))
end)
kumo.on('get_listener_domain', function(domain, listener, conn_meta)
  seen(conn_meta, 'domain ' .. domain)
end)
kumo.on('smtp_server_rcpt_to', function(rcpt, conn_meta)
  seen(conn_meta, 'rcpt ' .. tostring(rcpt))
end)
kumo.on('smtp_server_data', function(msg, conn_meta)
  seen(conn_meta, 'data ' .. #msg:recipient_list())
  msg:set_meta('x_from_data', 'set in data')
  msg:set_data('Subject: edited in data\r\n\r\nnew body\r\n')
end)
kumo.on('smtp_server_split_transaction', function(msg, conn_meta)
  seen(conn_meta, 'split ' .. tostring(msg:get_meta('x_from_data')))
end)
kumo.on('smtp_server_message_received', function(msg, conn_meta)
  seen(conn_meta, 'received ' .. tostring(msg:recipient()))
  msg:set_meta('x_conn_seen', conn_meta:get_meta('x_seen'))
  msg:set_meta('x_subject', msg:get_first_named_header_value('Subject'))
  msg:set_meta('queue', 'null')
end)
"#;

/// §3.2/§3.7/§3.8: the events run in the documented order on one
/// connection metadata object; each message's metadata is a copy of it
/// taken when DATA ends (before `smtp_server_data`), and what
/// `smtp_server_data` did to the message (meta, content) reaches the
/// split event and every batch.
#[test]
fn events_run_in_order_on_one_connection_metadata() {
    let server = start_tern(policy(RECORDING));
    let mut c = Conn::greeted(server.listener("smtp"));
    let reply = c.transaction(
        "s@sender.example",
        &["a@rcpt.example", "b@rcpt.example"],
        &message("original"),
    );
    let ids = ids_from(&reply);
    assert_eq!(ids.len(), 2, "one message per recipient: {reply:?}");

    let before_data = "dynamic;accepted;ehlo client.test true;mail s@sender.example;\
                       domain sender.example;domain rcpt.example;\
                       rcpt a@rcpt.example;rcpt b@rcpt.example;";
    let seen = wait_for_records(&server.dir().join("logs"), TIMEOUT, |r| {
        of_type(r, "Reception").len() >= 2
    });
    let receptions: Vec<&Value> = ids
        .iter()
        .map(|id| {
            *of_type(&seen, "Reception")
                .iter()
                .find(|r| r["id"] == id.as_str())
                .unwrap_or_else(|| panic!("no Reception for {id}: {seen:?}"))
        })
        .collect();
    for (n, (record, rcpt)) in receptions
        .iter()
        .zip(["a@rcpt.example", "b@rcpt.example"])
        .enumerate()
    {
        let meta = &record["meta"];
        // The message's own copy stops before smtp_server_data.
        assert_eq!(meta["x_seen"], before_data, "{record}");
        let mut live = format!("{before_data}data 2;split set in data;");
        for earlier in ["a@rcpt.example", "b@rcpt.example"].iter().take(n + 1) {
            live.push_str(&format!("received {earlier};"));
        }
        assert_eq!(meta["x_conn_seen"], live, "{record}");
        assert_eq!(meta["x_from_data"], "set in data", "{record}");
        assert_eq!(meta["x_subject"], "edited in data", "{record}");
        assert_eq!(record["recipient"], rcpt, "{record}");
    }
}

/// Policy refusals after DATA, chosen by the Subject.
const AFTER_DATA: &str = r#"
kumo.on('smtp_server_data', function(msg, conn_meta)
  local subject = msg:get_first_named_header_value('Subject')
  if subject == 'data 451' then
    kumo.reject(451, '4.7.1 try again at data')
  elseif subject == 'data follow' then
    kumo.disconnect(554, '5.7.1 gone at data', 'FollowWith421')
  end
end)
kumo.on('smtp_server_message_received', function(msg, conn_meta)
  local subject = msg:get_first_named_header_value('Subject')
  local rcpt = tostring(msg:recipient())
  if subject == 'second 451' and rcpt == 'b@example.com' then
    kumo.reject(451, '4.7.1 not the second one')
  elseif subject == 'second 550' and rcpt == 'b@example.com' then
    kumo.reject(550, '5.7.1 not the second one')
  elseif subject == 'received 421' then
    kumo.reject(421, '4.7.0 closing at received')
  elseif subject == 'received disconnect' then
    kumo.disconnect(550, '5.7.1 disconnected at received')
  elseif subject == 'received if421' then
    kumo.disconnect(550, '5.7.1 stays open', 'If421')
  end
  msg:set_meta('queue', 'null')
end)
"#;

/// A message with `subject` and a one-line body, ready for DATA.
fn message(subject: &str) -> Vec<u8> {
    format!("Subject: {subject}\r\n\r\nbody\r\n").into_bytes()
}

/// §3.7 step 4 and §3.8: a `kumo.reject` of any batch refuses the whole
/// DATA with its code (4xx or 5xx alike) and keeps the session open;
/// 421 and `kumo.disconnect` close it; `FollowWith421` adds the 421. The
/// transaction is consumed either way and nothing of it is received.
#[test]
fn reject_and_disconnect_after_data() {
    let server = start_tern(policy(AFTER_DATA));
    let addr = server.listener("smtp");
    let two = ["a@example.com", "b@example.com"];

    let mut c = Conn::greeted(addr);
    for (subject, want) in [
        ("second 451", "451 4.7.1 not the second one\r\n"),
        ("second 550", "550 5.7.1 not the second one\r\n"),
        ("data 451", "451 4.7.1 try again at data\r\n"),
        ("received if421", "550 5.7.1 stays open\r\n"),
    ] {
        assert_eq!(
            c.transaction("s@example.com", &two, &message(subject)),
            want
        );
        assert_eq!(
            c.cmd("DATA"),
            "503 5.5.0 MAIL FROM must be issued first\r\n",
            "{subject}"
        );
        assert_eq!(c.cmd("NOOP"), "250 the goggles do nothing\r\n");
    }
    let control = c.transaction("s@example.com", &two, &message("fine"));
    assert_eq!(ids_from(&control).len(), 2, "{control:?}");

    for (subject, want) in [
        ("received 421", "421 4.7.0 closing at received\r\n"),
        (
            "received disconnect",
            "550 5.7.1 disconnected at received\r\n",
        ),
        (
            "data follow",
            "554 5.7.1 gone at data\r\n421 mx.test disconnecting due to previous error\r\n",
        ),
    ] {
        let mut c = Conn::greeted(addr);
        let mut got = c.transaction("s@example.com", &two, &message(subject));
        if subject == "data follow" {
            got.push_str(&c.reply());
        }
        assert_eq!(got, want, "{subject}");
        c.expect_closed();
    }

    // Only the control transaction's two messages were received.
    let logs = server.dir().join("logs");
    wait_for_records(&logs, TIMEOUT, |r| {
        of_type(r, "Reception").len() >= 2 && of_type(r, "Rejection").len() >= 7
    });
    // Anything logged late would be in the next segment by now.
    std::thread::sleep(Duration::from_secs(2));
    let seen = common::records(&logs);
    let mut received: Vec<String> = of_type(&seen, "Reception")
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    received.sort();
    let mut want = ids_from(&control);
    want.sort();
    assert_eq!(received, want);
}

/// §3.3: a rewrite handler that fails (or calls `kumo.reject`) leaves the
/// reply as it was and the session open; the final reply of DATA is
/// rewritten with `command == 'DATA'`, as KumoMTA's documented example
/// does.
#[test]
fn rewrite_response_errors_are_ignored_and_data_replies_name_data() {
    let handlers = r#"
kumo.on('smtp_server_rewrite_response', function(status, text, command, conn_meta)
  if command == 'NOOP' then
    error('rewrite blew up')
  elseif command == 'RSET' then
    kumo.reject(550, '5.7.1 cannot reject here')
  elseif command == 'DATA' and status == 250 then
    return 250, 'super fantastic!\n' .. text
  elseif command == 'DATA' and status == 354 then
    return nil, 'go ahead'
  end
end)
kumo.on('smtp_server_message_received', function(msg)
  msg:set_meta('queue', 'null')
end)
"#;
    let server = start_tern(policy(handlers));
    let mut c = Conn::greeted(server.listener("smtp"));
    assert_eq!(c.cmd("NOOP"), "250 the goggles do nothing\r\n");
    assert_eq!(c.cmd("RSET"), "250 Reset state\r\n");
    assert!(c.cmd("MAIL FROM:<s@example.com>").starts_with("250 "));
    assert!(c.cmd("RCPT TO:<r@example.com>").starts_with("250 "));
    assert_eq!(c.cmd("DATA"), "354 go ahead\r\n");
    c.send(b"Subject: x\r\n\r\nbody\r\n");
    let reply = c.cmd(".");
    let ids = ids_from(&reply);
    assert_eq!(ids.len(), 1, "{reply:?}");
    assert_eq!(
        reply,
        format!("250-super fantastic!\r\n250 OK ids={}\r\n", ids[0])
    );
    assert_eq!(c.cmd("NOOP"), "250 the goggles do nothing\r\n");
}

/// §3.4: QUIT is answered and the session ends: commands pipelined after
/// it get no reply.
#[test]
fn nothing_is_answered_after_quit() {
    let server = start_tern(policy(""));
    let mut c = Conn::greeted(server.listener("smtp"));
    c.send(b"NOOP\r\nQUIT\r\nNOOP\r\nMAIL FROM:<s@example.com>\r\nRSET\r\n");
    assert_eq!(c.reply(), "250 the goggles do nothing\r\n");
    assert_eq!(c.reply(), "221 So long, and thanks for all the fish!\r\n");
    c.expect_closed();
}

/// §3.4: RSET, and a new HELO or EHLO (RFC 5321 §4.1.4), abandon the
/// open transaction: DATA then needs a new MAIL FROM, which is accepted
/// without `503 ... you must RSET first`.
#[test]
fn rset_helo_and_ehlo_abandon_the_transaction() {
    let server = start_tern(policy(""));
    let mut c = Conn::greeted(server.listener("smtp"));
    for (command, reply) in [
        ("RSET", "250 Reset state\r\n"),
        ("HELO again.test", "250 Hello again.test!\r\n"),
    ] {
        assert!(c.cmd("MAIL FROM:<s@example.com>").starts_with("250 "));
        assert!(c.cmd("RCPT TO:<r@example.com>").starts_with("250 "));
        assert_eq!(c.cmd(command), reply);
        assert_eq!(
            c.cmd("DATA"),
            "503 5.5.0 MAIL FROM must be issued first\r\n"
        );
        assert_eq!(
            c.cmd("RCPT TO:<r@example.com>"),
            "503 5.5.0 MAIL FROM must be issued first\r\n"
        );
    }
    assert!(c.cmd("MAIL FROM:<s@example.com>").starts_with("250 "));
    assert!(
        c.cmd("EHLO again.test")
            .starts_with("250-mx.test Aloha again.test\r\n")
    );
    assert_eq!(
        c.cmd("MAIL FROM:<s@example.com>"),
        "250 OK <s@example.com>\r\n"
    );
}
