//! The load generator: injects messages into an MTA over SMTP (pipelined,
//! over several connections, optionally with STARTTLS) or over the HTTP
//! injection API (`POST /api/inject/v1`, batches of recipients with
//! per-recipient substitutions), then reports throughput, reply codes and
//! latency percentiles.
//!
//! Its SMTP and HTTP clients are small, written here on purpose: the bench
//! must check Tern, not share Tern's code. Latencies go into an HDR
//! histogram per connection (microseconds, 3 significant digits), merged
//! at the end, so a long run costs constant memory.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use tern_bench::send::{SendConfig, run};
//! let summary = run(SendConfig {
//!     target: "127.0.0.1:2525".into(),
//!     count: Some(1000),
//!     ..SendConfig::default()
//! }).await?;
//! println!("{}", summary.summary_text());
//! # Ok(()) }
//! ```

use anyhow::{Context, Result, bail};
use base64::Engine;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tern_types::ThrottleSpec;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A worker gives up after this many connection failures in a row.
const MAX_CONSECUTIVE_FAILURES: u32 = 5;
/// At most this many distinct error texts are kept for the summary.
const MAX_ERROR_SAMPLES: usize = 10;
/// Latencies above an hour are recorded as an hour.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// SMTP-specific settings.
#[derive(Clone, Debug)]
pub struct SmtpOptions {
    /// Upgrade with STARTTLS; the run fails if the server does not offer it.
    pub starttls: bool,
    /// Use PIPELINING when the server offers it.
    pub pipelining: bool,
    pub ehlo_name: String,
    /// QUIT and reconnect after this many messages on one connection.
    pub messages_per_connection: Option<u64>,
}

impl Default for SmtpOptions {
    fn default() -> Self {
        Self {
            starttls: false,
            pipelining: true,
            ehlo_name: "bench.tern.test".into(),
            messages_per_connection: None,
        }
    }
}

/// HTTP injection settings.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    /// Recipients (= messages) per request.
    pub batch_size: u64,
    /// HTTP Basic credentials.
    pub basic_auth: Option<(String, String)>,
    pub path: String,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            batch_size: 100,
            basic_auth: None,
            path: "/api/inject/v1".into(),
        }
    }
}

#[derive(Clone, Debug)]
pub enum Transport {
    Smtp(SmtpOptions),
    Http(HttpOptions),
}

/// What to send, where, and how hard.
#[derive(Clone, Debug)]
pub struct SendConfig {
    /// `host:port` of the SMTP listener or HTTP listener.
    pub target: String,
    pub transport: Transport,
    /// Concurrent connections.
    pub connections: usize,
    /// Stop after this many messages (recipients in HTTP mode)...
    pub count: Option<u64>,
    /// ...or after this long, whichever comes first.
    pub duration: Option<Duration>,
    /// Approximate size of each message in bytes, headers included.
    pub message_size: usize,
    pub sender: String,
    /// Recipient local part; `{n}` is replaced by the message number.
    pub recipient_local: String,
    pub recipient_domain: String,
    /// With more than 1, recipients are spread round-robin over
    /// `d0.DOMAIN`, `d1.DOMAIN`, ...
    pub domain_count: u64,
    /// Messages-per-time cap for the whole run (all connections together).
    pub rate: Option<ThrottleSpec>,
    /// Per-read/write/connect timeout.
    pub timeout: Duration,
}

impl Default for SendConfig {
    fn default() -> Self {
        Self {
            target: "127.0.0.1:25".into(),
            transport: Transport::Smtp(SmtpOptions::default()),
            connections: 4,
            count: None,
            duration: None,
            message_size: 4096,
            sender: "bench@sender.tern.test".into(),
            recipient_local: "user{n}".into(),
            recipient_domain: "example.test".into(),
            domain_count: 1,
            rate: None,
            timeout: Duration::from_secs(60),
        }
    }
}

impl SendConfig {
    /// The recipient address of message number `n`.
    pub fn recipient(&self, n: u64) -> String {
        let local = self.recipient_local.replace("{n}", &n.to_string());
        if self.domain_count > 1 {
            format!(
                "{local}@d{}.{}",
                n % self.domain_count,
                self.recipient_domain
            )
        } else {
            format!("{local}@{}", self.recipient_domain)
        }
    }

    fn validate(&self) -> Result<()> {
        if self.count.is_none() && self.duration.is_none() {
            bail!("give a message count or a duration (or both)");
        }
        if self.connections == 0 {
            bail!("connections must be at least 1");
        }
        if self.target.is_empty() {
            bail!("no target host:port given");
        }
        if let Transport::Http(http) = &self.transport
            && http.batch_size == 0
        {
            bail!("the HTTP batch size must be at least 1");
        }
        for (what, text) in [
            ("sender", &self.sender),
            ("recipient local part", &self.recipient_local),
            ("recipient domain", &self.recipient_domain),
        ] {
            if text.contains(['<', '>', '\r', '\n', ' ']) {
                bail!("the {what} '{text}' contains characters not allowed in an address");
            }
        }
        Ok(())
    }
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Latency {
    pub samples: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// The result of a run (also the `--json` output).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    /// `smtp`, `smtp+starttls` or `http`.
    pub transport: String,
    pub target: String,
    pub connections: usize,
    pub elapsed_secs: f64,
    /// Messages (recipients, in HTTP mode) tried.
    pub attempted: u64,
    /// Accepted: 250 after the data, or counted in `success_count`.
    pub accepted: u64,
    /// 4xx outcomes (HTTP: 503 responses).
    pub tempfailed: u64,
    /// 5xx outcomes (HTTP: `fail_count` and other error statuses).
    pub permfailed: u64,
    /// Messages lost to connection errors or timeouts.
    pub io_errors: u64,
    pub connections_opened: u64,
    /// Accepted messages per second of wall time.
    pub messages_per_sec: f64,
    /// Outcome counts by reply code (SMTP) or `http <status>`.
    pub codes: BTreeMap<String, u64>,
    /// What one latency sample measures: `message` or `request`.
    pub latency_unit: String,
    pub latency_ms: Latency,
    /// A few distinct error texts, for diagnosis.
    pub errors: Vec<String>,
}

impl Summary {
    pub fn summary_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} to {} over {} connection(s): {} attempted in {:.2}s",
            self.transport, self.target, self.connections, self.attempted, self.elapsed_secs
        );
        let _ = writeln!(
            out,
            "  accepted {} ({:.1} msg/s), tempfailed {}, permfailed {}, io errors {}, connections opened {}",
            self.accepted,
            self.messages_per_sec,
            self.tempfailed,
            self.permfailed,
            self.io_errors,
            self.connections_opened
        );
        let codes: Vec<String> = self
            .codes
            .iter()
            .map(|(c, n)| format!("{c}: {n}"))
            .collect();
        let _ = writeln!(out, "  codes: {}", codes.join(", "));
        let l = &self.latency_ms;
        let _ = writeln!(
            out,
            "  latency per {} (ms): p50 {:.2}, p90 {:.2}, p99 {:.2}, max {:.2}, mean {:.2} ({} samples)",
            self.latency_unit, l.p50, l.p90, l.p99, l.max, l.mean, l.samples
        );
        for err in &self.errors {
            let _ = writeln!(out, "  error: {err}");
        }
        out
    }
}

/// Counters one worker keeps to itself; merged at the end so the hot path
/// touches no shared state except the progress counter.
struct WorkerStats {
    attempted: u64,
    accepted: u64,
    tempfailed: u64,
    permfailed: u64,
    io_errors: u64,
    connections_opened: u64,
    codes: BTreeMap<String, u64>,
    latency_us: Histogram<u64>,
}

impl WorkerStats {
    fn new() -> Self {
        Self {
            attempted: 0,
            accepted: 0,
            tempfailed: 0,
            permfailed: 0,
            io_errors: 0,
            connections_opened: 0,
            codes: BTreeMap::new(),
            latency_us: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("bounds and precision are valid"),
        }
    }

    fn outcome(&mut self, code: &str, class: Class, messages: u64) {
        match class {
            Class::Accepted => self.accepted += messages,
            Class::Temp => self.tempfailed += messages,
            Class::Perm => self.permfailed += messages,
        }
        *self.codes.entry(code.to_string()).or_default() += messages;
    }

    fn latency(&mut self, since: Instant) {
        let micros = since.elapsed().as_micros().min(u64::MAX as u128) as u64;
        self.latency_us.saturating_record(micros.max(1));
    }
}

#[derive(Clone, Copy)]
enum Class {
    Accepted,
    Temp,
    Perm,
}

fn class_of(code: u16) -> Class {
    match code {
        200..=399 => Class::Accepted,
        400..=499 => Class::Temp,
        _ => Class::Perm,
    }
}

/// Hands out message numbers to workers until the count or the deadline is
/// reached, pacing them to the rate cap.
struct Work {
    next: AtomicU64,
    count: Option<u64>,
    deadline: Option<Instant>,
    pacer: Option<Pacer>,
}

impl Work {
    fn finished(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
            || self
                .count
                .is_some_and(|c| self.next.load(Ordering::Relaxed) >= c)
    }

    /// Claim up to `n` message numbers; `None` when the run is over.
    async fn claim(&self, n: u64) -> Option<Range<u64>> {
        if self.finished() {
            return None;
        }
        let start = self.next.fetch_add(n, Ordering::Relaxed);
        let end = match self.count {
            Some(count) if start >= count => return None,
            Some(count) => (start + n).min(count),
            None => start + n,
        };
        if let Some(pacer) = &self.pacer {
            pacer.wait(end - start).await;
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                return None;
            }
        }
        Some(start..end)
    }
}

/// A shared schedule of send slots: each claim takes the next free slot(s)
/// at the steady rate and sleeps until its slot comes.
struct Pacer {
    interval: Duration,
    next_slot: Mutex<Instant>,
}

impl Pacer {
    async fn wait(&self, messages: u64) {
        let slot = {
            let mut next = self.next_slot.lock();
            let now = Instant::now();
            let slot = (*next).max(now);
            *next = slot + self.interval * messages.min(u32::MAX as u64) as u32;
            slot
        };
        tokio::time::sleep_until(slot.into()).await;
    }
}

/// Run the load described by `config` and return its summary.
pub async fn run(config: SendConfig) -> Result<Summary> {
    run_with_progress(config, Arc::new(AtomicU64::new(0))).await
}

/// Like [`run`]; `progress` is incremented as each message is finished
/// (whatever its outcome), for a progress display.
pub async fn run_with_progress(config: SendConfig, progress: Arc<AtomicU64>) -> Result<Summary> {
    config.validate()?;
    let config = Arc::new(config);
    let started = Instant::now();
    let work = Arc::new(Work {
        next: AtomicU64::new(0),
        count: config.count,
        deadline: config.duration.map(|d| started + d),
        pacer: config.rate.as_ref().map(|rate| Pacer {
            interval: rate.emission_interval(),
            next_slot: Mutex::new(Instant::now()),
        }),
    });
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let shared = Arc::new(Prepared::new(&config)?);
    let mut tasks = Vec::with_capacity(config.connections);
    for _ in 0..config.connections {
        let worker = Worker {
            config: config.clone(),
            work: work.clone(),
            prepared: shared.clone(),
            progress: progress.clone(),
            errors: errors.clone(),
            stats: WorkerStats::new(),
        };
        tasks.push(tokio::spawn(worker.run()));
    }
    let mut total = WorkerStats::new();
    for task in tasks {
        let stats = task.await.context("a send worker panicked")?;
        total.attempted += stats.attempted;
        total.accepted += stats.accepted;
        total.tempfailed += stats.tempfailed;
        total.permfailed += stats.permfailed;
        total.io_errors += stats.io_errors;
        total.connections_opened += stats.connections_opened;
        for (code, n) in stats.codes {
            *total.codes.entry(code).or_default() += n;
        }
        total
            .latency_us
            .add(&stats.latency_us)
            .context("merging latency histograms")?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let h = &total.latency_us;
    let ms = |us: u64| us as f64 / 1000.0;
    let latency = if h.is_empty() {
        Latency::default()
    } else {
        Latency {
            samples: h.len(),
            mean: h.mean() / 1000.0,
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
        }
    };
    let (transport, unit) = match &config.transport {
        Transport::Smtp(o) if o.starttls => ("smtp+starttls", "message"),
        Transport::Smtp(_) => ("smtp", "message"),
        Transport::Http(_) => ("http", "request"),
    };
    let errors = std::mem::take(&mut *errors.lock());
    Ok(Summary {
        transport: transport.into(),
        target: config.target.clone(),
        connections: config.connections,
        elapsed_secs: elapsed,
        attempted: total.attempted,
        accepted: total.accepted,
        tempfailed: total.tempfailed,
        permfailed: total.permfailed,
        io_errors: total.io_errors,
        connections_opened: total.connections_opened,
        messages_per_sec: if elapsed > 0.0 {
            total.accepted as f64 / elapsed
        } else {
            0.0
        },
        codes: total.codes,
        latency_unit: unit.into(),
        latency_ms: latency,
        errors,
    })
}

/// Things built once per run and shared read-only by the workers.
struct Prepared {
    /// Message body (after the per-message headers), CRLF lines, no line
    /// starting with a dot, ending in CRLF.
    body: String,
    tls: Option<tokio_rustls::TlsConnector>,
    server_name: rustls::pki_types::ServerName<'static>,
    auth_header: Option<String>,
}

impl Prepared {
    fn new(config: &SendConfig) -> Result<Self> {
        // The per-message headers take about 200 bytes; the rest is body.
        let body_size = config.message_size.saturating_sub(200).max(2);
        let mut body = String::with_capacity(body_size + 80);
        let line =
            "The quick brown fox jumps over the lazy dog; Tern bench filler text 0123456789\r\n";
        while body.len() + line.len() <= body_size {
            body.push_str(line);
        }
        let rest = body_size - body.len();
        if rest >= 2 {
            body.push_str(&"x".repeat(rest - 2));
            body.push_str("\r\n");
        }
        let host = config
            .target
            .rsplit_once(':')
            .map_or(config.target.as_str(), |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let server_name =
            rustls::pki_types::ServerName::try_from(host.to_string()).unwrap_or_else(|_| {
                rustls::pki_types::ServerName::try_from("localhost").expect("valid name")
            });
        let tls = match &config.transport {
            Transport::Smtp(o) if o.starttls => Some(tls_connector()?),
            _ => None,
        };
        let auth_header = match &config.transport {
            Transport::Http(HttpOptions {
                basic_auth: Some((user, pass)),
                ..
            }) => Some(format!(
                "Authorization: Basic {}\r\n",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
            )),
            _ => None,
        };
        Ok(Self {
            body,
            tls,
            server_name,
            auth_header,
        })
    }
}

/// A TLS client that accepts any certificate: the bench measures a server
/// under load, usually with a self-signed test certificate, and must not
/// fail on it. Signatures are still checked, so the handshake is real.
fn tls_connector() -> Result<tokio_rustls::TlsConnector> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One SMTP reply: the code and the text of its last line.
#[derive(Debug)]
struct Reply {
    code: u16,
    text: String,
}

/// Why a connection ended.
enum ConnEnd {
    /// The run is over.
    Done,
    /// Open a new connection and go on (421, per-connection limit, or the
    /// HTTP server closed).
    Reconnect,
}

struct Worker {
    config: Arc<SendConfig>,
    work: Arc<Work>,
    prepared: Arc<Prepared>,
    progress: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
    stats: WorkerStats,
}

impl Worker {
    async fn run(mut self) -> WorkerStats {
        let mut failures = 0;
        while !self.work.finished() {
            let result = match self.config.transport.clone() {
                Transport::Smtp(options) => self.smtp_connection(&options).await,
                Transport::Http(options) => self.http_connection(&options).await,
            };
            match result {
                Ok(ConnEnd::Done) => break,
                Ok(ConnEnd::Reconnect) => failures = 0,
                Err(err) => {
                    self.note_error(format!("{err:#}"));
                    failures += 1;
                    if failures >= MAX_CONSECUTIVE_FAILURES {
                        self.note_error(format!(
                            "a connection gave up after {failures} failures in a row"
                        ));
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50 * failures as u64)).await;
                }
            }
        }
        self.stats
    }

    fn note_error(&self, text: String) {
        let mut errors = self.errors.lock();
        if errors.len() < MAX_ERROR_SAMPLES && !errors.contains(&text) {
            errors.push(text);
        }
    }

    /// Count messages lost to an I/O error in the middle of a connection.
    fn lost(&mut self, messages: u64) {
        self.stats.attempted += messages;
        self.stats.io_errors += messages;
        self.progress.fetch_add(messages, Ordering::Relaxed);
    }

    async fn connect(&mut self) -> Result<TcpStream> {
        let stream =
            tokio::time::timeout(self.config.timeout, TcpStream::connect(&self.config.target))
                .await
                .with_context(|| format!("connecting to {} timed out", self.config.target))?
                .with_context(|| format!("connecting to {}", self.config.target))?;
        stream.set_nodelay(true)?;
        self.stats.connections_opened += 1;
        Ok(stream)
    }

    async fn smtp_connection(&mut self, options: &SmtpOptions) -> Result<ConnEnd> {
        let stream = self.connect().await?;
        let mut reader = BufReader::new(stream);
        let timeout = self.config.timeout;
        let greeting = read_reply(&mut reader, timeout).await?;
        if greeting.code != 220 {
            bail!("greeting was {} {}", greeting.code, greeting.text);
        }
        let mut extensions = ehlo(&mut reader, &options.ehlo_name, timeout).await?;
        if options.starttls {
            if !extensions.iter().any(|e| e == "STARTTLS") {
                bail!("the server does not offer STARTTLS");
            }
            send(&mut reader, b"STARTTLS\r\n", timeout).await?;
            let reply = read_reply(&mut reader, timeout).await?;
            if reply.code != 220 {
                bail!("STARTTLS answered {} {}", reply.code, reply.text);
            }
            let connector = self
                .prepared
                .tls
                .clone()
                .expect("TLS prepared for STARTTLS");
            let tls = tokio::time::timeout(
                timeout,
                connector.connect(self.prepared.server_name.clone(), reader.into_inner()),
            )
            .await
            .context("TLS handshake timed out")?
            .context("TLS handshake")?;
            let mut reader = BufReader::new(tls);
            extensions = ehlo(&mut reader, &options.ehlo_name, timeout).await?;
            let pipelining = options.pipelining && extensions.iter().any(|e| e == "PIPELINING");
            self.smtp_messages(&mut reader, options, pipelining).await
        } else {
            let pipelining = options.pipelining && extensions.iter().any(|e| e == "PIPELINING");
            self.smtp_messages(&mut reader, options, pipelining).await
        }
    }

    async fn smtp_messages<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        reader: &mut BufReader<S>,
        options: &SmtpOptions,
        pipelining: bool,
    ) -> Result<ConnEnd> {
        let timeout = self.config.timeout;
        let mut sent_here = 0u64;
        let mut command = Vec::with_capacity(256);
        loop {
            if options
                .messages_per_connection
                .is_some_and(|limit| sent_here >= limit)
            {
                quit(reader, timeout).await;
                return Ok(ConnEnd::Reconnect);
            }
            let Some(range) = self.work.claim(1).await else {
                quit(reader, timeout).await;
                return Ok(ConnEnd::Done);
            };
            let n = range.start;
            sent_here += 1;
            match self.smtp_message(reader, n, pipelining, &mut command).await {
                Ok(code) => {
                    self.stats.attempted += 1;
                    self.progress.fetch_add(1, Ordering::Relaxed);
                    self.stats.outcome(&code.to_string(), class_of(code), 1);
                    if code == 421 {
                        return Ok(ConnEnd::Reconnect);
                    }
                }
                Err(err) => {
                    self.lost(1);
                    return Err(err);
                }
            }
        }
    }

    /// Send one message; returns the code that decided its outcome.
    async fn smtp_message<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        reader: &mut BufReader<S>,
        n: u64,
        pipelining: bool,
        command: &mut Vec<u8>,
    ) -> Result<u16> {
        let timeout = self.config.timeout;
        let recipient = self.config.recipient(n);
        let started = Instant::now();
        let mail = format!("MAIL FROM:<{}>\r\n", self.config.sender);
        let rcpt = format!("RCPT TO:<{recipient}>\r\n");
        // The outcome is the first refusal, else the reply after the data.
        let outcome = if pipelining {
            command.clear();
            command.extend_from_slice(mail.as_bytes());
            command.extend_from_slice(rcpt.as_bytes());
            command.extend_from_slice(b"DATA\r\n");
            send(reader, command, timeout).await?;
            let mail_reply = read_reply(reader, timeout).await?;
            if mail_reply.code == 421 {
                return Ok(421);
            }
            let rcpt_reply = read_reply(reader, timeout).await?;
            if rcpt_reply.code == 421 {
                return Ok(421);
            }
            let data_reply = read_reply(reader, timeout).await?;
            if data_reply.code == 354 {
                let final_reply = self.send_content(reader, n, &recipient).await?;
                if mail_reply.code >= 400 {
                    mail_reply.code
                } else if rcpt_reply.code >= 400 {
                    rcpt_reply.code
                } else {
                    final_reply.code
                }
            } else {
                let code = [mail_reply.code, rcpt_reply.code, data_reply.code]
                    .into_iter()
                    .find(|c| *c >= 400)
                    .unwrap_or(data_reply.code);
                if code != 421 {
                    reset(reader, timeout).await?;
                }
                code
            }
        } else {
            send(reader, mail.as_bytes(), timeout).await?;
            let mail_reply = read_reply(reader, timeout).await?;
            if mail_reply.code >= 400 {
                if mail_reply.code != 421 {
                    reset(reader, timeout).await?;
                }
                mail_reply.code
            } else {
                send(reader, rcpt.as_bytes(), timeout).await?;
                let rcpt_reply = read_reply(reader, timeout).await?;
                if rcpt_reply.code >= 400 {
                    if rcpt_reply.code != 421 {
                        reset(reader, timeout).await?;
                    }
                    rcpt_reply.code
                } else {
                    send(reader, b"DATA\r\n", timeout).await?;
                    let data_reply = read_reply(reader, timeout).await?;
                    if data_reply.code == 354 {
                        self.send_content(reader, n, &recipient).await?.code
                    } else {
                        if data_reply.code != 421 {
                            reset(reader, timeout).await?;
                        }
                        data_reply.code
                    }
                }
            }
        };
        self.stats.latency(started);
        Ok(outcome)
    }

    async fn send_content<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        reader: &mut BufReader<S>,
        n: u64,
        recipient: &str,
    ) -> Result<Reply> {
        let timeout = self.config.timeout;
        let headers = format!(
            "From: <{}>\r\nTo: <{recipient}>\r\nSubject: Tern bench message {n}\r\nMessage-ID: <{n}.{}@bench.tern.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n",
            self.config.sender,
            std::process::id()
        );
        let stream = reader.get_mut();
        let write = async {
            stream.write_all(headers.as_bytes()).await?;
            stream.write_all(self.prepared.body.as_bytes()).await?;
            stream.write_all(b".\r\n").await?;
            stream.flush().await
        };
        tokio::time::timeout(timeout, write)
            .await
            .context("sending the message timed out")?
            .context("sending the message")?;
        read_reply(reader, timeout).await
    }

    async fn http_connection(&mut self, options: &HttpOptions) -> Result<ConnEnd> {
        let stream = self.connect().await?;
        let mut reader = BufReader::new(stream);
        let timeout = self.config.timeout;
        let mut request = Vec::with_capacity(self.prepared.body.len() + 1024);
        loop {
            let Some(range) = self.work.claim(options.batch_size).await else {
                return Ok(ConnEnd::Done);
            };
            let messages = range.end - range.start;
            let json = self.inject_json(range)?;
            request.clear();
            let _ = std::io::Write::write_fmt(
                &mut request,
                format_args!(
                    "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n",
                    options.path,
                    self.config.target,
                    json.len(),
                    self.prepared.auth_header.as_deref().unwrap_or("")
                ),
            );
            request.extend_from_slice(&json);
            let started = Instant::now();
            let response = async {
                send(&mut reader, &request, timeout).await?;
                read_http_response(&mut reader, timeout).await
            }
            .await;
            let response = match response {
                Ok(r) => r,
                Err(err) => {
                    self.lost(messages);
                    return Err(err);
                }
            };
            self.stats.latency(started);
            self.stats.attempted += messages;
            self.progress.fetch_add(messages, Ordering::Relaxed);
            let code = format!("http {}", response.status);
            if response.status == 200 {
                let parsed: serde_json::Value = serde_json::from_slice(&response.body)
                    .context("the inject response is not JSON")?;
                let success = parsed["success_count"].as_u64().unwrap_or(0).min(messages);
                let failed = messages - success;
                self.stats.outcome(&code, Class::Accepted, success);
                if failed > 0 {
                    self.stats
                        .outcome("http 200 failed_recipients", Class::Perm, failed);
                }
                if let Some(first) = parsed["errors"].as_array().and_then(|e| e.first()) {
                    self.note_error(format!("inject error: {first}"));
                }
            } else {
                let class = if response.status == 503 {
                    Class::Temp
                } else {
                    Class::Perm
                };
                self.stats.outcome(&code, class, messages);
                self.note_error(format!(
                    "HTTP {}: {}",
                    response.status,
                    String::from_utf8_lossy(&response.body[..response.body.len().min(200)])
                ));
            }
            if response.close {
                return Ok(ConnEnd::Reconnect);
            }
        }
    }

    /// The inject request for message numbers `range`: one recipient each,
    /// with its number as the substitution `n` used in the subject.
    fn inject_json(&self, range: Range<u64>) -> Result<Vec<u8>> {
        #[derive(Serialize)]
        struct Substitutions {
            n: u64,
        }
        #[derive(Serialize)]
        struct Recipient {
            email: String,
            substitutions: Substitutions,
        }
        #[derive(Serialize)]
        struct Request<'a> {
            envelope_sender: &'a str,
            content: &'a str,
            recipients: Vec<Recipient>,
        }
        let content = format!(
            "From: <{}>\r\nTo: {{{{ to_header }}}}\r\nSubject: Tern bench message {{{{ n }}}}\r\n\r\n{}",
            self.config.sender, self.prepared.body
        );
        let request = Request {
            envelope_sender: &self.config.sender,
            content: &content,
            recipients: range
                .map(|n| Recipient {
                    email: self.config.recipient(n),
                    substitutions: Substitutions { n },
                })
                .collect(),
        };
        Ok(serde_json::to_vec(&request)?)
    }
}

async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    reader: &mut BufReader<S>,
    bytes: &[u8],
    timeout: Duration,
) -> Result<()> {
    let stream = reader.get_mut();
    tokio::time::timeout(timeout, async {
        stream.write_all(bytes).await?;
        stream.flush().await
    })
    .await
    .context("write timed out")?
    .context("write failed")
}

/// Read one (possibly multi-line) SMTP reply.
async fn read_reply<S: AsyncRead + Unpin>(
    reader: &mut BufReader<S>,
    timeout: Duration,
) -> Result<Reply> {
    let mut line = String::new();
    loop {
        line.clear();
        let n = tokio::time::timeout(timeout, (&mut *reader).take(8192).read_line(&mut line))
            .await
            .context("timed out waiting for a reply")?
            .context("reading a reply")?;
        if n == 0 {
            bail!("the server closed the connection");
        }
        let trimmed = line.trim_end();
        let code: u16 = trimmed
            .get(..3)
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("malformed reply line {trimmed:?}"))?;
        match trimmed.as_bytes().get(3) {
            Some(b'-') => continue,
            None | Some(b' ') => {
                return Ok(Reply {
                    code,
                    text: trimmed.get(4..).unwrap_or("").to_string(),
                });
            }
            Some(_) => bail!("malformed reply line {trimmed:?}"),
        }
    }
}

/// EHLO; returns the advertised extension keywords, upper-cased.
async fn ehlo<S: AsyncRead + AsyncWrite + Unpin>(
    reader: &mut BufReader<S>,
    name: &str,
    timeout: Duration,
) -> Result<Vec<String>> {
    send(reader, format!("EHLO {name}\r\n").as_bytes(), timeout).await?;
    let mut extensions = Vec::new();
    let mut line = String::new();
    let mut first = true;
    loop {
        line.clear();
        let n = tokio::time::timeout(timeout, (&mut *reader).take(8192).read_line(&mut line))
            .await
            .context("timed out waiting for the EHLO reply")??;
        if n == 0 {
            bail!("the server closed the connection after EHLO");
        }
        let trimmed = line.trim_end();
        if !trimmed.starts_with("250") {
            bail!("EHLO answered {trimmed:?}");
        }
        if !first {
            let keyword = trimmed.get(4..).unwrap_or("");
            extensions.push(
                keyword
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_ascii_uppercase(),
            );
        }
        first = false;
        if trimmed.as_bytes().get(3) != Some(&b'-') {
            return Ok(extensions);
        }
    }
}

async fn reset<S: AsyncRead + AsyncWrite + Unpin>(
    reader: &mut BufReader<S>,
    timeout: Duration,
) -> Result<()> {
    send(reader, b"RSET\r\n", timeout).await?;
    read_reply(reader, timeout).await?;
    Ok(())
}

/// Polite QUIT; errors are irrelevant at this point.
async fn quit<S: AsyncRead + AsyncWrite + Unpin>(reader: &mut BufReader<S>, timeout: Duration) {
    if send(reader, b"QUIT\r\n", timeout).await.is_ok() {
        let _ = read_reply(reader, timeout).await;
    }
}

struct HttpResponse {
    status: u16,
    body: Vec<u8>,
    /// The server will close the connection after this response.
    close: bool,
}

/// Read an HTTP/1.1 response with a Content-Length or chunked body.
async fn read_http_response<S: AsyncRead + Unpin>(
    reader: &mut BufReader<S>,
    timeout: Duration,
) -> Result<HttpResponse> {
    tokio::time::timeout(timeout, async {
        let mut line = String::new();
        reader.take(8192).read_line(&mut line).await?;
        if line.is_empty() {
            bail!("the HTTP server closed the connection");
        }
        let mut parts = line.split_whitespace();
        let version = parts.next().unwrap_or("");
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("malformed HTTP status line {line:?}"))?;
        let mut close = version == "HTTP/1.0";
        let mut length: Option<usize> = None;
        let mut chunked = false;
        loop {
            line.clear();
            reader.take(8192).read_line(&mut line).await?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let Some((name, value)) = header.split_once(':') else {
                bail!("malformed HTTP header {header:?}");
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(value.parse().context("bad Content-Length")?);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.to_ascii_lowercase().contains("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                reader.take(1024).read_line(&mut line).await?;
                let size_text = line.trim().split(';').next().unwrap_or("");
                let size = usize::from_str_radix(size_text, 16)
                    .with_context(|| format!("bad chunk size {size_text:?}"))?;
                if size == 0 {
                    // Trailers, then the blank line.
                    loop {
                        line.clear();
                        reader.take(8192).read_line(&mut line).await?;
                        if line.trim().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                let start = body.len();
                body.resize(start + size, 0);
                reader.read_exact(&mut body[start..]).await?;
                line.clear();
                reader.take(2).read_line(&mut line).await?;
            }
        } else if let Some(length) = length {
            body.resize(length, 0);
            reader.read_exact(&mut body).await?;
        } else {
            reader.read_to_end(&mut body).await?;
            close = true;
        }
        Ok(HttpResponse {
            status,
            body,
            close,
        })
    })
    .await
    .context("timed out waiting for the HTTP response")?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_spread_over_domains() {
        let config = SendConfig {
            domain_count: 3,
            recipient_domain: "spread.test".into(),
            ..SendConfig::default()
        };
        assert_eq!(config.recipient(0), "user0@d0.spread.test");
        assert_eq!(config.recipient(4), "user4@d1.spread.test");
        let one = SendConfig {
            recipient_local: "tempfail".into(),
            ..SendConfig::default()
        };
        assert_eq!(one.recipient(7), "tempfail@example.test");
    }

    #[test]
    fn config_without_an_end_is_refused() {
        let err = SendConfig::default().validate().unwrap_err();
        assert!(err.to_string().contains("count or a duration"));
        let bad = SendConfig {
            count: Some(1),
            sender: "a b@c".into(),
            ..SendConfig::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn body_has_the_requested_size_and_no_leading_dots() {
        let config = SendConfig {
            message_size: 10_000,
            count: Some(1),
            ..SendConfig::default()
        };
        let prepared = Prepared::new(&config).unwrap();
        assert_eq!(prepared.body.len(), 9_800);
        assert!(prepared.body.ends_with("\r\n"));
        assert!(!prepared.body.contains("\n."));
    }

    #[tokio::test]
    async fn replies_are_read_whole() {
        let data: &[u8] = b"250-first\r\n250-second\r\n250 last\r\n421 bye\r\n";
        let mut reader = BufReader::new(data);
        let reply = read_reply(&mut reader, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!((reply.code, reply.text.as_str()), (250, "last"));
        assert_eq!(
            read_reply(&mut reader, Duration::from_secs(1))
                .await
                .unwrap()
                .code,
            421
        );
        assert!(
            read_reply(&mut reader, Duration::from_secs(1))
                .await
                .is_err()
        );
        let mut junk = BufReader::new(&b"hello\r\n"[..]);
        assert!(read_reply(&mut junk, Duration::from_secs(1)).await.is_err());
    }

    #[tokio::test]
    async fn chunked_http_responses_are_decoded() {
        let data: &[u8] =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n";
        let mut reader = BufReader::new(data);
        let response = read_http_response(&mut reader, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.body, b"{\"a\":1}");
        assert!(!response.close);
    }

    #[tokio::test]
    async fn the_rate_cap_paces_claims() {
        let work = Work {
            next: AtomicU64::new(0),
            count: Some(11),
            deadline: None,
            pacer: Some(Pacer {
                interval: Duration::from_millis(20),
                next_slot: Mutex::new(Instant::now()),
            }),
        };
        let started = Instant::now();
        let mut claimed = 0;
        while let Some(range) = work.claim(1).await {
            claimed += range.end - range.start;
        }
        assert_eq!(claimed, 11);
        // Eleven slots at 20 ms: the last one is 200 ms after the first.
        assert!(
            started.elapsed() >= Duration::from_millis(190),
            "{:?}",
            started.elapsed()
        );
    }
}
