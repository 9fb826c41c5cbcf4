//! Startup, validation, script mode and shutdown of the real `tern serve`.

use std::process::Command;
use std::time::Duration;
use tern_testkit::{Builder, minimal_init};

fn builder(policy: &str) -> Builder {
    Builder::new(policy).binary(env!("CARGO_BIN_EXE_tern"))
}

fn http_policy() -> String {
    minimal_init("  kumo.start_http_listener { listen = '127.0.0.1:0' }")
}

fn run_tern(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run tern")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn serves_liveness_after_initialization() {
    let server = builder(&http_policy()).start().unwrap();
    let (status, body) = server.http("GET", "/api/check-liveness/v1", None).unwrap();
    assert_eq!((status, body.as_str()), (200, "OK"));
}

#[test]
fn sigterm_sigint_and_sighup_shut_down_gracefully() {
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        let mut server = builder(&http_policy()).start().unwrap();
        server.signal(signal);
        let status = server.wait_exit(Duration::from_secs(20)).unwrap();
        assert!(
            status.success(),
            "signal {signal}: {status:?}\n{}",
            server.output()
        );
        assert!(
            server.output().contains("shutdown complete"),
            "{}",
            server.output()
        );
    }
}

#[test]
fn syntax_error_fails_startup_with_file_and_line() {
    let mut server =
        builder("local kumo = require 'kumo'\nkumo.on('init', function()\n  local x = = 2\nend)\n")
            .no_wait()
            .start()
            .unwrap();
    let status = server.wait_exit(Duration::from_secs(20)).unwrap();
    assert!(!status.success());
    let policy = server.dir().join("init.lua");
    assert!(
        server
            .output()
            .contains(&format!("{}:3:", policy.display())),
        "{}",
        server.output()
    );
}

#[test]
fn runtime_error_in_init_fails_startup_with_file_and_line() {
    let mut server = builder(
        "local kumo = require 'kumo'\nkumo.on('init', function()\n  kumo.define_spool { name = 'data', path = '/tmp/x' }\n  error('init exploded')\nend)\n",
    )
    .no_wait()
    .start()
    .unwrap();
    let status = server.wait_exit(Duration::from_secs(20)).unwrap();
    assert!(!status.success());
    let policy = server.dir().join("init.lua");
    let out = server.output();
    assert!(
        out.contains(&format!("{}:4: init exploded", policy.display())),
        "{out}"
    );
    assert!(out.contains("init event"), "{out}");
}

#[test]
fn unknown_parameter_key_is_named() {
    let mut server = builder(&minimal_init(
        "  kumo.start_http_listener { listen = '127.0.0.1:0', trusted_hostz = {} }",
    ))
    .no_wait()
    .start()
    .unwrap();
    let status = server.wait_exit(Duration::from_secs(20)).unwrap();
    assert!(!status.success());
    let out = server.output();
    assert!(
        out.contains("trusted_hostz") && out.contains("kumo.start_http_listener"),
        "{out}"
    );
}

#[test]
fn a_policy_without_spools_is_refused() {
    let mut server = builder("local kumo = require 'kumo'\nkumo.on('init', function() end)\n")
        .no_wait()
        .start()
        .unwrap();
    let status = server.wait_exit(Duration::from_secs(20)).unwrap();
    assert!(!status.success());
    assert!(
        server.output().contains("No spools have been defined"),
        "{}",
        server.output()
    );
}

#[test]
fn validate_accepts_a_good_policy_and_binds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let policy = dir.path().join("init.lua");
    std::fs::write(
        &policy,
        minimal_init(&format!(
            "  kumo.start_http_listener {{ listen = '127.0.0.1:{port}' }}"
        ))
        .replace("{dir}", &dir.path().display().to_string()),
    )
    .unwrap();
    let out = run_tern(&["serve", "--validate", "--policy", policy.to_str().unwrap()]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("listener on"), "{text}");
    // the port named by the policy is still free: nothing was bound
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("port must still be free");
    // and no spool directory was created
    assert!(!dir.path().join("spool").exists());
}

#[test]
fn validate_rejects_a_bad_policy() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("init.lua");
    std::fs::write(
        &policy,
        minimal_init("") + "kumo.on('validate_config', function() kumo.validation_failed() end)\n",
    )
    .unwrap();
    let out = run_tern(&["serve", "--validate", "--policy", policy.to_str().unwrap()]);
    assert!(!out.status.success());
    std::fs::write(
        &policy,
        "local kumo = require 'kumo'\nkumo.on('init', function() kumo.nonsense() end)\n",
    )
    .unwrap();
    let out = run_tern(&["serve", "--validate", "--policy", policy.to_str().unwrap()]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("kumo.nonsense is not supported by Tern yet"),
        "{text}"
    );
}

#[test]
fn script_mode_runs_main_with_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("script.lua");
    std::fs::write(
        &policy,
        "local kumo = require 'kumo'\nkumo.on('main', function(a, b) print('args: ' .. a .. ' ' .. b) end)\n",
    )
    .unwrap();
    let out = run_tern(&[
        "serve",
        "--script",
        "--policy",
        policy.to_str().unwrap(),
        "--",
        "one",
        "two",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "args: one two");
}

#[test]
fn kumo_mimepart_is_installed_in_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("script.lua");
    std::fs::write(
        &policy,
        r#"local kumo = require 'kumo'
kumo.on('main', function()
  local p = kumo.mimepart.parse("Subject: hello mime\r\nContent-Type: text/plain\r\n\r\nbody text\r\n")
  print(p.headers:subject() .. '|' .. p.body)
end)
"#,
    )
    .unwrap();
    let out = run_tern(&["serve", "--script", "--policy", policy.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hello mime|body text"
    );
}

#[test]
fn help_explains_every_command() {
    let out = run_tern(&["--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("serve"), "{text}");
    let out = run_tern(&["serve", "--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--policy",
        "--user",
        "--validate",
        "--script",
        "--diag-log-dir",
        "--diag-format",
    ] {
        assert!(text.contains(flag), "missing {flag}: {text}");
    }
}

#[test]
fn missing_policy_file_is_reported() {
    let out = run_tern(&["serve", "--policy", "/no/such/init.lua", "--user", "root"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/init.lua"));
}

#[test]
fn node_id_diag_dir_and_json_format_are_honoured() {
    let diag = tempfile::tempdir().unwrap();
    let node = "557f3ad4-2c8c-11ee-976e-782d7e12e173";
    let policy = minimal_init(
        "  kumo.configure_local_logs { log_dir = '{dir}/logs' }\n  kumo.start_esmtp_listener { listen = '127.0.0.1:0' }",
    );
    let mut server = builder(&policy)
        .env("KUMO_NODE_ID", node)
        .arg("--diag-log-dir")
        .arg(diag.path().to_str().unwrap())
        .arg("--diag-format")
        .arg("json")
        .no_wait()
        .start()
        .unwrap();
    // startup lines go to the diagnostic log file, as JSON
    let mut text = String::new();
    for _ in 0..200 {
        text = std::fs::read_dir(diag.path())
            .unwrap()
            .flatten()
            .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
            .collect();
        if text.contains("initialization complete") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let line = text
        .lines()
        .find(|l| l.contains("smtp listener on"))
        .expect(&text);
    let json: serde_json::Value = serde_json::from_str(line).expect("diag lines are JSON");
    let message = json["fields"]["message"].as_str().unwrap();
    let addr: std::net::SocketAddr = message.rsplit(' ').next().unwrap().parse().unwrap();

    let mut smtp = tern_testkit::SmtpClient::connect(addr).unwrap();
    smtp.read_reply().unwrap();
    smtp.command("EHLO c").unwrap();
    assert_eq!(
        smtp.send_message(
            "a@example.com",
            "b@example.com",
            b"Subject: x\r\n\r\nbody\r\n"
        )
        .unwrap()
        .0,
        250
    );
    server.signal(libc::SIGTERM);
    server.wait_exit(Duration::from_secs(20)).unwrap();
    let records = tern_log::LogReader::open(server.dir().join("logs"), Default::default())
        .unwrap()
        .map(|line| serde_json::from_str::<serde_json::Value>(&line.unwrap().text).unwrap())
        .collect::<Vec<_>>();
    // The Reception record, and whatever the delivery attempt logged.
    assert!(
        records.iter().any(|r| r["type"] == "Reception"),
        "{records:?}"
    );
    assert!(records.iter().all(|r| r["nodeid"] == node), "{records:?}");
}

/// §1.1: a graceful shutdown fires `shutdown_logging` before the loggers
/// close; a handler that fails is reported and the shutdown still ends
/// cleanly.
#[test]
fn shutdown_fires_shutdown_logging() {
    let marker = r#"
kumo.on('shutdown_logging', function()
  local f = assert(io.open('{dir}/shutdown-marker', 'w'))
  f:write('ran')
  f:close()
end)
"#;
    let mut server = builder(&(http_policy() + marker)).start().unwrap();
    let path = server.dir().join("shutdown-marker");
    assert!(!path.exists(), "the event ran before any shutdown");
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(20)).unwrap();
    assert!(status.success(), "{}", server.output());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "ran");

    let failing = "\nkumo.on('shutdown_logging', function() error('boom at shutdown') end)\n";
    let mut server = builder(&(http_policy() + failing)).start().unwrap();
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(20)).unwrap();
    let output = server.output();
    assert!(status.success(), "{output}");
    assert!(
        output.contains("shutdown_logging:") && output.contains("boom at shutdown"),
        "{output}"
    );
    assert!(output.contains("shutdown complete"), "{output}");
}
