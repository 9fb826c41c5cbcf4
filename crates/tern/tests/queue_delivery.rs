//! The queue layer and SMTP delivery end to end: a real Tern relays to an
//! in-process sink that answers per recipient local part, and the log
//! records are read back with `tern logs`.

mod common;

use common::*;
use std::time::{Duration, Instant};
use tern_bench::sink::SinkConfig;
use tern_testkit::Builder;

/// Route every queue to the sink through `mx_list` and allow loopback.
fn relay_policy(sink_port: u16, queue_config: &str, path_config: &str) -> String {
    format!(
        r#"{head}
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {{
    protocol = {{ smtp = {{ mx_list = {{ '[127.0.0.1]:{sink_port}' }} }} }},
    {queue_config}
  }}
end)
kumo.on('get_egress_path_config', function(domain, source, site)
  return kumo.make_egress_path {{
    prohibited_hosts = {{}}, enable_tls = 'OpportunisticInsecure',
    {path_config}
  }}
end)
"#,
        head = policy_head("RocksDB")
    )
}

fn send(server: &tern_testkit::TernServer, recipients: &[&str]) {
    let mut smtp = server.smtp().unwrap();
    smtp.read_reply().unwrap();
    if let Err(err) = smtp.command("EHLO test") {
        panic!("EHLO: {err}\nserver output:\n{}", server.output());
    }
    for rcpt in recipients {
        let (code, text) = smtp
            .send_message("s@example.com", rcpt, &body("test"))
            .unwrap();
        assert_eq!(code, 250, "{text}");
    }
    smtp.command("QUIT").unwrap();
}

#[test]
fn delivery_bounce_and_retry_schedule_until_expiry() {
    let sink = TestSink::start(SinkConfig::default());
    let policy = relay_policy(sink.port(), "retry_interval = '5s', max_age = '40s'", "");
    let server = start_tern(policy);
    send(
        &server,
        &[
            "ok@example.com",
            "tempfail@example.com",
            "permfail@example.com",
        ],
    );
    let logs = server.dir().join("logs");
    let seen = wait_for_records(&logs, Duration::from_secs(60), |r| {
        count(r, "Expiration") == 1
    });

    let delivered = of_type(&seen, "Delivery");
    assert_eq!(delivered.len(), 1, "{seen:#?}");
    assert_eq!(delivered[0]["recipient"], "ok@example.com");
    assert_eq!(delivered[0]["response"]["code"], 250);
    assert_eq!(delivered[0]["response"]["command"], ".\r\n");
    assert_eq!(delivered[0]["egress_source"], "unspecified");
    assert_eq!(delivered[0]["egress_pool"], "unspecified");
    assert_eq!(delivered[0]["peer_address"]["addr"], "127.0.0.1");
    assert!(delivered[0]["tls_cipher"].is_string(), "{:?}", delivered[0]);
    assert!(
        delivered[0]["source_address"]["address"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{:?}",
        delivered[0]
    );
    assert!(delivered[0]["session_id"].is_string());
    assert_eq!(delivered[0]["delivery_protocol"], "ESMTP");
    assert_eq!(
        delivered[0]["site"],
        format!(
            "unspecified->mx_list:[127.0.0.1]:{}@smtp_client",
            sink.port()
        )
    );

    let bounced = of_type(&seen, "Bounce");
    assert_eq!(bounced.len(), 1);
    assert_eq!(bounced[0]["recipient"], "permfail@example.com");
    assert_eq!(bounced[0]["response"]["code"], 550);
    assert_eq!(
        bounced[0]["response"]["command"],
        "RCPT TO:<permfail@example.com>\r\n"
    );

    // 4xx: attempts at ~0, then >=5 s, >=10 s, >=20 s later (within +50 %),
    // then the next delay (40 s) would pass max_age: Expiration.
    let failures = of_type(&seen, "TransientFailure");
    assert_eq!(failures.len(), 4, "{seen:#?}");
    let received = event_seconds(of_type(&seen, "Reception")[0]);
    let times: Vec<f64> = failures.iter().map(|r| event_seconds(r)).collect();
    assert!(
        times[0] - received < 3.0,
        "first attempt at once: {times:?}"
    );
    for (i, expected) in [5.0, 10.0, 20.0].iter().enumerate() {
        let gap = times[i + 1] - times[i];
        // The jitter is +-R/40 (0.125 s for R = 5 s).
        assert!(
            gap >= expected - 0.2 && gap <= expected * 1.5,
            "gap {i} is {gap:.2}s, expected {expected}s: {times:?}"
        );
    }
    for (n, record) in failures.iter().enumerate() {
        assert_eq!(record["num_attempts"], n as u64, "{record}");
        assert_eq!(record["recipient"], "tempfail@example.com");
    }
    let expired = of_type(&seen, "Expiration")[0];
    assert_eq!(expired["response"]["code"], 551);
    assert!(
        expired["response"]["content"]
            .as_str()
            .unwrap()
            .contains("exceeds max_age=40s"),
        "{expired}"
    );
    // Every record has exactly the §12.2 fields; after a graceful stop
    // every segment is complete (the zstd tool reads it) and read-only.
    const SOMETIMES: &[&str] = &[
        "tls_cipher",
        "tls_protocol_version",
        "tls_peer_subject_name",
        "session_id",
    ];
    for record in &seen {
        let keys: Vec<&str> = record
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for key in RECORD_FIELDS {
            assert!(keys.contains(key), "{key} missing from {record}");
        }
        for key in &keys {
            assert!(
                RECORD_FIELDS.contains(key) || SOMETIMES.contains(key),
                "unexpected field {key} in {record}"
            );
        }
        assert!(record["timestamp"].is_u64() && record["created"].is_u64());
        assert!(record["num_attempts"].is_u64() && record["size"].is_u64());
        assert!(record["response"]["code"].is_u64());
    }
    let dir = server.stop();
    let mut segments = 0;
    for entry in std::fs::read_dir(dir.path().join("logs")).unwrap() {
        let path = entry.unwrap().path();
        segments += 1;
        let out = std::process::Command::new("zstd")
            .arg("-t")
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "zstd rejects {path:?}");
        assert!(
            std::fs::metadata(&path).unwrap().permissions().readonly(),
            "{path:?} is still writable"
        );
    }
    assert!(segments > 0);
}

#[test]
fn null_mx_bounces_and_nxdomain_is_transient() {
    let sink = TestSink::start(SinkConfig::default());
    let policy = format!(
        r#"{head}
kumo.on('pre_init', function()
  kumo.dns.configure_test_resolver {{
    [[
$ORIGIN nullmx.test.
@ 300 MX 0 .
]],
    [[
$ORIGIN routed.test.
@ 300 MX 10 mx1.routed.test.
@ 300 MX 20 mx2.routed.test.
mx1 300 A 127.0.0.1
mx2 300 A 127.0.0.1
]],
  }}
end)
kumo.on('get_queue_config', function()
  return kumo.make_queue_config {{ retry_interval = '1h' }}
end)
kumo.on('get_egress_path_config', function(domain, source, site)
  return kumo.make_egress_path {{ prohibited_hosts = {{}}, smtp_port = {port}, enable_tls = 'Disabled' }}
end)
"#,
        head = policy_head("LocalDisk"),
        port = sink.port()
    );
    let server = start_tern(policy);
    send(
        &server,
        &["a@nullmx.test", "b@nowhere.test", "c@routed.test"],
    );
    let logs = server.dir().join("logs");
    let seen = wait_for_records(&logs, Duration::from_secs(30), |r| {
        count(r, "Bounce") + count(r, "TransientFailure") + count(r, "Delivery") >= 3
    });
    let bounce = of_type(&seen, "Bounce")[0];
    assert_eq!(bounce["recipient"], "a@nullmx.test");
    assert_eq!(bounce["response"]["code"], 556);
    assert_eq!(
        bounce["response"]["content"],
        "Recipient address has a null MX"
    );
    assert_eq!(
        bounce["response"]["enhanced_code"]["subject"], 1,
        "{bounce}"
    );
    let transient = of_type(&seen, "TransientFailure")[0];
    assert_eq!(transient["recipient"], "b@nowhere.test");
    assert_eq!(transient["response"]["code"], 451);
    assert!(
        transient["response"]["content"]
            .as_str()
            .unwrap()
            .contains("NXDOMAIN"),
        "{transient}"
    );
    let delivery = of_type(&seen, "Delivery")[0];
    assert_eq!(delivery["recipient"], "c@routed.test");
    // Two MX hosts in different preferences: the §9.3 site name.
    assert_eq!(
        delivery["site"],
        "unspecified->(mx1|mx2).routed.test@smtp_client"
    );
    assert_eq!(delivery["tls_cipher"], serde_json::Value::Null);
}

#[test]
fn weighted_pool_shares_follow_weights() {
    let sink = TestSink::start(SinkConfig::default());
    let policy = format!(
        r#"{head}
kumo.on('get_egress_source', function(name)
  return kumo.make_egress_source {{ name = name }}
end)
kumo.on('get_egress_pool', function(name)
  return kumo.make_egress_pool {{
    name = name,
    entries = {{ {{ name = 'light', weight = 1 }}, {{ name = 'heavy', weight = 3 }} }},
  }}
end)
kumo.on('get_queue_config', function()
  return kumo.make_queue_config {{
    egress_pool = 'pool',
    protocol = {{ smtp = {{ mx_list = {{ '[127.0.0.1]:{port}' }} }} }},
  }}
end)
kumo.on('get_egress_path_config', function(domain, source, site)
  return kumo.make_egress_path {{ prohibited_hosts = {{}}, enable_tls = 'Disabled' }}
end)
"#,
        head = policy_head("RocksDB"),
        port = sink.port()
    );
    let server = start_tern(policy);
    const N: usize = 4000;
    let recipients: Vec<String> = (0..N).map(|i| format!("r{i}@example.com")).collect();
    let refs: Vec<&str> = recipients.iter().map(String::as_str).collect();
    send(&server, &refs);
    let logs = server.dir().join("logs");
    let seen = wait_for_records(&logs, Duration::from_secs(120), |r| {
        count(r, "Delivery") >= N
    });
    let delivered = of_type(&seen, "Delivery");
    let light = delivered
        .iter()
        .filter(|r| r["egress_source"] == "light")
        .count();
    let heavy = delivered
        .iter()
        .filter(|r| r["egress_source"] == "heavy")
        .count();
    assert_eq!(light + heavy, N);
    let share = light as f64 / N as f64;
    assert!(
        (share - 0.25).abs() <= 0.0125,
        "light got {light}, heavy {heavy}"
    );
    assert!(delivered.iter().all(|r| r["egress_pool"] == "pool"));
    assert_eq!(sink.stats().messages, N as u64);
}

#[test]
fn shaping_message_rate_connection_limit_and_deliveries_per_connection() {
    // 10/s: 100 messages take at least ~9 s after the first burst of 10.
    let sink = TestSink::start(SinkConfig::default());
    let policy = relay_policy(
        sink.port(),
        "",
        "max_message_rate = '10/s', connection_limit = 2, max_deliveries_per_connection = 10",
    );
    let server = start_tern(policy);
    let recipients: Vec<String> = (0..100).map(|i| format!("r{i}@example.com")).collect();
    let refs: Vec<&str> = recipients.iter().map(String::as_str).collect();
    send(&server, &refs);
    let logs = server.dir().join("logs");
    let seen = wait_for_records(&logs, Duration::from_secs(60), |r| {
        count(r, "Delivery") >= 100
    });
    let times: Vec<f64> = of_type(&seen, "Delivery")
        .iter()
        .map(|r| event_seconds(r))
        .collect();
    let first = times.iter().cloned().fold(f64::MAX, f64::min);
    let last = times.iter().cloned().fold(f64::MIN, f64::max);
    assert!(last - first >= 8.5, "100 messages in {:.2}s", last - first);
    let stats = sink.stats();
    assert!(
        stats.max_concurrent_connections <= 2,
        "{} concurrent connections",
        stats.max_concurrent_connections
    );
    assert!(stats.connections >= 10, "{} connections", stats.connections);
    assert_eq!(stats.messages, 100);
}

#[test]
fn set_scheduling_first_attempt_delays_delivery() {
    let sink = TestSink::start(SinkConfig::default());
    let mut policy = relay_policy(sink.port(), "", "");
    policy.push_str(
        r#"
kumo.on('smtp_server_message_received', function(msg)
  msg:set_scheduling { first_attempt = os.date('!%Y-%m-%dT%H:%M:%SZ', os.time() + 4) }
end)
"#,
    );
    let server = start_tern(policy);
    send(&server, &["later@example.com"]);
    let logs = server.dir().join("logs");
    let seen = wait_for_records(&logs, Duration::from_secs(30), |r| {
        count(r, "Delivery") == 1
    });
    let received = event_seconds(of_type(&seen, "Reception")[0]);
    let delivered = event_seconds(of_type(&seen, "Delivery")[0]);
    assert!(
        delivered - received >= 2.5,
        "delivered {:.2}s after reception",
        delivered - received
    );
    let delayed = of_type(&seen, "Delayed");
    assert_eq!(delayed.len(), 1, "{seen:#?}");
    assert!(
        delayed[0]["response"]["content"]
            .as_str()
            .unwrap()
            .starts_with("Context: ScheduledForLater. Next due in"),
        "{}",
        delayed[0]
    );
}

/// `msg:set_due` at reception: `later@` is due 4 s (to the whole second)
/// after reception and must wait for it, `now@` is delivered at once.
/// With `deferred_spool` the message is not in the spool and waits in
/// memory; otherwise it waits in the timer wheel as its spool id.
fn set_due_at_reception_delays_delivery(deferred_spool: bool) {
    let sink = TestSink::start(SinkConfig::default());
    let mut policy = relay_policy(sink.port(), "", "");
    if deferred_spool {
        policy = policy.replace(
            "relay_hosts = { '127.0.0.1' }",
            "relay_hosts = { '127.0.0.1' }, deferred_spool = true",
        );
    }
    policy.push_str(
        r#"
kumo.on('smtp_server_message_received', function(msg)
  if msg:recipient().user == 'later' then
    msg:set_due(os.date('!%Y-%m-%dT%H:%M:%SZ', os.time() + 4))
  end
end)
"#,
    );
    let server = start_tern(policy);
    let delivered = || sink.stats().messages;
    let wait_for = |n: u64, timeout: Duration| {
        let deadline = Instant::now() + timeout;
        while delivered() < n {
            assert!(
                Instant::now() < deadline,
                "{n} deliveries within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    send(&server, &["now@example.com"]);
    wait_for(1, Duration::from_secs(5));
    send(&server, &["later@example.com"]);
    let accepted = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(delivered(), 1, "later@ was delivered before its due time");
    wait_for(2, Duration::from_secs(10));
    let waited = accepted.elapsed();

    let logs = server.dir().join("logs");
    let seen = wait_for_records(&logs, Duration::from_secs(10), |r| {
        count(r, "Delivery") == 2
    });
    let time_of = |kind: &str| {
        let record = of_type(&seen, kind)
            .into_iter()
            .find(|r| r["recipient"] == "later@example.com")
            .unwrap_or_else(|| panic!("no {kind} for later@: {seen:#?}"));
        event_seconds(record)
    };
    let gap = time_of("Delivery") - time_of("Reception");
    assert!(
        gap >= 2.5,
        "delivered {gap:.2}s after reception (waited {waited:?})"
    );
    assert_eq!(count(&seen, "TransientFailure"), 0, "{seen:#?}");
}

#[test]
fn set_due_at_reception_delays_a_spooled_message() {
    set_due_at_reception_delays_delivery(false);
}

#[test]
fn set_due_at_reception_delays_a_deferred_spool_message() {
    set_due_at_reception_delays_delivery(true);
}

#[test]
fn refused_first_host_fails_over_and_a_421_affects_only_its_message() {
    let sink = TestSink::start(SinkConfig::default());
    // Nothing listens on the first mx_list entry.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let policy = format!(
        r#"{head}
kumo.on('get_queue_config', function()
  return kumo.make_queue_config {{
    retry_interval = '1h',
    protocol = {{ smtp = {{ mx_list = {{ '[127.0.0.1]:{closed}', '[127.0.0.1]:{port}' }} }} }},
  }}
end)
kumo.on('get_egress_path_config', function()
  return kumo.make_egress_path {{ prohibited_hosts = {{}}, enable_tls = 'Disabled', connection_limit = 1 }}
end)
"#,
        head = policy_head("RocksDB"),
        port = sink.port()
    );
    let server = start_tern(policy);
    send(
        &server,
        &[
            "first@example.com",
            "421-drop@example.com",
            "last@example.com",
        ],
    );
    let logs = server.dir().join("logs");
    let seen = wait_for_records(&logs, Duration::from_secs(30), |r| {
        count(r, "Delivery") >= 2 && count(r, "TransientFailure") >= 1
    });
    let delivered: Vec<&str> = of_type(&seen, "Delivery")
        .iter()
        .map(|r| r["recipient"].as_str().unwrap())
        .collect();
    assert!(delivered.contains(&"first@example.com"), "{delivered:?}");
    assert!(delivered.contains(&"last@example.com"), "{delivered:?}");
    for record in of_type(&seen, "Delivery") {
        assert_eq!(
            record["peer_address"]["addr"], "127.0.0.1",
            "delivered through the second host"
        );
    }
    let failed = of_type(&seen, "TransientFailure");
    assert_eq!(failed.len(), 1, "{seen:#?}");
    assert_eq!(failed[0]["recipient"], "421-drop@example.com");
    assert_eq!(failed[0]["response"]["code"], 421);
    assert_eq!(count(&seen, "Bounce"), 0);
}

#[test]
fn custom_lua_delivery_outcomes_and_batches() {
    let policy = format!(
        r#"{head}
kumo.on('get_queue_config', function(domain, tenant, campaign)
  if domain == 'batch.test' then
    return kumo.make_queue_config {{
      retry_interval = '1h',
      protocol = {{ custom_lua = {{ constructor = 'make.batch', batch_size = 10,
        min_batch_size = 3, max_batch_latency = '2s' }} }},
    }}
  end
  return kumo.make_queue_config {{
    retry_interval = '1h',
    protocol = {{ custom_lua = {{ constructor = 'make.sender' }} }},
  }}
end)
kumo.on('make.sender', function(domain, tenant, campaign)
  local out = io.open('{{dir}}/sent.txt', 'a')
  return {{
    send = function(self, msg)
      local rcpt = tostring(msg:recipient())
      if rcpt:find('^temp') then kumo.reject(450, '4.2.0 try later') end
      if rcpt:find('^perm') then kumo.reject(550, '5.1.1 no such user') end
      out:write(domain .. ' ' .. rcpt .. '\n')
      out:flush()
      return 'stored ' .. rcpt
    end,
    close = function(self) out:close() end,
  }}
end)
kumo.on('make.batch', function(domain)
  return {{
    send_batch = function(self, msgs)
      local f = io.open('{{dir}}/batches.txt', 'a')
      f:write(#msgs .. '\n')
      f:close()
      return 'batch of ' .. #msgs
    end,
  }}
end)
"#,
        head = policy_head("RocksDB")
    );
    let server = start_tern(policy);
    send(&server, &["ok@lua.test", "temp@lua.test", "perm@lua.test"]);
    let batch: Vec<String> = (0..3).map(|i| format!("b{i}@batch.test")).collect();
    let refs: Vec<&str> = batch.iter().map(String::as_str).collect();
    send(&server, &refs);
    let logs = server.dir().join("logs");
    let seen = wait_for_records(&logs, Duration::from_secs(30), |r| {
        count(r, "Delivery") >= 4 && count(r, "TransientFailure") >= 1 && count(r, "Bounce") >= 1
    });
    let delivered = of_type(&seen, "Delivery");
    let ok = delivered
        .iter()
        .find(|r| r["recipient"] == "ok@lua.test")
        .expect("ok delivered");
    assert_eq!(ok["response"]["code"], 200);
    assert_eq!(ok["response"]["content"], "stored ok@lua.test");
    assert_eq!(ok["delivery_protocol"], "Lua");
    assert_eq!(ok["site"], "unspecified->lua.test@lua:make.sender");
    let temp = of_type(&seen, "TransientFailure")[0];
    assert_eq!(temp["recipient"], "temp@lua.test");
    assert_eq!(temp["response"]["code"], 450);
    let perm = of_type(&seen, "Bounce")[0];
    assert_eq!(perm["recipient"], "perm@lua.test");
    assert_eq!(perm["response"]["code"], 550);
    let sent = std::fs::read_to_string(server.dir().join("sent.txt")).unwrap();
    assert_eq!(sent, "lua.test ok@lua.test\n");
    // The three batch.test messages went in one send_batch call.
    let batches = std::fs::read_to_string(server.dir().join("batches.txt")).unwrap();
    assert_eq!(batches, "3\n");
    let batch_records: Vec<_> = delivered
        .iter()
        .filter(|r| r["queue"] == "batch.test")
        .collect();
    assert_eq!(batch_records.len(), 3);
    assert!(
        batch_records
            .iter()
            .all(|r| r["response"]["content"] == "batch of 3")
    );
}

#[test]
fn http_injection_immediate_and_deferred_generation_are_delivered() {
    let sink = TestSink::start(SinkConfig::default());
    let mut policy = relay_policy(sink.port(), "", "");
    policy = policy.replace(
        "kumo.start_esmtp_listener",
        "kumo.start_http_listener { listen = '127.0.0.1:0' }\n  kumo.start_esmtp_listener",
    );
    let server = start_tern(policy);
    let request = |deferred: bool, tag: &str| {
        serde_json::json!({
            "envelope_sender": "s@example.com",
            "recipients": [
                { "email": format!("a-{tag}@example.com"), "substitutions": { "name": "A" } },
                { "email": format!("b-{tag}@example.com"), "substitutions": { "name": "B" } },
            ],
            "content": {
                "subject": "hello {{ name }}",
                "text_body": "Dear {{ name }}",
                "from": { "email": "s@example.com" },
            },
            "deferred_generation": deferred,
        })
        .to_string()
    };
    for (deferred, tag) in [(false, "now"), (true, "later")] {
        let (status, body) = tern_testkit::http_request(
            server.listener("http"),
            "POST",
            "/api/inject/v1",
            &[("Content-Type", "application/json")],
            Some(&request(deferred, tag)),
        )
        .unwrap();
        assert_eq!(status, 200, "{body}");
    }
    let logs = server.dir().join("logs");
    let seen = wait_for_records(&logs, Duration::from_secs(30), |r| {
        of_type(r, "Delivery")
            .iter()
            .filter(|d| d["delivery_protocol"] == "ESMTP")
            .count()
            >= 4
    });
    let mut delivered: Vec<&str> = of_type(&seen, "Delivery")
        .iter()
        .filter(|d| d["delivery_protocol"] == "ESMTP")
        .map(|d| d["recipient"].as_str().unwrap())
        .collect();
    delivered.sort_unstable();
    assert_eq!(
        delivered,
        [
            "a-later@example.com",
            "a-now@example.com",
            "b-later@example.com",
            "b-now@example.com"
        ]
    );
    // The stored request itself was consumed by the generator.
    let generator: Vec<_> = of_type(&seen, "Delivery")
        .into_iter()
        .filter(|d| d["queue"] == "generator.kumomta.internal")
        .collect();
    assert_eq!(generator.len(), 1, "{seen:#?}");
    assert_eq!(sink.stats().messages, 4);
}

#[test]
fn requeue_message_can_rebind_to_another_queue() {
    let sink = TestSink::start(SinkConfig::default());
    // Queue `example.com` points at a closed port; the requeue_message
    // handler moves failed messages to the `rescue` tenant, whose queue
    // reaches the sink.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let policy = format!(
        r#"{head}
kumo.on('get_queue_config', function(domain, tenant)
  local port = {closed}
  if tenant == 'rescue' then port = {port} end
  return kumo.make_queue_config {{
    retry_interval = '1h',
    protocol = {{ smtp = {{ mx_list = {{ '[127.0.0.1]:' .. port }} }} }},
  }}
end)
kumo.on('get_egress_path_config', function()
  return kumo.make_egress_path {{ prohibited_hosts = {{}}, enable_tls = 'Disabled' }}
end)
kumo.on('requeue_message', function(msg, response, context, increment, delay)
  msg:set_meta('tenant', 'rescue')
end)
"#,
        head = policy_head("RocksDB"),
        port = sink.port()
    );
    let server = start_tern(policy);
    send(&server, &["moved@example.com"]);
    let logs = server.dir().join("logs");
    let seen = wait_for_records(&logs, Duration::from_secs(30), |r| {
        count(r, "Delivery") >= 1
    });
    let failure = of_type(&seen, "TransientFailure")[0];
    assert_eq!(failure["queue"], "example.com");
    let delivery = of_type(&seen, "Delivery")[0];
    // Rebinding makes the message due at once in its new queue, with the
    // attempt counter advanced by the failure.
    assert_eq!(delivery["queue"], "rescue@example.com");
    assert_eq!(delivery["num_attempts"], 1);
    assert!(event_seconds(delivery) - event_seconds(failure) < 5.0);
}

#[test]
fn a_full_ready_queue_delays_without_counting_an_attempt() {
    // max_ready = 1 and a slow sink: while one message is being sent the
    // ready queue is full, so the others are re-delayed (ReadyQueueWasFull)
    // instead of piling up, and are all delivered in the end.
    let sink = TestSink::start(SinkConfig {
        data_delay: Duration::from_millis(1500),
        ..SinkConfig::default()
    });
    let policy = relay_policy(sink.port(), "", "max_ready = 1, connection_limit = 1");
    let server = start_tern(policy);
    send(
        &server,
        &[
            "r1@example.com",
            "r2@example.com",
            "r3@example.com",
            "r4@example.com",
        ],
    );
    let logs = server.dir().join("logs");
    let seen = wait_for_records(&logs, Duration::from_secs(20), |r| count(r, "Delayed") >= 1);
    let delayed = of_type(&seen, "Delayed")[0];
    let content = delayed["response"]["content"].as_str().unwrap();
    assert!(
        content.starts_with("Context: ReadyQueueWasFull. Next due in"),
        "{content}"
    );
    assert_eq!(delayed["num_attempts"], 0);
    assert_eq!(count(&seen, "TransientFailure"), 0);
}

#[test]
fn an_unplumbed_source_is_suspended_and_skipped() {
    let sink = TestSink::start(SinkConfig::default());
    let policy = format!(
        r#"{head}
kumo.on('get_egress_source', function(name)
  if name == 'bad' then
    -- TEST-NET-1: not configured on this host, so bind() fails.
    return kumo.make_egress_source {{
      name = 'bad', source_address = '192.0.2.1',
      suspend_when_unplumbed = {{ trigger = 'Immediate', duration = '1h' }},
    }}
  end
  return kumo.make_egress_source {{ name = name }}
end)
kumo.on('get_egress_pool', function(name)
  return kumo.make_egress_pool {{
    name = name, entries = {{ {{ name = 'good' }}, {{ name = 'bad' }} }},
  }}
end)
kumo.on('get_queue_config', function()
  return kumo.make_queue_config {{
    egress_pool = 'pool', retry_interval = '1s', max_retry_interval = '1s',
    protocol = {{ smtp = {{ mx_list = {{ '[127.0.0.1]:{port}' }} }} }},
  }}
end)
kumo.on('get_egress_path_config', function()
  return kumo.make_egress_path {{ prohibited_hosts = {{}}, enable_tls = 'Disabled' }}
end)
"#,
        head = policy_head("RocksDB"),
        port = sink.port()
    );
    let server = start_tern(policy);
    let recipients: Vec<String> = (0..10).map(|i| format!("r{i}@example.com")).collect();
    let refs: Vec<&str> = recipients.iter().map(String::as_str).collect();
    send(&server, &refs);
    let logs = server.dir().join("logs");
    let seen = wait_for_records(&logs, Duration::from_secs(30), |r| {
        count(r, "Delivery") >= 10
    });
    assert!(
        of_type(&seen, "Delivery")
            .iter()
            .all(|r| r["egress_source"] == "good")
    );
    // The first pick of `bad` failed at bind and suspended it: at most the
    // messages already in its ready queue failed, never a later one.
    let failures = of_type(&seen, "TransientFailure");
    assert!(!failures.is_empty(), "bad was never picked: {seen:#?}");
    assert!(failures.iter().all(|r| r["egress_source"] == "bad"));
    let first_failure = failures
        .iter()
        .map(|r| event_seconds(r))
        .fold(f64::MAX, f64::min);
    let late = failures
        .iter()
        .filter(|r| event_seconds(r) > first_failure + 1.5)
        .count();
    assert_eq!(
        late, 0,
        "bad was used after it was suspended: {failures:#?}"
    );
    assert!(
        server
            .output()
            .contains("egress source bad suspended for 1h")
    );
}

#[test]
fn smtp_client_rewrite_delivery_status_turns_a_bounce_into_a_retry() {
    let sink = TestSink::start(SinkConfig::default());
    let mut policy = relay_policy(sink.port(), "retry_interval = '1h'", "");
    policy.push_str(
        r#"
kumo.on('smtp_client_rewrite_delivery_status', function(response, domain, tenant, campaign, routing_domain)
  if response:find('Permanent failure') and domain == 'example.com' then
    return 451
  end
end)
"#,
    );
    let server = start_tern(policy);
    send(&server, &["permfail@example.com"]);
    let logs = server.dir().join("logs");
    let seen = wait_for_records(&logs, Duration::from_secs(30), |r| {
        count(r, "TransientFailure") + count(r, "Bounce") >= 1
    });
    assert_eq!(count(&seen, "Bounce"), 0, "{seen:#?}");
    let failure = of_type(&seen, "TransientFailure")[0];
    assert_eq!(failure["response"]["code"], 451);
    let content = failure["response"]["content"].as_str().unwrap();
    assert!(
        content.ends_with("(kumomta: status was rewritten from 550 -> 451)"),
        "{content}"
    );
}

#[test]
fn queue_config_is_refreshed_after_its_refresh_interval() {
    // get_queue_config reads the destination port from a file; after the
    // file changes and refresh_interval passes, the same scheduled queue
    // sends to the new destination.
    let first = TestSink::start(SinkConfig::default());
    let second = TestSink::start(SinkConfig::default());
    let policy = format!(
        r#"{head}
kumo.on('get_queue_config', function()
  local f = io.open('{{dir}}/port.txt')
  local port = f:read('l')
  f:close()
  return kumo.make_queue_config {{
    refresh_interval = '1s',
    protocol = {{ smtp = {{ mx_list = {{ '[127.0.0.1]:' .. port }} }} }},
  }}
end)
kumo.on('get_egress_path_config', function()
  return kumo.make_egress_path {{ prohibited_hosts = {{}}, enable_tls = 'Disabled' }}
end)
"#,
        head = policy_head("LocalDisk")
    );
    let server = Builder::new(policy)
        .binary(env!("CARGO_BIN_EXE_tern"))
        .file("port.txt", format!("{}\n", first.port()))
        .start()
        .unwrap();
    send(&server, &["one@example.com"]);
    let logs = server.dir().join("logs");
    wait_for_records(&logs, Duration::from_secs(20), |r| {
        count(r, "Delivery") >= 1
    });
    std::fs::write(
        server.dir().join("port.txt"),
        format!("{}\n", second.port()),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    send(&server, &["two@example.com"]);
    wait_for_records(&logs, Duration::from_secs(20), |r| {
        count(r, "Delivery") >= 2
    });
    assert_eq!(first.stats().messages, 1);
    assert_eq!(second.stats().messages, 1);
}

#[test]
fn idle_scheduled_queues_are_reaped_and_recreated() {
    // refresh_interval is long, so get_queue_config runs again only when
    // the queue was reaped (reap_interval = 3s) and created anew.
    let sink = TestSink::start(SinkConfig::default());
    let policy = format!(
        r#"{head}
kumo.on('get_queue_config', function()
  local f = io.open('{{dir}}/calls.txt', 'a')
  f:write('call\n')
  f:close()
  return kumo.make_queue_config {{
    refresh_interval = '1h', reap_interval = '3s',
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
    let calls = || {
        std::fs::read_to_string(server.dir().join("calls.txt"))
            .unwrap_or_default()
            .lines()
            .count()
    };
    let logs = server.dir().join("logs");
    send(&server, &["one@example.com"]);
    wait_for_records(&logs, Duration::from_secs(20), |r| {
        count(r, "Delivery") >= 1
    });
    send(&server, &["two@example.com"]);
    wait_for_records(&logs, Duration::from_secs(20), |r| {
        count(r, "Delivery") >= 2
    });
    assert_eq!(calls(), 1, "the live queue kept its configuration");
    std::thread::sleep(Duration::from_secs(6));
    send(&server, &["three@example.com"]);
    wait_for_records(&logs, Duration::from_secs(20), |r| {
        count(r, "Delivery") >= 3
    });
    assert_eq!(calls(), 2, "the idle queue was reaped and created again");
}
