//! Spool recovery at startup (§2.3, §7.4).
//!
//! Walks the meta spool once, with up to `kumo.set_spoolin_threads(n)`
//! entries in progress at a time. For each entry: skip it if its id was
//! created after the process started (a live message, written by a log
//! hook or a listener while the walk runs); remove it from both spools
//! with a logged reason if it cannot be read or parsed; fire
//! `spool_message_enumerated` when the policy handles it (writing back
//! what the handler changed; an error aborts startup); compute the queue;
//! infer the attempt counter from the message age; and either expire it or
//! file it in its scheduled queue as a [`Waiting`] entry, due at the next
//! slot of its retry schedule or at the time the handler set with
//! `msg:set_due`. The body is not read: it stays on disk until the message
//! is due.
//!
//! Each entry is handled start to finish by one worker, so the per-message
//! order of these steps is the same as with a single worker; only
//! different messages overlap.

use super::QueueManager;
use super::disposition;
use super::scheduled::{Waiting, config_for};
use mlua::IntoLuaMulti;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};
use tern_log::{RecordType, Response};
use tern_message::Message;
use tern_queue::RetrySchedule;
use tern_spool::{Enumeration, SpoolEntry, SpoolError};

#[derive(Clone, Copy, Debug, Default)]
pub struct RecoveryStats {
    pub queued: u64,
    pub expired: u64,
    /// Removed because they could not be read, parsed or queued.
    pub corrupt: u64,
    /// Left in the spool because `get_queue_config` failed for their queue.
    pub failed: u64,
    /// Created after the process started: live messages, not recovered.
    pub ignored: u64,
    pub seconds: f64,
}

/// How recovery runs.
#[derive(Clone, Copy, Debug)]
pub struct RecoveryOptions {
    /// When the process started: entries whose id is newer are live.
    pub started: SystemTime,
    /// Entries processed concurrently (`kumo.set_spoolin_threads`).
    pub workers: usize,
}

/// How often the "still enumerating" line is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Counters {
    processed: AtomicU64,
    queued: AtomicU64,
    expired: AtomicU64,
    corrupt: AtomicU64,
    failed: AtomicU64,
    ignored: AtomicU64,
}

/// What the workers share.
struct Walk {
    mgr: Arc<QueueManager>,
    entries: tokio::sync::Mutex<Enumeration>,
    counters: Counters,
    /// Per queue: its retry schedule, or None when get_queue_config failed.
    schedules: Mutex<HashMap<String, Option<RetrySchedule>>>,
    /// The first error that aborts startup; the other workers stop at
    /// their next entry.
    abort: OnceLock<String>,
    enumerated_handler: bool,
    options: RecoveryOptions,
    now: SystemTime,
}

/// Walk the meta spool and queue every message. An error raised by
/// `spool_message_enumerated` aborts startup (§2.3 step 2).
pub async fn recover(
    mgr: &Arc<QueueManager>,
    options: RecoveryOptions,
) -> Result<RecoveryStats, String> {
    let started = Instant::now();
    let enumerated_handler = mgr
        .engine
        .has_handler("spool_message_enumerated")
        .await
        .unwrap_or(false);
    let workers = options.workers.max(1);
    tracing::info!("start_spool: enumerating the meta spool with {workers} spool-in workers");
    let walk = Arc::new(Walk {
        mgr: mgr.clone(),
        entries: tokio::sync::Mutex::new(mgr.reception.meta.enumerate()),
        counters: Counters::default(),
        schedules: Mutex::new(HashMap::new()),
        abort: OnceLock::new(),
        enumerated_handler,
        options,
        now: SystemTime::now(),
    });
    let progress = tokio::spawn(report_progress(walk.clone()));
    let tasks: Vec<_> = (0..workers)
        .map(|_| tokio::spawn(work(walk.clone())))
        .collect();
    for task in tasks {
        if let Err(err) = task.await {
            let _ = walk.abort.set(format!("a spool-in worker failed: {err}"));
        }
    }
    progress.abort();
    if let Some(err) = walk.abort.get() {
        return Err(err.clone());
    }
    let c = &walk.counters;
    Ok(RecoveryStats {
        queued: c.queued.load(Ordering::Relaxed),
        expired: c.expired.load(Ordering::Relaxed),
        corrupt: c.corrupt.load(Ordering::Relaxed),
        failed: c.failed.load(Ordering::Relaxed),
        ignored: c.ignored.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
    })
}

async fn report_progress(walk: Arc<Walk>) {
    let mut ticker = tokio::time::interval(PROGRESS_EVERY);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let c = &walk.counters;
        tracing::info!(
            "start_spool: still enumerating. {} items processed so far \
             ({} queued, {} expired, {} removed as corrupt)",
            c.processed.load(Ordering::Relaxed),
            c.queued.load(Ordering::Relaxed),
            c.expired.load(Ordering::Relaxed),
            c.corrupt.load(Ordering::Relaxed),
        );
    }
}

/// One spool-in worker: takes entries until the walk ends or aborts.
async fn work(walk: Arc<Walk>) {
    loop {
        if walk.abort.get().is_some() {
            return;
        }
        let item = walk.entries.lock().await.next().await;
        let Some(item) = item else { return };
        if let Err(err) = process(&walk, item).await {
            let _ = walk.abort.set(err);
            return;
        }
        walk.counters.processed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Steps 1–6 of §2.3 for one entry. `Err` aborts startup.
async fn process(walk: &Walk, item: Result<SpoolEntry, SpoolError>) -> Result<(), String> {
    let mgr = &walk.mgr;
    let counters = &walk.counters;
    let entry = match item {
        Ok(entry) => entry,
        Err(SpoolError::Unreadable(unreadable)) => {
            let outcome = match mgr.reception.meta.remove_unreadable(&unreadable).await {
                Ok(()) => "removed it".to_string(),
                Err(err) => format!("could not remove it: {err}"),
            };
            tracing::error!(
                "spool recovery: meta spool entry {} is unreadable ({}); {outcome}",
                unreadable.location,
                unreadable.reason
            );
            counters.corrupt.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        Err(err) => {
            // Not tied to one entry (a directory or iterator failed), so
            // there is nothing to remove; what it hid stays for next time.
            tracing::error!("spool recovery: enumeration error: {err}");
            counters.corrupt.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
    };
    if entry.id.created() >= walk.options.started {
        counters.ignored.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    let msg = match Message::from_meta_spool_only(entry.id, &entry.data) {
        Ok(msg) => msg,
        Err(err) => {
            tracing::error!("spool recovery: {err}; removing it from both spools");
            let _ = mgr.reception.meta.remove(entry.id).await;
            let _ = mgr.reception.data.remove(entry.id).await;
            counters.corrupt.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
    };
    if walk.enumerated_handler {
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
            match mgr.reception.meta.store(msg.id(), bytes).await {
                Ok(()) => msg.mark_meta_clean(),
                Err(err) => tracing::error!(
                    "spool recovery: writing back the metadata spool_message_enumerated \
                     changed for {}: {err}",
                    msg.id()
                ),
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
            counters.corrupt.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
    };
    if queue == "null" {
        disposition::remove(mgr, &msg).await;
        return Ok(());
    }
    let known = walk.schedules.lock().get(&queue).copied();
    let schedule = match known {
        Some(known) => known,
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
            walk.schedules.lock().insert(queue.clone(), known);
            known
        }
    };
    let Some(schedule) = schedule else {
        counters.failed.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    };
    let created = msg.id().created();
    let scheduling = disposition::scheduling_of(&msg);
    // A due time set by `spool_message_enumerated` (`msg:set_due`) takes
    // the place of the computed one. The attempt counter and the max_age
    // check (on the message's age now) are unchanged; the delivery window
    // (`set_scheduling`) and its expiry apply to the chosen time as they
    // would to the computed one. A past time is due at once.
    let chosen_due = msg.due();
    // A per-message `expires` takes the place of max_age (§7.3).
    let per_message_expiry = scheduling.as_ref().is_some_and(|s| s.expires.is_some());
    let effective = if per_message_expiry {
        RetrySchedule {
            max_age: Duration::MAX,
            ..schedule
        }
    } else {
        schedule
    };
    let decision = effective
        .after_restart(created, walk.now)
        .and_then(|(attempts, computed)| {
            let due = chosen_due.unwrap_or(computed);
            let Some(sched) = &scheduling else {
                return Ok((attempts, due));
            };
            let due = sched.adjust(due);
            match sched
                .expires
                .and_then(|expires| tern_queue::backoff::check_scheduled_expiry(due, expires))
            {
                Some(expiry) => Err(expiry),
                None => Ok((attempts, due)),
            }
        });
    match decision {
        Ok((attempts, due)) => {
            let waiting = Waiting {
                id: msg.id(),
                attempts: attempts.min(u16::MAX as u32) as u16,
            };
            mgr.with_scheduled(&queue, |q| q.insert_waiting(due, waiting));
            counters.queued.fetch_add(1, Ordering::Relaxed);
        }
        Err(expiry) => {
            let content = expiry.content();
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
            counters.expired.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}
