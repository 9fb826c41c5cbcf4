//! `kill -9` during heavy reception loses nothing that was acknowledged.
//!
//! Several clients send messages as fast as they can; the server is killed
//! at a random moment; every message that got a `250` must then be in both
//! spools with exactly the bytes that were sent (after the trace headers
//! Tern prepends), and the restarted server must recover every one of
//! those ids. The full-size run (20,000 messages over 50 connections) is
//! `bench/crash-safety.sh`; this test is the small version.

use std::sync::{Arc, Mutex};
use std::time::Duration;
use tern_testkit::{Builder, SmtpClient};

fn policy(kind: &str) -> String {
    format!(
        r#"local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool {{ name = 'data', path = '{{dir}}/spool/data', kind = '{kind}', min_free_space = '1%' }}
  kumo.define_spool {{ name = 'meta', path = '{{dir}}/spool/meta', kind = '{kind}', min_free_space = '1%' }}
  kumo.start_esmtp_listener {{ listen = '127.0.0.1:0' }}
end)
-- Names every message recovery finds, so the test can check each id.
kumo.on('spool_message_enumerated', function(msg)
  print('enumerated ' .. msg:id())
end)
"#
    )
}

/// One acknowledged message: its id, recipient and the exact bytes sent
/// after `DATA` (already CRLF and dot-safe, without the final dot).
#[derive(Clone)]
struct Acked {
    id: String,
    recipient: String,
    sent: String,
}

fn sender(addr: std::net::SocketAddr, worker: usize, acked: Arc<Mutex<Vec<Acked>>>) {
    let Ok(mut smtp) = SmtpClient::connect(addr) else {
        return;
    };
    if smtp.read_reply().is_err() || smtp.command("EHLO crash.test").is_err() {
        return;
    }
    for n in 0.. {
        let token = format!("token-{worker}-{n}-{}", "x".repeat(n % 300));
        let recipient = format!("w{worker}@example.com");
        let sent = format!("Subject: {n}\r\nX-Worker: {worker}\r\n\r\n{token}\r\n");
        let steps = (|| -> anyhow::Result<(u16, String)> {
            smtp.command("MAIL FROM:<a@example.com>")?;
            smtp.command(&format!("RCPT TO:<{recipient}>"))?;
            smtp.command("DATA")?;
            smtp.send_raw(sent.as_bytes())?;
            smtp.command(".")
        })();
        match steps {
            Ok((250, reply)) => {
                let id = reply.split("ids=").nth(1).unwrap_or("").trim().to_string();
                acked.lock().unwrap().push(Acked {
                    id,
                    recipient,
                    sent,
                });
            }
            _ => return,
        }
    }
}

fn crash_and_recover(kind: &str) {
    let server = Builder::new(policy(kind))
        .binary(env!("CARGO_BIN_EXE_tern"))
        .start()
        .unwrap();
    let addr = server.listener("smtp");
    let acked = Arc::new(Mutex::new(Vec::new()));
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let connections = env("TERN_CRASH_CONNECTIONS", 8);
    let target = env("TERN_CRASH_MESSAGES", 400);
    let workers: Vec<_> = (0..connections)
        .map(|w| {
            let acked = acked.clone();
            std::thread::spawn(move || sender(addr, w, acked))
        })
        .collect();
    // Kill at a random point between half and all of the target count.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as usize;
    let kill_at = target / 2 + seed % (target / 2 + 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while acked.lock().unwrap().len() < kill_at && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    let dir = server.kill9();
    for w in workers {
        let _ = w.join();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 20,
        "too few messages were sent before the kill: {}",
        acked.len()
    );

    let spool = |name: &str| {
        let kind = if kind == "RocksDB" {
            tern_spool::SpoolKind::RocksDB
        } else {
            tern_spool::SpoolKind::LocalDisk
        };
        tern_spool::Spool::open(&tern_spool::SpoolConfig::new(
            name,
            dir.path().join("spool").join(name),
            kind,
        ))
        .unwrap()
    };
    let (data, meta) = (spool("data"), spool("meta"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    for message in &acked {
        let Acked {
            id,
            recipient,
            sent,
        } = message;
        let id: tern_types::SpoolId = id.parse().unwrap_or_else(|e| panic!("bad id {id}: {e}"));
        let body = rt
            .block_on(data.load(id))
            .unwrap_or_else(|e| panic!("acknowledged {id} lost from data: {e}"));
        let text = String::from_utf8(body).unwrap();
        // Exactly what was sent, after the trace headers Tern prepends.
        let trace = text.strip_suffix(sent.as_str()).unwrap_or_else(|| {
            panic!("{id}: the stored bytes do not end with what was sent: {text:?}")
        });
        check_trace_headers(trace, &id.to_string(), recipient);
        let m = rt
            .block_on(meta.load(id))
            .unwrap_or_else(|e| panic!("acknowledged {id} lost from meta: {e}"));
        let json: serde_json::Value = serde_json::from_slice(&m).unwrap();
        assert_eq!(json["sender"], "a@example.com");
        assert_eq!(json["recipient"], recipient.as_str());
    }

    // and the restarted server finds them all
    drop((data, meta));
    let server = Builder::new(policy(kind))
        .binary(env!("CARGO_BIN_EXE_tern"))
        .dir(dir)
        .start()
        .unwrap();
    let line = server
        .wait_for_line("messages queued,", Duration::from_secs(60))
        .unwrap();
    let count: usize = line
        .split("spool recovery: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!(
        count >= acked.len(),
        "recovered {count} < acknowledged {}",
        acked.len()
    );
    // Every acknowledged id, not just as many, was found by recovery.
    // (The ids are printed on stdout and the summary on stderr, which are
    // read by separate threads, so wait for each line.)
    for message in &acked {
        server
            .wait_for_line(
                &format!("enumerated {}", message.id),
                Duration::from_secs(10),
            )
            .unwrap_or_else(|err| panic!("acknowledged {} was not recovered: {err}", message.id));
    }
}

/// The bytes before the message as sent must be Tern's trace headers and
/// nothing else: header fields (with folded continuation lines) named
/// `Received` (exactly one, naming this message's id and recipient) or
/// `X-KumoRef` (the supplemental trace header).
fn check_trace_headers(trace: &str, id: &str, recipient: &str) {
    assert!(trace.ends_with("\r\n"), "{id}: {trace:?}");
    let mut fields: Vec<String> = Vec::new();
    for line in trace.trim_end_matches("\r\n").split("\r\n") {
        match fields.last_mut() {
            Some(field) if line.starts_with([' ', '\t']) => {
                field.push(' ');
                field.push_str(line.trim());
            }
            _ => fields.push(line.to_string()),
        }
    }
    let mut received = 0;
    for field in &fields {
        let name = field.split_once(':').map(|(name, _)| name).unwrap_or("");
        match name {
            "Received" => {
                received += 1;
                assert!(
                    field.starts_with("Received: from crash.test ")
                        && field.contains(&format!("id {id} for <{recipient}>;")),
                    "{id}: the Received header names another message: {field:?}"
                );
            }
            "X-KumoRef" => {}
            _ => panic!("{id}: {field:?} is not a trace header: {trace:?}"),
        }
    }
    assert_eq!(received, 1, "{id}: {trace:?}");
}

#[test]
fn kill_9_loses_no_acknowledged_message_local_disk() {
    crash_and_recover("LocalDisk");
}

#[test]
fn kill_9_loses_no_acknowledged_message_rocksdb() {
    crash_and_recover("RocksDB");
}
