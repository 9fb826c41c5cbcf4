//! Spool recovery at startup (§2.3, §7.4).
//!
//! Walks the meta spool once. For each entry: parse it (a corrupt entry is
//! removed from both spools with a logged reason), fire
//! `spool_message_enumerated` when the policy handles it, compute the
//! queue, infer the attempt counter from the message age, and either
//! expire it or file it in its scheduled queue as a [`Waiting`] entry. The
//! body is not read: it stays on disk until the message is due.

use super::QueueManager;
use super::disposition;
use super::scheduled::{Waiting, config_for};
use mlua::IntoLuaMulti;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tern_log::{RecordType, Response};
use tern_message::Message;
use tern_queue::RetrySchedule;

#[derive(Clone, Copy, Debug, Default)]
pub struct RecoveryStats {
    pub queued: u64,
    pub expired: u64,
    pub corrupt: u64,
    /// Left in the spool because `get_queue_config` failed for their queue.
    pub failed: u64,
    pub seconds: f64,
}

/// Walk the meta spool and queue every message. An error raised by
/// `spool_message_enumerated` aborts startup (§2.3 step 2).
pub async fn recover(mgr: &Arc<QueueManager>) -> Result<RecoveryStats, String> {
    let started = Instant::now();
    let mut stats = RecoveryStats::default();
    let enumerated_handler = mgr
        .engine
        .has_handler("spool_message_enumerated")
        .await
        .unwrap_or(false);
    // Per queue: its retry schedule, or None when get_queue_config failed.
    let mut schedules: HashMap<String, Option<RetrySchedule>> = HashMap::new();
    let mut last_progress = Instant::now();
    let mut entries = mgr.reception.meta.enumerate();
    let now = SystemTime::now();
    while let Some(entry) = entries.next().await {
        if last_progress.elapsed() >= std::time::Duration::from_secs(30) {
            last_progress = Instant::now();
            tracing::info!(
                "spool recovery: still enumerating; {} messages queued so far",
                stats.queued
            );
        }
        let entry = match entry {
            Ok(entry) => entry,
            Err(err) => {
                tracing::error!("spool enumeration: {err}");
                stats.corrupt += 1;
                continue;
            }
        };
        let msg = match Message::from_meta_spool_only(entry.id, &entry.data) {
            Ok(msg) => msg,
            Err(err) => {
                tracing::error!("{err}; removing it from the spool");
                let _ = mgr.reception.meta.remove(entry.id).await;
                let _ = mgr.reception.data.remove(entry.id).await;
                stats.corrupt += 1;
                continue;
            }
        };
        if enumerated_handler {
            let m = msg.clone();
            if let Err(err) = mgr
                .engine
                .dispatch(
                    "spool_message_enumerated",
                    move |lua| m.into_lua_multi(lua),
                    |_, _| Ok(()),
                )
                .await
            {
                return Err(format!(
                    "spool_message_enumerated failed for {}: {err}",
                    msg.id()
                ));
            }
            if msg.is_meta_dirty() {
                let bytes = bytes::Bytes::from(msg.meta_spool_bytes());
                if mgr.reception.meta.store(msg.id(), bytes).await.is_ok() {
                    msg.mark_meta_clean();
                }
            }
        }
        let queue = match msg.queue_name() {
            Ok(queue) => queue,
            Err(err) => {
                let response = Response::new(
                    551,
                    tern_log::EnhancedCode::parse("5.1.3"),
                    format!("Failed to compute queue name: {err}"),
                );
                disposition::log(mgr, RecordType::Expiration, &msg, "", "", response, None).await;
                disposition::remove(mgr, &msg).await;
                stats.corrupt += 1;
                continue;
            }
        };
        if queue == "null" {
            disposition::remove(mgr, &msg).await;
            continue;
        }
        let schedule = match schedules.get(&queue) {
            Some(known) => *known,
            None => {
                let known = match config_for(mgr, &queue).await {
                    Ok(config) => Some(RetrySchedule::from_config(&config)),
                    Err(err) => {
                        tracing::error!(
                            "{err}; its messages stay in the spool untouched: \
                             fix the policy and restart"
                        );
                        None
                    }
                };
                schedules.insert(queue.clone(), known);
                known
            }
        };
        let Some(schedule) = schedule else {
            stats.failed += 1;
            continue;
        };
        let created = msg.id().created();
        let scheduling = disposition::scheduling_of(&msg);
        let decision = schedule.after_restart(created, now).map(|(attempts, due)| {
            let due = match &scheduling {
                Some(sched) => sched.adjust(due),
                None => due,
            };
            (attempts, due)
        });
        let expired_by_schedule = match (&scheduling, &decision) {
            (Some(sched), Some((_, due))) => sched
                .expires
                .and_then(|expires| tern_queue::backoff::check_scheduled_expiry(*due, expires)),
            _ => None,
        };
        match (decision, expired_by_schedule) {
            (Some((attempts, due)), None) => {
                let waiting = Waiting {
                    id: msg.id(),
                    attempts: attempts.min(u16::MAX as u32) as u16,
                };
                mgr.with_scheduled(&queue, |q| q.insert_waiting(due, waiting));
                stats.queued += 1;
            }
            (_, expiry) => {
                let content = match expiry {
                    Some(expiry) => expiry.content(),
                    None => format!(
                        "message is older than max_age={} at spool recovery",
                        humantime::format_duration(schedule.max_age)
                    ),
                };
                let response = Response::new(551, tern_log::EnhancedCode::parse("5.4.7"), content);
                disposition::log(
                    mgr,
                    RecordType::Expiration,
                    &msg,
                    &queue,
                    "",
                    response,
                    None,
                )
                .await;
                disposition::remove(mgr, &msg).await;
                stats.expired += 1;
            }
        }
    }
    stats.seconds = started.elapsed().as_secs_f64();
    Ok(stats)
}
