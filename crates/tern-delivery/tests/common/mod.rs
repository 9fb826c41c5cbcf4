//! Shared helpers for the integration tests: settings with test-friendly
//! defaults and a scripted fake SMTP server for the cases the tern-bench
//! sink cannot provoke (disconnects at chosen points, AUTH, odd replies).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tern_delivery::{ClientSettings, ConnectionPlan, PlannedHost};
use tern_queue::config::{EgressPathConfig, EgressSource, Tls};
use tern_types::{CidrSet, EnvelopeAddress};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::Mutex;

pub fn addr(text: &str) -> EnvelopeAddress {
    EnvelopeAddress::parse(text).unwrap()
}

/// A path that may deliver to loopback, with short timeouts.
pub fn test_path(tls: Tls) -> EgressPathConfig {
    let short = Duration::from_secs(5);
    EgressPathConfig {
        enable_tls: tls,
        prohibited_hosts: CidrSet::default(),
        connect_timeout: short,
        banner_timeout: short,
        ehlo_timeout: short,
        starttls_timeout: short,
        tls_handshake_timeout: short,
        auth_timeout: short,
        mail_from_timeout: short,
        rcpt_to_timeout: short,
        data_timeout: short,
        data_dot_timeout: short,
        rset_timeout: short,
        ..EgressPathConfig::default()
    }
}

pub fn settings(path: EgressPathConfig) -> ClientSettings {
    ClientSettings {
        path: Arc::new(path),
        source: Arc::new(EgressSource::named("test-source")),
        hostname: "client.tern.test".to_string(),
    }
}

pub fn plan_to(addrs: &[SocketAddr]) -> ConnectionPlan {
    ConnectionPlan {
        hosts: addrs
            .iter()
            .map(|addr| PlannedHost {
                name: "sink.tern.test.".to_string(),
                addr: *addr,
            })
            .collect(),
    }
}

/// What the fake server does in answer to a line.
pub enum Action {
    /// Send these bytes (one or more complete reply lines, CRLF included).
    Reply(String),
    /// Close the connection without answering.
    Close,
    /// Send the reply, then close.
    ReplyAndClose(String),
}

/// Everything the fake server saw on one connection.
#[derive(Default, Debug, Clone)]
pub struct Transcript {
    /// Command lines, CRLF stripped.
    pub commands: Vec<String>,
    /// For each command: whether more input was already buffered when it
    /// was read (true for the non-final lines of a pipelined batch).
    pub more_buffered: Vec<bool>,
    /// Raw DATA payloads up to and including the terminating `.\r\n`.
    pub data: Vec<Vec<u8>>,
}

pub type Handler = Arc<dyn Fn(&str) -> Action + Send + Sync>;

/// A scripted SMTP server: the banner, then every line goes to `handler`.
/// After a `354` reply the payload up to `.\r\n` is read and `handler(".")`
/// gives the final reply. Transcripts of every connection are kept.
pub struct FakeServer {
    pub addr: SocketAddr,
    pub transcripts: Arc<Mutex<Vec<Arc<Mutex<Transcript>>>>>,
}

impl FakeServer {
    pub async fn start(banner: &str, handler: Handler) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let transcripts: Arc<Mutex<Vec<Arc<Mutex<Transcript>>>>> = Arc::default();
        let banner = banner.to_string();
        let all = transcripts.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let transcript = Arc::new(Mutex::new(Transcript::default()));
                all.lock().await.push(transcript.clone());
                let handler = handler.clone();
                let banner = banner.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, &banner, handler, transcript).await;
                });
            }
        });
        FakeServer { addr, transcripts }
    }

    pub async fn transcript(&self, index: usize) -> Transcript {
        let list = self.transcripts.lock().await;
        list[index].lock().await.clone()
    }

    pub async fn connections(&self) -> usize {
        self.transcripts.lock().await.len()
    }
}

async fn serve(
    stream: tokio::net::TcpStream,
    banner: &str,
    handler: Handler,
    transcript: Arc<Mutex<Transcript>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    reader.get_mut().write_all(banner.as_bytes()).await?;
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        {
            let mut t = transcript.lock().await;
            t.commands.push(text.clone());
            t.more_buffered.push(!reader.buffer().is_empty());
        }
        let action = handler(&text);
        let (reply, close) = match action {
            Action::Reply(reply) => (reply, false),
            Action::Close => return Ok(()),
            Action::ReplyAndClose(reply) => (reply, true),
        };
        reader.get_mut().write_all(reply.as_bytes()).await?;
        if close {
            return Ok(());
        }
        if reply.starts_with("354") {
            let mut payload = Vec::new();
            loop {
                let start = payload.len();
                if reader.read_until(b'\n', &mut payload).await? == 0 {
                    transcript.lock().await.data.push(payload);
                    return Ok(());
                }
                if &payload[start..] == b".\r\n" {
                    break;
                }
            }
            transcript.lock().await.data.push(payload);
            match handler(".") {
                Action::Reply(reply) => reader.get_mut().write_all(reply.as_bytes()).await?,
                Action::ReplyAndClose(reply) => {
                    reader.get_mut().write_all(reply.as_bytes()).await?;
                    return Ok(());
                }
                Action::Close => return Ok(()),
            }
        }
    }
}

/// A well-behaved handler: EHLO with the given extensions, everything
/// accepted, `fail` maps a command line to an override.
pub fn handler_with(
    extensions: &'static [&'static str],
    fail: impl Fn(&str) -> Option<Action> + Send + Sync + 'static,
) -> Handler {
    Arc::new(move |line: &str| {
        if let Some(action) = fail(line) {
            return action;
        }
        let verb = line.split(' ').next().unwrap_or("").to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" => {
                let mut reply = String::from("250");
                if extensions.is_empty() {
                    reply.push_str(" fake.test\r\n");
                } else {
                    reply.push_str("-fake.test\r\n");
                    for (i, ext) in extensions.iter().enumerate() {
                        let sep = if i + 1 == extensions.len() { ' ' } else { '-' };
                        reply.push_str(&format!("250{sep}{ext}\r\n"));
                    }
                }
                Action::Reply(reply)
            }
            "HELO" => Action::Reply("250 fake.test\r\n".into()),
            "MAIL" => Action::Reply("250 2.1.0 ok\r\n".into()),
            "RCPT" => Action::Reply("250 2.1.5 ok\r\n".into()),
            "DATA" => Action::Reply("354 go ahead\r\n".into()),
            "." => Action::Reply("250 2.0.0 queued as 42\r\n".into()),
            "RSET" => Action::Reply("250 2.0.0 reset\r\n".into()),
            "QUIT" => Action::ReplyAndClose("221 2.0.0 bye\r\n".into()),
            _ => Action::Reply("502 5.5.1 unknown\r\n".into()),
        }
    })
}
