//! Operator actions on the scheduled queues, through the admin HTTP API
//! (§16): **bounce** (remove matching messages with an `AdminBounce`
//! record, now and for as long as the rule lasts), **suspend** (matching
//! scheduled queues promote nothing while the rule lasts) and **rebind**
//! (a one-off move of matching messages to the queues their changed
//! metadata names).
//!
//! A rule names scheduled queues by the components of their names
//! (`campaign:tenant@domain!routing_domain`) or by exact names; a rule
//! with no criteria matches every queue. The rules are checked where
//! messages pass anyway: when a message is enqueued (bounce) and when it
//! is promoted towards delivery (bounce, then suspend), so a queue with no
//! rules pays one atomic load. Creating a bounce rule also sweeps the
//! matching queues at once, including messages that wait on disk for a
//! retry.

use super::QueueManager;
use super::disposition;
use super::scheduled::{ScheduledQueue, Waiting, internal};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;
use tern_log::{RecordType, Response};
use tern_message::Message;
use tern_types::QueueName;
use uuid::Uuid;

/// Which scheduled queues a rule applies to. Unset fields match anything;
/// `queue_names`, when given, replaces the other fields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Criteria {
    pub domain: Option<String>,
    pub routing_domain: Option<String>,
    pub tenant: Option<String>,
    pub campaign: Option<String>,
    pub queue_names: Option<Vec<String>>,
}

impl Criteria {
    pub fn matches(&self, queue: &str) -> bool {
        self.matches_parsed(queue, &QueueName::parse(queue))
    }

    /// [`Self::matches`] with the name already parsed (one parse for all
    /// the rules a message is checked against).
    pub fn matches_parsed(&self, queue: &str, name: &QueueName) -> bool {
        if let Some(names) = &self.queue_names {
            return names.iter().any(|n| n == queue);
        }
        // Domains compare without regard to case, as DNS names do; tenant
        // and campaign are the policy's own labels and compare exactly.
        let same_domain = |want: &Option<String>, have: Option<&str>| match want {
            None => true,
            Some(want) => have.is_some_and(|have| have.eq_ignore_ascii_case(want)),
        };
        let same = |want: &Option<String>, have: Option<&str>| match want {
            None => true,
            Some(want) => have == Some(want.as_str()),
        };
        same_domain(&self.domain, Some(&name.domain))
            && same_domain(&self.routing_domain, name.routing_domain.as_deref())
            && same(&self.tenant, name.tenant.as_deref())
            && same(&self.campaign, name.campaign.as_deref())
    }
}

/// An active `POST /api/admin/bounce/v1`.
#[derive(Debug)]
pub struct BounceRule {
    pub id: Uuid,
    pub criteria: Criteria,
    pub reason: String,
    pub expires: SystemTime,
    pub suppress_logging: bool,
    /// Messages bounced so far, by scheduled queue.
    bounced: Mutex<BTreeMap<String, u64>>,
}

impl BounceRule {
    pub fn new(criteria: Criteria, reason: String, expires: SystemTime, suppress: bool) -> Self {
        Self {
            id: Uuid::new_v4(),
            criteria,
            reason,
            expires,
            suppress_logging: suppress,
            bounced: Mutex::new(BTreeMap::new()),
        }
    }

    /// The response of the `AdminBounce` records (KumoMTA's wording).
    pub fn response(&self) -> Response {
        internal(
            551,
            "5.7.1",
            &format!("Administrator bounced with reason: {}", self.reason),
        )
    }

    pub fn bounced(&self) -> BTreeMap<String, u64> {
        self.bounced.lock().clone()
    }
}

/// An active `POST /api/admin/suspend/v1`.
#[derive(Debug)]
pub struct SuspendRule {
    pub id: Uuid,
    pub criteria: Criteria,
    pub reason: String,
    pub expires: SystemTime,
}

impl SuspendRule {
    pub fn new(criteria: Criteria, reason: String, expires: SystemTime) -> Self {
        Self {
            id: Uuid::new_v4(),
            criteria,
            reason,
            expires,
        }
    }

    /// The response of the `TransientFailure` a held message gets.
    pub fn response(&self) -> Response {
        internal(
            451,
            "4.4.4",
            &format!(
                "KumoMTA internal: scheduled queue is suspended: {}",
                self.reason
            ),
        )
    }
}

/// An active `POST /api/admin/suspend-ready-q/v1`: one ready queue (a
/// source towards a site) is skipped by source selection and sends
/// nothing.
#[derive(Debug)]
pub struct ReadySuspendRule {
    pub id: Uuid,
    /// The ready queue's name (`source->site@smtp_client`).
    pub name: String,
    pub reason: String,
    pub expires: SystemTime,
}

impl ReadySuspendRule {
    pub fn new(name: String, reason: String, expires: SystemTime) -> Self {
        Self {
            id: Uuid::new_v4(),
            name,
            reason,
            expires,
        }
    }

    /// The response of the `TransientFailure` a message waiting in the
    /// suspended ready queue gets.
    pub fn response(&self) -> Response {
        internal(
            451,
            "4.4.4",
            &format!(
                "KumoMTA internal: ready queue is suspended: {}",
                self.reason
            ),
        )
    }
}

/// What every admin rule has: an id to cancel it by and an end.
pub trait Rule {
    fn id(&self) -> Uuid;
    fn expires(&self) -> SystemTime;
}

macro_rules! impl_rule {
    ($($kind:ty),*) => {$(
        impl Rule for $kind {
            fn id(&self) -> Uuid {
                self.id
            }
            fn expires(&self) -> SystemTime {
                self.expires
            }
        }
    )*};
}
impl_rule!(BounceRule, SuspendRule, ReadySuspendRule);

/// One kind of rule. Expired rules are dropped whenever the list is
/// looked at.
struct RuleList<R>(Mutex<Vec<Arc<R>>>);

impl<R> Default for RuleList<R> {
    fn default() -> Self {
        Self(Mutex::new(Vec::new()))
    }
}

impl<R: Rule> RuleList<R> {
    /// Add `rule` and raise `any` while the list is locked, so a
    /// concurrent [`AdminRules::refresh_any`] cannot hide it.
    fn add(&self, rule: Arc<R>, any: &AtomicBool) {
        let mut rules = self.0.lock();
        prune(&mut rules);
        rules.push(rule);
        any.store(true, Ordering::Release);
    }

    /// The active rules, oldest first.
    fn active(&self) -> Vec<Arc<R>> {
        let mut rules = self.0.lock();
        prune(&mut rules);
        rules.clone()
    }

    /// Remove rule `id`; false when no active rule has it.
    fn cancel(&self, id: Uuid) -> bool {
        let mut rules = self.0.lock();
        prune(&mut rules);
        let before = rules.len();
        rules.retain(|r| r.id() != id);
        rules.len() != before
    }

    /// The first active rule `find` picks out of the list, and whether
    /// this lookup dropped the last rules (so the fast-path flag may
    /// need clearing).
    fn find(&self, find: impl FnOnce(&[Arc<R>]) -> Option<Arc<R>>) -> (Option<Arc<R>>, bool) {
        let mut rules = self.0.lock();
        let pruned = prune(&mut rules);
        (find(&rules), pruned && rules.is_empty())
    }
}

/// Drop expired rules; true when one was dropped.
fn prune<R: Rule>(rules: &mut Vec<Arc<R>>) -> bool {
    let now = SystemTime::now();
    let before = rules.len();
    rules.retain(|r| r.expires() > now);
    rules.len() != before
}

/// The active rules. [`AdminRules::any`] goes back to false once none is
/// left, so the queues' fast path costs one atomic load again.
#[derive(Default)]
pub struct AdminRules {
    bounces: RuleList<BounceRule>,
    suspensions: RuleList<SuspendRule>,
    ready_suspensions: RuleList<ReadySuspendRule>,
    /// Whether any rule may be active: the queues' fast path.
    any: AtomicBool,
}

impl AdminRules {
    pub fn add_bounce(&self, rule: Arc<BounceRule>) {
        self.bounces.add(rule, &self.any);
    }

    pub fn add_suspension(&self, rule: Arc<SuspendRule>) {
        self.suspensions.add(rule, &self.any);
    }

    pub fn add_ready_suspension(&self, rule: Arc<ReadySuspendRule>) {
        self.ready_suspensions.add(rule, &self.any);
    }

    /// The active bounce rules, oldest first.
    pub fn bounces(&self) -> Vec<Arc<BounceRule>> {
        self.bounces.active()
    }

    /// The active suspensions, oldest first.
    pub fn suspensions(&self) -> Vec<Arc<SuspendRule>> {
        self.suspensions.active()
    }

    /// The active ready-queue suspensions, oldest first.
    pub fn ready_suspensions(&self) -> Vec<Arc<ReadySuspendRule>> {
        self.ready_suspensions.active()
    }

    /// Remove bounce rule `id`; false when there is no such active rule.
    pub fn cancel_bounce(&self, id: Uuid) -> bool {
        let found = self.bounces.cancel(id);
        self.refresh_any();
        found
    }

    /// Remove suspension `id`; false when there is no such active rule.
    pub fn cancel_suspension(&self, id: Uuid) -> bool {
        let found = self.suspensions.cancel(id);
        self.refresh_any();
        found
    }

    /// Remove ready-queue suspension `id`; false when there is no such
    /// active rule.
    pub fn cancel_ready_suspension(&self, id: Uuid) -> bool {
        let found = self.ready_suspensions.cancel(id);
        self.refresh_any();
        found
    }

    /// Whether any rule may apply: one atomic load, for callers that
    /// would otherwise compute a queue name just to ask.
    pub fn is_active(&self) -> bool {
        self.any.load(Ordering::Acquire)
    }

    /// The first active bounce rule matching `queue`.
    pub fn bounce_for(&self, queue: &str) -> Option<Arc<BounceRule>> {
        self.lookup(&self.bounces, |rules| {
            first_match(rules, queue, |r| &r.criteria)
        })
    }

    /// The first active suspension matching `queue`.
    pub fn suspension_for(&self, queue: &str) -> Option<Arc<SuspendRule>> {
        self.lookup(&self.suspensions, |rules| {
            first_match(rules, queue, |r| &r.criteria)
        })
    }

    /// The active suspension of ready queue `name`, if any.
    pub fn ready_suspension_for(&self, name: &str) -> Option<Arc<ReadySuspendRule>> {
        self.lookup(&self.ready_suspensions, |rules| {
            rules.iter().find(|r| r.name == name).cloned()
        })
    }

    /// A lookup behind the fast-path flag, which is cleared when the
    /// lookup dropped the last rules.
    fn lookup<R: Rule>(
        &self,
        list: &RuleList<R>,
        find: impl FnOnce(&[Arc<R>]) -> Option<Arc<R>>,
    ) -> Option<Arc<R>> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        let (found, emptied) = list.find(find);
        if emptied {
            self.refresh_any();
        }
        found
    }

    /// Recompute the fast-path flag after rules were dropped. All lists
    /// are locked while it is cleared, and a rule is added (and the flag
    /// raised) under its list's lock, so no rule can be hidden.
    fn refresh_any(&self) {
        let bounces = self.bounces.0.lock();
        let suspensions = self.suspensions.0.lock();
        let ready = self.ready_suspensions.0.lock();
        if bounces.is_empty() && suspensions.is_empty() && ready.is_empty() {
            self.any.store(false, Ordering::Release);
        }
    }
}

fn first_match<R>(
    rules: &[Arc<R>],
    queue: &str,
    criteria: impl Fn(&R) -> &Criteria,
) -> Option<Arc<R>> {
    if rules.is_empty() {
        return None;
    }
    let name = QueueName::parse(queue);
    rules
        .iter()
        .find(|r| criteria(r).matches_parsed(queue, &name))
        .cloned()
}

/// Bounce one message under `rule`: its `AdminBounce` record (unless the
/// rule suppresses logging), then its removal from both spools.
pub async fn bounce_message(mgr: &QueueManager, rule: &BounceRule, msg: Message, queue: &str) {
    *rule.bounced.lock().entry(queue.to_string()).or_default() += 1;
    if !rule.suppress_logging {
        disposition::log(
            mgr,
            RecordType::AdminBounce,
            &msg,
            queue,
            "",
            rule.response(),
            None,
        )
        .await;
    }
    disposition::remove(mgr, &msg).await;
}

/// Apply a new bounce rule to what the matching scheduled queues hold now:
/// messages in memory and messages waiting on disk for a retry alike.
/// Messages already handed to a ready queue are checked there instead.
pub async fn sweep(mgr: Arc<QueueManager>, rule: Arc<BounceRule>) {
    let queues: Vec<Arc<ScheduledQueue>> = mgr
        .scheduled
        .lock()
        .values()
        .filter(|q| rule.criteria.matches(&q.name))
        .cloned()
        .collect();
    for queue in queues {
        let taken = queue.take_all();
        for (_, msg) in taken.messages {
            bounce_message(&mgr, &rule, msg, &queue.name).await;
        }
        for (_, entry) in taken.waiting {
            bounce_waiting(&mgr, &rule, entry, &queue.name).await;
        }
    }
}

/// A message that waits on disk is read back whole, so its record has
/// its size and any headers a logger captures.
async fn bounce_waiting(mgr: &QueueManager, rule: &BounceRule, entry: Waiting, queue: &str) {
    match load(mgr, entry).await {
        Some(msg) => bounce_message(mgr, rule, msg, queue).await,
        None => {
            // Unreadable: nothing can be logged about it, but the operator
            // asked for it to go, and a spool entry nobody can read would
            // only fail again at its next retry.
            tracing::warn!(
                "admin bounce: {queue}: {} cannot be read; removed",
                entry.id
            );
            *rule.bounced.lock().entry(queue.to_string()).or_default() += 1;
            let reception = &mgr.reception;
            let _ = reception.meta.remove(entry.id).await;
            let _ = reception.data.remove(entry.id).await;
        }
    }
}

/// A `POST /api/admin/rebind/v1`: a one-off move, not a lasting rule.
#[derive(Debug)]
pub struct Rebind {
    pub criteria: Criteria,
    pub reason: String,
    /// Written into each message's metadata, or handed to the policy's
    /// `rebind_message(msg, data)` when `trigger_event` is set.
    pub data: BTreeMap<String, String>,
    pub trigger_event: bool,
    /// Make every matched message due now, not only the moved ones.
    pub always_flush: bool,
    pub suppress_logging: bool,
}

/// How many messages a rebind looked at and how many changed queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RebindCounts {
    pub matched: usize,
    pub moved: usize,
}

/// Apply `rebind` to every message of the matching scheduled queues.
/// Messages that wait on disk are read back (metadata only), changed,
/// written back, and filed again as entries that wait on disk.
pub async fn rebind(mgr: Arc<QueueManager>, rebind: Arc<Rebind>) -> RebindCounts {
    let queues: Vec<Arc<ScheduledQueue>> = mgr
        .scheduled
        .lock()
        .values()
        .filter(|q| rebind.criteria.matches(&q.name))
        .cloned()
        .collect();
    let mut counts = RebindCounts::default();
    for queue in queues {
        let taken = queue.take_all();
        for (due, msg) in taken.messages {
            if mgr.shutting_down() {
                // Back where it was, where the shutdown save finds the
                // messages the spool does not have.
                msg.set_due(due);
                queue.push_now(msg);
                continue;
            }
            counts.matched += 1;
            let (target, moved) = rebind_one(&mgr, &rebind, &msg, &queue.name).await;
            // The `null` queue discards, as at reception.
            if target == "null" {
                disposition::remove(&mgr, &msg).await;
                continue;
            }
            counts.moved += usize::from(moved);
            if moved || rebind.always_flush || due.is_none() {
                msg.set_due(None);
            } else {
                msg.set_due(due);
            }
            mgr.with_scheduled(&target, |q| q.push_now(msg));
        }
        for (due, entry) in taken.waiting {
            counts.matched += 1;
            let target = match load(&mgr, entry).await {
                Some(msg) => {
                    let (target, moved) = rebind_one(&mgr, &rebind, &msg, &queue.name).await;
                    counts.moved += usize::from(moved);
                    if target == "null" {
                        disposition::remove(&mgr, &msg).await;
                        continue;
                    }
                    let due = if moved || rebind.always_flush {
                        SystemTime::now()
                    } else {
                        due
                    };
                    (target, due)
                }
                // Unreadable: left where it was, to fail (and be logged)
                // at its own due time like any unreadable entry.
                None => (queue.name.clone(), due),
            };
            mgr.with_scheduled(&target.0, |q| q.insert_waiting(target.1, entry));
        }
    }
    tracing::info!(
        "admin rebind ({}): {} messages matched, {} moved",
        rebind.reason,
        counts.matched,
        counts.moved
    );
    counts
}

/// Read a waiting message back from the spool, body included (the
/// records name its size, loggers may capture its headers, and a
/// `rebind_message` handler may read or change the content).
async fn load(mgr: &QueueManager, entry: Waiting) -> Option<Message> {
    let meta = mgr.reception.meta.load(entry.id).await.ok()?;
    let data = mgr.reception.data.load(entry.id).await.ok()?;
    let msg = Message::from_spool(entry.id, &meta, data.into()).ok()?;
    msg.set_num_attempts(entry.attempts);
    Some(msg)
}

/// Change one message as the rebind says, write its metadata back, and
/// log `AdminRebind` when its queue changed. Returns the queue it belongs
/// in now, and whether that is a different one.
async fn rebind_one(
    mgr: &QueueManager,
    rebind: &Rebind,
    msg: &Message,
    old_queue: &str,
) -> (String, bool) {
    // A `deferred_spool` message the spool never had stays in memory only.
    let in_spool = !msg.is_data_dirty() && !msg.is_meta_dirty();
    if rebind.trigger_event {
        let m = msg.clone();
        let data = rebind.data.clone();
        let result = mgr
            .engine
            .dispatch(
                "rebind_message",
                move |lua| mlua::IntoLuaMulti::into_lua_multi((m, data), lua),
                |_, _| Ok(()),
            )
            .await;
        if let Err(err) = result {
            tracing::error!(
                "rebind_message for {}: {err}; left in {old_queue}",
                msg.id()
            );
            return (old_queue.to_string(), false);
        }
    } else {
        for (key, value) in &rebind.data {
            msg.set_meta(key, serde_json::Value::String(value.clone()));
        }
    }
    let target = match msg.queue_name() {
        Ok(name) => name,
        Err(err) => {
            tracing::error!("admin rebind of {}: {err}; left in {old_queue}", msg.id());
            return (old_queue.to_string(), false);
        }
    };
    // The spool gets the new metadata (and a body the event changed), so
    // a restart finds the message in its new queue.
    if in_spool && (msg.is_meta_dirty() || msg.is_data_dirty()) {
        disposition::persist(mgr, msg).await;
    }
    let moved = target != old_queue;
    if moved && !rebind.suppress_logging {
        // No enhanced code, as KumoMTA's AdminRebind records have none.
        let response = internal(
            250,
            "",
            &format!("Rebound from {old_queue} to {target}: {}", rebind.reason),
        );
        disposition::log(
            mgr,
            RecordType::AdminRebind,
            msg,
            &target,
            "",
            response,
            None,
        )
        .await;
    }
    (target, moved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn criteria(domain: Option<&str>, tenant: Option<&str>, campaign: Option<&str>) -> Criteria {
        Criteria {
            domain: domain.map(Into::into),
            tenant: tenant.map(Into::into),
            campaign: campaign.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn criteria_match_queue_name_components() {
        let any = Criteria::default();
        assert!(any.matches("example.com"));
        assert!(any.matches("c:t@example.com!mx.example.net"));

        let domain = criteria(Some("Example.COM"), None, None);
        assert!(domain.matches("example.com"));
        assert!(domain.matches("camp:ten@example.com"));
        assert!(!domain.matches("example.org"));

        let tenant = criteria(None, Some("t1"), None);
        assert!(tenant.matches("t1@example.com"));
        assert!(tenant.matches("c:t1@example.org"));
        assert!(!tenant.matches("t2@example.com"));
        assert!(!tenant.matches("example.com"), "no tenant is not tenant t1");

        let both = criteria(Some("example.com"), Some("t1"), Some("c"));
        assert!(both.matches("c:t1@example.com"));
        assert!(!both.matches("d:t1@example.com"));

        let routed = Criteria {
            routing_domain: Some("relay.example.net".into()),
            ..Default::default()
        };
        assert!(routed.matches("example.com!relay.example.net"));
        assert!(!routed.matches("example.com"));

        let names = Criteria {
            queue_names: Some(vec!["t1@example.com".into()]),
            domain: Some("example.org".into()),
            ..Default::default()
        };
        assert!(
            names.matches("t1@example.com"),
            "queue_names replaces domain"
        );
        assert!(!names.matches("example.org"));
    }

    #[test]
    fn expired_rules_stop_matching_and_cancel_reports_only_active_ones() {
        let rules = AdminRules::default();
        assert!(rules.bounce_for("example.com").is_none());
        let past = SystemTime::now() - Duration::from_secs(1);
        let old = Arc::new(BounceRule::new(
            Criteria::default(),
            "old".into(),
            past,
            false,
        ));
        rules.add_bounce(old.clone());
        assert!(rules.bounce_for("example.com").is_none());
        assert!(!rules.cancel_bounce(old.id), "an expired rule is not found");

        let later = SystemTime::now() + Duration::from_secs(60);
        let live = Arc::new(BounceRule::new(
            Criteria::default(),
            "live".into(),
            later,
            false,
        ));
        rules.add_bounce(live.clone());
        assert_eq!(rules.bounce_for("example.com").unwrap().id, live.id);
        assert_eq!(rules.bounces().len(), 1);
        assert!(rules.cancel_bounce(live.id));
        assert!(!rules.cancel_bounce(live.id));
        assert!(rules.bounce_for("example.com").is_none());

        let hold = Arc::new(SuspendRule::new(
            criteria(Some("example.com"), None, None),
            "r".into(),
            later,
        ));
        rules.add_suspension(hold.clone());
        assert!(rules.suspension_for("example.com").is_some());
        assert!(rules.suspension_for("example.org").is_none());
        assert!(rules.cancel_suspension(hold.id));
        assert!(rules.suspension_for("example.com").is_none());
        assert!(!rules.any.load(Ordering::Acquire));

        // An expired rule is dropped by the next lookup, not kept forever.
        let soon = SystemTime::now() + Duration::from_millis(50);
        rules.add_bounce(Arc::new(BounceRule::new(
            Criteria::default(),
            "s".into(),
            soon,
            false,
        )));
        assert!(rules.bounce_for("x.example").is_some());
        std::thread::sleep(Duration::from_millis(80));
        assert!(rules.bounce_for("x.example").is_none());
        assert!(rules.bounces.0.lock().is_empty(), "pruned, not only hidden");
        assert!(!rules.any.load(Ordering::Acquire));
    }
}
