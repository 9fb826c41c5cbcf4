//! A RocksDB spool that really runs out of space latches unhealthy
//! (§2.2): the data spool lives on a 6 MiB tmpfs, large messages fill it
//! until RocksDB's write fails with ENOSPC, and then
//! * the message whose write failed gets a 4xx and nothing of it is kept,
//! * new connections are refused before the banner with
//!   `421 4.3.2 <host> <reason>. Try later`,
//! * delivery is suspended (`kumo.suspend_delivery_when_spool_unhealthy`,
//!   default true): a message accepted earlier that comes due is held and
//!   logged as `Delayed` with `451 4.4.4 KumoMTA internal: delivery
//!   suspended: spool unhealthy: ...`.
//!
//! Mounting a tmpfs needs root (CI runs as root); elsewhere the test says
//! so and does nothing.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tern_testkit::{Builder, SmtpClient};

/// A tmpfs mounted for the test's lifetime.
struct SmallFilesystem {
    path: PathBuf,
}

impl SmallFilesystem {
    fn mount(path: &Path, size: &str) -> Self {
        std::fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mount -t tmpfs failed although running as root"
        );
        Self {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for SmallFilesystem {
    fn drop(&mut self) {
        // Lazy: the server may still hold files open while it exits.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn a_full_rocksdb_spool_latches_refuses_ingress_and_suspends_delivery() {
    if !is_root() {
        eprintln!("skipped: mounting the small tmpfs this test fills needs root");
        return;
    }
    // Nothing listens here: the first message's delivery fails and it is
    // retried every 2 seconds.
    let closed_port = closed_port();
    let dir = tempfile::tempdir().unwrap();
    let small = SmallFilesystem::mount(&dir.path().join("small"), "6m");
    // RocksDB's own LOG goes elsewhere (`log_dir`), as docs/spool.md tells
    // operators: a LOG write that fails on the full tmpfs makes Debian's
    // librocksdb abort at the next LOG line, from its own threads.
    let policy = format!(
        r#"local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool {{ name = 'data', path = '{{dir}}/small/data', kind = 'RocksDB',
    min_free_space = '0%', min_free_inodes = '0%',
    rocks_params = {{ write_buffer_size = 1048576, log_dir = '{{dir}}/rocks-log' }} }}
  kumo.define_spool {{ name = 'meta', path = '{{dir}}/spool/meta', kind = 'RocksDB', min_free_space = '1%' }}
  kumo.configure_local_logs {{ log_dir = '{{dir}}/logs', max_segment_duration = '1s' }}
  kumo.start_esmtp_listener {{ listen = '127.0.0.1:0', hostname = 'mx.test', relay_hosts = {{ '127.0.0.1' }} }}
end)
{routed}"#,
        routed = routed(closed_port, "2s"),
    );
    let server = Builder::new(policy)
        .binary(env!("CARGO_BIN_EXE_tern"))
        .dir(dir)
        .start()
        .unwrap();
    let addr = server.listener("smtp");
    let log_dir = server.dir().join("logs");

    let mut smtp = server.smtp().unwrap();
    smtp.read_reply().unwrap();
    smtp.command("EHLO client.test").unwrap();
    let (code, reply) = smtp
        .send_message("s@example.com", "early@example.com", &body("early"))
        .unwrap();
    assert_eq!(code, 250, "{reply}");
    let early_id = reply.split("ids=").nth(1).unwrap().trim().to_string();

    // 512 KiB messages until the data spool's writes fail.
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    let line = [b'x'; 990];
    while big.len() < 512 * 1024 {
        big.extend_from_slice(&line);
        big.extend_from_slice(b"\r\n");
    }
    let mut refused = None;
    for attempt in 0..40 {
        let (code, reply) = smtp
            .send_message("s@example.com", "big@example.com", &big)
            .unwrap();
        if code != 250 {
            refused = Some((attempt, code, reply));
            break;
        }
    }
    let (attempt, code, reply) = refused.expect("6 MiB never filled up");
    assert!(
        attempt > 0,
        "the very first big message was refused: {reply}"
    );
    assert!((400..500).contains(&code), "{code} {reply}");

    // New connections are refused before the banner, naming the error.
    let mut late = SmtpClient::connect(addr).unwrap();
    let (code, banner) = late.read_reply().unwrap();
    assert_eq!(code, 421, "{banner}");
    assert!(banner.starts_with("421 4.3.2 mx.test "), "{banner}");
    assert!(banner.ends_with(". Try later\r\n"), "{banner}");
    assert!(
        banner.to_ascii_lowercase().contains("space"),
        "the reason should name the storage error: {banner}"
    );
    assert!(late.is_closed());

    // The early message's retry comes due while the spool is latched:
    // it is held, not delivered, with a Delayed record saying why.
    let deadline = Instant::now() + Duration::from_secs(30);
    let seen = wait_for_records(&log_dir, Duration::from_secs(30), |records| {
        records.iter().any(|r| {
            r["type"] == "Delayed" && r["id"] == early_id.as_str() && r["response"]["code"] == 451
        })
    });
    assert!(Instant::now() < deadline);
    let delayed = seen
        .iter()
        .find(|r| r["type"] == "Delayed" && r["id"] == early_id.as_str())
        .unwrap();
    let content = delayed["response"]["content"].as_str().unwrap();
    assert!(
        content.starts_with("KumoMTA internal: delivery suspended: spool unhealthy: "),
        "{delayed}"
    );
    assert_eq!(
        delayed["response"]["enhanced_code"],
        serde_json::json!({ "class": 4, "subject": 4, "detail": 4 })
    );
    // Nothing was delivered and the refused big message left no record.
    assert_eq!(count(&seen, "Delivery"), 0);
    let received = of_type(&seen, "Reception").len();
    assert_eq!(received, attempt + 1, "one Reception per 250");

    // Stop the server but keep its folder until the tmpfs inside it is
    // unmounted: removing a folder that still holds a mount point fails,
    // and the folder (spools, logs) would be left behind in /tmp.
    let dir = server.stop();
    drop(small);
    drop(dir);
}
