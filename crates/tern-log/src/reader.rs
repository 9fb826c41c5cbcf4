//! Reading a log folder back: every segment decompressed, records merged in
//! time order, optional filters, and a follow mode for tailing.
//!
//! A folder holds one or more *streams*: the segments sharing a suffix
//! (`""`, `"_recv"`, ...), each written one after the other by a logger.
//! Within a stream the segment names give the order; across streams the
//! reader merges by each record's `event_time`. Segments are decoded with
//! the raw zstd streaming decoder fed straight from the file, so the open
//! segment and one cut short by a crash are read up to the last complete
//! line and nothing breaks at the truncation. In follow mode the reader
//! keeps its position and moves to a stream's next segment once the current
//! one is complete: read-only (closed by the logger) or superseded by a
//! newer segment of the same stream.

use crate::record::RecordType;
use crate::segment_name::parse_segment_name;
use chrono::{DateTime, TimeZone, Utc};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use zstd::stream::raw::{Decoder, Operation};

/// Which records to return. Empty fields do not filter.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LogFilter {
    /// Any of these types (empty: every type).
    pub types: Vec<RecordType>,
    /// Exact scheduled-queue name.
    pub queue: Option<String>,
    /// Any recipient in this domain (case-insensitive).
    pub domain: Option<String>,
    /// Records at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Records strictly before this time.
    pub until: Option<DateTime<Utc>>,
}

impl LogFilter {
    fn is_empty(&self) -> bool {
        self.types.is_empty()
            && self.queue.is_none()
            && self.domain.is_none()
            && self.since.is_none()
            && self.until.is_none()
    }

    fn matches(&self, view: &RecordView, time: Option<DateTime<Utc>>) -> bool {
        if !self.types.is_empty() {
            match view.kind.parse::<RecordType>() {
                Ok(kind) if self.types.contains(&kind) => {}
                _ => return false,
            }
        }
        if let Some(queue) = &self.queue
            && view.queue != *queue
        {
            return false;
        }
        if let Some(domain) = &self.domain {
            let in_domain = |r: &String| {
                r.rsplit_once('@')
                    .is_some_and(|(_, d)| d.eq_ignore_ascii_case(domain))
            };
            let hit = match &view.recipient {
                None => false,
                Some(Recipients::One(r)) => in_domain(r),
                Some(Recipients::Many(rs)) => rs.iter().any(in_domain),
            };
            if !hit {
                return false;
            }
        }
        if self.since.is_some() || self.until.is_some() {
            let Some(time) = time else { return false };
            if self.since.is_some_and(|since| time < since)
                || self.until.is_some_and(|until| time >= until)
            {
                return false;
            }
        }
        true
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Recipients {
    One(String),
    Many(Vec<String>),
}

/// The few fields the filters and the merge need; the rest of the line is
/// skipped by the parser and printed as it was written.
#[derive(Deserialize)]
struct RecordView {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    queue: String,
    #[serde(default)]
    recipient: Option<Recipients>,
    #[serde(default)]
    timestamp: Option<i64>,
    #[serde(default)]
    event_time: Option<String>,
}

impl RecordView {
    fn time(&self) -> Option<DateTime<Utc>> {
        if let Some(text) = &self.event_time
            && let Ok(parsed) = DateTime::parse_from_rfc3339(text)
        {
            return Some(parsed.with_timezone(&Utc));
        }
        self.timestamp
            .and_then(|secs| Utc.timestamp_opt(secs, 0).single())
    }
}

/// One line read from a segment.
#[derive(Clone, Debug, PartialEq)]
pub struct LogLine {
    /// The line as written, without its newline.
    pub text: String,
    /// The record's `event_time`, if the line is a JSON record.
    pub time: Option<DateTime<Utc>>,
    /// The record's type, if the line is a JSON record of a known type.
    pub kind: Option<RecordType>,
    /// The segment the line came from.
    pub segment: PathBuf,
}

/// Decompresses one segment incrementally, tolerating a file that is still
/// growing or was cut short.
struct SegmentTail {
    path: PathBuf,
    file: File,
    decoder: Decoder<'static>,
    input: Vec<u8>,
    input_start: usize,
    input_end: usize,
    output: Vec<u8>,
    /// Decompressed bytes not yet returned as lines.
    pending: Vec<u8>,
    pending_start: usize,
    /// Where to resume looking for a newline in `pending`.
    scan_from: usize,
    /// Set after a decode error: the rest of the file is ignored.
    broken: bool,
}

impl SegmentTail {
    fn open(path: &Path) -> io::Result<SegmentTail> {
        Ok(SegmentTail {
            path: path.to_path_buf(),
            file: File::open(path)?,
            decoder: Decoder::new()?,
            input: vec![0; 64 * 1024],
            input_start: 0,
            input_end: 0,
            output: vec![0; 128 * 1024],
            pending: Vec::new(),
            pending_start: 0,
            scan_from: 0,
            broken: false,
        })
    }

    /// The next complete line available now, or `None` at the current end
    /// of the data.
    fn next_line(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(offset) = memchr_newline(&self.pending[self.scan_from..]) {
                let end = self.scan_from + offset;
                let line = self.pending[self.pending_start..end].to_vec();
                self.pending_start = end + 1;
                self.scan_from = self.pending_start;
                if self.pending_start > 64 * 1024 && self.pending_start * 2 > self.pending.len() {
                    self.pending.drain(..self.pending_start);
                    self.scan_from -= self.pending_start;
                    self.pending_start = 0;
                }
                return Ok(Some(line));
            }
            self.scan_from = self.pending.len();
            if self.broken || !self.decode_more()? {
                return Ok(None);
            }
        }
    }

    /// Decompress more input; false when the file has no more bytes now.
    fn decode_more(&mut self) -> io::Result<bool> {
        if self.input_start == self.input_end {
            let read = self.file.read(&mut self.input)?;
            if read == 0 {
                return Ok(false);
            }
            self.input_start = 0;
            self.input_end = read;
        }
        match self.decoder.run_on_buffers(
            &self.input[self.input_start..self.input_end],
            &mut self.output,
        ) {
            Ok(status) => {
                self.input_start += status.bytes_read;
                self.pending
                    .extend_from_slice(&self.output[..status.bytes_written]);
                Ok(true)
            }
            Err(err) => {
                tracing::warn!(
                    "{}: undecodable zstd data, skipping the rest of the segment: {err}",
                    self.path.display()
                );
                self.broken = true;
                Ok(false)
            }
        }
    }
}

fn memchr_newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|b| *b == b'\n')
}

#[derive(Clone, Debug)]
struct SegmentFile {
    path: PathBuf,
    opened: DateTime<Utc>,
}

/// The segments sharing one suffix, read one after the other.
struct Stream {
    files: Vec<SegmentFile>,
    /// Index of the segment being read (or next to open).
    current: usize,
    tail: Option<SegmentTail>,
    peeked: Option<LogLine>,
    /// Time of the last JSON record seen: non-JSON (template) lines sort
    /// with the record before them.
    last_time: Option<DateTime<Utc>>,
}

impl Stream {
    fn new() -> Stream {
        Stream {
            files: Vec::new(),
            current: 0,
            tail: None,
            peeked: None,
            last_time: None,
        }
    }

    /// Ensure `peeked` holds the next matching line, if one is available
    /// now. `follow` decides what the end of a writable segment means: in
    /// follow mode the segment may still grow, otherwise it is finished.
    fn fill(&mut self, filter: &LogFilter, follow: bool) -> io::Result<()> {
        while self.peeked.is_none() {
            if self.tail.is_none() {
                // skip segments that end before `since`: the next one was
                // opened after every record of this one was produced
                while let Some(since) = filter.since
                    && self.current + 1 < self.files.len()
                    && self.files[self.current + 1].opened <= since
                {
                    self.current += 1;
                }
                let Some(file) = self.files.get(self.current) else {
                    return Ok(());
                };
                match SegmentTail::open(&file.path) {
                    Ok(tail) => self.tail = Some(tail),
                    Err(err) if err.kind() == io::ErrorKind::NotFound => {
                        // removed by log rotation tooling: move on
                        self.current += 1;
                        continue;
                    }
                    Err(err) => return Err(err),
                }
            }
            let tail = self.tail.as_mut().expect("opened above");
            match tail.next_line()? {
                Some(line) => self.accept(line, filter),
                None => {
                    let complete = !follow || self.current_is_complete()?;
                    // bytes written before the completeness check are read
                    // now; only then is the segment really exhausted
                    let tail = self.tail.as_mut().expect("still open");
                    match tail.next_line()? {
                        Some(line) => self.accept(line, filter),
                        None if complete => {
                            self.tail = None;
                            self.current += 1;
                        }
                        None => return Ok(()),
                    }
                }
            }
        }
        Ok(())
    }

    /// A segment is complete once it is read-only (closed by its logger)
    /// or a newer segment of the same stream exists (a logger has only one
    /// open segment per stream, so the older one was closed or abandoned).
    fn current_is_complete(&self) -> io::Result<bool> {
        if self.current + 1 < self.files.len() {
            return Ok(true);
        }
        let path = &self.files[self.current].path;
        match fs::metadata(path) {
            Ok(meta) => Ok(meta.permissions().mode() & 0o222 == 0),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(true),
            Err(err) => Err(err),
        }
    }

    fn accept(&mut self, line: Vec<u8>, filter: &LogFilter) {
        let segment = self.files[self.current].path.clone();
        let text = match String::from_utf8(line) {
            Ok(text) => text,
            Err(err) => String::from_utf8_lossy(err.as_bytes()).into_owned(),
        };
        let text = match text.strip_suffix('\r') {
            Some(stripped) => stripped.to_string(),
            None => text,
        };
        match serde_json::from_str::<RecordView>(&text) {
            Ok(view) => {
                let time = view.time();
                if time.is_some() {
                    self.last_time = time;
                }
                if filter.matches(&view, time) {
                    self.peeked = Some(LogLine {
                        kind: view.kind.parse().ok(),
                        time,
                        text,
                        segment,
                    });
                }
            }
            // not a JSON record (a template line or a segment header):
            // only shown when nothing is filtered
            Err(_) => {
                if filter.is_empty() && !text.is_empty() {
                    self.peeked = Some(LogLine {
                        text,
                        time: self.last_time,
                        kind: None,
                        segment,
                    });
                }
            }
        }
    }
}

/// Reads every record of a log folder in time order.
pub struct LogReader {
    dir: PathBuf,
    filter: LogFilter,
    streams: BTreeMap<String, Stream>,
}

impl LogReader {
    /// Scan `dir` for segments. Files whose names are not segment names
    /// are ignored.
    pub fn open(dir: impl Into<PathBuf>, filter: LogFilter) -> io::Result<LogReader> {
        let mut reader = LogReader {
            dir: dir.into(),
            filter,
            streams: BTreeMap::new(),
        };
        reader.rescan()?;
        Ok(reader)
    }

    /// Pick up segments created since the last scan.
    pub fn rescan(&mut self) -> io::Result<()> {
        let mut found: BTreeMap<String, Vec<SegmentFile>> = BTreeMap::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some((opened, suffix)) = parse_segment_name(name) else {
                continue;
            };
            if !entry.file_type()?.is_file() {
                continue;
            }
            found
                .entry(suffix.to_string())
                .or_default()
                .push(SegmentFile {
                    path: entry.path(),
                    opened,
                });
        }
        for (suffix, mut files) in found {
            files.sort_by(|a, b| a.path.cmp(&b.path));
            let stream = self.streams.entry(suffix).or_insert_with(Stream::new);
            for file in files {
                let known = stream.files.iter().any(|f| f.path == file.path);
                // only segments newer than the one being read can appear
                let newer = stream.files.last().is_none_or(|last| file.path > last.path);
                if !known && newer {
                    stream.files.push(file);
                }
            }
        }
        Ok(())
    }

    /// The earliest matching line available right now, or `None`. With
    /// `follow`, a segment that may still grow is not treated as finished,
    /// so a later call (after [`LogReader::rescan`]) continues where this
    /// one stopped.
    pub fn next_available(&mut self, follow: bool) -> io::Result<Option<LogLine>> {
        let mut best: Option<(&String, Option<DateTime<Utc>>)> = None;
        for (suffix, stream) in self.streams.iter_mut() {
            stream.fill(&self.filter, follow)?;
            if let Some(line) = &stream.peeked
                && best.is_none_or(|(_, time)| line.time < time)
            {
                best = Some((suffix, line.time));
            }
        }
        let Some((suffix, _)) = best else {
            return Ok(None);
        };
        let suffix = suffix.clone();
        Ok(self
            .streams
            .get_mut(&suffix)
            .and_then(|stream| stream.peeked.take()))
    }
}

impl Iterator for LogReader {
    type Item = io::Result<LogLine>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_available(false).transpose()
    }
}

/// Every line of every segment in `dir`, in time order, unfiltered.
pub fn read_all(dir: &Path) -> io::Result<Vec<String>> {
    LogReader::open(dir, LogFilter::default())?
        .map(|line| line.map(|l| l.text))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write_segment(dir: &Path, name: &str, lines: &[String], finish: bool) -> PathBuf {
        let path = dir.join(name);
        let file = File::create(&path).unwrap();
        let mut encoder = zstd::stream::write::Encoder::new(file, 3).unwrap();
        for line in lines {
            encoder.write_all(line.as_bytes()).unwrap();
            encoder.write_all(b"\n").unwrap();
        }
        if finish {
            encoder.finish().unwrap();
        } else {
            encoder.flush().unwrap();
            // leaves the frame open, as a crashed writer would
            std::mem::forget(encoder);
        }
        path
    }

    fn json_line(kind: &str, queue: &str, rcpt: &str, secs: i64) -> String {
        let when = Utc.timestamp_opt(secs, 0).unwrap();
        format!(
            r#"{{"type":"{kind}","id":"","queue":"{queue}","recipient":"{rcpt}","timestamp":{secs},"event_time":"{}"}}"#,
            crate::record::Rfc3339Nanos(when)
        )
    }

    #[test]
    fn streams_are_merged_in_time_order() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(
            dir.path(),
            "20240101-000000.000000000",
            &[
                json_line("Reception", "a.example", "x@a.example", 100),
                json_line("Reception", "b.example", "x@b.example", 300),
            ],
            true,
        );
        write_segment(
            dir.path(),
            "20240101-000000.000000001_del",
            &[
                json_line("Delivery", "a.example", "x@a.example", 200),
                json_line("Delivery", "b.example", "x@b.example", 400),
            ],
            true,
        );
        fs::write(dir.path().join("README"), "not a segment").unwrap();
        let times: Vec<i64> = LogReader::open(dir.path(), LogFilter::default())
            .unwrap()
            .map(|l| l.unwrap().time.unwrap().timestamp())
            .collect();
        assert_eq!(times, [100, 200, 300, 400]);
    }

    #[test]
    fn filters_by_type_queue_domain_and_time() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(
            dir.path(),
            "20240101-000000.000000000",
            &[
                json_line("Reception", "a.example", "x@a.example", 100),
                json_line("Delivery", "a.example", "x@a.example", 200),
                json_line("Bounce", "t@b.example", "x@B.Example", 300),
                "not json at all".to_string(),
                json_line("Delivery", "t@b.example", "y@b.example", 400),
            ],
            true,
        );
        let run = |filter: LogFilter| -> Vec<i64> {
            LogReader::open(dir.path(), filter)
                .unwrap()
                .map(|l| l.unwrap().time.map(|t| t.timestamp()).unwrap_or(-1))
                .collect()
        };
        assert_eq!(run(LogFilter::default()), [100, 200, 300, 300, 400]);
        assert_eq!(
            run(LogFilter {
                types: vec![RecordType::Delivery, RecordType::Bounce],
                ..Default::default()
            }),
            [200, 300, 400]
        );
        assert_eq!(
            run(LogFilter {
                queue: Some("t@b.example".into()),
                ..Default::default()
            }),
            [300, 400]
        );
        assert_eq!(
            run(LogFilter {
                domain: Some("b.example".into()),
                ..Default::default()
            }),
            [300, 400]
        );
        assert_eq!(
            run(LogFilter {
                since: Some(Utc.timestamp_opt(200, 0).unwrap()),
                until: Some(Utc.timestamp_opt(400, 0).unwrap()),
                ..Default::default()
            }),
            [200, 300]
        );
    }

    #[test]
    fn a_truncated_segment_is_read_up_to_the_cut() {
        let dir = tempfile::tempdir().unwrap();
        let lines: Vec<String> = (0..2000)
            .map(|n| json_line("Delivery", "q", &format!("u{n}@d.example"), 1000 + n))
            .collect();
        let path = write_segment(dir.path(), "20240101-000000.000000000", &lines, true);
        let full = fs::read(&path).unwrap();
        // cut the file in the middle of the compressed data
        fs::write(&path, &full[..full.len() * 2 / 3]).unwrap();
        let read = read_all(dir.path()).unwrap();
        assert!(
            !read.is_empty() && read.len() < lines.len(),
            "{}",
            read.len()
        );
        assert_eq!(read[..], lines[..read.len()], "a prefix, each line whole");
    }

    #[test]
    fn an_unfinished_frame_is_read_completely() {
        let dir = tempfile::tempdir().unwrap();
        let lines: Vec<String> = (0..10)
            .map(|n| json_line("Reception", "q", "u@d.example", n))
            .collect();
        write_segment(dir.path(), "20240101-000000.000000000", &lines, false);
        assert_eq!(read_all(dir.path()).unwrap(), lines);
    }

    #[test]
    fn garbage_segments_are_skipped_without_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("20240101-000000.000000000"),
            b"this is not zstd",
        )
        .unwrap();
        write_segment(
            dir.path(),
            "20240101-000001.000000000",
            &[json_line("Reception", "q", "u@d.example", 5)],
            true,
        );
        assert_eq!(read_all(dir.path()).unwrap().len(), 1);
    }

    #[test]
    fn since_skips_whole_older_segments() {
        let dir = tempfile::tempdir().unwrap();
        // the first segment's record claims a time after `since`, which a
        // real writer could not produce; it shows the segment was skipped
        // on its name alone
        write_segment(
            dir.path(),
            "19700101-000000.000000000",
            &[json_line("Reception", "q", "u@d.example", 66)],
            true,
        );
        write_segment(
            dir.path(),
            "19700101-000100.000000000",
            &[json_line("Reception", "q", "u@d.example", 70)],
            true,
        );
        let filter = LogFilter {
            since: Some(Utc.timestamp_opt(65, 0).unwrap()),
            ..Default::default()
        };
        let lines: Vec<LogLine> = LogReader::open(dir.path(), filter)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(lines.len(), 1);
        assert!(lines[0].segment.ends_with("19700101-000100.000000000"));
    }
}
