//! Periodic spool maintenance (§2.2): every 10 minutes, run `cleanup()` on
//! each spool.
//!
//! For a LocalDisk spool that makes the unlinks of delivered messages
//! durable and prunes the `aa/bb` directories they left empty (a
//! spool that once held millions of messages would otherwise keep
//! thousands of empty directories that every enumeration walks); for a
//! RocksDB spool it flushes the memtables and, when most of the files are
//! dead, compacts away the tombstones of delivered messages. The task is its own tokio task, the
//! work runs on blocking threads, and a failure is logged and retried at
//! the next run: maintenance must never take the server down.

use std::sync::Arc;
use std::time::Duration;
use tern_spool::Spool;
use tokio::sync::watch;

/// KumoMTA's interval between maintenance runs.
pub const SPOOL_MAINTENANCE_INTERVAL: Duration = Duration::from_secs(600);

/// Starts the maintenance task over the spools `spools` picks out of
/// `holder` (the `Reception` owns them), running every `every` until
/// `shutdown` turns true. The first run is one interval after the start:
/// recovery has just walked the spool, so there is nothing to gain from
/// running at once.
pub fn spawn_spool_maintenance<T: Send + Sync + 'static>(
    holder: Arc<T>,
    spools: fn(&T) -> Vec<&Spool>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick completes at once; skip it (see above).
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                return;
            }
            for spool in spools(&holder) {
                let started = std::time::Instant::now();
                match spool.cleanup().await {
                    Ok(()) => tracing::debug!(
                        "spool {}: maintenance done in {:.3}s",
                        spool.name(),
                        started.elapsed().as_secs_f64()
                    ),
                    Err(err) => {
                        tracing::error!("spool {}: maintenance failed: {err}", spool.name())
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tern_spool::{SpoolConfig, SpoolId, SpoolKind};

    /// The task runs cleanup on every spool it was given, repeatedly, and
    /// stops at shutdown: directories emptied by removes disappear
    /// without anyone calling cleanup by hand.
    #[tokio::test]
    async fn maintenance_prunes_emptied_directories_periodically() {
        let dir = std::env::temp_dir().join(format!(
            "tern-maintenance-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let open = |name: &str| {
            Spool::open(&SpoolConfig::new(
                name,
                dir.join(name),
                SpoolKind::LocalDisk,
            ))
            .unwrap()
        };
        let spools = Arc::new((open("data"), open("meta")));
        let (tx, rx) = watch::channel(false);
        let task = spawn_spool_maintenance(
            spools.clone(),
            |pair| vec![&pair.0, &pair.1],
            Duration::from_millis(50),
            rx,
        );
        for round in 0..2 {
            let id = SpoolId::new();
            for spool in [&spools.0, &spools.1] {
                spool.store(id, Bytes::from_static(b"x")).await.unwrap();
                spool.remove(id).await.unwrap();
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            let empty = |name: &str| {
                std::fs::read_dir(dir.join(name).join("data"))
                    .unwrap()
                    .count()
                    == 0
            };
            while !(empty("data") && empty("meta")) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "round {round}: maintenance did not prune the emptied directories"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        tx.send_replace(true);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("maintenance stops at shutdown")
            .unwrap();
        drop(spools);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
