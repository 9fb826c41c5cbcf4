//! End-to-end tests of the segment writer and the reader against real
//! files: rotation, read-only completion, the `zstd` command-line tool,
//! per-record settings, shutdown, follow mode and the `tern logs` body.

use serde_json::{Value, json};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tern_log::cli::{LogsArgs, run_to};
use tern_log::{
    LogConfig, LogFilter, LogReader, LogRecord, Logger, MessageInfo, RecordType, Response,
};
use tern_types::SpoolId;
use uuid::Uuid;

fn message<'a>(recipients: &'a [&'a str], queue: &'a str) -> MessageInfo<'a> {
    MessageInfo {
        id: SpoolId::new(),
        sender: "sender@example.com",
        recipients,
        queue,
        size: 1234,
        num_attempts: 0,
        reception_protocol: Some("ESMTP"),
    }
}

fn reception(n: usize) -> LogRecord {
    let rcpt = format!("user{n}@example.com");
    LogRecord::reception(Uuid::nil(), message(&[rcpt.as_str()], "example.com"))
        .with_peer("client.example", "127.0.0.1")
}

fn delivery(n: usize) -> LogRecord {
    let rcpt = format!("user{n}@example.net");
    LogRecord::delivery(
        Uuid::nil(),
        message(&[rcpt.as_str()], "example.net"),
        "unspecified->mx.example.net@smtp_client",
        Response::from_smtp_reply("250 2.0.0 ok").unwrap(),
    )
}

fn bounce(n: usize) -> LogRecord {
    let rcpt = format!("user{n}@example.org");
    LogRecord::bounce(
        Uuid::nil(),
        message(&[rcpt.as_str()], "example.org"),
        "unspecified->mx.example.org@smtp_client",
        Response::from_smtp_reply("550 5.1.1 no such user").unwrap(),
    )
}

/// Segment files in `dir`, oldest first.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn is_read_only(path: &Path) -> bool {
    fs::metadata(path).unwrap().permissions().mode() & 0o222 == 0
}

/// Decompress with the zstd command-line tool: an independent check that
/// each segment is one well-formed zstd stream.
fn zstd_cli_lines(path: &Path) -> Vec<String> {
    let output = Command::new("zstd")
        .arg("-dc")
        .arg(path)
        .output()
        .expect("the zstd command-line tool is installed");
    assert!(
        output.status.success(),
        "zstd -dc {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Poll `done` until it holds or `limit` passes (the machine running the
/// tests may be heavily loaded, so timers are checked with slack).
async fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    done()
}

#[tokio::test]
async fn rotation_by_size_closes_read_only_segments_that_zstd_can_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = LogConfig::new(dir.path());
    config.max_file_size = 3000;
    let logger = Logger::start(config).unwrap();
    for n in 0..20 {
        logger.submit(reception(n)).await.unwrap();
    }
    logger.flush().await.unwrap();
    let files = segments(dir.path());
    assert!(files.len() >= 4, "expected several segments, got {files:?}");
    // every segment but possibly the last is closed
    for file in &files[..files.len() - 1] {
        assert!(is_read_only(file), "{} should be read-only", file.display());
    }
    logger.shutdown().await.unwrap();

    let mut total = 0;
    for file in segments(dir.path()) {
        assert!(
            is_read_only(&file),
            "{} open after shutdown",
            file.display()
        );
        let lines = zstd_cli_lines(&file);
        // a segment closes once it has reached the size
        let bytes: usize = lines.iter().map(|l| l.len() + 1).sum();
        assert!(bytes < 3000 + 1000, "{bytes} bytes in one segment");
        total += lines.len();
    }
    assert_eq!(total, 20);
    let read = tern_log::reader::read_all(dir.path()).unwrap();
    let recipients: Vec<String> = read
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["recipient"].to_string())
        .collect();
    let expected: Vec<String> = (0..20)
        .map(|n| format!("\"user{n}@example.com\""))
        .collect();
    assert_eq!(recipients, expected);
}

#[tokio::test]
async fn an_idle_segment_is_closed_when_its_duration_passes() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig::from_json(json!({
        "log_dir": dir.path(),
        "max_segment_duration": "1s",
    }))
    .unwrap();
    let logger = Logger::start(config).unwrap();
    logger.submit(reception(1)).await.unwrap();
    logger.flush().await.unwrap();
    let first = segments(dir.path());
    assert_eq!(first.len(), 1);
    assert!(!is_read_only(&first[0]), "the segment is still open");
    // nothing else is submitted: only the timer can close it
    let closed = wait_for(Duration::from_secs(10), || is_read_only(&first[0])).await;
    assert!(closed, "idle segment not closed by the timer");
    assert_eq!(zstd_cli_lines(&first[0]).len(), 1);

    logger.submit(reception(2)).await.unwrap();
    logger.shutdown().await.unwrap();
    assert_eq!(segments(dir.path()).len(), 2);
}

#[tokio::test]
async fn records_reach_the_file_without_an_explicit_flush() {
    // what a reader (or the next run after a kill -9) sees of an open
    // segment: everything submitted more than the flush delay ago
    let dir = tempfile::tempdir().unwrap();
    let logger = Logger::start(LogConfig::new(dir.path())).unwrap();
    for n in 0..100 {
        logger.submit(reception(n)).await.unwrap();
    }
    let visible = wait_for(Duration::from_secs(5), || {
        tern_log::reader::read_all(dir.path()).unwrap().len() == 100
    })
    .await;
    assert!(visible, "records submitted but never flushed to the file");
    let files = segments(dir.path());
    assert_eq!(files.len(), 1);
    assert!(!is_read_only(&files[0]));
    // simulate the crash: the logger thread never finishes this segment
    std::mem::forget(logger);
    assert_eq!(tern_log::reader::read_all(dir.path()).unwrap().len(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_writes_everything_queued() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = LogConfig::new(dir.path());
    config.back_pressure = 64;
    config.max_file_size = 200_000;
    let logger = Logger::start(config).unwrap();
    let mut producers = Vec::new();
    for task in 0..4 {
        let logger = logger.clone();
        producers.push(tokio::spawn(async move {
            for n in 0..2500 {
                logger.submit(delivery(task * 10_000 + n)).await.unwrap();
            }
        }));
    }
    for producer in producers {
        producer.await.unwrap();
    }
    logger.shutdown().await.unwrap();
    let files = segments(dir.path());
    assert!(files.len() > 1);
    assert!(files.iter().all(|f| is_read_only(f)));
    let lines = tern_log::reader::read_all(dir.path()).unwrap();
    assert_eq!(lines.len(), 10_000);
    let cli_total: usize = files.iter().map(|f| zstd_cli_lines(f).len()).sum();
    assert_eq!(cli_total, 10_000);
}

#[tokio::test]
async fn per_record_suffix_dir_template_header_and_disable() {
    let dir = tempfile::tempdir().unwrap();
    let bounce_dir = dir.path().join("bounces");
    let config = LogConfig::from_json(json!({
        "log_dir": dir.path(),
        "per_record": {
            "Reception": {"suffix": "_recv"},
            "Bounce": {
                "log_dir": bounce_dir,
                "suffix": ".csv",
                "segment_header": "id,code,age",
                "template": "{{ id }},{{ response.code }},{{ timestamp - created }}"
            },
            "Delivery": {"template": "{{ log_record | tojson }}"},
            "TransientFailure": {"enable": false},
        }
    }))
    .unwrap();
    let logger = Logger::start(config).unwrap();
    assert!(!logger.is_enabled(RecordType::TransientFailure));
    assert!(logger.is_enabled(RecordType::Bounce));
    let the_bounce = bounce(1);
    let the_delivery = delivery(1);
    logger.submit(reception(1)).await.unwrap();
    logger.submit(the_delivery.clone()).await.unwrap();
    logger.submit(the_bounce.clone()).await.unwrap();
    let mut transient = delivery(2);
    transient.kind = RecordType::TransientFailure;
    logger.submit(transient).await.unwrap();
    logger.shutdown().await.unwrap();

    let main = segments(dir.path());
    let names: Vec<String> = main
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    let recv: Vec<&PathBuf> = main
        .iter()
        .filter(|p| p.to_string_lossy().ends_with("_recv"))
        .collect();
    assert_eq!(recv.len(), 1, "{names:?}");
    let recv_lines = zstd_cli_lines(recv[0]);
    assert_eq!(recv_lines.len(), 1);
    assert_eq!(
        serde_json::from_str::<Value>(&recv_lines[0]).unwrap()["type"],
        "Reception"
    );

    // Delivery: template output equal to the JSON record's content
    let plain = main
        .iter()
        .find(|p| !p.to_string_lossy().ends_with("_recv"))
        .unwrap();
    let delivery_lines = zstd_cli_lines(plain);
    assert_eq!(
        delivery_lines.len(),
        1,
        "TransientFailure must not be logged"
    );
    let rendered: Value = serde_json::from_str(&delivery_lines[0]).unwrap();
    let direct: Value = serde_json::from_str(&the_delivery.to_json()).unwrap();
    assert_eq!(rendered, direct);

    let bounce_files = segments(&bounce_dir);
    assert_eq!(bounce_files.len(), 1);
    assert!(bounce_files[0].to_string_lossy().ends_with(".csv"));
    let age = the_bounce.event_time.timestamp() - the_bounce.created_time.timestamp();
    assert_eq!(
        zstd_cli_lines(&bounce_files[0]),
        [
            "id,code,age".to_string(),
            format!("{},550,{age}", the_bounce.id.unwrap())
        ]
    );
}

#[tokio::test]
async fn leftover_files_are_made_read_only_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let leftover = dir.path().join("20240101-000000.000000000");
    fs::write(&leftover, b"").unwrap();
    assert!(!is_read_only(&leftover));
    let logger = Logger::start(LogConfig::new(dir.path())).unwrap();
    assert!(is_read_only(&leftover));
    logger.shutdown().await.unwrap();
}

#[tokio::test]
async fn several_loggers_run_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let a_dir = dir.path().join("a");
    let b_dir = dir.path().join("b");
    let a = Logger::start(LogConfig::new(&a_dir)).unwrap();
    let b = Logger::start(LogConfig::new(&b_dir)).unwrap();
    for n in 0..50 {
        a.submit(reception(n)).await.unwrap();
        b.submit(delivery(n)).await.unwrap();
        b.submit(bounce(n)).await.unwrap();
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    assert_eq!(tern_log::reader::read_all(&a_dir).unwrap().len(), 50);
    assert_eq!(tern_log::reader::read_all(&b_dir).unwrap().len(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_mode_sees_new_records_across_rotations() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = LogConfig::new(dir.path());
    config.max_file_size = 2000;
    let logger = Logger::start(config).unwrap();
    logger.submit(reception(0)).await.unwrap();
    logger.flush().await.unwrap();

    let mut reader = LogReader::open(dir.path(), LogFilter::default()).unwrap();
    let mut seen = Vec::new();
    let drain = |reader: &mut LogReader, seen: &mut Vec<String>| {
        reader.rescan().unwrap();
        while let Some(line) = reader.next_available(true).unwrap() {
            let value: Value = serde_json::from_str(&line.text).unwrap();
            seen.push(value["recipient"].as_str().unwrap().to_string());
        }
    };
    drain(&mut reader, &mut seen);
    assert_eq!(seen, ["user0@example.com"]);
    // the open segment yields nothing more for now, without ending the reader
    drain(&mut reader, &mut seen);
    assert_eq!(seen.len(), 1);

    for n in 1..30 {
        logger.submit(reception(n)).await.unwrap();
        if n % 7 == 0 {
            logger.flush().await.unwrap();
            drain(&mut reader, &mut seen);
        }
    }
    logger.flush().await.unwrap();
    drain(&mut reader, &mut seen);
    assert!(segments(dir.path()).len() > 3, "rotation happened");
    let expected: Vec<String> = (0..30).map(|n| format!("user{n}@example.com")).collect();
    assert_eq!(seen, expected, "every record once, in order");

    logger.shutdown().await.unwrap();
    drain(&mut reader, &mut seen);
    assert_eq!(seen.len(), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tern_logs_prints_filtered_json_lines_and_follows() {
    let dir = tempfile::tempdir().unwrap();
    let logger = Logger::start(LogConfig::new(dir.path())).unwrap();
    for n in 0..5 {
        logger.submit(reception(n)).await.unwrap();
        logger.submit(delivery(n)).await.unwrap();
        logger.submit(bounce(n)).await.unwrap();
    }
    logger.flush().await.unwrap();

    let args = |extra: &[&str]| -> LogsArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            logs: LogsArgs,
        }
        let mut argv = vec!["tern"];
        argv.extend_from_slice(extra);
        let dir = dir.path().to_str().unwrap();
        argv.push(dir);
        Cli::try_parse_from(argv).unwrap().logs
    };
    let output = |args: &LogsArgs, stop: Option<Arc<AtomicBool>>| -> Vec<Value> {
        let mut out = Vec::new();
        let mut keep_following = || stop.as_ref().is_none_or(|s| !s.load(Ordering::SeqCst));
        run_to(args, &mut out, &mut keep_following).unwrap();
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };

    assert_eq!(output(&args(&[]), None).len(), 15);
    let bounces = output(&args(&["--type", "Bounce"]), None);
    assert_eq!(bounces.len(), 5);
    assert!(bounces.iter().all(|v| v["type"] == "Bounce"));
    let net = output(&args(&["--domain", "example.net"]), None);
    assert_eq!(net.len(), 5);
    assert!(net.iter().all(|v| v["type"] == "Delivery"));
    let queue = output(&args(&["--queue", "example.com"]), None);
    assert_eq!(queue.len(), 5);
    assert!(output(&args(&["--since", "2999-01-01T00:00:00Z"]), None).is_empty());
    assert_eq!(output(&args(&["--since", "1h"]), None).len(), 15);

    // --follow: records written while it runs are printed too
    let follow_args = args(&["--follow", "--poll-interval", "50ms", "--type", "Reception"]);
    let stop = Arc::new(AtomicBool::new(false));
    let follower = {
        let stop = stop.clone();
        std::thread::spawn(move || output(&follow_args, Some(stop)))
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in 5..8 {
        logger.submit(reception(n)).await.unwrap();
        logger.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    logger.shutdown().await.unwrap();
    stop.store(true, Ordering::SeqCst);
    let followed = follower.join().unwrap();
    let recipients: Vec<&str> = followed
        .iter()
        .map(|v| v["recipient"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..8).map(|n| format!("user{n}@example.com")).collect();
    assert_eq!(recipients, expected);
}

/// Child half of `kill_9_loses_nothing_older_than_a_second`: runs only when
/// the parent test re-executes this binary with `TERN_LOG_KILL_DIR` set.
#[tokio::test]
async fn kill_9_child() {
    let Ok(dir) = std::env::var("TERN_LOG_KILL_DIR") else {
        return;
    };
    let logger = Logger::start(LogConfig::new(&dir)).unwrap();
    for n in 0..50 {
        logger.submit(reception(n)).await.unwrap();
    }
    println!("submitted");
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    // keep running (and keep the segment open) until killed
    tokio::time::sleep(Duration::from_secs(60)).await;
}

#[test]
fn kill_9_loses_nothing_older_than_a_second() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "kill_9_child", "--nocapture", "--test-threads=1"])
        .env("TERN_LOG_KILL_DIR", dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("submitted") {
        line.clear();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "child exited early"
        );
    }
    // the contract is ~1 s; allow slack for a loaded test machine
    std::thread::sleep(Duration::from_millis(1500));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let files = segments(dir.path());
    assert_eq!(files.len(), 1);
    assert!(!is_read_only(&files[0]), "the segment was never closed");
    assert_eq!(tern_log::reader::read_all(dir.path()).unwrap().len(), 50);
}

/// Part V.1 #17 and V.2: a segment is named after the UTC time it was
/// opened, `YYYYMMDD-HHMMSS.<nine digits>` (not the documented
/// `YYYYMMDD-HHMMSS`), followed by the per-record suffix.
#[tokio::test]
async fn segment_names_are_the_utc_opening_time_with_nanoseconds() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig::from_json(json!({
        "log_dir": dir.path(),
        "per_record": {"Reception": {"suffix": "_recv"}},
    }))
    .unwrap();
    let before = chrono::Utc::now();
    let logger = Logger::start(config).unwrap();
    logger.submit(reception(1)).await.unwrap();
    logger.submit(delivery(1)).await.unwrap();
    logger.shutdown().await.unwrap();
    let after = chrono::Utc::now();
    let files = segments(dir.path());
    assert_eq!(files.len(), 2, "{files:?}");
    let mut suffixes = Vec::new();
    for file in &files {
        let name = file.file_name().unwrap().to_str().unwrap();
        let bytes = name.as_bytes();
        assert!(name.len() >= 25, "{name}");
        for (i, b) in bytes[..25].iter().enumerate() {
            match i {
                8 => assert_eq!(*b, b'-', "{name}"),
                15 => assert_eq!(*b, b'.', "{name}"),
                _ => assert!(b.is_ascii_digit(), "{name}"),
            }
        }
        let (when, suffix) = tern_log::segment_name::parse_segment_name(name).unwrap();
        assert!(
            before <= when && when <= after,
            "{name}: {when} not in [{before}, {after}]"
        );
        assert_eq!(
            tern_log::segment_name::format_segment_time(when),
            name[..25],
            "{name}"
        );
        suffixes.push(suffix.to_string());
    }
    suffixes.sort();
    assert_eq!(suffixes, ["", "_recv"]);
}

/// Part V.1 #17: however often the writer flushes, a segment holds one
/// zstd frame (tailers and some libraries read only the first frame), and
/// it becomes read-only when it is complete.
#[tokio::test]
async fn a_segment_is_one_zstd_frame_across_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let logger = Logger::start(LogConfig::new(dir.path())).unwrap();
    for n in 0..5 {
        logger.submit(reception(n)).await.unwrap();
        logger.flush().await.unwrap();
    }
    let files = segments(dir.path());
    assert_eq!(files.len(), 1);
    assert!(!is_read_only(&files[0]), "still open");
    logger.shutdown().await.unwrap();
    assert!(is_read_only(&files[0]), "complete segments are read-only");
    let bytes = fs::read(&files[0]).unwrap();
    let first_frame = zstd::zstd_safe::find_frame_compressed_size(&bytes).unwrap();
    assert_eq!(first_frame, bytes.len(), "more than one zstd frame");
    assert_eq!(zstd_cli_lines(&files[0]).len(), 5);
}
