//! How the queue runtime turns SMTP client results into log records, with
//! a real Tern relaying to a scripted peer on a socket: recipient batches
//! and "too many recipients" on one connection, and which failures
//! `smtp_client_rewrite_delivery_status` is asked about.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the scripted peer does with one command line.
enum Act {
    Reply(&'static str),
    /// Close the connection without answering.
    Close,
}

/// Every command line (CRLF stripped) the peer saw, per connection.
type Transcripts = Arc<Mutex<Vec<Vec<String>>>>;

/// A scripted SMTP peer: `220` banner, EHLO without PIPELINING, then
/// `script(line, rcpts_in_this_transaction)` decides; `None` means the
/// ordinary answer. `"."` stands for the end of the message data.
fn scripted_peer(
    script: impl Fn(&str, usize) -> Option<Act> + Send + Sync + 'static,
) -> (u16, Transcripts) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let transcripts: Transcripts = Arc::default();
    let all = transcripts.clone();
    let script = Arc::new(script);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let index = {
                let mut all = all.lock().unwrap();
                all.push(Vec::new());
                all.len() - 1
            };
            let all = all.clone();
            let script = script.clone();
            std::thread::spawn(move || {
                let _ = serve(stream, index, &all, &*script);
            });
        }
    });
    (port, transcripts)
}

fn serve(
    stream: TcpStream,
    index: usize,
    all: &Transcripts,
    script: &dyn Fn(&str, usize) -> Option<Act>,
) -> std::io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    writer.write_all(b"220 peer.test ESMTP\r\n")?;
    let mut rcpts = 0usize;
    let mut in_data = false;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if in_data {
            if line != ".\r\n" {
                continue;
            }
            in_data = false;
            line = ".".to_string();
        }
        let text = line.trim_end().to_string();
        all.lock().unwrap()[index].push(text.clone());
        let verb = text.split(' ').next().unwrap_or("").to_ascii_uppercase();
        let act = script(&text, rcpts).unwrap_or(match verb.as_str() {
            "EHLO" => Act::Reply("250-peer.test\r\n250 8BITMIME\r\n"),
            "DATA" => Act::Reply("354 go ahead\r\n"),
            "." => Act::Reply("250 2.0.0 queued\r\n"),
            "QUIT" => {
                writer.write_all(b"221 bye\r\n")?;
                return Ok(());
            }
            _ => Act::Reply("250 ok\r\n"),
        });
        match act {
            Act::Close => return Ok(()),
            Act::Reply(reply) => {
                match verb.as_str() {
                    "MAIL" | "RSET" => rcpts = 0,
                    "RCPT" if reply.starts_with('2') => rcpts += 1,
                    "DATA" if reply.starts_with("354") => in_data = true,
                    _ => {}
                }
                writer.write_all(reply.as_bytes())?;
            }
        }
    }
}

fn relay_to(port: u16, path_config: &str, extra: &str) -> tern_testkit::TernServer {
    start_tern(format!(
        r#"{head}
kumo.on('get_queue_config', function()
  return kumo.make_queue_config {{
    retry_interval = '1h',
    protocol = {{ smtp = {{ mx_list = {{ '[127.0.0.1]:{port}' }} }} }},
  }}
end)
kumo.on('get_egress_path_config', function()
  return kumo.make_egress_path {{
    prohibited_hosts = {{}}, enable_tls = 'Disabled', connection_limit = 1,
    {path_config}
  }}
end)
{extra}
"#,
        head = policy_head("LocalDisk"),
    ))
}

/// `max_recipients_per_batch` splits a message into transactions, and a
/// 452 to a later RCPT sends the excess again at once on the same
/// connection, with no log record for the 452.
#[test]
fn batches_and_too_many_recipients_stay_on_one_connection() {
    let (port, transcripts) = scripted_peer(|line, rcpts| {
        (line.starts_with("RCPT") && rcpts >= 2)
            .then_some(Act::Reply("452 4.5.3 Too many recipients\r\n"))
    });
    // Reception makes one message per recipient; the policy gives this one
    // five, as a policy can in KumoMTA.
    let server = relay_to(
        port,
        "max_recipients_per_batch = 3",
        r#"
kumo.on('smtp_server_message_received', function(msg)
  msg:set_recipient { 'r1@x.test', 'r2@x.test', 'r3@x.test', 'r4@x.test', 'r5@x.test' }
end)
"#,
    );
    let recipients = [
        "r1@x.test",
        "r2@x.test",
        "r3@x.test",
        "r4@x.test",
        "r5@x.test",
    ];
    let mut conn = Conn::greeted(server.listener("smtp"));
    let reply = conn.transaction("s@example.com", &["r1@x.test"], &body("batches"));
    assert!(reply.starts_with("250 "), "{reply}");
    let logs = server.dir().join("logs");
    let seen = wait_for_records(&logs, Duration::from_secs(30), |r| {
        count(r, "Delivery") >= 5 || count(r, "TransientFailure") + count(r, "Bounce") > 0
    });
    assert_eq!(count(&seen, "TransientFailure"), 0, "{seen:#?}");
    assert_eq!(count(&seen, "Bounce"), 0, "{seen:#?}");
    let mut delivered: Vec<String> = of_type(&seen, "Delivery")
        .iter()
        .map(|r| r["recipient"].as_str().unwrap().to_string())
        .collect();
    delivered.sort();
    assert_eq!(delivered, recipients);
    for record in of_type(&seen, "Delivery") {
        assert_eq!(record["response"]["command"], ".\r\n", "{record:#}");
    }

    let transcripts = transcripts.lock().unwrap().clone();
    assert_eq!(transcripts.len(), 1, "{transcripts:#?}");
    let commands = &transcripts[0];
    // [r1 r2 r3] -> r3 too many; [r3 r4 r5] -> r5 too many; [r5].
    let mut transactions: Vec<Vec<&str>> = Vec::new();
    for command in commands {
        if command.starts_with("MAIL") {
            transactions.push(Vec::new());
        } else if let Some(rcpt) = command.strip_prefix("RCPT TO:") {
            transactions.last_mut().unwrap().push(rcpt);
        }
    }
    assert_eq!(
        transactions,
        [
            vec!["<r1@x.test>", "<r2@x.test>", "<r3@x.test>"],
            vec!["<r3@x.test>", "<r4@x.test>", "<r5@x.test>"],
            vec!["<r5@x.test>"],
        ],
        "{commands:#?}"
    );
    assert_eq!(commands.iter().filter(|c| *c == "RSET").count(), 2);
    assert_eq!(commands.iter().filter(|c| *c == ".").count(), 3);
}

/// `smtp_client_rewrite_delivery_status` is asked about the peer's
/// refusals only: a connection dropped at the end of data stays a
/// TransientFailure whatever the handler answers (as in KumoMTA, where
/// only MAIL/RCPT/DATA/final-dot rejections reach the event).
#[test]
fn rewrite_applies_to_refusals_not_to_transport_failures() {
    let (port, _transcripts) = scripted_peer(|line, _| {
        if line == "." {
            Some(Act::Close)
        } else if line.starts_with("RCPT") && line.contains("<refused@") {
            Some(Act::Reply("450 4.2.1 mailbox busy\r\n"))
        } else {
            None
        }
    });
    let server = relay_to(
        port,
        "",
        r#"
kumo.on('smtp_client_rewrite_delivery_status', function(response, domain, tenant, campaign, routing_domain)
  return 550
end)
"#,
    );
    let mut conn = Conn::greeted(server.listener("smtp"));
    let reply = conn.transaction("s@example.com", &["dropped@x.test"], &body("dropped"));
    assert!(reply.starts_with("250 "), "{reply}");
    let reply = conn.cmd("MAIL FROM:<s@example.com>");
    assert!(reply.starts_with("250 "), "{reply}");
    let reply = conn.cmd("RCPT TO:<refused@x.test>");
    assert!(reply.starts_with("250 "), "{reply}");
    let reply = conn.cmd("DATA");
    assert!(reply.starts_with("354 "), "{reply}");
    conn.send(&body("refused"));
    let reply = conn.cmd(".");
    assert!(reply.starts_with("250 "), "{reply}");

    let logs = server.dir().join("logs");
    let seen = wait_for_records(&logs, Duration::from_secs(30), |r| {
        count(r, "TransientFailure") + count(r, "Bounce") >= 2
    });
    let by_recipient = |rcpt: &str| {
        seen.iter()
            .find(|r| {
                r["recipient"] == rcpt && (r["type"] == "TransientFailure" || r["type"] == "Bounce")
            })
            .unwrap_or_else(|| panic!("{rcpt}: {seen:#?}"))
    };
    let dropped = by_recipient("dropped@x.test");
    assert_eq!(dropped["type"], "TransientFailure", "{dropped:#}");
    assert_eq!(dropped["response"]["code"], 400, "{dropped:#}");
    let content = dropped["response"]["content"].as_str().unwrap();
    assert!(content.starts_with("KumoMTA internal: "), "{content}");
    assert!(!content.contains("rewritten"), "{content}");
    assert!(dropped["response"]["command"].is_null(), "{dropped:#}");

    let refused = by_recipient("refused@x.test");
    assert_eq!(refused["type"], "Bounce", "{refused:#}");
    assert_eq!(refused["response"]["code"], 550);
    assert_eq!(
        refused["response"]["content"],
        "mailbox busy (kumomta: status was rewritten from 450 -> 550)"
    );
    assert_eq!(
        refused["response"]["command"],
        "RCPT TO:<refused@x.test>\r\n"
    );
}
