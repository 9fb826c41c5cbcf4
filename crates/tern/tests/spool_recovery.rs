//! Spool recovery at startup (§2.3), graceful shutdown's save of
//! deferred-spool messages (§1.1), and the ingress refusals around them
//! (§3.2), against the real `tern serve`.
//!
//! Spool contents are built with the `tern-spool` crate before the server
//! starts (the server holds the spool lock while it runs), and checked the
//! same way after it stops.

mod common;

use common::*;
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};
use tern_bench::sink::SinkConfig;
use tern_spool::{Spool, SpoolConfig, SpoolError, SpoolKind};
use tern_testkit::{Builder, SmtpClient, TernServer};
use tern_types::SpoolId;

/// Spools, logs, an SMTP listener, then `extra` (event handlers).
fn policy(init_extra: &str, extra: &str) -> String {
    format!(
        r#"local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool {{ name = 'data', path = '{{dir}}/spool/data', min_free_space = '1%' }}
  kumo.define_spool {{ name = 'meta', path = '{{dir}}/spool/meta', min_free_space = '1%' }}
  kumo.configure_local_logs {{ log_dir = '{{dir}}/logs', max_segment_duration = '1s' }}
  kumo.start_esmtp_listener {{ listen = '127.0.0.1:0', relay_hosts = {{ '127.0.0.1' }} }}
  {init_extra}
end)
{extra}
"#
    )
}

/// Queues wait an hour between attempts, so recovered messages stay put.
const SLOW_QUEUES: &str = r#"
kumo.on('get_queue_config', function()
  return kumo.make_queue_config { retry_interval = '1h' }
end)
"#;

/// Opens a spool in this process. The helpers open and drop the same
/// spool again and again; another test of this binary may be starting a
/// server at that moment, and between `fork` and `exec` that child shares
/// every descriptor, including the lock of a handle just dropped here. So
/// a `Locked` error is retried for a while.
fn open(dir: &Path, name: &str) -> Spool {
    let config = SpoolConfig::new(name, dir.join("spool").join(name), SpoolKind::LocalDisk);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Spool::open(&config) {
            Err(SpoolError::Locked { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            outcome => return outcome.unwrap(),
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Store `meta` (raw bytes) and a small body under `id` in both spools.
fn put(dir: &Path, id: SpoolId, meta: &[u8]) {
    let rt = runtime();
    let (data, meta_spool) = (open(dir, "data"), open(dir, "meta"));
    rt.block_on(async {
        data.store(id, b"Subject: recovered\r\n\r\nbody\r\n".to_vec().into())
            .await
            .unwrap();
        meta_spool.store(id, meta.to_vec().into()).await.unwrap();
    });
}

fn meta_doc(recipient: Value, meta: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "sender": "sender@example.com",
        "recipient": recipient,
        "meta": meta,
        "schedule": null,
    }))
    .unwrap()
}

/// What each spool holds under `id` now (`None` when it is gone).
fn stored(dir: &Path, id: SpoolId) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    let rt = runtime();
    let get = |name: &str| match rt.block_on(open(dir, name).load(id)) {
        Ok(bytes) => Some(bytes),
        Err(SpoolError::NotFound(_)) => None,
        Err(err) => panic!("loading {id} from {name}: {err}"),
    };
    (get("data"), get("meta"))
}

fn start_in(dir: tempfile::TempDir, policy: String) -> TernServer {
    Builder::new(policy)
        .binary(env!("CARGO_BIN_EXE_tern"))
        .dir(dir)
        .start()
        .unwrap()
}

#[test]
fn spool_message_enumerated_rewrites_meta_and_the_change_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let id = SpoolId::new();
    put(
        dir.path(),
        id,
        &meta_doc(json!("rcpt@example.com"), json!({"tenant": "old"})),
    );
    let handler = r#"
kumo.on('spool_message_enumerated', function(msg)
  msg:set_meta('tenant', 'rewritten')
  msg:set_meta('enumerated', true)
end)
"#;
    let server = start_in(dir, policy("", &format!("{SLOW_QUEUES}{handler}")));
    server
        .wait_for_line("spool recovery: 1 messages queued", Duration::from_secs(10))
        .unwrap();
    let dir = server.stop();
    let (data, meta) = stored(dir.path(), id);
    assert!(data.is_some(), "the body must stay in the spool");
    let meta: Value = serde_json::from_slice(&meta.expect("meta stays")).unwrap();
    assert_eq!(meta["meta"]["tenant"], "rewritten");
    assert_eq!(meta["meta"]["enumerated"], true);
}

#[test]
fn an_error_in_spool_message_enumerated_aborts_startup() {
    startup_aborts_and_keeps_the_message(
        "error('cannot handle this message')",
        "cannot handle this message",
    );
}

/// `kumo.reject` raises an error like any other, so it aborts startup
/// too (KumoMTA: errors in this event prevent startup).
#[test]
fn kumo_reject_in_spool_message_enumerated_aborts_startup() {
    startup_aborts_and_keeps_the_message(
        "kumo.reject(550, 'not wanted after restart')",
        "not wanted after restart",
    );
}

/// A spooled message whose `spool_message_enumerated` runs `statement`:
/// the server must exit before initialization completes, naming the
/// message and `reason`, and leave both halves of the message in place.
fn startup_aborts_and_keeps_the_message(statement: &str, reason: &str) {
    let dir = tempfile::tempdir().unwrap();
    let id = SpoolId::new();
    put(
        dir.path(),
        id,
        &meta_doc(json!("rcpt@example.com"), json!({})),
    );
    let handler =
        format!("kumo.on('spool_message_enumerated', function(msg)\n  {statement}\nend)\n");
    let mut server = Builder::new(policy("", &handler))
        .binary(env!("CARGO_BIN_EXE_tern"))
        .dir(dir)
        .no_wait()
        .start()
        .unwrap();
    let status = server.wait_exit(Duration::from_secs(30)).unwrap();
    assert!(!status.success());
    let output = server.output();
    assert!(
        output.contains(&format!(
            "spool recovery aborted: spool_message_enumerated failed for {id}"
        )) && output.contains(reason),
        "{output}"
    );
    assert!(!output.contains("initialization complete"), "{output}");
    // Aborting startup must not cost the message.
    let dir = server.stop();
    let (data, meta) = stored(dir.path(), id);
    assert!(data.is_some() && meta.is_some(), "the message was lost");
}

/// The queue is computed from the metadata as `spool_message_enumerated`
/// left it: moving a message to the `null` queue drops it, from both
/// spools and without a log record.
#[test]
fn the_queue_is_computed_after_spool_message_enumerated() {
    let dir = tempfile::tempdir().unwrap();
    let dropped = SpoolId::new();
    put(
        dir.path(),
        dropped,
        &meta_doc(json!("drop@example.com"), json!({})),
    );
    let kept = SpoolId::new();
    put(
        dir.path(),
        kept,
        &meta_doc(json!("keep@example.com"), json!({})),
    );
    let handler = r#"
kumo.on('spool_message_enumerated', function(msg)
  if msg:recipient().user == 'drop' then
    msg:set_meta('queue', 'null')
  end
end)
"#;
    let server = start_in(dir, policy("", &format!("{SLOW_QUEUES}{handler}")));
    let summary = server
        .wait_for_line("messages queued,", Duration::from_secs(10))
        .unwrap();
    assert!(
        summary.contains("1 messages queued") && summary.contains("0 expired"),
        "{summary}"
    );
    let dir = server.stop();
    assert_eq!(stored(dir.path(), dropped), (None, None));
    let (data, meta) = stored(dir.path(), kept);
    assert!(data.is_some() && meta.is_some());
    assert!(
        !records(&dir.path().join("logs"))
            .iter()
            .any(|r| r["id"] == dropped.to_string()),
        "a message moved to the null queue was logged"
    );
}

const ORPHAN_BODY: &[u8] = b"Subject: orphan\r\n\r\nbody\r\n";

/// Only the meta spool is walked. A meta entry whose body is missing is
/// queued like any other and removed, with the reason logged, when it
/// falls due; a body without metadata is never seen and stays where it is
/// (as in KumoMTA).
#[test]
fn half_a_message_is_handled_without_harm() {
    let dir = tempfile::tempdir().unwrap();
    let meta_only = SpoolId::new();
    let data_only = SpoolId::new();
    {
        let rt = runtime();
        let (data, meta) = (open(dir.path(), "data"), open(dir.path(), "meta"));
        rt.block_on(async {
            let doc = meta_doc(json!("rcpt@example.com"), json!({}));
            meta.store(meta_only, doc.into()).await.unwrap();
            data.store(data_only, ORPHAN_BODY.to_vec().into())
                .await
                .unwrap();
        });
    }
    let server = start_in(dir, policy("", SLOW_QUEUES));
    let summary = server
        .wait_for_line("messages queued,", Duration::from_secs(10))
        .unwrap();
    assert!(
        summary.contains("1 messages queued") && summary.contains("0 corrupt"),
        "{summary}"
    );
    let line = server
        .wait_for_line("cannot be read from the spool", Duration::from_secs(20))
        .unwrap();
    assert!(
        line.contains(&format!("message {meta_only} is due but cannot be read"))
            && line.contains(&format!("message {meta_only} is not in the spool"))
            && line.contains("removing what is left of it"),
        "{line}"
    );
    let dir = server.stop();
    assert_eq!(stored(dir.path(), meta_only), (None, None));
    let (data, meta) = stored(dir.path(), data_only);
    assert_eq!((data.as_deref(), meta), (Some(ORPHAN_BODY), None));
}

#[test]
fn corrupt_and_unreadable_entries_are_removed_with_a_logged_reason() {
    let dir = tempfile::tempdir().unwrap();
    let corrupt = SpoolId::new();
    put(dir.path(), corrupt, b"{ this is not json");
    let good = SpoolId::new();
    put(
        dir.path(),
        good,
        &meta_doc(json!("rcpt@example.com"), json!({})),
    );
    // A file in the meta spool whose path does not spell a spool id.
    let stray = dir.path().join("spool/meta/data/ab/cd/ef/01/not-an-id");
    std::fs::create_dir_all(stray.parent().unwrap()).unwrap();
    std::fs::write(&stray, b"{}").unwrap();

    let server = start_in(dir, policy("", SLOW_QUEUES));
    let summary = server
        .wait_for_line("messages queued,", Duration::from_secs(10))
        .unwrap();
    assert!(
        summary.contains("1 messages queued") && summary.contains("2 corrupt entries removed"),
        "{summary}"
    );
    let output = server.output();
    assert!(
        output.contains(&format!("corrupt meta spool entry for {corrupt}"))
            && output.contains("removing it from both spools"),
        "{output}"
    );
    assert!(
        output.contains(&format!(
            "meta spool entry {} is unreadable (its path does not spell a spool id); removed it",
            stray.display()
        )),
        "{output}"
    );
    let dir = server.stop();
    assert_eq!(stored(dir.path(), corrupt), (None, None));
    assert!(!stray.exists());
    let (data, meta) = stored(dir.path(), good);
    assert!(data.is_some() && meta.is_some());
}

#[test]
fn a_queue_name_failure_and_max_age_expire_the_message() {
    let dir = tempfile::tempdir().unwrap();
    // No recipient: the queue name cannot be computed.
    let nameless = SpoolId::new();
    put(dir.path(), nameless, &meta_doc(json!([]), json!({})));
    // Two hours old, in a queue whose max_age is one hour.
    let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
    let old = SpoolId::with_created(two_hours_ago);
    put(
        dir.path(),
        old,
        &meta_doc(json!("old@example.com"), json!({})),
    );
    // Fifty minutes old, in a queue retrying at 20 m, 40 m, ... with a
    // max_age of 55 m: younger than max_age, but the next slot of its
    // schedule (60 m after creation) is past it.
    let slot_past = SpoolId::with_created(SystemTime::now() - Duration::from_secs(50 * 60));
    put(
        dir.path(),
        slot_past,
        &meta_doc(json!("slot@short.example.com"), json!({})),
    );
    // Two hours old too, but with a per-message expiry a day from now,
    // which replaces max_age (set_scheduling): it is queued.
    let kept = SpoolId::with_created(two_hours_ago);
    let tomorrow = chrono::Utc::now() + chrono::Duration::days(1);
    put(
        dir.path(),
        kept,
        &serde_json::to_vec(&json!({
            "sender": "sender@example.com",
            "recipient": "kept@example.com",
            "meta": {},
            "schedule": {"expires": tomorrow.to_rfc3339()},
        }))
        .unwrap(),
    );
    let queues = r#"
kumo.on('get_queue_config', function(domain)
  if domain == 'short.example.com' then
    return kumo.make_queue_config { retry_interval = '20m', max_age = '55m' }
  end
  return kumo.make_queue_config { retry_interval = '1h', max_age = '1h' }
end)
"#;
    let server = start_in(dir, policy("", queues));
    let summary = server
        .wait_for_line("messages queued,", Duration::from_secs(10))
        .unwrap();
    assert!(
        summary.contains("1 messages queued")
            && summary.contains("2 expired")
            && summary.contains("1 corrupt entries removed"),
        "{summary}"
    );
    let log_dir = server.dir().join("logs");
    let records = wait_for_records(&log_dir, Duration::from_secs(20), |r| {
        count(r, "Expiration") >= 3
    });
    let expiration = |id: SpoolId| {
        records
            .iter()
            .find(|r| r["type"] == "Expiration" && r["id"] == id.to_string())
            .unwrap_or_else(|| panic!("no Expiration for {id}: {records:?}"))
            .clone()
    };
    let nameless_record = expiration(nameless);
    assert_eq!(nameless_record["response"]["code"], 551);
    assert_eq!(
        nameless_record["response"]["enhanced_code"],
        json!({"class": 5, "subject": 1, "detail": 3})
    );
    assert!(
        nameless_record["response"]["content"]
            .as_str()
            .unwrap()
            .starts_with("Failed to compute queue name: "),
        "{nameless_record}"
    );
    let old_record = expiration(old);
    assert_eq!(old_record["response"]["code"], 551);
    assert_eq!(
        old_record["response"]["enhanced_code"],
        json!({"class": 5, "subject": 4, "detail": 7})
    );
    assert_eq!(old_record["queue"], "example.com");
    assert_eq!(
        old_record["response"]["content"],
        "message is older than max_age=1h at spool recovery"
    );
    let slot_record = expiration(slot_past);
    assert_eq!(
        slot_record["response"]["enhanced_code"],
        json!({"class": 5, "subject": 4, "detail": 7})
    );
    assert_eq!(
        slot_record["response"]["content"],
        "Next delivery time would be 1h after creation, which exceeds max_age=55m"
    );
    let dir = server.stop();
    assert_eq!(stored(dir.path(), nameless), (None, None));
    assert_eq!(stored(dir.path(), old), (None, None));
    assert_eq!(stored(dir.path(), slot_past), (None, None));
    let (data, meta) = stored(dir.path(), kept);
    assert!(
        data.is_some() && meta.is_some(),
        "per-message expiry ignored"
    );
    assert!(
        !common::records(&dir.path().join("logs"))
            .iter()
            .any(|r| r["id"] == kept.to_string()),
        "the message with a per-message expiry was logged"
    );
}

#[test]
fn a_failing_get_queue_config_leaves_the_message_in_the_spool() {
    let dir = tempfile::tempdir().unwrap();
    let id = SpoolId::new();
    put(
        dir.path(),
        id,
        &meta_doc(json!("rcpt@example.com"), json!({})),
    );
    let queues = r#"
kumo.on('get_queue_config', function()
  error('queue config is broken')
end)
"#;
    let server = start_in(dir, policy("", queues));
    let summary = server
        .wait_for_line("messages queued,", Duration::from_secs(10))
        .unwrap();
    assert!(
        summary.contains("0 messages queued")
            && summary.contains("1 left for a failed get_queue_config"),
        "{summary}"
    );
    assert!(
        server
            .output()
            .contains("its messages stay in the spool untouched"),
        "{}",
        server.output()
    );
    let dir = server.stop();
    let (data, meta) = stored(dir.path(), id);
    assert!(
        data.is_some() && meta.is_some(),
        "the message must be left alone"
    );
}

#[test]
fn entries_created_after_the_process_started_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    // An id from an hour after this test started is newer than the server
    // process will be: to recovery it looks like a live message.
    let live = SpoolId::with_created(SystemTime::now() + Duration::from_secs(3600));
    put(
        dir.path(),
        live,
        &meta_doc(json!("live@example.com"), json!({})),
    );
    let old = SpoolId::new();
    put(
        dir.path(),
        old,
        &meta_doc(json!("old@example.com"), json!({})),
    );
    let server = start_in(dir, policy("", SLOW_QUEUES));
    let summary = server
        .wait_for_line("messages queued,", Duration::from_secs(10))
        .unwrap();
    assert!(
        summary.contains("1 messages queued") && summary.contains("1 live entries ignored"),
        "{summary}"
    );
    let dir = server.stop();
    let (data, meta) = stored(dir.path(), live);
    assert!(data.is_some() && meta.is_some());
}

/// `msg:set_due` in `spool_message_enumerated` replaces the due time
/// recovery computes: both messages are young, so without it both would be
/// due at once; `later@` is made due 4 s (to the whole second) ahead.
#[test]
fn spool_message_enumerated_can_set_the_due_time() {
    let sink = TestSink::start(SinkConfig::default());
    let dir = tempfile::tempdir().unwrap();
    for rcpt in ["now@example.com", "later@example.com"] {
        put(
            dir.path(),
            SpoolId::new(),
            &meta_doc(json!(rcpt), json!({})),
        );
    }
    let handlers = routed(sink.port(), "1h")
        + r#"
kumo.on('spool_message_enumerated', function(msg)
  if msg:recipient().user == 'later' then
    msg:set_due(os.date('!%Y-%m-%dT%H:%M:%SZ', os.time() + 4))
  end
end)
"#;
    let server = start_in(dir, policy("", &handlers));
    server
        .wait_for_line("spool recovery: 2 messages queued", Duration::from_secs(10))
        .unwrap();
    let queued = std::time::Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        sink.stats().messages <= 1,
        "later@ was delivered before its due time"
    );
    let log_dir = server.dir().join("logs");
    let seen = wait_for_records(&log_dir, Duration::from_secs(15), |r| {
        count(r, "Delivery") == 2
    });
    let delivered = |rcpt: &str| {
        let record = of_type(&seen, "Delivery")
            .into_iter()
            .find(|r| r["recipient"] == rcpt)
            .unwrap_or_else(|| panic!("no Delivery for {rcpt}: {seen:#?}"));
        event_seconds(record)
    };
    let gap = delivered("later@example.com") - delivered("now@example.com");
    assert!(
        gap >= 2.0,
        "later@ delivered {gap:.2}s after now@ ({:?} after recovery)",
        queued.elapsed()
    );
}

/// Fill the spool with `n` messages and start a server whose
/// `spool_message_enumerated` handler takes 100 ms per message on one
/// spool-in worker, so enumeration runs for a while. Returns the server
/// (not yet initialized) and its SMTP listener.
fn start_slow_enumeration(n: usize, min_free_space: &str) -> (TernServer, std::net::SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..n {
        put(
            dir.path(),
            SpoolId::new(),
            &meta_doc(json!("rcpt@example.com"), json!({})),
        );
    }
    let handler = r#"
kumo.on('spool_message_enumerated', function(msg)
  kumo.sleep(0.1)
end)
"#;
    let policy = policy("", &format!("{SLOW_QUEUES}{handler}"))
        .replace("min_free_space = '1%'", &format!("min_free_space = '{min_free_space}'"))
        .replace(
            "kumo.on('init', function()",
            "kumo.on('pre_init', function() kumo.set_spoolin_threads(1) end)\nkumo.on('init', function()",
        );
    let server = Builder::new(policy)
        .binary(env!("CARGO_BIN_EXE_tern"))
        .dir(dir)
        .no_wait()
        .start()
        .unwrap();
    let line = server
        .wait_for_line("smtp listener on ", Duration::from_secs(30))
        .unwrap();
    let addr = line
        .split("smtp listener on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    // The spools are open once the walk has started.
    server
        .wait_for_line("start_spool: enumerating", Duration::from_secs(30))
        .unwrap();
    (server, addr)
}

/// The greeting's code and text (without the code and line end).
fn banner(addr: std::net::SocketAddr) -> (u16, String) {
    let mut smtp = SmtpClient::connect(addr).unwrap();
    let (code, text) = smtp.read_reply().unwrap();
    (code, text.get(4..).unwrap_or("").trim_end().to_string())
}

#[test]
fn smtp_answers_421_waiting_for_spool_startup_while_enumerating() {
    let (server, addr) = start_slow_enumeration(40, "1%");
    let (code, text) = banner(addr);
    assert_eq!(code, 421, "{text}");
    assert!(
        text.starts_with("4.3.2 ") && text.ends_with(" waiting for spool startup. Try again soon!"),
        "{text}"
    );
    assert!(!server.output().contains("initialization complete"));
    server
        .wait_for_line("initialization complete", Duration::from_secs(60))
        .unwrap();
    let (code, text) = banner(addr);
    assert_eq!(code, 220, "{text}");
}

/// §3.2 step 2: a full disk is reported before "waiting for spool startup".
#[test]
fn a_full_disk_is_refused_before_waiting_for_spool_startup() {
    let (server, addr) = start_slow_enumeration(40, "100%");
    let (code, text) = banner(addr);
    assert_eq!(code, 421, "{text}");
    assert!(text.ends_with(" disk is too full. Try later"), "{text}");
    assert!(!server.output().contains("initialization complete"));
}

/// A `deferred_spool` message that has not reached the spool when SIGTERM
/// arrives is written there at shutdown, recovered at the next start and
/// delivered. The first destination accepts connections but never sends a
/// banner, so the message waits in memory in its ready queue.
#[test]
fn deferred_spool_messages_are_saved_at_shutdown_and_delivered_after_restart() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        // Keep the accepted connections open and quiet.
        let mut open = Vec::new();
        for stream in silent.incoming().take(4) {
            open.push(stream);
        }
        std::thread::sleep(Duration::from_secs(30));
    });
    let deferred = |policy: String| {
        policy.replace(
            "relay_hosts = { '127.0.0.1' } }",
            "relay_hosts = { '127.0.0.1' }, deferred_spool = true }",
        )
    };
    let server = start_tern(deferred(policy("", &routed(silent_port, "1s"))));
    let mut smtp = server.smtp().unwrap();
    smtp.read_reply().unwrap();
    smtp.command("EHLO test").unwrap();
    let (code, reply) = smtp
        .send_message("s@example.com", "r@example.com", &body("deferred"))
        .unwrap();
    assert_eq!(code, 250, "{reply}");
    let id: SpoolId = reply.split("ids=").nth(1).unwrap().trim().parse().unwrap();
    smtp.command("QUIT").unwrap();
    // Reception did not write it: it only exists in memory.
    std::thread::sleep(Duration::from_millis(500));
    let dir = server.stop();
    let (data, meta) = stored(dir.path(), id);
    assert!(
        data.is_some() && meta.is_some(),
        "the deferred-spool message was not saved at shutdown"
    );
    drop(held);

    let sink = TestSink::start(SinkConfig::default());
    let server = start_in(dir, deferred(policy("", &routed(sink.port(), "1s"))));
    let log_dir = server.dir().join("logs");
    let records = wait_for_records(&log_dir, Duration::from_secs(30), |r| {
        of_type(r, "Delivery")
            .iter()
            .any(|d| d["id"] == id.to_string())
    });
    assert!(count(&records, "Delivery") >= 1);
}
