//! `GET /metrics` and `GET /metrics.json` on a real server: what the ESMTP
//! listener counts as it works (connections, refusals, messages, Rejection
//! records) and what is read at scrape time (spool disk space, scheduled
//! queues, the Lua pool), parsed by Python's `prometheus_client` as an
//! independent reader of the text format.

mod common;

use common::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn policy() -> String {
    r#"local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool { name = 'data', path = '{dir}/spool/data', kind = 'LocalDisk', min_free_space = '1%' }
  kumo.define_spool { name = 'meta', path = '{dir}/spool/meta', kind = 'LocalDisk', min_free_space = '1%' }
  kumo.start_esmtp_listener { listen = '127.0.0.1:0', relay_hosts = { '127.0.0.1' }, max_connections = 1 }
  kumo.start_http_listener { listen = '127.0.0.1:0' }
  kumo.start_http_listener { listen = '127.0.0.1:0', trusted_hosts = { '10.9.9.9' } }
end)
kumo.on('smtp_server_rcpt_to', function(rcpt)
  if rcpt.user == 'refuse' then kumo.reject(550, '5.7.1 not this one') end
end)
kumo.on('smtp_server_message_received', function(msg)
  -- Held an hour, so the scheduled queue still has them at the scrape.
  msg:set_due(os.date('!%Y-%m-%dT%H:%M:%SZ', os.time() + 3600))
end)
"#
    .to_string()
}

/// Fetch `url` and parse it with `prometheus_client`; prints
/// `{sample name: [[labels, value], ...]}`.
const SCRAPE: &str = r#"
import json, sys, urllib.request
from prometheus_client.parser import text_string_to_metric_families
with urllib.request.urlopen(sys.argv[1]) as r:
    assert r.headers['Content-Type'].startswith('text/plain'), r.headers['Content-Type']
    text = r.read().decode()
out = {}
types = {}
for family in text_string_to_metric_families(text):
    types[family.name] = family.type
    # Keyed by family: the parser adds OpenMetrics' `_total` to counter
    # sample names, which Prometheus itself does not.
    for sample in family.samples:
        out.setdefault(family.name, []).append([sample.labels, sample.value])
print(json.dumps({'samples': out, 'types': types}))
"#;

/// While one session holds the listener's only slot (max_connections = 1):
/// 3 messages accepted, one recipient refused by the policy, a second
/// connection refused with 421; then a scrape, before the session ends.
const TRAFFIC_THEN_SCRAPE: &str = r#"
import json, smtplib, socket, sys
host, port = sys.argv[1].rsplit(':', 1)
session = smtplib.SMTP(host, int(port), timeout=30)
session.ehlo('client.test')
for i in range(3):
    session.sendmail('a@sender.test', ['r%d@example.com' % i], 'Subject: %d\r\n\r\nhi\r\n' % i)
session.mail('a@sender.test')
code, _ = session.rcpt('refuse@example.com')
assert code == 550, code
session.rset()
second = socket.create_connection((host, int(port)), timeout=30)
banner = second.recv(512).decode()
assert banner.startswith('421 '), banner
second.close()
"#;

fn scrape(http: SocketAddr, query: &str) -> (Value, Value) {
    let out = python(SCRAPE, &[&format!("http://{http}/metrics{query}")]);
    let parsed: Value = serde_json::from_str(&out).unwrap();
    (parsed["samples"].clone(), parsed["types"].clone())
}

/// The value of sample `name` whose labels are exactly `labels`.
fn sample(samples: &Value, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples[name].as_array()?.iter().find_map(|pair| {
        let have = pair[0].as_object()?;
        let matches = have.len() == labels.len()
            && labels
                .iter()
                .all(|(k, v)| have.get(*k).and_then(Value::as_str) == Some(*v));
        matches.then(|| pair[1].as_f64()).flatten()
    })
}

#[test]
fn listener_counters_and_scrape_time_gauges_are_reported() {
    let server = start_tern(policy());
    let smtp = server.listener("smtp");
    let https = server.listeners("http");
    let (http, untrusted) = (https[0], https[1]);
    let this = format!("esmtp_listener:{smtp}");

    // Phase 1: traffic, then a scrape while the first session is open.
    // The script's own scrape runs inside the session (connection_count 1).
    let script = format!(
        "{TRAFFIC_THEN_SCRAPE}\nsys.argv = [sys.argv[0], sys.argv[2]]\n{SCRAPE}\nsession.quit()\n"
    );
    let out = python(
        &script,
        &[&smtp.to_string(), &format!("http://{http}/metrics")],
    );
    let parsed: Value = serde_json::from_str(out.trim().lines().last().unwrap()).unwrap();
    let (during, types) = (&parsed["samples"], &parsed["types"]);
    for service in ["esmtp_listener", this.as_str()] {
        let labels = [("service", service)];
        assert_eq!(
            sample(during, "connection_count", &labels),
            Some(1.0),
            "{service}: {during}"
        );
        assert_eq!(
            sample(during, "total_messages_received", &labels),
            Some(3.0),
            "{service}"
        );
        assert_eq!(
            sample(during, "smtp_server_rejections", &labels),
            Some(1.0),
            "{service}"
        );
        assert_eq!(
            sample(during, "total_connections_denied", &labels),
            Some(1.0),
            "{service}"
        );
        assert_eq!(
            sample(during, "total_connection_count", &labels),
            Some(2.0),
            "{service}"
        );
    }
    assert_eq!(types["connection_count"], "gauge");
    assert_eq!(types["total_messages_received"], "counter");
    assert_eq!(
        sample(during, "scheduled_count", &[("queue", "example.com")]),
        Some(3.0),
        "{during}"
    );
    for name in ["data spool", "meta spool"] {
        let free = sample(during, "disk_free_bytes", &[("name", name)]).expect(name);
        assert!(free > 0.0, "{name}: {free}");
        let percent = sample(during, "disk_free_percent", &[("name", name)]).expect(name);
        assert!((0.0..=100.0).contains(&percent), "{name}: {percent}");
        assert!(sample(during, "disk_free_inodes", &[("name", name)]).is_some());
    }
    assert!(sample(during, "lua_load_count", &[]).unwrap() >= 1.0);
    assert!(sample(during, "lua_count", &[]).unwrap() >= 1.0);
    assert!(sample(during, "memory_usage", &[]).unwrap() > 0.0);

    // Phase 2: the session has ended; the gauge goes back to zero and the
    // counters keep their values. The JSON form says the same.
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let (after, _) = scrape(http, "");
        if sample(&after, "connection_count", &[("service", "esmtp_listener")]) == Some(0.0)
            || Instant::now() > deadline
        {
            break after;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        sample(&after, "connection_count", &[("service", this.as_str())]),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &after,
            "total_messages_received",
            &[("service", "esmtp_listener")]
        ),
        Some(3.0)
    );

    let (code, body) = curl(&[&format!("http://{http}/metrics.json")]);
    assert_eq!(code, 200, "{body}");
    let json: Value = serde_json::from_str(&body).unwrap();
    let received = &json["total_messages_received"];
    assert_eq!(received["type"], "counter");
    assert_eq!(
        received["value"]["service"]["esmtp_listener"], 3.0,
        "{received}"
    );
    assert_eq!(
        received["value"]["service"][this.as_str()],
        3.0,
        "{received}"
    );
    assert_eq!(
        json["scheduled_count"]["value"]["queue"]["example.com"],
        3.0
    );
    assert!(json["lua_load_count"]["value"].as_f64().unwrap() >= 1.0);
    assert!(received["help"].as_str().is_some_and(|h| !h.is_empty()));

    // `?prefix=` renames every series; a prefix that cannot start a
    // metric name is a 400 with a JSON error.
    let (prefixed, _) = scrape(http, "?prefix=kumomta_");
    assert_eq!(
        sample(
            &prefixed,
            "kumomta_total_messages_received",
            &[("service", "esmtp_listener")]
        ),
        Some(3.0)
    );
    assert!(prefixed.get("total_messages_received").is_none());
    let (code, body) = curl(&[&format!("http://{http}/metrics?prefix=9-bad")]);
    assert_eq!(code, 400, "{body}");
    let error: Value = serde_json::from_str(&body).unwrap();
    assert!(error["error"].as_str().unwrap().contains("9-bad"), "{body}");

    // Only trusted hosts may read metrics (the default ACL).
    for path in ["/metrics", "/metrics.json"] {
        let (code, body) = curl(&[&format!("http://{untrusted}{path}")]);
        assert_eq!(code, 401, "{path}: {body}");
        assert!(!body.contains("total_messages_received"), "{body}");
    }
}

#[test]
fn delivery_outcomes_are_counted_in_total_and_per_ready_queue() {
    let sink = TestSink::start(tern_bench::sink::SinkConfig::default());
    let mut policy = policy_head("LocalDisk").replace(
        "  kumo.start_esmtp_listener",
        "  kumo.start_http_listener { listen = '127.0.0.1:0' }\n  kumo.start_esmtp_listener",
    );
    policy.push_str(&routed(sink.port(), "1h"));
    let server = start_tern(policy);
    let http = server.listener("http");
    let logs = server.dir().join("logs");
    let script = r#"
import smtplib, sys
host, port = sys.argv[1].rsplit(':', 1)
s = smtplib.SMTP(host, int(port), timeout=30)
for to in ['ok@example.com', 'permfail@example.com', 'tempfail@example.com']:
    s.sendmail('a@sender.test', [to], 'Subject: x\r\n\r\nhi\r\n')
s.quit()
"#;
    python(script, &[&server.listener("smtp").to_string()]);
    wait_for_records(&logs, Duration::from_secs(20), |r| {
        count(r, "Delivery") == 1 && count(r, "Bounce") == 1 && count(r, "TransientFailure") == 1
    });
    let (samples, _) = scrape(http, "");
    let total = |name: &str| sample(&samples, name, &[("service", "smtp_client")]);
    assert_eq!(total("total_messages_delivered"), Some(1.0), "{samples}");
    assert_eq!(total("total_messages_fail"), Some(1.0));
    assert_eq!(total("total_messages_transfail"), Some(1.0));
    assert!(total("total_connection_count").unwrap() >= 1.0);
    // The per-queue series: one ready queue, whose counts are the totals.
    let per_queue: Vec<&Value> = samples["total_messages_delivered"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|pair| {
            pair[0]["service"]
                .as_str()
                .is_some_and(|s| s.starts_with("smtp_client:"))
        })
        .collect();
    assert_eq!(per_queue.len(), 1, "{samples}");
    let service = per_queue[0][0]["service"].as_str().unwrap().to_string();
    assert_eq!(per_queue[0][1], 1.0);
    assert_eq!(
        sample(&samples, "total_messages_fail", &[("service", &service)]),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &samples,
            "total_messages_transfail",
            &[("service", &service)]
        ),
        Some(1.0)
    );
    assert!(sample(&samples, "ready_count", &[("service", &service)]).is_some());
}
