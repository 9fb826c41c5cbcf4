//! Memory load shedding (§3.2): with the soft limit below the process's
//! usage, new SMTP connections get `421 4.3.2 <host> load shedding` before
//! the banner (and no Rejection record), HTTP injection and liveness
//! answer 503, and the memory diagnostics say why. With the default limits
//! the same policy serves normally.

mod common;

use common::*;

fn policy(limit: &str) -> String {
    format!(
        r#"local kumo = require 'kumo'
kumo.on('pre_init', function()
  {limit}
end)
kumo.on('init', function()
  kumo.define_spool {{ name = 'data', path = '{{dir}}/spool/data', kind = 'RocksDB', min_free_space = '1%' }}
  kumo.define_spool {{ name = 'meta', path = '{{dir}}/spool/meta', kind = 'RocksDB', min_free_space = '1%' }}
  kumo.configure_local_logs {{ log_dir = '{{dir}}/logs', max_segment_duration = '1s' }}
  kumo.start_esmtp_listener {{ listen = '127.0.0.1:0', relay_hosts = {{ '127.0.0.1' }} }}
  kumo.start_http_listener {{ listen = '127.0.0.1:0' }}
end)
"#
    )
}

#[test]
fn soft_limit_below_usage_sheds_smtp_and_http() {
    let server = start_tern(policy("kumo.set_memory_soft_limit(1)"));
    let mut smtp = server.smtp().unwrap();
    let (code, text) = smtp.read_reply().unwrap();
    assert_eq!(code, 421, "{text}");
    assert!(text.contains("4.3.2"), "{text}");
    assert!(text.contains("load shedding. Try later"), "{text}");
    assert!(smtp.is_closed());

    let (status, body) = server.http("GET", "/api/check-liveness/v1", None).unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("load shedding"), "{body}");
    let inject = r#"{"envelope_sender":"s@example.com","content":"Subject: x\r\n\r\nhi\r\n","recipients":[{"email":"r@example.com"}]}"#;
    let (status, body) = server.http("POST", "/api/inject/v1", Some(inject)).unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("load shedding"), "{body}");

    let (status, body) = server.http("GET", "/api/admin/memory/stats", None).unwrap();
    assert_eq!(status, 200, "{body}");
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(stats["load_shedding"], true, "{body}");
    assert_eq!(stats["soft_limit_bytes"], 1, "{body}");
    assert!(stats["usage_bytes"].as_u64().unwrap() > 1_000_000, "{body}");

    // Load-shed connections are not Rejections.
    drop(smtp);
    let dir = server.kill9();
    let logs = dir.path().join("logs");
    assert_eq!(count(&records(&logs), "Rejection"), 0);
}

#[test]
fn default_limits_serve_normally() {
    // The same policy with a generous explicit limit: served as usual.
    let server = start_tern(policy(
        "kumo.set_memory_soft_limit(1024 * 1024 * 1024 * 1024)",
    ));
    let mut smtp = server.smtp().unwrap();
    let (code, text) = smtp.read_reply().unwrap();
    assert_eq!(code, 220, "{text}");
    let (status, body) = server.http("GET", "/api/check-liveness/v1", None).unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.http("GET", "/api/admin/memory/stats", None).unwrap();
    assert_eq!(status, 200, "{body}");
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(stats["load_shedding"], false, "{body}");
}
