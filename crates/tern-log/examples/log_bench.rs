//! Log writer throughput: records per second through a `Logger` with the
//! default compression level (0 = zstd 3), and the bytes each record takes
//! on disk once compressed.
//!
//! Run with `cargo run --release -p tern-log --example log_bench [RECORDS]`.

use std::time::Instant;
use tern_log::{LogConfig, LogRecord, Logger, MessageInfo, Response};
use tern_types::SpoolId;
use uuid::Uuid;

fn main() -> anyhow::Result<()> {
    let count: usize = match std::env::args().nth(1) {
        Some(arg) => arg.parse()?,
        None => 500_000,
    };
    let dir = tempfile::tempdir()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let nodeid = Uuid::new_v4();
    let domains = ["gmail.com", "yahoo.com", "outlook.com", "example.org"];

    // build the records first so that only logging is timed
    let records: Vec<LogRecord> = (0..count)
        .map(|n| {
            let domain = domains[n % domains.len()];
            let rcpt = format!("user{n}@{domain}");
            let queue = format!("campaign{}:tenant@{domain}", n % 7);
            let msg = MessageInfo {
                id: SpoolId::new(),
                sender: "bounces@send.example.com",
                recipients: &[rcpt.as_str()],
                queue: &queue,
                size: 3000 + (n as u64 % 5000),
                num_attempts: (n % 3) as u32,
                reception_protocol: Some("ESMTP"),
            };
            let site = format!("ip-{}->mx.{domain}@smtp_client", n % 4);
            let reply = format!("250 2.0.0 OK {n} queued as {n:x}");
            LogRecord::delivery(
                nodeid,
                msg,
                &site,
                Response::from_smtp_reply(&reply).unwrap(),
            )
            .with_peer(format!("mx.{domain}."), "192.0.2.10")
            .with_egress("pool-1", format!("ip-{}", n % 4))
            .with_delivery_protocol("ESMTP")
            .with_session_id(Uuid::new_v4())
        })
        .collect();

    let logger = Logger::start(LogConfig::new(dir.path()))?;
    let started = Instant::now();
    runtime.block_on(async {
        for record in records {
            logger.submit(record).await?;
        }
        logger.shutdown().await?;
        anyhow::Ok(())
    })?;
    let elapsed = started.elapsed();

    let mut bytes = 0u64;
    let mut files = 0;
    for entry in std::fs::read_dir(dir.path())? {
        bytes += entry?.metadata()?.len();
        files += 1;
    }
    println!(
        "{count} records in {:.2} s: {:.0} records/s, {:.1} bytes/record on disk ({files} segment(s), compression level 0 = zstd 3)",
        elapsed.as_secs_f64(),
        count as f64 / elapsed.as_secs_f64(),
        bytes as f64 / count as f64,
    );
    Ok(())
}
