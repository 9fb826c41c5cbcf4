//! Tern's durable message spool.
//!
//! A spool maps a [`SpoolId`] to bytes: the `data` spool holds message
//! bodies, the `meta` spool the JSON envelope. Tern's promise is that a `250`
//! means the message is on stable storage, so [`Spool::store`] returns only
//! once the bytes are durable (when `flush`, Tern's default). Durability stays
//! cheap through **group commit**: every backend funnels stores into one
//! writer thread, which takes everything queued while the previous sync ran
//! and covers the whole batch with one sync, then wakes every waiter.
//!
//! Two kinds exist, as in KumoMTA's `define_spool`:
//! * `LocalDisk` ([`local_disk`]): a file per message, written under a
//!   temporary name, synced, renamed into place and the directories synced;
//! * `RocksDB` ([`rocks`]): one `WriteBatch` per group, written with
//!   `sync = true`.
//!
//! Opening a spool creates its directory and takes an exclusive `flock` on
//! `<path>/lock` ([`lock`]); [`Spool::check_free_space`] applies the
//! `min_free_space`/`min_free_inodes` refusal ([`space`]);
//! [`Spool::enumerate`] streams every entry for recovery at startup.

pub mod config;
mod enumerate;
mod health;
pub mod local_disk;
pub mod lock;
pub mod rocks;
pub mod space;

pub use config::{CompressionType, FreeThreshold, LogLevel, RocksParams, SpoolConfig, SpoolKind};
pub use enumerate::{Enumeration, SpoolEntry};
pub use local_disk::LocalDiskSync;
pub use rocks::SpoolGroup;
pub use space::{DISK_TOO_FULL, FreeSpace};
pub use tern_types::SpoolId;

use bytes::Bytes;
use lock::SpoolLock;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;

/// Everything that can go wrong with a spool. Messages name the path or id
/// involved so that they can be logged as they are.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("spool {path} is already in use by another process or handle (lock held by pid {pid})")]
    Locked { path: PathBuf, pid: String },
    #[error("message {0} is not in the spool")]
    NotFound(SpoolId),
    #[error("{0}")]
    Storage(String),
    #[error("spool {0} is closed")]
    Closed(String),
    #[error("store of {id} was not durable within {deadline:?} (store_deadline)")]
    Deadline { id: SpoolId, deadline: Duration },
    #[error("spool unhealthy: {0}")]
    Unhealthy(String),
    #[error("{0}")]
    Config(String),
    /// An entry that enumeration found but could not turn into an id and
    /// bytes (an unreadable file, a name that is not an id, a key of the
    /// wrong size). [`Spool::remove_unreadable`] deletes it.
    #[error("unreadable spool entry {}: {}", .0.location, .0.reason)]
    Unreadable(UnreadableEntry),
}

/// Where an unreadable entry lives, so that recovery can remove it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnreadableEntry {
    /// A path (LocalDisk) or a hex key (RocksDB), for the log.
    pub location: String,
    /// Why it could not be read.
    pub reason: String,
    pub(crate) target: UnreadableTarget,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum UnreadableTarget {
    File(PathBuf),
    Key(Vec<u8>),
}

impl SpoolError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// A copy for fanning one batch failure out to every waiter.
    pub(crate) fn duplicate(&self) -> Self {
        match self {
            Self::Io { context, source } => Self::Io {
                context: context.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            Self::Locked { path, pid } => Self::Locked {
                path: path.clone(),
                pid: pid.clone(),
            },
            Self::NotFound(id) => Self::NotFound(*id),
            Self::Storage(text) => Self::Storage(text.clone()),
            Self::Closed(text) => Self::Closed(text.clone()),
            Self::Deadline { id, deadline } => Self::Deadline {
                id: *id,
                deadline: *deadline,
            },
            Self::Unhealthy(text) => Self::Unhealthy(text.clone()),
            Self::Config(text) => Self::Config(text.clone()),
            Self::Unreadable(entry) => Self::Unreadable(entry.clone()),
        }
    }
}

pub type Result<T, E = SpoolError> = std::result::Result<T, E>;

/// Counters that show how well group commit is working.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    stores: AtomicU64,
    commits: AtomicU64,
    syncs: AtomicU64,
}

impl Counters {
    pub(crate) fn add_stores(&self, n: u64) {
        self.stores.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn add_commit(&self) {
        self.commits.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add_syncs(&self, n: u64) {
        self.syncs.fetch_add(n, Ordering::Relaxed);
    }
}

/// A snapshot of [`Spool::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Stores that completed successfully.
    pub stores: u64,
    /// Group commits (batches) that contained at least one store.
    pub commits: u64,
    /// Sync system calls (`fsync`, `fdatasync`, `syncfs`, or RocksDB
    /// `sync = true` writes) made for stores.
    pub syncs: u64,
}

/// Concurrency and deadline limits from `rocks_params`; empty for LocalDisk.
#[derive(Debug, Default)]
struct Limits {
    stores: Option<Semaphore>,
    loads: Option<Semaphore>,
    removes: Option<Semaphore>,
    store_deadline: Option<Duration>,
}

impl Limits {
    /// A RocksDB spool without `rocks_params` gets every default, the
    /// 30 s `store_deadline` included.
    fn from_params(params: &RocksParams) -> Self {
        Self {
            stores: params.limit_concurrent_stores.map(Semaphore::new),
            loads: params.limit_concurrent_loads.map(Semaphore::new),
            removes: params.limit_concurrent_removes.map(Semaphore::new),
            store_deadline: Some(params.store_deadline),
        }
    }
}

async fn permit(sem: &Option<Semaphore>) -> Option<tokio::sync::SemaphorePermit<'_>> {
    match sem {
        // The semaphores are never closed, so acquire cannot fail.
        Some(sem) => sem.acquire().await.ok(),
        None => None,
    }
}

enum Backend {
    LocalDisk(local_disk::LocalDisk),
    Rocks(rocks::Rocks),
}

/// An open spool of either kind. Cheap to share behind an `Arc`; every
/// method takes `&self`.
pub struct Spool {
    // Field order matters: the backend (writer thread, database) must be
    // shut down before the lock is released.
    backend: Backend,
    limits: Limits,
    counters: Arc<Counters>,
    config: SpoolConfig,
    /// The last [`Spool::check_free_space`] verdict and when it was taken.
    free_space_verdict: parking_lot::Mutex<Option<(std::time::Instant, bool)>>,
    _lock: SpoolLock,
}

/// How long a free-space verdict is reused. Reception checks before every
/// message; at tens of thousands of messages per second a `statvfs` each
/// time was a measurable share of the CPU, and the disk does not fill in
/// 50 ms in a way that a write error would not catch anyway.
const FREE_SPACE_VERDICT_TTL: std::time::Duration = std::time::Duration::from_millis(50);

impl Spool {
    /// Opens (creating if needed) the spool described by `config` and takes
    /// its lock. Blocking: call it at startup or from a blocking thread.
    pub fn open(config: &SpoolConfig) -> Result<Self> {
        Self::open_with(config, LocalDiskSync::default())
    }

    /// As [`Spool::open`], for spools that work together (the server's
    /// `data` and `meta`): RocksDB spools opened in one `group` share a
    /// writer thread, so both halves of a message are committed in the
    /// same turn ([`SpoolGroup`]).
    pub fn open_in(config: &SpoolConfig, group: &SpoolGroup) -> Result<Self> {
        Self::open_full(config, LocalDiskSync::default(), group)
    }

    /// As [`Spool::open`], choosing how a LocalDisk spool syncs a batch
    /// (ignored for RocksDB). Used by the benchmark to compare strategies.
    pub fn open_with(config: &SpoolConfig, sync: LocalDiskSync) -> Result<Self> {
        Self::open_full(config, sync, &SpoolGroup::new())
    }

    fn open_full(config: &SpoolConfig, sync: LocalDiskSync, group: &SpoolGroup) -> Result<Self> {
        config.validate().map_err(SpoolError::Config)?;
        let path = &config.path;
        // Said plainly: create_dir_all would only report "File exists".
        if path.exists() && !path.is_dir() {
            return Err(not_a_directory(config));
        }
        std::fs::create_dir_all(path).map_err(|err| {
            SpoolError::io(
                format!(
                    "spool '{}': cannot create directory {}",
                    config.name,
                    path.display()
                ),
                err,
            )
        })?;
        if !path.is_dir() {
            return Err(not_a_directory(config));
        }
        let lock = SpoolLock::acquire(path)?;
        check_kind_matches(config)?;
        let counters = Arc::new(Counters::default());
        let backend = match config.kind {
            SpoolKind::LocalDisk => Backend::LocalDisk(local_disk::LocalDisk::open(
                path,
                config.flush,
                sync,
                counters.clone(),
            )?),
            SpoolKind::RocksDB => {
                let params = config.rocks_params.clone().unwrap_or_default();
                Backend::Rocks(rocks::Rocks::open(
                    path,
                    config.flush,
                    &params,
                    group,
                    counters.clone(),
                )?)
            }
        };
        let limits = match config.kind {
            SpoolKind::LocalDisk => Limits::default(),
            SpoolKind::RocksDB => {
                Limits::from_params(&config.rocks_params.clone().unwrap_or_default())
            }
        };
        Ok(Self {
            backend,
            limits,
            counters,
            config: config.clone(),
            free_space_verdict: parking_lot::Mutex::new(None),
            _lock: lock,
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn path(&self) -> &Path {
        &self.config.path
    }

    pub fn config(&self) -> &SpoolConfig {
        &self.config
    }

    /// Stores `bytes` under `id`, replacing any previous value. Returns once
    /// the write is durable (with `flush`) or at least handed to the OS
    /// (without). Concurrent stores share one sync.
    pub async fn store(&self, id: SpoolId, bytes: Bytes) -> Result<()> {
        let _permit = permit(&self.limits.stores).await;
        let pending = match &self.backend {
            Backend::LocalDisk(disk) => disk.submit_store(id, bytes),
            Backend::Rocks(rocks) => rocks.submit_store(id, bytes),
        }?;
        let outcome = match self.limits.store_deadline {
            Some(deadline) => match tokio::time::timeout(deadline, pending).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    if let Backend::Rocks(rocks) = &self.backend {
                        rocks.note_timeout(id, deadline);
                    }
                    return Err(SpoolError::Deadline { id, deadline });
                }
            },
            None => pending.await,
        };
        outcome.unwrap_or_else(|_| Err(SpoolError::Closed(self.config.name.clone())))
    }

    /// Reads the bytes stored under `id`.
    pub async fn load(&self, id: SpoolId) -> Result<Vec<u8>> {
        let _permit = permit(&self.limits.loads).await;
        match &self.backend {
            Backend::LocalDisk(disk) => disk.load(id).await,
            Backend::Rocks(rocks) => rocks.load(id).await,
        }
    }

    /// Deletes `id`. Not synced: a delete lost in a crash only brings the
    /// message back for a duplicate delivery, never loses one.
    pub async fn remove(&self, id: SpoolId) -> Result<()> {
        let _permit = permit(&self.limits.removes).await;
        match &self.backend {
            Backend::LocalDisk(disk) => disk.remove(id).await,
            Backend::Rocks(rocks) => rocks.remove(id).await,
        }
    }

    /// Streams every stored entry, produced on a dedicated thread.
    pub fn enumerate(&self) -> Enumeration {
        match &self.backend {
            Backend::LocalDisk(disk) => disk.enumerate(),
            Backend::Rocks(rocks) => rocks.enumerate(),
        }
    }

    /// Deletes an entry that [`Spool::enumerate`] reported as
    /// [`SpoolError::Unreadable`]. Recovery does this so that an entry it
    /// can never deliver does not come back at every start.
    pub async fn remove_unreadable(&self, entry: &UnreadableEntry) -> Result<()> {
        let _permit = permit(&self.limits.removes).await;
        match (&self.backend, &entry.target) {
            (Backend::LocalDisk(disk), UnreadableTarget::File(path)) => {
                disk.remove_file(path.clone()).await
            }
            (Backend::Rocks(rocks), UnreadableTarget::Key(key)) => {
                rocks.remove_key(key.clone()).await
            }
            _ => Err(SpoolError::Storage(format!(
                "{} does not belong to spool {}",
                entry.location, self.config.name
            ))),
        }
    }

    /// Periodic maintenance (the server runs it every 10 minutes):
    /// LocalDisk syncs directories dirtied by removes and prunes empty
    /// `aa/bb` directories (never while a store is placing a file);
    /// RocksDB flushes its memtables and compacts away deleted messages.
    pub async fn cleanup(&self) -> Result<()> {
        match &self.backend {
            Backend::LocalDisk(disk) => disk.cleanup().await,
            Backend::Rocks(rocks) => rocks.cleanup().await,
        }
    }

    /// `Err("disk is too full")` when the filesystem holding the spool is
    /// below `min_free_space` or `min_free_inodes` (or cannot be checked).
    /// The text is exactly [`DISK_TOO_FULL`], ready for `421 4.3.2 <host>
    /// disk is too full. Try later`; [`Spool::explain_free_space`] gives the
    /// figures for the log.
    /// The verdict is reused for [`FREE_SPACE_VERDICT_TTL`].
    pub fn check_free_space(&self) -> Result<(), String> {
        let now = std::time::Instant::now();
        if let Some((taken, ok)) = *self.free_space_verdict.lock()
            && now.duration_since(taken) < FREE_SPACE_VERDICT_TTL
        {
            return if ok {
                Ok(())
            } else {
                Err(DISK_TOO_FULL.to_string())
            };
        }
        let verdict = self.explain_free_space();
        *self.free_space_verdict.lock() = Some((now, verdict.is_ok()));
        verdict.map_err(|_| DISK_TOO_FULL.to_string())
    }

    /// As [`Spool::check_free_space`], with the figures: `Err("disk is too
    /// full: 1234 bytes available, min_free_space requires 5678")`.
    pub fn explain_free_space(&self) -> Result<(), String> {
        let space = space::free_space(&self.config.path).map_err(|err| {
            format!(
                "{DISK_TOO_FULL}: cannot statvfs {}: {err}",
                self.config.path.display()
            )
        })?;
        space::evaluate(
            &space,
            self.config.min_free_space,
            self.config.min_free_inodes,
        )
    }

    /// Raw `statvfs` figures for the spool's filesystem.
    pub fn free_space(&self) -> Result<FreeSpace> {
        space::free_space(&self.config.path).map_err(|err| {
            SpoolError::io(
                format!("cannot statvfs {}", self.config.path.display()),
                err,
            )
        })
    }

    /// `Err(reason)` while a RocksDB spool is latched unhealthy after write
    /// errors (see `error_latch_duration`); always `Ok` for LocalDisk.
    pub fn health(&self) -> Result<(), String> {
        match &self.backend {
            Backend::LocalDisk(_) => Ok(()),
            Backend::Rocks(rocks) => rocks.health(),
        }
    }

    /// Makes everything written so far durable (including lazy deletes)
    /// and stops the writer; later stores fail with `Closed`. The lock is
    /// released when the `Spool` is dropped.
    pub async fn close(&self) -> Result<()> {
        match &self.backend {
            Backend::LocalDisk(disk) => disk.close().await,
            Backend::Rocks(rocks) => rocks.close().await,
        }
    }

    pub fn stats(&self) -> SpoolStats {
        SpoolStats {
            stores: self.counters.stores.load(Ordering::Relaxed),
            commits: self.counters.commits.load(Ordering::Relaxed),
            syncs: self.counters.syncs.load(Ordering::Relaxed),
        }
    }
}

fn not_a_directory(config: &SpoolConfig) -> SpoolError {
    SpoolError::Config(format!(
        "spool '{}': {} is not a directory",
        config.name,
        config.path.display()
    ))
}

/// Refuses to open a directory that holds the other kind of spool: after a
/// `kind` change the messages already stored would otherwise be silently
/// invisible (never delivered) until someone noticed.
fn check_kind_matches(config: &SpoolConfig) -> Result<()> {
    let path = &config.path;
    let looks_like_rocks = path.join("CURRENT").exists();
    let looks_like_local = path.join("data").is_dir() && path.join("new").is_dir();
    let found = match config.kind {
        SpoolKind::LocalDisk if looks_like_rocks => "RocksDB",
        SpoolKind::RocksDB if looks_like_local => "LocalDisk",
        _ => return Ok(()),
    };
    Err(SpoolError::Config(format!(
        "spool '{}': {} holds a {found} spool but kind = '{:?}'; \
         drain it or point path elsewhere before changing kind",
        config.name,
        path.display(),
        config.kind
    )))
}

/// What a store waits on: the writer thread's verdict for its batch.
pub(crate) type Pending = tokio::sync::oneshot::Receiver<Result<()>>;

/// Runs `work` on tokio's blocking pool and flattens a join failure into a
/// `SpoolError`.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|err| Err(SpoolError::Storage(format!("spool task failed: {err}"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `rocks_params` left out means every RocksDB default, not none of
    /// them: a store still fails after the 30 s `store_deadline` instead
    /// of hanging the session. LocalDisk has no deadline.
    #[test]
    fn rocksdb_without_rocks_params_gets_the_default_store_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let rocks = Spool::open(&SpoolConfig::new(
            "data",
            dir.path().join("r"),
            SpoolKind::RocksDB,
        ))
        .unwrap();
        assert_eq!(rocks.limits.store_deadline, Some(Duration::from_secs(30)));
        let local = Spool::open(&SpoolConfig::new(
            "data",
            dir.path().join("l"),
            SpoolKind::LocalDisk,
        ))
        .unwrap();
        assert_eq!(local.limits.store_deadline, None);
    }
}
