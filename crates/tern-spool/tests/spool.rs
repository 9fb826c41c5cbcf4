//! Integration tests on a real disk: round trips, the lock, enumeration,
//! group commit, bad paths, free-space refusal, and `kill -9` crash safety
//! for both spool kinds.
//!
//! The lock and crash tests re-run this test binary as a child process,
//! selected with the `TERN_SPOOL_CHILD` environment variable (see
//! [`child_entry`]).

use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_spool::{
    FreeThreshold, LocalDiskSync, Spool, SpoolConfig, SpoolError, SpoolGroup, SpoolId, SpoolKind,
};

const KINDS: [SpoolKind; 2] = [SpoolKind::LocalDisk, SpoolKind::RocksDB];

fn config(path: &Path, kind: SpoolKind) -> SpoolConfig {
    SpoolConfig::new("data", path, kind)
}

/// Deterministic content for `id`, so a parent can check what a child
/// stored without being told the bytes.
fn body_for(id: SpoolId) -> Vec<u8> {
    let hex = id.to_string();
    let len = 100 + (id.as_bytes()[15] as usize) * 13;
    hex.bytes().cycle().take(len).collect()
}

async fn collect(spool: &Spool) -> HashMap<SpoolId, Vec<u8>> {
    let mut entries = spool.enumerate();
    let mut found = HashMap::new();
    while let Some(entry) = entries.next().await {
        let entry = entry.expect("enumeration error");
        assert!(found.insert(entry.id, entry.data).is_none(), "duplicate id");
    }
    found
}

#[tokio::test]
async fn store_load_remove_round_trip() {
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&config(dir.path(), kind)).unwrap();
        let id = SpoolId::new();
        let body = Bytes::from_static(b"Subject: hi\r\n\r\nhello\r\n");
        spool.store(id, body.clone()).await.unwrap();
        assert_eq!(spool.load(id).await.unwrap(), body.to_vec(), "{kind:?}");

        // a second store replaces the value
        spool.store(id, Bytes::from_static(b"v2")).await.unwrap();
        assert_eq!(spool.load(id).await.unwrap(), b"v2", "{kind:?}");

        spool.remove(id).await.unwrap();
        assert!(
            matches!(spool.load(id).await, Err(SpoolError::NotFound(x)) if x == id),
            "{kind:?}"
        );
        assert!(
            matches!(spool.remove(id).await, Err(SpoolError::NotFound(_))),
            "{kind:?}"
        );

        let missing = SpoolId::new();
        assert!(matches!(
            spool.load(missing).await,
            Err(SpoolError::NotFound(_))
        ));
        spool.cleanup().await.unwrap();
    }
}

#[tokio::test]
async fn local_disk_uses_the_documented_layout() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&config(dir.path(), SpoolKind::LocalDisk)).unwrap();
    let id = SpoolId::new();
    spool.store(id, Bytes::from_static(b"x")).await.unwrap();
    let hex = id.to_string();
    let expected = dir
        .path()
        .join("data")
        .join(&hex[0..2])
        .join(&hex[2..4])
        .join(&hex[4..]);
    assert_eq!(std::fs::read(expected).unwrap(), b"x");
    assert_eq!(
        std::fs::read_dir(dir.path().join("new")).unwrap().count(),
        0
    );
    let pid = std::fs::read_to_string(dir.path().join("lock")).unwrap();
    assert_eq!(pid.trim(), std::process::id().to_string());

    // cleanup prunes the directories a removed message leaves empty
    spool.remove(id).await.unwrap();
    spool.cleanup().await.unwrap();
    assert!(!dir.path().join("data").join(&hex[0..2]).exists());
}

/// RocksDB spools opened in one group share a writer thread. Each still
/// behaves as its own spool: concurrent stores to both land in the right
/// database, closing one leaves the other working, and dropping them
/// releases both databases so that they can be opened again at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rocksdb_spools_sharing_a_writer_stay_separate() {
    let dir = tempfile::tempdir().unwrap();
    let open_pair = || {
        let group = SpoolGroup::new();
        let data = SpoolConfig::new("data", dir.path().join("data"), SpoolKind::RocksDB);
        let meta = SpoolConfig::new("meta", dir.path().join("meta"), SpoolKind::RocksDB);
        (
            Arc::new(Spool::open_in(&data, &group).unwrap()),
            Arc::new(Spool::open_in(&meta, &group).unwrap()),
        )
    };
    let (data, meta) = open_pair();
    let ids: Vec<SpoolId> = (0..500).map(|_| SpoolId::new()).collect();
    let stores: Vec<_> = ids
        .iter()
        .map(|&id| {
            let (data, meta) = (data.clone(), meta.clone());
            tokio::spawn(async move {
                let body = Bytes::from(format!("body of {id}"));
                let envelope = Bytes::from(format!("meta of {id}"));
                let (d, m) = tokio::join!(data.store(id, body), meta.store(id, envelope));
                d.unwrap();
                m.unwrap();
            })
        })
        .collect();
    for store in stores {
        store.await.unwrap();
    }
    let (in_data, in_meta) = (collect(&data).await, collect(&meta).await);
    assert_eq!(in_data.len(), ids.len());
    assert_eq!(in_meta.len(), ids.len());
    for id in &ids {
        assert_eq!(in_data[id], format!("body of {id}").into_bytes());
        assert_eq!(in_meta[id], format!("meta of {id}").into_bytes());
    }
    // Group commit covered many stores per sync in each database.
    assert!(data.stats().syncs < data.stats().stores);

    meta.close().await.unwrap();
    assert!(matches!(
        meta.store(SpoolId::new(), Bytes::from_static(b"late"))
            .await,
        Err(SpoolError::Closed(_))
    ));
    data.remove(ids[0]).await.unwrap();
    data.store(ids[0], Bytes::from_static(b"again"))
        .await
        .unwrap();
    assert_eq!(data.load(ids[0]).await.unwrap(), b"again");

    drop((data, meta));
    let (data, meta) = open_pair();
    assert_eq!(data.load(ids[0]).await.unwrap(), b"again");
    assert_eq!(collect(&meta).await.len(), ids.len());
}

/// A spool written by KumoMTA keeps its messages four directories down
/// (`aa/bb/cc/dd/<rest>`); Tern recovers, loads and removes them where
/// they are, beside the messages it writes itself.
#[tokio::test]
async fn local_disk_reads_kumomta_layout_beside_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let legacy = SpoolId::new();
    let hex = legacy.to_string();
    let legacy_path = dir.path().join(format!(
        "data/{}/{}/{}/{}/{}",
        &hex[0..2],
        &hex[2..4],
        &hex[4..6],
        &hex[6..8],
        &hex[8..]
    ));
    std::fs::create_dir_all(legacy_path.parent().unwrap()).unwrap();
    std::fs::write(&legacy_path, b"written by kumod").unwrap();

    let spool = Spool::open(&config(dir.path(), SpoolKind::LocalDisk)).unwrap();
    let own = SpoolId::new();
    spool.store(own, Bytes::from_static(b"tern")).await.unwrap();

    let expected = HashMap::from([
        (legacy, b"written by kumod".to_vec()),
        (own, b"tern".to_vec()),
    ]);
    assert_eq!(collect(&spool).await, expected);
    assert_eq!(spool.load(legacy).await.unwrap(), b"written by kumod");
    spool.remove(legacy).await.unwrap();
    assert!(!legacy_path.exists());
    assert!(matches!(
        spool.load(legacy).await,
        Err(SpoolError::NotFound(_))
    ));
    assert!(matches!(
        spool.remove(legacy).await,
        Err(SpoolError::NotFound(_))
    ));
    assert_eq!(spool.load(own).await.unwrap(), b"tern");
}

#[tokio::test]
async fn leftover_temp_files_are_deleted_at_open() {
    let dir = tempfile::tempdir().unwrap();
    drop(Spool::open(&config(dir.path(), SpoolKind::LocalDisk)).unwrap());
    let stale = dir.path().join("new").join(SpoolId::new().to_string());
    std::fs::write(&stale, b"half a message").unwrap();
    let spool = reopen_eventually(dir.path(), SpoolKind::LocalDisk);
    assert!(!stale.exists());
    assert!(collect(&spool).await.is_empty());
}

#[tokio::test]
async fn enumerate_returns_exactly_what_is_stored() {
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let mut expected = HashMap::new();
        {
            let spool = Spool::open(&config(dir.path(), kind)).unwrap();
            let mut ids = Vec::new();
            for _ in 0..600 {
                let id = SpoolId::new();
                let body = body_for(id);
                spool.store(id, Bytes::from(body.clone())).await.unwrap();
                expected.insert(id, body);
                ids.push(id);
            }
            for id in ids.iter().step_by(3) {
                spool.remove(*id).await.unwrap();
                expected.remove(id);
            }
            assert_eq!(collect(&spool).await, expected, "{kind:?} live");
            spool.close().await.unwrap();
            assert!(matches!(
                spool.store(SpoolId::new(), Bytes::new()).await,
                Err(SpoolError::Closed(_))
            ));
        }
        // and the same after reopening
        let spool = reopen_eventually(dir.path(), kind);
        assert_eq!(collect(&spool).await, expected, "{kind:?} reopened");
    }
}

#[tokio::test]
async fn enumeration_can_be_consumed_from_a_plain_thread() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&config(dir.path(), SpoolKind::RocksDB)).unwrap();
    for _ in 0..10 {
        spool
            .store(SpoolId::new(), Bytes::from_static(b"m"))
            .await
            .unwrap();
    }
    let mut entries = spool.enumerate();
    let count = tokio::task::spawn_blocking(move || {
        let mut count = 0;
        while let Some(entry) = entries.blocking_next() {
            entry.unwrap();
            count += 1;
        }
        count
    })
    .await
    .unwrap();
    assert_eq!(count, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_stores_share_syncs() {
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(&config(dir.path(), kind)).unwrap());
        let mut tasks = Vec::new();
        for _ in 0..2000 {
            let spool = spool.clone();
            tasks.push(tokio::spawn(async move {
                let id = SpoolId::new();
                spool.store(id, Bytes::from(body_for(id))).await.unwrap();
                id
            }));
        }
        let mut ids = HashSet::new();
        for task in tasks {
            ids.insert(task.await.unwrap());
        }
        let stats = spool.stats();
        assert_eq!(stats.stores, 2000, "{kind:?}");
        assert!(stats.commits < stats.stores / 4, "{kind:?}: {stats:?}");
        match kind {
            SpoolKind::RocksDB => assert_eq!(stats.syncs, stats.commits, "one WAL sync per batch"),
            SpoolKind::LocalDisk => {
                assert_eq!(stats.syncs, 2 * stats.commits, "two syncfs per batch")
            }
        }
        assert!(stats.syncs < stats.stores, "{kind:?}: {stats:?}");
        let found = collect(&spool).await;
        assert_eq!(
            found.keys().copied().collect::<HashSet<_>>(),
            ids,
            "{kind:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_file_strategy_batches_too() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(
        Spool::open_with(
            &config(dir.path(), SpoolKind::LocalDisk),
            LocalDiskSync::PerFile,
        )
        .unwrap(),
    );
    let mut tasks = Vec::new();
    for _ in 0..2000 {
        let spool = spool.clone();
        tasks.push(tokio::spawn(async move {
            let id = SpoolId::new();
            spool.store(id, Bytes::from(body_for(id))).await.unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let stats = spool.stats();
    assert_eq!(stats.stores, 2000);
    assert!(stats.commits < stats.stores / 4, "{stats:?}");
    // every file and every touched directory is synced individually
    assert!(stats.syncs >= stats.stores, "{stats:?}");
    assert_eq!(collect(&spool).await.len(), 2000);
}

#[tokio::test]
async fn without_flush_nothing_is_synced_but_data_is_stored() {
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), kind);
        cfg.flush = false;
        let spool = Spool::open(&cfg).unwrap();
        let id = SpoolId::new();
        spool.store(id, Bytes::from_static(b"fast")).await.unwrap();
        assert_eq!(spool.load(id).await.unwrap(), b"fast");
        let stats = spool.stats();
        assert_eq!((stats.stores, stats.syncs), (1, 0), "{kind:?}");
    }
}

#[tokio::test]
async fn a_second_open_in_process_is_refused() {
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let first = Spool::open(&config(dir.path(), kind)).unwrap();
        let err = Spool::open(&config(dir.path(), kind))
            .err()
            .expect("second open must fail");
        let text = err.to_string();
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
        assert!(text.contains(&std::process::id().to_string()), "{text}");
        drop(first);
        reopen_eventually(dir.path(), kind);
    }
}

#[test]
fn a_second_process_is_refused_with_the_holders_pid() {
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let mut child = spawn_child("hold", dir.path(), kind);
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = lines.find(|line| line.as_ref().is_ok_and(|l| l.contains("READY")));
        assert!(ready.is_some(), "child never opened the spool");
        let err = Spool::open(&config(dir.path(), kind))
            .err()
            .expect("must be locked");
        let text = err.to_string();
        assert!(text.contains(&child.id().to_string()), "{text}");
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
        child.kill().unwrap();
        child.wait().unwrap();
        // the kernel released the flock with the process
        Spool::open(&config(dir.path(), kind)).expect("open after the holder died");
    }
}

/// A RocksDB spool whose memtable holds only 64 KiB, so that its WAL is
/// switched and its memtable flushed every few dozen stores.
fn small_wal_config(path: &Path) -> SpoolConfig {
    serde_json::from_value(serde_json::json!({
        "name": "data", "path": path, "kind": "RocksDB",
        "rocks_params": {"write_buffer_size": 65536}
    }))
    .unwrap()
}

#[test]
fn kill_dash_9_loses_nothing_acknowledged() {
    // (kind, LocalDisk sync strategy, whether RocksDB switches WALs often)
    let cases = [
        (SpoolKind::LocalDisk, LocalDiskSync::SyncFs, false),
        (SpoolKind::LocalDisk, LocalDiskSync::PerFile, false),
        (SpoolKind::RocksDB, LocalDiskSync::default(), false),
        (SpoolKind::RocksDB, LocalDiskSync::default(), true),
    ];
    for (kind, sync, small_wal) in cases {
        // With small WALs the same spool is killed twice: each run switches
        // WALs and flushes memtables many times, the second run starts from
        // a recovery of the first, and the last check must find what both
        // runs acknowledged.
        let shared = tempfile::tempdir().unwrap();
        let mut acked_before = Vec::new();
        for round in 0..2 {
            let own = tempfile::tempdir().unwrap();
            let dir = if small_wal { shared.path() } else { own.path() };
            let mut child = spawn_child_with("store", dir, kind, sync, small_wal);
            let stdout = child.stdout.take().unwrap();
            let reader = std::thread::spawn(move || {
                let mut acked = Vec::new();
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    // the test harness may put its own text before the first line
                    if let Some(at) = line.find("STORED ") {
                        acked.push(line[at + 7..].trim().parse::<SpoolId>().unwrap());
                    }
                }
                acked
            });
            // let the child get going, then kill it at a random moment
            let delay = 300 + rand::random::<u64>() % 700 + round * 200;
            std::thread::sleep(Duration::from_millis(delay));
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            let mut acked = reader.join().unwrap();
            assert!(!acked.is_empty(), "{kind:?}: child acknowledged nothing");
            if small_wal {
                acked_before.extend(acked.iter().copied());
                acked = acked_before.clone();
            }

            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                let cfg = if small_wal {
                    small_wal_config(dir)
                } else {
                    config(dir, kind)
                };
                let spool = open_unlocked(&cfg).unwrap();
                let found = collect(&spool).await;
                for id in &acked {
                    let data = found
                        .get(id)
                        .unwrap_or_else(|| panic!("{kind:?}: acknowledged {id} lost"));
                    assert_eq!(data, &body_for(*id), "{kind:?}: {id} damaged");
                }
                // anything extra was stored but not yet acknowledged: it must
                // still be intact, never a torn write
                for (id, data) in &found {
                    assert_eq!(data, &body_for(*id), "{kind:?}: unacknowledged {id} torn");
                }
                eprintln!(
                    "{kind:?}/{sync:?}/small WAL {small_wal}: {} acknowledged, {} found",
                    acked.len(),
                    found.len()
                );
            });
        }
    }
}

#[test]
fn bad_paths_give_clear_errors() {
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"").unwrap();
        let err = Spool::open(&config(&file, kind))
            .err()
            .expect("a file is not a spool");
        assert_eq!(
            err.to_string(),
            format!("spool 'data': {} is not a directory", file.display())
        );

        let below_file = file.join("spool");
        let err = Spool::open(&config(&below_file, kind))
            .err()
            .expect("cannot create below a file");
        assert!(err.to_string().contains("cannot create directory"), "{err}");
        assert!(
            err.to_string().contains(&below_file.display().to_string()),
            "{err}"
        );

        // /proc refuses new directories even for root
        let unwritable = Path::new("/proc/tern-spool-test");
        let err = Spool::open(&config(unwritable, kind))
            .err()
            .expect("unwritable");
        assert!(err.to_string().contains("/proc/tern-spool-test"), "{err}");

        // A directory that exists but where nothing can be written (root
        // ignores permission bits, so /proc stands in for a read-only one).
        let err = Spool::open(&config(Path::new("/proc"), kind))
            .err()
            .expect("read-only directory");
        assert!(
            err.to_string()
                .starts_with("cannot open lock file /proc/lock: "),
            "{err}"
        );
    }
}

#[test]
fn changing_kind_on_an_existing_spool_is_refused() {
    for (first, second) in [
        (SpoolKind::LocalDisk, SpoolKind::RocksDB),
        (SpoolKind::RocksDB, SpoolKind::LocalDisk),
    ] {
        let dir = tempfile::tempdir().unwrap();
        drop(Spool::open(&config(dir.path(), first)).unwrap());
        let err = match open_unlocked(&config(dir.path(), second)) {
            Err(SpoolError::Config(text)) => text,
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("{second:?} opened a {first:?} spool"),
        };
        assert!(err.contains(&format!("holds a {first:?} spool")), "{err}");
    }
}

#[tokio::test]
async fn free_space_thresholds_refuse_reception() {
    let dir = tempfile::tempdir().unwrap();
    // a fresh directory per config: each open needs its own lock
    let open = |name: &str, space: FreeThreshold, inodes: FreeThreshold| {
        let mut cfg = config(&dir.path().join(name), SpoolKind::LocalDisk);
        cfg.min_free_space = space;
        cfg.min_free_inodes = inodes;
        Spool::open(&cfg).unwrap()
    };
    let none = FreeThreshold::Absolute(0);
    let spool = open("a", none, none);
    assert_eq!(spool.check_free_space(), Ok(()));
    let space = spool.free_space().unwrap();
    assert!(space.total_bytes > 0);

    let impossible = FreeThreshold::Absolute(space.available_bytes.saturating_mul(4).max(1 << 50));
    let full = open("b", impossible, none);
    assert_eq!(full.check_free_space().unwrap_err(), "disk is too full");
    let detail = full.explain_free_space().unwrap_err();
    assert!(detail.starts_with("disk is too full: "), "{detail}");
    assert!(detail.contains("bytes available"), "{detail}");

    let no_inodes = open("c", none, FreeThreshold::Percent(100.0));
    assert_eq!(
        no_inodes.check_free_space().unwrap_err(),
        tern_spool::DISK_TOO_FULL
    );
    let detail = no_inodes.explain_free_space().unwrap_err();
    assert!(detail.contains("inodes available"), "{detail}");
}

#[tokio::test]
async fn rocks_params_are_applied_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let cfg: SpoolConfig = serde_json::from_value(serde_json::json!({
        "name": "meta", "path": dir.path(), "kind": "RocksDB",
        "rocks_params": {"compression_type": "Zstd", "increase_parallelism": 2,
            "optimize_universal_style_compaction": 8388608, "write_buffer_size": 4194304,
            "log_level": "Warn", "limit_concurrent_stores": 2, "limit_concurrent_loads": 2,
            "limit_concurrent_removes": 2, "store_deadline": "5s"}
    }))
    .unwrap();
    let spool = Spool::open(&cfg).unwrap();
    let id = SpoolId::new();
    spool.store(id, Bytes::from(body_for(id))).await.unwrap();
    assert_eq!(spool.load(id).await.unwrap(), body_for(id));
    assert_eq!(spool.health(), Ok(()));
    spool.cleanup().await.unwrap();
    assert_eq!(spool.load(id).await.unwrap(), body_for(id));
    let options = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("OPTIONS-"))
        .expect("RocksDB writes an OPTIONS file");
    let text = std::fs::read_to_string(options.path()).unwrap();
    assert!(
        text.contains("compression=kZSTD"),
        "compression not applied"
    );
    assert!(
        text.contains("write_buffer_size=4194304"),
        "write_buffer_size not applied"
    );
    assert!(
        text.contains("compaction_style=kCompactionStyleUniversal"),
        "universal not applied"
    );
}

/// `rocks_params.log_dir` moves RocksDB's own `LOG` off the spool's
/// directory (and filesystem, in production): the parent directories are
/// created, the file is named after the spool path, and the spool directory
/// holds no `LOG`.
#[tokio::test]
async fn rocksdb_log_dir_moves_the_info_log_out_of_the_spool() {
    let dir = tempfile::tempdir().unwrap();
    let spool_path = dir.path().join("spool/data");
    let log_dir = dir.path().join("rocks/logs");
    let cfg: SpoolConfig = serde_json::from_value(serde_json::json!({
        "name": "data", "path": spool_path, "kind": "RocksDB",
        "rocks_params": {"log_dir": log_dir}
    }))
    .unwrap();
    let spool = Spool::open(&cfg).unwrap();
    let id = SpoolId::new();
    spool.store(id, Bytes::from(body_for(id))).await.unwrap();
    assert!(
        !spool_path.join("LOG").exists(),
        "RocksDB still writes LOG into the spool directory"
    );
    let logs: Vec<String> = std::fs::read_dir(&log_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        logs.iter().any(|name| name.ends_with("_data_LOG")),
        "no LOG named after the spool in {}: {logs:?}",
        log_dir.display()
    );
    drop(spool);

    // A log_dir that cannot be created names itself.
    std::fs::write(dir.path().join("file"), b"x").unwrap();
    let cfg: SpoolConfig = serde_json::from_value(serde_json::json!({
        "name": "data", "path": dir.path().join("other"), "kind": "RocksDB",
        "rocks_params": {"log_dir": dir.path().join("file/logs")}
    }))
    .unwrap();
    let err = Spool::open(&cfg).err().expect("open must fail").to_string();
    assert!(
        err.contains("cannot create the RocksDB log directory") && err.contains("file/logs"),
        "{err}"
    );
}

/// Opens a spool whose previous handle was just dropped. Another test in
/// this binary may be spawning a child at that moment: between `fork` and
/// `exec` the child shares every descriptor, including the lock's, so the
/// lock can outlive our drop by a few milliseconds.
fn reopen_eventually(path: &Path, kind: SpoolKind) -> Spool {
    open_unlocked(&config(path, kind))
        .unwrap_or_else(|err| panic!("reopen of {} failed: {err}", path.display()))
}

/// `Spool::open`, retrying for a while as long as the only error is the
/// lock (see [`reopen_eventually`]).
fn open_unlocked(cfg: &SpoolConfig) -> Result<Spool, SpoolError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Spool::open(cfg) {
            Err(SpoolError::Locked { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            outcome => return outcome,
        }
    }
}

fn spawn_child(mode: &str, path: &Path, kind: SpoolKind) -> std::process::Child {
    spawn_child_with(mode, path, kind, LocalDiskSync::default(), false)
}

fn spawn_child_with(
    mode: &str,
    path: &Path,
    kind: SpoolKind,
    sync: LocalDiskSync,
    small_wal: bool,
) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .env("TERN_SPOOL_CHILD_SYNC", format!("{sync:?}"))
        .env(
            "TERN_SPOOL_CHILD_SMALL_WAL",
            if small_wal { "1" } else { "" },
        )
        .args(["child_entry", "--exact", "--nocapture", "--test-threads=1"])
        .env("TERN_SPOOL_CHILD", mode)
        .env("TERN_SPOOL_CHILD_PATH", path)
        .env("TERN_SPOOL_CHILD_KIND", format!("{kind:?}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// Not a test of its own: the body of the child processes above. Without
/// `TERN_SPOOL_CHILD` it returns at once.
#[test]
fn child_entry() {
    let Ok(mode) = std::env::var("TERN_SPOOL_CHILD") else {
        return;
    };
    let path = std::env::var("TERN_SPOOL_CHILD_PATH").unwrap();
    let kind = match std::env::var("TERN_SPOOL_CHILD_KIND").unwrap().as_str() {
        "RocksDB" => SpoolKind::RocksDB,
        _ => SpoolKind::LocalDisk,
    };
    let sync = match std::env::var("TERN_SPOOL_CHILD_SYNC").as_deref() {
        Ok("PerFile") => LocalDiskSync::PerFile,
        _ => LocalDiskSync::SyncFs,
    };
    let cfg = if std::env::var("TERN_SPOOL_CHILD_SMALL_WAL").as_deref() == Ok("1") {
        small_wal_config(Path::new(&path))
    } else {
        config(Path::new(&path), kind)
    };
    let spool = Arc::new(Spool::open_with(&cfg, sync).unwrap());
    match mode.as_str() {
        "hold" => {
            println!("READY");
            std::thread::sleep(Duration::from_secs(60));
        }
        "store" => {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                let started = Instant::now();
                let mut tasks = Vec::new();
                for _ in 0..8 {
                    let spool = spool.clone();
                    tasks.push(tokio::spawn(async move {
                        while started.elapsed() < Duration::from_secs(30) {
                            let id = SpoolId::new();
                            spool.store(id, Bytes::from(body_for(id))).await.unwrap();
                            // printed only after the store was acknowledged
                            println!("STORED {id}");
                        }
                    }));
                }
                for task in tasks {
                    let _ = task.await;
                }
            });
        }
        other => panic!("unknown child mode {other}"),
    }
}

/// Enumerates `spool`: the ids it read, and the entries it reported as
/// unreadable. Any other error fails the test.
async fn enumerate_split(spool: &Spool) -> (Vec<SpoolId>, Vec<tern_spool::UnreadableEntry>) {
    let mut entries = spool.enumerate();
    let mut found = Vec::new();
    let mut unreadable = Vec::new();
    while let Some(item) = entries.next().await {
        match item {
            Ok(entry) => found.push(entry.id),
            Err(SpoolError::Unreadable(entry)) => unreadable.push(entry),
            Err(other) => panic!("unexpected enumeration error: {other}"),
        }
    }
    (found, unreadable)
}

/// Enumeration reports what it cannot read as `Unreadable`, and
/// `remove_unreadable` deletes exactly that, so recovery can drop it.
#[tokio::test]
async fn unreadable_local_disk_entries_are_reported_and_removable() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&config(dir.path(), SpoolKind::LocalDisk)).unwrap();
    let good = SpoolId::new();
    spool
        .store(good, Bytes::from_static(b"good"))
        .await
        .unwrap();
    let leaf = dir.path().join("data/ab/cd/ef/01");
    std::fs::create_dir_all(&leaf).unwrap();
    let bad_name = leaf.join("not-a-spool-id");
    std::fs::write(&bad_name, b"?").unwrap();
    let stray = dir.path().join("data/ab/stray-file");
    std::fs::write(&stray, b"?").unwrap();

    let (found, unreadable) = enumerate_split(&spool).await;
    assert_eq!(found, vec![good]);
    let mut locations: Vec<String> = unreadable.iter().map(|u| u.location.clone()).collect();
    locations.sort();
    let mut expected = vec![bad_name.display().to_string(), stray.display().to_string()];
    expected.sort();
    assert_eq!(locations, expected);
    for entry in &unreadable {
        assert!(!entry.reason.is_empty());
        spool.remove_unreadable(entry).await.unwrap();
    }
    assert!(!bad_name.exists() && !stray.exists());
    assert_eq!(collect(&spool).await.len(), 1);
}

#[tokio::test]
async fn unreadable_rocksdb_keys_are_reported_and_removable() {
    let dir = tempfile::tempdir().unwrap();
    {
        // A key that is not 16 bytes, written behind the spool's back.
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        let db = rocksdb::DB::open(&opts, dir.path()).unwrap();
        db.put(b"odd", b"value").unwrap();
    }
    let spool = Spool::open(&config(dir.path(), SpoolKind::RocksDB)).unwrap();
    let good = SpoolId::new();
    spool
        .store(good, Bytes::from_static(b"good"))
        .await
        .unwrap();
    let (found, unreadable) = enumerate_split(&spool).await;
    assert_eq!(found, vec![good]);
    assert_eq!(unreadable.len(), 1);
    assert_eq!(unreadable[0].location, "key 6f6464");
    spool.remove_unreadable(&unreadable[0]).await.unwrap();
    assert_eq!(collect(&spool).await.len(), 1);
}

/// Cleanup running in a loop while stores and removes go on: every store
/// succeeds, every kept message is intact, and what removes emptied is
/// pruned once traffic stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cleanup_prunes_empty_directories_while_stores_continue() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(Spool::open(&config(dir.path(), SpoolKind::LocalDisk)).unwrap());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cleaner = {
        let (spool, stop) = (spool.clone(), stop.clone());
        tokio::spawn(async move {
            let mut runs = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                spool.cleanup().await.unwrap();
                runs += 1;
            }
            runs
        })
    };
    let mut kept = Vec::new();
    for round in 0..40 {
        let ids: Vec<SpoolId> = (0..25).map(|_| SpoolId::new()).collect();
        let stores: Vec<_> = ids
            .iter()
            .map(|id| {
                let (spool, id) = (spool.clone(), *id);
                tokio::spawn(async move { spool.store(id, Bytes::from(body_for(id))).await })
            })
            .collect();
        for store in stores {
            store
                .await
                .unwrap()
                .expect("a store failed while cleanup was running");
        }
        for (n, id) in ids.into_iter().enumerate() {
            if n % 5 == round % 5 {
                kept.push(id);
            } else {
                spool.remove(id).await.unwrap();
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(cleaner.await.unwrap() > 0);
    for id in &kept {
        assert_eq!(spool.load(*id).await.unwrap(), body_for(*id));
    }
    for id in &kept {
        spool.remove(*id).await.unwrap();
    }
    spool.cleanup().await.unwrap();
    assert_eq!(
        std::fs::read_dir(dir.path().join("data")).unwrap().count(),
        0,
        "empty directories were left behind"
    );
}
