//! A peer that closes an idle connection (as busy MX hosts do) must not
//! cost the next message an attempt: Tern notices the close before sending
//! and delivers the message on a new connection.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// An SMTP peer that accepts every message and closes each connection
/// 100 ms after a message was accepted, if nothing else comes.
fn closing_peer() -> (u16, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let messages = Arc::new(AtomicUsize::new(0));
    let (c, m) = (connections.clone(), messages.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            c.fetch_add(1, Ordering::SeqCst);
            let m = m.clone();
            std::thread::spawn(move || -> std::io::Result<()> {
                let mut writer = stream.try_clone()?;
                let mut reader = BufReader::new(stream);
                writer.write_all(b"220 closing.test ESMTP\r\n")?;
                let mut line = String::new();
                let mut in_data = false;
                loop {
                    line.clear();
                    if reader.read_line(&mut line)? == 0 {
                        return Ok(());
                    }
                    if in_data {
                        if line == ".\r\n" {
                            m.fetch_add(1, Ordering::SeqCst);
                            writer.write_all(b"250 2.0.0 ok\r\n")?;
                            // The idle close: no QUIT, no reply, just gone.
                            std::thread::sleep(Duration::from_millis(100));
                            return Ok(());
                        }
                        continue;
                    }
                    let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
                    let reply: &[u8] = match verb.as_str() {
                        "EHLO" => b"250 closing.test\r\n",
                        "DATA" => {
                            in_data = true;
                            b"354 go ahead\r\n"
                        }
                        "QUIT" => return writer.write_all(b"221 bye\r\n"),
                        _ => b"250 ok\r\n",
                    };
                    writer.write_all(reply)?;
                }
            });
        }
    });
    (port, connections, messages)
}

#[test]
fn a_connection_the_peer_closed_while_idle_is_replaced_without_an_attempt() {
    let (port, connections, messages) = closing_peer();
    let mut policy = policy_head("LocalDisk");
    policy.push_str(&routed_with(
        port,
        "retry_interval = '1h',",
        "idle_timeout = '10s',",
    ));
    let server = start_tern(policy);
    let logs = server.dir().join("logs");
    let send = |to: &str| {
        let mut smtp = server.smtp().unwrap();
        smtp.read_reply().unwrap();
        smtp.command("EHLO client.test").unwrap();
        let (code, text) = smtp.send_message("s@sender.test", to, &body(to)).unwrap();
        assert_eq!(code, 250, "{text}");
        smtp.command("QUIT").unwrap();
    };
    send("first@example.com");
    wait_for_records(&logs, Duration::from_secs(20), |r| {
        count(r, "Delivery") == 1
    });
    // The peer has closed the idle connection by now; Tern's is still
    // waiting out its 10 s idle_timeout.
    std::thread::sleep(Duration::from_millis(500));
    send("second@example.com");
    let records = wait_for_records(&logs, Duration::from_secs(20), |r| {
        count(r, "Delivery") == 2
    });
    assert_eq!(
        count(&records, "TransientFailure"),
        0,
        "no attempt was spent"
    );
    let second = of_type(&records, "Delivery")
        .into_iter()
        .find(|r| r["recipient"] == "second@example.com")
        .unwrap();
    assert_eq!(second["num_attempts"], 0);
    assert_eq!(messages.load(Ordering::SeqCst), 2);
    assert_eq!(
        connections.load(Ordering::SeqCst),
        2,
        "a new connection for the second"
    );
}
