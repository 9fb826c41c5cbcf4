//! One ESMTP session (§3.2–§3.12): the I/O loop around the sans-IO core.
//!
//! Order of a session: pre-banner refusals (shutdown, spool, free space),
//! the PROXY header where `require_proxy_protocol` is in effect, dynamic
//! parameters, `smtp_server_connection_accepted`, the banner, then the
//! command loop (STARTTLS, AUTH PLAIN, XCLIENT and the mail transaction).
//!
//! Replies to pipelined commands are collected and written in one go when
//! no further complete command is buffered. Every reply of 400–599 (except
//! the `421 4.3.2` load-shedding texts) is also logged as a `Rejection`.

use super::listener::Listener;
use super::params::{BatchHandling, EsmtpParams};
use crate::conn_meta::ConnectionMeta;
use crate::listener_domain::{ListenerDomain, ReportDisposition};
use crate::queue::deferred_inject::DEFERRED_SMTP_INJECT_QUEUE;
use crate::reception::{AcceptError, AcceptFailure, Arrival, ArrivalRecord};
use crate::state::{Refusal, ServerState};
use bytes::{Bytes, BytesMut};
use mlua::{FromLua, IntoLuaMulti, Lua, MultiValue, Value};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tern_log::{LogRecord, Response};
use tern_message::Message;
use tern_policy::{PolicyError, lua_to_json};
use tern_smtp::{Command, DataDecoder, DataLimits, LineReader, Reply, SessionState, parse_command};
use tern_types::{EnvelopeAddress, SpoolId};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// The client connection, before or after STARTTLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Closed,
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Closed => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }
}

/// What `smtp_server_auth_plain` decided.
enum AuthVerdict {
    /// `true`, or an AuthInfo table (kept for `conn_meta:auth_info()`).
    Granted(Option<serde_json::Value>),
    Denied,
}

impl AuthVerdict {
    fn from_bool(ok: bool) -> Self {
        if ok {
            Self::Granted(None)
        } else {
            Self::Denied
        }
    }
}

/// What the relaying rules of §3.6 decided for a sender and recipient.
#[derive(Clone, Copy, Default)]
struct RelayDecision {
    /// relay_hosts, the sender domain's `relay_from`, or the recipient
    /// domain's `relay_to`.
    relay: bool,
    /// The recipient domain's report rules.
    log_arf: ReportDisposition,
    log_oob: ReportDisposition,
}

impl RelayDecision {
    /// RCPT is accepted for relaying, or because reports to the domain
    /// are logged.
    fn accepts_recipient(&self) -> bool {
        self.relay
            || self.log_arf != ReportDisposition::Ignore
            || self.log_oob != ReportDisposition::Ignore
    }
}

/// An ARF or RFC 3464 report addressed to a domain that logs them.
enum InboundReport {
    /// The ARF report as the `feedback_report` of a Feedback record.
    Feedback(serde_json::Value),
    Oob(tern_message::report::DeliveryReport),
}

impl InboundReport {
    /// The report `msg` carries, when its recipient domain logs that kind,
    /// and whether it is still relayed (`LogThenRelay`). ARF is checked
    /// first; a message that is not a report, or fails to parse as one,
    /// is an ordinary message.
    fn detect(msg: &Message, decision: &RelayDecision) -> Option<(Self, bool)> {
        if decision.log_arf != ReportDisposition::Ignore {
            match tern_message::parse_rfc5965(msg.data()) {
                Ok(Some(report)) => match serde_json::to_value(&report) {
                    Ok(json) => {
                        let relay = decision.log_arf == ReportDisposition::LogThenRelay;
                        return Some((Self::Feedback(json), relay));
                    }
                    Err(err) => tracing::error!("ARF report in {}: {err}", msg.id()),
                },
                Ok(None) => {}
                Err(err) => tracing::debug!("{} is not a usable ARF report: {err}", msg.id()),
            }
        }
        if decision.log_oob != ReportDisposition::Ignore {
            match tern_message::report::parse_rfc3464(msg.data()) {
                Ok(Some(report)) => {
                    let relay = decision.log_oob == ReportDisposition::LogThenRelay;
                    return Some((Self::Oob(report), relay));
                }
                Ok(None) => {}
                Err(err) => tracing::debug!("{} is not a usable DSN: {err}", msg.id()),
            }
        }
        None
    }
}

/// How many domains' `get_listener_domain` answers a session remembers.
const LISTENER_DOMAIN_CACHE: usize = 16;

/// Why the session loop stopped.
enum End {
    /// The client went away or an I/O error happened.
    Gone,
    /// We closed after a reply (QUIT, 421, disconnect).
    Closed,
}

type Step = Result<(), End>;

pub struct Session {
    stream: Stream,
    peer: SocketAddr,
    local: SocketAddr,
    listener: Arc<Listener>,
    state: Arc<ServerState>,
    params: EsmtpParams,
    hostname: String,
    meta: ConnectionMeta,
    smtp: SessionState,
    lines: LineReader,
    buf: BytesMut,
    out: Vec<u8>,
    sender: Option<EnvelopeAddress>,
    recipients: Vec<EnvelopeAddress>,
    session_id: uuid::Uuid,
    rewrite_responses: bool,
    close_after_flush: bool,
    /// `get_listener_domain` answers by domain for the current
    /// transaction, most recent last.
    listener_domains: Vec<(String, Option<ListenerDomain>)>,
    /// Whether the policy has a `get_listener_domain` handler, looked up
    /// at the first relaying decision of the session: without one, no
    /// domain costs a Lua state (the reception hot path).
    listener_domain_handler: Option<bool>,
    /// The sender and recipient of the command being answered, for its
    /// Rejection record: a refused MAIL FROM or RCPT TO names the address
    /// it tried, and a refused DATA the transaction's sender and last
    /// recipient (which DATA has already taken from the session).
    attempt: Attempt,
}

/// See [`Session::attempt`].
#[derive(Default)]
struct Attempt {
    sender: Option<String>,
    recipient: Option<String>,
}

impl Session {
    pub async fn run(
        stream: TcpStream,
        peer: SocketAddr,
        listener: Arc<Listener>,
        state: Arc<ServerState>,
    ) {
        let local = stream.local_addr().unwrap_or(listener.local_addr);
        let params = match listener.config.effective(peer.ip(), local.ip(), None) {
            Ok(params) => params,
            Err(err) => {
                tracing::error!("smtp listener parameters for {peer}: {err}");
                return;
            }
        };
        let hostname = params
            .hostname
            .clone()
            .unwrap_or_else(|| state.hostname.clone());
        let session_id = uuid::Uuid::new_v4();
        let meta = ConnectionMeta::default();
        meta.set("reception_protocol", "ESMTP");
        meta.set("received_via", local.to_string());
        meta.set("received_from", peer.to_string());
        meta.set("hostname", hostname.clone());
        meta.merge(&params.meta);
        let mut session = Session {
            stream: Stream::Plain(stream),
            peer,
            local,
            lines: LineReader::new(params.line_length_hard_limit),
            listener,
            state,
            hostname,
            meta,
            smtp: SessionState::new(),
            buf: BytesMut::with_capacity(8192),
            out: Vec::with_capacity(1024),
            sender: None,
            recipients: Vec::new(),
            session_id,
            rewrite_responses: false,
            attempt: Attempt::default(),
            close_after_flush: false,
            listener_domains: Vec::new(),
            listener_domain_handler: None,
            params,
        };
        let _ = session.drive().await;
        let _ = session.stream.shutdown().await;
    }

    async fn drive(&mut self) -> Step {
        // Every reply of the session passes through the rewrite event,
        // including a refusal sent in place of the banner (a "unilateral"
        // reply: `command` is nil).
        self.rewrite_responses = self
            .state
            .engine
            .has_handler("smtp_server_rewrite_response")
            .await
            .unwrap_or(false);
        if let Some(refusal) = self.state.refusal() {
            self.listener.metrics.denied.inc();
            let host = &self.hostname;
            let reply = match refusal {
                Refusal::ShuttingDown => Reply::shutting_down(host),
                Refusal::LoadShedding => Reply::load_shedding(host),
                Refusal::DiskTooFull => Reply::disk_too_full(host),
                Refusal::WaitingForSpool => Reply::waiting_for_spool(host),
                Refusal::SpoolUnhealthy(reason) => Reply::spool_unhealthy(host, &reason),
            };
            return self.final_reply(reply).await;
        }

        // §3.2 step 3: the PROXY header comes before anything we send.
        if self.params.require_proxy_protocol {
            self.read_proxy_header().await?;
        }

        // Dynamic parameters come before connection_accepted (§3.2 step 4).
        self.refresh_params().await?;

        let meta = self.meta.clone();
        if let Err(err) = self
            .state
            .engine
            .dispatch(
                "smtp_server_connection_accepted",
                move |lua| (meta,).into_lua_multi(lua),
                |_, _| Ok(()),
            )
            .await
        {
            return self.refuse_after_policy_failure(err).await;
        }

        self.reply(Reply::banner(&self.hostname, &self.params.banner), None)
            .await;
        self.flush().await?;
        self.command_loop().await
    }

    /// The spool-side reasons to refuse a message (§3.2 step 2): free
    /// space below `min_free_space`/`min_free_inodes` on either spool, or
    /// a spool latched unhealthy. Checked before every message is spooled
    /// (the connection was checked by [`ServerState::refusal`]).
    fn storage_refusal(&self) -> Option<Reply> {
        let reception = self.state.reception()?;
        if reception.data.check_free_space().is_err() || reception.meta.check_free_space().is_err()
        {
            return Some(Reply::disk_too_full(&self.hostname));
        }
        if let Err(reason) = reception.data.health().and(reception.meta.health()) {
            return Some(Reply::spool_unhealthy(&self.hostname, &reason));
        }
        None
    }

    /// Read the HAProxy PROXY v1/v2 header and take the addresses it
    /// carries. Any failure (timeout, EOF, malformed header) closes the
    /// connection without a banner, as KumoMTA does.
    async fn read_proxy_header(&mut self) -> Step {
        let deadline = tokio::time::Instant::now() + self.params.client_timeout;
        loop {
            match tern_smtp::parse_proxy_header(&self.buf) {
                Ok(Some((header, used))) => {
                    let _ = self.buf.split_to(used);
                    if let tern_smtp::ProxyHeader::Proxied {
                        source,
                        destination,
                    } = header
                    {
                        self.change_addresses(source, destination);
                    }
                    return Ok(());
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::info!("closing the connection from {}: {err}", self.peer);
                    return Err(End::Closed);
                }
            }
            if self.buf.capacity() - self.buf.len() < 512 {
                self.buf.reserve(4096);
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return Err(End::Gone),
                Err(_) => {
                    tracing::info!(
                        "closing the connection from {}: no PROXY header within the client timeout",
                        self.peer
                    );
                    return Err(End::Closed);
                }
            }
        }
    }

    /// XCLIENT or PROXY replaced the addresses of the connection: keep the
    /// first originals in `orig_received_*` and publish the new ones.
    fn change_addresses(&mut self, peer: SocketAddr, local: SocketAddr) {
        self.meta
            .set_if_absent("orig_received_from", self.peer.to_string());
        self.meta
            .set_if_absent("orig_received_via", self.local.to_string());
        self.peer = peer;
        self.local = local;
        self.meta.set("received_from", peer.to_string());
        self.meta.set("received_via", local.to_string());
    }

    /// Compute the effective parameters for the current addresses: the
    /// `peer`/`via` blocks, then `smtp_server_get_dynamic_parameters`.
    /// A bad parameter set ends the session with `421 4.3.0`.
    async fn refresh_params(&mut self) -> Step {
        // The address the client reached (after XCLIENT/PROXY: the one
        // they name), not the wildcard the listener may be bound to.
        let listener_addr = self.local.to_string();
        let meta = self.meta.clone();
        let dynamic = self
            .state
            .engine
            .dispatch(
                "smtp_server_get_dynamic_parameters",
                move |lua| (listener_addr, meta).into_lua_multi(lua),
                |lua, values| match values.into_iter().next() {
                    Some(value @ Value::Table(_)) => lua_to_json(lua, value).map(Some),
                    _ => Ok(None),
                },
            )
            .await;
        let dynamic = match dynamic {
            Ok(Some(Some(serde_json::Value::Object(map)))) => Some(map),
            Ok(_) => None,
            Err(err) => return self.refuse_after_policy_failure(err).await,
        };
        match self
            .listener
            .config
            .effective(self.peer.ip(), self.local.ip(), dynamic.as_ref())
        {
            Ok(params) => {
                self.apply_params(params);
                Ok(())
            }
            Err(err) => {
                tracing::error!("smtp listener parameters for {}: {err}", self.peer);
                self.final_reply(Reply::technical_difficulties(&self.hostname))
                    .await
            }
        }
    }

    fn apply_params(&mut self, params: EsmtpParams) {
        let hostname = params
            .hostname
            .clone()
            .unwrap_or_else(|| self.state.hostname.clone());
        if hostname != self.hostname {
            self.meta.set("hostname", hostname.clone());
            self.hostname = hostname;
        }
        self.meta.merge(&params.meta);
        self.lines
            .set_max_line_length(params.line_length_hard_limit);
        self.params = params;
    }

    async fn command_loop(&mut self) -> Step {
        loop {
            while let Some(line) = self.lines.next_line(&mut self.buf) {
                match line {
                    Err(too_long) => self.reply(too_long.reply(), None).await,
                    Ok(line) => self.handle_line(line).await?,
                }
                if self.close_after_flush {
                    self.flush().await?;
                    return Err(End::Closed);
                }
            }
            self.flush().await?;
            if self.state.shutting_down() {
                return self.final_reply(Reply::shutting_down(&self.hostname)).await;
            }
            self.read_more().await?;
        }
    }

    /// Read more bytes into the buffer, enforcing the idle timeout.
    async fn read_more(&mut self) -> Step {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf
                .reserve(self.params.data_buffer_size.clamp(4096, 1 << 20));
        }
        match tokio::time::timeout(
            self.params.client_timeout,
            self.stream.read_buf(&mut self.buf),
        )
        .await
        {
            Err(_) => self.final_reply(Reply::idle_too_long(&self.hostname)).await,
            Ok(Ok(0)) | Ok(Err(_)) => Err(End::Gone),
            Ok(Ok(_)) => Ok(()),
        }
    }

    async fn flush(&mut self) -> Step {
        if self.out.is_empty() {
            return Ok(());
        }
        let result = self.stream.write_all(&self.out).await;
        self.out.clear();
        result.map_err(|_| End::Gone)
    }

    /// Send `reply` and close the connection.
    async fn final_reply(&mut self, reply: Reply) -> Step {
        self.reply(reply, None).await;
        let _ = self.flush().await;
        Err(End::Closed)
    }

    /// Queue a reply (after `smtp_server_rewrite_response`), log a
    /// Rejection for 4xx/5xx, and mark the session for closing on 421.
    /// `command` is what the rewrite event sees: the verb, `DATA` for
    /// everything answered after the final dot too (as in KumoMTA's
    /// documented example), nil for unsolicited replies.
    async fn reply(&mut self, mut reply: Reply, command: Option<&str>) {
        if self.rewrite_responses {
            reply = self.rewrite(reply, command).await;
        }
        if (400..600).contains(&reply.code) {
            let load_shed =
                reply.code == 421 && reply.enhanced == Some(tern_smtp::EnhancedCode::new(4, 3, 2));
            if !load_shed {
                self.log_rejection(&reply).await;
            }
        }
        if reply.code == 421 {
            self.close_after_flush = true;
        }
        reply.write_to(&mut self.out);
    }

    async fn rewrite(&self, reply: Reply, command: Option<&str>) -> Reply {
        let meta = self.meta.clone();
        let status = reply.code;
        let text = match reply.enhanced {
            Some(e) => format!("{e} {}", reply.text),
            None => reply.text.clone(),
        };
        let command = command.map(str::to_string);
        let result = self
            .state
            .engine
            .dispatch(
                "smtp_server_rewrite_response",
                move |lua| (status, text, command, meta).into_lua_multi(lua),
                |_, values| {
                    let mut it = values.into_iter();
                    let code = it.next().and_then(|v| v.as_integer()).map(|c| c as u16);
                    let text = it
                        .next()
                        .and_then(|v| v.as_string().map(|s| s.to_string_lossy()));
                    Ok((code, text))
                },
            )
            .await;
        match result {
            Ok(Some((code, text))) => {
                let code = code.unwrap_or(reply.code);
                match text {
                    Some(text) => Reply::from_code_and_text(code, &text),
                    None => Reply::new(code, reply.enhanced, reply.text),
                }
            }
            Ok(None) => reply,
            Err(err) => {
                tracing::error!("smtp_server_rewrite_response failed: {err}");
                reply
            }
        }
    }

    async fn log_rejection(&self, reply: &Reply) {
        self.listener.metrics.rejections.inc();
        let Some(reception) = self.state.reception() else {
            return;
        };
        let sender = match (&self.attempt.sender, &self.sender) {
            (Some(attempted), _) => attempted.clone(),
            (None, Some(sender)) => sender.to_string(),
            (None, None) => String::new(),
        };
        let recipient = self
            .attempt
            .recipient
            .clone()
            .or_else(|| self.recipients.last().map(|r| r.to_string()));
        let enhanced = reply.enhanced.map(|e| tern_log::EnhancedCode {
            class: e.class,
            subject: e.subject,
            detail: e.detail,
        });
        let mut record = LogRecord::rejection(
            self.state.node_id,
            &sender,
            recipient.as_deref(),
            Response::new(reply.code, enhanced, reply.content_single_line()),
        )
        .with_session_id(self.session_id)
        .with_reception_protocol("ESMTP");
        let ehlo = self.smtp.ehlo_domain().unwrap_or("").to_string();
        record = record.with_peer(ehlo, self.peer.ip().to_string());
        reception.log(record).await;
    }

    /// A policy event failed: a `kumo.reject`/`kumo.disconnect` becomes the
    /// reply; anything else is `421 4.3.0 technical difficulties`.
    async fn policy_failure(&mut self, err: PolicyError, command: Option<&str>) -> Step {
        match err.rejection() {
            Some(rejection) => {
                let reply = Reply::from_code_and_text(rejection.code, &rejection.message);
                let closes = rejection.closes_connection();
                let follow_421 =
                    rejection.disconnect == Some(tern_policy::DisconnectMode::FollowWith421);
                self.reply(reply, command).await;
                if follow_421 {
                    self.reply(Reply::disconnecting_after_error(&self.hostname), None)
                        .await;
                }
                if closes {
                    self.close_after_flush = true;
                }
                Ok(())
            }
            None => {
                tracing::error!("policy error in SMTP session from {}: {err}", self.peer);
                self.reply(Reply::technical_difficulties(&self.hostname), command)
                    .await;
                self.close_after_flush = true;
                Ok(())
            }
        }
    }

    /// A policy failure where the session cannot go on (before the
    /// banner, or while recomputing parameters): answer it and close.
    async fn refuse_after_policy_failure(&mut self, err: PolicyError) -> Step {
        self.policy_failure(err, None).await?;
        let _ = self.flush().await;
        Err(End::Closed)
    }

    /// Call a `smtp_server_*` event whose return value is ignored; a
    /// failure has been answered when this returns `Ok(false)`.
    async fn event(
        &mut self,
        name: &str,
        args: impl FnOnce(&Lua) -> mlua::Result<MultiValue>,
        command: &str,
    ) -> Result<bool, End> {
        match self.state.engine.dispatch(name, args, |_, _| Ok(())).await {
            Ok(_) => Ok(true),
            Err(err) => {
                self.policy_failure(err, Some(command)).await?;
                Ok(false)
            }
        }
    }

    async fn handle_line(&mut self, line: Bytes) -> Step {
        self.attempt = Attempt::default();
        let command = match parse_command(&line) {
            Ok(command) => command,
            Err(err) => {
                // A stranger's XCLIENT is refused as unauthorized whatever
                // its arguments, so its syntax errors reveal nothing.
                let is_xclient = line.len() >= 7 && line[..7].eq_ignore_ascii_case(b"XCLIENT");
                if is_xclient && !self.params.allow_xclient {
                    self.reply(Reply::xclient_not_allowed(), Some("XCLIENT"))
                        .await;
                    return Ok(());
                }
                self.reply(err.reply(), None).await;
                return Ok(());
            }
        };
        let verb = command.verb().to_string();
        match command {
            Command::Ehlo(domain) => {
                let meta = self.meta.clone();
                let extensions = self.smtp.ehlo_extensions(self.params.allow_xclient);
                let ext_for_lua = extensions.clone();
                let d = domain.clone();
                let result = self
                    .state
                    .engine
                    .dispatch(
                        "smtp_server_ehlo",
                        move |lua| (d, meta, ext_for_lua).into_lua_multi(lua),
                        |_, values| match values.into_iter().next() {
                            Some(Value::Table(t)) => Ok(Some(
                                t.sequence_values::<String>()
                                    .collect::<mlua::Result<Vec<_>>>()?,
                            )),
                            _ => Ok(None),
                        },
                    )
                    .await;
                let extensions = match result {
                    Ok(Some(Some(replaced))) => replaced,
                    Ok(_) => extensions,
                    Err(err) => return self.policy_failure(err, Some(&verb)).await,
                };
                self.smtp.on_ehlo(&domain);
                self.sender = None;
                self.recipients.clear();
                self.meta.set("ehlo_domain", domain.clone());
                self.reply(
                    Reply::ehlo(&self.hostname, &domain, &extensions),
                    Some(&verb),
                )
                .await;
            }
            Command::Helo(domain) => {
                let meta = self.meta.clone();
                let d = domain.clone();
                if !self
                    .event(
                        "smtp_server_ehlo",
                        move |lua| (d, meta).into_lua_multi(lua),
                        &verb,
                    )
                    .await?
                {
                    return Ok(());
                }
                self.smtp.on_ehlo(&domain);
                self.sender = None;
                self.recipients.clear();
                self.meta.set("ehlo_domain", domain.clone());
                self.reply(Reply::helo(&domain), Some(&verb)).await;
            }
            Command::MailFrom { address, .. } => {
                if self.sender.is_none() {
                    self.attempt.sender = Some(address.to_string());
                }
                if let Err(reply) = self.smtp.check_mail() {
                    self.reply(reply, Some(&verb)).await;
                    return Ok(());
                }
                let meta = self.meta.clone();
                let lua_addr = tern_message::LuaEnvelopeAddress(address.clone());
                if !self
                    .event(
                        "smtp_server_mail_from",
                        move |lua| (lua_addr, meta).into_lua_multi(lua),
                        &verb,
                    )
                    .await?
                {
                    return Ok(());
                }
                self.smtp.on_mail_accepted();
                self.recipients.clear();
                // The answers may depend on conn_meta (AUTH, STARTTLS,
                // XCLIENT change it between transactions): remember them
                // for one transaction only.
                self.listener_domains.clear();
                let text = address.to_string();
                self.sender = Some(address);
                self.reply(Reply::address_ok(&text), Some(&verb)).await;
            }
            Command::RcptTo { address, .. } => self.handle_rcpt(address, &verb).await?,
            Command::Data => self.handle_data().await?,
            Command::Rset => {
                self.smtp.on_rset();
                self.sender = None;
                self.recipients.clear();
                self.reply(Reply::rset(), Some(&verb)).await;
            }
            Command::Noop => self.reply(Reply::noop(), Some(&verb)).await,
            Command::Quit => {
                self.reply(Reply::quit(), Some(&verb)).await;
                self.close_after_flush = true;
            }
            Command::StartTls => self.handle_starttls().await?,
            Command::Auth {
                mechanism,
                initial_response,
            } => self.handle_auth(&mechanism, initial_response).await?,
            Command::XClient(attributes) => self.handle_xclient(&attributes).await?,
            Command::Unimplemented { .. } => self.reply(Reply::unimplemented(), Some(&verb)).await,
        }
        Ok(())
    }

    async fn handle_rcpt(&mut self, address: EnvelopeAddress, verb: &str) -> Step {
        self.attempt.recipient = Some(address.to_string());
        if let Err(reply) = self.smtp.check_rcpt() {
            self.reply(reply, Some(verb)).await;
            return Ok(());
        }
        let sender_domain = self.sender.as_ref().map(|s| s.domain().to_string());
        let Some(decision) = self.relay_decision(sender_domain, &address, verb).await? else {
            return Ok(());
        };
        if !decision.accepts_recipient() {
            let reply = Reply::relaying_not_permitted_for(&self.peer.to_string());
            self.reply(reply, Some(verb)).await;
            return Ok(());
        }
        if let Err(reply) = self.smtp.reserve_recipient(
            self.params.max_recipients_per_message,
            self.params.max_messages_per_connection,
            &self.hostname,
        ) {
            self.reply(reply, Some(verb)).await;
            return Ok(());
        }
        let meta = self.meta.clone();
        let lua_addr = tern_message::LuaEnvelopeAddress(address.clone());
        if !self
            .event(
                "smtp_server_rcpt_to",
                move |lua| (lua_addr, meta).into_lua_multi(lua),
                verb,
            )
            .await?
        {
            return Ok(());
        }
        self.smtp.on_rcpt_accepted();
        let text = address.to_string();
        self.recipients.push(address);
        self.reply(Reply::address_ok(&text), Some(verb)).await;
        Ok(())
    }

    /// §3.6: relay_hosts, or the listener-domain rules of the sender's or
    /// the recipient's domain; and the recipient domain's report rules.
    /// `Ok(None)`: the policy failed and that has been answered.
    async fn relay_decision(
        &mut self,
        sender_domain: Option<String>,
        recipient: &EnvelopeAddress,
        command: &str,
    ) -> Result<Option<RelayDecision>, End> {
        let mut decision = RelayDecision {
            relay: self.params.relay_hosts.contains(self.peer.ip()),
            ..RelayDecision::default()
        };
        // Asked even when relay_hosts already allows, as KumoMTA does: the
        // policy may refuse a sender domain (kumo.reject) for everyone.
        if let Some(domain) = sender_domain.filter(|d| !d.is_empty()) {
            let Some(rules) = self.listener_domain(domain, command).await? else {
                return Ok(None);
            };
            decision.relay |= rules.is_some_and(|r| r.relay_from.contains(self.peer.ip()));
        }
        let domain = recipient.domain().to_string();
        if !domain.is_empty() {
            let Some(rules) = self.listener_domain(domain, command).await? else {
                return Ok(None);
            };
            if let Some(rules) = rules {
                decision.relay |= rules.relay_to;
                decision.log_arf = rules.log_arf;
                decision.log_oob = rules.log_oob;
            }
        }
        Ok(Some(decision))
    }

    /// `get_listener_domain(domain, listener, conn_meta)`, remembered for
    /// the transaction (§3.6). `listener` is the local `ip:port` of the
    /// connection. Answers are keyed by the domain exactly as written: the
    /// policy sees the client's spelling and may compare it case-sensitively,
    /// so `OPEN.example` must not reuse the answer for `open.example`.
    /// `Ok(None)`: the policy failed and that has been answered;
    /// `Ok(Some(None))`: no rules for the domain.
    async fn listener_domain(
        &mut self,
        domain: String,
        command: &str,
    ) -> Result<Option<Option<ListenerDomain>>, End> {
        if let Some((_, rules)) = self.listener_domains.iter().find(|(d, _)| *d == domain) {
            return Ok(Some(rules.clone()));
        }
        let has_handler = match self.listener_domain_handler {
            Some(known) => known,
            None => {
                let known = self
                    .state
                    .engine
                    .has_handler("get_listener_domain")
                    .await
                    .unwrap_or(true);
                self.listener_domain_handler = Some(known);
                known
            }
        };
        if !has_handler {
            return Ok(Some(None));
        }
        let listener = self.local.to_string();
        let meta = self.meta.clone();
        let key = domain.clone();
        let result = self
            .state
            .engine
            .dispatch(
                "get_listener_domain",
                move |lua| (key, listener, meta).into_lua_multi(lua),
                |lua, values| match values.into_iter().next() {
                    Some(value @ Value::Table(_)) => lua_to_json(lua, value).map(Some),
                    _ => Ok(None),
                },
            )
            .await;
        let rules = match result {
            Ok(Some(Some(json))) => match serde_json::from_value::<ListenerDomain>(json) {
                Ok(rules) => Some(rules),
                Err(err) => {
                    tracing::error!("get_listener_domain returned an invalid value: {err}");
                    None
                }
            },
            Ok(_) => None,
            Err(err) => {
                self.policy_failure(err, Some(command)).await?;
                return Ok(None);
            }
        };
        if self.listener_domains.len() == LISTENER_DOMAIN_CACHE {
            self.listener_domains.remove(0);
        }
        self.listener_domains.push((domain, rules.clone()));
        Ok(Some(rules))
    }

    /// AUTH PLAIN (§3.11): the ordering checks, the `334` continuation,
    /// decoding, then `smtp_server_auth_plain`.
    async fn handle_auth(&mut self, mechanism: &str, initial: Option<String>) -> Step {
        if let Err(reply) = self.smtp.check_auth(mechanism) {
            self.reply(reply, Some("AUTH")).await;
            return Ok(());
        }
        let response = match initial {
            Some(response) => response,
            None => {
                self.reply(Reply::auth_continue(), Some("AUTH")).await;
                self.flush().await?;
                match self.read_auth_response().await? {
                    Ok(line) => line,
                    Err(reply) => {
                        self.reply(reply, Some("AUTH")).await;
                        return Ok(());
                    }
                }
            }
        };
        let plain = match tern_smtp::decode_auth_plain(&response) {
            Ok(plain) => plain,
            Err(reply) => {
                self.reply(reply, Some("AUTH")).await;
                return Ok(());
            }
        };
        let meta = self.meta.clone();
        let (authz, authc, password) = (
            plain.authz.clone(),
            plain.authc.clone(),
            plain.password.clone(),
        );
        let verdict = self
            .state
            .engine
            .dispatch(
                "smtp_server_auth_plain",
                move |lua| (authz, authc, password, meta).into_lua_multi(lua),
                |lua, values| match values.into_iter().next() {
                    Some(Value::Boolean(ok)) => Ok(AuthVerdict::from_bool(ok)),
                    Some(value @ Value::Table(_)) => {
                        lua_to_json(lua, value).map(|info| AuthVerdict::Granted(Some(info)))
                    }
                    _ => Ok(AuthVerdict::Denied),
                },
            )
            .await;
        let granted = match verdict {
            Ok(Some(AuthVerdict::Granted(info))) => info,
            // No handler, false, nil: refused.
            Ok(_) => {
                tracing::debug!(
                    "AUTH PLAIN for {:?} from {} refused",
                    plain.authc,
                    self.peer
                );
                self.reply(Reply::auth_invalid(), Some("AUTH")).await;
                return Ok(());
            }
            Err(err) => return self.policy_failure(err, Some("AUTH")).await,
        };
        self.meta
            .set_authenticated(&plain.authz, &plain.authc, granted.as_ref());
        self.smtp.on_authenticated();
        self.reply(Reply::auth_ok(), Some("AUTH")).await;
        Ok(())
    }

    /// The one line answering `334 ` (at most 16384 bytes). The inner
    /// `Err` is the reply for a line that is too long (KumoMTA's
    /// `500 5.5.6`, not the `500 5.2.3` of a command line) or not UTF-8.
    async fn read_auth_response(&mut self) -> Result<Result<String, Reply>, End> {
        const AUTH_LINE_LIMIT: usize = 16384;
        self.lines.set_max_line_length(AUTH_LINE_LIMIT);
        let line = loop {
            if let Some(line) = self.lines.next_line(&mut self.buf) {
                break line;
            }
            if let Err(end) = self.read_more().await {
                self.lines
                    .set_max_line_length(self.params.line_length_hard_limit);
                return Err(end);
            }
        };
        self.lines
            .set_max_line_length(self.params.line_length_hard_limit);
        Ok(match line {
            // Not base64 if it is not even UTF-8.
            Ok(line) => match String::from_utf8(line.to_vec()) {
                Ok(text) => Ok(text),
                Err(_) => Err(Reply::auth_invalid_base64()),
            },
            Err(_) => Err(Reply::auth_line_too_long()),
        })
    }

    /// XCLIENT (§3.12): only where `allow_xclient` is in effect; new
    /// addresses, parameters recomputed for them, session restarted with a
    /// fresh banner.
    async fn handle_xclient(&mut self, attributes: &[(String, String)]) -> Step {
        if let Err(reply) = self.smtp.check_xclient(self.params.allow_xclient) {
            self.reply(reply, Some("XCLIENT")).await;
            return Ok(());
        }
        let update = match tern_smtp::XClientUpdate::parse(attributes) {
            Ok(update) => update,
            Err(reply) => {
                self.reply(reply, Some("XCLIENT")).await;
                return Ok(());
            }
        };
        self.change_addresses(
            update.apply_to_peer(self.peer),
            update.apply_to_local(self.local),
        );
        self.smtp.on_xclient();
        self.sender = None;
        self.recipients.clear();
        self.refresh_params().await?;
        self.reply(
            Reply::banner(&self.hostname, &self.params.banner),
            Some("XCLIENT"),
        )
        .await;
        Ok(())
    }

    async fn handle_starttls(&mut self) -> Step {
        if let Err(reply) = self.smtp.check_starttls() {
            self.reply(reply, Some("STARTTLS")).await;
            return Ok(());
        }
        let acceptor = match self.listener.tls.acceptor(&self.params) {
            Ok(acceptor) => acceptor,
            Err(err) => {
                tracing::error!("STARTTLS for {}: {err}", self.peer);
                self.reply(
                    Reply::technical_difficulties(&self.hostname),
                    Some("STARTTLS"),
                )
                .await;
                return Ok(());
            }
        };
        self.reply(Reply::starttls_ready(), Some("STARTTLS")).await;
        self.flush().await?;
        // Anything pipelined after STARTTLS was sent in clear text and must
        // not be acted on inside the TLS session (command injection).
        self.buf.clear();
        self.lines.reset();
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Closed) else {
            return Err(End::Gone);
        };
        let accept = acceptor.accept(tcp);
        let tls = match tokio::time::timeout(self.params.client_timeout, accept).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(err)) => {
                tracing::debug!("TLS handshake with {} failed: {err}", self.peer);
                return Err(End::Gone);
            }
            Err(_) => return Err(End::Gone),
        };
        let (_, conn) = tls.get_ref();
        if let Some(suite) = conn.negotiated_cipher_suite() {
            self.meta.set("tls_cipher", format!("{:?}", suite.suite()));
        }
        if let Some(version) = conn.protocol_version() {
            self.meta
                .set("tls_protocol_version", format!("{version:?}"));
        }
        // Present only when tls_required_client_ca asked for a client
        // certificate and it verified.
        if let Some(subject) = conn
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(|cert| tern_delivery::tls::subject_parts(cert.as_ref()))
        {
            self.meta.set("tls_peer_subject_name", subject);
        }
        self.stream = Stream::Tls(Box::new(tls));
        self.smtp.on_tls_established();
        self.sender = None;
        self.recipients.clear();
        Ok(())
    }

    async fn handle_data(&mut self) -> Step {
        if let Err(reply) = self.smtp.check_data() {
            self.reply(reply, Some("DATA")).await;
            return Ok(());
        }
        self.reply(Reply::start_data(), Some("DATA")).await;
        self.flush().await?;
        let mut decoder = DataDecoder::new(DataLimits {
            max_message_size: self.params.max_message_size,
            line_length_hard_limit: self.params.line_length_hard_limit,
            invalid_line_endings: self.params.invalid_line_endings,
        });
        let body = loop {
            if !self.buf.is_empty() {
                let progress = decoder.decode(&self.buf);
                let _ = self.buf.split_to(progress.consumed);
                if let Some(result) = progress.finished {
                    break result;
                }
            }
            // A client that disconnects mid-DATA leaves nothing behind.
            self.read_more().await?;
        };
        let sender = self.sender.take().unwrap_or_default();
        let recipients = std::mem::take(&mut self.recipients);
        self.attempt = Attempt {
            sender: Some(sender.to_string()),
            recipient: recipients.last().map(|r| r.to_string()),
        };
        self.smtp.on_data_finished();
        match body {
            Err(err) => {
                self.reply(err.reply(), Some("DATA")).await;
                Ok(())
            }
            Ok(body) => self.receive(sender, recipients, body).await,
        }
    }

    /// §3.7 after the data was read: events, batches, trace headers,
    /// spooling, Reception records and the final reply.
    async fn receive(
        &mut self,
        sender: EnvelopeAddress,
        recipients: Vec<EnvelopeAddress>,
        body: Vec<u8>,
    ) -> Step {
        let deadline = Instant::now() + self.params.data_processing_timeout;
        let Some(reception) = self.state.reception().cloned() else {
            self.reply(Reply::waiting_for_spool(&self.hostname), Some("DATA"))
                .await;
            return Ok(());
        };
        let mut base_meta = self.meta.snapshot();
        base_meta.insert("session_id".into(), self.session_id.to_string().into());
        let base = Message::new(
            SpoolId::new(),
            sender,
            recipients,
            base_meta,
            Bytes::from(body),
        );
        let meta = self.meta.clone();
        let msg = base.clone();
        if !self
            .event(
                "smtp_server_data",
                move |lua| (msg, meta).into_lua_multi(lua),
                "DATA",
            )
            .await?
        {
            return Ok(());
        }

        let batches = self.batches(&base).await?;
        let Some(batches) = batches else {
            return Ok(());
        };
        let mut accepted = Vec::with_capacity(batches.len());
        for batch in batches {
            let id = SpoolId::new();
            let mut data = base.data();
            if self.params.trace_headers.received_header {
                // One allocation and two copies: this runs for every message.
                let header = self.received_header(id, batch.first());
                let mut with_header = Vec::with_capacity(header.len() + data.len());
                with_header.extend_from_slice(header.as_bytes());
                with_header.extend_from_slice(&data);
                data = with_header.into();
            }
            let msg = Message::new(id, base.sender(), batch, base.meta(), data);
            if self.params.deferred_queue {
                // The policy sees the message later, in the queue layer
                // (`smtp_server_message_deferred_inject`).
                msg.set_meta("queue", DEFERRED_SMTP_INJECT_QUEUE.into());
                accepted.push(msg);
                continue;
            }
            let meta = self.meta.clone();
            let m = msg.clone();
            if !self
                .event(
                    "smtp_server_message_received",
                    move |lua| (m, meta).into_lua_multi(lua),
                    "DATA",
                )
                .await?
            {
                // A rejection of any batch rejects the whole DATA.
                return Ok(());
            }
            accepted.push(msg);
        }
        if Instant::now() > deadline {
            self.reply(Reply::data_processing_timeout("rx"), Some("DATA"))
                .await;
            return Ok(());
        }

        if self.params.trace_headers.supplemental_header {
            for msg in &accepted {
                self.supplemental_header(msg);
            }
        }
        // §3.7 step 6: relaying is decided again per message, with its
        // own sender and first recipient (the policy may have changed
        // them), and a message to a domain that logs reports is checked
        // for being one. A message bound for the `null` queue counts as
        // accepted (black-holed) whoever sent it. A message that is
        // neither relayed, black-holed nor a report is logged but not
        // spooled.
        let mut to_accept = Vec::with_capacity(accepted.len());
        let mut refused = Vec::new();
        let mut dropped_reports = Vec::new();
        let mut relayed_dsns = Vec::new();
        let mut ids = Vec::with_capacity(accepted.len());
        for msg in accepted {
            let Some(first) = msg.first_recipient() else {
                continue;
            };
            let sender = msg.sender();
            let sender_domain = (!sender.is_null()).then(|| sender.domain().to_string());
            let Some(decision) = self.relay_decision(sender_domain, &first, "DATA").await? else {
                return Ok(());
            };
            let black_holed = matches!(msg.queue_name().as_deref(), Ok("null"));
            let (report, relay) = match InboundReport::detect(&msg, &decision) {
                Some((report, relay)) => (Some(report), relay),
                None => (None, decision.relay || black_holed),
            };
            if relay || report.is_some() {
                ids.push(msg.id().to_string());
            }
            match (relay, report) {
                // A relayed ARF report is logged as Feedback instead of
                // Reception (§12.3).
                (true, Some(InboundReport::Feedback(json))) => {
                    to_accept.push((msg, ArrivalRecord::Feedback(json)))
                }
                (true, Some(InboundReport::Oob(dsn))) => {
                    relayed_dsns.push((msg.clone(), dsn));
                    to_accept.push((msg, ArrivalRecord::Reception));
                }
                (true, None) => to_accept.push((msg, ArrivalRecord::Reception)),
                (false, Some(report)) => dropped_reports.push((msg, report)),
                (false, None) => refused.push(msg),
            }
        }
        let ehlo = self.smtp.ehlo_domain().unwrap_or("").to_string();
        let peer_ip = self.peer.ip().to_string();
        let peer = Some((ehlo.as_str(), peer_ip.as_str()));
        for msg in &refused {
            let queue = msg.queue_name().unwrap_or_default();
            reception.log_reception(msg, &queue, peer).await;
        }
        if to_accept.is_empty() && dropped_reports.is_empty() {
            self.reply(Reply::relaying_not_permitted(), Some("DATA"))
                .await;
            return Ok(());
        }

        // The disk may have filled since the connection was accepted:
        // refuse this message before writing it; earlier ones are safe.
        if let Some(reply) = self.storage_refusal() {
            self.reply(reply, Some("DATA")).await;
            return Ok(());
        }
        let arrival = Arrival {
            peer,
            deferred_spool: self.params.deferred_spool,
        };
        if !to_accept.is_empty() {
            match reception
                .accept_within(to_accept, arrival, Some(deadline))
                .await
            {
                Ok(_) => {}
                Err(AcceptFailure::Timeout(stage)) => {
                    self.reply(Reply::data_processing_timeout(stage), Some("DATA"))
                        .await;
                    return Ok(());
                }
                Err(AcceptFailure::Refused(err @ AcceptError::QueueName { .. })) => {
                    tracing::error!("{err}");
                    self.reply(Reply::technical_difficulties(&self.hostname), Some("DATA"))
                        .await;
                    return Ok(());
                }
                Err(AcceptFailure::Refused(err @ AcceptError::Spool(_))) => {
                    tracing::error!("{err}");
                    self.reply(
                        Reply::spool_not_accepting_writes(&self.hostname),
                        Some("DATA"),
                    )
                    .await;
                    return Ok(());
                }
            }
        }
        // Logged once the relayed messages are safe, so a client retrying
        // after a spool failure does not log its reports twice. A report
        // that is not relayed is not spooled: an ARF report is logged as
        // Feedback only, a DSN as Reception plus its OOB records.
        for (msg, dsn) in &relayed_dsns {
            let queue = msg.queue_name().unwrap_or_default();
            reception.log_oob(msg, &queue, peer, dsn).await;
        }
        for (msg, report) in &dropped_reports {
            let queue = msg.queue_name().unwrap_or_default();
            match report {
                InboundReport::Feedback(json) => {
                    reception
                        .log_feedback(msg, &queue, peer, json.clone())
                        .await
                }
                InboundReport::Oob(dsn) => {
                    reception.log_reception(msg, &queue, peer).await;
                    reception.log_oob(msg, &queue, peer, dsn).await;
                }
            }
        }
        self.listener.metrics.received.add(ids.len() as u64);
        self.reply(Reply::queued(&ids, false), Some("DATA")).await;
        Ok(())
    }

    /// `smtp_server_split_transaction`, else `batch_handling`.
    async fn batches(&mut self, base: &Message) -> Result<Option<Vec<Vec<EnvelopeAddress>>>, End> {
        let meta = self.meta.clone();
        let msg = base.clone();
        let result = self
            .state
            .engine
            .dispatch(
                "smtp_server_split_transaction",
                move |lua| (msg, meta).into_lua_multi(lua),
                // Each address may be a string or an EnvelopeAddress (as
                // `msg:recipient_list()` gives them); a bad one fails the
                // event like any other policy error.
                |lua, values| match values.into_iter().next() {
                    Some(value @ Value::Table(_)) => {
                        let lists = Vec::<Vec<tern_message::LuaEnvelopeAddress>>::from_lua(
                            value, lua,
                        )
                        .map_err(|err| {
                            mlua::Error::runtime(format!(
                                "smtp_server_split_transaction must return an array of address arrays: {err}"
                            ))
                        })?;
                        Ok(Some(lists))
                    }
                    _ => Ok(None),
                },
            )
            .await;
        let recipients = base.recipients();
        match result {
            Ok(Some(Some(lists))) => Ok(Some(
                lists
                    .into_iter()
                    .map(|list| list.into_iter().map(|a| a.0).collect::<Vec<_>>())
                    .filter(|batch| !batch.is_empty())
                    .collect(),
            )),
            Ok(_) => Ok(Some(match self.params.batch_handling {
                BatchHandling::BifurcateAlways => recipients.into_iter().map(|r| vec![r]).collect(),
                BatchHandling::BatchByDomain => {
                    let mut groups: Vec<(String, Vec<EnvelopeAddress>)> = Vec::new();
                    for r in recipients {
                        let domain = r.domain().to_ascii_lowercase();
                        match groups.iter_mut().find(|(d, _)| *d == domain) {
                            Some((_, list)) => list.push(r),
                            None => groups.push((domain, vec![r])),
                        }
                    }
                    groups.into_iter().map(|(_, list)| list).collect()
                }
            })),
            Err(err) => {
                self.policy_failure(err, Some("DATA")).await?;
                Ok(None)
            }
        }
    }

    /// The `Received:` trace header of §3.10.
    fn received_header(&self, id: SpoolId, first: Option<&EnvelopeAddress>) -> String {
        let ehlo = self.smtp.ehlo_domain().unwrap_or("unspecified");
        let tls = match (
            self.meta.get_str("tls_protocol_version"),
            self.meta.get_str("tls_cipher"),
        ) {
            (Some(v), Some(c)) => Some(format!("{v}:{c}")),
            _ => None,
        };
        let proto = match (self.smtp.authenticated(), tls.is_some()) {
            (true, true) => "ESMTPSA",
            (_, true) => "ESMTPS",
            _ => "ESMTP",
        };
        let with = match tls {
            Some(tls) => format!("{proto} ({tls})"),
            None => proto.to_string(),
        };
        let rcpt = first.map(|r| r.to_string()).unwrap_or_default();
        let date = chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S +0000");
        format!(
            "Received: from {ehlo} ({})\r\n  by {} (KumoMTA {}) \r\n  with {with} id {id} for <{rcpt}>;\r\n  {date}\r\n",
            self.peer.ip(),
            self.hostname,
            self.local.ip(),
        )
    }

    /// The supplemental `X-KumoRef` header (§3.10).
    fn supplemental_header(&self, msg: &Message) {
        let recipients: Vec<String> = msg.recipients().iter().map(|r| r.to_string()).collect();
        let recipient = if recipients.len() == 1 {
            recipients[0].clone().into()
        } else {
            recipients.into()
        };
        let trace = &self.params.trace_headers;
        let value =
            crate::trace::supplemental_value(recipient, &trace.include_meta_names, |name| {
                msg.get_meta(name)
            });
        if let Err(err) = msg.prepend_header(&trace.header_name, &value, false) {
            tracing::warn!("cannot add the supplemental trace header: {err}");
        }
    }
}
