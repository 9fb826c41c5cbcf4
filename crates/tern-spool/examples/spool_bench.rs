//! Spool throughput benchmark.
//!
//! Stores N messages of 3 KB from C concurrent tasks into a fresh spool of
//! each kind, with `flush` on and off, and prints messages per second and
//! the number of syncs (group commits show up as far fewer syncs than
//! messages). Then it times enumeration of small metadata-sized records.
//!
//! ```text
//! ROCKSDB_LIB_DIR=/usr/lib/x86_64-linux-gnu \
//!   cargo run --release -p tern-spool --example spool_bench -- [N] [C] [ENUM_N] [DIR]
//! ```
//! Defaults: N = 20000, C = 64, ENUM_N = 100000, DIR = a temporary directory.

use bytes::Bytes;
use std::sync::Arc;
use std::time::Instant;
use tern_spool::{LocalDiskSync, Spool, SpoolConfig, SpoolId, SpoolKind};

fn arg(index: usize, default: usize) -> usize {
    std::env::args()
        .nth(index)
        .map(|text| text.parse().expect("numeric argument"))
        .unwrap_or(default)
}

async fn store_run(spool: Arc<Spool>, messages: usize, concurrency: usize, size: usize) -> f64 {
    let body = Bytes::from(vec![b'x'; size]);
    let started = Instant::now();
    let per_task = messages / concurrency;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let spool = spool.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_task {
                spool.store(SpoolId::new(), body.clone()).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    (per_task * concurrency) as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let messages = arg(1, 20_000);
    let concurrency = arg(2, 64);
    let enum_messages = arg(3, 100_000);
    let base = std::env::args().nth(4);
    let temp = match &base {
        Some(dir) => tempfile::tempdir_in(dir).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    println!("{messages} messages of 3 KB, {concurrency} concurrent stores");
    println!(
        "{:<34} {:>10} {:>9} {:>9}",
        "spool", "msgs/s", "commits", "syncs"
    );
    let runs = [
        (
            SpoolKind::RocksDB,
            true,
            LocalDiskSync::PerFile,
            "RocksDB flush=true",
        ),
        (
            SpoolKind::RocksDB,
            false,
            LocalDiskSync::PerFile,
            "RocksDB flush=false",
        ),
        (
            SpoolKind::LocalDisk,
            true,
            LocalDiskSync::PerFile,
            "LocalDisk flush=true (per-file)",
        ),
        (
            SpoolKind::LocalDisk,
            true,
            LocalDiskSync::SyncFs,
            "LocalDisk flush=true (syncfs)",
        ),
        (
            SpoolKind::LocalDisk,
            false,
            LocalDiskSync::PerFile,
            "LocalDisk flush=false",
        ),
    ];
    for (index, (kind, flush, sync, label)) in runs.into_iter().enumerate() {
        let mut config = SpoolConfig::new("data", temp.path().join(format!("run{index}")), kind);
        config.flush = flush;
        let spool = Arc::new(Spool::open_with(&config, sync).unwrap());
        let rate = store_run(spool.clone(), messages, concurrency, 3 * 1024).await;
        let stats = spool.stats();
        println!(
            "{label:<34} {rate:>10.0} {:>9} {:>9}",
            stats.commits, stats.syncs
        );
        spool.close().await.unwrap();
    }

    println!("\nenumeration of {enum_messages} records of 300 bytes (page cache warm)");
    for kind in [SpoolKind::RocksDB, SpoolKind::LocalDisk] {
        let mut config = SpoolConfig::new("meta", temp.path().join(format!("enum-{kind:?}")), kind);
        config.flush = false;
        let spool = Arc::new(Spool::open(&config).unwrap());
        store_run(spool.clone(), enum_messages, 64, 300).await;
        let started = Instant::now();
        let mut entries = spool.enumerate();
        let mut count = 0usize;
        while let Some(entry) = entries.next().await {
            entry.unwrap();
            count += 1;
        }
        let rate = count as f64 / started.elapsed().as_secs_f64();
        println!(
            "{:<34} {rate:>10.0} entries/s ({count} entries)",
            format!("{kind:?}")
        );
    }
}
