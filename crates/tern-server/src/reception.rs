//! Making accepted messages durable and logging them.
//!
//! The `data` and `meta` spools are written concurrently for every
//! message of a transaction; each spool groups concurrent writes into one
//! sync (group commit), so the `250` is sent only once both halves of
//! every message are on stable storage, at little cost per message.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use tern_log::{
    EnhancedCode, FilterDecisions, HookMessage, LogHook, LogRecord, Logger, MessageInfo,
    RecordFilter, RecordType, Response,
};
use tern_message::Message;
use tern_spool::Spool;

/// Where accepted messages go after they are durable: the queue layer.
/// Reception knows it only through this trait, so the listeners do not
/// depend on how queues are built.
pub trait QueueSink: Send + Sync {
    /// Take ownership of a spooled (or deliberately unspooled) message
    /// bound for `queue`.
    fn enqueue(&self, msg: Message, queue: String);
}

/// Why [`Reception::accept`] refused a batch. Nothing of the batch was kept.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("cannot compute the queue of {id}: {reason}")]
    QueueName { id: String, reason: String },
    #[error("spool write failed: {0}")]
    Spool(String),
}

/// Why [`Reception::accept_within`] gave up. Nothing of the batch was
/// kept or logged.
#[derive(Debug)]
pub enum AcceptFailure {
    Refused(AcceptError),
    /// The deadline passed at this stage of §3.7 (`resolve`: computing
    /// queue names; `spool`: writing the spools).
    Timeout(&'static str),
}

/// The record that says a message arrived.
pub enum ArrivalRecord {
    Reception,
    /// An ARF report for a `log_arf` domain that is still relayed: its
    /// `Feedback` record (with this `feedback_report`) replaces the
    /// Reception record (§12.3).
    Feedback(serde_json::Value),
}

/// How a batch arrived, for the Reception records.
pub struct Arrival<'a> {
    /// `(EHLO name or "", peer IP)` for `peer_address`.
    pub peer: Option<(&'a str, &'a str)>,
    /// `deferred_spool`: queue without writing the spool first.
    pub deferred_spool: bool,
}

pub struct Reception {
    pub data: Spool,
    pub meta: Spool,
    pub loggers: Arc<Vec<Logger>>,
    pub node_id: uuid::Uuid,
    /// Messages accepted into the spool and waiting there (no queue yet).
    pub spooled: AtomicU64,
    /// Set once the queue layer is running (before ingress opens).
    pub queues: OnceLock<Arc<dyn QueueSink>>,
    /// Runs `filter_event` for loggers that name one.
    pub filter: OnceLock<Arc<dyn RecordFilter<Message>>>,
    /// `kumo.configure_log_hook` hooks, and where their messages go
    /// (a bounded channel: its capacity is the hook's `back_pressure`).
    pub hooks: Vec<HookSlot>,
}

/// One log hook and the channel to the task that turns its records into
/// messages.
pub struct HookSlot {
    pub hook: Arc<LogHook>,
    pub tx: tokio::sync::mpsc::Sender<HookMessage>,
}

impl Reception {
    /// The one hand-off for every ingress (SMTP and HTTP): compute each
    /// message's queue, make the messages durable (all or none), log their
    /// Reception records, and give them to the queue layer. Messages bound
    /// for the `null` queue are accepted and dropped (§5.3). Returns the
    /// queue name of each message, in order.
    pub async fn accept(
        &self,
        messages: Vec<Message>,
        arrival: Arrival<'_>,
    ) -> Result<Vec<String>, AcceptError> {
        let arrivals = messages
            .into_iter()
            .map(|msg| (msg, ArrivalRecord::Reception))
            .collect();
        match self.accept_within(arrivals, arrival, None).await {
            Ok(queues) => Ok(queues),
            Err(AcceptFailure::Refused(err)) => Err(err),
            // Only reachable with a deadline, and there is none here.
            Err(AcceptFailure::Timeout(stage)) => Err(AcceptError::Spool(format!(
                "deadline exceeded while {stage}"
            ))),
        }
    }

    /// [`Reception::accept`] with a deadline (the SMTP listener's
    /// `data_processing_timeout`) and a choice of arrival record per
    /// message. The deadline is checked after the queue names are
    /// computed and after the spool writes; when it has passed, what was
    /// written is removed and nothing is logged, so the client's retry is
    /// the only copy.
    pub async fn accept_within(
        &self,
        messages: Vec<(Message, ArrivalRecord)>,
        arrival: Arrival<'_>,
        deadline: Option<std::time::Instant>,
    ) -> Result<Vec<String>, AcceptFailure> {
        let expired = || deadline.is_some_and(|d| std::time::Instant::now() > d);
        let mut queues = Vec::with_capacity(messages.len());
        for (msg, _) in &messages {
            let queue = msg.queue_name().map_err(|reason| {
                AcceptFailure::Refused(AcceptError::QueueName {
                    id: msg.id().to_string(),
                    reason: reason.to_string(),
                })
            })?;
            queues.push(queue);
        }
        if expired() {
            return Err(AcceptFailure::Timeout("resolve"));
        }
        if !arrival.deferred_spool {
            let to_spool: Vec<Message> = messages
                .iter()
                .zip(&queues)
                .filter(|(_, q)| q.as_str() != "null")
                .map(|((m, _), _)| m.clone())
                .collect();
            self.spool_all(&to_spool)
                .await
                .map_err(|err| AcceptFailure::Refused(AcceptError::Spool(err)))?;
            if expired() {
                self.unspool(&to_spool).await;
                return Err(AcceptFailure::Timeout("spool"));
            }
        }
        for ((msg, record), queue) in messages.iter().zip(&queues) {
            match record {
                ArrivalRecord::Reception => self.log_reception(msg, queue, arrival.peer).await,
                ArrivalRecord::Feedback(report) => {
                    self.log_feedback(msg, queue, arrival.peer, report.clone())
                        .await
                }
            }
        }
        for ((msg, _), queue) in messages.into_iter().zip(&queues) {
            if queue == "null" {
                continue;
            }
            match self.queues.get() {
                Some(sink) => sink.enqueue(msg, queue.clone()),
                None => tracing::error!(
                    "message {} accepted before the queue layer started; it stays in the spool",
                    msg.id()
                ),
            }
        }
        Ok(queues)
    }

    /// Remove `messages` from both spools (a batch that is given up).
    async fn unspool(&self, messages: &[Message]) {
        for msg in messages {
            let _ = self.meta.remove(msg.id()).await;
            let _ = self.data.remove(msg.id()).await;
        }
        self.spooled
            .fetch_sub(messages.len() as u64, Ordering::Relaxed);
    }

    /// Store every message in both spools; fails as a whole if any write
    /// fails, after removing what was written.
    pub async fn spool_all(&self, messages: &[Message]) -> Result<(), String> {
        let results = futures::future::join_all(messages.iter().map(|msg| self.save(msg))).await;
        self.spooled
            .fetch_add(messages.len() as u64, Ordering::Relaxed);
        if let Some(err) = results.iter().find_map(|r| r.as_ref().err()) {
            self.unspool(messages).await;
            return Err(err.clone());
        }
        Ok(())
    }

    /// Store both halves of `msg`, concurrently (each spool's group commit
    /// shares its sync with other writers). Used for every reception and
    /// by `msg:save()` (a message the policy changed, or one a
    /// `deferred_spool` listener has not written); a failure here leaves
    /// whatever copy was stored before.
    pub async fn save(&self, msg: &Message) -> Result<(), String> {
        let id = msg.id();
        let data = self.data.store(id, msg.data());
        let meta = self
            .meta
            .store(id, bytes::Bytes::from(msg.meta_spool_bytes()));
        let (d, m) = tokio::join!(data, meta);
        d.map_err(|e| e.to_string())?;
        m.map_err(|e| e.to_string())?;
        msg.mark_clean();
        Ok(())
    }

    /// A record that is not about a stored message (e.g. a Rejection).
    pub async fn log(&self, record: LogRecord) {
        for logger in self.loggers.iter() {
            if logger.is_enabled(record.kind) {
                let _ = logger.submit(record.clone()).await;
            }
        }
        self.feed_hooks(&record, None).await;
    }

    /// Give `record` to every log hook that wants it, with the hook's own
    /// meta and header captures. Waits when a hook's queue is full
    /// (`back_pressure`).
    async fn feed_hooks(&self, record: &LogRecord, msg: Option<&Message>) {
        for slot in &self.hooks {
            if !slot.hook.wants(record) {
                continue;
            }
            let mut copy = record.clone();
            if let Some(msg) = msg {
                if !slot.hook.config().meta.is_empty() {
                    copy = copy.with_meta(slot.hook.capture_meta(&msg.meta()));
                }
                if !slot.hook.config().headers.is_empty() {
                    let headers = msg.get_all_headers();
                    copy = copy
                        .with_headers(slot.hook.capture_headers(
                            headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
                        ));
                }
            }
            match slot.hook.message_for(&copy) {
                Ok(Some(message)) => {
                    if slot.tx.send(message).await.is_err() {
                        tracing::error!("log hook {} is not running", slot.hook.name());
                    }
                }
                Ok(None) => {}
                Err(err) => tracing::error!("log hook {}: {err}", slot.hook.name()),
            }
        }
    }

    /// The Reception record for `msg`, with the logger's meta capture done
    /// per logger at submit time.
    pub async fn log_reception(&self, msg: &Message, queue: &str, peer: Option<(&str, &str)>) {
        let record = self.arrival_record(RecordType::Reception, msg, queue, peer, None);
        self.log_for_message(record, msg).await;
    }

    /// The `Feedback` record of an ARF report received for a `log_arf`
    /// domain (§3.7 step 6); `report` is the parsed report's JSON.
    pub async fn log_feedback(
        &self,
        msg: &Message,
        queue: &str,
        peer: Option<(&str, &str)>,
        report: serde_json::Value,
    ) {
        let mut record = self.arrival_record(RecordType::Feedback, msg, queue, peer, None);
        record.feedback_report = Some(report);
        self.log_for_message(record, msg).await;
    }

    /// One `OOB` record per `failed` recipient of an RFC 3464 report
    /// received for a `log_oob` domain (§12.3): the reported recipient,
    /// with the envelope recipient of the report as sender, and the code
    /// taken from the report's diagnostic and status.
    pub async fn log_oob(
        &self,
        msg: &Message,
        queue: &str,
        peer: Option<(&str, &str)>,
        report: &tern_message::report::DeliveryReport,
    ) {
        let reported_to = msg
            .first_recipient()
            .map(|r| r.to_string())
            .unwrap_or_default();
        for rcpt in &report.per_recipient {
            if !rcpt.action.eq_ignore_ascii_case("failed") {
                continue;
            }
            let recipient = rcpt
                .original_recipient
                .as_ref()
                .unwrap_or(&rcpt.final_recipient)
                .recipient
                .clone();
            let mut record =
                self.arrival_record(RecordType::OOB, msg, queue, peer, Some(&recipient));
            record.sender = reported_to.clone();
            record.size = 0;
            record.response = oob_response(rcpt);
            self.log_for_message(record, msg).await;
        }
    }

    /// A record about `msg` as it arrived: envelope, peer, session and TLS
    /// facts. `recipient` replaces the message's recipients when given.
    fn arrival_record(
        &self,
        kind: RecordType,
        msg: &Message,
        queue: &str,
        peer: Option<(&str, &str)>,
        recipient: Option<&str>,
    ) -> LogRecord {
        let recipients: Vec<String> = match recipient {
            Some(one) => vec![one.to_string()],
            None => msg.recipients().iter().map(|r| r.to_string()).collect(),
        };
        let recipient_refs: Vec<&str> = recipients.iter().map(String::as_str).collect();
        let sender = msg.sender().to_string();
        let protocol = msg.get_meta_str("reception_protocol");
        let info = MessageInfo {
            id: msg.id(),
            sender: &sender,
            recipients: &recipient_refs,
            queue,
            size: msg.size() as u64,
            num_attempts: msg.num_attempts() as u32,
            reception_protocol: protocol.as_deref(),
        };
        let mut record = LogRecord::for_message(kind, self.node_id, info);
        if let Some((name, addr)) = peer {
            record = record.with_peer(name, addr);
        }
        if let Some(session) = msg.get_meta_str("session_id").and_then(|s| s.parse().ok()) {
            record = record.with_session_id(session);
        }
        if let (Some(cipher), Some(version)) = (
            msg.get_meta_str("tls_cipher"),
            msg.get_meta_str("tls_protocol_version"),
        ) {
            let subject = msg
                .get_meta("tls_peer_subject_name")
                .and_then(|value| serde_json::from_value::<Vec<String>>(value).ok());
            record = record.with_tls(cipher, version, subject);
        }
        record
    }

    /// Submit a record about `msg` to every logger that wants its type,
    /// with each logger's meta and header capture (§12.1).
    pub async fn log_for_message(&self, record: LogRecord, msg: &Message) {
        let mut meta = None;
        let mut headers = None;
        let mut decisions = FilterDecisions::default();
        for logger in self.loggers.iter() {
            if !logger.is_enabled(record.kind) {
                continue;
            }
            let config = logger.config();
            if config.filter_event.is_some()
                && let Some(filter) = self.filter.get()
                && !decisions
                    .should_log(config, filter.as_ref(), Some(msg), &record)
                    .await
            {
                continue;
            }
            let mut copy = record.clone();
            if !config.meta.is_empty() {
                let meta = meta.get_or_insert_with(|| msg.meta());
                copy = copy.with_meta(tern_log::capture_meta(config, meta));
            }
            if !config.headers.is_empty() {
                let headers = headers.get_or_insert_with(|| msg.get_all_headers());
                copy = copy.with_headers(tern_log::capture_headers(
                    config,
                    headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
                ));
            }
            let _ = logger.submit(copy).await;
        }
        self.feed_hooks(&record, Some(msg)).await;
    }
}

/// The response of an OOB record: the code of an `smtp;` diagnostic such
/// as `smtp; 550 5.1.1 no such user` (else 550), the enhanced code from
/// the report's `Status`, and the diagnostic's text.
fn oob_response(rcpt: &tern_message::report::PerRecipient) -> Response {
    let enhanced = Some(EnhancedCode::new(
        rcpt.status.class,
        rcpt.status.subject,
        rcpt.status.detail,
    ));
    let Some(diagnostic) = &rcpt.diagnostic_code else {
        return Response::new(550, enhanced, "");
    };
    let text = diagnostic.diagnostic.trim();
    if diagnostic.diagnostic_type.eq_ignore_ascii_case("smtp")
        && let Some(parsed) = Response::from_smtp_reply(text)
    {
        return Response::new(parsed.code, enhanced, parsed.content);
    }
    Response::new(550, enhanced, text)
}

/// Installs `msg:save()` in every Lua state: it writes through the
/// [`Reception`] once the spools are open (the slot is filled at startup,
/// after the states that ran `init` were made).
pub struct SaveRegistrar(pub Arc<OnceLock<Arc<Reception>>>);

impl tern_policy::LuaRegistrar for SaveRegistrar {
    fn register(&self, lua: &mlua::Lua, _kumo: &mlua::Table) -> mlua::Result<()> {
        let slot = self.0.clone();
        lua.set_app_data(tern_message::lua::SaveHook(Arc::new(
            move |msg: &Message| {
                let reception = slot.get().cloned();
                let msg = msg.clone();
                Box::pin(async move {
                    match reception {
                        Some(reception) => reception.save(&msg).await,
                        None => Err("the spools are not open yet".to_string()),
                    }
                })
            },
        )));
        Ok(())
    }
}
