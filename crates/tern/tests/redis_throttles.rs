//! Throttles shared through a real Redis (Debian's `redis-server`, started
//! by the test on a free port): two Tern servers configured with
//! `kumo.configure_redis_throttles` share one `kumo.make_throttle` budget,
//! a `local:` spec stays per node, and an unreachable Redis stops startup
//! with a message naming it.

mod common;

use common::*;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A throwaway redis-server; killed when dropped.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start() -> Self {
        let port = closed_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/setup.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn policy(redis_port: u16) -> String {
    let mut policy = policy_head("LocalDisk").replace(
        "  kumo.start_esmtp_listener",
        &format!(
            "  kumo.configure_redis_throttles {{ node = 'redis://127.0.0.1:{redis_port}/' }}\n  kumo.start_esmtp_listener"
        ),
    );
    policy.push_str(
        r#"
kumo.on('smtp_server_mail_from', function(sender)
  local spec = '3/minute'
  if sender.user == 'local' then spec = 'local:2/minute' end
  local result = kumo.make_throttle('mail-from-' .. sender.user, spec):throttle()
  if result.throttled then
    kumo.reject(451, '4.4.5 over budget')
  end
end)
"#,
    );
    policy
}

/// The code of the reply to one MAIL FROM on a new connection.
fn mail_from(server: &tern_testkit::TernServer, sender: &str) -> u16 {
    let mut smtp = server.smtp().unwrap();
    smtp.read_reply().unwrap();
    smtp.command("EHLO client.test").unwrap();
    let (code, _) = smtp.command(&format!("MAIL FROM:<{sender}>")).unwrap();
    let _ = smtp.command("QUIT");
    code
}

#[test]
fn two_nodes_share_one_budget_and_local_specs_stay_per_node() {
    let redis = Redis::start();
    let a = start_tern(policy(redis.port));
    let b = start_tern(policy(redis.port));
    assert!(
        a.output().contains("throttles are shared through Redis"),
        "{}",
        a.output()
    );

    // 3 per minute across both nodes.
    assert_eq!(mail_from(&a, "shared@example.com"), 250);
    assert_eq!(mail_from(&b, "shared@example.com"), 250);
    assert_eq!(mail_from(&a, "shared@example.com"), 250);
    assert_eq!(
        mail_from(&b, "shared@example.com"),
        451,
        "node b sees node a's use"
    );
    assert_eq!(mail_from(&a, "shared@example.com"), 451);

    // `local:` 2 per minute on each node.
    for server in [&a, &b] {
        assert_eq!(mail_from(server, "local@example.com"), 250);
        assert_eq!(mail_from(server, "local@example.com"), 250);
        assert_eq!(mail_from(server, "local@example.com"), 451);
    }

    // The shared state is in Redis, under the throttle's key.
    let out = Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "--scan"])
        .output()
        .unwrap();
    let keys = String::from_utf8_lossy(&out.stdout);
    assert!(
        keys.contains("lua-user-throttle-mail-from-shared"),
        "{keys}"
    );
    assert!(
        !keys.contains("mail-from-local"),
        "local specs stay out of Redis: {keys}"
    );
    // The key expires once the throttle has recovered: at most a minute.
    let out = Command::new("redis-cli")
        .args([
            "-p",
            &redis.port.to_string(),
            "PTTL",
            "lua-user-throttle-mail-from-shared",
        ])
        .output()
        .unwrap();
    let pttl: i64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!((1..=60_001).contains(&pttl), "PTTL {pttl}");

    // Redis goes away: checks fall back to node-local throttles at once,
    // so mail keeps flowing, each node enforcing the limit on its own.
    drop(redis);
    let started = Instant::now();
    assert_eq!(mail_from(&a, "after@example.com"), 250);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(mail_from(&a, "after@example.com"), 250);
    assert_eq!(mail_from(&a, "after@example.com"), 250);
    assert_eq!(
        mail_from(&a, "after@example.com"),
        451,
        "the local budget applies"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        a.output().contains("using node-local throttles"),
        "{}",
        a.output()
    );
}

#[test]
fn an_unreachable_redis_stops_startup_naming_it() {
    let port = closed_port();
    let mut server = tern_testkit::Builder::new(policy(port))
        .binary(env!("CARGO_BIN_EXE_tern"))
        .no_wait()
        .start()
        .unwrap();
    let status = server.wait_exit(Duration::from_secs(30)).unwrap();
    assert!(!status.success());
    let output = server.output();
    assert!(
        output.contains("kumo.configure_redis_throttles")
            && output.contains(&format!("127.0.0.1:{port}")),
        "{output}"
    );
}

#[test]
fn validating_a_policy_does_not_contact_redis() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("init.lua");
    let policy = policy(closed_port()).replace("{dir}", &dir.path().display().to_string());
    std::fs::write(&path, policy).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["serve", "--validate", "--policy"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
