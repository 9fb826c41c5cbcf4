//! End-to-end tests of the SMTP delivery client's less travelled paths: a
//! real Tern relays to scripted peers on real sockets, and each test checks
//! the log records, what the peers saw, and that every recipient ends up
//! delivered or bounced exactly once.
//!
//! * DATA refused (to the command or to the final dot, 5xx and 4xx) after
//!   RCPT accepted some recipients and refused others;
//! * a 421 to MAIL, DATA, the final dot and RSET;
//! * the per-stage client timeouts (connect, banner, EHLO, MAIL, RCPT, DATA,
//!   final dot, RSET) and `idle_timeout`;
//! * `reconnect_strategy` after a failure on a connection that still has
//!   messages to send.

mod common;

use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tern_testkit::TernServer;

/// How long a test waits for the records it expects.
const PATIENCE: Duration = Duration::from_secs(30);

/// What a scripted peer does at one point of the conversation.
#[derive(Clone, Copy, Debug)]
enum Act {
    /// Send this reply (complete lines, CRLF included).
    Reply(&'static str),
    /// Send this reply, then answer nothing more: what a peer that said 421
    /// and is going away looks like before its close arrives. Later lines
    /// are still recorded, so a client that kept talking is caught.
    ReplyThenMute(&'static str),
    /// Answer nothing, now or later (a stalled peer). The connection stays
    /// open until the client gives up and closes it.
    Mute,
}

/// One point of the conversation, as a script sees it.
struct Step<'a> {
    /// The command line without CRLF; `"<banner>"` when the peer is about to
    /// greet; `"."` for the end of the message data.
    line: &'a str,
    /// This connection's index among all connections to every peer of the
    /// test (0 for the first).
    conn: usize,
    /// MAIL commands this peer has seen on any connection, this one included.
    mails: usize,
    /// MAIL commands on this connection, this one included.
    mails_here: usize,
}

type Script = dyn Fn(&Step) -> Option<Act> + Send + Sync;

/// One connection as a peer saw it.
#[derive(Clone, Debug)]
struct Session {
    /// The label of the peer that accepted it.
    host: &'static str,
    /// Command lines received (CRLF stripped, `"."` for the end of data),
    /// with when they arrived.
    lines: Vec<(Instant, String)>,
    /// A MAIL arrived together with the commands after it (PIPELINING).
    pipelined: bool,
}

impl Session {
    fn commands(&self) -> Vec<&str> {
        self.lines.iter().map(|(_, line)| line.as_str()).collect()
    }
}

#[derive(Default)]
struct Journal {
    /// Every connection to every peer, in the order they were accepted.
    sessions: Vec<Session>,
    /// `(connection, recipient)` for each recipient of a transaction whose
    /// end of data got a 2xx: what was really delivered.
    delivered: Vec<(usize, String)>,
}

/// A set of scripted SMTP peers sharing one journal, so the order of
/// connections across peers is known.
#[derive(Clone, Default)]
struct Peers {
    journal: Arc<Mutex<Journal>>,
}

impl Peers {
    /// A peer on `127.0.0.1` at a free port; returns the port.
    fn listen(
        &self,
        host: &'static str,
        pipelining: bool,
        script: impl Fn(&Step) -> Option<Act> + Send + Sync + 'static,
    ) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        self.serve(host, listener, pipelining, script);
        port
    }

    /// Accept connections on `listener` in the background. The peer greets
    /// with `220`, answers EHLO (with PIPELINING when asked), `354` to DATA,
    /// `250` to the rest, unless the script says otherwise.
    fn serve(
        &self,
        host: &'static str,
        listener: TcpListener,
        pipelining: bool,
        script: impl Fn(&Step) -> Option<Act> + Send + Sync + 'static,
    ) {
        let journal = self.journal.clone();
        let script: Arc<Script> = Arc::new(script);
        let mails = Arc::new(AtomicUsize::new(0));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let conn = {
                    let mut journal = journal.lock().unwrap();
                    journal.sessions.push(Session {
                        host,
                        lines: Vec::new(),
                        pipelined: false,
                    });
                    journal.sessions.len() - 1
                };
                let peer = Connection {
                    journal: journal.clone(),
                    script: script.clone(),
                    mails: mails.clone(),
                    conn,
                    pipelining,
                };
                std::thread::spawn(move || {
                    let _ = peer.run(stream);
                });
            }
        });
    }

    fn sessions(&self) -> Vec<Session> {
        self.journal.lock().unwrap().sessions.clone()
    }

    /// The peer label of each connection, in order.
    fn hosts(&self) -> Vec<&'static str> {
        self.sessions().iter().map(|s| s.host).collect()
    }

    /// Every delivered recipient with its connection, in delivery order.
    fn delivered(&self) -> Vec<(usize, String)> {
        self.journal.lock().unwrap().delivered.clone()
    }

    /// The delivered recipients, sorted: each must appear exactly once.
    fn delivered_recipients(&self) -> Vec<String> {
        let mut all: Vec<String> = self.delivered().into_iter().map(|(_, r)| r).collect();
        all.sort();
        all
    }
}

/// The peer's side of one connection.
struct Connection {
    journal: Arc<Mutex<Journal>>,
    script: Arc<Script>,
    mails: Arc<AtomicUsize>,
    conn: usize,
    pipelining: bool,
}

impl Connection {
    fn step<'a>(&self, line: &'a str, mails_here: usize) -> Step<'a> {
        Step {
            line,
            conn: self.conn,
            mails: self.mails.load(Ordering::SeqCst),
            mails_here,
        }
    }

    fn run(&self, stream: TcpStream) -> std::io::Result<()> {
        let mut writer = stream.try_clone()?;
        let mut reader = BufReader::new(stream);
        let mut mails_here = 0usize;
        let greeting = (self.script)(&self.step("<banner>", 0))
            .unwrap_or(Act::Reply("220 peer.test ESMTP\r\n"));
        let mut muted = match greeting {
            Act::Reply(reply) => {
                writer.write_all(reply.as_bytes())?;
                false
            }
            Act::ReplyThenMute(reply) => {
                writer.write_all(reply.as_bytes())?;
                true
            }
            Act::Mute => true,
        };
        // Recipients accepted in the current transaction.
        let mut rcpts: Vec<String> = Vec::new();
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
            {
                let mut journal = self.journal.lock().unwrap();
                let session = &mut journal.sessions[self.conn];
                session.lines.push((Instant::now(), text.clone()));
                // The client wrote MAIL and what follows in one go.
                if text.starts_with("MAIL") && !reader.buffer().is_empty() {
                    session.pipelined = true;
                }
            }
            if muted {
                continue;
            }
            let verb = text.split(' ').next().unwrap_or("").to_ascii_uppercase();
            if verb == "MAIL" {
                mails_here += 1;
                self.mails.fetch_add(1, Ordering::SeqCst);
            }
            let act = (self.script)(&self.step(&text, mails_here))
                .unwrap_or_else(|| Act::Reply(default_reply(&verb, self.pipelining)));
            let reply = match act {
                Act::Reply(reply) => reply,
                Act::ReplyThenMute(reply) => {
                    muted = true;
                    reply
                }
                Act::Mute => {
                    muted = true;
                    continue;
                }
            };
            let positive = reply.starts_with('2');
            match verb.as_str() {
                "MAIL" | "RSET" => rcpts.clear(),
                "RCPT" if positive => rcpts.push(address_of(&text)),
                "DATA" if reply.starts_with("354") => in_data = true,
                "." => {
                    let done = std::mem::take(&mut rcpts);
                    if positive {
                        let mut journal = self.journal.lock().unwrap();
                        journal
                            .delivered
                            .extend(done.into_iter().map(|r| (self.conn, r)));
                    }
                }
                _ => {}
            }
            writer.write_all(reply.as_bytes())?;
            if verb == "QUIT" {
                return Ok(());
            }
        }
    }
}

fn default_reply(verb: &str, pipelining: bool) -> &'static str {
    match verb {
        "EHLO" if pipelining => "250-peer.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
        "EHLO" => "250-peer.test\r\n250 8BITMIME\r\n",
        "DATA" => "354 go ahead\r\n",
        "." => "250 2.0.0 queued\r\n",
        "QUIT" => "221 bye\r\n",
        _ => "250 ok\r\n",
    }
}

/// `a@b` from `RCPT TO:<a@b>`.
fn address_of(line: &str) -> String {
    let start = line.find('<').map_or(0, |i| i + 1);
    let end = line.rfind('>').unwrap_or(line.len());
    line[start..end].to_string()
}

/// A latch the test opens once its messages are queued, so that a peer can
/// hold the first connection until then.
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    fn open(&self) {
        *self.0.0.lock().unwrap() = true;
        self.0.1.notify_all();
    }

    /// Wait until opened (at most a minute, so a broken test cannot hang).
    fn wait(&self) {
        let (open, changed) = &*self.0;
        let guard = open.lock().unwrap();
        let _ = changed
            .wait_timeout_while(guard, Duration::from_secs(60), |open| !*open)
            .unwrap();
    }
}

/// Tern relaying everything through one ready queue (`connection_limit = 1`)
/// in the clear, retrying after about a second. `route` is the queue's
/// `protocol` entry (or empty for MX lookups); `path_options` a
/// comma-terminated list of `make_egress_path` options (or empty); `extra`
/// more policy.
fn start(route: &str, path_options: &str, extra: &str) -> TernServer {
    start_tern(format!(
        r#"{head}
kumo.on('get_queue_config', function()
  return kumo.make_queue_config {{
    retry_interval = '1s',
    {route}
  }}
end)
kumo.on('get_egress_path_config', function()
  return kumo.make_egress_path {{
    prohibited_hosts = {{}}, enable_tls = 'Disabled', connection_limit = 1,
    {path_options}
  }}
end)
{extra}
"#,
        head = policy_head("LocalDisk"),
    ))
}

/// The queue `protocol` entry for an `mx_list` of loopback ports, in order.
fn mx_list(ports: &[u16]) -> String {
    let entries: Vec<String> = ports
        .iter()
        .map(|port| format!("'[127.0.0.1]:{port}'"))
        .collect();
    format!(
        "protocol = {{ smtp = {{ mx_list = {{ {} }} }} }},",
        entries.join(", ")
    )
}

/// One SMTP transaction into Tern; reception makes one message per
/// recipient (unless the policy changes the recipients).
fn inject(server: &TernServer, recipients: &[&str]) {
    let mut conn = Conn::greeted(server.listener("smtp"));
    let reply = conn.transaction("s@example.com", recipients, &body("paths"));
    assert!(reply.starts_with("250 "), "{reply}");
    let _ = conn.cmd("QUIT");
}

fn logs(server: &TernServer) -> std::path::PathBuf {
    server.dir().join("logs")
}

/// The records of `kind` for `recipient`, in time order.
fn records_for<'a>(seen: &'a [Value], kind: &str, recipient: &str) -> Vec<&'a Value> {
    seen.iter()
        .filter(|r| r["type"] == kind && r["recipient"] == recipient)
        .collect()
}

/// The only record of `kind` for `recipient`.
fn only<'a>(seen: &'a [Value], kind: &str, recipient: &str) -> &'a Value {
    let found = records_for(seen, kind, recipient);
    assert_eq!(found.len(), 1, "{kind} {recipient}: {seen:#?}");
    found[0]
}

/// The recipients of the `Delivery` records, sorted.
fn delivered_records(seen: &[Value]) -> Vec<String> {
    let mut all: Vec<String> = of_type(seen, "Delivery")
        .iter()
        .map(|r| r["recipient"].as_str().expect("one recipient").to_string())
        .collect();
    all.sort();
    all
}

fn sorted(items: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = items.iter().map(|s| s.to_string()).collect();
    all.sort();
    all
}

/// The RCPT addresses of each transaction (MAIL) a session carried.
fn transactions(session: &Session) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = Vec::new();
    for line in session.commands() {
        if line.starts_with("MAIL") {
            out.push(Vec::new());
        } else if line.starts_with("RCPT")
            && let Some(current) = out.last_mut()
        {
            current.push(address_of(line));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// 1. DATA refused after a partial RCPT acceptance
// ---------------------------------------------------------------------------

/// The recipients of the message in the DATA-refusal tests: `a` and `b` are
/// accepted at RCPT, `r550` and `r450` refused (in the first transaction).
const PARTIAL: [&str; 4] = ["a@x.test", "r550@x.test", "b@x.test", "r450@x.test"];

/// Reception gives every message the [`PARTIAL`] recipients.
const SET_PARTIAL: &str = r#"
kumo.on('smtp_server_message_received', function(msg)
  msg:set_recipient { 'a@x.test', 'r550@x.test', 'b@x.test', 'r450@x.test' }
end)
"#;

/// In the first transaction, RCPT refuses `r550` (5xx) and `r450` (4xx),
/// and `stage` (`"DATA"` or `"."`) gets `reply`; later transactions
/// succeed. The RCPT-refused recipients keep their own RCPT response; the
/// accepted ones get the DATA (or final dot) response, whose class decides
/// between Bounce and a retry.
fn data_refused_after_partial_rcpt(stage: &'static str, reply: &'static str, pipelining: bool) {
    let peers = Peers::default();
    let port = peers.listen("mx", pipelining, move |step| {
        if step.mails != 1 {
            return None;
        }
        match step.line {
            "RCPT TO:<r550@x.test>" => Some(Act::Reply("550 5.1.1 no such user\r\n")),
            "RCPT TO:<r450@x.test>" => Some(Act::Reply("450 4.2.1 mailbox busy\r\n")),
            line if line == stage => Some(Act::Reply(reply)),
            _ => None,
        }
    });
    let server = start(&mx_list(&[port]), "", SET_PARTIAL);
    inject(&server, &["a@x.test"]);

    let permanent = reply.starts_with('5');
    // Delivered in the end: the 4xx refusals (RCPT and, when transient,
    // the accepted ones), once the retry goes through.
    let expect_delivered: Vec<&str> = if permanent {
        vec!["r450@x.test"]
    } else {
        vec!["a@x.test", "b@x.test", "r450@x.test"]
    };
    let expect_bounced = if permanent { 3 } else { 1 };
    let seen = wait_for_records(&logs(&server), PATIENCE, |r| {
        count(r, "Delivery") >= expect_delivered.len() && count(r, "Bounce") >= expect_bounced
    });

    // The RCPT refusals keep their own responses.
    let r550 = only(&seen, "Bounce", "r550@x.test");
    assert_eq!(r550["response"]["code"], 550, "{r550:#}");
    assert_eq!(r550["response"]["content"], "no such user");
    assert_eq!(r550["response"]["command"], "RCPT TO:<r550@x.test>\r\n");
    let r450 = only(&seen, "TransientFailure", "r450@x.test");
    assert_eq!(r450["response"]["code"], 450, "{r450:#}");
    assert_eq!(r450["response"]["content"], "mailbox busy");
    assert_eq!(r450["response"]["command"], "RCPT TO:<r450@x.test>\r\n");

    // The accepted ones get the response to DATA or to the final dot.
    let code: u64 = reply[..3].parse().unwrap();
    let content = reply[4..].trim_end().split_once(' ').unwrap().1;
    let kind = if permanent {
        "Bounce"
    } else {
        "TransientFailure"
    };
    for rcpt in ["a@x.test", "b@x.test"] {
        let record = only(&seen, kind, rcpt);
        assert_eq!(record["response"]["code"], code, "{record:#}");
        assert_eq!(record["response"]["content"], content, "{record:#}");
        assert_eq!(
            record["response"]["command"],
            format!("{stage}\r\n"),
            "{record:#}"
        );
    }

    // Nothing lost, nothing twice, and the retry carried exactly the
    // recipients that failed transiently.
    assert_eq!(count(&seen, "Bounce"), expect_bounced, "{seen:#?}");
    let transient = if permanent { 1 } else { 3 };
    assert_eq!(count(&seen, "TransientFailure"), transient, "{seen:#?}");
    assert_eq!(delivered_records(&seen), sorted(&expect_delivered));
    assert_eq!(peers.delivered_recipients(), sorted(&expect_delivered));
    for record in of_type(&seen, "Delivery") {
        assert_eq!(record["response"]["command"], ".\r\n", "{record:#}");
    }
    let sessions = peers.sessions();
    assert_eq!(sessions[0].pipelined, pipelining, "{sessions:#?}");
    let all: Vec<Vec<String>> = sessions.iter().flat_map(transactions).collect();
    assert_eq!(all.len(), 2, "{sessions:#?}");
    assert_eq!(all[0], PARTIAL.map(String::from), "{sessions:#?}");
    let mut retried = all[1].clone();
    retried.sort();
    assert_eq!(retried, sorted(&expect_delivered));
    // After a refused DATA the message data is not sent: what follows is
    // the next transaction (or the end of the session).
    if stage == "DATA" {
        let commands = sessions[0].commands();
        let data = commands.iter().position(|c| *c == "DATA").unwrap();
        let next = commands.get(data + 1).copied().unwrap_or("QUIT");
        assert!(
            next == "RSET" || next == "QUIT" || next.starts_with("MAIL"),
            "{commands:#?}"
        );
    }
}

#[test]
fn data_command_5xx_after_partial_rcpt() {
    data_refused_after_partial_rcpt("DATA", "554 5.7.1 content refused\r\n", false);
}

#[test]
fn data_command_4xx_after_partial_rcpt() {
    data_refused_after_partial_rcpt("DATA", "451 4.3.0 try later\r\n", false);
}

#[test]
fn final_dot_5xx_after_partial_rcpt() {
    data_refused_after_partial_rcpt(".", "554 5.7.1 content refused\r\n", false);
}

#[test]
fn final_dot_4xx_after_partial_rcpt() {
    data_refused_after_partial_rcpt(".", "451 4.3.0 try later\r\n", false);
}

#[test]
fn pipelined_data_command_5xx_after_partial_rcpt() {
    data_refused_after_partial_rcpt("DATA", "554 5.7.1 content refused\r\n", true);
}

#[test]
fn pipelined_data_command_4xx_after_partial_rcpt() {
    data_refused_after_partial_rcpt("DATA", "451 4.3.0 try later\r\n", true);
}

#[test]
fn pipelined_final_dot_5xx_after_partial_rcpt() {
    data_refused_after_partial_rcpt(".", "554 5.7.1 content refused\r\n", true);
}

#[test]
fn pipelined_final_dot_4xx_after_partial_rcpt() {
    data_refused_after_partial_rcpt(".", "451 4.3.0 try later\r\n", true);
}

// ---------------------------------------------------------------------------
// 2. 421: the peer is closing
// ---------------------------------------------------------------------------

/// The 421 the peers of these tests send.
const CLOSING: &str = "421 4.3.2 peer.test closing\r\n";

/// Does `line` belong to `stage` (`"MAIL"`, `"DATA"`, `"."`, `"RSET"`)?
fn at_stage(line: &str, stage: &str) -> bool {
    match stage {
        "." | "DATA" | "RSET" => line == stage,
        _ => line.starts_with(stage),
    }
}

/// Two messages; on the first connection the peer answers 421 at `stage`
/// and then nothing more. The message in that transaction becomes a
/// TransientFailure with the 421 and is delivered by a retry; the
/// connection is not used again; each recipient is delivered once.
fn a_421_ends_the_session(stage: &'static str, pipelining: bool) {
    let peers = Peers::default();
    let port = peers.listen("mx", pipelining, move |step| {
        (step.conn == 0 && at_stage(step.line, stage)).then_some(Act::ReplyThenMute(CLOSING))
    });
    let server = start(&mx_list(&[port]), "", "");
    let recipients = ["m1@x.test", "m2@x.test"];
    inject(&server, &recipients);

    let seen = wait_for_records(&logs(&server), PATIENCE, |r| count(r, "Delivery") >= 2);
    let failed = of_type(&seen, "TransientFailure");
    assert_eq!(failed.len(), 1, "{seen:#?}");
    let victim = failed[0]["recipient"].as_str().unwrap();
    let response = &failed[0]["response"];
    assert_eq!(response["code"], 421, "{response:#}");
    assert_eq!(response["content"], "peer.test closing", "{response:#}");
    let command = match stage {
        "MAIL" => "MAIL FROM:<s@example.com>\r\n".to_string(),
        other => format!("{other}\r\n"),
    };
    assert_eq!(response["command"], command.as_str(), "{response:#}");
    assert_eq!(count(&seen, "Bounce"), 0, "{seen:#?}");
    // The victim was retried and delivered, once; so was the other message.
    assert_eq!(delivered_records(&seen), sorted(&recipients));
    assert_eq!(peers.delivered_recipients(), sorted(&recipients));
    let victim_delivery = only(&seen, "Delivery", victim);
    assert!(
        event_seconds(victim_delivery) > event_seconds(failed[0]),
        "{seen:#?}"
    );

    // Nothing was sent on the first connection after the 421 but the rest
    // of a pipelined batch already on its way (a QUIT would be harmless).
    let sessions = peers.sessions();
    let first = sessions[0].commands();
    let closed_at = first
        .iter()
        .position(|line| at_stage(line, stage))
        .unwrap_or_else(|| panic!("no {stage} on the first connection: {first:#?}"));
    let after = &first[closed_at + 1..];
    assert!(
        after.iter().all(|line| *line == "QUIT"
            || (pipelining && stage == "MAIL" && (line.starts_with("RCPT") || *line == "DATA"))),
        "the connection was used after the 421: {first:#?}"
    );
    // What was delivered on the first connection: only a message before
    // the 421 (the one ahead of the RSET).
    let on_first: Vec<String> = peers
        .delivered()
        .into_iter()
        .filter(|(conn, _)| *conn == 0)
        .map(|(_, rcpt)| rcpt)
        .collect();
    if stage == "RSET" {
        assert_eq!(on_first.len(), 1, "{sessions:#?}");
        assert_ne!(on_first[0], victim);
    } else {
        assert!(on_first.is_empty(), "{sessions:#?}");
        // The victim's own transaction was the one refused.
        if stage != "MAIL" {
            assert_eq!(transactions(&sessions[0]), [vec![victim.to_string()]]);
        }
    }
    assert!(sessions.len() >= 2, "{sessions:#?}");
}

#[test]
fn a_421_to_mail_from() {
    a_421_ends_the_session("MAIL", false);
}

#[test]
fn a_421_to_pipelined_mail_from() {
    a_421_ends_the_session("MAIL", true);
}

#[test]
fn a_421_to_data() {
    a_421_ends_the_session("DATA", false);
}

#[test]
fn a_421_to_the_final_dot() {
    a_421_ends_the_session(".", false);
}

#[test]
fn a_421_to_rset_between_messages() {
    a_421_ends_the_session("RSET", false);
}

/// A 421 to the final dot after RCPT refused one recipient: the refusal
/// stands (Bounce with its own response), the accepted recipients become
/// transient with the 421 and are delivered by the retry.
#[test]
fn a_421_to_the_final_dot_keeps_the_rcpt_refusals() {
    let peers = Peers::default();
    let port = peers.listen("mx", false, |step| match step.line {
        "RCPT TO:<r550@x.test>" => Some(Act::Reply("550 5.1.1 no such user\r\n")),
        "." if step.conn == 0 => Some(Act::ReplyThenMute(CLOSING)),
        _ => None,
    });
    let server = start(
        &mx_list(&[port]),
        "",
        r#"
kumo.on('smtp_server_message_received', function(msg)
  msg:set_recipient { 'a@x.test', 'r550@x.test', 'b@x.test' }
end)
"#,
    );
    inject(&server, &["a@x.test"]);
    let seen = wait_for_records(&logs(&server), PATIENCE, |r| {
        count(r, "Delivery") >= 2 && count(r, "Bounce") >= 1
    });
    let bounce = only(&seen, "Bounce", "r550@x.test");
    assert_eq!(bounce["response"]["code"], 550, "{bounce:#}");
    assert_eq!(
        bounce["response"]["command"], "RCPT TO:<r550@x.test>\r\n",
        "{bounce:#}"
    );
    for rcpt in ["a@x.test", "b@x.test"] {
        let failed = only(&seen, "TransientFailure", rcpt);
        assert_eq!(failed["response"]["code"], 421, "{failed:#}");
        assert_eq!(failed["response"]["command"], ".\r\n", "{failed:#}");
    }
    assert_eq!(count(&seen, "TransientFailure"), 2, "{seen:#?}");
    assert_eq!(count(&seen, "Bounce"), 1, "{seen:#?}");
    assert_eq!(delivered_records(&seen), sorted(&["a@x.test", "b@x.test"]));
    assert_eq!(
        peers.delivered_recipients(),
        sorted(&["a@x.test", "b@x.test"])
    );
    // The retry carried only the two that failed transiently.
    let all: Vec<Vec<String>> = peers.sessions().iter().flat_map(transactions).collect();
    assert_eq!(all.len(), 2, "{:#?}", peers.sessions());
    assert_eq!(all[1], ["a@x.test", "b@x.test"]);
}

// ---------------------------------------------------------------------------
// 3. Per-stage client timeouts
// ---------------------------------------------------------------------------

/// Two messages; on the first connection the peer stops answering at
/// `stage` (`"<banner>"`, `"EHLO"`, `"MAIL"`, `"RCPT"`, `"DATA"`, `"."`,
/// `"RSET"`) and only `option` is short. One message gets a
/// TransientFailure whose text contains `text` (naming the stage), and a
/// retry delivers it; the other is delivered on another connection or
/// before the stall. Other timeouts keep their long defaults, so a stage
/// governed by the wrong option would make the test time out.
fn a_stalled_peer_times_out(stage: &'static str, option: &str, text: &str) {
    let peers = Peers::default();
    let port = peers.listen("mx", false, move |step| {
        let here = match stage {
            "<banner>" | "." | "DATA" | "RSET" => step.line == stage,
            _ => step.line.starts_with(stage),
        };
        (step.conn == 0 && here).then_some(Act::Mute)
    });
    let server = start(&mx_list(&[port]), &format!("{option} = '400ms',"), "");
    let recipients = ["t1@x.test", "t2@x.test"];
    inject(&server, &recipients);

    let seen = wait_for_records(&logs(&server), PATIENCE, |r| count(r, "Delivery") >= 2);
    let failed = of_type(&seen, "TransientFailure");
    assert_eq!(failed.len(), 1, "{seen:#?}");
    let response = &failed[0]["response"];
    let content = response["content"].as_str().unwrap();
    assert!(content.contains(text), "{content}");
    // Before the session is ready it is a failure to connect; after, a
    // failure to send.
    let prefix = match stage {
        "<banner>" | "EHLO" => "KumoMTA internal: failed to connect to any candidate hosts: ",
        _ => "KumoMTA internal: failed to send message to ",
    };
    assert!(content.starts_with(prefix), "{content}");
    assert_eq!(response["code"], 400, "{response:#}");
    assert!(response["command"].is_null(), "{response:#}");
    let victim = failed[0]["recipient"].as_str().unwrap();
    if stage == "RCPT" {
        assert!(
            content.contains(&format!("cmd=RCPT TO:<{victim}>")),
            "{content}"
        );
    }
    // Retried later and delivered; nothing lost or doubled.
    assert_eq!(count(&seen, "Bounce"), 0, "{seen:#?}");
    assert_eq!(delivered_records(&seen), sorted(&recipients));
    assert_eq!(peers.delivered_recipients(), sorted(&recipients));
    let victim_delivery = only(&seen, "Delivery", victim);
    assert!(
        event_seconds(victim_delivery) > event_seconds(failed[0]),
        "{seen:#?}"
    );
    // The stalled connection carried no further command.
    let sessions = peers.sessions();
    let first = sessions[0].commands();
    if let Some(stalled) = first.iter().position(|line| match stage {
        "<banner>" => false,
        "." | "DATA" | "RSET" => *line == stage,
        _ => line.starts_with(stage),
    }) {
        assert_eq!(first.len(), stalled + 1, "{first:#?}");
    } else {
        assert_eq!(stage, "<banner>");
        assert!(first.is_empty(), "{first:#?}");
    }
    assert!(sessions.len() >= 2, "{sessions:#?}");
}

#[test]
fn banner_timeout() {
    a_stalled_peer_times_out(
        "<banner>",
        "banner_timeout",
        "read initial banner: Timed Out after 400ms",
    );
}

#[test]
fn ehlo_timeout() {
    a_stalled_peer_times_out("EHLO", "ehlo_timeout", "EHLO: Timed Out after 400ms");
}

#[test]
fn mail_from_timeout() {
    a_stalled_peer_times_out(
        "MAIL",
        "mail_from_timeout",
        "Timed Out waiting 400ms for response to cmd=MAIL FROM:<s@example.com>",
    );
}

#[test]
fn rcpt_to_timeout() {
    a_stalled_peer_times_out(
        "RCPT",
        "rcpt_to_timeout",
        "Timed Out waiting 400ms for response to cmd=RCPT TO:<",
    );
}

#[test]
fn data_timeout() {
    a_stalled_peer_times_out(
        "DATA",
        "data_timeout",
        "Timed Out waiting 400ms for response to cmd=DATA",
    );
}

#[test]
fn data_dot_timeout() {
    a_stalled_peer_times_out(
        ".",
        "data_dot_timeout",
        "Timed Out waiting 400ms for response to cmd=.",
    );
}

#[test]
fn rset_timeout() {
    a_stalled_peer_times_out(
        "RSET",
        "rset_timeout",
        "Timed Out waiting 400ms for response to cmd=RSET",
    );
}

/// `connect_timeout`: a listener whose accept queue is full drops the SYN,
/// so the connection attempt hangs until the timeout. Once the peer starts
/// accepting, the retry delivers the message.
#[test]
fn connect_timeout() {
    use std::os::fd::AsRawFd;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Backlog 0 holds one pending connection; the filler takes that place.
    assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
    let filler = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let server = start(&mx_list(&[port]), "connect_timeout = '400ms',", "");
    inject(&server, &["c@x.test"]);

    let first = wait_for_records(&logs(&server), PATIENCE, |r| {
        count(r, "TransientFailure") >= 1
    });
    let peers = Peers::default();
    peers.serve("mx", listener, false, |_| None);
    drop(filler);
    let seen = wait_for_records(&logs(&server), PATIENCE, |r| count(r, "Delivery") >= 1);
    let failed = of_type(&seen, "TransientFailure");
    for record in &failed {
        let content = record["response"]["content"].as_str().unwrap();
        assert!(
            content.starts_with("KumoMTA internal: failed to connect to any candidate hosts: ")
                && content.ends_with(&format!("127.0.0.1:{port}: connect: Timed Out after 400ms")),
            "{content}"
        );
        assert_eq!(record["response"]["code"], 400);
    }
    assert!(!of_type(&first, "TransientFailure").is_empty());
    assert_eq!(delivered_records(&seen), ["c@x.test"]);
    assert_eq!(peers.delivered_recipients(), ["c@x.test"]);
}

/// `idle_timeout`: a connection with nothing to send closes after it (QUIT),
/// long before the 5 s default, and the next message opens a new one.
#[test]
fn idle_timeout_closes_an_unused_connection() {
    let peers = Peers::default();
    let port = peers.listen("mx", false, |_| None);
    let server = start(&mx_list(&[port]), "idle_timeout = '300ms',", "");
    inject(&server, &["i1@x.test"]);
    wait_for_records(&logs(&server), PATIENCE, |r| count(r, "Delivery") >= 1);
    let deadline = Instant::now() + PATIENCE;
    let session = loop {
        let sessions = peers.sessions();
        if sessions[0].commands().last() == Some(&"QUIT") {
            break sessions[0].clone();
        }
        assert!(Instant::now() < deadline, "no QUIT: {sessions:#?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let at = |wanted: &str| {
        session
            .lines
            .iter()
            .find(|(_, line)| line == wanted)
            .map(|(when, _)| *when)
            .unwrap()
    };
    let idle = at("QUIT") - at(".");
    assert!(
        idle >= Duration::from_millis(300) && idle < Duration::from_secs(3),
        "QUIT {idle:?} after the message"
    );

    inject(&server, &["i2@x.test"]);
    let seen = wait_for_records(&logs(&server), PATIENCE, |r| count(r, "Delivery") >= 2);
    assert_eq!(
        delivered_records(&seen),
        sorted(&["i1@x.test", "i2@x.test"])
    );
    let delivered = peers.delivered();
    assert_eq!(delivered.len(), 2, "{delivered:#?}");
    assert_eq!(delivered[1].0, 1, "{:#?}", peers.sessions());
}

// ---------------------------------------------------------------------------
// 4. reconnect_strategy
// ---------------------------------------------------------------------------

/// Lets the messages of one injection reach the ready queue while a peer
/// holds the first session at its greeting, so the session has more
/// messages to send when its failure comes. Promotion takes milliseconds;
/// this is set-up, not an assertion.
fn let_messages_settle(gate: &Gate) {
    std::thread::sleep(Duration::from_secs(1));
    gate.open();
}

/// Three hosts in an `mx_list`: A refuses at its banner, B answers 421 to
/// the first MAIL it sees, C is fine. Three messages wait while the
/// session to B starts; after B's 421 the next connection of the same
/// session shows the strategy: `expected` is the peers' connection order
/// up to the connection that delivers the two other messages.
fn next_connection_after_a_421(strategy: &str, expected: &[&str]) {
    let peers = Peers::default();
    let gate = Gate::default();
    let a = peers.listen("A", false, |step| {
        (step.line == "<banner>").then_some(Act::Reply("554 5.7.1 go away\r\n"))
    });
    let held = gate.clone();
    let b = peers.listen("B", false, move |step| {
        if step.line == "<banner>" {
            held.wait();
            return None;
        }
        (step.mails == 1 && step.line.starts_with("MAIL")).then_some(Act::ReplyThenMute(CLOSING))
    });
    let c = peers.listen("C", false, |_| None);
    let server = start(
        &mx_list(&[a, b, c]),
        &format!("reconnect_strategy = '{strategy}',"),
        "",
    );
    let recipients = ["n1@x.test", "n2@x.test", "n3@x.test"];
    inject(&server, &recipients);
    let_messages_settle(&gate);

    let seen = wait_for_records(&logs(&server), PATIENCE, |r| count(r, "Delivery") >= 3);
    let failed = of_type(&seen, "TransientFailure");
    assert_eq!(failed.len(), 1, "{seen:#?}");
    assert_eq!(failed[0]["response"]["code"], 421, "{seen:#?}");
    let victim = failed[0]["recipient"].as_str().unwrap();
    assert_eq!(delivered_records(&seen), sorted(&recipients));
    assert_eq!(peers.delivered_recipients(), sorted(&recipients));

    let hosts = peers.hosts();
    assert!(hosts.len() >= expected.len(), "{hosts:?}");
    assert_eq!(
        &hosts[..expected.len()],
        expected,
        "{:#?}",
        peers.sessions()
    );
    // The two messages still waiting went over that next connection.
    let next = expected.len() - 1;
    let mut on_next: Vec<String> = peers
        .delivered()
        .into_iter()
        .filter(|(conn, rcpt)| *conn == next && rcpt != victim)
        .map(|(_, rcpt)| rcpt)
        .collect();
    on_next.sort();
    let mut others: Vec<&str> = recipients
        .iter()
        .copied()
        .filter(|r| *r != victim)
        .collect();
    others.sort();
    assert_eq!(on_next, others, "{:#?}", peers.sessions());
}

#[test]
fn reconnect_same_host_after_a_421() {
    next_connection_after_a_421("ReconnectSameHost", &["A", "B", "B"]);
}

#[test]
fn connect_next_host_after_a_421() {
    next_connection_after_a_421("ConnectNextHost", &["A", "B", "C"]);
}

#[test]
fn terminate_session_after_a_421_starts_a_fresh_plan() {
    next_connection_after_a_421("TerminateSession", &["A", "B", "A", "B"]);
}

/// Two MX hosts of equal preference (the plan orders them at random) on
/// 127.0.0.2 and 127.0.0.3; the first `FAILURES` connections get a 421 to
/// their first MAIL. Returns the host of each connection, in order, once
/// every message is delivered exactly once.
fn reconnects_among_equal_mx(strategy: &str) -> Vec<&'static str> {
    const FAILURES: usize = 7;
    let (mx1, mx2, port) = loop {
        let mx1 = TcpListener::bind("127.0.0.2:0").unwrap();
        let port = mx1.local_addr().unwrap().port();
        if let Ok(mx2) = TcpListener::bind(("127.0.0.3", port)) {
            break (mx1, mx2, port);
        }
    };
    let peers = Peers::default();
    let gate = Gate::default();
    let held = gate.clone();
    let script = move |step: &Step| {
        if step.line == "<banner>" {
            if step.conn == 0 {
                held.wait();
            }
            return None;
        }
        (step.conn < FAILURES && step.mails_here == 1 && step.line.starts_with("MAIL"))
            .then_some(Act::ReplyThenMute(CLOSING))
    };
    peers.serve("mx1", mx1, false, script.clone());
    peers.serve("mx2", mx2, false, script);
    let dns = r#"
kumo.on('pre_init', function()
  kumo.dns.configure_test_resolver {
    [[
$ORIGIN x.test.
@ 300 MX 10 mx1.x.test.
@ 300 MX 10 mx2.x.test.
mx1 300 A 127.0.0.2
mx2 300 A 127.0.0.3
]],
  }
end)
"#;
    let server = start(
        "",
        &format!("smtp_port = {port}, reconnect_strategy = '{strategy}',"),
        dns,
    );
    let recipients: Vec<String> = (1..=FAILURES + 1).map(|i| format!("e{i}@x.test")).collect();
    let refs: Vec<&str> = recipients.iter().map(String::as_str).collect();
    inject(&server, &refs);
    let_messages_settle(&gate);

    let seen = wait_for_records(&logs(&server), PATIENCE, |r| {
        count(r, "Delivery") > FAILURES
    });
    assert_eq!(count(&seen, "TransientFailure"), FAILURES, "{seen:#?}");
    for record in of_type(&seen, "TransientFailure") {
        assert_eq!(record["response"]["code"], 421, "{record:#}");
    }
    assert_eq!(delivered_records(&seen), sorted(&refs));
    assert_eq!(peers.delivered_recipients(), sorted(&refs));
    let hosts = peers.hosts();
    assert!(hosts.len() > FAILURES, "{hosts:?}");
    hosts[..=FAILURES].to_vec()
}

/// ReconnectSameHost goes back to the host that failed, also when the
/// plan's order is random: the session keeps its plan.
#[test]
fn reconnect_same_host_among_equal_mx() {
    let hosts = reconnects_among_equal_mx("ReconnectSameHost");
    assert!(hosts.iter().all(|h| *h == hosts[0]), "{hosts:?}");
}

/// ConnectNextHost moves to the other host of the plan, never back to the
/// one that just failed; past the end of the plan it starts a fresh one.
#[test]
fn connect_next_host_among_equal_mx() {
    let hosts = reconnects_among_equal_mx("ConnectNextHost");
    for pair in hosts.chunks(2) {
        assert_ne!(pair[0], pair[1], "{hosts:?}");
    }
}
