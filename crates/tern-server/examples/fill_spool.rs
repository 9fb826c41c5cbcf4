//! Fill a data and a meta spool with synthetic messages, for the recovery
//! and deferred-queue benchmarks (`bench/deferred-recovery.sh`).
//!
//! The messages are made `--age` old (their spool ids carry the creation
//! time), so a server that recovers them with a 20-minute retry interval
//! finds them waiting for a retry rather than due at once.
//!
//! ```text
//! cargo run --release -p tern-server --example fill_spool -- \
//!     --dir /tmp/spool --kind RocksDB --count 1000000 --age 30m
//! ```

use bytes::Bytes;
use clap::Parser;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};
use tern_message::Message;
use tern_spool::{Spool, SpoolConfig, SpoolKind};
use tern_types::{EnvelopeAddress, SpoolId};

#[derive(Parser)]
#[command(about = "Write synthetic messages into a Tern spool (data + meta)")]
struct Args {
    /// Spool root: the spools go in DIR/data and DIR/meta.
    #[arg(long)]
    dir: PathBuf,
    /// LocalDisk or RocksDB.
    #[arg(long, default_value = "RocksDB")]
    kind: String,
    #[arg(long, default_value_t = 1_000_000)]
    count: usize,
    /// Age of the messages (their creation time is now minus this).
    #[arg(long, default_value = "30m")]
    age: humantime::Duration,
    /// Size of each message body in bytes.
    #[arg(long, default_value_t = 3000)]
    size: usize,
    /// Number of recipient domains the messages spread over.
    #[arg(long, default_value_t = 100)]
    domains: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let kind: SpoolKind = serde_json::from_value(serde_json::Value::String(args.kind.clone()))?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let open = |name: &str| {
            let mut config = SpoolConfig::new(name, args.dir.join(name), kind);
            // Bulk loading: one sync at the end is enough.
            config.flush = false;
            Spool::open(&config)
        };
        let (data, meta) = (open("data")?, open("meta")?);
        let mut body = b"Subject: deferred\r\nFrom: s@example.com\r\n\r\n".to_vec();
        while body.len() < args.size {
            body.extend_from_slice(b"lorem ipsum dolor sit amet consectetur adipiscing elit\r\n");
        }
        let body = Bytes::from(body);
        let created = SystemTime::now() - Duration::from(args.age);
        let bar = indicatif::ProgressBar::new(args.count as u64);
        let sender = EnvelopeAddress::parse("s@example.com").map_err(anyhow::Error::msg)?;
        const BATCH: usize = 512;
        let mut written = 0;
        while written < args.count {
            let n = BATCH.min(args.count - written);
            let mut writes = Vec::with_capacity(n);
            for i in written..written + n {
                let rcpt = EnvelopeAddress::parse(&format!("r{i}@d{}.example", i % args.domains))
                    .map_err(anyhow::Error::msg)?;
                // Distinct timestamps (one microsecond apart): ids made
                // with one timestamp only differ in 40 random bits, which
                // collide about once in a million.
                let msg = Message::new(
                    SpoolId::with_created(created - Duration::from_micros(i as u64)),
                    sender.clone(),
                    vec![rcpt],
                    Default::default(),
                    body.clone(),
                );
                let (data, meta) = (&data, &meta);
                writes.push(async move {
                    let id = msg.id();
                    let (d, m) = tokio::join!(
                        data.store(id, msg.data()),
                        meta.store(id, Bytes::from(msg.meta_spool_bytes()))
                    );
                    d.and(m)
                });
            }
            for result in futures::future::join_all(writes).await {
                result?;
            }
            written += n;
            bar.set_position(written as u64);
        }
        bar.finish();
        data.close().await?;
        meta.close().await?;
        println!("wrote {} messages to {}", args.count, args.dir.display());
        Ok(())
    })
}
