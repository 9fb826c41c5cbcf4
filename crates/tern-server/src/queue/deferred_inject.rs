//! The `deferred_queue` listener option (§3.7): the second half of SMTP
//! reception, run after the client already has its `250`.
//!
//! A listener with `deferred_queue = true` spools each message into
//! [`DEFERRED_SMTP_INJECT_QUEUE`] without running
//! `smtp_server_message_received`. When the message comes due there, this
//! module fires `smtp_server_message_deferred_inject(msg, conn_meta)`
//! (the connection metadata is rebuilt from the message's own meta) and
//! then rebinds the message into the queue its metadata now names:
//!
//! * the event returns → a `DeferredInjectionRebind` record, and the
//!   message is due at once in its real scheduled queue;
//! * `kumo.reject` with a 5xx code → `Bounce`, removed from the spool;
//! * any other error → `TransientFailure`, retried from this queue, whose
//!   configuration is fixed (one minute base retry, default backoff, one
//!   week `max_age`) and never asks `get_queue_config`.
//!
//! Events run concurrently, bounded by [`QueueManager::deferred_inject_slots`],
//! so a slow handler (DKIM signing, say) does not serialise the queue.

use super::QueueManager;
use super::disposition::{self, rejection_response};
use super::scheduled::internal;
use crate::conn_meta::ConnectionMeta;
use mlua::IntoLuaMulti;
use std::sync::Arc;
use std::time::Duration;
use tern_log::{RecordType, Response};
use tern_message::Message;
use tern_queue::QueueConfig;

/// The scheduled queue of messages accepted by a `deferred_queue` listener.
pub const DEFERRED_SMTP_INJECT_QUEUE: &str = "deferred_smtp_inject.kumomta.internal";

/// The `site` of this queue's records (KumoMTA's ready-queue name for it).
const SITE: &str = "unspecified->deferred_smtp_inject.kumomta.internal@defersmtpinject";

/// How the rebind records name the step that moved the message.
const PROTOCOL: &str = "DeferredSmtpInjection";

/// The fixed configuration of [`DEFERRED_SMTP_INJECT_QUEUE`].
pub fn queue_config() -> QueueConfig {
    QueueConfig {
        retry_interval: Duration::from_secs(60),
        ..QueueConfig::default()
    }
}

/// Run the deferred half of reception for `msg`, on its own task once a
/// slot is free (waiting for the slot is the queue's back-pressure).
pub async fn dispatch(mgr: &Arc<QueueManager>, msg: Message) {
    let Ok(slot) = mgr.deferred_inject_slots.clone().acquire_owned().await else {
        return; // the semaphore is never closed
    };
    let mgr = mgr.clone();
    tokio::spawn(async move {
        inject(&mgr, msg).await;
        drop(slot);
    });
}

async fn inject(mgr: &Arc<QueueManager>, msg: Message) {
    // Keep what the spool has, so a failed attempt can be retried from the
    // message as it was received (a handler may have signed or edited it
    // before failing).
    let saved_data = msg.data();
    let saved_meta = msg.meta();
    // The `queue` meta only parked the message here; the event (or the
    // normal rules on tenant/campaign/domain) decides where it goes next.
    if msg.get_meta_str("queue").as_deref() == Some(DEFERRED_SMTP_INJECT_QUEUE) {
        msg.set_meta("queue", serde_json::Value::Null);
    }
    let conn_meta = ConnectionMeta::default();
    conn_meta.merge(&saved_meta);
    let m = msg.clone();
    let result = mgr
        .engine
        .dispatch(
            "smtp_server_message_deferred_inject",
            move |lua| (m, conn_meta).into_lua_multi(lua),
            |_, _| Ok(()),
        )
        .await;
    let failure = match result {
        Ok(_) => match msg.queue_name() {
            Ok(queue) if queue == DEFERRED_SMTP_INJECT_QUEUE => Some(internal(
                451,
                "4.4.4",
                "KumoMTA internal: smtp_server_message_deferred_inject left the message \
                 in deferred_smtp_inject.kumomta.internal",
            )),
            Ok(queue) => {
                rebind(mgr, msg, queue).await;
                return;
            }
            Err(err) => Some(internal(
                451,
                "4.4.4",
                &format!("KumoMTA internal: cannot compute the queue name: {err}"),
            )),
        },
        Err(err) => match err.rejection() {
            Some(rejection) if rejection.code >= 500 => {
                let response = rejection_response(rejection);
                disposition::bounce(mgr, msg, DEFERRED_SMTP_INJECT_QUEUE, SITE, response, None)
                    .await;
                return;
            }
            Some(rejection) => Some(rejection_response(rejection)),
            None => Some(internal(
                451,
                "4.4.4",
                &format!("KumoMTA internal: smtp_server_message_deferred_inject: {err}"),
            )),
        },
    };
    if let Some(response) = failure {
        msg.set_data(saved_data);
        for (key, _) in msg.meta() {
            if !saved_meta.contains_key(&key) {
                msg.set_meta(&key, serde_json::Value::Null);
            }
        }
        for (key, value) in saved_meta {
            msg.set_meta(&key, value);
        }
        disposition::transient(mgr, msg, DEFERRED_SMTP_INJECT_QUEUE, SITE, response, None).await;
    }
}

/// The event accepted the message: log the move, then make it due at once
/// in `queue` (or drop it when the policy chose the `null` queue).
async fn rebind(mgr: &Arc<QueueManager>, msg: Message, queue: String) {
    let response = Response::new(
        250,
        None,
        format!("Rebound from {DEFERRED_SMTP_INJECT_QUEUE} to {queue}"),
    );
    let facts = disposition::AttemptFacts {
        delivery_protocol: Some(PROTOCOL),
        ..Default::default()
    };
    disposition::log(
        mgr,
        RecordType::DeferredInjectionRebind,
        &msg,
        &queue,
        SITE,
        response,
        Some(&facts),
    )
    .await;
    if queue == "null" {
        disposition::remove(mgr, &msg).await;
        return;
    }
    disposition::persist(mgr, &msg).await;
    mgr.with_scheduled(&queue, |q| q.push_now(msg));
}
