//! `POST /api/inject/v1` item by item (spec §4.3–4.5), against the real
//! server over HTTP: trace headers around `http_message_generated`, the
//! `null` queue, errors raised by the policy, `deferred_spool`,
//! `deferred_generation` carried through to the generated messages, and
//! builder details (part order, escaping, header precedence, addresses).

mod common;

use common::{files_under, records};
use serde_json::{Value, json};
use std::process::Command;
use std::time::{Duration, Instant};
use tern_testkit::{Builder, TernServer, http_request};

fn policy(hooks: &str) -> String {
    format!(
        r#"local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool {{ name = 'data', path = '{{dir}}/spool/data', kind = 'LocalDisk',
    min_free_space = '1%' }}
  kumo.define_spool {{ name = 'meta', path = '{{dir}}/spool/meta', kind = 'LocalDisk',
    min_free_space = '1%' }}
  kumo.configure_local_logs {{ log_dir = '{{dir}}/logs', meta = {{ 'http_auth', 'tenant' }} }}
  kumo.start_http_listener {{ listen = '127.0.0.1:0', hostname = 'inject.test' }}
end)
{hooks}
"#
    )
}

/// Writes each generated message as the policy sees it to
/// `{dir}/out/<recipient>.eml` (and what it was given to `.json`); keeps
/// every message away from delivery for an hour. `drop@` goes to the
/// `null` queue, `boom@` raises a plain Lua error, `rejectme@` is
/// refused with `kumo.reject`.
const HOOK: &str = r#"
kumo.on('http_message_generated', function(msg, auth_info)
  local rcpt = tostring(msg:recipient())
  local user = msg:recipient().user
  if user == 'boom' then error('kaboom from policy') end
  if user == 'rejectme' then kumo.reject(550, '5.7.1 not this one') end
  local f = io.open('{dir}/out/' .. rcpt .. '.eml', 'wb')
  f:write(msg:get_data())
  f:close()
  local j = io.open('{dir}/out/' .. rcpt .. '.json', 'wb')
  j:write(kumo.serde.json_encode {
    http_auth = msg:get_meta('http_auth'),
    reception_protocol = msg:get_meta('reception_protocol'),
    received_from = msg:get_meta('received_from'),
    peer = auth_info.peer_address,
    groups = auth_info.groups,
  })
  j:close()
  msg:set_meta('tenant', 'acme')
  if user == 'drop' then msg:set_meta('queue', 'null') end
  msg:set_due(os.date('!%Y-%m-%dT%H:%M:%SZ', os.time() + 3600))
end)
"#;

fn start(hooks: &str) -> TernServer {
    let server = Builder::new(policy(hooks))
        .binary(env!("CARGO_BIN_EXE_tern"))
        .file("out/.keep", "")
        .start()
        .unwrap();
    for _ in 0..200 {
        if let Ok((200, _)) = server.http("GET", "/api/check-liveness/v1", None) {
            return server;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("never live; output:\n{}", server.output());
}

fn inject(server: &TernServer, body: &Value) -> (u16, Value) {
    let (status, text) = http_request(
        server.listener("http"),
        "POST",
        "/api/inject/v1",
        &[("Content-Type", "application/json")],
        Some(&body.to_string()),
    )
    .unwrap();
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, value)
}

/// The host name `gethostname` reports.
fn machine_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

fn receptions(records: &[Value]) -> Vec<&Value> {
    records
        .iter()
        .filter(|r| r["type"] == "Reception")
        .collect()
}

/// Decode a (folded) base64 supplemental header value from the top of a
/// message.
fn supplemental_payload(message: &str, name: &str) -> Value {
    let mut lines = message.split("\r\n");
    let first = lines.next().unwrap();
    let mut value = first
        .strip_prefix(&format!("{name}: "))
        .unwrap_or_else(|| panic!("{name} is not the first header: {message}"))
        .to_string();
    for line in lines.take_while(|l| l.starts_with([' ', '\t'])) {
        value.push_str(line.trim());
    }
    let out = Command::new("python3")
        .arg("-c")
        .arg("import sys,base64;print(base64.b64decode(sys.argv[1]).decode())")
        .arg(value.trim())
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

/// §4.3/§4.4: `Received` is in the message the policy sees; the
/// supplemental header (custom name, meta set by the policy) is added
/// after the event; the `null` queue counts as success without spool or
/// `Reception`; a Lua error and `kumo.reject` fail only their recipient.
#[test]
fn trace_headers_null_queue_and_policy_failures() {
    let server = start(HOOK);
    let request = json!({
        "envelope_sender": "bounces@sender.example",
        "content": "Subject: hi {{ name }}\n\nbody\n",
        "trace_headers": {"received_header": true, "header_name": "X-Ref",
                          "include_meta_names": ["tenant"]},
        "recipients": [
            {"email": "keep@example.com"},
            {"email": "drop@example.com"},
            {"email": "boom@example.com"},
            {"email": "rejectme@example.com"}
        ]
    });
    let (status, response) = inject(&server, &request);
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["success_count"], 2, "{response}");
    assert_eq!(response["fail_count"], 2, "{response}");
    assert_eq!(
        response["failed_recipients"],
        json!(["boom@example.com", "rejectme@example.com"])
    );
    let errors = response["errors"].as_array().unwrap();
    let boom = errors[0].as_str().unwrap();
    assert!(boom.starts_with("boom@example.com: "), "{boom}");
    assert!(boom.contains("kaboom from policy"), "{boom}");
    assert_eq!(errors[1], "rejectme@example.com: 550 5.7.1 not this one");

    // What the policy saw: Received first (naming the machine, not the
    // listener's `hostname`), no supplemental header yet.
    let seen = std::fs::read_to_string(server.dir().join("out/keep@example.com.eml")).unwrap();
    let received = format!(
        "Received: from sender.example (127.0.0.1)\r\n  by {} (KumoMTA)\r\n  with HTTP id ",
        machine_hostname()
    );
    assert!(seen.starts_with(&received), "{seen}");
    assert!(
        !seen.contains("X-Ref:") && !seen.contains("X-KumoRef:"),
        "{seen}"
    );

    // What was spooled: only keep@, the supplemental header on top with
    // the meta the policy set.
    let messages = files_under(&server.dir().join("spool/data/data"));
    assert_eq!(messages.len(), 1, "{messages:?}");
    let message = &messages[0];
    assert!(!message.contains("X-KumoRef"), "{message}");
    assert_eq!(
        supplemental_payload(message, "X-Ref"),
        json!({"_@_": "\\_/", "recipient": "keep@example.com", "tenant": "acme"})
    );
    assert!(
        message.contains("\r\nReceived: from sender.example"),
        "{message}"
    );

    let dir = server.stop();
    let records = records(&dir.path().join("logs"));
    let receptions = receptions(&records);
    assert_eq!(receptions.len(), 1, "{records:#?}");
    assert_eq!(receptions[0]["recipient"], "keep@example.com");
}

/// `trace_headers.supplemental_header = false` adds nothing, with and
/// without a policy handler; without `trace_headers` no `Received` is
/// added. `deferred_spool` queues and logs without writing the spool.
#[test]
fn no_supplemental_header_and_deferred_spool() {
    for hooks in ["", HOOK] {
        let server = start(hooks);
        let request = json!({
            "envelope_sender": "bounces@example.com",
            "content": "Subject: hi\n\nbody\n",
            "trace_headers": {"supplemental_header": false},
            "recipients": [{"email": "a@example.com"}]
        });
        let (status, response) = inject(&server, &request);
        assert_eq!(status, 200);
        assert_eq!(response["success_count"], 1, "{response}");
        let messages = files_under(&server.dir().join("spool/data/data"));
        assert_eq!(messages.len(), 1);
        assert!(
            messages[0].starts_with("Subject: hi\r\n"),
            "{hooks:?}: {}",
            messages[0]
        );
        server.stop();
    }

    let server = start(HOOK);
    let request = json!({
        "envelope_sender": "bounces@example.com",
        "content": "Subject: hi\n\nbody\n",
        "deferred_spool": true,
        "recipients": [{"email": "a@example.com"}, {"email": "b@example.com"}]
    });
    let (status, response) = inject(&server, &request);
    assert_eq!(status, 200);
    assert_eq!(response["success_count"], 2, "{response}");
    assert!(files_under(&server.dir().join("spool/data/data")).is_empty());
    let dir = server.stop();
    assert_eq!(receptions(&records(&dir.path().join("logs"))).len(), 2);
}

/// §4.5 end to end: the stored request is expanded by the internal queue
/// into one message per recipient, which go through
/// `http_message_generated` with the original request's `auth_info` and
/// meta, are spooled and logged; the request itself leaves the spool.
#[test]
fn deferred_generation_expands_later_through_the_policy() {
    let server = start(HOOK);
    let request = json!({
        "envelope_sender": "bounces@example.com",
        "deferred_generation": true,
        "content": "Subject: later {{ name }}\n\nbody {{ code }}\n",
        "substitutions": {"code": "G"},
        "recipients": [{"email": "a@example.com", "name": "Ann"},
                       {"email": "rejectme@example.com"},
                       {"email": "b@example.com", "substitutions": {"code": "B"}}]
    });
    let (status, response) = inject(&server, &request);
    assert_eq!(status, 200);
    assert_eq!(
        response,
        json!({"success_count": 0, "fail_count": 0, "failed_recipients": [], "errors": []})
    );
    let out = server.dir().join("out");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(out.join("a@example.com.eml").exists() && out.join("b@example.com.eml").exists()) {
        assert!(
            Instant::now() < deadline,
            "never generated; output:\n{}",
            server.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let a = std::fs::read_to_string(out.join("a@example.com.eml")).unwrap();
    assert!(a.starts_with("Subject: later Ann\r\n"), "{a}");
    assert!(a.contains("\r\n\r\nbody G\r\n"), "{a}");
    let b = std::fs::read_to_string(out.join("b@example.com.eml")).unwrap();
    assert!(b.contains("\r\n\r\nbody B\r\n"), "{b}");
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("a@example.com.json")).unwrap())
            .unwrap();
    assert_eq!(meta["http_auth"], "127.0.0.1");
    assert_eq!(meta["reception_protocol"], "HTTP");
    assert_eq!(meta["received_from"], "127.0.0.1");
    assert_eq!(meta["peer"], "127.0.0.1");
    assert_eq!(meta["groups"], json!(["kumomta:http-listener-trusted-ip"]));

    // The two generated messages replace the request in the spool.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let messages = files_under(&server.dir().join("spool/data/data"));
        if messages.len() == 2 && messages.iter().all(|m| m.starts_with("X-KumoRef: ")) {
            break;
        }
        assert!(Instant::now() < deadline, "spool holds {messages:#?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let dir = server.stop();
    let records = records(&dir.path().join("logs"));
    let mut recipients: Vec<&str> = receptions(&records)
        .iter()
        .map(|r| r["recipient"].as_str().unwrap())
        .collect();
    recipients.sort();
    assert_eq!(
        recipients,
        ["", "a@example.com", "b@example.com"],
        "{records:#?}"
    );
}

/// Builder details over HTTP: `text`, `amp`, `html` order; attachments
/// are not templated; only the HTML
/// parts escape; `subject` replaces `headers.Subject`; a `To` in
/// `headers` replaces the generated one; a `Message-ID` in `headers` is
/// kept (Tern adds one only when missing); an address that does not parse
/// fails its recipient.
#[test]
fn builder_parts_escaping_and_headers() {
    let server = start("");
    let request = json!({
        "envelope_sender": "bounces@example.com",
        "content": {
            "text_body": "T {{ name }}\n",
            "amp_html_body": "<p>A {{ name }}</p>\n",
            "html_body": "<p>H {{ name }}</p>\n",
            "subject": "S {{ name }}",
            "headers": {"Subject": "ignored", "To": "list@example.com",
                        "Message-ID": "<fixed@example.com>"},
            "attachments": [{"data": "raw {{ name }}", "content_type": "text/plain",
                             "file_name": "a.txt"}]
        },
        "recipients": [{"email": "a@example.com", "name": "A&B <c>"}]
    });
    let (status, response) = inject(&server, &request);
    assert_eq!(status, 200);
    assert_eq!(response["success_count"], 1, "{response}");
    let messages = files_under(&server.dir().join("spool/data/data"));
    let m = &messages[0];
    assert!(m.contains("\r\nSubject: S A&B <c>\r\n"), "{m}");
    assert!(!m.contains("ignored"), "{m}");
    assert!(m.contains("\r\nTo: list@example.com\r\n"), "{m}");
    assert_eq!(m.matches("\r\nTo:").count(), 1, "{m}");
    assert!(m.contains("\r\nMessage-ID: <fixed@example.com>\r\n"), "{m}");
    assert_eq!(m.matches("Message-ID:").count(), 1, "{m}");
    let text = m.find("Content-Type: text/plain").unwrap();
    let amp = m.find("Content-Type: text/x-amp-html").unwrap();
    let html = m.find("Content-Type: text/html").unwrap();
    assert!(text < amp && amp < html, "{m}");
    assert!(m.contains("T A&B <c>\r\n"), "{m}");
    // Attachments are not templates.
    assert!(m.contains("\r\n\r\nraw {{ name }}\r\n"), "{m}");
    assert!(m.contains("<p>A A&amp;B &lt;c&gt;</p>"), "{m}");
    assert!(m.contains("<p>H A&amp;B &lt;c&gt;</p>"), "{m}");
    server.stop();

    let server = start("");
    for (field, value) in [
        ("from", json!({"email": "not an address", "name": "X"})),
        ("reply_to", json!({"email": "{{ bad }}"})),
    ] {
        let request = json!({
            "envelope_sender": "bounces@example.com",
            "content": {"text_body": "x", field: value},
            "substitutions": {"bad": "a@b>\r\nBcc: victim@example.com"},
            "recipients": [{"email": "a@example.com"}, {"email": "b@example.com"}]
        });
        let (status, response) = inject(&server, &request);
        assert_eq!(status, 200, "{response}");
        assert_eq!(response["success_count"], 0, "{field}: {response}");
        assert_eq!(response["fail_count"], 2, "{field}: {response}");
        let error = response["errors"][0].as_str().unwrap();
        assert!(error.starts_with("a@example.com: "), "{error}");
        assert!(error.contains(field), "{error}");
    }
    assert!(files_under(&server.dir().join("spool/data/data")).is_empty());
    server.stop();
}

/// A recipient that is not a deliverable address (the null address, or
/// one whose queue name cannot be formed) fails alone; the other
/// recipients of the request are still queued.
#[test]
fn an_unusable_recipient_fails_alone() {
    let server = start("");
    let request = json!({
        "envelope_sender": "bounces@example.com",
        "content": "Subject: hi\n\nbody\n",
        "recipients": [{"email": ""}, {"email": "<>"}, {"email": "ok@example.com"}]
    });
    let (status, response) = inject(&server, &request);
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["success_count"], 1, "{response}");
    assert_eq!(
        response["failed_recipients"],
        json!(["", "<>"]),
        "{response}"
    );
    assert_eq!(files_under(&server.dir().join("spool/data/data")).len(), 1);
    server.stop();
}

/// `template_dialect` reaches the engine: Handlebars renders its own
/// syntax with the recipient's variables; Static leaves text as given.
#[test]
fn template_dialects_over_http() {
    let server = start("");
    for (dialect, content, expected) in [
        (
            "Handlebars",
            "Subject: {{name}} {{#if vip}}VIP{{/if}}\n\n{{#each items}}[{{this}}]{{/each}} {{email}}\n",
            "Subject: Ann VIP\r\n",
        ),
        (
            "Static",
            "Subject: {{ name }}\n\nx\n",
            "Subject: {{ name }}\r\n",
        ),
        (
            "Jinja",
            "Subject: {{ name }}{% if vip %} JVIP{% endif %}\n\nx\n",
            "Subject: Ann JVIP\r\n",
        ),
    ] {
        let request = json!({
            "envelope_sender": "bounces@example.com",
            "template_dialect": dialect,
            "content": content,
            "trace_headers": {"supplemental_header": false},
            "substitutions": {"items": [1, 2]},
            "recipients": [{"email": "ann@example.com", "name": "Ann",
                            "substitutions": {"vip": true}}]
        });
        let (status, response) = inject(&server, &request);
        assert_eq!(status, 200, "{dialect}: {response}");
        assert_eq!(response["success_count"], 1, "{dialect}: {response}");
        let messages = files_under(&server.dir().join("spool/data/data"));
        assert!(
            messages.iter().any(|m| m.starts_with(expected)),
            "{dialect}: {messages:#?}"
        );
        if dialect == "Handlebars" {
            assert!(
                messages
                    .iter()
                    .any(|m| m.contains("\r\n\r\n[1][2] ann@example.com\r\n")),
                "{messages:#?}"
            );
        }
    }
    server.stop();
}
