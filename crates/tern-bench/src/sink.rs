//! The test sink: an SMTP server that accepts mail and throws it away (or
//! files it in a Maildir), answering each recipient according to its local
//! part so that tests can provoke every kind of reply on purpose.
//!
//! | recipient local part | RCPT reply                                 |
//! |----------------------|--------------------------------------------|
//! | `tempfail`           | `451 4.3.0 ...`                            |
//! | `permfail`           | `550 5.1.1 ...`                            |
//! | `450-anything`       | `450 4.2.0 ...`                            |
//! | `421-anything`       | `421 4.3.2 ...`, then the connection closes |
//! | `550-anything`       | `550 5.7.1 ...`                            |
//! | anything else        | `250 OK`, unless a random failure applies  |
//!
//! The sink is deliberately its own small SMTP implementation (not Tern's
//! `tern-smtp`), so that it checks Tern's client instead of sharing its
//! bugs. It counts connections (and the most seen at once), messages and
//! recipients by outcome, and messages received per second.
//!
//! In-process use, as the integration tests elsewhere do:
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use tern_bench::sink::{Sink, SinkConfig};
//! let handle = Sink::start(SinkConfig::default()).await?;
//! println!("sink on {}", handle.local_addr);
//! // ... deliver mail to handle.local_addr ...
//! assert_eq!(handle.stats().messages, 0);
//! handle.shutdown();
//! # Ok(()) }
//! ```

use anyhow::{Context, Result, bail};
use parking_lot::Mutex;
use serde::Serialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio_rustls::TlsAcceptor;

/// Longest command line the sink accepts; a longer one is answered with 500.
const MAX_COMMAND_LINE: u64 = 4096;
/// Longest message line; RFC 5321 asks for 1000, the sink is lenient.
const MAX_DATA_LINE: u64 = 1 << 20;

/// Where the sink's TLS certificate comes from.
#[derive(Clone, Debug, Default)]
pub enum TlsIdentity {
    /// A self-signed certificate for the sink's hostname, made at start.
    #[default]
    SelfSigned,
    /// PEM files: certificate chain and private key.
    Pem { cert: PathBuf, key: PathBuf },
}

/// Everything the sink can be told. `Default` gives a sink on
/// `127.0.0.1:0` that accepts everything and advertises every extension.
#[derive(Clone, Debug)]
pub struct SinkConfig {
    pub listen: SocketAddr,
    /// Name used in the greeting, the EHLO reply and the self-signed cert.
    pub hostname: String,
    /// Write each accepted message to this Maildir (`tmp/`, `new/`, `cur/`
    /// are created); `None` discards.
    pub maildir: Option<PathBuf>,
    /// Percentage (0–100) of otherwise accepted recipients answered 451.
    pub tempfail_percent: f64,
    /// Percentage (0–100) of otherwise accepted recipients answered 550.
    pub permfail_percent: f64,
    /// Pause before every reply.
    pub reply_delay: Duration,
    /// Extra pause before the reply to the end of message data.
    pub data_delay: Duration,
    pub starttls: bool,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub pipelining: bool,
    pub tls: TlsIdentity,
    /// Signal [`SinkHandle::exited`] once this many messages were accepted.
    pub exit_after: Option<u64>,
}

impl Default for SinkConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            hostname: "sink.tern.test".to_string(),
            maildir: None,
            tempfail_percent: 0.0,
            permfail_percent: 0.0,
            reply_delay: Duration::ZERO,
            data_delay: Duration::ZERO,
            starttls: true,
            eight_bit_mime: true,
            smtputf8: true,
            pipelining: true,
            tls: TlsIdentity::SelfSigned,
            exit_after: None,
        }
    }
}

/// Live counters, updated lock-free by the sessions.
#[derive(Debug)]
struct Counters {
    started: Instant,
    connections: AtomicU64,
    active_connections: AtomicU64,
    max_concurrent_connections: AtomicU64,
    tls_sessions: AtomicU64,
    messages: AtomicU64,
    messages_rejected: AtomicU64,
    bytes: AtomicU64,
    recipients_accepted: AtomicU64,
    recipients_tempfailed: AtomicU64,
    recipients_permfailed: AtomicU64,
    /// Accepted messages per whole second since start. Touched once per
    /// message, so a short mutex is cheap enough.
    per_second: Mutex<Vec<u64>>,
}

impl Counters {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            connections: AtomicU64::new(0),
            active_connections: AtomicU64::new(0),
            max_concurrent_connections: AtomicU64::new(0),
            tls_sessions: AtomicU64::new(0),
            messages: AtomicU64::new(0),
            messages_rejected: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            recipients_accepted: AtomicU64::new(0),
            recipients_tempfailed: AtomicU64::new(0),
            recipients_permfailed: AtomicU64::new(0),
            per_second: Mutex::new(Vec::new()),
        }
    }

    fn record_message(&self, bytes: u64) -> u64 {
        let second = self.started.elapsed().as_secs() as usize;
        {
            let mut per_second = self.per_second.lock();
            if per_second.len() <= second {
                per_second.resize(second + 1, 0);
            }
            per_second[second] += 1;
        }
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.messages.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// A point-in-time copy of the sink's counters (also the `--stats-json`
/// file format).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct SinkStats {
    pub elapsed_secs: f64,
    pub connections: u64,
    pub active_connections: u64,
    pub max_concurrent_connections: u64,
    pub tls_sessions: u64,
    /// Messages accepted (250 after the data).
    pub messages: u64,
    /// DATA attempts refused because no recipient had been accepted.
    pub messages_rejected: u64,
    pub bytes: u64,
    pub recipients_accepted: u64,
    pub recipients_tempfailed: u64,
    pub recipients_permfailed: u64,
    /// Accepted messages in each second since the sink started.
    pub per_second: Vec<u64>,
}

impl SinkStats {
    /// Human-readable summary, several lines.
    pub fn summary_text(&self) -> String {
        let rate = if self.elapsed_secs > 0.0 {
            self.messages as f64 / self.elapsed_secs
        } else {
            0.0
        };
        format!(
            "sink summary after {:.1}s\n  connections: {} (max concurrent {}, TLS {})\n  messages: {} accepted ({:.1}/s), {} refused at DATA, {} bytes\n  recipients: {} accepted, {} tempfailed, {} permfailed\n",
            self.elapsed_secs,
            self.connections,
            self.max_concurrent_connections,
            self.tls_sessions,
            self.messages,
            rate,
            self.messages_rejected,
            self.bytes,
            self.recipients_accepted,
            self.recipients_tempfailed,
            self.recipients_permfailed,
        )
    }
}

/// Namespace for starting a sink.
pub struct Sink;

/// A running sink. Dropping the handle does not stop it; call
/// [`SinkHandle::shutdown`].
pub struct SinkHandle {
    pub local_addr: SocketAddr,
    counters: Arc<Counters>,
    shutdown: watch::Sender<bool>,
    exit_reached: Arc<Notify>,
    exit_after: Option<u64>,
}

impl SinkHandle {
    pub fn stats(&self) -> SinkStats {
        let c = &self.counters;
        SinkStats {
            elapsed_secs: c.started.elapsed().as_secs_f64(),
            connections: c.connections.load(Ordering::Relaxed),
            active_connections: c.active_connections.load(Ordering::Relaxed),
            max_concurrent_connections: c.max_concurrent_connections.load(Ordering::Relaxed),
            tls_sessions: c.tls_sessions.load(Ordering::Relaxed),
            messages: c.messages.load(Ordering::Relaxed),
            messages_rejected: c.messages_rejected.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            recipients_accepted: c.recipients_accepted.load(Ordering::Relaxed),
            recipients_tempfailed: c.recipients_tempfailed.load(Ordering::Relaxed),
            recipients_permfailed: c.recipients_permfailed.load(Ordering::Relaxed),
            per_second: c.per_second.lock().clone(),
        }
    }

    /// Completes once `exit_after` messages were accepted; never completes
    /// when no `exit_after` was configured.
    pub async fn exited(&self) {
        match self.exit_after {
            Some(limit) => loop {
                let notified = self.exit_reached.notified();
                if self.counters.messages.load(Ordering::Relaxed) >= limit {
                    return;
                }
                notified.await;
            },
            None => std::future::pending().await,
        }
    }

    /// Stop accepting connections and end the open sessions.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }
}

/// Settings shared by every session, built once at start.
struct Shared {
    config: SinkConfig,
    acceptor: Option<TlsAcceptor>,
    counters: Arc<Counters>,
    exit_reached: Arc<Notify>,
    maildir_seq: AtomicU64,
}

impl Sink {
    /// Bind, prepare TLS and the Maildir, and start accepting connections.
    pub async fn start(config: SinkConfig) -> Result<SinkHandle> {
        validate_percent("tempfail percent", config.tempfail_percent)?;
        validate_percent("permfail percent", config.permfail_percent)?;
        if config.tempfail_percent + config.permfail_percent > 100.0 {
            bail!("tempfail and permfail percentages add up to more than 100");
        }
        let acceptor = if config.starttls {
            Some(build_acceptor(&config.tls, &config.hostname)?)
        } else {
            None
        };
        if let Some(dir) = &config.maildir {
            for sub in ["tmp", "new", "cur"] {
                std::fs::create_dir_all(dir.join(sub))
                    .with_context(|| format!("creating Maildir {}", dir.display()))?;
            }
        }
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let local_addr = listener.local_addr()?;
        let counters = Arc::new(Counters::new());
        let exit_reached = Arc::new(Notify::new());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let exit_after = config.exit_after;
        let shared = Arc::new(Shared {
            config,
            acceptor,
            counters: counters.clone(),
            exit_reached: exit_reached.clone(),
            maildir_seq: AtomicU64::new(0),
        });
        tokio::spawn(accept_loop(listener, shared, shutdown_rx));
        Ok(SinkHandle {
            local_addr,
            counters,
            shutdown,
            exit_reached,
            exit_after,
        })
    }
}

fn validate_percent(what: &str, value: f64) -> Result<()> {
    if !(0.0..=100.0).contains(&value) {
        bail!("{what} must be between 0 and 100, got {value}");
    }
    Ok(())
}

fn build_acceptor(identity: &TlsIdentity, hostname: &str) -> Result<TlsAcceptor> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (certs, key): (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) = match identity {
        TlsIdentity::SelfSigned => {
            let cert = rcgen::generate_simple_self_signed(vec![hostname.to_string()])
                .context("generating the self-signed certificate")?;
            let key = PrivateKeyDer::try_from(cert.signing_key.serialize_der())
                .map_err(|e| anyhow::anyhow!("self-signed key: {e}"))?;
            (vec![cert.cert.der().clone()], key)
        }
        TlsIdentity::Pem { cert, key } => {
            let cert_pem =
                std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
            let key_pem =
                std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
            let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("parsing certificates in {}", cert.display()))?;
            if certs.is_empty() {
                bail!("{} holds no PEM certificate", cert.display());
            }
            let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
                .with_context(|| format!("parsing the key in {}", key.display()))?
                .with_context(|| format!("{} holds no PEM private key", key.display()))?;
            (certs, key)
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("TLS certificate and key do not fit together")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(_) => {
                // Usually EMFILE: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let mut session_shutdown = shutdown.clone();
        tokio::spawn(async move {
            let counters = &shared.counters;
            counters.connections.fetch_add(1, Ordering::Relaxed);
            let active = counters.active_connections.fetch_add(1, Ordering::Relaxed) + 1;
            counters
                .max_concurrent_connections
                .fetch_max(active, Ordering::Relaxed);
            tokio::select! {
                _ = run_session(stream, peer, &shared) => {}
                _ = session_shutdown.changed() => {}
            }
            counters.active_connections.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// What the recipient's local part asks the sink to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecipientBehaviour {
    Accept,
    TempFail,
    PermFail,
    Code450,
    Code421,
    Code550,
}

impl RecipientBehaviour {
    /// Classify by local part (case-insensitive), before random failures.
    pub fn for_recipient(address: &str) -> Self {
        let local = address.rsplit_once('@').map_or(address, |(l, _)| l);
        let local = local.trim_matches('"');
        let lower = |s: &str, prefix: &str| starts_with_ignore_case(s, prefix);
        if local.eq_ignore_ascii_case("tempfail") {
            Self::TempFail
        } else if local.eq_ignore_ascii_case("permfail") {
            Self::PermFail
        } else if lower(local, "450-") {
            Self::Code450
        } else if lower(local, "421-") {
            Self::Code421
        } else if lower(local, "550-") {
            Self::Code550
        } else {
            Self::Accept
        }
    }
}

enum Flow {
    Continue,
    Close,
    StartTls,
}

/// One SMTP transaction in progress.
#[derive(Default)]
struct Transaction {
    sender: Option<String>,
    recipients: Vec<String>,
}

struct Session<'a> {
    shared: &'a Shared,
    peer: SocketAddr,
    tls: bool,
    txn: Transaction,
    /// Replies waiting to be written: with pipelining they are flushed only
    /// when the client has nothing more buffered, so a batch of commands
    /// gets one batch of replies.
    out: Vec<u8>,
}

async fn run_session(stream: TcpStream, peer: SocketAddr, shared: &Shared) -> Result<()> {
    let mut session = Session {
        shared,
        peer,
        tls: false,
        txn: Transaction::default(),
        out: Vec::with_capacity(512),
    };
    session.reply(
        220,
        &format!("{} Tern bench sink ready", shared.config.hostname),
    );
    let mut reader = BufReader::new(stream);
    match session.serve(&mut reader).await? {
        Flow::StartTls => {}
        Flow::Close | Flow::Continue => return Ok(()),
    }
    let Some(acceptor) = &shared.acceptor else {
        return Ok(());
    };
    let tls_stream = acceptor.accept(reader.into_inner()).await?;
    shared.counters.tls_sessions.fetch_add(1, Ordering::Relaxed);
    session.tls = true;
    session.txn = Transaction::default();
    let mut reader = BufReader::new(tls_stream);
    session.serve(&mut reader).await?;
    Ok(())
}

impl Session<'_> {
    fn reply(&mut self, code: u16, text: &str) {
        use std::io::Write;
        let _ = write!(self.out, "{code} {text}\r\n");
    }

    async fn flush<S: AsyncWrite + Unpin>(&mut self, stream: &mut S) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        stream.write_all(&self.out).await?;
        stream.flush().await?;
        self.out.clear();
        Ok(())
    }

    async fn delay(&self) {
        if !self.shared.config.reply_delay.is_zero() {
            tokio::time::sleep(self.shared.config.reply_delay).await;
        }
    }

    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        reader: &mut BufReader<S>,
    ) -> Result<Flow> {
        let mut line = Vec::with_capacity(256);
        loop {
            if reader.buffer().is_empty() {
                self.flush(reader.get_mut()).await?;
            }
            line.clear();
            let n = (&mut *reader)
                .take(MAX_COMMAND_LINE)
                .read_until(b'\n', &mut line)
                .await?;
            if n == 0 {
                return Ok(Flow::Close);
            }
            if line.last() != Some(&b'\n') {
                self.delay().await;
                self.reply(500, "5.5.2 Line too long");
                self.flush(reader.get_mut()).await?;
                return Ok(Flow::Close);
            }
            self.delay().await;
            let flow = self.command(&line, reader).await?;
            match flow {
                Flow::Continue => {}
                Flow::Close => {
                    self.flush(reader.get_mut()).await?;
                    return Ok(Flow::Close);
                }
                Flow::StartTls => {
                    self.flush(reader.get_mut()).await?;
                    return Ok(Flow::StartTls);
                }
            }
        }
    }

    async fn command<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        raw: &[u8],
        reader: &mut BufReader<S>,
    ) -> Result<Flow> {
        let Ok(text) = std::str::from_utf8(raw) else {
            self.reply(501, "5.5.2 Invalid UTF-8 in command");
            return Ok(Flow::Continue);
        };
        let text = text.trim_end_matches(['\r', '\n']);
        let (verb, rest) = text.split_once(' ').unwrap_or((text, ""));
        let rest = rest.trim();
        let config = &self.shared.config;
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" => {
                self.txn = Transaction::default();
                let mut lines = vec![format!("{} Hello {}", config.hostname, rest)];
                if config.pipelining {
                    lines.push("PIPELINING".into());
                }
                lines.push("ENHANCEDSTATUSCODES".into());
                if config.eight_bit_mime {
                    lines.push("8BITMIME".into());
                }
                if config.smtputf8 {
                    lines.push("SMTPUTF8".into());
                }
                if config.starttls && !self.tls {
                    lines.push("STARTTLS".into());
                }
                let last = lines.len() - 1;
                for (i, l) in lines.iter().enumerate() {
                    let sep = if i == last { ' ' } else { '-' };
                    self.out
                        .extend_from_slice(format!("250{sep}{l}\r\n").as_bytes());
                }
            }
            "HELO" => {
                self.txn = Transaction::default();
                self.reply(250, &format!("{} Hello {}", config.hostname, rest));
            }
            "STARTTLS" => {
                if self.tls {
                    self.reply(501, "5.5.1 TLS is already active");
                } else if !config.starttls {
                    self.reply(502, "5.5.1 STARTTLS is not offered");
                } else if !reader.buffer().is_empty() {
                    // Commands pipelined after STARTTLS would be read as if
                    // they came over TLS (the classic injection attack).
                    self.reply(554, "5.5.1 Commands pipelined after STARTTLS");
                    return Ok(Flow::Close);
                } else {
                    self.reply(220, "2.0.0 Ready to start TLS");
                    return Ok(Flow::StartTls);
                }
            }
            "MAIL" => {
                if self.txn.sender.is_some() {
                    self.reply(503, "5.5.1 MAIL already given");
                } else {
                    match path_argument(rest, "FROM:") {
                        Some(addr) => {
                            self.reply(250, "2.1.0 OK");
                            self.txn.sender = Some(addr.to_string());
                        }
                        None => self.reply(501, "5.5.4 Syntax: MAIL FROM:<address>"),
                    }
                }
            }
            "RCPT" => {
                if self.txn.sender.is_none() {
                    self.reply(503, "5.5.1 MAIL first");
                } else {
                    match path_argument(rest, "TO:") {
                        Some(addr) if !addr.is_empty() => {
                            let addr = addr.to_string();
                            return Ok(self.recipient(addr));
                        }
                        _ => self.reply(501, "5.5.4 Syntax: RCPT TO:<address>"),
                    }
                }
            }
            "DATA" => {
                if self.txn.sender.is_none() {
                    self.reply(503, "5.5.1 MAIL first");
                } else if self.txn.recipients.is_empty() {
                    // RFC 2920: with pipelining the client sends DATA even
                    // when every RCPT failed.
                    self.shared
                        .counters
                        .messages_rejected
                        .fetch_add(1, Ordering::Relaxed);
                    self.txn = Transaction::default();
                    self.reply(554, "5.5.1 No valid recipients");
                } else {
                    self.reply(354, "Send data, end with <CRLF>.<CRLF>");
                    self.flush(reader.get_mut()).await?;
                    return self.data(reader).await;
                }
            }
            "RSET" => {
                self.txn = Transaction::default();
                self.reply(250, "2.0.0 Reset");
            }
            "NOOP" => self.reply(250, "2.0.0 OK"),
            "QUIT" => {
                self.reply(221, "2.0.0 Bye");
                return Ok(Flow::Close);
            }
            "" => self.reply(500, "5.5.2 Empty command"),
            _ => self.reply(502, "5.5.1 Command not implemented"),
        }
        Ok(Flow::Continue)
    }

    fn recipient(&mut self, addr: String) -> Flow {
        let counters = &self.shared.counters;
        let mut behaviour = RecipientBehaviour::for_recipient(&addr);
        if behaviour == RecipientBehaviour::Accept {
            let config = &self.shared.config;
            if config.tempfail_percent > 0.0 || config.permfail_percent > 0.0 {
                let roll: f64 = rand::random::<f64>() * 100.0;
                if roll < config.tempfail_percent {
                    behaviour = RecipientBehaviour::TempFail;
                } else if roll < config.tempfail_percent + config.permfail_percent {
                    behaviour = RecipientBehaviour::PermFail;
                }
            }
        }
        let (code, text, temporary) = match behaviour {
            RecipientBehaviour::Accept => {
                counters.recipients_accepted.fetch_add(1, Ordering::Relaxed);
                self.reply(250, "2.1.5 OK");
                self.txn.recipients.push(addr);
                return Flow::Continue;
            }
            RecipientBehaviour::TempFail => (451, "4.3.0 Temporary failure (tempfail)", true),
            RecipientBehaviour::PermFail => (550, "5.1.1 Permanent failure (permfail)", false),
            RecipientBehaviour::Code450 => (450, "4.2.0 Mailbox unavailable (450-)", true),
            RecipientBehaviour::Code421 => (421, "4.3.2 Closing connection (421-)", true),
            RecipientBehaviour::Code550 => (550, "5.7.1 Rejected (550-)", false),
        };
        if temporary {
            counters
                .recipients_tempfailed
                .fetch_add(1, Ordering::Relaxed);
        } else {
            counters
                .recipients_permfailed
                .fetch_add(1, Ordering::Relaxed);
        }
        let host = &self.shared.config.hostname;
        if code == 421 {
            self.reply(code, &format!("{text} {host}"));
            return Flow::Close;
        }
        self.reply(code, text);
        Flow::Continue
    }

    async fn data<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        reader: &mut BufReader<S>,
    ) -> Result<Flow> {
        let keep = self.shared.config.maildir.is_some();
        let mut body = Vec::new();
        let mut line = Vec::with_capacity(1024);
        let mut bytes = 0u64;
        loop {
            line.clear();
            let n = (&mut *reader)
                .take(MAX_DATA_LINE)
                .read_until(b'\n', &mut line)
                .await?;
            if n == 0 {
                // Connection lost mid-message: nothing is accepted.
                return Ok(Flow::Close);
            }
            if line == b".\r\n" || line == b".\n" {
                break;
            }
            let content = if line.first() == Some(&b'.') {
                &line[1..]
            } else {
                &line[..]
            };
            bytes += content.len() as u64;
            if keep {
                body.extend_from_slice(content);
            }
        }
        let txn = std::mem::take(&mut self.txn);
        if !self.shared.config.data_delay.is_zero() {
            tokio::time::sleep(self.shared.config.data_delay).await;
        }
        if let Some(dir) = &self.shared.config.maildir {
            let seq = self.shared.maildir_seq.fetch_add(1, Ordering::Relaxed);
            if let Err(err) = write_maildir(dir, seq, &self.peer, &txn, &body).await {
                self.reply(451, &format!("4.3.0 Could not write the Maildir: {err}"));
                return Ok(Flow::Continue);
            }
        }
        let count = self.shared.counters.record_message(bytes);
        if self.shared.config.exit_after.is_some_and(|n| count >= n) {
            self.shared.exit_reached.notify_waiters();
        }
        self.reply(250, "2.0.0 OK: queued");
        Ok(Flow::Continue)
    }
}

/// ASCII case-insensitive prefix test that is safe on any UTF-8 input.
fn starts_with_ignore_case(text: &str, prefix: &str) -> bool {
    text.len() >= prefix.len()
        && text.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// `FROM:<a@b> PARAMS` → `a@b` (the prefix compared case-insensitively,
/// angle brackets required; the null path gives an empty string).
fn path_argument<'a>(rest: &'a str, prefix: &str) -> Option<&'a str> {
    if !starts_with_ignore_case(rest, prefix) {
        return None;
    }
    let after = rest[prefix.len()..].trim_start();
    let after = after.strip_prefix('<')?;
    let end = after.find('>')?;
    Some(&after[..end])
}

async fn write_maildir(
    dir: &Path,
    seq: u64,
    peer: &SocketAddr,
    txn: &Transaction,
    body: &[u8],
) -> std::io::Result<()> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let name = format!(
        "{}.M{}P{}Q{}.tern-bench-sink",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        seq
    );
    let mut content = Vec::with_capacity(body.len() + 256);
    content.extend_from_slice(
        format!(
            "Return-Path: <{}>\r\nX-Sink-Peer: {}\r\nX-Sink-Recipients: {}\r\n",
            txn.sender.as_deref().unwrap_or(""),
            peer,
            txn.recipients.join(", ")
        )
        .as_bytes(),
    );
    content.extend_from_slice(body);
    let tmp = dir.join("tmp").join(&name);
    tokio::fs::write(&tmp, &content).await?;
    tokio::fs::rename(&tmp, dir.join("new").join(&name)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaviour_follows_the_local_part() {
        use RecipientBehaviour::*;
        assert_eq!(
            RecipientBehaviour::for_recipient("tempfail@x.test"),
            TempFail
        );
        assert_eq!(
            RecipientBehaviour::for_recipient("PermFail@x.test"),
            PermFail
        );
        assert_eq!(RecipientBehaviour::for_recipient("450-a@x.test"), Code450);
        assert_eq!(RecipientBehaviour::for_recipient("421-b@x.test"), Code421);
        assert_eq!(RecipientBehaviour::for_recipient("550-@x.test"), Code550);
        assert_eq!(
            RecipientBehaviour::for_recipient("tempfailx@x.test"),
            Accept
        );
        assert_eq!(RecipientBehaviour::for_recipient("user@x.test"), Accept);
        assert_eq!(RecipientBehaviour::for_recipient("550@x.test"), Accept);
    }

    #[test]
    fn path_argument_parses_envelope_paths() {
        assert_eq!(path_argument("FROM:<a@b> SIZE=10", "FROM:"), Some("a@b"));
        assert_eq!(path_argument("from: <>", "FROM:"), Some(""));
        assert_eq!(path_argument("TO:a@b", "TO:"), None);
        assert_eq!(path_argument("T", "TO:"), None);
        assert_eq!(path_argument("TÖ:<a@b>", "TO:"), None);
        assert_eq!(
            RecipientBehaviour::for_recipient("4ü@x"),
            RecipientBehaviour::Accept
        );
    }

    #[tokio::test]
    async fn bad_percentages_are_refused() {
        let config = SinkConfig {
            tempfail_percent: 120.0,
            ..SinkConfig::default()
        };
        let err = Sink::start(config).await.err().unwrap();
        assert!(err.to_string().contains("between 0 and 100"), "{err}");
        let config = SinkConfig {
            tempfail_percent: 60.0,
            permfail_percent: 60.0,
            ..SinkConfig::default()
        };
        assert!(Sink::start(config).await.is_err());
    }
}
