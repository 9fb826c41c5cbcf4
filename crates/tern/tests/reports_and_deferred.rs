//! Two reception paths that end after the 250 in something other than a
//! plain Reception: inbound ARF/DSN reports for `log_arf`/`log_oob`
//! listener domains (Feedback and OOB records), and `deferred_queue`
//! listeners whose messages meet the policy later, in
//! `smtp_server_message_deferred_inject`.

mod common;

use base64::Engine;
use common::*;
use std::time::Duration;
use tern_bench::sink::SinkConfig;

/// Spools, logs, a listener that relays for nobody (only listener
/// domains grant anything), and queues that reach `sink_port`.
fn report_policy(sink_port: u16) -> String {
    format!(
        r#"{head}
kumo.on('get_listener_domain', function(domain, listener, conn_meta)
  if domain == 'fbl.example.com' then
    return kumo.make_listener_domain {{ log_arf = 'LogThenDrop' }}
  elseif domain == 'fbl-relay.example.com' then
    return kumo.make_listener_domain {{ log_arf = 'LogThenRelay' }}
  elseif domain == 'bounce.example.com' then
    return kumo.make_listener_domain {{ log_oob = true }}
  elseif domain == 'bounce-drop.example.com' then
    return kumo.make_listener_domain {{ log_oob = 'LogThenDrop' }}
  end
end)
kumo.on('get_queue_config', function()
  return kumo.make_queue_config {{
    protocol = {{ smtp = {{ mx_list = {{ '[127.0.0.1]:{sink_port}' }} }} }},
  }}
end)
kumo.on('get_egress_path_config', function()
  return kumo.make_egress_path {{ prohibited_hosts = {{}}, enable_tls = 'Disabled' }}
end)
"#,
        head = policy_head_with_listener("RocksDB", "relay_hosts = {}")
    )
}

/// The trace a Tern listener would have added to the original message.
fn kumo_ref() -> String {
    let json = r#"{"_@_":"\\_/","recipient":"victim@example.net","tenant":"acme"}"#;
    base64::engine::general_purpose::STANDARD.encode(json)
}

/// An RFC 5965 feedback report about a message sent to victim@example.net.
fn arf_report() -> Vec<u8> {
    format!(
        "From: fbl@isp.example\r\n\
         To: abuse@fbl.example.com\r\n\
         Subject: FW: big sale\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=feedback-report;\r\n\
         \tboundary=\"part1_13d.2e68ed54_boundary\"\r\n\
         \r\n\
         --part1_13d.2e68ed54_boundary\r\n\
         Content-Type: text/plain; charset=\"US-ASCII\"\r\n\
         \r\n\
         This is an email abuse report for an email message received\r\n\
         from IP 192.0.2.1 on Thu, 8 Mar 2005 14:00:00 EDT.\r\n\
         \r\n\
         --part1_13d.2e68ed54_boundary\r\n\
         Content-Type: message/feedback-report\r\n\
         \r\n\
         Feedback-Type: abuse\r\n\
         User-Agent: SomeGenerator/1.0\r\n\
         Version: 1\r\n\
         Original-Mail-From: <bounce@sender.example.com>\r\n\
         Original-Rcpt-To: <victim@example.net>\r\n\
         Arrival-Date: Thu, 8 Mar 2005 14:00:00 -0500\r\n\
         Source-IP: 192.0.2.1\r\n\
         \r\n\
         --part1_13d.2e68ed54_boundary\r\n\
         Content-Type: message/rfc822\r\n\
         Content-Disposition: inline\r\n\
         \r\n\
         X-KumoRef: {}\r\n\
         From: <news@sender.example.com>\r\n\
         To: <victim@example.net>\r\n\
         Subject: big sale\r\n\
         \r\n\
         Buy now.\r\n\
         \r\n\
         --part1_13d.2e68ed54_boundary--\r\n",
        kumo_ref()
    )
    .into_bytes()
}

/// An RFC 3464 report: one recipient failed, one was delayed.
fn dsn_report() -> Vec<u8> {
    b"From: MAILER-DAEMON@mx.example.net\r\n\
      To: bounce-123@bounce.example.com\r\n\
      Subject: Undelivered Mail Returned to Sender\r\n\
      MIME-Version: 1.0\r\n\
      Content-Type: multipart/report; report-type=delivery-status;\r\n\
      \tboundary=\"B0UND\"\r\n\
      \r\n\
      --B0UND\r\n\
      Content-Type: text/plain\r\n\
      \r\n\
      Your message could not be delivered.\r\n\
      \r\n\
      --B0UND\r\n\
      Content-Type: message/delivery-status\r\n\
      \r\n\
      Reporting-MTA: dns; mx.example.net\r\n\
      \r\n\
      Original-Recipient: rfc822;gone@example.net\r\n\
      Final-Recipient: rfc822;gone@example.net\r\n\
      Action: failed\r\n\
      Status: 5.1.1\r\n\
      Diagnostic-Code: smtp; 550 5.1.1 <gone@example.net>: user unknown\r\n\
      \r\n\
      Final-Recipient: rfc822;slow@example.net\r\n\
      Action: delayed\r\n\
      Status: 4.2.2\r\n\
      \r\n\
      --B0UND--\r\n"
        .to_vec()
}

fn session(server: &tern_testkit::TernServer) -> tern_testkit::SmtpClient {
    let mut smtp = server.smtp().unwrap();
    smtp.read_reply().unwrap();
    smtp.command("EHLO reporter.example").unwrap();
    smtp
}

/// The spool id a `250 OK ids=<id>` reply names.
fn accepted_id(text: &str) -> String {
    text.split("ids=")
        .nth(1)
        .unwrap_or_else(|| panic!("no ids in {text:?}"))
        .trim()
        .to_string()
}

#[test]
fn arf_and_dsn_reports_are_logged_for_their_listener_domains() {
    let sink = TestSink::start(SinkConfig::default());
    let server = start_tern(report_policy(sink.port()));
    let logs = server.dir().join("logs");
    let mut smtp = session(&server);

    // Not a listener domain: refused at RCPT.
    smtp.command("MAIL FROM:<fbl@isp.example>").unwrap();
    let (code, text) = smtp.command("RCPT TO:<someone@other.example>").unwrap();
    assert_eq!(code, 550, "{text}");
    smtp.command("RSET").unwrap();

    // ARF, LogThenDrop: 250, a Feedback record and nothing else.
    let (code, text) = smtp
        .send_message("fbl@isp.example", "abuse@fbl.example.com", &arf_report())
        .unwrap();
    assert_eq!(code, 250, "{text}");
    let arf_id = accepted_id(&text);

    // A plain message to a report domain is not relayed: 550 at the dot,
    // though RCPT was accepted (and a Reception record is still logged).
    let (code, text) = smtp
        .send_message(
            "someone@isp.example",
            "abuse@fbl.example.com",
            &body("not a report"),
        )
        .unwrap();
    assert_eq!(code, 550, "{text}");
    assert!(text.contains("5.7.1"), "{text}");

    // DSN, LogThenRelay (legacy `true`): OOB records, then relayed.
    let (code, text) = smtp
        .send_message("", "bounce-123@bounce.example.com", &dsn_report())
        .unwrap();
    assert_eq!(code, 250, "{text}");
    let dsn_id = accepted_id(&text);

    // DSN, LogThenDrop: Reception and OOB records, not relayed.
    let (code, text) = smtp
        .send_message("", "b-9@bounce-drop.example.com", &dsn_report())
        .unwrap();
    assert_eq!(code, 250, "{text}");
    let dropped_dsn_id = accepted_id(&text);

    // ARF, LogThenRelay: a Feedback record instead of Reception, then
    // delivered.
    let (code, text) = smtp
        .send_message(
            "fbl@isp.example",
            "abuse@fbl-relay.example.com",
            &arf_report(),
        )
        .unwrap();
    assert_eq!(code, 250, "{text}");
    let relayed_arf_id = accepted_id(&text);
    smtp.command("QUIT").unwrap();

    let seen = wait_for_records(&logs, Duration::from_secs(30), |r| {
        count(r, "Delivery") >= 2 && count(r, "Feedback") >= 2 && count(r, "OOB") >= 2
    });
    let of_id = |id: &str| -> Vec<String> {
        seen.iter()
            .filter(|r| r["id"] == id)
            .map(|r| r["type"].as_str().unwrap().to_string())
            .collect()
    };

    // The dropped ARF report: exactly one Feedback record.
    assert_eq!(of_id(&arf_id), ["Feedback"]);
    let feedback = seen.iter().find(|r| r["id"] == arf_id.as_str()).unwrap();
    let report = &feedback["feedback_report"];
    assert_eq!(report["feedback_type"], "abuse");
    assert_eq!(report["user_agent"], "SomeGenerator/1.0");
    assert_eq!(report["source_ip"], "192.0.2.1");
    assert_eq!(report["original_rcpto_to"][0], "victim@example.net");
    assert_eq!(
        report["supplemental_trace"]["recipient"],
        "victim@example.net"
    );
    assert_eq!(report["supplemental_trace"]["tenant"], "acme");
    assert_eq!(feedback["recipient"], "abuse@fbl.example.com");
    assert_eq!(feedback["peer_address"]["name"], "reporter.example");

    // One OOB record for the failed recipient only, then relayed.
    let oob: Vec<_> = seen.iter().filter(|r| r["id"] == dsn_id.as_str()).collect();
    let kinds: Vec<&str> = oob.iter().map(|r| r["type"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"OOB"), "{kinds:?}");
    assert!(kinds.contains(&"Reception"), "{kinds:?}");
    assert!(kinds.contains(&"Delivery"), "{kinds:?}");
    assert_eq!(
        kinds.iter().filter(|k| **k == "OOB").count(),
        1,
        "{kinds:?}"
    );
    let record = oob.iter().find(|r| r["type"] == "OOB").unwrap();
    assert_eq!(record["recipient"], "gone@example.net");
    assert_eq!(record["sender"], "bounce-123@bounce.example.com");
    assert_eq!(record["response"]["code"], 550);
    assert_eq!(record["response"]["enhanced_code"]["subject"], 1);
    assert_eq!(record["response"]["enhanced_code"]["detail"], 1);
    assert!(
        record["response"]["content"]
            .as_str()
            .unwrap()
            .contains("user unknown"),
        "{record}"
    );
    assert_eq!(record["size"], 0);

    // A DSN that is not relayed is still logged as received (§3.7 step
    // 6), with its OOB record.
    assert_eq!(of_id(&dropped_dsn_id), ["Reception", "OOB"]);

    // Feedback replaces Reception for a relayed ARF report (§12.3).
    let relayed = of_id(&relayed_arf_id);
    assert_eq!(relayed[0], "Feedback", "{relayed:?}");
    assert!(relayed.iter().any(|k| k == "Delivery"), "{relayed:?}");
    assert!(!relayed.iter().any(|k| k == "Reception"), "{relayed:?}");
    // Only the two relayed reports reached the sink.
    assert_eq!(sink.stats().messages, 2);
}

/// A listener with `deferred_queue`: the client gets its 250 before any
/// policy runs; `smtp_server_message_deferred_inject` then decides.
fn deferred_policy(sink_port: u16) -> String {
    format!(
        r#"{head}
kumo.on('smtp_server_message_received', function(msg)
  -- Must not run on a deferred_queue listener.
  msg:set_meta('tenant', 'wrong')
end)
kumo.on('smtp_server_message_deferred_inject', function(msg, conn_meta)
  if conn_meta:get_meta('reception_protocol') ~= 'ESMTP' then
    error('conn_meta was not rebuilt from the message meta')
  end
  local who = msg:recipient().user
  if who == 'reject' then
    kumo.reject(550, '5.7.1 not from here')
  elseif who == 'fail' then
    msg:prepend_header('X-Half-Done', 'yes')
    error('policy is unhappy')
  end
  msg:set_meta('tenant', 'ok')
  msg:prepend_header('X-Deferred-Inject', 'done')
end)
kumo.on('get_queue_config', function()
  return kumo.make_queue_config {{
    protocol = {{ smtp = {{ mx_list = {{ '[127.0.0.1]:{sink_port}' }} }} }},
  }}
end)
kumo.on('get_egress_path_config', function()
  return kumo.make_egress_path {{ prohibited_hosts = {{}}, enable_tls = 'Disabled' }}
end)
"#,
        head = policy_head_with_listener(
            "RocksDB",
            "relay_hosts = { '127.0.0.1' }, deferred_queue = true"
        )
    )
}

#[test]
fn deferred_queue_runs_the_policy_after_the_250() {
    let maildir = tempfile::tempdir().unwrap();
    let sink = TestSink::start(SinkConfig {
        maildir: Some(maildir.path().to_path_buf()),
        ..SinkConfig::default()
    });
    let server = start_tern(deferred_policy(sink.port()));
    let logs = server.dir().join("logs");
    let mut smtp = session(&server);
    for rcpt in ["good@example.com", "reject@example.com", "fail@example.com"] {
        let (code, text) = smtp
            .send_message("s@example.com", rcpt, &body("deferred"))
            .unwrap();
        assert_eq!(code, 250, "{rcpt}: {text}");
    }
    smtp.command("QUIT").unwrap();

    let seen = wait_for_records(&logs, Duration::from_secs(30), |r| {
        count(r, "Delivery") >= 1 && count(r, "Bounce") >= 1 && count(r, "TransientFailure") >= 1
    });
    for reception in of_type(&seen, "Reception") {
        assert_eq!(reception["queue"], "deferred_smtp_inject.kumomta.internal");
    }
    assert_eq!(count(&seen, "Reception"), 3);
    assert!(
        seen.iter()
            .all(|r| !r["queue"].as_str().unwrap_or("").contains("wrong")),
        "smtp_server_message_received ran"
    );

    let by_rcpt = |kind: &str, rcpt: &str| {
        of_type(&seen, kind)
            .into_iter()
            .find(|r| r["recipient"] == rcpt)
            .cloned()
    };
    let rebind = by_rcpt("DeferredInjectionRebind", "good@example.com").expect("rebind");
    assert_eq!(rebind["queue"], "ok@example.com");
    assert_eq!(rebind["delivery_protocol"], "DeferredSmtpInjection");
    let delivery = by_rcpt("Delivery", "good@example.com").expect("delivery");
    assert_eq!(delivery["queue"], "ok@example.com");

    let bounce = by_rcpt("Bounce", "reject@example.com").expect("bounce");
    assert_eq!(bounce["queue"], "deferred_smtp_inject.kumomta.internal");
    assert_eq!(bounce["response"]["code"], 550);
    assert!(by_rcpt("DeferredInjectionRebind", "reject@example.com").is_none());

    let failure = by_rcpt("TransientFailure", "fail@example.com").expect("transient");
    assert_eq!(failure["queue"], "deferred_smtp_inject.kumomta.internal");
    assert!(
        failure["response"]["content"]
            .as_str()
            .unwrap()
            .contains("policy is unhappy"),
        "{failure}"
    );
    assert_eq!(sink.stats().messages, 1);
    let delivered: Vec<_> = std::fs::read_dir(maildir.path().join("new"))
        .unwrap()
        .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
        .collect();
    assert_eq!(delivered.len(), 1);
    let text = String::from_utf8_lossy(&delivered[0]);
    // The sink adds its own headers on top; below them, the handler's
    // header comes before the trace headers added at reception.
    let inject = text.find("\r\nX-Deferred-Inject: done\r\n").expect(&text);
    let received = text
        .find("\r\nReceived: from reporter.example")
        .expect(&text);
    assert!(inject < received, "{text}");
}

#[test]
fn deferred_failures_retry_from_the_message_as_received() {
    // The failing handler edited the message before it failed; after a
    // restart the spooled copy must not carry that edit.
    let sink = TestSink::start(SinkConfig::default());
    let server = start_tern(deferred_policy(sink.port()));
    let logs = server.dir().join("logs");
    let mut smtp = session(&server);
    let (code, text) = smtp
        .send_message("s@example.com", "fail@example.com", &body("deferred"))
        .unwrap();
    assert_eq!(code, 250, "{text}");
    let id = accepted_id(&text);
    wait_for_records(&logs, Duration::from_secs(30), |r| {
        count(r, "TransientFailure") >= 1
    });
    let dir = server.kill9();
    let data = tern_spool_entry(dir.path(), &id);
    let text = String::from_utf8_lossy(&data);
    assert!(!text.contains("X-Half-Done"), "{text}");
    assert!(text.contains("Subject: deferred"), "{text}");
}

/// Read one message body from the data spool of a stopped server.
fn tern_spool_entry(dir: &std::path::Path, id: &str) -> Vec<u8> {
    let spool = tern_spool::Spool::open(&tern_spool::SpoolConfig::new(
        "data",
        dir.join("spool").join("data"),
        tern_spool::SpoolKind::RocksDB,
    ))
    .unwrap();
    let id: tern_types::SpoolId = id.parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(spool.load(id))
        .unwrap_or_else(|e| panic!("{id} is not in the data spool: {e}"))
}
