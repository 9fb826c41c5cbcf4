//! Part V.1 traps on the policy, HTTP injection and logging side, against
//! the real server: the `null` queue at reception (#13), HTTP answers and
//! trace-header defaults (#14), the supplemental header added after a
//! DKIM signature made in the reception events (#15), and realtime policy
//! edits reaching events while `init` is not run again (#5).

mod common;

use common::{files_under, records, rsa_key};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tern_testkit::{Builder, TernServer, http_request};

const POLICY: &str = r#"local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool { name = 'data', path = '{dir}/spool/data', kind = 'LocalDisk',
    min_free_space = '1%' }
  kumo.define_spool { name = 'meta', path = '{dir}/spool/meta', kind = 'LocalDisk',
    min_free_space = '1%' }
  kumo.configure_local_logs { log_dir = '{dir}/logs', meta = { 'policy_version' } }
  kumo.start_http_listener { listen = '127.0.0.1:0' }
  kumo.start_esmtp_listener { listen = '127.0.0.1:0', relay_hosts = { '127.0.0.1' } }
  local f = io.open('{dir}/init_runs', 'a')
  f:write('init VERSION\n')
  f:close()
end)

local function sign(msg)
  msg:dkim_sign(kumo.dkim.rsa_sha256_signer {
    domain = 'example.com',
    selector = 's1',
    headers = { 'From', 'To', 'Subject' },
    key = '{dir}/key.pem',
  })
end

-- Every message goes to a queue that is never delivered from during the
-- test (a test resolver would be needed for that); names pick behaviours.
local function common(msg)
  local user = msg:recipient().user
  if user:find('^blackhole') then
    msg:set_meta('queue', 'null')
  end
  msg:set_meta('policy_version', 'VERSION')
  local f = io.open('{dir}/out/' .. user, 'w')
  f:write('VERSION')
  f:close()
  if user:find('^sign') then
    -- last, as the docs say: nothing may change the message after it
    sign(msg)
  end
end

kumo.on('http_message_generated', function(msg)
  local user = msg:recipient().user
  if user:find('^fail') then
    kumo.reject(550, '5.7.1 not ' .. user)
  end
  common(msg)
end)

kumo.on('smtp_server_message_received', function(msg)
  common(msg)
end)
"#;

fn start(version: &str, key: &Path) -> TernServer {
    let server = Builder::new(POLICY.replace("VERSION", version))
        .binary(env!("CARGO_BIN_EXE_tern"))
        .file("out/.keep", "")
        .file("key.pem", std::fs::read(key).unwrap())
        .start()
        .unwrap();
    for _ in 0..400 {
        if let Ok((200, _)) = server.http("GET", "/api/check-liveness/v1", None) {
            return server;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("never live; output:\n{}", server.output());
}

fn inject(server: &TernServer, request: &Value) -> (u16, Value) {
    let (status, body) = http_request(
        server.listener("http"),
        "POST",
        "/api/inject/v1",
        &[("Content-Type", "application/json")],
        Some(&request.to_string()),
    )
    .unwrap();
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    (status, json)
}

fn request(recipients: &[&str], extra: Value) -> Value {
    let mut request = json!({
        "envelope_sender": "bounce@example.com",
        "content": "From: News <news@example.com>\nTo: {{ email }}\nSubject: Hello {{ email }}\n\nHi there.\n",
        "recipients": recipients.iter().map(|r| json!({"email": r})).collect::<Vec<_>>(),
    });
    if let Value::Object(extra) = extra {
        request.as_object_mut().unwrap().extend(extra);
    }
    request
}

fn spooled_for(dir: &Path, recipient: &str) -> String {
    let needle = format!("\r\nTo: {recipient}\r\n");
    let found: Vec<String> = files_under(&dir.join("spool/data"))
        .into_iter()
        .filter(|m| m.contains(&needle))
        .collect();
    assert_eq!(found.len(), 1, "spooled copies for {recipient}: {found:?}");
    found.into_iter().next().unwrap()
}

fn smtp_send(server: &TernServer, rcpt: &str) {
    let mut smtp = server.smtp().unwrap();
    smtp.read_reply().unwrap();
    smtp.command("EHLO client.test").unwrap();
    let body = format!(
        "From: News <news@example.com>\r\nTo: {rcpt}\r\nSubject: Hello {rcpt}\r\n\r\nHi there.\r\n"
    );
    let (code, reply) = smtp
        .send_message("bounce@example.com", rcpt, body.as_bytes())
        .unwrap();
    assert_eq!(code, 250, "{reply}");
    smtp.command("QUIT").unwrap();
}

/// Verify every DKIM signature of each message with dkimpy.
fn dkim_verify(dir: &Path, public: &str, messages: &[(&str, &str)]) {
    let mut paths = Vec::new();
    for (name, text) in messages {
        let path = dir.join(format!("{name}.eml"));
        std::fs::write(&path, text).unwrap();
        paths.push(path.display().to_string());
    }
    let script = format!(
        r#"
import dkim, sys
def dns(name, timeout=5):
    assert name == b's1._domainkey.example.com.', name
    return b'v=DKIM1; k=rsa; p={public}'
for path in sys.argv[1:]:
    print(dkim.verify(open(path, 'rb').read(), dnsfunc=dns))
"#
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .args(&paths)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{} (pip install dkimpy)",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        vec!["True"; messages.len()],
        "{messages:?}"
    );
}

/// #13 and #14: every recipient failing is still a 200 with the failures
/// listed; a `null`-queued HTTP message counts as a success but is neither
/// spooled nor logged, while SMTP logs a Reception for it; HTTP adds no
/// `Received` header unless asked, SMTP does by default.
#[test]
fn null_queue_failures_and_trace_header_defaults() {
    let keys = tempfile::tempdir().unwrap();
    let (key, _) = rsa_key(keys.path());
    let server = start("v1", &key);

    let (status, body) = inject(
        &server,
        &request(&["fail1@example.com", "fail2@example.com"], json!({})),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({
            "success_count": 0,
            "fail_count": 2,
            "failed_recipients": ["fail1@example.com", "fail2@example.com"],
            "errors": ["fail1@example.com: 550 5.7.1 not fail1",
                       "fail2@example.com: 550 5.7.1 not fail2"],
        })
    );

    let (status, body) = inject(
        &server,
        &request(
            &["blackhole-http@example.com", "kept@example.com"],
            json!({}),
        ),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["success_count"], 2, "{body}");
    assert_eq!(body["fail_count"], 0, "{body}");
    // the policy saw it, and it was dropped afterwards
    assert!(server.dir().join("out/blackhole-http").exists());
    smtp_send(&server, "blackhole-smtp@example.com");
    smtp_send(&server, "smtp-kept@example.com");

    let http_kept = spooled_for(server.dir(), "kept@example.com");
    assert!(
        !http_kept.contains("\r\nReceived:") && !http_kept.starts_with("Received:"),
        "HTTP adds no Received header by default: {http_kept}"
    );
    let smtp_kept = spooled_for(server.dir(), "smtp-kept@example.com");
    assert!(
        smtp_kept.contains("\r\nReceived: from client.test"),
        "SMTP adds a Received header by default: {smtp_kept}"
    );
    let all = files_under(&server.dir().join("spool/data"));
    assert!(
        !all.iter().any(|m| m.contains("blackhole")),
        "null-queued messages are not spooled"
    );

    let dir = server.stop();
    let receptions: Vec<Value> = records(&dir.path().join("logs"))
        .into_iter()
        .filter(|r| r["type"] == "Reception")
        .collect();
    let to = |rcpt: &str| -> Vec<&Value> {
        receptions
            .iter()
            .filter(|r| r["recipient"] == rcpt)
            .collect()
    };
    assert!(
        to("blackhole-http@example.com").is_empty(),
        "{receptions:?}"
    );
    let smtp_null = to("blackhole-smtp@example.com");
    assert_eq!(smtp_null.len(), 1, "{receptions:?}");
    assert_eq!(smtp_null[0]["queue"], "null");
    assert_eq!(to("kept@example.com").len(), 1, "{receptions:?}");
    assert_eq!(to("smtp-kept@example.com").len(), 1, "{receptions:?}");
    assert!(to("fail1@example.com").is_empty());
}

/// #15: the supplemental `X-KumoRef` header is added after
/// `http_message_generated` / `smtp_server_message_received`, so it sits
/// above a DKIM signature made there, is not covered by it, and the
/// signature still verifies.
#[test]
fn supplemental_header_is_added_after_a_dkim_signature_made_in_the_event() {
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = rsa_key(keys.path());
    let server = start("v1", &key);
    let (status, body) = inject(&server, &request(&["sign-http@example.com"], json!({})));
    assert_eq!((status, &body["success_count"]), (200, &json!(1)), "{body}");
    smtp_send(&server, "sign-smtp@example.com");
    let http = spooled_for(server.dir(), "sign-http@example.com");
    let smtp = spooled_for(server.dir(), "sign-smtp@example.com");
    for message in [&http, &smtp] {
        assert!(message.starts_with("X-KumoRef: "), "{message}");
        let kumoref_end = message.find("\r\n").unwrap();
        let signature = message.find("\r\nDKIM-Signature: ").expect("signed");
        let first_other = message[kumoref_end..]
            .split("\r\n")
            .skip(1)
            .find(|l| !l.starts_with([' ', '\t']))
            .unwrap();
        assert!(
            first_other.starts_with("DKIM-Signature: "),
            "the signature comes right after X-KumoRef: {message}"
        );
        let tags = &message[signature..message.find("\r\n\r\n").unwrap()];
        assert!(!tags.to_ascii_lowercase().contains("x-kumoref"), "{tags}");
    }
    dkim_verify(
        keys.path(),
        &public,
        &[("http", http.as_str()), ("smtp", smtp.as_str())],
    );
}

/// #5: a policy edit reaches realtime events without a restart (here
/// through the configuration monitor's epoch bump), while `init` is not
/// run again: its listeners, spools and logs stay as they were.
#[test]
fn policy_edits_reach_events_but_init_runs_once() {
    let keys = tempfile::tempdir().unwrap();
    let (key, _) = rsa_key(keys.path());
    let server = start("v1", &key);
    let (status, _) = inject(&server, &request(&["probe0@example.com"], json!({})));
    assert_eq!(status, 200);
    let out = server.dir().join("out");
    assert_eq!(std::fs::read_to_string(out.join("probe0")).unwrap(), "v1");

    let policy = server.dir().join("init.lua");
    let text = std::fs::read_to_string(&policy).unwrap();
    std::fs::write(
        &policy,
        text.replace("'v1'", "'v2'").replace("init v1", "init v2"),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut n = 1;
    loop {
        let probe = format!("probe{n}");
        let (status, _) = inject(
            &server,
            &request(&[&format!("{probe}@example.com")], json!({})),
        );
        assert_eq!(status, 200);
        if std::fs::read_to_string(out.join(&probe)).unwrap() == "v2" {
            break;
        }
        assert!(Instant::now() < deadline, "the edit never took effect");
        n += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        std::fs::read_to_string(server.dir().join("init_runs")).unwrap(),
        "init v1\n",
        "init must not run again"
    );
}
