//! The logger: one background thread per `configure_local_logs` call that
//! turns submitted [`LogRecord`]s into lines of zstd-compressed segment
//! files.
//!
//! Producers hand records over through a bounded channel whose capacity is
//! the config's `back_pressure`: [`Logger::submit`] waits when it is full,
//! [`Logger::try_submit`] returns the record instead. The writer thread
//! owns every open segment, so no lock is shared with producers and
//! nothing blocks an async runtime while compressing or writing.
//!
//! Segment rules (spec §12.1): one zstd stream per file named after its UTC
//! creation time (`YYYYMMDD-HHMMSS.fffffffff` plus the per-record suffix);
//! a segment is closed when `max_file_size` uncompressed bytes were
//! written or `max_segment_duration` has passed (a timer, so idle segments
//! close too), and at shutdown. Closing ends the zstd frame, fsyncs and
//! clears the write bits, which is how readers know the file is complete.
//! Open segments are flushed (the zstd block ended and handed to the
//! kernel) within [`FLUSH_DELAY`] of a write, so a `kill -9` loses at most
//! the records of that last fraction of a second.

use crate::config::{ConfigError, LogConfig};
use crate::format::{RecordFormatter, TemplateError};
use crate::record::{LogRecord, RecordType};
use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// How long written data may sit in the compressor before it is flushed
/// to the file.
pub const FLUSH_DELAY: Duration = Duration::from_millis(100);

/// Records handled between two checks of the clock for flushes and
/// segment age.
const BATCH: usize = 512;

/// Why a logger could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("cannot prepare log directory {}: {source}", path.display())]
    Dir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the log writer thread: {0}")]
    Thread(#[source] io::Error),
}

/// The logger has been shut down; the record was not written.
#[derive(Debug, thiserror::Error)]
#[error("the logger for {0} has been shut down")]
pub struct LoggerClosed(pub PathBuf);

/// Why [`Logger::try_submit`] did not take a record; the record comes back.
#[derive(Debug, thiserror::Error)]
pub enum TrySubmitError {
    #[error("the log queue is full (back_pressure reached)")]
    Full(Box<LogRecord>),
    #[error("the logger has been shut down")]
    Closed(Box<LogRecord>),
}

enum Command {
    Record(Box<LogRecord>),
    Flush(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
    /// Test hook: the writer acknowledges, then stops until released.
    #[cfg(test)]
    Pause {
        paused: std::sync::mpsc::Sender<()>,
        release: std::sync::mpsc::Receiver<()>,
    },
}

/// A running logger. Cloning gives another handle to the same writer.
#[derive(Clone)]
pub struct Logger {
    tx: mpsc::Sender<Command>,
    config: Arc<LogConfig>,
    enabled: [bool; RecordType::ALL.len()],
    /// The writer thread, joined by whichever handle shuts down first.
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Logger {
    /// Validate `config`, prepare the directories (creating them and making
    /// leftover files read-only), compile templates and start the writer.
    pub fn start(config: LogConfig) -> Result<Logger, StartError> {
        config.validate()?;
        let config = Arc::new(config);
        let writer = Writer::new(config.clone())?;
        for dir in writer.distinct_dirs() {
            prepare_dir(&dir).map_err(|source| StartError::Dir { path: dir, source })?;
        }
        let mut enabled = [false; RecordType::ALL.len()];
        for kind in RecordType::ALL {
            enabled[kind as usize] = config.record_settings(kind).enable;
        }
        let (tx, rx) = mpsc::channel(config.back_pressure);
        let name = format!(
            "tern-log:{}",
            config
                .log_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        let handle = std::thread::Builder::new()
            .name(name)
            .spawn(move || writer.run(rx))
            .map_err(StartError::Thread)?;
        Ok(Logger {
            tx,
            config,
            enabled,
            thread: Arc::new(Mutex::new(Some(handle))),
        })
    }

    /// The configuration this logger runs with (for `capture_meta` /
    /// `capture_headers` and `filter_event`).
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Whether records of `kind` are written at all (`per_record` may
    /// disable them); lets producers skip building records nobody wants.
    pub fn is_enabled(&self, kind: RecordType) -> bool {
        self.enabled[kind as usize]
    }

    /// Queue a record, waiting while the queue holds `back_pressure`
    /// records.
    pub async fn submit(&self, record: LogRecord) -> Result<(), LoggerClosed> {
        self.tx
            .send(Command::Record(Box::new(record)))
            .await
            .map_err(|_| self.closed())
    }

    /// Queue a record without waiting; gives it back when the queue is full.
    pub fn try_submit(&self, record: LogRecord) -> Result<(), TrySubmitError> {
        self.tx
            .try_send(Command::Record(Box::new(record)))
            .map_err(|err| match err {
                mpsc::error::TrySendError::Full(Command::Record(r)) => TrySubmitError::Full(r),
                mpsc::error::TrySendError::Closed(Command::Record(r)) => TrySubmitError::Closed(r),
                _ => unreachable!("only records are sent by try_submit"),
            })
    }

    /// Queue a record from a thread that is not running async code,
    /// blocking while the queue is full. Must not be called from inside an
    /// async runtime.
    pub fn submit_blocking(&self, record: LogRecord) -> Result<(), LoggerClosed> {
        self.tx
            .blocking_send(Command::Record(Box::new(record)))
            .map_err(|_| self.closed())
    }

    /// Wait until every record queued before this call is in the segment
    /// files (decompressible by a reader; not yet fsynced).
    pub async fn flush(&self) -> Result<(), LoggerClosed> {
        let (done_tx, done_rx) = oneshot::channel();
        self.tx
            .send(Command::Flush(done_tx))
            .await
            .map_err(|_| self.closed())?;
        done_rx.await.map_err(|_| self.closed())
    }

    /// Write everything queued, finish and close every segment, and stop
    /// the writer thread. Later submissions fail with [`LoggerClosed`].
    pub async fn shutdown(&self) -> Result<(), LoggerClosed> {
        let (done_tx, done_rx) = oneshot::channel();
        if self.tx.send(Command::Shutdown(done_tx)).await.is_ok() {
            let _ = done_rx.await;
        }
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            // the writer replies just before returning, so this is brief
            let _ = handle.join();
        }
        Ok(())
    }

    fn closed(&self) -> LoggerClosed {
        LoggerClosed(self.config.log_dir.clone())
    }

    /// Test hook: stop the writer until the returned sender is dropped or
    /// sent to.
    #[cfg(test)]
    async fn pause(&self) -> std::sync::mpsc::Sender<()> {
        let (paused_tx, paused_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel();
        let _ = self
            .tx
            .send(Command::Pause {
                paused: paused_tx,
                release: release_rx,
            })
            .await;
        tokio::task::spawn_blocking(move || paused_rx.recv())
            .await
            .unwrap()
            .unwrap();
        release_tx
    }
}

/// Create `dir` if needed and clear the write bits of every regular file
/// already in it: those are segments left by an earlier run (perhaps one
/// that crashed), and nothing will append to them again.
fn prepare_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_file() && meta.permissions().mode() & 0o222 != 0 {
            make_read_only(&entry.path(), &meta)?;
        }
    }
    Ok(())
}

fn make_read_only(path: &Path, meta: &fs::Metadata) -> io::Result<()> {
    let mut perms = meta.permissions();
    perms.set_mode(perms.mode() & !0o222);
    fs::set_permissions(path, perms)
}

/// Where a record type's lines go.
#[derive(Clone)]
enum Route {
    Disabled,
    Enabled {
        destination: usize,
        segment_header: String,
    },
}

/// A (directory, suffix) pair: one open segment at a time.
struct Destination {
    dir: PathBuf,
    suffix: String,
    segment: Option<Segment>,
}

struct Segment {
    path: PathBuf,
    encoder: zstd::stream::write::Encoder<'static, File>,
    uncompressed: u64,
    opened: Instant,
    dirty_since: Option<Instant>,
}

impl Segment {
    fn open(dest: &Destination, level: i32, header: &str) -> io::Result<Segment> {
        let mut when = chrono::Utc::now();
        let mut attempts = 0;
        let (path, file) = loop {
            let name = format!(
                "{}{}",
                crate::segment_name::format_segment_time(when),
                dest.suffix
            );
            let path = dest.dir.join(name);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => break (path, file),
                // two segments in the same nanosecond: step forward
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists && attempts < 1000 => {
                    attempts += 1;
                    when += chrono::TimeDelta::nanoseconds(1);
                }
                Err(err) => return Err(err),
            }
        };
        let encoder = zstd::stream::write::Encoder::new(file, level)?;
        let mut segment = Segment {
            path,
            encoder,
            uncompressed: 0,
            opened: Instant::now(),
            dirty_since: None,
        };
        if !header.is_empty() {
            segment.write(header.as_bytes())?;
            if !header.ends_with('\n') {
                segment.write(b"\n")?;
            }
        }
        Ok(segment)
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.encoder.write_all(bytes)?;
        self.uncompressed += bytes.len() as u64;
        if self.dirty_since.is_none() {
            self.dirty_since = Some(Instant::now());
        }
        Ok(())
    }

    /// End the current zstd block and hand everything to the kernel, so a
    /// reader (or a crash) sees every line written so far.
    fn flush(&mut self) -> io::Result<()> {
        self.encoder.flush()?;
        self.dirty_since = None;
        Ok(())
    }

    /// End the zstd frame, fsync and make the file read-only.
    fn finish(self) -> io::Result<PathBuf> {
        let file = self.encoder.finish()?;
        file.sync_all()?;
        let meta = file.metadata()?;
        drop(file);
        make_read_only(&self.path, &meta)?;
        Ok(self.path)
    }
}

/// State owned by the writer thread.
struct Writer {
    config: Arc<LogConfig>,
    level: i32,
    routes: Vec<Route>,
    destinations: Vec<Destination>,
    formatter: RecordFormatter,
    line: Vec<u8>,
    dropped_too_large: u64,
}

impl Writer {
    fn new(config: Arc<LogConfig>) -> Result<Writer, StartError> {
        let formatter = RecordFormatter::new(|kind| config.record_settings(kind))?;
        let mut destinations: Vec<Destination> = Vec::new();
        let mut routes = Vec::with_capacity(RecordType::ALL.len());
        for kind in RecordType::ALL {
            let settings = config.record_settings(kind);
            if !settings.enable {
                routes.push(Route::Disabled);
                continue;
            }
            let dir = settings.log_dir.unwrap_or_else(|| config.log_dir.clone());
            let suffix = settings.suffix.unwrap_or_default();
            let destination = match destinations
                .iter()
                .position(|d| d.dir == dir && d.suffix == suffix)
            {
                Some(index) => index,
                None => {
                    destinations.push(Destination {
                        dir,
                        suffix,
                        segment: None,
                    });
                    destinations.len() - 1
                }
            };
            routes.push(Route::Enabled {
                destination,
                segment_header: settings.segment_header,
            });
        }
        Ok(Writer {
            level: config.effective_compression_level(),
            config,
            routes,
            destinations,
            formatter,
            line: Vec::with_capacity(4096),
            dropped_too_large: 0,
        })
    }

    fn distinct_dirs(&self) -> Vec<PathBuf> {
        let mut seen = HashSet::new();
        let mut dirs = vec![self.config.log_dir.clone()];
        seen.insert(self.config.log_dir.clone());
        for dest in &self.destinations {
            if seen.insert(dest.dir.clone()) {
                dirs.push(dest.dir.clone());
            }
        }
        dirs
    }

    /// The writer thread's body: a single-threaded runtime for the channel
    /// and timers; compression and file I/O run inline on this thread.
    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(runtime) => runtime,
            Err(err) => {
                tracing::error!("log writer for {}: cannot start: {err}", self.dir_label());
                return;
            }
        };
        runtime.block_on(async move {
            loop {
                let command = match self.next_deadline() {
                    Some(deadline) => {
                        tokio::select! {
                            command = rx.recv() => command,
                            _ = tokio::time::sleep_until(deadline.into()) => {
                                self.on_tick(Instant::now());
                                continue;
                            }
                        }
                    }
                    None => rx.recv().await,
                };
                let Some(command) = command else {
                    // every handle dropped without shutdown: still finish
                    self.close_all();
                    return;
                };
                if self.handle(command) {
                    return;
                }
                for _ in 0..BATCH {
                    match rx.try_recv() {
                        Ok(command) => {
                            if self.handle(command) {
                                return;
                            }
                        }
                        Err(_) => break,
                    }
                }
                self.on_tick(Instant::now());
            }
        });
    }

    /// Returns true when the writer must stop.
    fn handle(&mut self, command: Command) -> bool {
        match command {
            Command::Record(record) => {
                self.write_record(&record);
                false
            }
            Command::Flush(done) => {
                self.flush_all();
                let _ = done.send(());
                false
            }
            Command::Shutdown(done) => {
                self.close_all();
                let _ = done.send(());
                true
            }
            #[cfg(test)]
            Command::Pause { paused, release } => {
                let _ = paused.send(());
                let _ = release.recv();
                false
            }
        }
    }

    fn dir_label(&self) -> String {
        self.config.log_dir.display().to_string()
    }

    fn write_record(&mut self, record: &LogRecord) {
        let Route::Enabled {
            destination,
            segment_header,
        } = &self.routes[record.kind as usize]
        else {
            return;
        };
        self.line.clear();
        if let Err(err) = self.formatter.format(record, &mut self.line) {
            tracing::error!(
                "{err}; record {} dropped",
                record.id.map(|id| id.to_string()).unwrap_or_default()
            );
            return;
        }
        // JSON never ends in a line break; a template may already have one.
        if self.line.last() != Some(&b'\n') {
            self.line.push(b'\n');
        }
        if self.line.len() >= self.config.max_record_size {
            self.dropped_too_large += 1;
            tracing::error!(
                "log record {} {} of {} bytes exceeds max_record_size {}; dropped ({} so far)",
                record.kind,
                record.id.map(|id| id.to_string()).unwrap_or_default(),
                self.line.len(),
                self.config.max_record_size,
                self.dropped_too_large
            );
            return;
        }
        let dest = &mut self.destinations[*destination];
        if dest.segment.is_none() {
            match Segment::open(dest, self.level, segment_header) {
                Ok(segment) => dest.segment = Some(segment),
                Err(err) => {
                    tracing::error!(
                        "cannot open a log segment in {}: {err}; record dropped",
                        dest.dir.display()
                    );
                    return;
                }
            }
        }
        let segment = dest.segment.as_mut().expect("opened above");
        if let Err(err) = segment.write(&self.line) {
            tracing::error!("writing log segment {}: {err}", segment.path.display());
            close_destination(dest);
            return;
        }
        if segment.uncompressed >= self.config.max_file_size {
            close_destination(dest);
        }
    }

    /// The next moment a timer must fire: a pending flush, or a segment
    /// reaching `max_segment_duration`.
    fn next_deadline(&self) -> Option<Instant> {
        let max_age = self.config.max_segment_duration;
        self.destinations
            .iter()
            .filter_map(|d| d.segment.as_ref())
            .flat_map(|s| {
                [
                    s.dirty_since.map(|t| t + FLUSH_DELAY),
                    max_age.map(|age| s.opened + age),
                ]
            })
            .flatten()
            .min()
    }

    fn on_tick(&mut self, now: Instant) {
        let max_age = self.config.max_segment_duration;
        for dest in &mut self.destinations {
            let Some(segment) = dest.segment.as_mut() else {
                continue;
            };
            if max_age.is_some_and(|age| now >= segment.opened + age) {
                close_destination(dest);
            } else if segment
                .dirty_since
                .is_some_and(|since| now >= since + FLUSH_DELAY)
                && let Err(err) = segment.flush()
            {
                tracing::error!("flushing log segment {}: {err}", segment.path.display());
                close_destination(dest);
            }
        }
    }

    fn flush_all(&mut self) {
        for dest in &mut self.destinations {
            if let Some(segment) = dest.segment.as_mut()
                && let Err(err) = segment.flush()
            {
                tracing::error!("flushing log segment {}: {err}", segment.path.display());
                close_destination(dest);
            }
        }
    }

    fn close_all(&mut self) {
        for dest in &mut self.destinations {
            close_destination(dest);
        }
    }
}

fn close_destination(dest: &mut Destination) {
    if let Some(segment) = dest.segment.take() {
        let path = segment.path.clone();
        if let Err(err) = segment.finish() {
            tracing::error!("closing log segment {}: {err}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::MessageInfo;
    use tern_types::SpoolId;
    use uuid::Uuid;

    fn record(n: usize) -> LogRecord {
        let recipient = format!("user{n}@example.com");
        let recipients = [recipient.as_str()];
        LogRecord::reception(
            Uuid::nil(),
            MessageInfo {
                id: SpoolId::new(),
                sender: "s@example.com",
                recipients: &recipients,
                queue: "example.com",
                size: 100,
                num_attempts: 0,
                reception_protocol: Some("ESMTP"),
            },
        )
        .with_event_time(chrono::Utc::now())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn back_pressure_blocks_submitters_when_the_queue_is_full() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = LogConfig::new(dir.path());
        config.back_pressure = 4;
        let logger = Logger::start(config).unwrap();
        let release = logger.pause().await;
        for n in 0..4 {
            logger.try_submit(record(n)).unwrap();
        }
        assert!(matches!(
            logger.try_submit(record(4)),
            Err(TrySubmitError::Full(_))
        ));
        let waiting = {
            let logger = logger.clone();
            tokio::spawn(async move { logger.submit(record(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !waiting.is_finished(),
            "submit must wait while the queue is full"
        );
        release.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("submit completes once the writer drains")
            .unwrap()
            .unwrap();
        logger.shutdown().await.unwrap();
        let lines = crate::reader::read_all(dir.path()).unwrap();
        assert_eq!(lines.len(), 5);
        assert!(matches!(
            logger.try_submit(record(6)),
            Err(TrySubmitError::Closed(_))
        ));
        assert!(logger.submit(record(7)).await.is_err());
    }

    #[test]
    fn bad_template_fails_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig::from_json(serde_json::json!({
            "log_dir": dir.path(),
            "per_record": {"Bounce": {"template": "{{ unclosed"}}
        }))
        .unwrap();
        let err = Logger::start(config).err().unwrap().to_string();
        assert!(err.contains("Bounce"), "{err}");
    }

    #[test]
    fn an_unusable_log_dir_fails_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        fs::write(&file, b"").unwrap();
        let err = Logger::start(LogConfig::new(file.join("logs")))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("cannot prepare log directory"), "{err}");
    }

    #[tokio::test]
    async fn oversized_records_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = LogConfig::new(dir.path());
        config.max_record_size = 200;
        let logger = Logger::start(config).unwrap();
        logger.submit(record(1)).await.unwrap();
        logger.shutdown().await.unwrap();
        assert!(crate::reader::read_all(dir.path()).unwrap().is_empty());
    }
}
