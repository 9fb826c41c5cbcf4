//! Ready queues (§8.4) and their dispatchers (§11).
//!
//! A ready queue is keyed by egress path: `source->site@smtp_client`.
//! Many scheduled queues feed one ready queue when their domains share an
//! MX set (the MX rollup), so its connection limit and rates apply to the
//! site as a whole. The queue is bounded by `max_ready`; promotion checks
//! [`ReadyQueue::is_full`] and re-delays instead of pushing.
//!
//! Dispatch is a set of connection tasks: [`ReadyQueue::push`] starts one
//! while there are more waiting messages than connections and the path's
//! `connection_limit` and `max_connection_rate` allow it. A connection task
//! builds the connection plan, connects, and takes messages from the
//! front of the queue until it reaches `max_deliveries_per_connection` or
//! the queue stays empty for `idle_timeout`.

use super::disposition::{self, AttemptFacts, Requeue};
use super::scheduled::internal;
use super::{QueueManager, policy};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tern_delivery::{ClientSettings, DeliveryResponse, SmtpConnection};
use tern_dns::MailExchanger;
use tern_log::{RecordType, Response};
use tern_message::Message;
use tern_queue::config::{CustomLuaProtocol, MaildirProtocol, MxListEntry, ReconnectStrategy};
use tern_queue::{EgressPathConfig, EgressSource};
use tern_smtp::client::Outcome;
use tern_types::EnvelopeAddress;
use tokio::sync::Notify;

/// Where a ready queue delivers: the MX answer of its routing domain, or
/// the queue config's explicit `mx_list`.
#[derive(Clone, Debug)]
pub enum Target {
    Mx(Arc<MailExchanger>),
    MxList(Vec<MxListEntry>),
    /// `protocol = { custom_lua = ... }`; `queue` is a scheduled queue
    /// feeding this ready queue (its parts go to the constructor).
    Lua {
        protocol: CustomLuaProtocol,
        queue: String,
    },
}

struct State {
    queue: VecDeque<Message>,
    path: Arc<EgressPathConfig>,
    path_loaded: Instant,
    path_epoch: u64,
    target: Target,
    /// Connection tasks running.
    connections: usize,
    /// Whole-plan connection failures in a row.
    consecutive_failures: usize,
    /// A delayed [`ReadyQueue::maybe_spawn`] is already scheduled.
    respawn_pending: bool,
}

pub struct ReadyQueue {
    pub name: String,
    pub site: String,
    pub pool: String,
    pub routing_domain: String,
    pub source: Arc<EgressSource>,
    state: Mutex<State>,
    pub(crate) notify: Notify,
    /// This queue's delivery counters (`service="smtp_client:<name>"`),
    /// reported while the queue exists.
    pub(crate) counts: DeliveryCounts,
}

/// Outcomes counted by one ready queue; read at scrape time.
#[derive(Default)]
pub(crate) struct DeliveryCounts {
    pub delivered: AtomicU64,
    pub transfail: AtomicU64,
    pub fail: AtomicU64,
    pub connections: AtomicU64,
}

impl DeliveryCounts {
    pub fn get(&self) -> [u64; 4] {
        [
            self.delivered.load(Ordering::Relaxed),
            self.transfail.load(Ordering::Relaxed),
            self.fail.load(Ordering::Relaxed),
            self.connections.load(Ordering::Relaxed),
        ]
    }
}

/// Count an outcome for `recipients` recipients, for `ready` and in the
/// totals.
fn count_outcome(mgr: &QueueManager, ready: &ReadyQueue, kind: RecordType, recipients: usize) {
    let totals = &mgr.delivery_totals;
    let (mine, total) = match kind {
        RecordType::Delivery => (&ready.counts.delivered, &totals.delivered),
        RecordType::TransientFailure => (&ready.counts.transfail, &totals.transfail),
        RecordType::Bounce => (&ready.counts.fail, &totals.fail),
        _ => return,
    };
    mine.fetch_add(recipients as u64, Ordering::Relaxed);
    total.add(recipients as u64);
}

/// The ready queue `name`, created with its `get_egress_path_config`
/// answer when it does not exist yet.
pub async fn get_or_create(
    mgr: &Arc<QueueManager>,
    name: &str,
    source: Arc<EgressSource>,
    pool: &str,
    site: &str,
    routing_domain: &str,
    target: &Target,
) -> Result<Arc<ReadyQueue>, String> {
    if let Some(ready) = mgr.ready.lock().get(name) {
        return Ok(ready.clone());
    }
    let path = policy::egress_path(mgr, routing_domain, &source.name, site).await?;
    for warning in path.warnings() {
        tracing::warn!("ready queue {name}: {warning}");
    }
    let epoch = mgr.engine.epoch().current();
    let mut map = mgr.ready.lock();
    let ready = map.entry(name.to_string()).or_insert_with(|| {
        Arc::new(ReadyQueue {
            name: name.to_string(),
            site: site.to_string(),
            pool: pool.to_string(),
            routing_domain: routing_domain.to_string(),
            source,
            state: Mutex::new(State {
                queue: VecDeque::new(),
                path: Arc::new(path),
                path_loaded: Instant::now(),
                path_epoch: epoch,
                target: target.clone(),
                connections: 0,
                consecutive_failures: 0,
                respawn_pending: false,
            }),
            notify: Notify::new(),
            counts: DeliveryCounts::default(),
        })
    });
    Ok(ready.clone())
}

impl ReadyQueue {
    pub fn len(&self) -> usize {
        self.state.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_full(&self) -> bool {
        let state = self.state.lock();
        state.queue.len() >= state.path.max_ready
    }

    pub fn path(&self) -> Arc<EgressPathConfig> {
        self.state.lock().path.clone()
    }

    /// `source_selection_rate` (and the additional ones) for this path.
    pub fn source_selection_allowed(&self, mgr: &QueueManager, now: Instant) -> bool {
        let path = self.path();
        if let Some(spec) = &path.source_selection_rate {
            let key = format!(
                "kumomta.source_selection_rate.{}.{}",
                self.name, self.source.name
            );
            if mgr.throttles.local().check(&key, spec, now).is_err() {
                return false;
            }
        }
        path.additional_source_selection_rates
            .iter()
            .all(|(name, spec)| mgr.throttles.local().check(name, spec, now).is_ok())
    }

    pub fn push(self: &Arc<Self>, mgr: &Arc<QueueManager>, msg: Message, target: Target) {
        {
            let mut state = self.state.lock();
            state.target = target;
            state.queue.push_back(msg);
        }
        self.notify.notify_one();
        self.maybe_spawn(mgr);
    }

    /// Connection tasks running for this queue.
    pub fn connections(&self) -> usize {
        self.state.lock().connections
    }

    /// Copies of the waiting messages the spool does not fully have
    /// (`deferred_spool`), for the save at shutdown.
    pub(crate) fn collect_unspooled(&self, into: &mut Vec<Message>) {
        let state = self.state.lock();
        into.extend(
            state
                .queue
                .iter()
                .filter(|m| m.is_data_dirty() || m.is_meta_dirty())
                .cloned(),
        );
    }

    pub(crate) fn pop(&self) -> Option<Message> {
        self.state.lock().queue.pop_front()
    }

    /// Give a message back to the front (to try it on the next host).
    fn unpop(&self, msg: Message) {
        self.state.lock().queue.push_front(msg);
    }

    /// A throttle of this path will not allow a message for longer than
    /// `idle_timeout`: rather than hold a connection (and the queue) that
    /// long, `first` and every message waiting here go back to their
    /// scheduled queues, due when the throttle allows again, with no
    /// attempt counted (a `Delayed` record names `context`).
    async fn delay_all(
        &self,
        mgr: &Arc<QueueManager>,
        first: Option<Message>,
        context: &'static str,
        wait: Duration,
    ) {
        let waiting: Vec<Message> = self.state.lock().queue.drain(..).collect();
        for msg in first.into_iter().chain(waiting) {
            let queue = queue_of(&msg);
            disposition::requeue(mgr, msg, Requeue::throttled(context, wait), &queue).await;
        }
    }

    /// Start connection tasks while messages outnumber connections and the
    /// limits allow.
    pub(crate) fn maybe_spawn(self: &Arc<Self>, mgr: &Arc<QueueManager>) {
        loop {
            if mgr.shutting_down() {
                return;
            }
            // A suspended ready queue opens no connection (the site may be
            // refusing this source): what waits in it is failed over to
            // its retry schedule instead.
            if let Some(rule) = mgr.admin.ready_suspension_for(&self.name) {
                if !self.is_empty() {
                    let (mgr, ready) = (mgr.clone(), self.clone());
                    tokio::spawn(async move { fail_suspended(&mgr, &ready, &rule).await });
                }
                return;
            }
            let path = {
                let state = self.state.lock();
                if state.queue.len() <= state.connections {
                    return;
                }
                state.path.clone()
            };
            let limits = std::iter::once((self.name.as_str(), &path.connection_limit)).chain(
                path.additional_connection_limits
                    .iter()
                    .map(|(k, v)| (k.as_str(), v)),
            );
            let Some(leases) = mgr.connections.try_acquire_all(limits) else {
                // A finishing connection calls maybe_spawn again.
                return;
            };
            if let Some(wait) = self.connection_rate_wait(mgr, &path) {
                drop(leases);
                if wait > path.idle_timeout {
                    let (mgr, ready) = (mgr.clone(), self.clone());
                    tokio::spawn(async move {
                        ready
                            .delay_all(&mgr, None, "ConnectionRateThrottle", wait)
                            .await;
                    });
                } else {
                    self.respawn_later(mgr, wait);
                }
                return;
            }
            self.state.lock().connections += 1;
            tokio::spawn(connection_task(mgr.clone(), self.clone(), leases));
        }
    }

    /// How long `max_connection_rate` makes the next connection wait, or
    /// `None` when it may open now (which uses up one of the throttle's
    /// connections). Every new connection asks, reconnections included.
    fn connection_rate_wait(
        &self,
        mgr: &QueueManager,
        path: &EgressPathConfig,
    ) -> Option<Duration> {
        let spec = path.max_connection_rate.as_ref()?;
        let key = format!("kumomta.max_connection_rate.{}", self.name);
        mgr.throttles
            .local()
            .check(&key, spec, Instant::now())
            .err()
    }

    fn respawn_later(self: &Arc<Self>, mgr: &Arc<QueueManager>, wait: Duration) {
        {
            let mut state = self.state.lock();
            if state.respawn_pending {
                return;
            }
            state.respawn_pending = true;
        }
        let (mgr, ready) = (mgr.clone(), self.clone());
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            ready.state.lock().respawn_pending = false;
            ready.maybe_spawn(&mgr);
        });
    }

    /// Reload the path configuration when its TTL or the epoch says so.
    async fn refresh_path(&self, mgr: &QueueManager) -> Arc<EgressPathConfig> {
        let epoch = mgr.engine.epoch().current();
        let (path, stale) = {
            let state = self.state.lock();
            let stale = match state.path.refresh_strategy {
                tern_queue::config::ConfigRefreshStrategy::Ttl => {
                    state.path_loaded.elapsed() >= state.path.refresh_interval
                }
                tern_queue::config::ConfigRefreshStrategy::Epoch => state.path_epoch != epoch,
            };
            (state.path.clone(), stale)
        };
        if !stale {
            return path;
        }
        match policy::egress_path(mgr, &self.routing_domain, &self.source.name, &self.site).await {
            Ok(fresh) => {
                let fresh = Arc::new(fresh);
                let mut state = self.state.lock();
                state.path = fresh.clone();
                state.path_loaded = Instant::now();
                state.path_epoch = epoch;
                fresh
            }
            Err(err) => {
                tracing::error!("{err}; keeping the previous configuration of {}", self.name);
                self.state.lock().path_loaded = Instant::now();
                path
            }
        }
    }

    pub(crate) fn facts(&self) -> AttemptFacts {
        AttemptFacts {
            egress_pool: self.pool.clone(),
            egress_source: self.source.name.clone(),
            delivery_protocol: Some("ESMTP"),
            ..Default::default()
        }
    }
}

/// The queue name a message's records carry.
pub(crate) fn queue_of(msg: &Message) -> String {
    msg.queue_name().unwrap_or_default()
}

pub fn to_log_response(response: &DeliveryResponse) -> Response {
    let enhanced = response
        .enhanced
        .and_then(|e| tern_log::EnhancedCode::parse(&e.to_string()));
    let mut out = Response::new(response.code, enhanced, response.content.clone());
    if let Some(command) = &response.command {
        out = out.with_command(command.clone());
    }
    out
}

/// One connection's life: plan, connect, deliver until done.
async fn connection_task(
    mgr: Arc<QueueManager>,
    ready: Arc<ReadyQueue>,
    leases: Vec<tern_queue::Lease>,
) {
    let path = ready.refresh_path(&mgr).await;
    let lua_target = match &ready.state.lock().target {
        Target::Lua { protocol, queue } => Some((protocol.clone(), queue.clone())),
        _ => None,
    };
    if let Some((protocol, queue)) = lua_target {
        super::lua_delivery::run(&mgr, &ready, &path, &protocol, &queue).await;
        drop(leases);
        ready.state.lock().connections -= 1;
        ready.maybe_spawn(&mgr);
        return;
    }
    let settings = ClientSettings {
        path: path.clone(),
        source: ready.source.clone(),
        hostname: mgr.hostname.clone(),
    };
    // The plan of the current session and where its next connection
    // starts in it (reconnect_strategy), and how many sessions in a row
    // ended in a transport error (bounds try_next_host_on_transport_error
    // to one pass over the plan). As in KumoMTA the plan is built once per
    // session: "the same host" and "the next host" refer to it, and a
    // rebuilt plan would have reshuffled hosts of equal MX preference.
    let mut session_plan: Option<tern_delivery::ConnectionPlan> = None;
    let mut start = 0usize;
    let mut transport_errors = 0usize;
    // maybe_spawn took the throttle's permission for the first connection.
    let mut first_connection = true;
    while !mgr.shutting_down() && !ready.is_empty() {
        // Suspended by the operator meanwhile: no new connection.
        if let Some(rule) = mgr.admin.ready_suspension_for(&ready.name) {
            fail_suspended(&mgr, &ready, &rule).await;
            break;
        }
        if !std::mem::take(&mut first_connection)
            && let Some(wait) = ready.connection_rate_wait(&mgr, &path)
        {
            if wait > path.idle_timeout {
                ready
                    .delay_all(&mgr, None, "ConnectionRateThrottle", wait)
                    .await;
                break;
            }
            let mut shutdown = mgr.shutdown.clone();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => {}
            }
            continue;
        }
        let plan = match session_plan.take() {
            Some(plan) => plan,
            None => {
                start = 0;
                let target = ready.state.lock().target.clone();
                let resolver = mgr.dns.current();
                let plan = match &target {
                    Target::Mx(mx) => {
                        tern_delivery::plan_for_mx(mx, &resolver, &path, &ready.source).await
                    }
                    Target::MxList(list) => {
                        tern_delivery::plan_for_mx_list(list, &resolver, &path, &ready.source).await
                    }
                    // Custom Lua targets were handled above.
                    Target::Lua { .. } => break,
                };
                match plan {
                    Ok(plan) => plan,
                    Err(err) => {
                        let response = to_log_response(&err.response());
                        let permanent = err.is_permanent();
                        fail_all(&mgr, &ready, response, permanent).await;
                        break;
                    }
                }
            }
        };
        match SmtpConnection::connect(&plan, start, &settings).await {
            Err(err) => {
                if err.source_unplumbed() {
                    mgr.source_unplumbed(&ready.source);
                }
                let response = to_log_response(&err.response());
                // Only "no answer from any host" counts towards the bulk
                // delay; a host that answered and refused is a different story.
                let failures = {
                    let mut state = ready.state.lock();
                    if err.no_answer_from_any_host() {
                        state.consecutive_failures += 1;
                    } else {
                        state.consecutive_failures = 0;
                    }
                    state.consecutive_failures
                };
                if failures > 0 && failures >= path.consecutive_connection_failures_before_delay {
                    ready.state.lock().consecutive_failures = 0;
                    let response = internal(
                        451,
                        "4.4.1",
                        "bulk delay of ready queue: too many successive connection failures \
                         where there was no answer from any hosts listed in MX",
                    );
                    fail_all(&mgr, &ready, response, false).await;
                    break;
                }
                if let Some(msg) = ready.pop() {
                    let facts = ready.facts();
                    let queue = queue_of(&msg);
                    let recipients = msg.recipient_count();
                    count_outcome(&mgr, &ready, RecordType::TransientFailure, recipients);
                    disposition::transient(&mgr, msg, &queue, &ready.name, response, Some(&facts))
                        .await;
                }
            }
            Ok((conn, index)) => {
                ready.state.lock().consecutive_failures = 0;
                ready.counts.connections.fetch_add(1, Ordering::Relaxed);
                mgr.delivery_totals.connections.inc();
                let retry_elsewhere =
                    path.try_next_host_on_transport_error && transport_errors + 1 < plan.len();
                // A finished session (and a failed connection, above)
                // leaves `session_plan` empty: the next one starts afresh.
                match run_session(&mgr, &ready, &path, conn, retry_elsewhere).await {
                    SessionEnd::Finished => transport_errors = 0,
                    SessionEnd::TransportError => {
                        transport_errors += 1;
                        match path.reconnect_strategy {
                            ReconnectStrategy::TerminateSession => break,
                            ReconnectStrategy::ReconnectSameHost => {
                                start = index;
                                session_plan = Some(plan);
                            }
                            ReconnectStrategy::ConnectNextHost if index + 1 < plan.len() => {
                                start = index + 1;
                                session_plan = Some(plan);
                            }
                            // No host left: like TerminateSession, a fresh plan.
                            ReconnectStrategy::ConnectNextHost => {}
                        }
                    }
                }
            }
        }
    }
    drop(leases);
    ready.state.lock().connections -= 1;
    ready.maybe_spawn(&mgr);
}

/// Give every message waiting in a suspended ready queue a
/// `TransientFailure` with the suspension's text; each waits for its next
/// retry (by then the suspension may be over, or source selection will
/// pick another source).
async fn fail_suspended(
    mgr: &Arc<QueueManager>,
    ready: &ReadyQueue,
    rule: &super::admin::ReadySuspendRule,
) {
    let facts = ready.facts();
    while let Some(msg) = ready.pop() {
        let queue = queue_of(&msg);
        count_outcome(
            mgr,
            ready,
            RecordType::TransientFailure,
            msg.recipient_count(),
        );
        disposition::transient(mgr, msg, &queue, &ready.name, rule.response(), Some(&facts)).await;
    }
}

/// Fail every message waiting in the ready queue with `response`.
async fn fail_all(
    mgr: &Arc<QueueManager>,
    ready: &ReadyQueue,
    response: Response,
    permanent: bool,
) {
    let facts = ready.facts();
    while let Some(msg) = ready.pop() {
        let queue = queue_of(&msg);
        let kind = if permanent {
            RecordType::Bounce
        } else {
            RecordType::TransientFailure
        };
        count_outcome(mgr, ready, kind, msg.recipient_count());
        if permanent {
            disposition::bounce(
                mgr,
                msg,
                &queue,
                &ready.name,
                response.clone(),
                Some(&facts),
            )
            .await;
        } else {
            disposition::transient(
                mgr,
                msg,
                &queue,
                &ready.name,
                response.clone(),
                Some(&facts),
            )
            .await;
        }
    }
}

/// Deliver messages over one established connection.
/// How a session over one connection ended.
enum SessionEnd {
    /// Limits reached, idle, or shutting down.
    Finished,
    /// A 421, timeout or I/O error made the connection unusable.
    TransportError,
}

async fn run_session(
    mgr: &Arc<QueueManager>,
    ready: &Arc<ReadyQueue>,
    path: &EgressPathConfig,
    mut conn: SmtpConnection,
    retry_elsewhere: bool,
) -> SessionEnd {
    let session_id = uuid::Uuid::new_v4();
    let mut facts = ready.facts();
    facts.peer = Some((conn.peer().name.clone(), conn.peer().addr.ip().to_string()));
    facts.source_address = conn.source_address().map(|a| a.to_string());
    facts.tls = conn.tls().map(|tls| {
        (
            tls.cipher.clone(),
            tls.protocol_version.clone(),
            tls.peer_subject_name.clone(),
        )
    });
    facts.session_id = Some(session_id);
    let rate_key = format!("kumomta.max_message_rate.{}", ready.name);
    let mut shutdown = mgr.shutdown.clone();

    // The peer closed the connection while it was idle: the session ends
    // normally and the message that was about to go takes a new one.
    let mut closed_while_idle = false;
    while conn.transactions() < path.max_deliveries_per_connection && conn.is_usable() {
        let msg = match ready.pop() {
            Some(msg) => msg,
            None => match wait_while_idle(mgr, ready, path.idle_timeout, &mut shutdown).await {
                Some(msg) => msg,
                None => break,
            },
        };
        // An admin bounce or suspension made after the message was
        // promoted still applies before it is sent, as in KumoMTA.
        if mgr.admin.is_active() {
            let queue = queue_of(&msg);
            if let Some(rule) = mgr.admin.bounce_for(&queue) {
                super::admin::bounce_message(mgr, &rule, msg, &queue).await;
                continue;
            }
            let suspended = match mgr.admin.suspension_for(&queue) {
                Some(rule) => Some(rule.response()),
                None => mgr
                    .admin
                    .ready_suspension_for(&ready.name)
                    .map(|rule| rule.response()),
            };
            if let Some(response) = suspended {
                let recipients = msg.recipient_count();
                count_outcome(mgr, ready, RecordType::TransientFailure, recipients);
                disposition::transient(mgr, msg, &queue, &ready.name, response, Some(&facts)).await;
                continue;
            }
        }
        let throttles = path
            .max_message_rate
            .iter()
            .map(|spec| (rate_key.as_str(), spec))
            .chain(
                path.additional_message_rate_throttles
                    .iter()
                    .map(|(name, spec)| (name.as_str(), spec)),
            );
        let mut verdict = ThrottleWait::Allowed;
        for (key, spec) in throttles {
            verdict = wait_for_throttle(mgr, key, spec, path.idle_timeout).await;
            if verdict != ThrottleWait::Allowed {
                break;
            }
        }
        match verdict {
            ThrottleWait::Allowed => {}
            ThrottleWait::Shutdown => {
                // Back in the queue, where the shutdown save finds it.
                ready.unpop(msg);
                break;
            }
            ThrottleWait::TooLong(wait) => {
                ready
                    .delay_all(mgr, Some(msg), "MessageRateThrottle", wait)
                    .await;
                break;
            }
        }
        // The peer may have closed the connection while this session
        // waited (for a message, or for a throttle): one poll, no wait.
        if !conn.still_open() {
            ready.unpop(msg);
            closed_while_idle = true;
            break;
        }
        deliver_one(mgr, ready, path, &mut conn, msg, &facts, retry_elsewhere).await;
        if mgr.shutting_down() {
            break;
        }
    }
    let end = if conn.is_usable() || closed_while_idle {
        SessionEnd::Finished
    } else {
        SessionEnd::TransportError
    };
    conn.quit().await;
    end
}

/// An idle connection waits up to `idle_timeout` for the next message.
/// A wake-up with nothing to pop (the permit `notify_one` left behind by a
/// push this session already took, or a message another connection got
/// first) keeps waiting until the deadline: ending the wait there would
/// close the connection at once and make `idle_timeout` meaningless.
async fn wait_while_idle(
    mgr: &QueueManager,
    ready: &ReadyQueue,
    idle_timeout: Duration,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<Message> {
    let deadline = tokio::time::Instant::now() + idle_timeout;
    loop {
        if mgr.shutting_down() {
            return None;
        }
        tokio::select! {
            _ = ready.notify.notified() => {}
            _ = tokio::time::sleep_until(deadline) => return ready.pop(),
            _ = shutdown.changed() => return None,
        }
        if let Some(msg) = ready.pop() {
            return Some(msg);
        }
    }
}

/// What a message-rate throttle said about the next message.
#[derive(Debug, PartialEq, Eq)]
enum ThrottleWait {
    Allowed,
    /// Shutdown came first: the message must not be sent, nor lost.
    Shutdown,
    /// The throttle would hold the message longer than `idle_timeout`.
    TooLong(Duration),
}

/// Waits until the throttle allows one more, unless that would take
/// longer than `longest` (the path's `idle_timeout`).
async fn wait_for_throttle(
    mgr: &QueueManager,
    key: &str,
    spec: &tern_types::ThrottleSpec,
    longest: Duration,
) -> ThrottleWait {
    let mut shutdown = mgr.shutdown.clone();
    while let Some(wait) = mgr.throttles.check(key, spec).await.retry_after {
        if mgr.shutting_down() {
            return ThrottleWait::Shutdown;
        }
        if wait > longest {
            return ThrottleWait::TooLong(wait);
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => {}
        }
    }
    ThrottleWait::Allowed
}

/// What became of one recipient in a delivery attempt.
struct RecipientOutcome {
    recipient: EnvelopeAddress,
    outcome: Outcome,
    response: DeliveryResponse,
    /// The response is the peer's refusal (or the 8-bit check), which
    /// `smtp_client_rewrite_delivery_status` may rewrite; a transport
    /// failure (timeout, dropped connection) is not.
    from_peer: bool,
}

impl RecipientOutcome {
    fn new(
        recipient: EnvelopeAddress,
        outcome: Outcome,
        response: DeliveryResponse,
        from_peer: bool,
    ) -> Self {
        Self {
            recipient,
            outcome,
            response,
            from_peer,
        }
    }
}

/// One message over `conn`, in as many transactions as
/// `max_recipients_per_batch` needs; then its disposition per recipient.
/// With `retry_elsewhere` (`try_next_host_on_transport_error`), a message
/// whose first transaction hits a transport error (not a 421) goes back to
/// the front of the ready queue, unlogged, for the next host.
async fn deliver_one(
    mgr: &Arc<QueueManager>,
    ready: &ReadyQueue,
    path: &EgressPathConfig,
    conn: &mut SmtpConnection,
    msg: Message,
    facts: &AttemptFacts,
    retry_elsewhere: bool,
) {
    let sender = msg.sender();
    let mut pending: VecDeque<EnvelopeAddress> = msg.recipients().into();
    let data = msg.data();
    let batch_size = path.max_recipients_per_batch.max(1);
    let mut outcomes: Vec<RecipientOutcome> = Vec::with_capacity(pending.len());
    while !pending.is_empty() {
        let take = pending.len().min(batch_size);
        let batch: Vec<EnvelopeAddress> = pending.drain(..take).collect();
        if !conn.is_usable() {
            let response = DeliveryResponse::internal(
                451,
                None,
                "KumoMTA internal: the connection was lost before this transaction",
            );
            outcomes.extend(
                batch
                    .into_iter()
                    .chain(pending.drain(..))
                    .map(|r| RecipientOutcome::new(r, Outcome::Transient, response.clone(), false)),
            );
            break;
        }
        match conn.send(&sender, &batch, &data).await {
            Ok(results) => {
                let mut retry_now = Vec::new();
                for (recipient, result) in batch.into_iter().zip(results) {
                    if result.too_many {
                        retry_now.push(recipient);
                    } else {
                        outcomes.push(RecipientOutcome::new(
                            recipient,
                            result.outcome,
                            result.response,
                            true,
                        ));
                    }
                }
                // "Too many recipients": the rest go in the next transaction
                // on this connection, without a log record.
                for recipient in retry_now.into_iter().rev() {
                    pending.push_front(recipient);
                }
            }
            Err(err) => {
                let answered = err.recipient_results();
                if !answered.is_empty() {
                    // A 421 in the middle: the replies already given stand,
                    // the recipients after it are transient.
                    for (recipient, result) in batch.into_iter().zip(answered) {
                        outcomes.push(RecipientOutcome::new(
                            recipient,
                            result.outcome,
                            result.response.clone(),
                            true,
                        ));
                    }
                    let response = err.response();
                    outcomes.extend(pending.drain(..).map(|r| {
                        RecipientOutcome::new(r, Outcome::Transient, response.clone(), true)
                    }));
                    break;
                }
                if retry_elsewhere && outcomes.is_empty() && !err.is_permanent() {
                    ready.unpop(msg);
                    return;
                }
                let response = err.response();
                // Only the 8-bit checks stand for a refusal; timeouts, I/O
                // errors and protocol errors are not asked about.
                let rewritable = err.is_permanent();
                let outcome = if err.is_permanent() {
                    Outcome::Permanent
                } else {
                    Outcome::Transient
                };
                outcomes.extend(
                    batch
                        .into_iter()
                        .chain(pending.drain(..))
                        .map(|r| RecipientOutcome::new(r, outcome, response.clone(), rewritable)),
                );
            }
        }
    }
    settle(mgr, ready, msg, outcomes, facts).await;
}

/// Log each recipient's outcome, then remove the message or requeue the
/// recipients that failed transiently.
async fn settle(
    mgr: &Arc<QueueManager>,
    ready: &ReadyQueue,
    msg: Message,
    outcomes: Vec<RecipientOutcome>,
    facts: &AttemptFacts,
) {
    let queue = queue_of(&msg);
    let outcomes = rewrite_statuses(mgr, &queue, outcomes).await;
    let single = outcomes.len() == 1;
    let mut transient = Vec::new();
    let mut first_transient: Option<Response> = None;
    for RecipientOutcome {
        recipient,
        outcome,
        response,
        ..
    } in outcomes
    {
        let kind = match outcome {
            Outcome::Delivered => RecordType::Delivery,
            Outcome::Permanent => RecordType::Bounce,
            Outcome::Transient => RecordType::TransientFailure,
        };
        count_outcome(mgr, ready, kind, 1);
        let response = to_log_response(&response);
        if outcome == Outcome::Transient {
            first_transient.get_or_insert_with(|| response.clone());
            transient.push(recipient.clone());
        }
        let only: &[EnvelopeAddress] = std::slice::from_ref(&recipient);
        // One record per recipient when a message had several, each
        // naming its own recipient.
        let recipients = (!single).then_some(only);
        disposition::log_full(
            mgr,
            kind,
            &msg,
            recipients,
            &queue,
            &ready.name,
            response,
            Some(facts),
        )
        .await;
    }
    match first_transient {
        None => disposition::remove(mgr, &msg).await,
        Some(response) => {
            if transient.len() != msg.recipient_count() {
                msg.set_recipients(transient);
            }
            disposition::requeue(
                mgr,
                msg,
                Requeue::after_transient_failure(&response),
                &queue,
            )
            .await;
        }
    }
}

/// `smtp_client_rewrite_delivery_status(response, domain, tenant,
/// campaign, routing_domain)` (§7.5): for every refusal by the peer (a reply
/// other than 250 to MAIL, RCPT, DATA or the final dot, and the 8-bit
/// checks), a handler may return a new code; the content then notes the
/// rewrite and the outcome follows the new code. As in KumoMTA, failures
/// without a reply (timeouts, dropped connections) are not rewritten.
async fn rewrite_statuses(
    mgr: &QueueManager,
    queue: &str,
    mut outcomes: Vec<RecipientOutcome>,
) -> Vec<RecipientOutcome> {
    const EVENT: &str = "smtp_client_rewrite_delivery_status";
    for item in &mut outcomes {
        item.from_peer &= item.response.code != 250;
    }
    if !outcomes.iter().any(|item| item.from_peer)
        || !mgr.engine.has_handler(EVENT).await.unwrap_or(false)
    {
        return outcomes;
    }
    let parts = tern_types::QueueName::parse(queue);
    for RecipientOutcome {
        outcome, response, ..
    } in outcomes.iter_mut().filter(|item| item.from_peer)
    {
        let args = (
            response.to_single_line(),
            parts.domain.clone(),
            parts.tenant.clone(),
            parts.campaign.clone(),
            parts.routing_domain.clone(),
        );
        let answer = mgr
            .engine
            .dispatch(
                EVENT,
                move |lua| mlua::IntoLuaMulti::into_lua_multi(args, lua),
                |_, values| match values.into_iter().next() {
                    Some(mlua::Value::Integer(code)) => Ok(u16::try_from(code).ok()),
                    Some(mlua::Value::Number(code)) if code.fract() == 0.0 => {
                        Ok(u16::try_from(code as i64).ok())
                    }
                    _ => Ok(None),
                },
            )
            .await;
        match answer {
            Ok(Some(Some(code))) if (200..600).contains(&code) && code != response.code => {
                response.content = format!(
                    "{} (kumomta: status was rewritten from {} -> {code})",
                    response.content, response.code
                );
                response.code = code;
                *outcome = match code {
                    200..=299 => Outcome::Delivered,
                    503 => Outcome::Transient,
                    500..=599 => Outcome::Permanent,
                    _ => Outcome::Transient,
                };
            }
            Ok(_) => {}
            Err(err) => tracing::error!("{EVENT}: {err}"),
        }
    }
    outcomes
}

/// Maildir delivery (§22) straight from the scheduled queue: the message
/// is written once per recipient, into the folder the path template gives
/// for that recipient. One `Delivery` record when all were written; on a
/// failure, a `TransientFailure` and another try in about a minute (the
/// backoff does not apply).
pub async fn deliver_maildir(
    mgr: &Arc<QueueManager>,
    msg: Message,
    queue: &str,
    proto: &MaildirProtocol,
) {
    let parts = tern_types::QueueName::parse(queue);
    let sender = msg.sender();
    let mut common = serde_json::Map::new();
    common.insert("meta".into(), serde_json::Value::Object(msg.meta()));
    common.insert("queue".into(), queue.into());
    common.insert("campaign".into(), parts.campaign.clone().into());
    common.insert("tenant".into(), parts.tenant.clone().into());
    common.insert("domain".into(), parts.domain.clone().into());
    common.insert("routing_domain".into(), parts.routing_domain.clone().into());
    common.insert("sender_local_part".into(), sender.user().to_string().into());
    common.insert(
        "sender_domain_part".into(),
        sender.domain().to_string().into(),
    );
    common.insert("sender_email".into(), sender.to_string().into());
    let per_recipient: Vec<serde_json::Map<String, serde_json::Value>> = msg
        .recipients()
        .iter()
        .map(|rcpt| {
            let mut vars = common.clone();
            vars.insert("local_part".into(), rcpt.user().to_string().into());
            vars.insert("domain_part".into(), rcpt.domain().to_string().into());
            vars.insert("email".into(), rcpt.to_string().into());
            vars
        })
        .collect();
    let proto = proto.clone();
    let data = msg.data();
    let result = tokio::task::spawn_blocking(move || {
        per_recipient
            .iter()
            .map(|vars| tern_delivery::deliver_maildir(&proto, vars, &data))
            .collect::<Result<Vec<_>, _>>()
    })
    .await;
    let facts = AttemptFacts {
        delivery_protocol: Some("Maildir"),
        ..Default::default()
    };
    let failure = match result {
        Ok(Ok(paths)) => {
            let recipients: Vec<String> = msg.recipients().iter().map(|r| r.to_string()).collect();
            let written: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            let response = Response::new(
                200,
                None,
                format!(
                    "{}: wrote to maildir with id={}, paths={}",
                    recipients.join(", "),
                    msg.id(),
                    written.join(", ")
                ),
            );
            disposition::log(
                mgr,
                RecordType::Delivery,
                &msg,
                queue,
                "",
                response,
                Some(&facts),
            )
            .await;
            disposition::remove(mgr, &msg).await;
            return;
        }
        Ok(Err(err)) => err.to_string(),
        Err(err) => err.to_string(),
    };
    let response = internal(
        451,
        "4.3.0",
        &format!("KumoMTA internal: maildir: {failure}"),
    );
    disposition::log(
        mgr,
        RecordType::TransientFailure,
        &msg,
        queue,
        "",
        response,
        Some(&facts),
    )
    .await;
    let mut how = Requeue::throttled("LoggedTransientFailure", Duration::from_secs(60));
    how.logged = true;
    disposition::requeue(mgr, msg, how, queue).await;
}
