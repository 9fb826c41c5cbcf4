//! Queue- and delivery-side traps of the spec (part V.1) against the real
//! `tern serve`: how replies are classified, the default
//! `prohibited_hosts`, the implicit `unspecified` pool, suspended sources
//! advancing the backoff, and the attempt counter re-derived from the
//! message age after a restart.

mod common;

use common::*;
use serde_json::json;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};
use tern_bench::sink::SinkConfig;
use tern_spool::{Spool, SpoolConfig, SpoolError, SpoolKind};
use tern_testkit::Builder;
use tern_types::SpoolId;

fn send(server: &tern_testkit::TernServer, recipients: &[&str]) {
    let mut smtp = server.smtp().unwrap();
    smtp.read_reply().unwrap();
    smtp.command("EHLO test").unwrap();
    for rcpt in recipients {
        let (code, text) = smtp
            .send_message("s@example.com", rcpt, &body("trap"))
            .unwrap();
        assert_eq!(code, 250, "{rcpt}: {text}");
    }
    smtp.command("QUIT").unwrap();
}

/// A scripted SMTP peer without PIPELINING: RCPT to a local part starting
/// with `r503` gets `503 5.5.1`, with `r354` gets a stray `354` (a 3xx out
/// of step), anything else `250`. Returns the port.
fn scripted_peer() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            std::thread::spawn(move || serve_one(stream));
        }
    });
    port
}

fn serve_one(stream: TcpStream) {
    let mut out = stream.try_clone().unwrap();
    let mut lines = BufReader::new(stream);
    let mut accepted = 0;
    let _ = out.write_all(b"220 scripted ESMTP\r\n");
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            b"250 scripted\r\n"
        } else if upper.starts_with("MAIL") || upper.starts_with("RSET") {
            accepted = 0;
            b"250 2.0.0 ok\r\n"
        } else if upper.starts_with("RCPT") {
            if upper.contains("<R503") {
                b"503 5.5.1 bad sequence of commands\r\n"
            } else if upper.contains("<R354") {
                b"354 out of step\r\n"
            } else {
                accepted += 1;
                b"250 2.1.5 ok\r\n"
            }
        } else if upper.starts_with("DATA") {
            if accepted == 0 {
                b"503 5.5.1 no valid recipients\r\n"
            } else {
                let _ = out.write_all(b"354 go ahead\r\n");
                loop {
                    line.clear();
                    if lines.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if line == ".\r\n" {
                        break;
                    }
                }
                b"250 2.0.0 queued\r\n"
            }
        } else if upper.starts_with("QUIT") {
            let _ = out.write_all(b"221 bye\r\n");
            return;
        } else {
            b"250 ok\r\n"
        };
        if out.write_all(reply).is_err() {
            return;
        }
    }
}

/// V.1 #1 and #2 (site names in ready-queue names), #6 (503 and 3xx are
/// transient), #8 (the default `prohibited_hosts`
/// holds loopback) and #21 (an unset `egress_pool` is the built-in
/// `unspecified`, for which no event is called; any other name must be
/// resolved by the events).
#[test]
fn reply_classes_default_prohibited_hosts_and_the_unspecified_pool() {
    let port = scripted_peer();
    let policy = format!(
        r#"{head}
kumo.on('pre_init', function()
  kumo.dns.configure_test_resolver {{
    [[
$ORIGIN sorted.test.
@ 300 MX 10 mxb.sorted.test.
@ 300 MX 10 mxa.sorted.test.
mxa 300 A 127.0.0.1
mxb 300 A 127.0.0.1
]],
  }}
end)
kumo.on('get_egress_source', function(name)
  error('get_egress_source called for ' .. name)
end)
kumo.on('get_egress_pool', function(name)
  error('get_egress_pool called for ' .. name)
end)
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  if domain == 'loop.test' then
    -- 127.0.0.2 is loopback too; nothing listens there, nothing connects.
    return kumo.make_queue_config {{
      retry_interval = '1h',
      protocol = {{ smtp = {{ mx_list = {{ '[127.0.0.2]:{port}' }} }} }},
    }}
  end
  if domain == 'pooled.test' then
    return kumo.make_queue_config {{
      retry_interval = '1h', egress_pool = 'named',
      protocol = {{ smtp = {{ mx_list = {{ '[127.0.0.1]:{port}' }} }} }},
    }}
  end
  if domain == 'sorted.test' or domain == '[127.0.0.1]' then
    -- Routed by MX (or the literal): the site name is computed.
    return kumo.make_queue_config {{ retry_interval = '1h' }}
  end
  return kumo.make_queue_config {{
    retry_interval = '1h',
    protocol = {{ smtp = {{ mx_list = {{ '[127.0.0.1]:{port}' }} }} }},
  }}
end)
kumo.on('get_egress_path_config', function(domain, source, site)
  if domain == 'loop.test' then
    return kumo.make_egress_path {{ enable_tls = 'Disabled' }}
  end
  return kumo.make_egress_path {{
    prohibited_hosts = {{}}, enable_tls = 'Disabled', smtp_port = {port},
  }}
end)
"#,
        head = policy_head("LocalDisk")
    );
    let server = start_tern(policy);
    send(
        &server,
        &[
            "ok@example.com",
            "r503@example.com",
            "r354@example.com",
            "x@loop.test",
            "y@pooled.test",
            "s@sorted.test",
            "lit@[127.0.0.1]",
        ],
    );
    let logs = server.dir().join("logs");
    let seen = wait_for_records(&logs, Duration::from_secs(30), |r| {
        count(r, "Delivery") + count(r, "TransientFailure") + count(r, "Bounce") >= 7
    });
    let by_rcpt = |rcpt: &str| {
        seen.iter()
            .find(|r| r["recipient"] == rcpt && r["type"] != "Reception")
            .unwrap_or_else(|| panic!("no outcome for {rcpt}: {seen:#?}"))
    };

    // The implicit pool: no event was asked, and the records say so.
    let ok = by_rcpt("ok@example.com");
    assert_eq!(ok["type"], "Delivery", "{ok}");
    assert_eq!(ok["egress_pool"], "unspecified");
    assert_eq!(ok["egress_source"], "unspecified");
    assert_eq!(
        ok["site"],
        format!("unspecified->mx_list:[127.0.0.1]:{port}@smtp_client")
    );

    // V.1 #1/#2: the ready queue (the `site` of the record) is named after
    // the factored MX hosts, sorted within a preference, not the domain;
    // a domain literal's site is the bare IP.
    let sorted = by_rcpt("s@sorted.test");
    assert_eq!(sorted["type"], "Delivery", "{sorted}");
    assert_eq!(sorted["queue"], "sorted.test");
    assert_eq!(
        sorted["site"],
        "unspecified->(mxa|mxb).sorted.test@smtp_client"
    );
    let literal = by_rcpt("lit@[127.0.0.1]");
    assert_eq!(literal["type"], "Delivery", "{literal}");
    assert_eq!(literal["queue"], "[127.0.0.1]");
    assert_eq!(literal["site"], "unspecified->127.0.0.1@smtp_client");

    for (rcpt, code) in [("r503@example.com", 503), ("r354@example.com", 354)] {
        let record = by_rcpt(rcpt);
        assert_eq!(record["type"], "TransientFailure", "{record}");
        assert_eq!(record["response"]["code"], code, "{record}");
        assert_eq!(
            record["response"]["command"],
            format!("RCPT TO:<{rcpt}>\r\n"),
            "{record}"
        );
    }

    let looped = by_rcpt("x@loop.test");
    assert_eq!(looped["type"], "Bounce", "{looped}");
    assert_eq!(looped["response"]["code"], 550);
    assert_eq!(looped["response"]["enhanced_code"]["subject"], 4);
    assert_eq!(looped["response"]["enhanced_code"]["detail"], 4);
    assert!(
        looped["response"]["content"]
            .as_str()
            .unwrap()
            .contains("is on the list of prohibited_hosts"),
        "{looped}"
    );

    // A named pool goes through get_egress_pool, whose error is a
    // transient failure of the message.
    let pooled = by_rcpt("y@pooled.test");
    assert_eq!(pooled["type"], "TransientFailure", "{pooled}");
    assert_eq!(pooled["response"]["code"], 451);
    assert!(
        pooled["response"]["content"]
            .as_str()
            .unwrap()
            .contains("get_egress_pool called for named"),
        "{pooled}"
    );
    assert!(
        !seen.iter().any(|r| r["response"]["content"]
            .as_str()
            .is_some_and(|c| c.contains("called for unspecified"))),
        "an egress event was called for unspecified: {seen:#?}"
    );
    assert_eq!(count(&seen, "Bounce"), 1, "{seen:#?}");
}

/// V.1 #6 and #22: when every source of the pool is suspended the message
/// is not held for the source, it fails with "no sources ... eligible", and
/// that failure advances the backoff like a delivery failure (1 s, 2 s, 4 s
/// with `retry_interval = '1s'`).
#[test]
fn suspended_sources_are_skipped_and_advance_the_backoff() {
    let sink = TestSink::start(SinkConfig::default());
    let policy = format!(
        r#"{head}
kumo.on('get_egress_source', function(name)
  -- TEST-NET-1: not configured on this host, so bind() fails.
  return kumo.make_egress_source {{
    name = name, source_address = '192.0.2.1',
    suspend_when_unplumbed = {{ trigger = 'Immediate', duration = '1h' }},
  }}
end)
kumo.on('get_egress_pool', function(name)
  return kumo.make_egress_pool {{ name = name, entries = {{ {{ name = 'bad' }} }} }}
end)
kumo.on('get_queue_config', function()
  return kumo.make_queue_config {{
    egress_pool = 'pool', retry_interval = '1s',
    protocol = {{ smtp = {{ mx_list = {{ '[127.0.0.1]:{port}' }} }} }},
  }}
end)
kumo.on('get_egress_path_config', function()
  return kumo.make_egress_path {{ prohibited_hosts = {{}}, enable_tls = 'Disabled' }}
end)
"#,
        head = policy_head("LocalDisk"),
        port = sink.port()
    );
    let server = start_tern(policy);
    send(&server, &["r@example.com"]);
    let logs = server.dir().join("logs");
    let seen = wait_for_records(&logs, Duration::from_secs(30), |r| {
        count(r, "TransientFailure") >= 4
    });
    let failures = of_type(&seen, "TransientFailure");
    for (n, record) in failures.iter().enumerate().take(4) {
        assert_eq!(record["num_attempts"], n as u64, "{record}");
    }
    // The first failure is the bind that suspended the source; the rest
    // never reach a source.
    for record in &failures[1..4] {
        let content = record["response"]["content"].as_str().unwrap();
        assert_eq!(record["response"]["code"], 451, "{record}");
        assert!(
            content.contains("no sources for example.com pool=`pool` are eligible"),
            "{record}"
        );
    }
    // Each retry waits the next backoff delay, plus up to one tick of the
    // scheduled queue's 1-second timer wheel.
    let times: Vec<f64> = failures.iter().map(|r| event_seconds(r)).collect();
    for (i, expected) in [1.0, 2.0, 4.0].iter().enumerate() {
        let gap = times[i + 1] - times[i];
        assert!(
            gap >= expected - 0.2 && gap <= expected + 1.2,
            "gap {i} is {gap:.2}s, expected {expected}s: {times:?}"
        );
    }
    // The delays grow: the attempts advanced the backoff.
    assert!(
        times[3] - times[2] > times[1] - times[0] + 1.5,
        "the backoff did not grow: {times:?}"
    );
    assert_eq!(sink.stats().messages, 0);
}

/// Opens a spool in this process, retrying while a server being started by
/// another test of this binary briefly shares the lock descriptor.
fn open(dir: &Path, name: &str) -> Spool {
    let config = SpoolConfig::new(name, dir.join("spool").join(name), SpoolKind::LocalDisk);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Spool::open(&config) {
            Err(SpoolError::Locked { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            outcome => return outcome.unwrap(),
        }
    }
}

/// V.1 #18: the attempt counter is not in the spool; after a restart it
/// is inferred from the age and the schedule continues. A message created
/// 12 s before the server starts, with `retry_interval = '3s'`, has had the
/// 3 s and 6 s delays (9 s) but not the 12 s one (while the server takes
/// under 9 s to recover it): its counter is 2 and its next attempt is at
/// 3 + 6 + 12 = 21 s after creation.
#[test]
fn attempt_counter_is_inferred_from_the_age_after_a_restart() {
    let sink = TestSink::start(SinkConfig::default());
    let policy = format!("{}{}", policy_head("LocalDisk"), routed(sink.port(), "3s"));
    let dir = tempfile::tempdir().unwrap();
    let created = SystemTime::now() - Duration::from_secs(12);
    let id = SpoolId::with_created(created);
    let meta = serde_json::to_vec(&json!({
        "sender": "sender@example.com",
        "recipient": "tempfail@example.com",
        "meta": {},
        "schedule": null,
    }))
    .unwrap();
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (data, meta_spool) = (open(dir.path(), "data"), open(dir.path(), "meta"));
        rt.block_on(async {
            data.store(id, b"Subject: old\r\n\r\nbody\r\n".to_vec().into())
                .await
                .unwrap();
            meta_spool.store(id, meta.into()).await.unwrap();
        });
    }
    let server = Builder::new(policy)
        .binary(env!("CARGO_BIN_EXE_tern"))
        .dir(dir)
        .start()
        .unwrap();
    let logs = server.dir().join("logs");
    let seen = wait_for_records(&logs, Duration::from_secs(30), |r| {
        count(r, "TransientFailure") >= 1
    });
    let first = of_type(&seen, "TransientFailure")[0];
    assert_eq!(first["id"], id.to_string(), "{first}");
    assert_eq!(first["num_attempts"], 2, "{first}");
    let created_secs = created
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let at = event_seconds(first) - created_secs;
    assert!(
        (20.0..=23.5).contains(&at),
        "first attempt after restart at +{at:.2}s, expected +21s"
    );
}

/// §6.2/§7.2: the scheduled queue's own `max_message_rate` spaces the
/// promotions out; a refused message waits for the throttle (a `Delayed`
/// record, `MessageRateThrottle`) without counting an attempt.
#[test]
fn scheduled_queue_max_message_rate_spaces_promotions() {
    let sink = TestSink::start(SinkConfig::default());
    let policy =
        policy_head("LocalDisk") + &routed_with(sink.port(), "max_message_rate = '1/2s',", "");
    let server = start_tern(policy);
    send(
        &server,
        &["q1@example.com", "q2@example.com", "q3@example.com"],
    );
    let logs = server.dir().join("logs");
    let seen = wait_for_records(&logs, Duration::from_secs(30), |r| {
        count(r, "Delivery") >= 3
    });
    let mut times: Vec<f64> = of_type(&seen, "Delivery")
        .iter()
        .map(|r| event_seconds(r))
        .collect();
    times.sort_by(f64::total_cmp);
    for pair in times.windows(2) {
        assert!(
            pair[1] - pair[0] >= 1.5,
            "deliveries closer than the 1/2s rate allows: {times:?}"
        );
    }
    let delayed = of_type(&seen, "Delayed");
    assert!(!delayed.is_empty(), "{seen:#?}");
    for record in delayed {
        let content = record["response"]["content"].as_str().unwrap();
        assert!(
            content.starts_with("Context: MessageRateThrottle. Next due in"),
            "{record}"
        );
        assert_eq!(record["num_attempts"], 0, "{record}");
    }
    assert_eq!(count(&seen, "TransientFailure"), 0, "{seen:#?}");
}

/// §11.2: when an egress path's `max_message_rate` (or, for a new
/// connection, `max_connection_rate`) would hold the next message longer
/// than `idle_timeout`, nothing sits on it: that message and the rest of
/// the ready queue go back to their scheduled queues, due when the
/// throttle allows again, with no attempt counted.
#[test]
fn an_egress_rate_wait_beyond_idle_timeout_sends_the_ready_queue_back() {
    egress_throttle_sends_back("max_message_rate = '1/h'", "MessageRateThrottle");
    egress_throttle_sends_back(
        "max_connection_rate = '1/h', max_deliveries_per_connection = 1",
        "ConnectionRateThrottle",
    );
}

fn egress_throttle_sends_back(throttle: &str, context: &str) {
    let sink = TestSink::start(SinkConfig::default());
    let policy = policy_head("LocalDisk")
        + &routed_with(
            sink.port(),
            "",
            &format!("{throttle}, idle_timeout = '2s',"),
        );
    let server = start_tern(policy);
    send(
        &server,
        &["e1@example.com", "e2@example.com", "e3@example.com"],
    );
    let logs = server.dir().join("logs");
    let seen = wait_for_records(&logs, Duration::from_secs(30), |r| {
        count(r, "Delivery") >= 1 && count(r, "Delayed") >= 2
    });
    // One message passes the throttle; waiting an hour for the next is
    // far beyond the 2 s idle_timeout.
    assert_eq!(count(&seen, "Delivery"), 1, "{throttle}: {seen:#?}");
    assert_eq!(sink.stats().messages, 1, "{throttle}");
    let delayed = of_type(&seen, "Delayed");
    assert_eq!(delayed.len(), 2, "{throttle}: {seen:#?}");
    for record in delayed {
        let content = record["response"]["content"].as_str().unwrap();
        assert!(
            content.starts_with(&format!("Context: {context}. Next due in")),
            "{record}"
        );
        // Due in about an hour (the throttle's wait), not a backoff step.
        let due_in = content.split("Next due in ").nth(1).unwrap_or_default();
        assert!(
            due_in.starts_with("59m") || due_in.starts_with("1h"),
            "{record}"
        );
        assert_eq!(record["num_attempts"], 0, "{record}");
    }
    assert_eq!(count(&seen, "TransientFailure"), 0, "{seen:#?}");
}
