//! Changing the diagnostic log filter of a running server, through the
//! admin API and through `kumo.set_diagnostic_log_filter` in an event:
//! lines below the new level stop appearing, a bad filter is refused and
//! changes nothing.

mod common;

use common::*;
use std::time::{Duration, Instant};

/// Wait until the server's output contains `needle` (or give up).
fn eventually(server: &tern_testkit::TernServer, needle: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if server.output().contains(needle) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn the_diagnostic_filter_changes_at_run_time() {
    let mut policy = policy_head("LocalDisk").replace(
        "  kumo.start_esmtp_listener",
        "  kumo.start_http_listener { listen = '127.0.0.1:0' }\n  kumo.start_esmtp_listener",
    );
    policy.push_str(
        r#"
kumo.on('smtp_server_mail_from', function(sender)
  kumo.set_diagnostic_log_filter(sender.user)
end)
"#,
    );
    let server = start_tern(policy);
    let http = server.listener("http");
    let bump = || {
        let (code, body) = curl(&[
            "-X",
            "POST",
            &format!("http://{http}/api/admin/bump-config-epoch"),
        ]);
        assert_eq!(code, 200, "{body}");
    };
    let set = |filter: &str| {
        curl(&[
            "-X",
            "POST",
            "-d",
            &format!(r#"{{"filter": "{filter}"}}"#),
            &format!("http://{http}/api/admin/set_diagnostic_log_filter/v1"),
        ])
    };

    bump();
    assert!(
        eventually(&server, "epoch bumped to 1"),
        "{}",
        server.output()
    );

    let (code, body) = set("error");
    assert_eq!(code, 200, "{body}");
    bump();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !server.output().contains("epoch bumped to 2"),
        "info is filtered out now"
    );

    let (code, body) = set("tern_server=bogus=level");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("invalid diagnostic log filter"), "{body}");

    // From the policy: MAIL FROM:<info@...> sets the filter back to info.
    let mut smtp = server.smtp().unwrap();
    smtp.read_reply().unwrap();
    smtp.command("EHLO client.test").unwrap();
    let (code, text) = smtp.command("MAIL FROM:<info@example.com>").unwrap();
    assert_eq!(code, 250, "{text}");
    bump();
    assert!(
        eventually(&server, "epoch bumped to 3"),
        "{}",
        server.output()
    );
}
