//! The queue layer: scheduled queues, promotion into ready queues, the
//! delivery dispatchers, retries and spool recovery.
//!
//! This is the hand-off point between reception and delivery (the Postfix
//! model): [`crate::reception::Reception::accept`] gives every durable
//! message to the [`QueueManager`] through the
//! [`crate::reception::QueueSink`] trait, and nothing upstream knows more
//! about queues than that.
//!
//! ```text
//! accept ─▶ ScheduledQueue (campaign:tenant@domain)
//!              │ due now / timer wheel (id + attempts only)
//!              ▼ promotion: config, MX, egress pool (WRR)
//!           ReadyQueue (source->site@smtp_client, bounded by max_ready)
//!              │ dispatcher: connection limit, rates
//!              ▼
//!           SMTP client (tern-delivery) ─▶ Delivery / Bounce / TransientFailure
//!              │ transient
//!              └──▶ back to the ScheduledQueue with the backoff of §7
//! ```
//!
//! A message waiting for a retry is kept in memory as its spool id and
//! attempt counter only (see [`scheduled::Waiting`]); its body and
//! metadata are read back from the spool when it is due.
//!
//! Modules: [`deferred_inject`] (the `deferred_queue` listener option's
//! queue), [`scheduled`] (scheduled queues and their maintainer task),
//! [`ready`] (ready queues and dispatchers), [`lua_delivery`] (the
//! `custom_lua` protocol), [`policy`] (the Lua events
//! that configure queues, sources, pools and paths, with their caches),
//! [`disposition`] (logging outcomes, requeue, expiry, removal),
//! [`recovery`] (spool enumeration at startup).
//!
//! Two spool conditions reach into the queue layer: while a spool is
//! latched unhealthy, due messages are held instead of delivered
//! (`kumo.suspend_delivery_when_spool_unhealthy`, see
//! [`QueueManager::delivery_suspended`]); and at graceful shutdown,
//! messages that only exist in memory (`deferred_spool`) are written to
//! the spool ([`QueueManager::save_unspooled`]).

pub mod admin;
pub mod deferred_inject;
pub mod disposition;
pub mod lua_delivery;
pub mod policy;
pub mod ready;
pub mod recovery;
pub mod scheduled;

use crate::reception::{QueueSink, Reception};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use tern_dns::DnsHandle;
use tern_message::Message;
use tern_policy::PolicyEngine;
use tern_queue::{ConnectionLimiter, Throttles};
use tokio::sync::watch;

pub use ready::ReadyQueue;
pub use scheduled::ScheduledQueue;

/// The queue of stored `deferred_generation` injection requests (§4.5).
pub const GENERATOR_QUEUE: &str = "generator.kumomta.internal";

/// Expands a stored `deferred_generation` request into its messages. The
/// HTTP layer implements it; the queue layer only knows this trait.
pub trait DeferredGenerator: Send + Sync {
    /// `Ok(summary)`: the request is done (its messages are accepted);
    /// `Err`: nothing was kept, retry later.
    fn expand<'a>(
        &'a self,
        request: &'a Message,
    ) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + 'a>>;
}

/// Everything the queue layer shares; one per process.
pub struct QueueManager {
    pub(crate) engine: PolicyEngine,
    pub(crate) reception: Arc<Reception>,
    pub(crate) hostname: String,
    pub(crate) dns: DnsHandle,
    pub(crate) scheduled: Mutex<HashMap<String, Arc<ScheduledQueue>>>,
    pub(crate) ready: Mutex<HashMap<String, Arc<ReadyQueue>>>,
    pub(crate) policy: policy::PolicyCache,
    /// Shared with the policy's `kumo.make_throttle`: Redis-backed once
    /// `kumo.configure_redis_throttles` has run.
    pub(crate) throttles: Arc<Throttles>,
    pub(crate) connections: ConnectionLimiter,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Set once at startup when the HTTP layer is present.
    pub generator: OnceLock<Arc<dyn DeferredGenerator>>,
    /// Sources suspended by `suspend_when_unplumbed`, until the instant.
    pub(crate) suspended_sources: Mutex<HashMap<String, std::time::Instant>>,
    /// How many `smtp_server_message_deferred_inject` events may run at
    /// once (KumoMTA suggests a small multiple of the CPU count).
    pub(crate) deferred_inject_slots: Arc<tokio::sync::Semaphore>,
    /// `kumo.suspend_delivery_when_spool_unhealthy` (default true).
    pub(crate) suspend_when_spool_unhealthy: bool,
    /// Bounce and suspend rules set through the admin API.
    pub admin: admin::AdminRules,
    /// Delivery outcomes over every ready queue (`service="smtp_client"`);
    /// each ready queue also counts its own ([`ready::DeliveryCounts`]).
    pub(crate) delivery_totals: DeliveryTotals,
}

/// What the queue layer shares with the rest of the server.
pub struct QueueServices {
    pub dns: DnsHandle,
    /// Shared with the policy's `kumo.make_throttle`.
    pub throttles: Arc<Throttles>,
    /// Where the delivery counters are registered.
    pub metrics: tern_metrics::Registry,
    /// `kumo.suspend_delivery_when_spool_unhealthy` (default true).
    pub suspend_when_spool_unhealthy: bool,
}

/// The `service="smtp_client"` series of the delivery counters (§23).
pub(crate) struct DeliveryTotals {
    pub delivered: tern_metrics::Counter,
    pub transfail: tern_metrics::Counter,
    pub fail: tern_metrics::Counter,
    pub connections: tern_metrics::Counter,
}

/// Help texts of the delivery counters, shared by the totals and the
/// per-ready-queue series the metrics collector reports.
pub(crate) const DELIVERED_HELP: &str = "number of recipients delivered since the server started";
pub(crate) const TRANSFAIL_HELP: &str = "number of delivery attempts that failed temporarily";
pub(crate) const FAIL_HELP: &str = "number of delivery attempts that failed permanently";
pub(crate) const CONNECTIONS_HELP: &str = "number of connections made since the server started";

impl DeliveryTotals {
    fn new(registry: &tern_metrics::Registry) -> Self {
        let labels = [("service", "smtp_client")];
        Self {
            delivered: registry.counter("total_messages_delivered", DELIVERED_HELP, &labels),
            transfail: registry.counter("total_messages_transfail", TRANSFAIL_HELP, &labels),
            fail: registry.counter("total_messages_fail", FAIL_HELP, &labels),
            connections: registry.counter("total_connection_count", CONNECTIONS_HELP, &labels),
        }
    }
}

impl QueueManager {
    pub fn new(
        engine: PolicyEngine,
        reception: Arc<Reception>,
        hostname: String,
        shutdown: watch::Receiver<bool>,
        services: QueueServices,
    ) -> Arc<Self> {
        let QueueServices {
            dns,
            throttles,
            metrics,
            suspend_when_spool_unhealthy,
        } = services;
        Arc::new(Self {
            engine,
            reception,
            hostname,
            dns,
            scheduled: Mutex::new(HashMap::new()),
            ready: Mutex::new(HashMap::new()),
            policy: policy::PolicyCache::default(),
            throttles,
            connections: ConnectionLimiter::new(),
            shutdown,
            generator: OnceLock::new(),
            suspended_sources: Mutex::new(HashMap::new()),
            deferred_inject_slots: Arc::new(tokio::sync::Semaphore::new(
                2 * std::thread::available_parallelism().map_or(2, |n| n.get()),
            )),
            suspend_when_spool_unhealthy,
            admin: Default::default(),
            delivery_totals: DeliveryTotals::new(&metrics),
        })
    }

    /// `Some(reason)` while delivery must pause: a spool is latched
    /// unhealthy and `kumo.suspend_delivery_when_spool_unhealthy` is on.
    /// Delivering then would end in a `remove()` that may fail, leaving a
    /// delivered message in the spool to be sent again.
    pub(crate) fn delivery_suspended(&self) -> Option<String> {
        if !self.suspend_when_spool_unhealthy {
            return None;
        }
        let reception = &self.reception;
        reception.data.health().and(reception.meta.health()).err()
    }

    /// Graceful shutdown (§1.1 "saves deferred-spool messages"): writes
    /// every message the queue layer holds in memory that the spool does
    /// not have yet (`deferred_spool` receptions, changes not written
    /// back) to both spools, so that recovery finds them at the next
    /// start. Runs after the queue maintainers and connection tasks have
    /// stopped taking work. Returns how many messages were written.
    pub async fn save_unspooled(&self) -> usize {
        let mut pending: Vec<Message> = Vec::new();
        for queue in self.scheduled.lock().values() {
            queue.collect_unspooled(&mut pending);
        }
        for queue in self.ready.lock().values() {
            queue.collect_unspooled(&mut pending);
        }
        let mut saved = 0;
        for msg in &pending {
            disposition::persist(self, msg).await;
            if !msg.is_data_dirty() && !msg.is_meta_dirty() {
                saved += 1;
            }
        }
        if pending.len() > saved {
            tracing::error!(
                "shutdown: {} in-memory messages could not be written to the spool and are lost",
                pending.len() - saved
            );
        }
        saved
    }

    /// Connection tasks still running, over every ready queue.
    pub fn active_connections(&self) -> usize {
        self.ready.lock().values().map(|q| q.connections()).sum()
    }

    /// The scheduled queue `name`, created (and its maintainer started)
    /// when it does not exist. Holding the map lock while the caller
    /// inserts is what keeps the reaper from dropping a queue that is
    /// receiving a message: see [`QueueManager::with_scheduled`].
    pub(crate) fn with_scheduled<R>(
        self: &Arc<Self>,
        name: &str,
        insert: impl FnOnce(&ScheduledQueue) -> R,
    ) -> R {
        let mut map = self.scheduled.lock();
        if let Some(queue) = map.get(name) {
            return insert(queue);
        }
        let queue = ScheduledQueue::new(name);
        let result = insert(&queue);
        map.insert(name.to_string(), queue.clone());
        drop(map);
        tokio::spawn(scheduled::maintain(self.clone(), queue));
        result
    }

    /// Number of messages held by the queue layer (scheduled and ready).
    pub fn message_count(&self) -> usize {
        let scheduled: usize = self.scheduled.lock().values().map(|q| q.len()).sum();
        let ready: usize = self.ready.lock().values().map(|q| q.len()).sum();
        scheduled + ready
    }

    /// Whether source `name` is auto-suspended right now.
    pub(crate) fn source_suspended(&self, name: &str) -> bool {
        let mut suspended = self.suspended_sources.lock();
        match suspended.get(name) {
            Some(until) if *until > std::time::Instant::now() => true,
            Some(_) => {
                suspended.remove(name);
                false
            }
            None => false,
        }
    }

    /// `suspend_when_unplumbed`: a bind failed because the source address
    /// is not on this host. Suspends the source per its rule (at once, or
    /// once the failures pass the threshold rate).
    pub(crate) fn source_unplumbed(&self, source: &tern_queue::EgressSource) {
        let Some(rule) = &source.suspend_when_unplumbed else {
            return;
        };
        let trips = match &rule.trigger {
            tern_queue::config::SuspendTrigger::Immediate => true,
            tern_queue::config::SuspendTrigger::Threshold(spec) => {
                let key = format!("kumomta.suspend_when_unplumbed.{}", source.name);
                self.throttles
                    .local()
                    .check(&key, spec, std::time::Instant::now())
                    .is_err()
            }
        };
        if trips {
            tracing::warn!(
                "egress source {} suspended for {} (its source_address is not configured on this host)",
                source.name,
                humantime::format_duration(rule.duration)
            );
            self.suspended_sources.lock().insert(
                source.name.clone(),
                std::time::Instant::now() + rule.duration,
            );
        }
    }

    pub(crate) fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }
}

/// The manager as the receiving end of [`Reception::accept`].
pub struct ManagerSink(pub Arc<QueueManager>);

impl QueueSink for ManagerSink {
    fn enqueue(&self, msg: Message, queue: String) {
        // A message arriving while a bounce rule matches its queue goes at
        // once, even when it would wait (a future due time) past the rule.
        if let Some(rule) = self.0.admin.bounce_for(&queue) {
            let mgr = self.0.clone();
            tokio::spawn(async move { admin::bounce_message(&mgr, &rule, msg, &queue).await });
            return;
        }
        self.0.with_scheduled(&queue, |q| q.push_now(msg));
    }
}
