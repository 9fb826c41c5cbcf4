//! The admin API's queue rules on a real server, driven with `curl`:
//! `/api/admin/bounce/v1` (sweep of held messages, new arrivals while the
//! rule lasts, the listing and its counts, cancel) and
//! `/api/admin/suspend/v1` (nothing promoted while it lasts, delivery once
//! cancelled), with the log records and the spool checked.

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use tern_bench::sink::SinkConfig;

/// Spools, logs, SMTP and HTTP listeners; the tenant is the part of the
/// recipient's local part before `-`, and `hold` recipients wait an hour.
fn head() -> String {
    let mut policy = policy_head("LocalDisk");
    policy = policy.replace(
        "  kumo.start_esmtp_listener",
        "  kumo.start_http_listener { listen = '127.0.0.1:0' }\n  kumo.start_esmtp_listener",
    );
    policy.push_str(
        r#"
kumo.on('smtp_server_message_received', function(msg)
  local user = msg:recipient().user
  local tenant = user:match('^(%w+)%-')
  if tenant then msg:set_meta('tenant', tenant) end
  if user:find('hold') then
    msg:set_due(os.date('!%Y-%m-%dT%H:%M:%SZ', os.time() + 3600))
  end
end)
"#,
    );
    policy
}

/// Send one message to `to`; returns its spool id.
fn send(server: &tern_testkit::TernServer, to: &str) -> String {
    let mut smtp = server.smtp().unwrap();
    smtp.read_reply().unwrap();
    smtp.command("EHLO client.test").unwrap();
    let (code, text) = smtp.send_message("s@sender.test", to, &body(to)).unwrap();
    assert_eq!(code, 250, "{to}: {text}");
    smtp.command("QUIT").unwrap();
    let ids = ids_from(&text);
    assert_eq!(ids.len(), 1, "{to}: {text}");
    ids[0].clone()
}

fn post(http: std::net::SocketAddr, path: &str, json: &str) -> (u16, Value) {
    let (code, body) = curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-d",
        json,
        &format!("http://{http}{path}"),
    ]);
    (
        code,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

fn delete(http: std::net::SocketAddr, path: &str, json: &str) -> (u16, Value) {
    let (code, body) = curl(&["-X", "DELETE", "-d", json, &format!("http://{http}{path}")]);
    (
        code,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

fn get(http: std::net::SocketAddr, path: &str) -> Value {
    let (code, body) = curl(&[&format!("http://{http}{path}")]);
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Spooled message bodies whose subject names `to`.
fn spooled(dir: &Path, to: &str) -> usize {
    files_under(&dir.join("spool/data"))
        .iter()
        .filter(|f| f.contains(&format!("Subject: {to}\r\n")))
        .count()
}

/// Wait (up to 10 s) until no spooled body names `to`.
fn wait_until_unspooled(dir: &Path, to: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while spooled(dir, to) > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_bounce_sweeps_held_messages_catches_new_ones_and_can_be_cancelled() {
    let server = start_tern(head());
    let http = server.listener("http");
    let logs = server.dir().join("logs");
    for to in [
        "t1-hold-a@example.com",
        "t1-hold-b@example.com",
        "t1-hold-c@example.com",
    ] {
        send(&server, to);
    }
    for to in ["t2-hold-a@example.com", "t2-hold-b@example.com"] {
        send(&server, to);
    }
    assert_eq!(spooled(server.dir(), "t1-hold-a@example.com"), 1);

    // Bad requests change nothing: a misspelt criterion would otherwise
    // make a rule that matches every queue.
    let (code, error) = post(
        http,
        "/api/admin/bounce/v1",
        r#"{"tenat": "t1", "reason": "x"}"#,
    );
    assert_eq!(code, 400, "{error}");
    assert!(
        error["error"].as_str().unwrap().contains("tenat"),
        "{error}"
    );
    let (code, error) = post(http, "/api/admin/bounce/v1", r#"{"tenant": "t1"}"#);
    assert_eq!(code, 400, "{error}");
    assert!(
        error["error"].as_str().unwrap().contains("reason"),
        "{error}"
    );
    let (code, error) = post(
        http,
        "/api/admin/bounce/v1",
        r#"{"reason": "x", "duration": "soon"}"#,
    );
    assert_eq!(code, 400, "{error}");
    assert_eq!(get(http, "/api/admin/bounce/v1"), Value::Array(vec![]));

    let (code, created) = post(
        http,
        "/api/admin/bounce/v1",
        r#"{"tenant": "t1", "reason": "bad send", "duration": "10m"}"#,
    );
    assert_eq!(code, 200, "{created}");
    let id = created["id"].as_str().expect("id").to_string();
    assert_eq!(created["total_bounced"], 0);

    // The held messages of tenant t1 are bounced from the wheel (read back
    // from the meta spool for their records) and leave the spool.
    let records = wait_for_records(&logs, Duration::from_secs(20), |r| {
        count(r, "AdminBounce") >= 3
    });
    let bounced = of_type(&records, "AdminBounce");
    assert_eq!(bounced.len(), 3, "{bounced:?}");
    for record in &bounced {
        assert_eq!(record["queue"], "t1@example.com");
        assert_eq!(record["response"]["code"], 551);
        assert_eq!(
            record["response"]["content"],
            "Administrator bounced with reason: bad send"
        );
        assert!(
            record["recipient"]
                .as_str()
                .unwrap()
                .starts_with("t1-hold-")
        );
    }
    wait_until_unspooled(server.dir(), "t1-hold-a@example.com");
    assert_eq!(spooled(server.dir(), "t1-hold-a@example.com"), 0);
    assert_eq!(
        spooled(server.dir(), "t2-hold-a@example.com"),
        1,
        "t2 is untouched"
    );

    // A t1 message arriving while the rule lasts goes too, although it
    // would wait an hour; t2 still arrives normally.
    send(&server, "t1-hold-late@example.com");
    send(&server, "t2-hold-late@example.com");
    let records = wait_for_records(&logs, Duration::from_secs(20), |r| {
        count(r, "AdminBounce") >= 4
    });
    let late: Vec<_> = of_type(&records, "AdminBounce")
        .into_iter()
        .filter(|r| r["recipient"] == "t1-hold-late@example.com")
        .collect();
    assert_eq!(late.len(), 1);
    assert!(
        of_type(&records, "AdminBounce")
            .iter()
            .all(|r| r["queue"] == "t1@example.com")
    );

    let list = get(http, "/api/admin/bounce/v1");
    let rules = list.as_array().unwrap();
    assert_eq!(rules.len(), 1, "{list}");
    assert_eq!(rules[0]["id"], id.as_str());
    assert_eq!(rules[0]["tenant"], "t1");
    assert_eq!(rules[0]["reason"], "bad send");
    assert_eq!(rules[0]["bounced"]["t1@example.com"], 4, "{list}");
    assert_eq!(rules[0]["total_bounced"], 4);
    assert!(
        rules[0]["duration"].as_str().unwrap().starts_with('9'),
        "{list}"
    );

    let cancel = format!(r#"{{"id": "{id}"}}"#);
    let (code, body) = delete(http, "/api/admin/bounce/v1", &cancel);
    assert_eq!(code, 200, "{body}");
    let (code, body) = delete(http, "/api/admin/bounce/v1", &cancel);
    assert_eq!(code, 404, "{body}");
    assert_eq!(get(http, "/api/admin/bounce/v1"), Value::Array(vec![]));

    // After the cancel, t1 messages are kept again.
    send(&server, "t1-hold-after@example.com");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(spooled(server.dir(), "t1-hold-after@example.com"), 1);
    let all = common::records(&logs);
    assert_eq!(count(&all, "AdminBounce"), 4, "nothing else was bounced");
}

#[test]
fn a_suspended_queue_promotes_nothing_until_the_suspension_is_cancelled() {
    let sink = TestSink::start(SinkConfig::default());
    let mut policy = head();
    policy.push_str(&routed(sink.port(), "2s"));
    let server = start_tern(policy);
    let http = server.listener("http");
    let logs = server.dir().join("logs");

    let (code, error) = post(
        http,
        "/api/admin/suspend/v1",
        r#"{"domain": "example.com", "reason": "x", "suppress_logging": true}"#,
    );
    assert_eq!(code, 400, "{error}");
    let (code, error) = post(
        http,
        "/api/admin/suspend/v1",
        r#"{"reason": "x", "expires": "2001-01-01T00:00:00Z"}"#,
    );
    assert_eq!(code, 400, "an expiry in the past: {error}");
    assert_eq!(get(http, "/api/admin/suspend/v1"), Value::Array(vec![]));
    let (code, created) = post(
        http,
        "/api/admin/suspend/v1",
        r#"{"domain": "example.com", "reason": "maintenance"}"#,
    );
    assert_eq!(code, 200, "{created}");
    let id = created["id"].as_str().expect("id").to_string();
    let list = get(http, "/api/admin/suspend/v1");
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["domain"], "example.com");
    assert_eq!(list[0]["reason"], "maintenance");

    send(&server, "someone@example.com");
    let records = wait_for_records(&logs, Duration::from_secs(20), |r| {
        count(r, "TransientFailure") >= 1
    });
    let held = of_type(&records, "TransientFailure")[0];
    assert_eq!(held["response"]["code"], 451);
    assert_eq!(
        held["response"]["content"],
        "KumoMTA internal: scheduled queue is suspended: maintenance"
    );
    assert_eq!(sink.stats().messages, 0, "nothing reached the peer");
    assert_eq!(count(&records, "Delivery"), 0);

    let (code, body) = delete(
        http,
        "/api/admin/suspend/v1",
        &format!(r#"{{"id": "{id}"}}"#),
    );
    assert_eq!(code, 200, "{body}");
    let records = wait_for_records(&logs, Duration::from_secs(30), |r| {
        count(r, "Delivery") >= 1
    });
    assert_eq!(
        of_type(&records, "Delivery")[0]["recipient"],
        "someone@example.com"
    );
    assert_eq!(sink.stats().messages, 1);
}

#[test]
fn a_rebind_moves_held_messages_to_their_new_queue_due_now() {
    let sink = TestSink::start(SinkConfig::default());
    let mut policy = head();
    policy.push_str(&routed(sink.port(), "1h"));
    policy.push_str(
        r#"
kumo.on('rebind_message', function(msg, data)
  msg:set_meta('tenant', data.to_tenant)
end)
"#,
    );
    let server = start_tern(policy);
    let http = server.listener("http");
    let logs = server.dir().join("logs");
    for to in [
        "t1-hold-a@example.com",
        "t1-hold-b@example.com",
        "t2-hold-a@example.com",
    ] {
        send(&server, to);
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sink.stats().messages, 0, "all held for an hour");

    let (code, error) = post(
        http,
        "/api/admin/rebind/v1",
        r#"{"tenant": "t1", "reason": "x"}"#,
    );
    assert_eq!(code, 400, "data is required: {error}");

    // Meta written directly: tenant t1's queue changes, so its messages
    // are due at once and reach the peer; t2's stay held.
    let (code, body) = post(
        http,
        "/api/admin/rebind/v1",
        r#"{"tenant": "t1", "reason": "move", "data": {"tenant": "t9"}}"#,
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body, serde_json::json!({}));
    let records = wait_for_records(&logs, Duration::from_secs(20), |r| {
        count(r, "Delivery") >= 2
    });
    let rebound = of_type(&records, "AdminRebind");
    assert_eq!(rebound.len(), 2, "{rebound:?}");
    for record in &rebound {
        assert_eq!(record["queue"], "t9@example.com");
        let content = record["response"]["content"].as_str().unwrap();
        assert!(
            content.contains("t1@example.com")
                && content.contains("t9@example.com")
                && content.contains("move"),
            "{content}"
        );
    }
    for record in of_type(&records, "Delivery") {
        assert_eq!(record["queue"], "t9@example.com");
        assert!(
            record["recipient"]
                .as_str()
                .unwrap()
                .starts_with("t1-hold-")
        );
    }
    assert_eq!(sink.stats().messages, 2);

    // Through the policy's rebind_message event.
    let (code, body) = post(
        http,
        "/api/admin/rebind/v1",
        r#"{"tenant": "t2", "reason": "by policy", "data": {"to_tenant": "t8"}, "trigger_rebind_event": true}"#,
    );
    assert_eq!(code, 200, "{body}");
    let records = wait_for_records(&logs, Duration::from_secs(20), |r| {
        count(r, "Delivery") >= 3
    });
    let last = of_type(&records, "Delivery")
        .into_iter()
        .find(|r| r["recipient"] == "t2-hold-a@example.com")
        .expect("t2 delivered");
    assert_eq!(last["queue"], "t8@example.com");
    assert_eq!(count(&records, "AdminRebind"), 3);

    // No data, always_flush: the queue stays, the message is due now.
    send(&server, "t6-hold@example.com");
    let (code, body) = post(
        http,
        "/api/admin/rebind/v1",
        r#"{"tenant": "t6", "reason": "flush", "data": {}, "always_flush": true}"#,
    );
    assert_eq!(code, 200, "{body}");
    let records = wait_for_records(&logs, Duration::from_secs(20), |r| {
        count(r, "Delivery") >= 4
    });
    assert_eq!(count(&records, "AdminRebind"), 3, "not moved: no record");

    // Rebound into the `null` queue: discarded, as at reception.
    send(&server, "t7-hold@example.com");
    assert_eq!(spooled(server.dir(), "t7-hold@example.com"), 1);
    let (code, body) = post(
        http,
        "/api/admin/rebind/v1",
        r#"{"tenant": "t7", "reason": "drop", "data": {"queue": "null"}}"#,
    );
    assert_eq!(code, 200, "{body}");
    wait_until_unspooled(server.dir(), "t7-hold@example.com");
    assert_eq!(spooled(server.dir(), "t7-hold@example.com"), 0);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        sink.stats().messages,
        4,
        "the null-queue message was not sent"
    );
}

#[test]
fn inspect_message_reads_a_held_message_back_from_the_spool() {
    let server = start_tern(head());
    let http = server.listener("http");
    let id = send(&server, "t4-hold@example.com");

    let info = get(http, &format!("/api/admin/inspect-message/v1?id={id}"));
    assert_eq!(info["id"], id.as_str());
    let message = &info["message"];
    assert_eq!(message["sender"], "s@sender.test");
    assert_eq!(message["recipient"], "t4-hold@example.com");
    assert_eq!(message["meta"]["tenant"], "t4");
    assert!(
        message.get("data").is_none(),
        "no body unless asked: {info}"
    );

    let info = get(
        http,
        &format!("/api/admin/inspect-message/v1?id={id}&want_body=true"),
    );
    let data = info["message"]["data"].as_str().unwrap();
    assert!(data.contains("Subject: t4-hold@example.com"), "{data}");

    let missing = "0123456789abcdef0123456789abcdef";
    let (code, body) = curl(&[&format!(
        "http://{http}/api/admin/inspect-message/v1?id={missing}"
    )]);
    assert_eq!(code, 404, "{body}");
    let (code, body) = curl(&[&format!(
        "http://{http}/api/admin/inspect-message/v1?id=nope"
    )]);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("nope"), "{body}");
}

/// A bounce made while messages wait in a ready queue (one connection,
/// held up by a slow peer) catches them before they are sent.
#[test]
fn a_bounce_reaches_messages_already_in_a_ready_queue() {
    let sink = TestSink::start(SinkConfig {
        data_delay: Duration::from_secs(2),
        ..SinkConfig::default()
    });
    let mut policy = head();
    policy.push_str(&routed_with(sink.port(), "", "connection_limit = 1,"));
    let server = start_tern(policy);
    let http = server.listener("http");
    let logs = server.dir().join("logs");
    for to in ["t5-a@example.com", "t5-b@example.com", "t5-c@example.com"] {
        send(&server, to);
    }
    // The first is being sent (its final dot is answered after 2 s); the
    // other two wait in the ready queue for the one connection. Wait for
    // that connection rather than a fixed time, so a slow machine does not
    // make the bounce come before promotion.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sink.stats().connections == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let (code, body) = post(
        http,
        "/api/admin/bounce/v1",
        r#"{"tenant": "t5", "reason": "late"}"#,
    );
    assert_eq!(code, 200, "{body}");
    let records = wait_for_records(&logs, Duration::from_secs(20), |r| {
        count(r, "AdminBounce") + count(r, "Delivery") >= 3
    });
    assert_eq!(
        count(&records, "Delivery"),
        1,
        "the one already on the wire"
    );
    assert_eq!(count(&records, "AdminBounce"), 2);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sink.stats().messages, 1);
}

/// `suspend-ready-q`: the only source's ready queue is skipped by source
/// selection, so a message gets a TransientFailure and waits; once the
/// suspension is cancelled it is delivered at its retry.
#[test]
fn a_suspended_ready_queue_sends_nothing_until_cancelled() {
    let sink = TestSink::start(SinkConfig::default());
    let mut policy = head();
    policy.push_str(&routed(sink.port(), "2s"));
    let server = start_tern(policy);
    let http = server.listener("http");
    let logs = server.dir().join("logs");
    let name = format!(
        "unspecified->mx_list:[127.0.0.1]:{}@smtp_client",
        sink.port()
    );

    let (code, error) = post(http, "/api/admin/suspend-ready-q/v1", r#"{"reason": "x"}"#);
    assert_eq!(code, 400, "name is required: {error}");
    let body = format!(r#"{{"name": "{name}", "reason": "ip warmup pause"}}"#);
    let (code, created) = post(http, "/api/admin/suspend-ready-q/v1", &body);
    assert_eq!(code, 200, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let list = get(http, "/api/admin/suspend-ready-q/v1");
    assert_eq!(list[0]["name"], name.as_str(), "{list}");
    assert_eq!(list[0]["reason"], "ip warmup pause");

    send(&server, "someone@example.com");
    let records = wait_for_records(&logs, Duration::from_secs(20), |r| {
        count(r, "TransientFailure") >= 1
    });
    let held = of_type(&records, "TransientFailure")[0];
    assert!(
        held["response"]["content"]
            .as_str()
            .unwrap()
            .contains("eligible for selection"),
        "{held}"
    );
    assert_eq!(sink.stats().messages, 0);
    assert_eq!(
        sink.stats().connections,
        0,
        "no connection from a suspended source"
    );

    let (code, body) = delete(
        http,
        "/api/admin/suspend-ready-q/v1",
        &format!(r#"{{"id": "{id}"}}"#),
    );
    assert_eq!(code, 200, "{body}");
    wait_for_records(&logs, Duration::from_secs(30), |r| {
        count(r, "Delivery") >= 1
    });
    assert_eq!(sink.stats().messages, 1);
}

#[test]
fn inspect_sched_q_lists_held_messages_with_their_due_times() {
    let server = start_tern(head());
    let http = server.listener("http");
    let a = send(&server, "t8-hold-a@example.com");
    let b = send(&server, "t8-hold-b@example.com");

    let info = get(
        http,
        "/api/admin/inspect-sched-q/v1?queue_name=t8@example.com",
    );
    assert_eq!(info["queue_name"], "t8@example.com");
    assert_eq!(info["num_scheduled"], 2, "{info}");
    let messages = info["messages"].as_array().unwrap();
    let mut ids: Vec<&str> = messages.iter().map(|m| m["id"].as_str().unwrap()).collect();
    ids.sort();
    let mut want = vec![a.as_str(), b.as_str()];
    want.sort();
    assert_eq!(ids, want);
    let now = chrono::Utc::now();
    for entry in messages {
        let message = &entry["message"];
        assert_eq!(message["meta"]["tenant"], "t8");
        assert_eq!(message["num_attempts"], 0);
        let due = chrono::DateTime::parse_from_rfc3339(message["due"].as_str().unwrap()).unwrap();
        let ahead = due.signed_duration_since(now).num_seconds();
        assert!((3000..=3700).contains(&ahead), "held an hour: {ahead}s");
        assert!(message.get("data").is_none());
    }

    let info = get(
        http,
        "/api/admin/inspect-sched-q/v1?queue_name=t8@example.com&limit=1&want_body=true",
    );
    let messages = info["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1);
    assert!(
        messages[0]["message"]["data"]
            .as_str()
            .unwrap()
            .contains("Subject: t8-hold-")
    );
    assert_eq!(info["num_scheduled"], 2, "the count is of the whole queue");

    let (code, body) = curl(&[&format!(
        "http://{http}/api/admin/inspect-sched-q/v1?queue_name=nope.example"
    )]);
    assert_eq!(code, 404, "{body}");
}
