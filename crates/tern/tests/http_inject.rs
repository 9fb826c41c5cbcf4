//! `POST /api/inject/v1` against the real server: generated messages are
//! read back (from a policy hook or the LocalDisk data spool) and parsed
//! with Python's `email` package; authentication, size limits, compressed
//! bodies, TLS and every kind of bad input are exercised over HTTP with
//! the testkit client and `curl`.

mod common;

use common::curl;
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tern_testkit::{Builder, TernServer, http_request};

/// Trusted listener first, then one that trusts nobody on loopback.
fn policy(extra_init: &str, hooks: &str) -> String {
    format!(
        r#"local kumo = require 'kumo'
kumo.on('init', function()
  -- A low free-space floor: these tests run on shared, busy disks.
  kumo.define_spool {{ name = 'data', path = '{{dir}}/spool/data', kind = 'LocalDisk',
    min_free_space = '1%' }}
  kumo.define_spool {{ name = 'meta', path = '{{dir}}/spool/meta', kind = 'LocalDisk',
    min_free_space = '1%' }}
  kumo.configure_local_logs {{ log_dir = '{{dir}}/logs',
    meta = {{ 'http_auth', 'reception_protocol', 'received_from', 'extra', 'hostname' }} }}
  kumo.start_http_listener {{ listen = '127.0.0.1:0', hostname = 'inject.test',
    request_body_limit = 1048576 }}
  kumo.start_http_listener {{ listen = '127.0.0.1:0', trusted_hosts = {{ '10.9.9.9' }} }}
{extra_init}
end)
kumo.on('http_server_validate_auth_basic', function(user, password)
  return user == 'alice' and password == 'secret'
end)
{hooks}
"#
    )
}

/// Writes every generated message to `{dir}/out/<recipient>.eml` and its
/// meta to `.json`; recipients named `rejectme` are refused.
const CAPTURE_HOOK: &str = r#"
kumo.on('http_message_generated', function(msg, auth_info)
  local rcpt = tostring(msg:recipient())
  if msg:recipient().user == 'rejectme' then
    kumo.reject(550, '5.7.1 not this one')
  end
  local f = io.open('{dir}/out/' .. rcpt .. '.eml', 'wb')
  f:write(msg:get_data())
  f:close()
  local meta = {
    http_auth = msg:get_meta('http_auth'),
    reception_protocol = msg:get_meta('reception_protocol'),
    received_from = msg:get_meta('received_from'),
    received_via = msg:get_meta('received_via'),
    hostname = msg:get_meta('hostname'),
    extra = msg:get_meta('extra'),
    peer = auth_info.peer_address,
    groups = auth_info.groups,
  }
  local j = io.open('{dir}/out/' .. rcpt .. '.json', 'wb')
  j:write(kumo.serde.json_encode(meta))
  j:close()
  msg:set_meta('tenant', 'acme')
end)
"#;

fn start(hooks: &str) -> TernServer {
    let server = Builder::new(policy("", hooks))
        .binary(env!("CARGO_BIN_EXE_tern"))
        .file("out/.keep", "")
        .start()
        .unwrap();
    wait_live(&server);
    server
}

/// The liveness check turns 200 once spool enumeration has finished.
fn wait_live(server: &TernServer) {
    for _ in 0..200 {
        if let Ok((200, _)) = server.http("GET", "/api/check-liveness/v1", None) {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("never live; output:\n{}", server.output());
}

fn inject(addr: std::net::SocketAddr, body: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    http_request(addr, "POST", "/api/inject/v1", &all, Some(body)).unwrap()
}

fn json_body(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Parse a message with Python's `email` package (modern policy) and
/// describe it as JSON: decoded headers, the part tree with each part's
/// type, transfer encoding, file name, content id and decoded content.
const PY_PARSE: &str = r#"
import sys, json, email, base64
from email import policy
raw = open(sys.argv[1], 'rb').read()
msg = email.message_from_bytes(raw, policy=policy.default)
def describe(part):
    d = {'type': part.get_content_type(),
         'cte': (part.get('Content-Transfer-Encoding') or '').lower(),
         'filename': part.get_filename(), 'cid': part.get('Content-ID'),
         'disposition': part.get_content_disposition()}
    if part.is_multipart():
        d['parts'] = [describe(p) for p in part.iter_parts()]
    else:
        payload = part.get_payload(decode=True)
        if part.get_content_maintype() == 'text':
            d['text'] = payload.decode(part.get_content_charset() or 'ascii').replace('\r\n', '\n')
        else:
            d['b64'] = base64.b64encode(payload).decode()
    return d
out = describe(msg)
out['headers'] = {k: str(v) for k, v in msg.items()}
out['defects'] = [str(x) for x in msg.defects]
out['crlf_only'] = b'\n' not in raw.replace(b'\r\n', b'')
out['max_line'] = max(len(l) for l in raw.split(b'\r\n'))
print(json.dumps(out))
"#;

fn parse_message(path: &Path) -> Value {
    let out = Command::new("python3")
        .arg("-c")
        .arg(PY_PARSE)
        .arg(path)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every message file of the LocalDisk data spool.
fn spooled_messages(dir: &Path) -> Vec<PathBuf> {
    fn walk(path: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(entries) = std::fs::read_dir(path) {
            for entry in entries.flatten() {
                let p = entry.path();
                if p.is_dir() {
                    walk(&p, out);
                } else {
                    out.push(p);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(&dir.join("spool/data/data"), &mut out);
    out
}

#[test]
fn builder_request_generates_one_well_formed_message_per_recipient() {
    let server = start(CAPTURE_HOOK);
    let request = json!({
        "envelope_sender": "bounces@example.com",
        "substitutions": {"brand": "Acme", "offer": "10%"},
        "content": {
            "subject": "{{ brand }} news for {{ name }} \u{2014} caf\u{e9}",
            "from": {"email": "news@example.com", "name": "{{ brand }} News"},
            "reply_to": {"email": "help@example.com", "name": "Help"},
            "headers": {"X-Campaign": "spring-{{ brand }}"},
            "text_body": "Hello {{ name }}, your code is {{ code }}. Save {{ offer }}! Cr\u{e8}me br\u{fb}l\u{e9}e.\n{{ missing }}end\n",
            "html_body": "<p>Hello <b>{{ name }}</b> <img src=\"cid:logo\"></p>\n",
            "attachments": [
                {"data": "R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7",
                 "base64": true, "content_type": "image/gif", "content_id": "logo",
                 "file_name": "logo.gif"},
                {"data": "name,value\nj\u{f6}rg,1\n", "content_type": "text/csv",
                 "file_name": "r\u{e9}sum\u{e9}.csv"}
            ]
        },
        "recipients": [
            {"email": "alice@example.com", "name": "Alice \u{c5}berg",
             "substitutions": {"code": "A-1"}, "metadata": {"customer": 17}},
            {"email": "bob@example.com", "substitutions": {"code": "B-2", "brand": "Bobco"}}
        ]
    });
    let (status, body) = inject(server.listener("http"), &request.to_string(), &[]);
    assert_eq!(status, 200, "{body}");
    let response = json_body(&body);
    assert_eq!(response["success_count"], 2, "{body}");
    assert_eq!(response["fail_count"], 0);

    let out = server.dir().join("out");
    let alice = parse_message(&out.join("alice@example.com.eml"));
    assert_eq!(alice["defects"], json!([]));
    assert_eq!(alice["crlf_only"], true);
    assert!(alice["max_line"].as_u64().unwrap() <= 78, "{alice}");
    let headers = &alice["headers"];
    assert_eq!(
        headers["Subject"],
        "Acme news for Alice \u{c5}berg \u{2014} caf\u{e9}"
    );
    assert_eq!(headers["From"], "Acme News <news@example.com>");
    assert_eq!(headers["Reply-To"], "Help <help@example.com>");
    assert_eq!(headers["To"], "Alice \u{c5}berg <alice@example.com>");
    assert_eq!(headers["X-Campaign"], "spring-Acme");
    assert_eq!(headers["Mime-Version"], "1.0");
    assert!(headers["Date"].as_str().unwrap().ends_with("+0000"));
    assert!(
        headers["Message-ID"]
            .as_str()
            .unwrap()
            .ends_with("@inject.test>")
    );
    assert!(headers.get("X-KumoRef").is_none(), "added after the event");

    // mixed[ related[ alternative[text, html], gif ], csv ]
    assert_eq!(alice["type"], "multipart/mixed");
    let related = &alice["parts"][0];
    assert_eq!(related["type"], "multipart/related");
    let alternative = &related["parts"][0];
    assert_eq!(alternative["type"], "multipart/alternative");
    let text = &alternative["parts"][0];
    assert_eq!(text["type"], "text/plain");
    assert_eq!(text["cte"], "quoted-printable");
    assert_eq!(
        text["text"],
        "Hello Alice \u{c5}berg, your code is A-1. Save 10%! Cr\u{e8}me br\u{fb}l\u{e9}e.\nend\n"
    );
    let html = &alternative["parts"][1];
    assert_eq!(html["type"], "text/html");
    assert_eq!(html["cte"], "quoted-printable");
    assert!(
        html["text"]
            .as_str()
            .unwrap()
            .contains("<b>Alice \u{c5}berg</b>")
    );
    let gif = &related["parts"][1];
    assert_eq!(gif["type"], "image/gif");
    assert_eq!(gif["cte"], "base64");
    assert_eq!(gif["cid"], "<logo>");
    assert_eq!(gif["disposition"], "inline");
    assert_eq!(
        gif["b64"],
        "R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"
    );
    let csv = &alice["parts"][1];
    assert_eq!(csv["type"], "text/csv");
    assert_eq!(csv["disposition"], "attachment");
    assert_eq!(csv["filename"], "r\u{e9}sum\u{e9}.csv");
    assert_eq!(csv["text"], "name,value\nj\u{f6}rg,1\n");

    // Per-recipient substitutions override the global ones; no name → bare To.
    let bob = parse_message(&out.join("bob@example.com.eml"));
    assert_eq!(bob["headers"]["To"], "bob@example.com");
    assert_eq!(bob["headers"]["X-Campaign"], "spring-Bobco");
    assert!(
        bob["parts"][0]["parts"][0]["parts"][0]["text"]
            .as_str()
            .unwrap()
            .contains("code is B-2")
    );

    // Meta and auth_info seen by the policy.
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("alice@example.com.json")).unwrap())
            .unwrap();
    assert_eq!(meta["reception_protocol"], "HTTP");
    assert_eq!(meta["received_from"], "127.0.0.1");
    assert_eq!(meta["received_via"], "127.0.0.1");
    assert_eq!(meta["hostname"], "inject.test");
    assert_eq!(meta["http_auth"], "127.0.0.1");
    assert_eq!(meta["extra"], json!({"customer": 17}));
    assert_eq!(meta["peer"], "127.0.0.1");
    assert_eq!(meta["groups"], json!(["kumomta:http-listener-trusted-ip"]));
    let bob_meta: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("bob@example.com.json")).unwrap())
            .unwrap();
    assert!(bob_meta.get("extra").is_none(), "no metadata → no extra");

    // The spooled copies carry the supplemental header added after the event.
    let spooled = spooled_messages(server.dir());
    assert_eq!(spooled.len(), 2, "{spooled:?}");
    let data = std::fs::read_to_string(&spooled[0]).unwrap();
    assert!(data.starts_with("X-KumoRef: "), "{data}");

    let dir = server.stop();
    let records = common::records(&dir.path().join("logs"));
    let receptions: Vec<&Value> = records
        .iter()
        .filter(|r| r["type"] == "Reception")
        .collect();
    assert_eq!(receptions.len(), 2, "{records:?}");
    let alice_record = receptions
        .iter()
        .find(|r| r["recipient"] == "alice@example.com")
        .unwrap();
    assert_eq!(alice_record["reception_protocol"], "HTTP");
    assert_eq!(alice_record["sender"], "bounces@example.com");
    assert_eq!(alice_record["meta"]["extra"], json!({"customer": 17}));
    assert_eq!(alice_record["queue"], "acme@example.com");
    assert_eq!(alice_record["peer_address"]["addr"], "127.0.0.1");
}

#[test]
fn string_content_is_expanded_and_re_encoded_without_a_policy_hook() {
    let server = start("");
    let request = json!({
        "envelope_sender": "bounces@example.com",
        "content": "From: Sender <s@example.com>\nSubject: Gr\u{fc}\u{df}e {{ name }}\n\nHallo {{ name }}, sch\u{f6}ne Gr\u{fc}\u{df}e!\nA {{ missing }}line of {{ n * 2 }}\n",
        "substitutions": {"n": 21},
        "trace_headers": {"received_header": true, "include_meta_names": ["http_auth"]},
        "recipients": [{"email": "jorg@example.com", "name": "J\u{f6}rg"}]
    });
    let (status, body) = inject(server.listener("http"), &request.to_string(), &[]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(json_body(&body)["success_count"], 1);
    let spooled = spooled_messages(server.dir());
    assert_eq!(spooled.len(), 1);
    let raw = std::fs::read(&spooled[0]).unwrap();
    assert!(raw.is_ascii());
    let text = String::from_utf8(raw).unwrap();
    assert!(text.starts_with("X-KumoRef: "), "{text}");
    // `by` names the machine (gethostname), not the listener's `hostname`.
    let machine = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let received = format!(
        "\r\nReceived: from example.com (127.0.0.1)\r\n  by {} (KumoMTA)\r\n  with HTTP id ",
        machine.trim()
    );
    assert!(text.contains(&received), "{text}");
    assert!(text.contains("for <jorg@example.com>;"));
    // The header is folded over several lines; unfold it.
    let mut lines = text.lines();
    let mut kumoref = lines
        .next()
        .unwrap()
        .trim_start_matches("X-KumoRef: ")
        .to_string();
    for line in lines.take_while(|l| l.starts_with([' ', '\t'])) {
        kumoref.push_str(line.trim());
    }
    let decoded = Command::new("python3")
        .arg("-c")
        .arg("import sys,base64;print(base64.b64decode(sys.argv[1]).decode())")
        .arg(kumoref.trim())
        .output()
        .unwrap();
    let payload = json_body(String::from_utf8_lossy(&decoded.stdout).trim());
    assert_eq!(
        payload,
        json!({"_@_": "\\_/", "recipient": "jorg@example.com", "http_auth": "127.0.0.1"})
    );

    let parsed = parse_message(&spooled[0]);
    assert_eq!(parsed["defects"], json!([]));
    assert_eq!(parsed["crlf_only"], true);
    assert_eq!(parsed["headers"]["Subject"], "Gr\u{fc}\u{df}e J\u{f6}rg");
    assert_eq!(parsed["headers"]["Mime-Version"], "1.0");
    assert!(parsed["headers"].get("Message-ID").is_some());
    assert!(parsed["headers"].get("Date").is_some());
    assert_eq!(parsed["type"], "text/plain");
    assert_eq!(parsed["cte"], "quoted-printable");
    assert_eq!(
        parsed["text"],
        "Hallo J\u{f6}rg, sch\u{f6}ne Gr\u{fc}\u{df}e!\nA line of 42\n"
    );
}

#[test]
fn partial_failures_are_reported_per_recipient() {
    let server = start(CAPTURE_HOOK);
    let request = json!({
        "envelope_sender": "bounces@example.com",
        "content": "Subject: hi {{ name }}\n\nbody\n",
        "recipients": [
            {"email": "good@example.com"},
            {"email": "not an address"},
            {"email": "rejectme@example.com"},
            {"email": "fine@example.com"}
        ]
    });
    let (status, body) = inject(server.listener("http"), &request.to_string(), &[]);
    assert_eq!(status, 200, "{body}");
    let response = json_body(&body);
    assert_eq!(response["success_count"], 2, "{body}");
    assert_eq!(response["fail_count"], 2);
    assert_eq!(
        response["failed_recipients"],
        json!(["not an address", "rejectme@example.com"])
    );
    let errors = response["errors"].as_array().unwrap();
    assert!(errors[0].as_str().unwrap().starts_with("not an address: "));
    assert_eq!(errors[1], "rejectme@example.com: 550 5.7.1 not this one");
    assert_eq!(spooled_messages(server.dir()).len(), 2);
}

#[test]
fn bad_requests_get_clear_errors() {
    let server = start("");
    let addr = server.listener("http");
    let ok_content = "\"content\": \"Subject: x\\n\\ny\"";
    let rcpt = "\"recipients\": [{\"email\": \"r@example.com\"}]";
    let sender = "\"envelope_sender\": \"s@example.com\"";

    let cases: Vec<(String, u16, &str)> = vec![
        ("{not json".into(), 400, "Failed to deserialize"),
        (
            format!("{{{sender}, {ok_content}, \"recipients\": \"r@example.com\"}}"),
            422,
            "invalid type",
        ),
        (
            format!("{{{sender}, {rcpt}}}"),
            422,
            "missing field `content`",
        ),
        (
            format!("{{{sender}, {ok_content}, \"recipients\": []}}"),
            400,
            "at least one recipient",
        ),
        (
            format!("{{\"envelope_sender\": \"not-an-address\", {ok_content}, {rcpt}}}"),
            500,
            "envelope_sender",
        ),
        (
            format!("{{{sender}, \"content\": \"Subject: {{% if %}}\\n\\nx\", {rcpt}}}"),
            422,
            "failed parsing field content as template",
        ),
        (
            format!(
                "{{{sender}, \"content\": {{\"text_body\": \"x\", \"attachments\": [{{\"data\": \"@@@\", \"base64\": true, \"content_type\": \"image/png\"}}]}}, {rcpt}}}"
            ),
            422,
            "not valid base64",
        ),
        (
            format!("{{{sender}, \"content\": {{\"subject\": \"x\"}}, {rcpt}}}"),
            422,
            "at least one of text_body and/or html_body",
        ),
        (
            format!("{{{sender}, \"content\": {{\"text_bod\": \"x\"}}, {rcpt}}}"),
            422,
            "unknown field `text_bod`",
        ),
        (
            format!(
                "{{{sender}, \"content\": \"Subject: {{{{#if x}}}}\\n\\nx\", {rcpt}, \"template_dialect\": \"Handlebars\"}}"
            ),
            422,
            "failed parsing field content as template",
        ),
        (
            format!("{{{sender}, \"content\": \"{{{{ x\", {rcpt}, \"deferred_generation\": true}}"),
            422,
            "failed parsing field content as template",
        ),
    ];
    for (body, status, needle) in cases {
        let (got, text) = inject(addr, &body, &[]);
        assert_eq!(got, status, "{body} → {text}");
        let error = json_body(&text)["error"].as_str().unwrap().to_string();
        assert!(error.contains(needle), "{body} → {error}");
    }

    // A template with a runtime error fails only its recipient.
    let body = format!("{{{sender}, \"content\": \"Subject: {{{{ 'a' + 1 }}}}\\n\\nx\", {rcpt}}}");
    let (got, text) = inject(addr, &body, &[]);
    assert_eq!(got, 200);
    assert_eq!(json_body(&text)["fail_count"], 1);

    // Content-Type must be JSON.
    let (got, text) = http_request(
        addr,
        "POST",
        "/api/inject/v1",
        &[("Content-Type", "text/plain")],
        Some("{}"),
    )
    .unwrap();
    assert_eq!(got, 415, "{text}");
    assert!(spooled_messages(server.dir()).is_empty());
}

#[test]
fn deferred_generation_queues_the_request_itself() {
    let server = start("");
    let request = json!({
        "envelope_sender": "bounces@example.com",
        "deferred_generation": true,
        "content": "Subject: later {{ name }}\n\nbody\n",
        "recipients": [{"email": "a@example.com"}, {"email": "b@example.com"}]
    });
    let (status, body) = inject(server.listener("http"), &request.to_string(), &[]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        json_body(&body),
        json!({"success_count": 0, "fail_count": 0, "failed_recipients": [], "errors": []})
    );
    let spooled = spooled_messages(server.dir());
    assert_eq!(spooled.len(), 1);
    let stored: Value = serde_json::from_slice(&std::fs::read(&spooled[0]).unwrap()).unwrap();
    assert_eq!(stored, request);
    let dir = server.stop();
    let records = common::records(&dir.path().join("logs"));
    let reception = records
        .iter()
        .find(|r| r["type"] == "Reception")
        .expect("a Reception record");
    assert_eq!(reception["queue"], "generator.kumomta.internal");
    assert_eq!(reception["recipient"], "");
    assert_eq!(reception["meta"]["http_auth"], "127.0.0.1");
}

/// gzip or zlib (HTTP "deflate") compression through Python.
fn compress(kind: &str, data: &[u8]) -> Vec<u8> {
    let mut child = Command::new("python3")
        .arg("-c")
        .arg("import sys,gzip,zlib;d=sys.stdin.buffer.read();sys.stdout.buffer.write(gzip.compress(d) if sys.argv[1]=='gzip' else zlib.compress(d))")
        .arg(kind)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success());
    out.stdout
}

#[test]
fn body_limit_and_compressed_bodies() {
    let server = start("");
    let url = format!("http://{}/api/inject/v1", server.listener("http"));
    let tmp = tempfile::tempdir().unwrap();

    // 50 MB is far past the 1 MiB limit of this listener.
    let big = tmp.path().join("big.json");
    {
        let mut f = std::fs::File::create(&big).unwrap();
        f.write_all(b"{\"envelope_sender\": \"s@example.com\", \"content\": \"")
            .unwrap();
        let chunk = vec![b'a'; 1 << 20];
        for _ in 0..50 {
            f.write_all(&chunk).unwrap();
        }
        f.write_all(b"\", \"recipients\": [{\"email\": \"r@example.com\"}]}")
            .unwrap();
    }
    let (code, body) = curl(&[
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &format!("@{}", big.display()),
        &url,
    ]);
    assert_eq!(code, 413, "{body}");
    assert_eq!(
        body,
        "Failed to buffer the request body: length limit exceeded"
    );

    // A gzip body is accepted; the limit applies after decompression.
    let request = json!({
        "envelope_sender": "s@example.com",
        "content": "Subject: zipped\n\nhello\n",
        "recipients": [{"email": "r@example.com"}]
    });
    let gz = tmp.path().join("req.json.gz");
    std::fs::write(&gz, compress("gzip", request.to_string().as_bytes())).unwrap();
    let (code, body) = curl(&[
        "-H",
        "Content-Type: application/json",
        "-H",
        "Content-Encoding: gzip",
        "--data-binary",
        &format!("@{}", gz.display()),
        &url,
    ]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(json_body(&body)["success_count"], 1);

    // 2 MB of zeros compress to a few KB but decompress past the limit.
    let bomb = tmp.path().join("bomb.gz");
    std::fs::write(&bomb, compress("gzip", &vec![b' '; 2 << 20])).unwrap();
    let (code, _) = curl(&[
        "-H",
        "Content-Type: application/json",
        "-H",
        "Content-Encoding: gzip",
        "--data-binary",
        &format!("@{}", bomb.display()),
        &url,
    ]);
    assert_eq!(code, 413);

    // Deflate (zlib) too.
    let zl = tmp.path().join("req.json.zz");
    std::fs::write(&zl, compress("zlib", request.to_string().as_bytes())).unwrap();
    let (code, body) = curl(&[
        "-H",
        "Content-Type: application/json",
        "-H",
        "Content-Encoding: deflate",
        "--data-binary",
        &format!("@{}", zl.display()),
        &url,
    ]);
    assert_eq!(code, 200, "{body}");
}

#[test]
fn authentication_and_authorization() {
    let server = start("");
    let untrusted = server.listeners("http")[1];
    let trusted = server.listener("http");
    let request = json!({
        "envelope_sender": "s@example.com",
        "content": "Subject: x\n\ny\n",
        "recipients": [{"email": "r@example.com"}]
    })
    .to_string();
    let basic = |user_pass: &str| {
        use base64::Engine;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_pass)
        )
    };

    // Liveness is open to anyone.
    let (code, _) = http_request(untrusted, "GET", "/api/check-liveness/v1", &[], None).unwrap();
    assert_eq!(code, 200);

    // Untrusted without credentials.
    let (code, text) = inject(untrusted, &request, &[]);
    assert_eq!(code, 401);
    assert!(
        text.contains("not permitted POST on http_listener/"),
        "{text}"
    );

    // Wrong password, from the untrusted and from the trusted listener.
    let wrong = basic("alice:nope");
    for addr in [untrusted, trusted] {
        let (code, text) = inject(addr, &request, &[("Authorization", &wrong)]);
        assert_eq!(code, 401, "{text}");
        assert_eq!(text, "HttpBasicAuth Authentication Failed for alice");
    }

    // Right password from the untrusted listener; http_auth is the user.
    let right = basic("alice:secret");
    let (code, text) = inject(untrusted, &request, &[("Authorization", &right)]);
    assert_eq!(code, 200, "{text}");
    assert_eq!(json_body(&text)["success_count"], 1);

    // Malformed Authorization header.
    let (code, text) = inject(untrusted, &request, &[("Authorization", "Magic x")]);
    assert_eq!(code, 400);
    assert_eq!(text, "Malformed or unsupported Authorization header");

    // Bearer tokens need a handler this policy does not have.
    let (code, _) = inject(untrusted, &request, &[("Authorization", "Bearer t0k3n")]);
    assert_eq!(code, 401);

    let dir = server.stop();
    let records = common::records(&dir.path().join("logs"));
    let reception = records
        .iter()
        .find(|r| r["type"] == "Reception")
        .expect("a Reception record");
    assert_eq!(reception["meta"]["http_auth"], "alice");
}

#[test]
fn liveness_openapi_and_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Builder::new(policy(
        "  kumo.start_http_listener { listen = '127.0.0.1:0', use_tls = true, hostname = 'tls.test' }",
        "",
    ))
    .binary(env!("CARGO_BIN_EXE_tern"))
    .start()
    .unwrap();
    wait_live(&server);
    let (code, body) = server.http("GET", "/api-docs/openapi.json", None).unwrap();
    assert_eq!(code, 200);
    let spec = json_body(&body);
    assert_eq!(spec["openapi"], "3.0.3");
    assert!(spec["paths"]["/api/inject/v1"]["post"].is_object());

    let tls = server.listeners("http")[2];
    let (code, body) = curl(&["-k", &format!("https://{tls}/api/check-liveness/v1")]);
    assert_eq!(code, 200, "{body}");
    let req = tmp.path().join("req.json");
    std::fs::write(
        &req,
        json!({
            "envelope_sender": "s@example.com",
            "content": {"text_body": "over TLS"},
            "recipients": [{"email": "r@example.com"}]
        })
        .to_string(),
    )
    .unwrap();
    let (code, body) = curl(&[
        "-k",
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &format!("@{}", req.display()),
        &format!("https://{tls}/api/inject/v1"),
    ]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(json_body(&body)["success_count"], 1);
    // Plain HTTP on the TLS port does not get an answer.
    assert!(http_request(tls, "GET", "/api/check-liveness/v1", &[], None).is_err());
}

#[test]
fn dump_openapi_spec_prints_the_description() {
    let out = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["serve", "--dump-openapi-spec"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let spec: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        spec["components"]["schemas"]["InjectV1Request"]["required"]
            .as_array()
            .unwrap()
            .contains(&json!("recipients"))
    );
}

#[test]
fn a_full_disk_makes_liveness_and_injection_answer_503() {
    let policy = policy("", "").replace("min_free_space = '1%'", "min_free_space = '100%'");
    let server = Builder::new(policy)
        .binary(env!("CARGO_BIN_EXE_tern"))
        .start()
        .unwrap();
    // Spool startup finishes right after initialization; wait for it to
    // stop being the reason.
    let mut last = (0, String::new());
    for _ in 0..200 {
        last = server.http("GET", "/api/check-liveness/v1", None).unwrap();
        if last.1 != "waiting for spool startup" {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert_eq!(last, (503, "storage is too full".to_string()));
    let request = json!({
        "envelope_sender": "s@example.com",
        "content": "Subject: x\n\ny\n",
        "recipients": [{"email": "r@example.com"}]
    });
    let (code, body) = inject(server.listener("http"), &request.to_string(), &[]);
    assert_eq!(code, 503);
    assert_eq!(json_body(&body)["error"], "disk is too full");
}
