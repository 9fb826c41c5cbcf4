//! The `RocksDB` spool kind: key = the id's 16 bytes, value = the stored
//! bytes, in a RocksDB database at the spool path.
//!
//! Group commit: stores and removes go to one writer thread, which drains
//! everything queued into a single `WriteBatch` per database and writes it
//! with `sync = true` (when `flush` and the batch holds a store), so one WAL
//! fdatasync covers every message in the batch; then it wakes the waiters.
//! Removes ride along with stores and are never synced on their own (a lost
//! delete is a duplicate delivery, not a loss). Loads and enumeration read
//! the database directly from blocking threads.
//!
//! Spools opened in one [`SpoolGroup`] (the server's `data` and `meta`)
//! share the writer thread: both halves of a message are then committed in
//! the same turn and their stores complete together, with one thread to
//! wake instead of two.
//!
//! Linked to the system `librocksdb` (Debian's 7.8) through the `rocksdb`
//! crate 0.20.x; see `build.rs`.

use crate::config::{CompressionType, LogLevel, RocksParams};
use crate::enumerate::{self, Enumeration, SpoolEntry};
use crate::health::HealthGate;
use crate::{
    Counters, Pending, Result, SpoolError, SpoolId, UnreadableEntry, UnreadableTarget, blocking,
};
use bytes::Bytes;
use parking_lot::Mutex;
use rocksdb::{DB, DBCompressionType, ErrorKind, IteratorMode, Options, WriteBatch, WriteOptions};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Most requests folded into one `WriteBatch`.
const MAX_BATCH: usize = 4096;

/// How long a synced commit may wait for more stores (group commit):
/// about one sync's wall time on the machines measured.
const COMMIT_DELAY: Duration = Duration::from_micros(250);

/// Stores per second from which [`COMMIT_DELAY`] is used: at this rate
/// about two more stores arrive during the delay. Below it (a lone
/// client) a commit never waits.
const COMMIT_DELAY_MIN_RATE: f64 = 10_000.0;

/// Measures the rate of stores over short windows and says whether a
/// synced commit should wait for company (Postgres' `commit_delay`, made
/// adaptive so that light traffic pays no latency).
#[derive(Debug)]
struct CommitPacer {
    window_start: Option<Instant>,
    window_stores: u64,
    rate: f64,
}

impl Default for CommitPacer {
    fn default() -> Self {
        Self {
            window_start: None,
            window_stores: 0,
            rate: 0.0,
        }
    }
}

/// How often the measured rate is renewed.
const RATE_WINDOW: Duration = Duration::from_millis(100);

impl CommitPacer {
    fn delay(&self) -> Duration {
        if self.rate >= COMMIT_DELAY_MIN_RATE {
            COMMIT_DELAY
        } else {
            Duration::ZERO
        }
    }

    /// A commit of `stores` stores is about to happen at `now`.
    fn record(&mut self, stores: u64, now: Instant) {
        let start = *self.window_start.get_or_insert(now);
        self.window_stores += stores;
        let elapsed = now.duration_since(start);
        if elapsed >= RATE_WINDOW {
            self.rate = self.window_stores as f64 / elapsed.as_secs_f64();
            self.window_start = Some(now);
            self.window_stores = 0;
        }
    }
}

/// Which database of a shared writer a request is for.
type Slot = usize;

enum Request {
    /// A database joins the writer; requests for `slot` follow. `path`
    /// names it in the errors of requests that arrive after it detached.
    Attach {
        slot: Slot,
        path: String,
        state: Box<DbState>,
    },
    Store {
        slot: Slot,
        id: SpoolId,
        bytes: Bytes,
        done: oneshot::Sender<Result<()>>,
    },
    Remove {
        slot: Slot,
        id: SpoolId,
        done: oneshot::Sender<Result<()>>,
    },
    /// Commit what is pending for `slot`, then stop touching it (the
    /// writer drops its handle on the database); `done` says when.
    Detach {
        slot: Slot,
        done: std::sync::mpsc::SyncSender<()>,
    },
    /// Every database has detached: the thread ends.
    Shutdown,
}

/// Spools that work together, opened with `Spool::open_in`: RocksDB spools
/// of one group share a writer thread (see the module documentation).
#[derive(Default)]
pub struct SpoolGroup {
    writer: Mutex<Option<Arc<SharedWriter>>>,
}

impl SpoolGroup {
    pub fn new() -> Self {
        Self::default()
    }

    fn writer(&self) -> Result<Arc<SharedWriter>> {
        let mut writer = self.writer.lock();
        if let Some(writer) = &*writer {
            return Ok(writer.clone());
        }
        let started = Arc::new(SharedWriter::start()?);
        *writer = Some(started.clone());
        Ok(started)
    }
}

/// The writer thread and the way to it; the thread ends when the last
/// spool using it is dropped.
struct SharedWriter {
    tx: mpsc::Sender<Request>,
    handle: Mutex<Option<JoinHandle<()>>>,
    next_slot: AtomicUsize,
}

impl SharedWriter {
    fn start() -> Result<Self> {
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("spool-rocks-writer".into())
            .spawn(move || Writer::default().run(rx))
            .map_err(|err| SpoolError::io("cannot start spool writer thread", err))?;
        Ok(Self {
            tx,
            handle: Mutex::new(Some(handle)),
            next_slot: Default::default(),
        })
    }
}

impl Drop for SharedWriter {
    fn drop(&mut self) {
        let _ = self.tx.send(Request::Shutdown);
        if let Some(handle) = self.handle.lock().take() {
            let _ = handle.join();
        }
    }
}

pub(crate) struct Rocks {
    db: Arc<DB>,
    writer: Arc<SharedWriter>,
    slot: Slot,
    /// Set once the writer has let go of this database.
    detached: AtomicBool,
    gate: Arc<HealthGate>,
    path: String,
}

fn storage_error(context: &str, err: rocksdb::Error) -> SpoolError {
    SpoolError::Storage(format!("{context}: {err}"))
}

fn is_fatal(err: &rocksdb::Error) -> bool {
    matches!(err.kind(), ErrorKind::Corruption | ErrorKind::IOError)
}

/// RocksDB options for `params`, plus Tern's fixed choices.
pub(crate) fn options(params: &RocksParams) -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    // Reused WAL files are overwritten in place, so the sync before each
    // 250 does not also have to write a file-size change (on ext4 about
    // half the cost of an fdatasync). Debian's RocksDB 7.8 ignores this
    // under its default point-in-time recovery (its LOG says
    // `recycle_log_file_num: 0`); upstream made the two compatible in 9.x,
    // where it takes effect. The one 7.8 mode that keeps reuse, skipping
    // corrupt records, was tried and rejected: after a kill -9 its
    // recovery of a reused WAL can spin forever (docs/spool.md).
    opts.set_recycle_log_file_num(4);
    if let Some(threads) = params.increase_parallelism {
        opts.increase_parallelism(threads);
    }
    if let Some(budget) = params.optimize_level_style_compaction {
        opts.optimize_level_style_compaction(budget);
    }
    if let Some(budget) = params.optimize_universal_style_compaction {
        opts.optimize_universal_style_compaction(budget);
    }
    opts.set_paranoid_checks(params.paranoid_checks);
    opts.set_compression_type(match params.compression_type {
        CompressionType::None => DBCompressionType::None,
        CompressionType::Snappy => DBCompressionType::Snappy,
        CompressionType::Zlib => DBCompressionType::Zlib,
        CompressionType::Bz2 => DBCompressionType::Bz2,
        CompressionType::Lz4 => DBCompressionType::Lz4,
        CompressionType::Lz4hc => DBCompressionType::Lz4hc,
        CompressionType::Zstd => DBCompressionType::Zstd,
    });
    if let Some(size) = params.compaction_readahead_size {
        opts.set_compaction_readahead_size(size);
    }
    if let Some(dynamic) = params.level_compaction_dynamic_level_bytes {
        opts.set_level_compaction_dynamic_level_bytes(dynamic);
    }
    if let Some(files) = params.max_open_files {
        opts.set_max_open_files(files);
    }
    if let Some(size) = params.write_buffer_size {
        opts.set_write_buffer_size(size);
    }
    if let Some(trigger) = params.level0_stop_writes_trigger {
        opts.set_level_zero_stop_writes_trigger(trigger);
    }
    opts.set_log_level(match params.log_level {
        LogLevel::Debug => rocksdb::LogLevel::Debug,
        LogLevel::Info => rocksdb::LogLevel::Info,
        LogLevel::Warn => rocksdb::LogLevel::Warn,
        LogLevel::Error => rocksdb::LogLevel::Error,
        LogLevel::Fatal => rocksdb::LogLevel::Fatal,
        LogLevel::Header => rocksdb::LogLevel::Header,
    });
    if let Some(size) = params.memtable_huge_page_size {
        opts.set_memtable_huge_page_size(size);
    }
    if let Some(dir) = &params.log_dir {
        opts.set_db_log_dir(dir);
    }
    opts.set_log_file_time_to_roll(params.log_file_time_to_roll.as_secs() as usize);
    opts.set_delete_obsolete_files_period_micros(
        params
            .obsolete_files_period
            .as_micros()
            .min(u64::MAX as u128) as u64,
    );
    opts
}

/// Whether a full compaction is worth its I/O: at least 64 MiB of SST
/// files of which more than half is dead.
fn worth_compacting(total_sst_bytes: u64, live_bytes: u64) -> bool {
    const MIN_GARBAGE: u64 = 64 * 1024 * 1024;
    total_sst_bytes >= MIN_GARBAGE && total_sst_bytes > live_bytes.saturating_mul(2)
}

impl Rocks {
    pub(crate) fn open(
        path: &Path,
        flush: bool,
        params: &RocksParams,
        group: &SpoolGroup,
        counters: Arc<Counters>,
    ) -> Result<Self> {
        if let Some(dir) = &params.log_dir {
            // RocksDB creates only the last component.
            std::fs::create_dir_all(dir).map_err(|err| {
                SpoolError::io(
                    format!("cannot create the RocksDB log directory {}", dir.display()),
                    err,
                )
            })?;
        }
        let db = DB::open(&options(params), path).map_err(|err| {
            storage_error(
                &format!("cannot open RocksDB spool {}", path.display()),
                err,
            )
        })?;
        let db = Arc::new(db);
        let gate = Arc::new(HealthGate::new(params));
        let writer = group.writer()?;
        let slot = writer.next_slot.fetch_add(1, Ordering::Relaxed);
        let state = Box::new(DbState {
            db: db.clone(),
            flush,
            gate: gate.clone(),
            counters,
            batch: WriteBatch::default(),
            waiters: Vec::new(),
            stores: 0,
        });
        writer
            .tx
            .send(Request::Attach {
                slot,
                path: path.display().to_string(),
                state,
            })
            .map_err(|_| SpoolError::Storage("spool writer stopped".into()))?;
        Ok(Self {
            db,
            writer,
            slot,
            detached: Default::default(),
            gate,
            path: path.display().to_string(),
        })
    }

    fn send(&self, request: Request) -> Result<()> {
        if self.detached.load(Ordering::Acquire) {
            return Err(SpoolError::Closed(self.path.clone()));
        }
        self.writer
            .tx
            .send(request)
            .map_err(|_| SpoolError::Closed(self.path.clone()))
    }

    /// Asks the writer to commit what is pending for this database and let
    /// go of it; later requests fail with `Closed`. The receiver hears when
    /// that is done. `None` when already asked (or the writer is gone).
    fn request_detach(&self) -> Option<std::sync::mpsc::Receiver<()>> {
        if self.detached.swap(true, Ordering::AcqRel) {
            return None;
        }
        let (done, detached) = std::sync::mpsc::sync_channel(1);
        let request = Request::Detach {
            slot: self.slot,
            done,
        };
        self.writer.tx.send(request).ok().map(|()| detached)
    }

    pub(crate) fn submit_store(&self, id: SpoolId, bytes: Bytes) -> Result<Pending> {
        self.gate.check().map_err(SpoolError::Unhealthy)?;
        let (done, pending) = oneshot::channel();
        self.send(Request::Store {
            slot: self.slot,
            id,
            bytes,
            done,
        })?;
        Ok(pending)
    }

    pub(crate) fn note_timeout(&self, id: SpoolId, deadline: Duration) {
        self.gate.record_error(
            false,
            format!(
                "RocksDB spool {}: store of {id} took longer than {deadline:?}",
                self.path
            ),
        );
    }

    pub(crate) fn health(&self) -> Result<(), String> {
        self.gate.check()
    }

    pub(crate) async fn load(&self, id: SpoolId) -> Result<Vec<u8>> {
        let db = self.db.clone();
        blocking(move || match db.get_pinned(id.as_bytes()) {
            Ok(Some(value)) => Ok(value.to_vec()),
            Ok(None) => Err(SpoolError::NotFound(id)),
            Err(err) => Err(storage_error(&format!("cannot load {id}"), err)),
        })
        .await
    }

    pub(crate) async fn remove(&self, id: SpoolId) -> Result<()> {
        // RocksDB deletes are blind; look first so that removing a missing
        // id reports NotFound like the LocalDisk kind does.
        let db = self.db.clone();
        let present = blocking(move || {
            db.get_pinned(id.as_bytes())
                .map(|value| value.is_some())
                .map_err(|err| storage_error(&format!("cannot look up {id}"), err))
        })
        .await?;
        if !present {
            return Err(SpoolError::NotFound(id));
        }
        let (done, pending) = oneshot::channel();
        self.send(Request::Remove {
            slot: self.slot,
            id,
            done,
        })?;
        pending
            .await
            .unwrap_or_else(|_| Err(SpoolError::Closed(self.path.clone())))
    }

    pub(crate) fn enumerate(&self) -> Enumeration {
        let db = self.db.clone();
        enumerate::spawn("rocksdb", move |producer| {
            for item in db.iterator(IteratorMode::Start) {
                let keep_going = match item {
                    Ok((key, value)) => match <[u8; 16]>::try_from(&key[..]) {
                        Ok(bytes) => producer.push(SpoolEntry {
                            id: SpoolId::from_uuid(uuid_from(bytes)),
                            data: value.into_vec(),
                        }),
                        Err(_) => producer.error(SpoolError::Unreadable(UnreadableEntry {
                            location: format!("key {}", hex(&key)),
                            reason: format!("a {}-byte key is not a spool id", key.len()),
                            target: UnreadableTarget::Key(key.to_vec()),
                        })),
                    },
                    Err(err) => {
                        producer.error(storage_error("cannot iterate the RocksDB spool", err));
                        false
                    }
                };
                if !keep_going {
                    break;
                }
            }
        })
    }

    /// Deletes a key that enumeration could not turn into a spool id.
    pub(crate) async fn remove_key(&self, key: Vec<u8>) -> Result<()> {
        let db = self.db.clone();
        blocking(move || {
            db.delete(&key)
                .map_err(|err| storage_error("cannot delete from the RocksDB spool", err))
        })
        .await
    }

    /// Flushes the memtables to SST files (so old WAL files can go)
    /// and compacts the whole key range: a spool is a queue, and the
    /// tombstones its deliveries leave behind otherwise linger until
    /// RocksDB's own size triggers fire.
    pub(crate) async fn cleanup(&self) -> Result<()> {
        let db = self.db.clone();
        if self.gate.is_poisoned() {
            return Ok(());
        }
        blocking(move || {
            db.flush()
                .map_err(|err| storage_error("cannot flush the RocksDB spool", err))?;
            // A full compaction rewrites every live message, so it runs
            // only when it pays: when most of what the SST files hold is
            // dead (delivered messages and their tombstones). RocksDB's own
            // background compaction handles the rest.
            let property = |name: &str| db.property_int_value(name).ok().flatten().unwrap_or(0);
            let total = property("rocksdb.total-sst-files-size");
            let live = property("rocksdb.estimate-live-data-size");
            if worth_compacting(total, live) {
                tracing::info!(
                    "compacting the RocksDB spool: {total} bytes of SST files, about {live} live"
                );
                db.compact_range::<&[u8], &[u8]>(None, None);
            }
            Ok(())
        })
        .await
    }

    pub(crate) async fn close(&self) -> Result<()> {
        let db = self.db.clone();
        let poisoned = self.gate.is_poisoned();
        let detached = self.request_detach();
        blocking(move || {
            if let Some(detached) = detached {
                // Waits for the writer's current turn to end.
                let _ = detached.recv();
            }
            if poisoned {
                // Everything acknowledged was synced when it was written.
                return Ok(());
            }
            db.flush_wal(true)
                .map_err(|err| storage_error("cannot sync the RocksDB WAL", err))
        })
        .await
    }
}

impl Drop for Rocks {
    fn drop(&mut self) {
        // The database must be closed when the spool is dropped (the same
        // path may be opened again at once), so the writer must have let
        // go of its handle first.
        if let Some(detached) = self.request_detach() {
            let _ = detached.recv();
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn uuid_from(bytes: [u8; 16]) -> uuid::Uuid {
    uuid::Uuid::from_bytes(bytes)
}

/// One database's part of the writer: its handle, settings, and the
/// batch being gathered for it.
struct DbState {
    db: Arc<DB>,
    flush: bool,
    gate: Arc<HealthGate>,
    counters: Arc<Counters>,
    batch: WriteBatch,
    waiters: Vec<oneshot::Sender<Result<()>>>,
    stores: u64,
}

/// The writer thread's state: the attached databases by slot.
#[derive(Default)]
struct Writer {
    dbs: Vec<Option<DbState>>,
    /// Each slot's spool path, kept after it detaches.
    paths: Vec<String>,
    pacer: CommitPacer,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Request>) {
        while let Ok(first) = rx.recv() {
            let mut next = Some(first);
            let mut waited = false;
            loop {
                while let Some(request) = next.take() {
                    if !self.take(request) {
                        self.commit_all();
                        return;
                    }
                    if self.pending() < MAX_BATCH {
                        next = rx.try_recv().ok();
                    }
                }
                // Nothing else is queued. Under a steady stream of stores,
                // waiting a moment for more makes one sync serve more
                // messages (the sync, not the write, is the cost). The
                // thread sleeps through the wait instead of waking for
                // each arrival, then takes whatever came.
                let delay = self.pacer.delay();
                if waited || delay.is_zero() || !self.wants_sync() || self.pending() >= MAX_BATCH {
                    break;
                }
                waited = true;
                std::thread::sleep(delay);
                next = rx.try_recv().ok();
                if next.is_none() {
                    break;
                }
            }
            let stores = self.dbs.iter().flatten().map(|db| db.stores).sum();
            self.pacer.record(stores, Instant::now());
            self.commit_all();
        }
    }

    /// Files one request; `false` when the thread must end.
    fn take(&mut self, request: Request) -> bool {
        match request {
            Request::Attach { slot, path, state } => {
                if self.dbs.len() <= slot {
                    self.dbs.resize_with(slot + 1, || None);
                    self.paths.resize_with(slot + 1, String::new);
                }
                self.dbs[slot] = Some(*state);
                self.paths[slot] = path;
            }
            Request::Store {
                slot,
                id,
                bytes,
                done,
            } => match self.dbs.get_mut(slot).and_then(Option::as_mut) {
                Some(db) => {
                    db.batch.put(id.as_bytes(), &bytes);
                    db.waiters.push(done);
                    db.stores += 1;
                }
                None => {
                    let _ = done.send(Err(self.closed(slot)));
                }
            },
            Request::Remove { slot, id, done } => {
                match self.dbs.get_mut(slot).and_then(Option::as_mut) {
                    Some(db) => {
                        db.batch.delete(id.as_bytes());
                        db.waiters.push(done);
                    }
                    None => {
                        let _ = done.send(Err(self.closed(slot)));
                    }
                }
            }
            Request::Detach { slot, done } => {
                if let Some(mut db) = self.dbs.get_mut(slot).and_then(Option::take) {
                    let finished = db.commit();
                    finished.wake();
                }
                let _ = done.send(());
            }
            Request::Shutdown => return false,
        }
        true
    }

    /// The error for a request that reached a detached (closed) slot.
    fn closed(&self, slot: Slot) -> SpoolError {
        SpoolError::Closed(self.paths.get(slot).cloned().unwrap_or_default())
    }

    fn pending(&self) -> usize {
        self.dbs.iter().flatten().map(|db| db.waiters.len()).sum()
    }

    fn wants_sync(&self) -> bool {
        self.dbs
            .iter()
            .flatten()
            .any(|db| db.flush && db.stores > 0)
    }

    /// Commits every database's batch, then wakes all their waiters at
    /// once, so that the two halves of a message complete together.
    fn commit_all(&mut self) {
        let finished: Vec<Finished> = self
            .dbs
            .iter_mut()
            .flatten()
            .filter(|db| !db.waiters.is_empty())
            .map(DbState::commit)
            .collect();
        for batch in finished {
            batch.wake();
        }
    }
}

/// The waiters of one committed batch and their verdict.
struct Finished {
    waiters: Vec<oneshot::Sender<Result<()>>>,
    outcome: Result<()>,
}

impl Finished {
    fn wake(self) {
        match self.outcome {
            Ok(()) => {
                for done in self.waiters {
                    let _ = done.send(Ok(()));
                }
            }
            Err(err) => {
                for done in self.waiters {
                    let _ = done.send(Err(err.duplicate()));
                }
            }
        }
    }
}

impl DbState {
    fn commit(&mut self) -> Finished {
        let waiters = std::mem::take(&mut self.waiters);
        let stores = std::mem::take(&mut self.stores);
        let batch = std::mem::take(&mut self.batch);
        if waiters.is_empty() {
            return Finished {
                waiters,
                outcome: Ok(()),
            };
        }
        if self.gate.is_poisoned() {
            // Never touch the database after a fatal write error (see
            // `HealthGate::poison`); fail the requests instead.
            let reason = self.gate.check().err().unwrap_or_default();
            return Finished {
                waiters,
                outcome: Err(SpoolError::Unhealthy(reason)),
            };
        }
        let sync = self.flush && stores > 0;
        let mut write_options = WriteOptions::default();
        write_options.set_sync(sync);
        let outcome = match self.db.write_opt(batch, &write_options) {
            Ok(()) => {
                self.gate.record_success();
                if sync {
                    self.counters.add_syncs(1);
                }
                if stores > 0 {
                    self.counters.add_commit();
                    self.counters.add_stores(stores);
                }
                Ok(())
            }
            Err(err) => {
                let reason = format!("RocksDB spool write failed: {err}");
                if is_fatal(&err) {
                    tracing::error!(
                        "{reason}; the spool takes no more writes until Tern is restarted"
                    );
                    self.gate.poison(reason);
                } else {
                    self.gate.record_error(false, reason);
                }
                Err(storage_error("RocksDB spool write failed", err))
            }
        };
        Finished { waiters, outcome }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_compaction_only_when_most_of_the_files_are_dead() {
        const MIB: u64 = 1024 * 1024;
        // A small database is never worth it.
        assert!(!worth_compacting(10 * MIB, 0));
        // A large one that is mostly live data is left to RocksDB.
        assert!(!worth_compacting(3000 * MIB, 2000 * MIB));
        // A large one that is mostly dead is compacted.
        assert!(worth_compacting(3000 * MIB, 1000 * MIB));
        assert!(worth_compacting(100 * MIB, 0));
    }

    #[test]
    fn commit_pacer_waits_only_under_a_steady_stream() {
        let mut pacer = CommitPacer::default();
        let t0 = Instant::now();
        assert_eq!(pacer.delay(), Duration::ZERO);
        // A lone client: one store every 340 µs, about 3,000/s.
        for i in 0..=300u64 {
            pacer.record(1, t0 + Duration::from_micros(i * 340));
        }
        assert_eq!(pacer.delay(), Duration::ZERO);
        // Fifty clients: 3 stores every 120 µs = 25,000/s.
        let t1 = t0 + Duration::from_millis(200);
        for i in 0..=1000u64 {
            pacer.record(3, t1 + Duration::from_micros(i * 120));
        }
        assert_eq!(pacer.delay(), COMMIT_DELAY);
        // Traffic stops, then a trickle: back to no delay.
        let t2 = t1 + Duration::from_secs(5);
        pacer.record(1, t2);
        for i in 1..=20u64 {
            pacer.record(1, t2 + Duration::from_millis(i * 10));
        }
        assert_eq!(pacer.delay(), Duration::ZERO);
    }
}
