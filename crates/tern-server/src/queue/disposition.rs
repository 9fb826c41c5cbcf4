//! What happens to a message after an attempt or a failed promotion:
//! the log record (§12.3), removal from the spool when it is done, and the
//! requeue with backoff, expiry and the `requeue_message` event (§7.2,
//! §7.3, §7.6, §7.7).
//!
//! A requeued message is written back to the spool if anything about it
//! changed (recipients, meta, a body that was never spooled because of
//! `deferred_spool`), then dropped from memory: the scheduled queue keeps
//! only a [`Waiting`] entry until it is due.

use super::QueueManager;
use super::scheduled::{Waiting, config_for};
use mlua::IntoLuaMulti;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tern_log::{LogRecord, MessageInfo, RecordType, Response, SourceAddress};
use tern_message::Message;
use tern_queue::backoff::{
    RetryDecision, check_max_age_on_requeue, check_scheduled_expiry, delayed_content,
    ready_queue_full_delay,
};
use tern_queue::{RetrySchedule, Scheduling};
use tern_types::EnvelopeAddress;

/// Facts about a delivery attempt that go into its log record.
#[derive(Clone, Debug, Default)]
pub struct AttemptFacts {
    pub egress_pool: String,
    pub egress_source: String,
    /// `(MX host name, IP address)`.
    pub peer: Option<(String, String)>,
    pub source_address: Option<String>,
    /// `(cipher, protocol version, peer subject names)`.
    pub tls: Option<(String, String, Option<Vec<String>>)>,
    pub session_id: Option<uuid::Uuid>,
    pub delivery_protocol: Option<&'static str>,
}

/// How a message goes back to its scheduled queue.
#[derive(Clone, Debug)]
pub struct Requeue {
    /// Insert-context string for `requeue_message` and `Delayed` (§7.6).
    pub context: &'static str,
    /// Advance the attempt counter and use the backoff (most paths), or
    /// keep it and wait `delay` (throttles, ready queue full).
    pub increment: bool,
    pub delay: Option<Duration>,
    /// Whether a TransientFailure was already logged (then no `Delayed`).
    pub logged: bool,
    /// The response line handed to `requeue_message`.
    pub response: Option<String>,
}

impl Requeue {
    pub fn after_transient_failure(response: &Response) -> Self {
        Self {
            context: "LoggedTransientFailure",
            increment: true,
            delay: None,
            logged: true,
            response: Some(response_line(response)),
        }
    }

    pub fn ready_queue_full() -> Self {
        Self {
            context: "ReadyQueueWasFull",
            increment: false,
            delay: Some(ready_queue_full_delay(&mut rand::rng())),
            logged: false,
            response: None,
        }
    }

    pub fn throttled(context: &'static str, delay: Duration) -> Self {
        Self {
            context,
            increment: false,
            delay: Some(delay),
            logged: false,
            response: None,
        }
    }
}

fn response_line(response: &Response) -> String {
    match &response.enhanced_code {
        Some(code) => format!("{} {code} {}", response.code, response.content),
        None => format!("{} {}", response.code, response.content),
    }
}

/// Write one record about `msg` to every logger that wants it, with the
/// logger's meta and header capture.
pub async fn log(
    mgr: &QueueManager,
    kind: RecordType,
    msg: &Message,
    queue: &str,
    site: &str,
    response: Response,
    facts: Option<&AttemptFacts>,
) {
    log_full(mgr, kind, msg, None, queue, site, response, facts).await
}

/// [`log`], naming `recipients` instead of the message's own list.
#[allow(clippy::too_many_arguments)]
pub async fn log_full(
    mgr: &QueueManager,
    kind: RecordType,
    msg: &Message,
    recipients: Option<&[EnvelopeAddress]>,
    queue: &str,
    site: &str,
    response: Response,
    facts: Option<&AttemptFacts>,
) {
    let reception = &mgr.reception;
    if !reception.loggers.iter().any(|l| l.is_enabled(kind)) {
        return;
    }
    let recipients: Vec<String> = match recipients {
        Some(list) => list.iter().map(|r| r.to_string()).collect(),
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
    let mut record = LogRecord::attempt(kind, reception.node_id, info, site, response);
    if let Some(facts) = facts {
        if !facts.egress_source.is_empty() {
            record = record.with_egress(&facts.egress_pool, &facts.egress_source);
        }
        if let Some((name, addr)) = &facts.peer {
            record = record.with_peer(name, addr);
        }
        if let Some(addr) = &facts.source_address {
            record = record.with_source_address(SourceAddress::new(addr));
        }
        if let Some((cipher, version, subject)) = &facts.tls {
            record = record.with_tls(cipher, version, subject.clone());
        }
        if let Some(session) = facts.session_id {
            record = record.with_session_id(session);
        }
        if let Some(protocol) = facts.delivery_protocol {
            record = record.with_delivery_protocol(protocol);
        }
    }
    reception.log_for_message(record, msg).await;
}

/// Remove a finished message from both spools.
pub async fn remove(mgr: &QueueManager, msg: &Message) {
    let id = msg.id();
    let (meta, data) = tokio::join!(mgr.reception.meta.remove(id), mgr.reception.data.remove(id));
    for result in [meta, data] {
        if let Err(err) = result
            && !matches!(err, tern_spool::SpoolError::NotFound(_))
        {
            tracing::error!("removing {id} from the spool: {err}");
        }
    }
}

/// Log a TransientFailure and requeue with backoff.
pub async fn transient(
    mgr: &Arc<QueueManager>,
    msg: Message,
    queue: &str,
    site: &str,
    response: Response,
    facts: Option<&AttemptFacts>,
) {
    let how = Requeue::after_transient_failure(&response);
    log(
        mgr,
        RecordType::TransientFailure,
        &msg,
        queue,
        site,
        response,
        facts,
    )
    .await;
    requeue(mgr, msg, how, queue).await;
}

/// Log a Bounce and remove the message.
pub async fn bounce(
    mgr: &Arc<QueueManager>,
    msg: Message,
    queue: &str,
    site: &str,
    response: Response,
    facts: Option<&AttemptFacts>,
) {
    log(mgr, RecordType::Bounce, &msg, queue, site, response, facts).await;
    remove(mgr, &msg).await;
}

/// Put `msg` back into its scheduled queue (which `requeue_message` may
/// change), or expire it.
pub async fn requeue(mgr: &Arc<QueueManager>, msg: Message, how: Requeue, old_queue: &str) {
    if mgr.shutting_down() {
        // Everything accepted is in the spool; recovery reschedules it.
        persist(mgr, &msg).await;
        return;
    }
    if let Some(rejection) = requeue_event(mgr, &msg, &how).await {
        log(
            mgr,
            RecordType::Bounce,
            &msg,
            old_queue,
            "",
            rejection,
            None,
        )
        .await;
        remove(mgr, &msg).await;
        return;
    }
    let queue = match msg.queue_name() {
        Ok(queue) => queue,
        Err(err) => {
            tracing::error!("message {}: {err}; keeping its old queue", msg.id());
            old_queue.to_string()
        }
    };
    if queue == "null" {
        remove(mgr, &msg).await;
        return;
    }
    if queue != old_queue {
        // Rebound by requeue_message: due at once in its new queue (§7.6).
        if how.increment {
            msg.increment_num_attempts();
        }
        persist(mgr, &msg).await;
        mgr.with_scheduled(&queue, |q| q.push_now(msg));
        return;
    }
    let config = match config_for(mgr, &queue).await {
        Ok(config) => config,
        Err(err) => {
            tracing::error!("{err}; retrying {} with the default schedule", msg.id());
            Arc::new(tern_queue::QueueConfig::default())
        }
    };
    let schedule = RetrySchedule::from_config(&config);
    let scheduling = scheduling_of(&msg);
    let now = SystemTime::now();
    let created = msg.id().created();
    let decision = match how.delay {
        Some(delay) if !how.increment => {
            let due = now + delay;
            let expiry = match scheduling.as_ref().and_then(|s| s.expires) {
                Some(expires) => check_scheduled_expiry(due, expires),
                None => check_max_age_on_requeue(created, due, config.max_age),
            };
            match expiry {
                Some(expiry) => RetryDecision::Expire(expiry),
                None => RetryDecision::Retry {
                    next_due: due,
                    num_attempts: msg.num_attempts() as u32,
                },
            }
        }
        _ => schedule.after_failure(
            msg.num_attempts() as u32,
            created,
            now,
            scheduling.as_ref(),
            &mut rand::rng(),
        ),
    };
    match decision {
        RetryDecision::Expire(expiry) => {
            let response = Response::new(
                tern_queue::backoff::Expiry::CODE,
                tern_log::EnhancedCode::parse("5.4.7"),
                expiry.content(),
            );
            log(
                mgr,
                RecordType::Expiration,
                &msg,
                &queue,
                "",
                response,
                None,
            )
            .await;
            remove(mgr, &msg).await;
        }
        RetryDecision::Retry {
            next_due,
            num_attempts,
        } => {
            let attempts = num_attempts.min(u16::MAX as u32) as u16;
            msg.set_num_attempts(attempts);
            if !how.logged {
                let response =
                    Response::new(400, None, delayed_content(how.context, now, next_due));
                log(mgr, RecordType::Delayed, &msg, &queue, "", response, None).await;
            }
            persist(mgr, &msg).await;
            let waiting = Waiting {
                id: msg.id(),
                attempts,
            };
            drop(msg);
            mgr.with_scheduled(&queue, |q| q.insert_waiting(next_due, waiting));
        }
    }
}

/// Write back whatever the spool does not have yet.
pub async fn persist(mgr: &QueueManager, msg: &Message) {
    let id = msg.id();
    if msg.is_data_dirty() {
        match mgr.reception.data.store(id, msg.data()).await {
            Ok(()) => msg.mark_data_clean(),
            Err(err) => tracing::error!("writing the body of {id} back to the spool: {err}"),
        }
    }
    if msg.is_meta_dirty() {
        let bytes = bytes::Bytes::from(msg.meta_spool_bytes());
        match mgr.reception.meta.store(id, bytes).await {
            Ok(()) => msg.mark_meta_clean(),
            Err(err) => tracing::error!("writing the metadata of {id} back to the spool: {err}"),
        }
    }
}

/// Fire `requeue_message` when the policy has a handler. Returns the
/// bounce response when a handler called `kumo.reject`.
async fn requeue_event(mgr: &QueueManager, msg: &Message, how: &Requeue) -> Option<Response> {
    if !mgr
        .engine
        .has_handler("requeue_message")
        .await
        .unwrap_or(false)
    {
        return None;
    }
    let m = msg.clone();
    let response = how.response.clone();
    let context = vec![how.context.to_string()];
    let increment = how.increment;
    let delay = how.delay.map(|d| d.as_secs_f64());
    let result = mgr
        .engine
        .dispatch(
            "requeue_message",
            move |lua| (m, response, context, increment, delay).into_lua_multi(lua),
            |_, _| Ok(()),
        )
        .await;
    match result {
        Ok(_) => None,
        Err(err) => match err.rejection() {
            Some(rejection) => Some(rejection_response(rejection)),
            None => {
                tracing::error!("requeue_message for {}: {err}", msg.id());
                None
            }
        },
    }
}

/// The log response for a `kumo.reject(code, text)` raised by a policy
/// event during delivery (`requeue_message`, custom Lua `send`).
pub fn rejection_response(rejection: &tern_policy::Rejection) -> Response {
    Response::from_smtp_reply(&format!("{} {}", rejection.code, rejection.message))
        .unwrap_or_else(|| Response::new(rejection.code, None, rejection.message.clone()))
}

/// The message's `msg:set_scheduling` constraints, if any (§21).
pub fn scheduling_of(msg: &Message) -> Option<Scheduling> {
    msg.scheduling()
        .and_then(|value| serde_json::from_value(value).ok())
}
