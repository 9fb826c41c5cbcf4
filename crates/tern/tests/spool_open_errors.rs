//! What the real `tern serve` does when a spool cannot be used: another
//! process holds it, its path is a file or cannot be created, or its
//! filesystem is below `min_free_inodes` (§2.1).

mod common;

use common::*;
use std::time::Duration;
use tern_testkit::{Builder, SmtpClient, TernServer};

/// A server that is expected to stop during startup: waits for it to exit
/// unsuccessfully and returns what it printed.
fn failed_startup(builder: Builder) -> String {
    let mut server = builder
        .binary(env!("CARGO_BIN_EXE_tern"))
        .no_wait()
        .start()
        .unwrap();
    let status = server.wait_exit(Duration::from_secs(30)).unwrap();
    let output = server.output();
    assert!(!status.success(), "{output}");
    assert!(!output.contains("initialization complete"), "{output}");
    output
}

/// A second `tern serve` on the spools of a running one stops with the
/// path and the pid of the process holding them.
#[test]
fn a_spool_in_use_by_another_process_stops_startup() {
    for kind in ["LocalDisk", "RocksDB"] {
        let first: TernServer = start_tern(policy_head(kind));
        let spool_root = first.dir().join("spool");
        let second = policy_head(kind).replace("{dir}/spool", &spool_root.display().to_string());
        let output = failed_startup(Builder::new(second));
        let expected = format!(
            "cannot open the data spool: spool {} is already in use by another process or \
             handle (lock held by pid {})",
            spool_root.join("data").display(),
            first.pid()
        );
        assert!(output.contains(&expected), "{kind}: {output}");
        // The first server is unharmed.
        let mut smtp = first.smtp().unwrap();
        assert_eq!(smtp.read_reply().unwrap().0, 220, "{kind}");
    }
}

#[test]
fn a_spool_path_that_is_a_file_stops_startup_naming_it() {
    let policy = policy_head("LocalDisk").replace("{dir}/spool/data", "{dir}/spool-file");
    let output = failed_startup(Builder::new(policy).file("spool-file", "not a directory"));
    assert!(
        output.contains("cannot open the data spool: spool 'data': ")
            && output.contains("/spool-file is not a directory"),
        "{output}"
    );
}

/// /proc refuses new directories even to root, which ignores permission
/// bits: it stands in for a path that cannot be created or written.
#[test]
fn a_spool_path_that_cannot_be_created_stops_startup_naming_it() {
    for (kind, path) in [
        ("LocalDisk", "/proc/tern-spool-test-meta"),
        ("RocksDB", "/proc/tern-spool-test-meta-rocks"),
    ] {
        let policy = policy_head(kind).replace("{dir}/spool/meta", path);
        let output = failed_startup(Builder::new(policy));
        assert!(
            output.contains(&format!(
                "cannot open the meta spool: spool 'meta': cannot create directory {path}: "
            )),
            "{kind}: {output}"
        );
    }
}

/// `min_free_inodes` refuses reception like `min_free_space`: SMTP gets
/// `421 4.3.2 <host> disk is too full. Try later` before the banner.
#[test]
fn min_free_inodes_refuses_smtp_with_421() {
    let policy = policy_head("LocalDisk").replace(
        "path = '{dir}/spool/meta', kind = 'LocalDisk', min_free_space = '1%'",
        "path = '{dir}/spool/meta', kind = 'LocalDisk', min_free_space = '1%', \
         min_free_inodes = '100%'",
    );
    assert!(policy.contains("min_free_inodes = '100%'"));
    let server = start_tern(policy);
    let mut smtp = SmtpClient::connect(server.listener("smtp")).unwrap();
    let (code, text) = smtp.read_reply().unwrap();
    assert_eq!(code, 421, "{text}");
    assert!(
        text.contains(" 4.3.2 ") && text.trim_end().ends_with(" disk is too full. Try later"),
        "{text}"
    );
}

/// Reception needs both spools, so Tern refuses at startup a policy that
/// defines only one (KumoMTA starts, then cannot receive).
#[test]
fn a_policy_without_a_meta_spool_is_refused() {
    let policy = policy_head("LocalDisk")
        .lines()
        .filter(|line| !line.contains("name = 'meta'"))
        .collect::<Vec<_>>()
        .join("\n");
    let output = failed_startup(Builder::new(policy));
    assert!(
        output.contains(
            "no 'meta' spool is defined: define both 'data' and 'meta' with kumo.define_spool"
        ),
        "{output}"
    );
}
