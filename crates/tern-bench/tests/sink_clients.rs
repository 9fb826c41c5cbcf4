//! The sink's per-recipient behaviour, extension switches, random failures
//! and Maildir output, checked with independent clients: Python's
//! `smtplib` and `swaks`.

use std::time::Duration;
use tern_bench::sink::{Sink, SinkConfig, SinkHandle};

/// For each recipient: one connection, EHLO, MAIL, RCPT (and DATA if it
/// was accepted). Prints JSON: {rcpt: [rcpt code, data code or null,
/// connection closed after RCPT]} plus the EHLO extensions of the last
/// connection under "_ehlo".
const PY_CLIENT: &str = r#"
import json, smtplib, sys
host, port = sys.argv[1], int(sys.argv[2])
out = {}
for rcpt in sys.argv[3:]:
    s = smtplib.SMTP(host, port, timeout=10)
    s.ehlo("py.tern.test")
    out["_ehlo"] = sorted(k.upper() for k in s.esmtp_features.keys())
    s.mail("sender@py.tern.test")
    code, _ = s.rcpt(rcpt)
    data_code = None
    closed = False
    if code == 250:
        data_code, _ = s.data(b"Subject: py\r\n\r\nhello from python\r\n.leading dot\r\n")
    else:
        try:
            s.noop()
        except smtplib.SMTPServerDisconnected:
            closed = True
    try:
        s.quit()
    except smtplib.SMTPServerDisconnected:
        closed = True
    out[rcpt] = [code, data_code, closed]
print(json.dumps(out))
"#;

async fn python(handle: &SinkHandle, recipients: &[&str]) -> serde_json::Value {
    let addr = handle.local_addr;
    let output = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(PY_CLIENT)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .args(recipients)
        .output()
        .await
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("python printed JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_local_part_gets_its_reply_from_smtplib() {
    let sink = Sink::start(SinkConfig::default()).await.unwrap();
    let result = python(
        &sink,
        &[
            "someone@x.test",
            "tempfail@x.test",
            "permfail@x.test",
            "450-busy@x.test",
            "550-nope@x.test",
            "421-bye@x.test",
        ],
    )
    .await;
    assert_eq!(
        result["someone@x.test"],
        serde_json::json!([250, 250, false])
    );
    assert_eq!(
        result["tempfail@x.test"],
        serde_json::json!([451, null, false])
    );
    assert_eq!(
        result["permfail@x.test"],
        serde_json::json!([550, null, false])
    );
    assert_eq!(
        result["450-busy@x.test"],
        serde_json::json!([450, null, false])
    );
    assert_eq!(
        result["550-nope@x.test"],
        serde_json::json!([550, null, false])
    );
    // 421 answers and then closes the connection.
    assert_eq!(
        result["421-bye@x.test"],
        serde_json::json!([421, null, true])
    );
    assert_eq!(
        result["_ehlo"],
        serde_json::json!([
            "8BITMIME",
            "ENHANCEDSTATUSCODES",
            "PIPELINING",
            "SMTPUTF8",
            "STARTTLS"
        ])
    );
    let stats = sink.stats();
    assert_eq!(stats.connections, 6);
    assert_eq!(stats.messages, 1);
    assert_eq!(stats.recipients_accepted, 1);
    assert_eq!(stats.recipients_tempfailed, 3);
    assert_eq!(stats.recipients_permfailed, 2);
    assert_eq!(stats.per_second.iter().sum::<u64>(), 1);
    sink.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extension_switches_remove_what_they_name() {
    let sink = Sink::start(SinkConfig {
        starttls: false,
        eight_bit_mime: false,
        smtputf8: false,
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let result = python(&sink, &["a@x.test"]).await;
    assert_eq!(
        result["_ehlo"],
        serde_json::json!(["ENHANCEDSTATUSCODES", "PIPELINING"])
    );
    sink.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_failure_percentages_apply_to_ordinary_recipients() {
    let sink = Sink::start(SinkConfig {
        tempfail_percent: 100.0,
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let result = python(&sink, &["a@x.test", "b@x.test"]).await;
    assert_eq!(result["a@x.test"][0], 451);
    assert_eq!(result["b@x.test"][0], 451);
    sink.shutdown();
    let sink = Sink::start(SinkConfig {
        permfail_percent: 100.0,
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let result = python(&sink, &["a@x.test"]).await;
    assert_eq!(result["a@x.test"][0], 550);
    assert_eq!(sink.stats().recipients_permfailed, 1);
    sink.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maildir_receives_the_message_with_dots_unstuffed() {
    let dir = tempfile::tempdir().unwrap();
    let maildir = dir.path().join("md");
    let sink = Sink::start(SinkConfig {
        maildir: Some(maildir.clone()),
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    python(&sink, &["keep@x.test"]).await;
    let files: Vec<_> = std::fs::read_dir(maildir.join("new")).unwrap().collect();
    assert_eq!(files.len(), 1);
    let text = std::fs::read_to_string(files[0].as_ref().unwrap().path()).unwrap();
    assert!(
        text.starts_with("Return-Path: <sender@py.tern.test>\r\n"),
        "{text}"
    );
    assert!(
        text.contains("X-Sink-Recipients: keep@x.test\r\n"),
        "{text}"
    );
    assert!(
        text.contains("hello from python\r\n.leading dot\r\n"),
        "{text}"
    );
    assert_eq!(std::fs::read_dir(maildir.join("tmp")).unwrap().count(), 0);
    sink.shutdown();
}

async fn swaks(handle: &SinkHandle, to: &str, tls: bool) -> (bool, String) {
    let mut command = tokio::process::Command::new("swaks");
    command
        .arg("--server")
        .arg(handle.local_addr.to_string())
        .arg("--to")
        .arg(to)
        .arg("--from")
        .arg("swaks@tern.test")
        .arg("--timeout")
        .arg("10");
    if tls {
        command.arg("--tls");
    }
    let output = command.output().await.expect("swaks runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_sees_the_same_replies_with_and_without_tls() {
    let sink = Sink::start(SinkConfig::default()).await.unwrap();
    let (ok, out) = swaks(&sink, "fine@x.test", true).await;
    assert!(ok, "{out}");
    assert!(out.contains("<~  250 2.0.0 OK: queued"), "{out}");
    let (ok, out) = swaks(&sink, "tempfail@x.test", true).await;
    assert!(!ok);
    assert!(out.contains("451 4.3.0"), "{out}");
    let (ok, out) = swaks(&sink, "550-x@x.test", false).await;
    assert!(!ok);
    assert!(out.contains("<** 550 5.7.1"), "{out}");
    let (ok, out) = swaks(&sink, "450-x@x.test", false).await;
    assert!(!ok);
    assert!(out.contains("450 4.2.0"), "{out}");
    let (ok, out) = swaks(&sink, "421-x@x.test", false).await;
    assert!(!ok);
    assert!(out.contains("421 4.3.2"), "{out}");
    let stats = sink.stats();
    assert_eq!(stats.tls_sessions, 2);
    assert_eq!(stats.messages, 1);
    assert_eq!(stats.recipients_tempfailed, 3);
    assert_eq!(stats.recipients_permfailed, 1);
    sink.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pem_certificate_files_are_used_for_starttls() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["pem.tern.test".to_string()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let sink = Sink::start(SinkConfig {
        tls: tern_bench::sink::TlsIdentity::Pem {
            cert: cert_path,
            key: key_path.clone(),
        },
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let (ok, out) = swaks(&sink, "fine@x.test", true).await;
    assert!(ok, "{out}");
    assert_eq!(sink.stats().tls_sessions, 1);
    sink.shutdown();
    // A key file without a key is a clear start-up error.
    std::fs::write(&key_path, "not a key").unwrap();
    let err = Sink::start(SinkConfig {
        tls: tern_bench::sink::TlsIdentity::Pem {
            cert: dir.path().join("cert.pem"),
            key: key_path,
        },
        ..SinkConfig::default()
    })
    .await
    .err()
    .unwrap();
    assert!(format!("{err:#}").contains("no PEM private key"), "{err:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_after_fires_once_enough_messages_arrived() {
    let sink = Sink::start(SinkConfig {
        exit_after: Some(2),
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    python(&sink, &["a@x.test"]).await;
    let early = tokio::time::timeout(Duration::from_millis(100), sink.exited()).await;
    assert!(early.is_err(), "must not fire after one message");
    python(&sink, &["b@x.test"]).await;
    tokio::time::timeout(Duration::from_secs(5), sink.exited())
        .await
        .expect("fires after the second message");
    sink.shutdown();
}
