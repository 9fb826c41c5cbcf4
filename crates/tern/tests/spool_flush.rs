//! `define_spool`'s `flush` reaches the spool through the real server: by
//! default (Tern: `true`) the store behind a `250` is synced; `flush =
//! false` (KumoMTA's default) stores without any sync. The server prints
//! each spool's counters when it shuts down.

mod common;

use common::*;

/// The `(stores, syncs)` the server reported for `spool` at shutdown.
fn spool_counters(output: &str, spool: &str) -> (u64, u64) {
    let prefix = format!("spool {spool}: ");
    let line = output
        .lines()
        .find(|line| line.contains(&prefix) && line.contains("syncs) since startup"))
        .unwrap_or_else(|| panic!("no counters for {spool}: {output}"));
    let rest = line.split(&prefix).nth(1).unwrap();
    let stores = rest.split_whitespace().next().unwrap().parse().unwrap();
    let syncs = rest
        .split('(')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no sync count in {line}"));
    (stores, syncs)
}

#[test]
fn flush_defaults_to_true_and_false_skips_every_sync() {
    for kind in ["LocalDisk", "RocksDB"] {
        for flush in [None, Some(false)] {
            let mut policy = policy_head(kind) + &routed(closed_port(), "1h");
            if let Some(flush) = flush {
                policy = policy.replace(
                    &format!("kind = '{kind}',"),
                    &format!("kind = '{kind}', flush = {flush},"),
                );
                assert_eq!(policy.matches("flush = false").count(), 2);
            }
            let server = start_tern(policy);
            let mut smtp = server.smtp().unwrap();
            smtp.read_reply().unwrap();
            smtp.command("EHLO test").unwrap();
            let (code, reply) = smtp
                .send_message("s@example.com", "r@example.com", &body("flush"))
                .unwrap();
            assert_eq!(code, 250, "{reply}");
            smtp.command("QUIT").unwrap();
            server.signal(libc::SIGTERM);
            server
                .wait_for_line("shutdown complete", std::time::Duration::from_secs(20))
                .unwrap();
            let output = server.output();
            let (stores, syncs) = spool_counters(&output, "data");
            assert_eq!(stores, 1, "{kind} flush={flush:?}: {output}");
            match flush {
                None => assert!(syncs >= 1, "{kind}: the 250 was not synced: {output}"),
                Some(_) => assert_eq!(syncs, 0, "{kind}: flush = false synced"),
            }
            let (meta_stores, meta_syncs) = spool_counters(&output, "meta");
            assert!(meta_stores >= 1, "{kind}: {output}");
            if flush.is_some() {
                assert_eq!(meta_syncs, 0, "{kind}: flush = false synced meta");
            } else {
                assert!(meta_syncs >= 1, "{kind}: meta not synced: {output}");
            }
        }
    }
}
