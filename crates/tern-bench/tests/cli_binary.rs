//! The `tern-bench` binary end to end: the sink's ready line, `send
//! --json`, the summary on SIGTERM and on `--exit-after`, `--stats-json`.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_tern-bench");

fn start_sink(
    extra: &[&str],
) -> (
    std::process::Child,
    String,
    BufReader<std::process::ChildStdout>,
) {
    let mut child = Command::new(BIN)
        .args(["sink", "--listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("sink listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    (child, addr, stdout)
}

#[test]
fn send_json_against_sink_then_sigterm_summary() {
    let dir = tempfile::tempdir().unwrap();
    let stats_path = dir.path().join("stats.json");
    let (mut sink, addr, mut sink_out) =
        start_sink(&["--stats-json", stats_path.to_str().unwrap()]);
    let send = Command::new(BIN)
        .args([
            "send",
            &addr,
            "-n",
            "120",
            "-c",
            "3",
            "--json",
            "--starttls",
        ])
        .output()
        .unwrap();
    assert!(
        send.status.success(),
        "{}",
        String::from_utf8_lossy(&send.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&send.stdout).unwrap();
    assert_eq!(summary["accepted"], 120);
    assert_eq!(summary["codes"]["250"], 120);
    assert!(summary["latency_ms"]["p99"].as_f64().unwrap() > 0.0);

    let status = Command::new("kill")
        .args(["-TERM", &sink.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(sink.wait().unwrap().success());
    let mut rest = String::new();
    sink_out.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("messages: 120 accepted"), "{rest}");
    let stats: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&stats_path).unwrap()).unwrap();
    assert_eq!(stats["messages"], 120);
    assert_eq!(stats["tls_sessions"], 3);
    assert_eq!(
        stats["per_second"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .sum::<u64>(),
        120
    );
}

#[test]
fn sink_exits_by_itself_after_n_messages() {
    let (mut sink, addr, mut sink_out) = start_sink(&["--exit-after", "10", "--no-starttls"]);
    let send = Command::new(BIN)
        .args(["send", &addr, "-n", "10", "-c", "1", "-q"])
        .output()
        .unwrap();
    assert!(send.status.success());
    let text = String::from_utf8_lossy(&send.stdout);
    assert!(text.contains("accepted 10"), "{text}");
    assert!(sink.wait().unwrap().success());
    let mut rest = String::new();
    sink_out.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("messages: 10 accepted"), "{rest}");
}

#[test]
fn send_fails_clearly_when_nothing_listens() {
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = unused.local_addr().unwrap().to_string();
    drop(unused);
    let send = Command::new(BIN)
        .args(["send", &addr, "-n", "1", "-c", "1", "-q"])
        .output()
        .unwrap();
    assert!(!send.status.success());
    let err = String::from_utf8_lossy(&send.stderr);
    assert!(err.contains("no message could be sent"), "{err}");
}

#[test]
fn help_documents_the_switches() {
    let out = Command::new(BIN).args(["sink", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--tempfail-percent",
        "--no-8bitmime",
        "--exit-after",
        "--stats-json",
        "--maildir",
    ] {
        assert!(help.contains(flag), "sink help lacks {flag}");
    }
    let out = Command::new(BIN).args(["send", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--http", "--rate", "--starttls", "--batch-size", "--json"] {
        assert!(help.contains(flag), "send help lacks {flag}");
    }
}
