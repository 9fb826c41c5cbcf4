//! `tern admin` (alias `tern kcli`) against a real server: commands map to
//! the admin API, answers print as JSON, refusals and unreachable servers
//! give a clear message and exit code 1.

mod common;

use common::*;
use serde_json::Value;
use std::process::Command;

fn admin(endpoint: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tern"))
        .arg("admin")
        .arg("--endpoint")
        .arg(endpoint)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn admin_commands_drive_the_admin_api() {
    let mut policy = policy_head("LocalDisk").replace(
        "  kumo.start_esmtp_listener",
        "  kumo.start_http_listener { listen = '127.0.0.1:0' }\n  kumo.start_esmtp_listener",
    );
    policy.push_str(
        r#"
kumo.on('smtp_server_message_received', function(msg)
  msg:set_meta('tenant', 'acme')
  msg:set_due(os.date('!%Y-%m-%dT%H:%M:%SZ', os.time() + 3600))
end)
"#,
    );
    let server = start_tern(policy);
    let endpoint = format!("http://{}", server.listener("http"));
    let mut smtp = server.smtp().unwrap();
    smtp.read_reply().unwrap();
    smtp.command("EHLO client.test").unwrap();
    let (_, reply) = smtp
        .send_message("s@sender.test", "held@example.com", &body("held"))
        .unwrap();
    let id = ids_from(&reply)[0].clone();

    let (code, out, err) = admin(&endpoint, &["inspect-message", &id]);
    assert_eq!(code, 0, "{err}");
    let info: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(info["message"]["meta"]["tenant"], "acme");

    let (code, out, err) = admin(
        &endpoint,
        &["inspect-sched-q", "acme@example.com", "--limit", "1"],
    );
    assert_eq!(code, 0, "{err}");
    let queue: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(queue["num_scheduled"], 1, "{queue}");
    assert_eq!(queue["messages"][0]["id"], id.as_str());

    // No criteria is refused locally, before anything is sent.
    let (code, _, err) = admin(&endpoint, &["bounce", "--reason", "x"]);
    assert_eq!(code, 1);
    assert!(err.contains("--everything"), "{err}");
    // A refusal by the server is shown with its status.
    let (code, _, err) = admin(
        &endpoint,
        &[
            "suspend",
            "--tenant",
            "acme",
            "--reason",
            "x",
            "--duration",
            "soon",
        ],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("answered 400") && err.contains("soon"),
        "{err}"
    );

    let (code, out, err) = admin(
        &endpoint,
        &[
            "suspend",
            "--tenant",
            "acme",
            "--reason",
            "pause",
            "--duration",
            "10m",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let created: Value = serde_json::from_str(&out).unwrap();
    let suspension = created["id"].as_str().unwrap().to_string();
    let (_, out, _) = admin(&endpoint, &["suspend-list"]);
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list[0]["tenant"], "acme");
    assert_eq!(list[0]["reason"], "pause");
    let (code, _, err) = admin(&endpoint, &["suspend-cancel", "--id", &suspension]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = admin(&endpoint, &["suspend-cancel", "--id", &suspension]);
    assert_eq!(code, 1);
    assert!(err.contains("answered 404"), "{err}");

    let (code, _, err) = admin(
        &endpoint,
        &["bounce", "--tenant", "acme", "--reason", "cleanup"],
    );
    assert_eq!(code, 0, "{err}");
    let logs = server.dir().join("logs");
    wait_for_records(&logs, std::time::Duration::from_secs(20), |r| {
        count(r, "AdminBounce") == 1
    });

    let (code, out, _) = admin(&endpoint, &["metrics"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("total_messages_received{service=\"esmtp_listener\"} 1"),
        "{out}"
    );
    let (code, out, _) = admin(&endpoint, &["metrics", "--json"]);
    assert_eq!(code, 0);
    let metrics: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(metrics["total_messages_received"]["type"], "counter");

    // The kcli alias, and an unreachable server named in the error.
    let out = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["kcli", "--endpoint", &endpoint, "bump-config-epoch"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let nowhere = format!("http://127.0.0.1:{}", closed_port());
    let (code, _, err) = admin(&nowhere, &["bounce-list"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot reach the Tern server") && err.contains(&nowhere),
        "{err}"
    );
}
