//! The async SMTP client (spec §11.2, §11.3): one [`SmtpConnection`] per
//! outbound session.
//!
//! [`SmtpConnection::connect`] walks a [`ConnectionPlan`]: bind the source
//! address, connect, read the banner, EHLO (HELO when EHLO is refused),
//! STARTTLS as `enable_tls` says, EHLO again, AUTH PLAIN when configured.
//! [`SmtpConnection::send`] runs one transaction and returns a result per
//! recipient; the queue runtime calls it up to `max_deliveries_per_connection`
//! times and then [`SmtpConnection::quit`].
//!
//! The protocol details (reply parsing, command lines, dot-stuffing,
//! classification) come from `tern_smtp::client`; this module adds the
//! socket, the timeouts and the order of commands. Buffers are per
//! connection and reused: one `BytesMut` for replies, one `Vec` for command
//! batches (a pipelined MAIL/RCPT/DATA group goes out in one write), one
//! `Vec` for the dot-stuffed message.

use crate::plan::{ConnectionPlan, PlannedHost};
use crate::response::DeliveryResponse;
use crate::tls::{self, TlsInfo};
use bytes::BytesMut;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tern_queue::config::{EgressPathConfig, EgressSource, Tls};
use tern_smtp::client::{
    DATA_DOT_LINE, DATA_LINE, EhloCapabilities, Outcome, QUIT_LINE, RSET_LINE, ReplyReader,
    STARTTLS_LINE, auth_plain_line, classify, dot_stuff_into, ehlo_line, helo_line,
    is_too_many_recipients, mail_from_line, needs_8bitmime, needs_smtputf8, rcpt_to_line,
};
use tern_smtp::{EnhancedCode, Reply};
use tern_types::EnvelopeAddress;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

/// The text KumoMTA logs when 8-bit content meets a peer without 8BITMIME.
pub const EIGHT_BIT_DATA_TEXT: &str = "KumoMTA internal: DATA is 8bit, destination does not support 8BITMIME. Conversion via msg:check_fix_conformance during reception is required";
/// The text KumoMTA logs when a UTF-8 envelope meets a peer without SMTPUTF8.
pub const EIGHT_BIT_ENVELOPE_TEXT: &str =
    "KumoMTA internal: envelope is 8bit, destination does not support SMTPUTF8.";

/// What a connection needs to know about its path and source.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    pub path: Arc<EgressPathConfig>,
    pub source: Arc<EgressSource>,
    /// The machine's host name, the EHLO name when neither the path nor the
    /// source names one.
    pub hostname: String,
}

impl ClientSettings {
    /// `path.ehlo_domain`, else `source.ehlo_domain`, else the host name.
    pub fn ehlo_name(&self) -> &str {
        self.path
            .ehlo_domain
            .as_deref()
            .or(self.source.ehlo_domain.as_deref())
            .unwrap_or(&self.hostname)
    }
}

/// The outcome for one recipient of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecipientResult {
    pub outcome: Outcome,
    pub response: DeliveryResponse,
    /// "Too many recipients" (452 or 552 to a RCPT that was not the first of
    /// the batch): retry this recipient at once in another transaction on
    /// the same connection, without logging. `outcome` is `Transient`.
    pub too_many: bool,
}

impl RecipientResult {
    fn from_reply(reply: &Reply, command: &str) -> Self {
        Self {
            outcome: classify(reply),
            response: DeliveryResponse::from_reply(reply, Some(command)),
            too_many: false,
        }
    }
}

/// Which step of connection set-up failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectStage {
    Bind,
    /// `bind()` failed because the source address is not configured on
    /// this host (EADDRNOTAVAIL): what `suspend_when_unplumbed` watches.
    Unplumbed,
    Connect,
    Banner,
    Ehlo,
    StartTls,
    TlsHandshake,
    Auth,
}

impl std::fmt::Display for ConnectStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConnectStage::Bind => "bind source address",
            ConnectStage::Unplumbed => "bind source address (not configured on this host)",
            ConnectStage::Connect => "connect",
            ConnectStage::Banner => "read initial banner",
            ConnectStage::Ehlo => "EHLO",
            ConnectStage::StartTls => "STARTTLS",
            ConnectStage::TlsHandshake => "TLS handshake",
            ConnectStage::Auth => "AUTH PLAIN",
        })
    }
}

/// Why one host of the plan could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFailure {
    pub host: PlannedHost,
    pub stage: ConnectStage,
    /// The peer's reply when the failure was a refusal (banner, EHLO,
    /// STARTTLS, AUTH), for the log.
    pub reply: Option<DeliveryResponse>,
    pub detail: String,
}

impl std::fmt::Display for HostFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.host, self.stage, self.detail)
    }
}

/// No host of the plan gave a usable session.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// `start` was at or beyond the end of the plan.
    #[error("no hosts left to try in the connection plan")]
    NoHosts,
    /// Every host tried failed; the last one is last in the list.
    #[error("failed to connect to any candidate hosts: {}", summary(.failures))]
    AllFailed { failures: Vec<HostFailure> },
}

fn summary(failures: &[HostFailure]) -> String {
    let parts: Vec<String> = failures.iter().map(ToString::to_string).collect();
    parts.join("; ")
}

impl ConnectError {
    /// `400 KumoMTA internal: failed to connect to any candidate hosts: ...`
    pub fn response(&self) -> DeliveryResponse {
        DeliveryResponse::internal(400, None, format!("KumoMTA internal: {self}"))
    }

    /// The failure of the last host tried.
    /// True when a bind failed because the source address is not on this
    /// host (the trigger of `suspend_when_unplumbed`).
    pub fn source_unplumbed(&self) -> bool {
        match self {
            ConnectError::AllFailed { failures } => {
                failures.iter().any(|f| f.stage == ConnectStage::Unplumbed)
            }
            _ => false,
        }
    }

    pub fn last(&self) -> Option<&HostFailure> {
        match self {
            ConnectError::NoHosts => None,
            ConnectError::AllFailed { failures } => failures.last(),
        }
    }

    /// Connection failures are always transient.
    pub fn is_permanent(&self) -> bool {
        false
    }

    /// True when no host answered at all (refused, unreachable, timed out
    /// before the banner): what `consecutive_connection_failures_before_delay`
    /// counts.
    pub fn no_answer_from_any_host(&self) -> bool {
        match self {
            ConnectError::NoHosts => true,
            ConnectError::AllFailed { failures } => failures.iter().all(|f| {
                matches!(
                    f.stage,
                    ConnectStage::Bind | ConnectStage::Unplumbed | ConnectStage::Connect
                )
            }),
        }
    }
}

/// A failure that ends a transaction (and, except for the 8-bit checks,
/// the connection).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// Reading or writing failed, or the peer closed the connection.
    #[error("{response}")]
    Io { response: DeliveryResponse },
    /// No reply (or no progress writing) within the command's timeout.
    #[error("{response}")]
    Timeout { response: DeliveryResponse },
    /// The peer's reply could not be parsed, or was not one the protocol
    /// allows here.
    #[error("{response}")]
    Protocol { response: DeliveryResponse },
    /// A 421 reply: the server is closing the session. `results` has one
    /// entry per recipient: replies already given stand (a 5xx RCPT still
    /// bounces), everything else is transient with the 421.
    #[error("{response}")]
    ServiceClosing {
        response: DeliveryResponse,
        results: Vec<RecipientResult>,
    },
    /// 8-bit content, peer without 8BITMIME (`554 5.6.3`, a bounce).
    /// Nothing was sent; the connection stays usable.
    #[error("554 5.6.3 {EIGHT_BIT_DATA_TEXT}")]
    EightBitData,
    /// UTF-8 envelope, peer without SMTPUTF8 (`554 5.6.7`, a bounce).
    /// Nothing was sent; the connection stays usable.
    #[error("554 5.6.7 {EIGHT_BIT_ENVELOPE_TEXT}")]
    EightBitEnvelope,
    /// `send` on a connection that already failed.
    #[error("the connection is no longer usable")]
    NotUsable,
}

impl TransportError {
    /// The response to log for every recipient without an entry in
    /// [`Self::recipient_results`].
    pub fn response(&self) -> DeliveryResponse {
        match self {
            TransportError::Io { response }
            | TransportError::Timeout { response }
            | TransportError::Protocol { response }
            | TransportError::ServiceClosing { response, .. } => response.clone(),
            TransportError::EightBitData => DeliveryResponse::internal(
                554,
                Some(EnhancedCode::new(5, 6, 3)),
                EIGHT_BIT_DATA_TEXT,
            ),
            TransportError::EightBitEnvelope => DeliveryResponse::internal(
                554,
                Some(EnhancedCode::new(5, 6, 7)),
                EIGHT_BIT_ENVELOPE_TEXT,
            ),
            TransportError::NotUsable => DeliveryResponse::internal(
                400,
                None,
                "KumoMTA internal: the connection is no longer usable",
            ),
        }
    }

    /// The 8-bit bounces; everything else is transient.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            TransportError::EightBitData | TransportError::EightBitEnvelope
        )
    }

    /// Per-recipient results when the failure has them (a 421 in the middle
    /// of a transaction); empty otherwise.
    pub fn recipient_results(&self) -> &[RecipientResult] {
        match self {
            TransportError::ServiceClosing { results, .. } => results,
            _ => &[],
        }
    }
}

/// Plain TCP before STARTTLS, TLS after.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Only while the plain stream is inside the TLS handshake; a failed
    /// handshake leaves it here and the connection is dropped.
    Detached,
}

impl Stream {
    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Plain(stream) => stream.write_all(bytes).await,
            Stream::Tls(stream) => {
                stream.write_all(bytes).await?;
                stream.flush().await
            }
            Stream::Detached => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }

    async fn read_buf(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        match self {
            Stream::Plain(stream) => stream.read_buf(buf).await,
            Stream::Tls(stream) => stream.read_buf(buf).await,
            Stream::Detached => Ok(0),
        }
    }

    async fn shutdown(&mut self) {
        let _ = match self {
            Stream::Plain(stream) => stream.shutdown().await,
            Stream::Tls(stream) => stream.shutdown().await,
            Stream::Detached => Ok(()),
        };
    }
}

/// The low-level reasons a read or write can fail, before they are turned
/// into a connect failure or a transport error.
enum IoFailure {
    Io(std::io::Error),
    Closed,
    Timeout(Duration),
    Parse(String),
}

impl std::fmt::Display for IoFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IoFailure::Io(err) => write!(f, "{err}"),
            IoFailure::Closed => f.write_str("Connection closed by peer"),
            IoFailure::Timeout(after) => write!(f, "Timed Out after {after:?}"),
            IoFailure::Parse(err) => write!(f, "{err}"),
        }
    }
}

/// One SMTP session to one host.
pub struct SmtpConnection {
    stream: Stream,
    settings: ClientSettings,
    peer: PlannedHost,
    local: Option<SocketAddr>,
    tls: Option<TlsInfo>,
    /// The certificate was verified (verifying TLS modes only).
    tls_verified: bool,
    caps: EhloCapabilities,
    reader: ReplyReader,
    read_buf: BytesMut,
    /// Command lines of the current batch.
    commands: Vec<u8>,
    /// The dot-stuffed message, reused between transactions.
    data: Vec<u8>,
    transactions: usize,
    usable: bool,
}

impl std::fmt::Debug for SmtpConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpConnection")
            .field("peer", &self.peer)
            .field("local", &self.local)
            .field("tls", &self.tls)
            .field("transactions", &self.transactions)
            .field("usable", &self.usable)
            .finish_non_exhaustive()
    }
}

/// The set-up of one host failed at `stage`.
fn host_failure(
    host: &PlannedHost,
    stage: ConnectStage,
    reply: Option<&Reply>,
    detail: impl Into<String>,
) -> HostFailure {
    HostFailure {
        host: host.clone(),
        stage,
        reply: reply.map(|r| DeliveryResponse::from_reply(r, None)),
        detail: detail.into(),
    }
}

impl SmtpConnection {
    /// Walk `plan.hosts[start..]` until one host gives a ready session.
    /// Returns the connection and the index of that host, or every failure.
    pub async fn connect(
        plan: &ConnectionPlan,
        start: usize,
        settings: &ClientSettings,
    ) -> Result<(SmtpConnection, usize), ConnectError> {
        let hosts = plan.hosts.get(start..).unwrap_or_default();
        if hosts.is_empty() {
            return Err(ConnectError::NoHosts);
        }
        let mut failures = Vec::new();
        for (offset, host) in hosts.iter().enumerate() {
            let index = start + offset;
            match Self::connect_host(host, settings, true).await {
                Ok(conn) => return Ok((conn, index)),
                Err(failure) => {
                    let retry_clear = failure.stage == ConnectStage::TlsHandshake
                        && settings
                            .path
                            .opportunistic_tls_reconnect_on_failed_handshake
                        && !settings.path.enable_tls.is_required();
                    tracing::debug!("delivery: {failure}");
                    failures.push(failure);
                    if retry_clear {
                        match Self::connect_host(host, settings, false).await {
                            Ok(conn) => return Ok((conn, index)),
                            Err(failure) => failures.push(failure),
                        }
                    }
                }
            }
        }
        Err(ConnectError::AllFailed { failures })
    }

    async fn connect_host(
        host: &PlannedHost,
        settings: &ClientSettings,
        allow_tls: bool,
    ) -> Result<SmtpConnection, HostFailure> {
        let path = &settings.path;
        let socket = match host.addr {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(|err| host_failure(host, ConnectStage::Connect, None, err.to_string()))?;
        if let Some(source_ip) = settings.source.source_address {
            socket.bind(SocketAddr::new(source_ip, 0)).map_err(|err| {
                let stage = if err.kind() == std::io::ErrorKind::AddrNotAvailable {
                    ConnectStage::Unplumbed
                } else {
                    ConnectStage::Bind
                };
                host_failure(
                    host,
                    stage,
                    None,
                    format!(
                        "bind {source_ip} for source {} failed: {err}",
                        settings.source.name
                    ),
                )
            })?;
        }
        let stream =
            match tokio::time::timeout(path.connect_timeout, socket.connect(host.addr)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(err)) => {
                    return Err(host_failure(
                        host,
                        ConnectStage::Connect,
                        None,
                        err.to_string(),
                    ));
                }
                Err(_) => {
                    return Err(host_failure(
                        host,
                        ConnectStage::Connect,
                        None,
                        format!("Timed Out after {:?}", path.connect_timeout),
                    ));
                }
            };
        // Without NODELAY, small pipelined writes wait for delayed ACKs.
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().ok();
        let mut conn = SmtpConnection {
            stream: Stream::Plain(stream),
            settings: settings.clone(),
            peer: host.clone(),
            local,
            tls: None,
            tls_verified: false,
            caps: EhloCapabilities::default(),
            reader: ReplyReader::default(),
            read_buf: BytesMut::with_capacity(4096),
            commands: Vec::with_capacity(1024),
            data: Vec::new(),
            transactions: 0,
            usable: true,
        };
        conn.handshake(allow_tls).await?;
        Ok(conn)
    }

    /// Banner, EHLO, STARTTLS, EHLO again, AUTH.
    async fn handshake(&mut self, allow_tls: bool) -> Result<(), HostFailure> {
        let path = self.settings.path.clone();
        let banner = self
            .read_reply(path.banner_timeout)
            .await
            .map_err(|err| self.failure(ConnectStage::Banner, None, err.to_string()))?;
        if banner.code != 220 {
            return Err(self.failure(
                ConnectStage::Banner,
                Some(&banner),
                format!("unexpected banner {}", banner.to_single_line()),
            ));
        }
        self.ehlo().await?;

        let mode = if allow_tls {
            path.enable_tls
        } else {
            Tls::Disabled
        };
        if mode.attempts_starttls() {
            if self.caps.starttls {
                self.starttls(mode).await?;
            } else if mode.is_required() {
                return Err(self.failure(
                    ConnectStage::StartTls,
                    None,
                    format!("enable_tls is {mode:?} but the server does not offer STARTTLS"),
                ));
            }
        }
        if let Some(username) = path.smtp_auth_plain_username.clone() {
            self.auth_plain(&username).await?;
        }
        Ok(())
    }

    fn failure(&self, stage: ConnectStage, reply: Option<&Reply>, detail: String) -> HostFailure {
        host_failure(&self.peer, stage, reply, detail)
    }

    async fn ehlo(&mut self) -> Result<(), HostFailure> {
        let timeout = self.settings.path.ehlo_timeout;
        let line = ehlo_line(self.settings.ehlo_name());
        let reply = self
            .command(&line, timeout)
            .await
            .map_err(|err| self.failure(ConnectStage::Ehlo, None, err.to_string()))?;
        if reply.is_positive() {
            self.caps = EhloCapabilities::from_reply(&reply);
            return Ok(());
        }
        if !reply.is_permanent() {
            return Err(self.failure(
                ConnectStage::Ehlo,
                Some(&reply),
                format!("EHLO refused: {}", reply.to_single_line()),
            ));
        }
        // An old server that does not know EHLO: HELO, and no extensions.
        let line = helo_line(self.settings.ehlo_name());
        let reply = self
            .command(&line, timeout)
            .await
            .map_err(|err| self.failure(ConnectStage::Ehlo, None, err.to_string()))?;
        if !reply.is_positive() {
            return Err(self.failure(
                ConnectStage::Ehlo,
                Some(&reply),
                format!("HELO refused: {}", reply.to_single_line()),
            ));
        }
        self.caps = EhloCapabilities::default();
        Ok(())
    }

    async fn starttls(&mut self, mode: Tls) -> Result<(), HostFailure> {
        let path = self.settings.path.clone();
        let reply = self
            .command(STARTTLS_LINE, path.starttls_timeout)
            .await
            .map_err(|err| self.failure(ConnectStage::StartTls, None, err.to_string()))?;
        if reply.code != 220 {
            if mode.is_required() {
                return Err(self.failure(
                    ConnectStage::StartTls,
                    Some(&reply),
                    format!("STARTTLS refused: {}", reply.to_single_line()),
                ));
            }
            // Opportunistic: the server withdrew the offer; carry on in clear.
            return Ok(());
        }
        let verify = mode.verifies_certificate();
        let config = tls::client_config(&path, verify)
            .map_err(|err| self.failure(ConnectStage::TlsHandshake, None, err))?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let server_name = tls::server_name(&self.peer);
        let plain = match std::mem::replace(&mut self.stream, Stream::Detached) {
            Stream::Plain(stream) => stream,
            Stream::Tls(_) | Stream::Detached => {
                return Err(self.failure(
                    ConnectStage::StartTls,
                    None,
                    "TLS is already active".to_string(),
                ));
            }
        };
        let handshake = tokio::time::timeout(
            path.tls_handshake_timeout,
            connector.connect(server_name, plain),
        )
        .await;
        let stream = match handshake {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => {
                return Err(self.failure(
                    ConnectStage::TlsHandshake,
                    None,
                    format!("{mode:?} STARTTLS handshake failed: {err}"),
                ));
            }
            Err(_) => {
                return Err(self.failure(
                    ConnectStage::TlsHandshake,
                    None,
                    format!(
                        "{mode:?} STARTTLS handshake Timed Out after {:?}",
                        path.tls_handshake_timeout
                    ),
                ));
            }
        };
        self.tls = Some(TlsInfo::from_connection(stream.get_ref().1));
        self.tls_verified = verify;
        self.stream = Stream::Tls(Box::new(stream));
        // Anything read before the handshake must not be trusted.
        self.reader.reset();
        self.read_buf.clear();
        self.caps = EhloCapabilities::default();
        self.ehlo().await
    }

    async fn auth_plain(&mut self, username: &str) -> Result<(), HostFailure> {
        let path = self.settings.path.clone();
        if self.tls.is_none() && !path.allow_smtp_auth_plain_without_tls {
            return Err(self.failure(
                ConnectStage::Auth,
                None,
                "refusing AUTH PLAIN over a connection without TLS \
                 (set allow_smtp_auth_plain_without_tls to permit it)"
                    .to_string(),
            ));
        }
        if self.tls.is_some()
            && !self.tls_verified
            && !path.allow_smtp_auth_plain_without_valid_certificate
        {
            return Err(self.failure(
                ConnectStage::Auth,
                None,
                "refusing AUTH PLAIN: the server certificate was not verified \
                 (set allow_smtp_auth_plain_without_valid_certificate to permit it)"
                    .to_string(),
            ));
        }
        let password = match &path.smtp_auth_plain_password {
            Some(source) => {
                let bytes = source
                    .load()
                    .map_err(|err| self.failure(ConnectStage::Auth, None, err))?;
                String::from_utf8(bytes).map_err(|_| {
                    self.failure(
                        ConnectStage::Auth,
                        None,
                        "smtp_auth_plain_password is not valid UTF-8".to_string(),
                    )
                })?
            }
            None => String::new(),
        };
        let line = auth_plain_line("", username, password.trim_end_matches(['\r', '\n']));
        let reply = self
            .command(&line, path.auth_timeout)
            .await
            .map_err(|err| self.failure(ConnectStage::Auth, None, err.to_string()))?;
        if reply.code != 235 {
            return Err(self.failure(
                ConnectStage::Auth,
                Some(&reply),
                format!("AUTH PLAIN refused: {}", reply.to_single_line()),
            ));
        }
        Ok(())
    }

    /// Write one command line and read its reply.
    async fn command(&mut self, line: &str, timeout: Duration) -> Result<Reply, IoFailure> {
        self.write(line.as_bytes(), timeout).await?;
        self.read_reply(timeout).await
    }

    async fn write(&mut self, bytes: &[u8], timeout: Duration) -> Result<(), IoFailure> {
        match tokio::time::timeout(timeout, self.stream.write_all(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(IoFailure::Io(err)),
            Err(_) => Err(IoFailure::Timeout(timeout)),
        }
    }

    /// Write the pending command batch in one go.
    async fn flush_commands(&mut self, timeout: Duration) -> Result<(), IoFailure> {
        let batch = std::mem::take(&mut self.commands);
        let result = self.write(&batch, timeout).await;
        self.commands = batch;
        self.commands.clear();
        result
    }

    async fn read_reply(&mut self, timeout: Duration) -> Result<Reply, IoFailure> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(result) = self.reader.next_reply(&mut self.read_buf) {
                return result.map_err(|err| IoFailure::Parse(err.to_string()));
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.read_buf)).await
            {
                Ok(Ok(0)) => return Err(IoFailure::Closed),
                Ok(Ok(_)) => {}
                Ok(Err(err)) => return Err(IoFailure::Io(err)),
                Err(_) => return Err(IoFailure::Timeout(timeout)),
            }
        }
    }

    /// Turn a low-level failure during `command` into a transport error,
    /// and mark the connection unusable.
    fn transport_error(&mut self, failure: IoFailure, command: &str) -> TransportError {
        self.usable = false;
        let what = command.trim_end();
        let prefix = format!("KumoMTA internal: failed to send message to {}", self.peer);
        let text = match &failure {
            IoFailure::Timeout(after) => {
                format!("{prefix}: Timed Out waiting {after:?} for response to cmd={what}")
            }
            IoFailure::Closed => {
                format!("{prefix}: Connection closed by peer reading response to cmd={what}")
            }
            IoFailure::Io(err) => format!("{prefix}: {err} during cmd={what}"),
            IoFailure::Parse(err) => format!("{prefix}: {err} in response to cmd={what}"),
        };
        let response = DeliveryResponse::internal(400, None, text);
        match failure {
            IoFailure::Timeout(_) => TransportError::Timeout { response },
            IoFailure::Parse(_) => TransportError::Protocol { response },
            IoFailure::Io(_) | IoFailure::Closed => TransportError::Io { response },
        }
    }

    /// A 421: the session is over. Recipients with an answer keep it,
    /// accepted and unanswered ones become transient with the 421.
    fn service_closing(
        &mut self,
        reply: &Reply,
        command: &str,
        answered: Vec<Option<RecipientResult>>,
    ) -> TransportError {
        self.usable = false;
        let response = DeliveryResponse::from_reply(reply, Some(command));
        let closing = RecipientResult {
            outcome: Outcome::Transient,
            response: response.clone(),
            too_many: false,
        };
        let results = answered
            .into_iter()
            .map(|result| match result {
                Some(result) if result.outcome != Outcome::Delivered => result,
                _ => closing.clone(),
            })
            .collect();
        TransportError::ServiceClosing { response, results }
    }

    /// Run one mail transaction. See the module docs for the order of
    /// commands; the result has one entry per recipient, in order.
    pub async fn send(
        &mut self,
        sender: &EnvelopeAddress,
        recipients: &[EnvelopeAddress],
        data: &[u8],
    ) -> Result<Vec<RecipientResult>, TransportError> {
        if !self.usable {
            return Err(TransportError::NotUsable);
        }
        let path = self.settings.path.clone();
        let eight_bit = needs_8bitmime(data);
        let utf8_envelope = needs_smtputf8(std::iter::once(sender).chain(recipients));
        if !path.ignore_8bit_checks {
            if utf8_envelope && !self.caps.smtp_utf8 {
                return Err(TransportError::EightBitEnvelope);
            }
            if eight_bit && !self.caps.eight_bit_mime {
                return Err(TransportError::EightBitData);
            }
        }

        if self.transactions > 0 && path.enable_rset {
            let reply = match self.command(RSET_LINE, path.rset_timeout).await {
                Ok(reply) => reply,
                Err(failure) => return Err(self.transport_error(failure, RSET_LINE)),
            };
            if reply.code == 421 {
                return Err(self.service_closing(&reply, RSET_LINE, vec![None; recipients.len()]));
            }
            if !reply.is_positive() {
                self.usable = false;
                return Err(TransportError::Protocol {
                    response: DeliveryResponse::from_reply(&reply, Some(RSET_LINE)),
                });
            }
        }
        self.transactions += 1;

        let mail_line = mail_from_line(
            sender,
            eight_bit && self.caps.eight_bit_mime,
            utf8_envelope && self.caps.smtp_utf8,
        );
        let rcpt_lines: Vec<String> = recipients.iter().map(rcpt_to_line).collect();
        let pipelining = self.caps.pipelining && path.enable_pipelining;
        let mut results: Vec<Option<RecipientResult>> = vec![None; recipients.len()];

        // MAIL FROM (with RCPTs and DATA when pipelining).
        self.commands.clear();
        self.commands.extend_from_slice(mail_line.as_bytes());
        if pipelining {
            for line in &rcpt_lines {
                self.commands.extend_from_slice(line.as_bytes());
            }
            self.commands.extend_from_slice(DATA_LINE.as_bytes());
        }
        if let Err(failure) = self.flush_commands(path.mail_from_timeout).await {
            return Err(self.transport_error(failure, &mail_line));
        }
        let mail_reply = match self.read_reply(path.mail_from_timeout).await {
            Ok(reply) => reply,
            Err(failure) => return Err(self.transport_error(failure, &mail_line)),
        };
        if mail_reply.code == 421 {
            return Err(self.service_closing(&mail_reply, &mail_line, results));
        }
        let mail_ok = mail_reply.is_positive();

        // RCPT TO replies.
        let mut accepted = 0usize;
        for (index, line) in rcpt_lines.iter().enumerate() {
            if !pipelining {
                if !mail_ok {
                    break;
                }
                if let Err(failure) = self.write(line.as_bytes(), path.rcpt_to_timeout).await {
                    return Err(self.transport_error(failure, line));
                }
            }
            let reply = match self.read_reply(path.rcpt_to_timeout).await {
                Ok(reply) => reply,
                Err(failure) => return Err(self.transport_error(failure, line)),
            };
            if reply.code == 421 {
                return Err(self.service_closing(&reply, line, results));
            }
            let mut result = RecipientResult::from_reply(&reply, line);
            if result.outcome == Outcome::Delivered {
                accepted += 1;
            } else if index > 0 && is_too_many_recipients(&reply, true) {
                result.outcome = Outcome::Transient;
                result.too_many = true;
            }
            results[index] = Some(result);
        }

        if !mail_ok {
            // Every recipient shares the MAIL FROM refusal. With pipelining
            // the DATA reply (a 503, normally) is still on its way.
            if pipelining && let Err(failure) = self.drain_data_reply(&path).await {
                return Err(self.transport_error(failure, DATA_LINE));
            }
            let shared = RecipientResult::from_reply(&mail_reply, &mail_line);
            return Ok(vec![shared; recipients.len()]);
        }

        // DATA.
        if !pipelining {
            if accepted == 0 {
                return Ok(results.into_iter().flatten().collect());
            }
            if let Err(failure) = self.write(DATA_LINE.as_bytes(), path.data_timeout).await {
                return Err(self.transport_error(failure, DATA_LINE));
            }
        }
        let data_reply = match self.read_reply(path.data_timeout).await {
            Ok(reply) => reply,
            Err(failure) => return Err(self.transport_error(failure, DATA_LINE)),
        };
        if data_reply.code == 421 {
            return Err(self.service_closing(&data_reply, DATA_LINE, results));
        }
        if data_reply.code != 354 {
            if accepted > 0 {
                // The refusal of DATA applies to the accepted recipients.
                let refused = RecipientResult::from_reply(&data_reply, DATA_LINE);
                for result in results.iter_mut().flatten() {
                    if result.outcome == Outcome::Delivered {
                        *result = refused.clone();
                    }
                }
            }
            // With no recipient accepted, the RCPT replies decide.
            return Ok(results.into_iter().flatten().collect());
        }
        if accepted == 0 {
            // The server wants data although it accepted nobody: end the
            // (empty) message so the session stays in step, then ignore it.
            if let Err(failure) = self.command_ignoring_reply(DATA_DOT_LINE, &path).await {
                return Err(self.transport_error(failure, DATA_DOT_LINE));
            }
            return Ok(results.into_iter().flatten().collect());
        }

        // The message itself, dot-stuffed into the reused buffer.
        let mut payload = std::mem::take(&mut self.data);
        payload.clear();
        payload.reserve(data.len() + data.len() / 64 + 5);
        dot_stuff_into(data, &mut payload);
        let written = self.write(&payload, path.data_dot_timeout).await;
        self.data = payload;
        if let Err(failure) = written {
            return Err(self.transport_error(failure, DATA_DOT_LINE));
        }
        let final_reply = match self.read_reply(path.data_dot_timeout).await {
            Ok(reply) => reply,
            Err(failure) => return Err(self.transport_error(failure, DATA_DOT_LINE)),
        };
        if final_reply.code == 421 {
            return Err(self.service_closing(&final_reply, DATA_DOT_LINE, results));
        }
        let outcome = RecipientResult::from_reply(&final_reply, DATA_DOT_LINE);
        for result in results.iter_mut().flatten() {
            if result.outcome == Outcome::Delivered {
                *result = outcome.clone();
            }
        }
        Ok(results.into_iter().flatten().collect())
    }

    /// After a refused MAIL in a pipelined batch: read the DATA reply and,
    /// should it be an invitation anyway, end the empty message.
    async fn drain_data_reply(&mut self, path: &EgressPathConfig) -> Result<(), IoFailure> {
        let reply = self.read_reply(path.data_timeout).await?;
        if reply.code == 354 {
            self.command_ignoring_reply(DATA_DOT_LINE, path).await?;
        }
        Ok(())
    }

    async fn command_ignoring_reply(
        &mut self,
        line: &str,
        path: &EgressPathConfig,
    ) -> Result<(), IoFailure> {
        self.command(line, path.data_dot_timeout).await.map(drop)
    }

    /// The host this connection reached.
    pub fn peer(&self) -> &PlannedHost {
        &self.peer
    }

    /// The local address actually bound.
    pub fn source_address(&self) -> Option<SocketAddr> {
        self.local
    }

    /// The TLS session, when STARTTLS succeeded.
    pub fn tls(&self) -> Option<&TlsInfo> {
        self.tls.as_ref()
    }

    /// What the server advertised (after STARTTLS, the second EHLO).
    pub fn capabilities(&self) -> &EhloCapabilities {
        &self.caps
    }

    /// Transactions started on this connection so far.
    pub fn transactions(&self) -> usize {
        self.transactions
    }

    /// False after a transport error: the session must not be reused.
    pub fn is_usable(&self) -> bool {
        self.usable
    }

    /// Whether the peer still holds the connection open, checked without
    /// waiting: after an idle spell a peer may have closed it (or said
    /// `421` and closed), and a message sent into that would fail as if
    /// delivery had been tried. A close, an error, or anything the peer
    /// sent unasked marks the connection unusable.
    pub fn still_open(&mut self) -> bool {
        use std::future::Future;
        use std::task::{Context, Poll, Waker};
        if !self.usable || !self.read_buf.is_empty() {
            self.usable = false;
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        let read = self.stream.read_buf(&mut self.read_buf);
        let mut read = std::pin::pin!(read);
        match read.as_mut().poll(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(_) => {
                self.usable = false;
                false
            }
        }
    }

    /// Say goodbye (QUIT, waiting `rset_timeout` for the reply) and close;
    /// errors are ignored since the work is done either way.
    pub async fn quit(mut self) {
        if self.usable {
            let timeout = self.settings.path.rset_timeout;
            let _ = self.command(QUIT_LINE, timeout).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.shutdown()).await;
    }
}
