//! The client against Postfix's `smtp-sink` (package `postfix`), an SMTP
//! server Tern shares no code with: the dumped message must match what was
//! sent, and 8-bit content must bounce when `-8` hides 8BITMIME.

mod common;

use common::{addr, plan_to, settings, test_path};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;
use tern_delivery::{Outcome, SmtpConnection, TransportError};
use tern_queue::config::Tls;
use tokio::process::{Child, Command};

const SMTP_SINK: &str = "/usr/sbin/smtp-sink";

async fn start_smtp_sink(dump_dir: &Path, extra: &[&str]) -> (Child, std::net::SocketAddr) {
    assert!(
        Path::new(SMTP_SINK).exists(),
        "{SMTP_SINK} is missing: install the Debian package `postfix`"
    );
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let listen = format!("127.0.0.1:{port}");
    std::fs::set_permissions(dump_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut command = Command::new(SMTP_SINK);
    // As root, smtp-sink insists on dropping privileges.
    if unsafe { libc::geteuid() } == 0 {
        command.args(["-u", "nobody"]);
    }
    command
        .args(extra)
        .arg("-d")
        .arg(format!("{}/%Y%m%d%H%M%S.", dump_dir.display()))
        .arg(&listen)
        .arg("10")
        .kill_on_drop(true);
    let child = command.spawn().expect("starting smtp-sink");
    let addr: std::net::SocketAddr = listen.parse().unwrap();
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return (child, addr);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("smtp-sink did not start listening on {addr}");
}

async fn wait_for_dump(dir: &Path) -> String {
    for _ in 0..100 {
        let files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        if let Some(file) = files.first() {
            let text = std::fs::read_to_string(file).unwrap();
            if !text.is_empty() {
                return text;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("smtp-sink wrote no dump file");
}

#[tokio::test]
async fn delivers_to_postfix_smtp_sink() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, sink) = start_smtp_sink(dir.path(), &[]).await;
    let settings = settings(test_path(Tls::Disabled));
    let (mut conn, _) = SmtpConnection::connect(&plan_to(&[sink]), 0, &settings)
        .await
        .unwrap();
    assert!(conn.capabilities().pipelining);
    let message = b"Subject: postfix\r\n\r\n.one dot\r\n..two dots\r\nplain\r\n";
    let results = conn
        .send(
            &addr("sender@tern.test"),
            &[addr("a@example.com"), addr("b@example.com")],
            message,
        )
        .await
        .unwrap();
    assert!(
        results.iter().all(|r| r.outcome == Outcome::Delivered),
        "{results:?}"
    );
    conn.quit().await;

    let dump = wait_for_dump(dir.path()).await;
    assert!(dump.contains("X-Mail-Args: <sender@tern.test>\n"), "{dump}");
    assert!(dump.contains("X-Rcpt-Args: <a@example.com>\n"), "{dump}");
    assert!(dump.contains("X-Rcpt-Args: <b@example.com>\n"), "{dump}");
    assert!(dump.contains("X-Helo-Args: client.tern.test\n"), "{dump}");
    // smtp-sink stores lines with LF endings and dots removed again.
    let start = dump.find("Subject: postfix").expect("message in the dump");
    let expected = String::from_utf8_lossy(message).replace("\r\n", "\n");
    assert!(dump[start..].starts_with(&expected), "{dump}");
    let _ = child.kill().await;
}

#[tokio::test]
async fn eight_bit_bounces_against_smtp_sink_without_8bitmime() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, sink) = start_smtp_sink(dir.path(), &["-8"]).await;
    let settings = settings(test_path(Tls::Disabled));
    let (mut conn, _) = SmtpConnection::connect(&plan_to(&[sink]), 0, &settings)
        .await
        .unwrap();
    assert!(!conn.capabilities().eight_bit_mime);
    let err = conn
        .send(
            &addr("s@tern.test"),
            &[addr("a@example.com")],
            "Subject: \u{fc}ber\r\n\r\nx\r\n".as_bytes(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::EightBitData));
    assert_eq!(err.response().code, 554);
    conn.quit().await;
    let _ = child.kill().await;
}
