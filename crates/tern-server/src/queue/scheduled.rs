//! Scheduled queues (§5.3, §6, §7): one per `campaign:tenant@domain`,
//! created on demand, reaped when idle.
//!
//! Each queue holds two kinds of entries: messages due now (just received,
//! still in memory) and messages waiting for a retry, which are only a
//! [`Waiting`] entry (spool id and attempt counter) in a timer wheel. A
//! message received with a due time in the future (`msg:set_due` in
//! `smtp_server_message_received` or `http_message_generated`) waits in
//! the wheel the same way ([`ScheduledQueue::push_now`]). One
//! maintainer task per queue promotes due messages towards the ready
//! queues ([`promote`]), refreshes the queue configuration by TTL or
//! epoch, and removes the queue once it has been empty for `reap_interval`.
//!
//! While a spool is latched unhealthy (and
//! `kumo.suspend_delivery_when_spool_unhealthy` is on), the maintainer
//! holds what falls due instead of promoting it: each message gets a
//! `Delayed` record and waits for the next slot of its retry schedule
//! ([`hold`]). A held message the spool does not have (`deferred_spool`)
//! cannot become a spool id in the wheel, so it waits in memory instead,
//! as does a `deferred_spool` message received with a future due time.

use super::disposition::{self, Requeue};
use super::ready::{self, Target};
use super::{QueueManager, policy};
use futures::StreamExt;
use mlua::IntoLuaMulti;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tern_log::Response;
use tern_message::Message;
use tern_queue::config::{ConfigRefreshStrategy, DeliveryProtocol};
use tern_queue::ready_name::{SMTP_CLIENT, lua_label, mx_list_site_name, ready_queue_name};
use tern_queue::{QueueConfig, TimerWheel, WeightedRoundRobin};
use tern_types::{QueueName, SpoolId};
use tokio::sync::Notify;

/// What a message waiting for a retry costs in memory: its spool id and
/// attempt counter (the due time lives in the wheel's slot).
#[derive(Clone, Copy, Debug)]
pub struct Waiting {
    pub id: SpoolId,
    pub attempts: u16,
}

/// What [`ScheduledQueue::sample`] saw.
pub(crate) struct Sample {
    pub messages: Vec<(Option<SystemTime>, Message)>,
    pub waiting: Vec<(SystemTime, Waiting)>,
    pub len: usize,
    pub idle_for: Duration,
}

/// What [`ScheduledQueue::take_all`] took out of a queue.
pub(crate) struct Taken {
    pub messages: Vec<(Option<SystemTime>, Message)>,
    pub waiting: Vec<(SystemTime, Waiting)>,
}

/// The queue's configuration as last loaded.
pub struct LoadedConfig {
    pub config: Arc<QueueConfig>,
    loaded_at: Instant,
    epoch: u64,
}

struct State {
    due_now: Vec<Message>,
    wheel: TimerWheel<Waiting>,
    /// Messages due later that the spool does not fully have
    /// (`deferred_spool`), so they cannot wait as a [`Waiting`] entry: the
    /// ones held while a spool is unhealthy ([`hold`]) and the ones received
    /// with a future due time ([`ScheduledQueue::push_now`]). Each with the
    /// time it is due; [`ScheduledQueue::collect_unspooled`] saves them at
    /// shutdown.
    unspooled_later: Vec<(SystemTime, Message)>,
    config: Option<LoadedConfig>,
    wrr: WeightedRoundRobin,
    last_active: Instant,
}

pub struct ScheduledQueue {
    pub name: String,
    state: Mutex<State>,
    notify: Notify,
}

/// Granularity of the retry timers. A one-second tick keeps the
/// `retry_interval = "5s"` schedule honest and costs nothing for long
/// delays (the wheel is hierarchical).
const TICK: Duration = Duration::from_secs(1);
/// Messages promoted per maintainer turn before it yields.
const PROMOTE_BATCH: usize = 1024;
/// Messages kept in memory waiting for promotion before the rest wait on
/// disk (see [`ScheduledQueue::push_now`]).
const MAX_DUE_IN_MEMORY: usize = 4096;
/// Due messages read back from the spool concurrently.
const LOAD_CONCURRENCY: usize = 32;

impl ScheduledQueue {
    pub fn new(name: &str) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_string(),
            state: Mutex::new(State {
                due_now: Vec::new(),
                wheel: TimerWheel::with_tick(TICK),
                unspooled_later: Vec::new(),
                config: None,
                wrr: WeightedRoundRobin::new(),
                last_active: Instant::now(),
            }),
            notify: Notify::new(),
        })
    }

    /// A message to promote as soon as possible, or at its due time when
    /// the policy set one in the future (`msg:set_due` at reception). A
    /// message that waits and is fully in the spool becomes a [`Waiting`]
    /// entry in the wheel and its body is dropped, so a held backlog costs
    /// its ids; one the spool lacks (`deferred_spool`) waits in memory.
    ///
    /// When promotion falls far behind reception, messages that are
    /// already in the spool wait as [`Waiting`] entries (due now) instead,
    /// so a backlog costs its ids, not its bodies.
    pub fn push_now(&self, msg: Message) {
        let now = SystemTime::now();
        let spooled = !msg.is_data_dirty() && !msg.is_meta_dirty();
        // A due time less than one tick away counts as now: the wheel does
        // not time anything more finely than a tick, and `set_due` from an
        // `os.date` string has one-second precision, so "now" written that
        // way is often a fraction of a second ahead.
        let later = msg
            .due()
            .filter(|due| due.duration_since(now).is_ok_and(|wait| wait >= TICK));
        let mut state = self.state.lock();
        state.last_active = Instant::now();
        let waiting = Waiting {
            id: msg.id(),
            attempts: msg.num_attempts(),
        };
        match later {
            Some(due) if spooled => state.wheel.insert(due, waiting),
            Some(due) => state.unspooled_later.push((due, msg)),
            None if spooled && state.due_now.len() >= MAX_DUE_IN_MEMORY => {
                state.wheel.insert(now, waiting)
            }
            None => state.due_now.push(msg),
        }
        drop(state);
        // Wakes the maintainer, which also recomputes its sleep deadline.
        self.notify.notify_one();
    }

    /// A message (already in the spool, body dropped) due at `due`.
    pub fn insert_waiting(&self, due: SystemTime, waiting: Waiting) {
        let mut state = self.state.lock();
        state.wheel.insert(due, waiting);
        state.last_active = Instant::now();
        drop(state);
        self.notify.notify_one();
    }

    pub fn len(&self) -> usize {
        let state = self.state.lock();
        state.due_now.len() + state.wheel.len() + state.unspooled_later.len()
    }

    /// Copies of the messages waiting here that the spool does not fully
    /// have (`deferred_spool`), for the save at shutdown.
    pub(crate) fn collect_unspooled(&self, into: &mut Vec<Message>) {
        let state = self.state.lock();
        let in_memory = state
            .due_now
            .iter()
            .chain(state.unspooled_later.iter().map(|(_, m)| m));
        into.extend(
            in_memory
                .filter(|m| m.is_data_dirty() || m.is_meta_dirty())
                .cloned(),
        );
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Take everything the queue holds (admin bounce and rebind): the
    /// messages in memory, and the entries that wait on disk, each with
    /// the time it was due (`None`: due now).
    pub(crate) fn take_all(&self) -> Taken {
        let mut state = self.state.lock();
        let mut messages: Vec<(Option<SystemTime>, Message)> =
            state.due_now.drain(..).map(|m| (None, m)).collect();
        messages.extend(
            std::mem::take(&mut state.unspooled_later)
                .into_iter()
                .map(|(due, m)| (Some(due), m)),
        );
        let waiting = state.wheel.drain_all_with_due();
        Taken { messages, waiting }
    }

    /// Up to `limit` of the queue's messages without taking them out (admin
    /// inspection): the ones in memory as copies, the ones waiting on
    /// disk as their entries; each with its due time (`None`: due now).
    /// Also the number held and how long ago the queue last changed.
    pub(crate) fn sample(&self, limit: usize) -> Sample {
        let state = self.state.lock();
        let messages: Vec<(Option<SystemTime>, Message)> = state
            .due_now
            .iter()
            .map(|m| (None, m.clone()))
            .chain(
                state
                    .unspooled_later
                    .iter()
                    .map(|(due, m)| (Some(*due), m.clone())),
            )
            .take(limit)
            .collect();
        let room = limit - messages.len();
        let waiting = state
            .wheel
            .sample_with_due(room)
            .into_iter()
            .map(|(due, entry)| (due, *entry))
            .collect();
        Sample {
            messages,
            waiting,
            len: state.due_now.len() + state.wheel.len() + state.unspooled_later.len(),
            idle_for: state.last_active.elapsed(),
        }
    }

    /// Bytes the timer wheel has allocated (for the memory benchmark).
    pub fn wheel_bytes(&self) -> usize {
        self.state.lock().wheel.allocated_bytes()
    }

    pub fn cached_config(&self) -> Option<Arc<QueueConfig>> {
        self.state.lock().config.as_ref().map(|c| c.config.clone())
    }

    fn config_is_stale(&self, epoch: u64) -> bool {
        let state = self.state.lock();
        match &state.config {
            None => true,
            Some(loaded) => match loaded.config.refresh_strategy {
                ConfigRefreshStrategy::Ttl => {
                    loaded.loaded_at.elapsed() >= loaded.config.refresh_interval
                }
                ConfigRefreshStrategy::Epoch => loaded.epoch != epoch,
            },
        }
    }

    fn store_config(&self, config: Arc<QueueConfig>, epoch: u64) {
        self.state.lock().config = Some(LoadedConfig {
            config,
            loaded_at: Instant::now(),
            epoch,
        });
    }
}

/// The configuration of queue `name`: the cached one when fresh, else
/// loaded through `get_queue_config` (and cached on the queue).
pub async fn config_for(mgr: &Arc<QueueManager>, name: &str) -> Result<Arc<QueueConfig>, String> {
    let epoch = mgr.engine.epoch().current();
    let queue = mgr.scheduled.lock().get(name).cloned();
    if let Some(queue) = &queue
        && !queue.config_is_stale(epoch)
        && let Some(config) = queue.cached_config()
    {
        return Ok(config);
    }
    let config = Arc::new(policy::queue_config(mgr, name).await?);
    if let Some(queue) = queue {
        queue.store_config(config.clone(), epoch);
    }
    Ok(config)
}

/// The maintainer task of one scheduled queue.
pub async fn maintain(mgr: Arc<QueueManager>, queue: Arc<ScheduledQueue>) {
    let mut shutdown = mgr.shutdown.clone();
    let mut batch = Vec::new();
    let mut waiting = Vec::new();
    loop {
        if mgr.shutting_down() {
            return;
        }
        let config = config_for(&mgr, &queue.name).await;
        {
            let now = SystemTime::now();
            let mut state = queue.state.lock();
            let take = state.due_now.len().min(PROMOTE_BATCH);
            batch.extend(state.due_now.drain(..take));
            state.wheel.pop_due_into(now, &mut waiting);
            if state.unspooled_later.iter().any(|(due, _)| *due <= now) {
                let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut state.unspooled_later)
                    .into_iter()
                    .partition(|(due, _)| *due <= now);
                state.unspooled_later = later;
                batch.extend(due.into_iter().map(|(_, msg)| msg));
            }
        }
        if !batch.is_empty() || !waiting.is_empty() {
            if let Some(reason) = mgr.delivery_suspended() {
                let msgs = std::mem::take(&mut batch);
                let ids = std::mem::take(&mut waiting);
                hold(&mgr, &queue, msgs, ids, config.as_ref(), &reason).await;
                continue;
            }
            let loaded = load_due(&mgr, &queue.name, std::mem::take(&mut waiting)).await;
            for msg in batch.drain(..).chain(loaded) {
                promote(&mgr, &queue, msg, config.as_ref()).await;
            }
            tokio::task::yield_now().await;
            continue;
        }

        let (deadline, idle_for) = {
            let state = queue.state.lock();
            let in_memory = state.unspooled_later.iter().map(|(due, _)| *due).min();
            let deadline = match (state.wheel.next_deadline(), in_memory) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            (deadline, state.last_active.elapsed())
        };
        let reap_after = config
            .as_ref()
            .map(|c| c.reap_interval)
            .unwrap_or(Duration::from_secs(600));
        if deadline.is_none() && idle_for >= reap_after && try_reap(&mgr, &queue) {
            return;
        }
        let mut sleep_for = reap_after.saturating_sub(idle_for).max(TICK);
        if let Some(deadline) = deadline {
            let until = deadline
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            sleep_for = sleep_for.min(until.max(Duration::from_millis(10)));
        }
        if let Ok(config) = &config
            && config.refresh_strategy == ConfigRefreshStrategy::Ttl
        {
            sleep_for = sleep_for.min(config.refresh_interval.max(TICK));
        }
        tokio::select! {
            _ = queue.notify.notified() => {}
            _ = tokio::time::sleep(sleep_for) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Drop the queue if it is still empty, under the map lock so that no
/// message can be inserted into a queue that is going away.
fn try_reap(mgr: &QueueManager, queue: &Arc<ScheduledQueue>) -> bool {
    let mut map = mgr.scheduled.lock();
    if !queue.is_empty() {
        return false;
    }
    if map.get(&queue.name).is_some_and(|q| Arc::ptr_eq(q, queue)) {
        map.remove(&queue.name);
    }
    tracing::debug!("reaped idle scheduled queue {}", queue.name);
    true
}

/// Read due messages back from the spool (meta and body), a few at a
/// time. An entry that cannot be read is logged and dropped from the
/// spool: there is nothing left to deliver.
async fn load_due(mgr: &Arc<QueueManager>, queue: &str, due: Vec<Waiting>) -> Vec<Message> {
    if due.is_empty() {
        return Vec::new();
    }
    let reception = &mgr.reception;
    futures::stream::iter(due)
        .map(|waiting| async move {
            let meta = reception.meta.load(waiting.id).await;
            let data = reception.data.load(waiting.id).await;
            match (meta, data) {
                (Ok(meta), Ok(data)) => {
                    match Message::from_spool(waiting.id, &meta, data.into()) {
                        Ok(msg) => {
                            msg.set_num_attempts(waiting.attempts);
                            Some(msg)
                        }
                        Err(err) => {
                            tracing::error!("queue {queue}: {err}; removing it from the spool");
                            let _ = reception.meta.remove(waiting.id).await;
                            let _ = reception.data.remove(waiting.id).await;
                            None
                        }
                    }
                }
                (meta, data) => {
                    let why = meta
                        .err()
                        .or(data.err())
                        .map(|e| e.to_string())
                        .unwrap_or_default();
                    tracing::error!(
                        "queue {queue}: message {} is due but cannot be read from the spool ({why}); \
                         removing what is left of it",
                        waiting.id
                    );
                    let _ = reception.meta.remove(waiting.id).await;
                    let _ = reception.data.remove(waiting.id).await;
                    None
                }
            }
        })
        .buffer_unordered(LOAD_CONCURRENCY)
        .filter_map(|m| async move { m })
        .collect()
        .await
}

/// The response of a `Delayed` record for a message held because a spool
/// is unhealthy (KumoMTA's wording).
pub fn spool_unhealthy_response(reason: &str) -> Response {
    internal(
        451,
        "4.4.4",
        &format!("KumoMTA internal: delivery suspended: spool unhealthy: {reason}"),
    )
}

/// When a message held for an unhealthy spool is due again: the next slot
/// of its retry schedule for the attempts it has made (no attempt is
/// counted, since none was made), moved into its delivery window. Taking
/// the normal schedule, rather than one fixed delay, keeps a spool full of
/// held messages from all coming due at the same moment.
pub fn held_until(
    schedule: &tern_queue::RetrySchedule,
    attempts: u16,
    scheduling: Option<&tern_queue::Scheduling>,
    now: SystemTime,
) -> SystemTime {
    let due = now + schedule.delay_for_attempt(u32::from(attempts)).max(TICK);
    match scheduling {
        Some(scheduling) => scheduling.adjust(due),
        None => due,
    }
}

/// Delivery is suspended (a spool is latched unhealthy): log a `Delayed`
/// record for every message that fell due and put it back for the next
/// slot of its schedule, without reading its body. Waiting entries are
/// read from the meta spool only for their record (reads still work on a
/// spool whose writes fail); one that cannot be read is held unlogged.
async fn hold(
    mgr: &Arc<QueueManager>,
    queue: &Arc<ScheduledQueue>,
    msgs: Vec<Message>,
    waiting: Vec<Waiting>,
    config: Result<&Arc<QueueConfig>, &String>,
    reason: &str,
) {
    let schedule = match config {
        Ok(config) => tern_queue::RetrySchedule::from_config(config),
        Err(_) => tern_queue::RetrySchedule::from_config(&QueueConfig::default()),
    };
    let response = spool_unhealthy_response(reason);
    let now = SystemTime::now();
    for msg in msgs {
        let scheduling = disposition::scheduling_of(&msg);
        let due = held_until(&schedule, msg.num_attempts(), scheduling.as_ref(), now);
        disposition::log(
            mgr,
            tern_log::RecordType::Delayed,
            &msg,
            &queue.name,
            "",
            response.clone(),
            None,
        )
        .await;
        if msg.is_data_dirty() || msg.is_meta_dirty() {
            queue.state.lock().unspooled_later.push((due, msg));
        } else {
            let entry = Waiting {
                id: msg.id(),
                attempts: msg.num_attempts(),
            };
            queue.state.lock().wheel.insert(due, entry);
        }
    }
    for entry in waiting {
        let msg = match mgr.reception.meta.load(entry.id).await {
            Ok(meta) => Message::from_meta_spool_only(entry.id, &meta).ok(),
            Err(_) => None,
        };
        let scheduling = msg.as_ref().and_then(disposition::scheduling_of);
        let due = held_until(&schedule, entry.attempts, scheduling.as_ref(), now);
        match msg {
            Some(msg) => {
                msg.set_num_attempts(entry.attempts);
                disposition::log(
                    mgr,
                    tern_log::RecordType::Delayed,
                    &msg,
                    &queue.name,
                    "",
                    response.clone(),
                    None,
                )
                .await;
            }
            None => tracing::warn!(
                "queue {}: holding {} while the spool is unhealthy ({reason}); \
                 its metadata could not be read for the Delayed record",
                queue.name,
                entry.id
            ),
        }
        queue.state.lock().wheel.insert(due, entry);
    }
}

/// Run `throttle_insert_ready_queue` when the policy has a handler;
/// `Some(wait)` when the handlers moved the message's due time later (as
/// `throttle:delay_message_if_throttled(msg)` does).
///
/// The scheduled queue's timers tick once a second, so a shorter delay
/// (a `10/s` throttle asks for 100 ms) is waited out here, pacing this
/// queue's promotion, and the event runs again: sending the message back
/// would make it due again at once (and spin), or a whole tick later (and
/// cap every fast throttle at one message a second).
///
/// A handler error is logged and the message goes on, keeping any delay
/// an earlier handler of the chain set: a broken throttle should not stop
/// delivery.
async fn insert_throttle(mgr: &QueueManager, msg: &Message) -> Option<Duration> {
    const EVENT: &str = "throttle_insert_ready_queue";
    if !mgr.engine.has_handler(EVENT).await.unwrap_or(false) {
        return None;
    }
    let before = msg.due();
    // Short waits are taken here for at most one tick in all; a handler
    // that keeps asking for "a moment more" then goes the requeue way, so
    // it cannot hold this queue's maintainer forever.
    let mut waited = Duration::ZERO;
    loop {
        let m = msg.clone();
        if let Err(err) = mgr
            .engine
            .dispatch(EVENT, move |lua| m.into_lua_multi(lua), |_, _| Ok(()))
            .await
        {
            tracing::error!("{EVENT} for {}: {err}", msg.id());
        }
        let after = msg.due();
        if after == before {
            return None;
        }
        let wait = after?.duration_since(SystemTime::now()).unwrap_or_default();
        if wait.is_zero() {
            // Due now after all (a handler that sets "now"): no delay,
            // and no loop.
            return None;
        }
        if wait >= TICK || waited + wait > TICK {
            return Some(wait);
        }
        waited += wait;
        msg.set_due(before);
        if mgr.shutting_down() {
            return None;
        }
        tokio::time::sleep(wait).await;
    }
}

/// Promotion (§7.1): from the scheduled queue to a ready queue (or, for
/// Maildir, straight to delivery).
async fn promote(
    mgr: &Arc<QueueManager>,
    queue: &Arc<ScheduledQueue>,
    msg: Message,
    config: Result<&Arc<QueueConfig>, &String>,
) {
    // Operator rules come first: a bounced message goes whatever its
    // schedule, and a suspended queue sends nothing on.
    if let Some(rule) = mgr.admin.bounce_for(&queue.name) {
        super::admin::bounce_message(mgr, &rule, msg, &queue.name).await;
        return;
    }
    if let Some(rule) = mgr.admin.suspension_for(&queue.name) {
        disposition::transient(mgr, msg, &queue.name, "", rule.response(), None).await;
        return;
    }
    // `msg:set_scheduling`: outside its window the message waits, without
    // counting an attempt (§21).
    if let Some(scheduling) = disposition::scheduling_of(&msg) {
        let now = SystemTime::now();
        let due = scheduling.adjust(now);
        if let Ok(wait) = due.duration_since(now)
            && wait >= TICK
        {
            let how = Requeue::throttled("ScheduledForLater", wait);
            disposition::requeue(mgr, msg, how, &queue.name).await;
            return;
        }
    }
    let config = match config {
        Ok(config) => config.clone(),
        Err(err) => {
            let response = internal(451, "4.4.4", &format!("KumoMTA internal: {err}"));
            disposition::transient(mgr, msg, &queue.name, "", response, None).await;
            return;
        }
    };
    if queue.name == super::GENERATOR_QUEUE {
        generate(mgr, &queue.name, msg).await;
        return;
    }
    if queue.name == super::deferred_inject::DEFERRED_SMTP_INJECT_QUEUE {
        super::deferred_inject::dispatch(mgr, msg).await;
        return;
    }
    // The queue's own `max_message_rate` (§6.2, §7.1): a refused message
    // waits for the throttle's retry-after, without jitter and without
    // counting an attempt (§7.2).
    if let Some(spec) = &config.max_message_rate {
        let key = format!("kumomta.scheduled_queue.max_message_rate.{}", queue.name);
        if let Some(wait) = mgr.throttles.check(&key, spec).await.retry_after {
            let how = Requeue::throttled("MessageRateThrottle", wait);
            disposition::requeue(mgr, msg, how, &queue.name).await;
            return;
        }
    }
    // `throttle_insert_ready_queue` (§7.1): the policy's own throttles.
    // A handler that moved the due time later (usually through
    // `throttle:delay_message_if_throttled(msg)`) sends the message back
    // until then, without counting an attempt.
    if let Some(wait) = insert_throttle(mgr, &msg).await {
        let how = Requeue::throttled("ThrottledByThrottleInsertReadyQueue", wait);
        disposition::requeue(mgr, msg, how, &queue.name).await;
        return;
    }
    let name = QueueName::parse(&queue.name);
    let routing_domain = msg
        .get_meta_str("routing_domain")
        .unwrap_or_else(|| name.routing_domain_or_domain().to_string());

    let (target, site, label) = match &config.protocol {
        DeliveryProtocol::Maildir(maildir) => {
            ready::deliver_maildir(mgr, msg, &queue.name, maildir).await;
            return;
        }
        DeliveryProtocol::CustomLua(lua) => (
            Target::Lua {
                protocol: lua.clone(),
                queue: queue.name.clone(),
            },
            routing_domain.clone(),
            lua_label(&lua.constructor),
        ),
        DeliveryProtocol::Smtp(smtp) if !smtp.mx_list.is_empty() => (
            Target::MxList(smtp.mx_list.clone()),
            mx_list_site_name(&smtp.mx_list),
            SMTP_CLIENT.to_string(),
        ),
        DeliveryProtocol::Smtp(_) => match mgr.dns.current().lookup_mx(&routing_domain).await {
            Ok(mx) if mx.is_null_mx() => {
                let response = internal(556, "5.1.10", "Recipient address has a null MX");
                disposition::bounce(mgr, msg, &queue.name, "", response, None).await;
                return;
            }
            Ok(mx) => {
                let site = mx.site_name.clone();
                (Target::Mx(mx), site, SMTP_CLIENT.to_string())
            }
            Err(err) => {
                let response = internal(
                    451,
                    "4.4.4",
                    &format!(
                        "failed to resolve queue {}: MX lookup for {routing_domain} failed: {err}",
                        queue.name
                    ),
                );
                disposition::transient(mgr, msg, &queue.name, "", response, None).await;
                return;
            }
        },
        other => {
            let response = internal(
                451,
                "4.4.4",
                &format!(
                    "KumoMTA internal: delivery protocol {other:?} is not supported by Tern yet"
                ),
            );
            disposition::transient(mgr, msg, &queue.name, "", response, None).await;
            return;
        }
    };

    let pool = match policy::egress_pool(mgr, config.egress_pool_name()).await {
        Ok(pool) => pool,
        Err(err) => {
            let response = internal(451, "4.4.4", &format!("KumoMTA internal: {err}"));
            disposition::transient(mgr, msg, &queue.name, "", response, None).await;
            return;
        }
    };
    let mut readies = Vec::with_capacity(pool.sources.len());
    for source in &pool.sources {
        let name = ready_queue_name(&source.name, &site, &label);
        match ready::get_or_create(
            mgr,
            &name,
            source.clone(),
            &pool.pool.name,
            &site,
            &routing_domain,
            &target,
        )
        .await
        {
            Ok(ready) => readies.push(Some(ready)),
            Err(err) => {
                tracing::error!("ready queue {name}: {err}");
                readies.push(None);
            }
        }
    }
    let now = Instant::now();
    let mut any_full = false;
    let chosen = queue.state.lock().wrr.select(
        &pool.weights,
        |k| {
            readies[k].as_ref().is_some_and(|ready| {
                !mgr.source_suspended(&pool.sources[k].name)
                    && mgr.admin.ready_suspension_for(&ready.name).is_none()
            })
        },
        |k| {
            let Some(ready) = &readies[k] else {
                return false;
            };
            if ready.is_full() {
                any_full = true;
                return false;
            }
            ready.source_selection_allowed(mgr, now)
        },
    );
    match chosen {
        Some(k) => {
            let ready = readies[k].take().expect("chosen ready queue exists");
            ready.push(mgr, msg, target);
        }
        None if any_full => {
            disposition::requeue(mgr, msg, Requeue::ready_queue_full(), &queue.name).await;
        }
        None => {
            let response = internal(
                451,
                "4.4.4",
                &format!(
                    "KumoMTA internal: no sources for {} pool=`{}` are eligible for selection at this time",
                    queue.name, pool.pool.name
                ),
            );
            disposition::transient(mgr, msg, &queue.name, "", response, None).await;
        }
    }
}

/// A response made up by Tern (no SMTP command behind it).
pub fn internal(code: u16, enhanced: &str, text: &str) -> Response {
    Response::new(code, tern_log::EnhancedCode::parse(enhanced), text)
}

/// A stored `deferred_generation` request is due: expand it into its
/// messages (which take the normal path) and remove it.
async fn generate(mgr: &Arc<QueueManager>, queue: &str, msg: Message) {
    let site = "httpinject:generator";
    let Some(generator) = mgr.generator.get() else {
        let response = internal(
            451,
            "4.4.4",
            "KumoMTA internal: no HTTP injection layer to expand deferred requests",
        );
        disposition::transient(mgr, msg, queue, site, response, None).await;
        return;
    };
    match generator.expand(&msg).await {
        Ok(summary) => {
            let response = Response::new(250, None, summary);
            disposition::log(
                mgr,
                tern_log::RecordType::Delivery,
                &msg,
                queue,
                site,
                response,
                None,
            )
            .await;
            disposition::remove(mgr, &msg).await;
        }
        Err(err) => {
            let response = internal(451, "4.4.4", &format!("KumoMTA internal: {err}"));
            disposition::transient(mgr, msg, queue, site, response, None).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> tern_queue::RetrySchedule {
        tern_queue::RetrySchedule {
            retry_interval: Duration::from_secs(20),
            max_retry_interval: Some(Duration::from_secs(120)),
            max_age: Duration::from_secs(3600),
        }
    }

    fn message(due: Option<SystemTime>, spooled: bool) -> Message {
        let addr = |a: &str| tern_types::EnvelopeAddress::parse(a).unwrap();
        let msg = Message::new(
            SpoolId::new(),
            addr("sender@example.com"),
            vec![addr("rcpt@example.com")],
            serde_json::Map::new(),
            bytes::Bytes::from_static(b"Subject: hi\r\n\r\nbody\r\n"),
        );
        msg.set_due(due);
        if spooled {
            msg.mark_clean();
        }
        msg
    }

    /// (due now, in the wheel, in memory for later)
    fn counts(queue: &ScheduledQueue) -> (usize, usize, usize) {
        let state = queue.state.lock();
        (
            state.due_now.len(),
            state.wheel.len(),
            state.unspooled_later.len(),
        )
    }

    #[test]
    fn a_spooled_message_due_later_waits_in_the_wheel_as_its_id() {
        let queue = ScheduledQueue::new("q");
        let due = SystemTime::now() + Duration::from_secs(60);
        let msg = message(Some(due), true);
        let id = msg.id();
        queue.push_now(msg);
        assert_eq!(counts(&queue), (0, 1, 0));
        let mut popped = Vec::new();
        let mut state = queue.state.lock();
        state.wheel.pop_due_into(SystemTime::now(), &mut popped);
        assert!(popped.is_empty(), "not due yet");
        state.wheel.pop_due_into(due + TICK, &mut popped);
        assert_eq!(popped.len(), 1);
        assert_eq!(popped[0].id, id);
    }

    #[test]
    fn an_unspooled_message_due_later_waits_in_memory_and_is_saved_at_shutdown() {
        let queue = ScheduledQueue::new("q");
        let due = SystemTime::now() + Duration::from_secs(60);
        queue.push_now(message(Some(due), false));
        assert_eq!(counts(&queue), (0, 0, 1));
        assert_eq!(queue.state.lock().unspooled_later[0].0, due);
        let mut unspooled = Vec::new();
        queue.collect_unspooled(&mut unspooled);
        assert_eq!(unspooled.len(), 1);
    }

    #[test]
    fn no_due_time_or_one_within_a_tick_is_due_now() {
        let queue = ScheduledQueue::new("q");
        let now = SystemTime::now();
        for due in [
            None,
            Some(now - Duration::from_secs(3600)),
            Some(now + Duration::from_millis(500)),
        ] {
            queue.push_now(message(due, true));
            queue.push_now(message(due, false));
        }
        assert_eq!(counts(&queue), (6, 0, 0));
    }

    #[test]
    fn held_messages_wait_for_their_next_retry_slot_without_counting_an_attempt() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let due = |attempts| held_until(&schedule(), attempts, None, now);
        assert_eq!(due(0), now + Duration::from_secs(20));
        assert_eq!(due(1), now + Duration::from_secs(40));
        assert_eq!(due(5), now + Duration::from_secs(120));
    }

    #[test]
    fn the_held_record_names_the_spool_condition() {
        let response = spool_unhealthy_response("RocksDB spool write failed: IO error");
        assert_eq!(response.code, 451);
        assert_eq!(
            response.enhanced_code,
            tern_log::EnhancedCode::parse("4.4.4")
        );
        assert_eq!(
            response.content,
            "KumoMTA internal: delivery suspended: spool unhealthy: \
             RocksDB spool write failed: IO error"
        );
    }
}
