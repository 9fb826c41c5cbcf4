//! The small admin endpoints on a real server, with `curl`:
//! `POST /api/admin/bump-config-epoch` (pooled Lua states retired, so a
//! policy edit applies without a restart even with file monitoring off)
//! and `GET /api/machine-info` (facts checked against the host).

mod common;

use common::*;
use serde_json::Value;
use std::process::Command;

fn policy(text: &str) -> String {
    format!(
        r#"local kumo = require 'kumo'
kumo.on('init', function()
  -- No monitored files: only the admin request can bump the epoch.
  kumo.set_config_monitor_globs {{}}
  kumo.define_spool {{ name = 'data', path = '{{dir}}/spool/data', kind = 'LocalDisk', min_free_space = '1%' }}
  kumo.define_spool {{ name = 'meta', path = '{{dir}}/spool/meta', kind = 'LocalDisk', min_free_space = '1%' }}
  kumo.start_http_listener {{ listen = '127.0.0.1:0' }}
  kumo.start_http_listener {{ listen = '127.0.0.1:0', trusted_hosts = {{ '10.9.9.9' }} }}
  kumo.start_esmtp_listener {{ listen = '127.0.0.1:0', relay_hosts = {{ '127.0.0.1' }} }}
end)
kumo.on('smtp_server_mail_from', function()
  kumo.reject(550, '5.7.1 {text}')
end)
"#
    )
}

/// The reply to one MAIL FROM on a new connection.
fn mail_from_reply(server: &tern_testkit::TernServer) -> String {
    let mut smtp = server.smtp().unwrap();
    smtp.read_reply().unwrap();
    smtp.command("EHLO client.test").unwrap();
    let (_, text) = smtp.command("MAIL FROM:<s@example.com>").unwrap();
    let _ = smtp.command("QUIT");
    text
}

#[test]
fn bumping_the_epoch_applies_a_policy_edit_without_a_restart() {
    let server = start_tern(policy("version one"));
    let http = server.listeners("http")[0];
    assert!(mail_from_reply(&server).contains("version one"));

    let path = server.dir().join("init.lua");
    let edited = policy("version two").replace("{dir}", &server.dir().display().to_string());
    std::fs::write(&path, edited).unwrap();
    // A pooled state keeps the policy it loaded (max age 300 s) and no
    // file is monitored, so the edit is not seen yet.
    assert!(mail_from_reply(&server).contains("version one"));

    let untrusted = server.listeners("http")[1];
    let (code, _) = curl(&[
        "-X",
        "POST",
        &format!("http://{untrusted}/api/admin/bump-config-epoch"),
    ]);
    assert_eq!(code, 401, "only trusted hosts");
    assert!(mail_from_reply(&server).contains("version one"));

    let (code, body) = curl(&[
        "-X",
        "POST",
        &format!("http://{http}/api/admin/bump-config-epoch"),
    ]);
    assert_eq!(code, 200, "{body}");
    assert!(mail_from_reply(&server).contains("version two"));
}

#[test]
fn machine_info_describes_this_host() {
    let server = start_tern(policy("x"));
    let http = server.listeners("http")[0];
    let (code, body) = curl(&[&format!("http://{http}/api/machine-info")]);
    assert_eq!(code, 200, "{body}");
    let info: Value = serde_json::from_str(&body).unwrap();

    let node_id = std::fs::read_to_string(server.dir().join(".nodeid")).unwrap();
    assert_eq!(info["node_id"], node_id.trim(), "{info}");
    let hostname = Command::new("hostname").output().unwrap();
    assert_eq!(
        info["hostname"],
        String::from_utf8_lossy(&hostname.stdout).trim()
    );
    let nproc = Command::new("nproc").output().unwrap();
    let nproc: u64 = String::from_utf8_lossy(&nproc.stdout)
        .trim()
        .parse()
        .unwrap();
    assert_eq!(info["num_cores"], nproc);
    let kernel = Command::new("uname").arg("-r").output().unwrap();
    assert_eq!(
        info["kernel_version"],
        String::from_utf8_lossy(&kernel.stdout).trim()
    );
    assert!(
        info["total_memory_bytes"].as_u64().unwrap() > 1 << 20,
        "{info}"
    );
    assert!(
        info["platform"].as_str().unwrap().starts_with("linux/"),
        "{info}"
    );
    assert_eq!(info["process_kind"], "tern");
    let since = info["online_since"].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(since).is_ok(),
        "{since}"
    );
    for key in [
        "cpu_brand",
        "distribution",
        "os_version",
        "mac_address",
        "fingerprint",
        "version",
    ] {
        assert!(info[key].is_string(), "{key}: {info}");
    }

    let untrusted = server.listeners("http")[1];
    let (code, body) = curl(&[&format!("http://{untrusted}/api/machine-info")]);
    assert_eq!(code, 401, "{body}");
}
