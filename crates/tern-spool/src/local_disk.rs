//! The `LocalDisk` spool kind: one file per message.
//!
//! Layout under the spool directory:
//! * `lock`: the pid lock (see [`crate::lock`]);
//! * `new/<id>`: a message being written; never visible under its real name
//!   until complete, and deleted at open if a crash left it behind;
//! * `data/aa/bb/<rest>`: a stored message, where `aabb` are the first four
//!   hex digits of the id (the high half of the UUID's low time field) and
//!   `<rest>` the remaining 28. `bb` changes every 6.5 ms, so a directory
//!   collects every message of its 6.5 ms and the tree is reused every
//!   7 minutes.
//! * `data/aa/bb/cc/dd/<rest>` (KumoMTA's layout, one more level per byte of
//!   the low time field): read, loaded and removed, never written. A spool
//!   written by KumoMTA is thus recovered as it is. Tern does not write it
//!   because `dd` changes every 100 ns: nearly every message needed new
//!   directories, which cost more than the message file itself.
//!
//! Group commit: stores go to one writer thread. It takes every store queued
//! while the previous batch was being synced, writes all their temporary
//! files, makes them durable with one sync step, renames them into place,
//! makes the directory entries durable with a second sync step, and only
//! then wakes the waiters. A crash before the second step can leave a
//! message under its real name that was never acknowledged; that is a
//! possible duplicate, never a loss. Removes unlink at once and the
//! directory is synced lazily (at `cleanup` or `close`): a lost delete only
//! causes a duplicate delivery.
//!
//! `cleanup` prunes the `aa/bb` directories that removes left empty.
//! A directory the writer has just created is empty until the rename
//! lands in it, so the writer's "create directories, rename, sync
//! directories" step and each `rmdir` of the pruner exclude each other
//! through one lock ([`DirGuard`]); the pruner takes it per directory, so
//! a store never waits for a whole walk.

use crate::enumerate::{self, Enumeration, Producer, SpoolEntry};
use crate::{
    Counters, Pending, Result, SpoolError, SpoolId, UnreadableEntry, UnreadableTarget, blocking,
};
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::HashSet;
use std::fs::File;
use std::io::{ErrorKind, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use tokio::sync::oneshot;

/// How a LocalDisk batch is made durable when `flush` is on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LocalDiskSync {
    /// `fdatasync` every file of the batch (spread over a few threads),
    /// rename, then `fsync` every directory the batch touched. About two
    /// syncs per message (file, plus its fresh leaf directory).
    PerFile,
    /// The default: one `syncfs` of the spool's filesystem after writing
    /// the batch and one after renaming it. Measured about 4x faster than
    /// `PerFile` here (docs/spool.md), but it also flushes every other
    /// dirty file on the same filesystem, so give the spool its own
    /// filesystem when other heavy writers share the disk.
    #[default]
    SyncFs,
}

/// Most stores taken into one batch; bounds the latency of the first one.
const MAX_BATCH: usize = 1024;
/// Threads used to spread a batch's syncs.
const SYNC_THREADS: usize = 4;
/// Most threads reading files during enumeration.
const ENUMERATE_THREADS: usize = 4;

enum Request {
    Store {
        id: SpoolId,
        bytes: Bytes,
        done: oneshot::Sender<Result<()>>,
    },
    Close {
        done: oneshot::Sender<Result<()>>,
    },
    Shutdown,
}

/// Serialises directory creation + rename (writer) against directory
/// removal (cleanup); see the module documentation.
type DirGuard = Arc<Mutex<()>>;

pub(crate) struct LocalDisk {
    data_dir: Arc<PathBuf>,
    dir_guard: DirGuard,
    tx: mpsc::Sender<Request>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Directories whose unlinks have not been synced yet.
    lazy_dirty: Arc<Mutex<HashSet<PathBuf>>>,
    flush: bool,
}

/// `data/aa/bb/<rest>`: where Tern stores `id`.
pub fn message_path(data_dir: &Path, id: SpoolId) -> PathBuf {
    split_path(data_dir, id, STORE_LEVELS)
}

/// `data/aa/bb/cc/dd/<rest>`: where KumoMTA stores `id`.
pub fn legacy_message_path(data_dir: &Path, id: SpoolId) -> PathBuf {
    split_path(data_dir, id, LEGACY_LEVELS)
}

/// Directory levels above a message file in Tern's layout.
const STORE_LEVELS: usize = 2;
/// Directory levels above a message file in KumoMTA's layout.
const LEGACY_LEVELS: usize = 4;

/// The id's first `levels` bytes as two-digit directories, then the rest.
fn split_path(data_dir: &Path, id: SpoolId, levels: usize) -> PathBuf {
    let hex = id.to_string();
    let mut path = data_dir.to_path_buf();
    for level in 0..levels {
        path.push(&hex[level * 2..level * 2 + 2]);
    }
    path.push(&hex[levels * 2..]);
    path
}

/// Runs `op` on the message's path and, when nothing is there, on its
/// KumoMTA-layout path (a message recovered from a spool KumoMTA wrote).
fn at_either_path<T>(
    data_dir: &Path,
    id: SpoolId,
    op: impl Fn(&Path) -> std::io::Result<T>,
) -> (PathBuf, std::io::Result<T>) {
    let path = message_path(data_dir, id);
    match op(&path) {
        Err(err) if err.kind() == ErrorKind::NotFound => {
            let legacy = legacy_message_path(data_dir, id);
            match op(&legacy) {
                Err(legacy_err) if legacy_err.kind() == ErrorKind::NotFound => (path, Err(err)),
                outcome => (legacy, outcome),
            }
        }
        outcome => (path, outcome),
    }
}

fn create_dir(path: &Path) -> Result<()> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(err) => Err(SpoolError::io(
            format!("cannot create spool directory {}", path.display()),
            err,
        )),
    }
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    File::open(path)?.sync_all()
}

impl LocalDisk {
    pub(crate) fn open(
        root: &Path,
        flush: bool,
        sync: LocalDiskSync,
        counters: Arc<Counters>,
    ) -> Result<Self> {
        let new_dir = root.join("new");
        let data_dir = root.join("data");
        create_dir(&new_dir)?;
        create_dir(&data_dir)?;
        // Leftovers in new/ were never acknowledged: a store returns only
        // after its file has been renamed out of new/.
        let leftovers = std::fs::read_dir(&new_dir)
            .map_err(|err| SpoolError::io(format!("cannot read {}", new_dir.display()), err))?;
        for entry in leftovers.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
        let root_fd = File::open(root)
            .map_err(|err| SpoolError::io(format!("cannot open {}", root.display()), err))?;
        if flush {
            sync_dir(root)
                .map_err(|err| SpoolError::io(format!("cannot sync {}", root.display()), err))?;
        }

        let (tx, rx) = mpsc::channel();
        let dir_guard = DirGuard::default();
        let writer = Writer {
            new_dir,
            data_dir: data_dir.clone(),
            dir_guard: dir_guard.clone(),
            root_fd,
            flush,
            sync,
            counters,
        };
        let handle = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|err| SpoolError::io("cannot start spool writer thread", err))?;
        Ok(Self {
            data_dir: Arc::new(data_dir),
            dir_guard,
            tx,
            writer: Mutex::new(Some(handle)),
            lazy_dirty: Arc::default(),
            flush,
        })
    }

    pub(crate) fn submit_store(&self, id: SpoolId, bytes: Bytes) -> Result<Pending> {
        let (done, pending) = oneshot::channel();
        self.tx
            .send(Request::Store { id, bytes, done })
            .map_err(|_| SpoolError::Closed(self.data_dir.display().to_string()))?;
        Ok(pending)
    }

    pub(crate) async fn load(&self, id: SpoolId) -> Result<Vec<u8>> {
        let data_dir = self.data_dir.clone();
        blocking(move || {
            let (path, outcome) = at_either_path(&data_dir, id, |path| std::fs::read(path));
            outcome.map_err(|err| match err.kind() {
                ErrorKind::NotFound => SpoolError::NotFound(id),
                _ => SpoolError::io(format!("cannot read {}", path.display()), err),
            })
        })
        .await
    }

    pub(crate) async fn remove(&self, id: SpoolId) -> Result<()> {
        let data_dir = self.data_dir.clone();
        let lazy_dirty = self.lazy_dirty.clone();
        blocking(move || {
            let (path, outcome) = at_either_path(&data_dir, id, |path| std::fs::remove_file(path));
            outcome.map_err(|err| match err.kind() {
                ErrorKind::NotFound => SpoolError::NotFound(id),
                _ => SpoolError::io(format!("cannot remove {}", path.display()), err),
            })?;
            if let Some(parent) = path.parent() {
                lazy_dirty.lock().insert(parent.to_path_buf());
            }
            Ok(())
        })
        .await
    }

    /// Deletes a file that enumeration could not read or name.
    pub(crate) async fn remove_file(&self, path: PathBuf) -> Result<()> {
        if !path.starts_with(&*self.data_dir) {
            return Err(SpoolError::Storage(format!(
                "{} is outside the spool's data directory",
                path.display()
            )));
        }
        let lazy_dirty = self.lazy_dirty.clone();
        blocking(move || {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(err) if err.kind() == ErrorKind::NotFound => return Ok(()),
                Err(err) => {
                    return Err(SpoolError::io(
                        format!("cannot remove {}", path.display()),
                        err,
                    ));
                }
            }
            if let Some(parent) = path.parent() {
                lazy_dirty.lock().insert(parent.to_path_buf());
            }
            Ok(())
        })
        .await
    }

    pub(crate) fn enumerate(&self) -> Enumeration {
        let data_dir = self.data_dir.clone();
        enumerate::spawn("localdisk", move |producer| {
            // Reading a file costs several system calls, so split the
            // top-level directories over a few threads.
            let top: Vec<(String, PathBuf)> = match std::fs::read_dir(&*data_dir) {
                Ok(entries) => entries
                    .flatten()
                    .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
                    .filter(|(name, _)| name.len() == 2)
                    .collect(),
                Err(err) => {
                    let context = format!("cannot read {}", data_dir.display());
                    producer.error(SpoolError::io(context, err));
                    return;
                }
            };
            let threads = std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .clamp(2, ENUMERATE_THREADS);
            std::thread::scope(|scope| {
                for share in 0..threads {
                    let mut own = producer.sibling();
                    let top = &top;
                    scope.spawn(move || {
                        for (name, path) in top.iter().skip(share).step_by(threads) {
                            let mut prefix = String::with_capacity(8);
                            prefix.push_str(name);
                            if !walk(path, &mut prefix, 1, &mut own) {
                                return;
                            }
                        }
                        own.flush();
                    });
                }
            });
        })
    }

    fn sync_lazy_dirs(lazy_dirty: &Mutex<HashSet<PathBuf>>, flush: bool) -> Result<()> {
        let dirs: Vec<PathBuf> = lazy_dirty.lock().drain().collect();
        if !flush {
            return Ok(());
        }
        for dir in dirs {
            match sync_dir(&dir) {
                Ok(()) => {}
                // pruned by an earlier cleanup: nothing left to make durable
                Err(err) if err.kind() == ErrorKind::NotFound => {}
                Err(err) => {
                    return Err(SpoolError::io(
                        format!("cannot sync {}", dir.display()),
                        err,
                    ));
                }
            }
        }
        Ok(())
    }

    pub(crate) async fn cleanup(&self) -> Result<()> {
        let lazy_dirty = self.lazy_dirty.clone();
        let data_dir = self.data_dir.clone();
        let guard = self.dir_guard.clone();
        let flush = self.flush;
        blocking(move || {
            Self::sync_lazy_dirs(&lazy_dirty, flush)?;
            prune_empty_dirs(&data_dir, 0, &guard);
            Ok(())
        })
        .await
    }

    pub(crate) async fn close(&self) -> Result<()> {
        let (done, pending) = oneshot::channel();
        if self.tx.send(Request::Close { done }).is_ok() {
            pending
                .await
                .unwrap_or_else(|_| Err(SpoolError::Storage("spool writer stopped".into())))?;
        }
        let handle = self.writer.lock().take();
        let lazy_dirty = self.lazy_dirty.clone();
        let flush = self.flush;
        blocking(move || {
            if let Some(handle) = handle {
                let _ = handle.join();
            }
            Self::sync_lazy_dirs(&lazy_dirty, flush)
        })
        .await
    }
}

impl Drop for LocalDisk {
    fn drop(&mut self) {
        let _ = self.tx.send(Request::Shutdown);
        if let Some(handle) = self.writer.lock().take() {
            let _ = handle.join();
        }
        let _ = Self::sync_lazy_dirs(&self.lazy_dirty, self.flush);
    }
}

/// Walks `data/aa/bb/rest` (and KumoMTA's `data/aa/bb/cc/dd/rest`),
/// rebuilding each id from the path. Returns `false` when the consumer has
/// gone away.
fn walk(dir: &Path, prefix: &mut String, depth: usize, producer: &mut Producer) -> bool {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == ErrorKind::NotFound => return true,
        Err(err) => {
            return producer.error(SpoolError::io(
                format!("cannot read {}", dir.display()),
                err,
            ));
        }
    };
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(err) => {
                if !producer.error(SpoolError::io(
                    format!("cannot read {}", dir.display()),
                    err,
                )) {
                    return false;
                }
                continue;
            }
        };
        let path = entry.path();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        let name = entry.file_name();
        let name = match name.to_str() {
            Some(name) => name,
            None if is_dir => continue,
            None => {
                if !producer.error(unreadable(&path, "the file name is not UTF-8".into())) {
                    return false;
                }
                continue;
            }
        };
        let keep_going = if is_dir {
            if depth < LEGACY_LEVELS && name.len() == 2 {
                let len = prefix.len();
                prefix.push_str(name);
                let ok = walk(&path, prefix, depth + 1, producer);
                prefix.truncate(len);
                ok
            } else {
                // Not ours; leave it to the operator.
                true
            }
        } else if depth == STORE_LEVELS || depth == LEGACY_LEVELS {
            let mut hex = String::with_capacity(32);
            hex.push_str(prefix);
            hex.push_str(name);
            match hex.parse::<SpoolId>() {
                Ok(id) => match std::fs::read(&path) {
                    Ok(data) => producer.push(SpoolEntry { id, data }),
                    // removed while we walked: not an entry any more
                    Err(err) if err.kind() == ErrorKind::NotFound => true,
                    Err(err) => producer.error(unreadable(&path, format!("cannot read it: {err}"))),
                },
                Err(_) => producer.error(unreadable(
                    &path,
                    "its path does not spell a spool id".into(),
                )),
            }
        } else {
            // Messages live two (or, as KumoMTA writes them, four)
            // directories down; nothing else belongs in between.
            producer.error(unreadable(
                &path,
                format!("a file at directory level {depth} is not a message"),
            ))
        };
        if !keep_going {
            return false;
        }
    }
    true
}

fn unreadable(path: &Path, reason: String) -> SpoolError {
    SpoolError::Unreadable(UnreadableEntry {
        location: path.display().to_string(),
        reason,
        target: UnreadableTarget::File(path.to_path_buf()),
    })
}

/// Removes empty `aa/bb` (and `aa/bb/cc/dd`) directories below `dir` (never `dir`
/// itself). Returns whether `dir` ended up empty. Each `rmdir` holds the
/// directory guard, so it can never remove a directory the writer has
/// just created for a rename still to come; `rmdir` itself refuses a
/// directory that is not empty.
fn prune_empty_dirs(dir: &Path, depth: usize, guard: &Mutex<()>) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    let mut empty = true;
    for entry in entries.flatten() {
        if depth < LEGACY_LEVELS && entry.file_type().is_ok_and(|t| t.is_dir()) {
            let path = entry.path();
            if prune_empty_dirs(&path, depth + 1, guard) {
                let _held = guard.lock();
                if std::fs::remove_dir(&path).is_ok() {
                    continue;
                }
            }
        }
        empty = false;
    }
    empty
}

struct Writer {
    new_dir: PathBuf,
    data_dir: PathBuf,
    dir_guard: DirGuard,
    root_fd: File,
    flush: bool,
    sync: LocalDiskSync,
    counters: Arc<Counters>,
}

struct Staged {
    id: SpoolId,
    temp: PathBuf,
    file: Option<File>,
    done: oneshot::Sender<Result<()>>,
}

impl Writer {
    fn run(self, rx: mpsc::Receiver<Request>) {
        let mut stores: Vec<(SpoolId, Bytes, oneshot::Sender<Result<()>>)> = Vec::new();
        while let Ok(first) = rx.recv() {
            let mut next = Some(first);
            while let Some(request) = next.take() {
                match request {
                    Request::Store { id, bytes, done } => {
                        stores.push((id, bytes, done));
                        if stores.len() < MAX_BATCH {
                            next = rx.try_recv().ok();
                        }
                    }
                    Request::Close { done } => {
                        self.commit(std::mem::take(&mut stores));
                        let _ = done.send(Ok(()));
                        return;
                    }
                    Request::Shutdown => {
                        self.commit(std::mem::take(&mut stores));
                        return;
                    }
                }
            }
            self.commit(std::mem::take(&mut stores));
        }
    }

    fn commit(&self, batch: Vec<(SpoolId, Bytes, oneshot::Sender<Result<()>>)>) {
        if batch.is_empty() {
            return;
        }
        let mut staged = Vec::with_capacity(batch.len());
        for (id, bytes, done) in batch {
            let temp = self.new_dir.join(id.to_string());
            match write_file(&temp, &bytes) {
                Ok(file) => staged.push(Staged {
                    id,
                    temp,
                    file: Some(file),
                    done,
                }),
                Err(err) => {
                    let _ = std::fs::remove_file(&temp);
                    let _ = done.send(Err(SpoolError::io(
                        format!("cannot write {}", temp.display()),
                        err,
                    )));
                }
            }
        }
        if staged.is_empty() {
            return;
        }

        if self.flush {
            let outcome = match self.sync {
                LocalDiskSync::SyncFs => self.syncfs().map(|()| Vec::new()),
                LocalDiskSync::PerFile => Ok(self.sync_files(&staged)),
            };
            match outcome {
                Ok(failed) => staged = self.fail_some(staged, failed),
                Err(err) => return self.fail_all(staged, err),
            }
        }
        for item in &mut staged {
            item.file = None;
        }

        // Held until the directory entries are durable: cleanup must not
        // remove a directory between its creation and the rename into it.
        let _dirs = self.dir_guard.lock();
        let mut dirty = HashSet::new();
        let mut renamed = Vec::with_capacity(staged.len());
        for item in staged {
            let target = message_path(&self.data_dir, item.id);
            match self.rename_into_place(&item.temp, &target, &mut dirty) {
                Ok(()) => renamed.push(item),
                Err(err) => {
                    let _ = std::fs::remove_file(&item.temp);
                    let _ = item.done.send(Err(err));
                }
            }
        }
        if renamed.is_empty() {
            return;
        }

        if self.flush {
            let outcome = match self.sync {
                LocalDiskSync::SyncFs => self.syncfs(),
                LocalDiskSync::PerFile => self.sync_dirs(dirty),
            };
            if let Err(err) = outcome {
                return self.fail_all(renamed, err);
            }
        }
        self.counters.add_commit();
        self.counters.add_stores(renamed.len() as u64);
        for item in renamed {
            let _ = item.done.send(Ok(()));
        }
    }

    fn fail_all(&self, staged: Vec<Staged>, err: SpoolError) {
        for item in staged {
            let _ = std::fs::remove_file(&item.temp);
            let _ = item.done.send(Err(err.duplicate()));
        }
    }

    /// Splits off the items whose index appears in `failed` (with their
    /// errors) and returns the rest.
    fn fail_some(&self, staged: Vec<Staged>, mut failed: Vec<(usize, SpoolError)>) -> Vec<Staged> {
        if failed.is_empty() {
            return staged;
        }
        failed.sort_by_key(|(index, _)| *index);
        let mut failed = failed.into_iter().peekable();
        let mut kept = Vec::with_capacity(staged.len());
        for (index, item) in staged.into_iter().enumerate() {
            if failed.peek().is_some_and(|(i, _)| *i == index) {
                let (_, err) = failed.next().expect("peeked");
                let _ = std::fs::remove_file(&item.temp);
                let _ = item.done.send(Err(err));
            } else {
                kept.push(item);
            }
        }
        kept
    }

    fn syncfs(&self) -> Result<()> {
        self.counters.add_syncs(1);
        // SAFETY: syncfs on a descriptor we own.
        let rc = unsafe { libc::syncfs(self.root_fd.as_raw_fd()) };
        if rc != 0 {
            return Err(SpoolError::io(
                "syncfs of the spool filesystem failed",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// `fdatasync`s every staged file, several at a time; returns the
    /// indexes that failed.
    fn sync_files(&self, staged: &[Staged]) -> Vec<(usize, SpoolError)> {
        self.counters.add_syncs(staged.len() as u64);
        let jobs: Vec<(usize, &File, &Path)> = staged
            .iter()
            .enumerate()
            .filter_map(|(i, item)| item.file.as_ref().map(|f| (i, f, item.temp.as_path())))
            .collect();
        parallel(&jobs, |(index, file, path)| {
            file.sync_data().map_err(|err| {
                (
                    *index,
                    SpoolError::io(format!("cannot sync {}", path.display()), err),
                )
            })
        })
    }

    fn sync_dirs(&self, dirty: HashSet<PathBuf>) -> Result<()> {
        self.counters.add_syncs(dirty.len() as u64);
        let dirs: Vec<PathBuf> = dirty.into_iter().collect();
        let failures = parallel(&dirs, |dir| {
            sync_dir(dir)
                .map_err(|err| SpoolError::io(format!("cannot sync {}", dir.display()), err))
        });
        match failures.into_iter().next() {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// Renames `temp` to `target`, creating missing directories and noting
    /// every directory whose entries changed.
    fn rename_into_place(
        &self,
        temp: &Path,
        target: &Path,
        dirty: &mut HashSet<PathBuf>,
    ) -> Result<()> {
        let parent = target.parent().expect("message paths have a parent");
        // The directory guard keeps cleanup out, so the second pass always
        // finds the directories it created; the bound only stops a loop if
        // something outside Tern keeps deleting them.
        for _ in 0..4 {
            match std::fs::rename(temp, target) {
                Ok(()) => {
                    dirty.insert(parent.to_path_buf());
                    return Ok(());
                }
                Err(err) if err.kind() == ErrorKind::NotFound && temp.exists() => {
                    self.create_parents(parent, dirty)?;
                }
                Err(err) => {
                    return Err(SpoolError::io(
                        format!("cannot rename {} to {}", temp.display(), target.display()),
                        err,
                    ));
                }
            }
        }
        Err(SpoolError::Storage(format!(
            "cannot rename {} to {}: its directory keeps disappearing",
            temp.display(),
            target.display()
        )))
    }

    fn create_parents(&self, leaf: &Path, dirty: &mut HashSet<PathBuf>) -> Result<()> {
        let relative = leaf.strip_prefix(&self.data_dir).unwrap_or(leaf);
        let mut current = self.data_dir.clone();
        for component in relative.components() {
            let parent = current.clone();
            current.push(component);
            match std::fs::create_dir(&current) {
                Ok(()) => {
                    dirty.insert(parent);
                }
                Err(err) if err.kind() == ErrorKind::AlreadyExists => {}
                Err(err) => {
                    return Err(SpoolError::io(
                        format!("cannot create spool directory {}", current.display()),
                        err,
                    ));
                }
            }
        }
        Ok(())
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<File> {
    let mut file = File::create(path)?;
    file.write_all(bytes)?;
    Ok(file)
}

/// Runs `work` over `items` on up to [`SYNC_THREADS`] scoped threads and
/// collects the errors. Small batches stay on the calling thread.
fn parallel<T: Sync, E: Send>(items: &[T], work: impl Fn(&T) -> Result<(), E> + Sync) -> Vec<E> {
    if items.len() <= 2 {
        return items.iter().filter_map(|item| work(item).err()).collect();
    }
    let per_thread = items.len().div_ceil(SYNC_THREADS);
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(per_thread)
            .map(|chunk| {
                let work = &work;
                scope.spawn(move || {
                    chunk
                        .iter()
                        .filter_map(|item| work(item).err())
                        .collect::<Vec<E>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| handle.join().unwrap_or_default())
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_paths_split_the_low_time_field() {
        let id: SpoolId = "d7ef132b5d7711eea8c8000c29c33806".parse().unwrap();
        assert_eq!(
            message_path(Path::new("/s/data"), id),
            Path::new("/s/data/d7/ef/132b5d7711eea8c8000c29c33806")
        );
        assert_eq!(
            legacy_message_path(Path::new("/s/data"), id),
            Path::new("/s/data/d7/ef/13/2b/5d7711eea8c8000c29c33806")
        );
    }

    /// The writer holds the guard from creating a message's directories
    /// until the rename into them is durable; a cleanup that runs
    /// meanwhile must leave the (still empty) directories alone.
    #[test]
    fn pruning_waits_for_a_writer_between_mkdir_and_rename() {
        let dir = tempfile::tempdir().unwrap();
        let leaf = dir.path().join("aa/bb/cc/dd");
        std::fs::create_dir_all(&leaf).unwrap();
        let guard = Arc::new(Mutex::new(()));
        let held = guard.lock();
        let pruner = {
            let (root, guard) = (dir.path().to_path_buf(), guard.clone());
            std::thread::spawn(move || prune_empty_dirs(&root, 0, &guard))
        };
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(
            leaf.is_dir(),
            "an empty directory was pruned under a writer"
        );
        // The writer's rename lands, then it lets go.
        std::fs::write(leaf.join("rest-of-id"), b"x").unwrap();
        drop(held);
        assert!(!pruner.join().unwrap());
        assert!(leaf.join("rest-of-id").is_file());
    }
}
