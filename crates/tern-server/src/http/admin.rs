//! The admin endpoints that act on the queues (§16): `/api/admin/bounce/v1`
//! and `/api/admin/suspend/v1`, each with `POST` (make a rule), `GET`
//! (list the active rules) and `DELETE` (cancel one by id), and
//! `POST /api/admin/rebind/v1` (a one-off move); and
//! `GET /api/admin/inspect-message/v1`, which reads a message back from
//! the spool; and `/api/admin/suspend-ready-q/v1` (one ready queue skipped
//! by source selection).
//!
//! This module only translates HTTP and JSON; the rules and what they do
//! to messages live in [`crate::queue::admin`]. Only trusted hosts reach
//! these routes (the default ACL in [`super::auth`]).
//!
//! Request bodies are parsed strictly: an unknown field is a `400`, not
//! ignored, because a misspelt criterion (`"domian"`) would otherwise
//! leave a rule with no criteria, which matches every queue.

use super::HttpListener;
use super::body::read_body;
use super::inject::json_error;
use crate::queue::QueueManager;
use crate::queue::admin::{AdminRules, BounceRule, Criteria, ReadySuspendRule, SuspendRule};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use uuid::Uuid;

/// Admin request bodies are small; this bounds what a client can make us
/// buffer.
const BODY_LIMIT: usize = 64 * 1024;
/// How long a rule lasts when the request names neither `duration` nor
/// `expires` (KumoMTA's default).
const DEFAULT_DURATION: Duration = Duration::from_secs(300);

/// The body of a bounce or suspend request (`suppress_logging` is for
/// bounces only).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleRequest {
    reason: String,
    #[serde(default)]
    domain: Option<String>,
    #[serde(default)]
    routing_domain: Option<String>,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    campaign: Option<String>,
    #[serde(default)]
    queue_names: Option<Vec<String>>,
    #[serde(default)]
    duration: Option<String>,
    #[serde(default)]
    expires: Option<String>,
    #[serde(default)]
    suppress_logging: Option<bool>,
}

/// A checked [`RuleRequest`].
struct NewRule {
    criteria: Criteria,
    reason: String,
    expires: SystemTime,
    suppress_logging: Option<bool>,
}

impl RuleRequest {
    fn check(self) -> Result<NewRule, ApiError> {
        if self.reason.trim().is_empty() {
            return Err(ApiError::bad("reason must not be empty"));
        }
        let expires = expiry(self.duration.as_deref(), self.expires.as_deref())?;
        Ok(NewRule {
            criteria: Criteria {
                domain: self.domain,
                routing_domain: self.routing_domain,
                tenant: self.tenant,
                campaign: self.campaign,
                queue_names: self.queue_names,
            },
            reason: self.reason,
            expires,
            suppress_logging: self.suppress_logging,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RebindRequest {
    reason: String,
    data: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    domain: Option<String>,
    #[serde(default)]
    routing_domain: Option<String>,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    campaign: Option<String>,
    #[serde(default)]
    always_flush: bool,
    #[serde(default)]
    suppress_logging: bool,
    #[serde(default)]
    trigger_rebind_event: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadySuspendRequest {
    /// The ready queue (`source->site@smtp_client`, as in the logs'
    /// `site` field and the metrics' `smtp_client:` services).
    name: String,
    reason: String,
    #[serde(default)]
    duration: Option<String>,
    #[serde(default)]
    expires: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelRequest {
    id: Uuid,
}

/// Why a request was refused: a JSON error, or an answer made elsewhere
/// (the body reader's 413/415), kept boxed so results stay small.
enum ApiError {
    Json(StatusCode, String),
    Made(Box<Response>),
}

impl ApiError {
    fn bad(text: impl Into<String>) -> Self {
        Self::Json(StatusCode::BAD_REQUEST, text.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Json(status, text) => json_error(status, text),
            ApiError::Made(response) => *response,
        }
    }
}

fn json_ok(value: Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

async fn parse<T: DeserializeOwned>(headers: &HeaderMap, body: Body) -> Result<T, ApiError> {
    let bytes = read_body(headers, body, BODY_LIMIT)
        .await
        .map_err(|r| ApiError::Made(Box::new(r)))?;
    serde_json::from_slice(&bytes)
        .map_err(|err| ApiError::bad(format!("invalid request body: {err}")))
}

fn queues(listener: &HttpListener) -> Result<Arc<QueueManager>, ApiError> {
    listener.state.queues().cloned().ok_or_else(|| {
        ApiError::Json(
            StatusCode::SERVICE_UNAVAILABLE,
            "the queues are not running yet (waiting for spool startup)".into(),
        )
    })
}

/// When a rule made now with these fields ends: `expires` (RFC 3339)
/// when given (it wins over `duration`, as KumoMTA's own example sends
/// both), else now + `duration` (default 5 minutes).
fn expiry(duration: Option<&str>, expires: Option<&str>) -> Result<SystemTime, ApiError> {
    let bad = ApiError::bad;
    if let Some(at) = expires {
        let at = chrono::DateTime::parse_from_rfc3339(at)
            .map_err(|err| bad(format!("expires {at:?} is not an RFC 3339 time: {err}")))?;
        let at = SystemTime::from(at);
        if at <= SystemTime::now() {
            return Err(bad("expires is in the past".into()));
        }
        return Ok(at);
    }
    let length = match duration {
        Some(text) => tern_types::duration::parse_duration(text)
            .map_err(|err| bad(format!("duration {text:?}: {err}")))?,
        None => DEFAULT_DURATION,
    };
    if length.is_zero() {
        return Err(bad("duration must be longer than zero".into()));
    }
    SystemTime::now()
        .checked_add(length)
        .ok_or_else(|| bad(format!("duration {length:?} is too long")))
}

/// The time left as a humantime string ("4m 59s"), whole seconds.
fn remaining(expires: SystemTime) -> String {
    let left = expires
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    humantime::format_duration(Duration::from_secs(left.as_secs())).to_string()
}

/// The fields every rule listing shares.
fn rule_json(
    id: Uuid,
    criteria: &Criteria,
    reason: &str,
    expires: SystemTime,
) -> Map<String, Value> {
    let mut entry = Map::new();
    entry.insert("id".into(), json!(id));
    entry.insert("domain".into(), json!(criteria.domain));
    entry.insert("routing_domain".into(), json!(criteria.routing_domain));
    entry.insert("tenant".into(), json!(criteria.tenant));
    entry.insert("campaign".into(), json!(criteria.campaign));
    entry.insert("queue_names".into(), json!(criteria.queue_names));
    entry.insert("reason".into(), json!(reason));
    entry.insert("duration".into(), json!(remaining(expires)));
    entry
}

fn log_rule(kind: &str, id: Uuid, criteria: &Criteria, reason: &str, expires: SystemTime) {
    tracing::warn!(
        "admin {kind} {id}: {criteria:?} ({reason}) until {}",
        humantime::format_rfc3339_seconds(expires)
    );
}

/// Answer a handler's result, whichever way it went.
fn answer(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(IntoResponse::into_response)
}

/// `DELETE`: end the rule named in the body with `cancel`.
async fn cancel(
    listener: &HttpListener,
    headers: HeaderMap,
    body: Body,
    kind: &str,
    cancel: impl FnOnce(&AdminRules, Uuid) -> bool,
) -> Result<Response, ApiError> {
    let request: CancelRequest = parse(&headers, body).await?;
    let queues = queues(listener)?;
    if !cancel(&queues.admin, request.id) {
        return Err(ApiError::Json(
            StatusCode::NOT_FOUND,
            format!("no active {kind} has id {}", request.id),
        ));
    }
    tracing::warn!("admin {kind} {} cancelled", request.id);
    Ok(json_ok(json!({})))
}

pub async fn bounce_create(
    State(listener): State<Arc<HttpListener>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    answer(
        async {
            let new = parse::<RuleRequest>(&headers, body).await?.check()?;
            let queues = queues(&listener)?;

            let suppress = new.suppress_logging.unwrap_or(false);
            let rule = Arc::new(BounceRule::new(
                new.criteria,
                new.reason,
                new.expires,
                suppress,
            ));
            log_rule(
                "bounce",
                rule.id,
                &rule.criteria,
                &rule.reason,
                rule.expires,
            );
            queues.admin.add_bounce(rule.clone());
            // The sweep runs after the answer, as in KumoMTA; the counts
            // are in the GET listing.
            tokio::spawn(crate::queue::admin::sweep(queues, rule.clone()));
            Ok(json_ok(
                json!({ "id": rule.id, "bounced": {}, "total_bounced": 0 }),
            ))
        }
        .await,
    )
}

pub async fn bounce_list(State(listener): State<Arc<HttpListener>>) -> Response {
    answer(queues(&listener).map(|queues| {
        let list = queues.admin.bounces().into_iter().map(|rule| {
            let mut entry = rule_json(rule.id, &rule.criteria, &rule.reason, rule.expires);
            let bounced = rule.bounced();
            entry.insert("total_bounced".into(), json!(bounced.values().sum::<u64>()));
            entry.insert("bounced".into(), json!(bounced));
            Value::Object(entry)
        });
        json_ok(Value::Array(list.collect()))
    }))
}

pub async fn bounce_cancel(
    State(listener): State<Arc<HttpListener>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    answer(
        cancel(
            &listener,
            headers,
            body,
            "bounce",
            AdminRules::cancel_bounce,
        )
        .await,
    )
}

pub async fn suspend_create(
    State(listener): State<Arc<HttpListener>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    answer(
        async {
            let new = parse::<RuleRequest>(&headers, body).await?.check()?;
            if new.suppress_logging.is_some() {
                return Err(ApiError::bad("suppress_logging applies to bounces only"));
            }
            let queues = queues(&listener)?;
            let rule = Arc::new(SuspendRule::new(new.criteria, new.reason, new.expires));
            log_rule(
                "suspend",
                rule.id,
                &rule.criteria,
                &rule.reason,
                rule.expires,
            );
            queues.admin.add_suspension(rule.clone());
            Ok(json_ok(json!({ "id": rule.id })))
        }
        .await,
    )
}

pub async fn suspend_list(State(listener): State<Arc<HttpListener>>) -> Response {
    answer(queues(&listener).map(|queues| {
        let list = queues.admin.suspensions().into_iter().map(|rule| {
            Value::Object(rule_json(
                rule.id,
                &rule.criteria,
                &rule.reason,
                rule.expires,
            ))
        });
        json_ok(Value::Array(list.collect()))
    }))
}

pub async fn suspend_cancel(
    State(listener): State<Arc<HttpListener>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    answer(
        cancel(
            &listener,
            headers,
            body,
            "suspension",
            AdminRules::cancel_suspension,
        )
        .await,
    )
}

pub async fn rebind(
    State(listener): State<Arc<HttpListener>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    answer(
        async {
            let request: RebindRequest = parse(&headers, body).await?;
            if request.reason.trim().is_empty() {
                return Err(ApiError::bad("reason must not be empty"));
            }
            if request.data.is_empty() && !request.trigger_rebind_event && !request.always_flush {
                return Err(ApiError::bad(
                    "data must name at least one meta key to change (or set trigger_rebind_event or always_flush)",
                ));
            }
            let queues = queues(&listener)?;
            let rebind = Arc::new(crate::queue::admin::Rebind {
                criteria: Criteria {
                    domain: request.domain,
                    routing_domain: request.routing_domain,
                    tenant: request.tenant,
                    campaign: request.campaign,
                    queue_names: None,
                },
                reason: request.reason,
                data: request.data,
                trigger_event: request.trigger_rebind_event,
                always_flush: request.always_flush,
                suppress_logging: request.suppress_logging,
            });
            tracing::warn!("admin rebind: {rebind:?}");
            // Done after the answer, as in KumoMTA; the server log gives
            // the counts when it ends.
            tokio::spawn(crate::queue::admin::rebind(queues, rebind));
            Ok(json_ok(json!({})))
        }
        .await,
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InspectQuery {
    id: String,
    #[serde(default)]
    want_body: bool,
}

/// `GET /api/admin/inspect-message/v1?id=<spool id>[&want_body=true]`:
/// the message as the spool holds it: envelope, metadata, scheduling
/// constraints, and the body when asked for. Due time and attempt count
/// live in the queue, not in the spool, and are reported as null.
pub async fn inspect_message(
    State(listener): State<Arc<HttpListener>>,
    query: Result<axum::extract::Query<InspectQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    answer(
        async {
            let axum::extract::Query(query) =
                query.map_err(|err| ApiError::bad(format!("invalid query: {err}")))?;
            let id: tern_types::SpoolId = query
                .id
                .parse()
                .map_err(|err| ApiError::bad(format!("id {:?}: {err}", query.id)))?;
            let reception = listener.state.reception().ok_or_else(|| {
                ApiError::Json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the spools are not open yet".into(),
                )
            })?;
            // Only an absent entry is a 404; a spool that fails to read is
            // the server's problem.
            let load_error = |err: tern_spool::SpoolError| match err {
                tern_spool::SpoolError::NotFound(_) => ApiError::Json(
                    StatusCode::NOT_FOUND,
                    format!("no message {id} in the spool"),
                ),
                other => ApiError::Json(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("reading {id} from the spool: {other}"),
                ),
            };
            let meta = reception.meta.load(id).await.map_err(load_error)?;
            let msg = tern_message::Message::from_meta_spool_only(id, &meta)
                .map_err(|err| ApiError::Json(StatusCode::INTERNAL_SERVER_ERROR, err))?;
            let data = if query.want_body {
                Some(reception.data.load(id).await.map_err(load_error)?)
            } else {
                None
            };
            let message = message_info(&msg, None, None, data.as_deref());
            Ok(json_ok(json!({ "id": id.to_string(), "message": message })))
        }
        .await,
    )
}

/// The `MessageInformation` of one message: envelope, meta, scheduling,
/// due time and attempts when the queue knows them, content when read.
fn message_info(
    msg: &tern_message::Message,
    due: Option<SystemTime>,
    attempts: Option<u16>,
    data: Option<&[u8]>,
) -> Value {
    let recipients: Vec<String> = msg.recipients().iter().map(|r| r.to_string()).collect();
    let recipient = match recipients.as_slice() {
        [one] => json!(one),
        _ => json!(recipients),
    };
    let mut message = Map::new();
    message.insert("sender".into(), json!(msg.sender().to_string()));
    message.insert("recipient".into(), recipient);
    message.insert("meta".into(), Value::Object(msg.meta()));
    message.insert("scheduling".into(), msg.scheduling().unwrap_or(Value::Null));
    message.insert(
        "due".into(),
        due.map_or(Value::Null, |at| json!(rfc3339(at))),
    );
    message.insert("num_attempts".into(), json!(attempts));
    if let Some(data) = data {
        message.insert("data".into(), json!(String::from_utf8_lossy(data)));
    }
    Value::Object(message)
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InspectQueueQuery {
    queue_name: String,
    #[serde(default)]
    want_body: bool,
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /api/admin/inspect-sched-q/v1?queue_name=..[&want_body=true][&limit=N]`:
/// a scheduled queue's size, configuration, and a sample of its messages
/// (all of them without `limit`), read back from the spool with their due
/// times and attempt counts.
pub async fn inspect_sched_q(
    State(listener): State<Arc<HttpListener>>,
    query: Result<
        axum::extract::Query<InspectQueueQuery>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Response {
    answer(
        async {
            let axum::extract::Query(query) =
                query.map_err(|err| ApiError::bad(format!("invalid query: {err}")))?;
            let queues = queues(&listener)?;
            let Some(queue) = queues.scheduled.lock().get(&query.queue_name).cloned() else {
                return Err(ApiError::Json(
                    StatusCode::NOT_FOUND,
                    format!("no scheduled queue named {:?}", query.queue_name),
                ));
            };
            let sample = queue.sample(query.limit.unwrap_or(usize::MAX));
            let reception = &queues.reception;
            let mut messages = Vec::new();
            for (due, msg) in &sample.messages {
                let data = query.want_body.then(|| msg.data());
                let info = message_info(msg, *due, Some(msg.num_attempts()), data.as_deref());
                messages.push(json!({ "id": msg.id().to_string(), "message": info }));
            }
            for (due, entry) in &sample.waiting {
                // An entry whose message is gone (delivered meanwhile, or
                // unreadable) is left out of the sample.
                let Ok(meta) = reception.meta.load(entry.id).await else {
                    continue;
                };
                let Ok(msg) = tern_message::Message::from_meta_spool_only(entry.id, &meta) else {
                    continue;
                };
                let data = if query.want_body {
                    reception.data.load(entry.id).await.ok()
                } else {
                    None
                };
                let info = message_info(&msg, Some(*due), Some(entry.attempts), data.as_deref());
                messages.push(json!({ "id": entry.id.to_string(), "message": info }));
            }
            let now = SystemTime::now();
            let config = queue
                .cached_config()
                .and_then(|config| serde_json::to_value(&*config).ok())
                .unwrap_or(Value::Null);
            Ok(json_ok(json!({
                "queue_name": queue.name,
                "queue_config": config,
                "delayed_metric": sample.len,
                "now": rfc3339(now),
                "last_changed": rfc3339(now.checked_sub(sample.idle_for).unwrap_or(now)),
                "num_scheduled": sample.len,
                "messages": messages,
            })))
        }
        .await,
    )
}

pub async fn suspend_ready_create(
    State(listener): State<Arc<HttpListener>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    answer(
        async {
            let request: ReadySuspendRequest = parse(&headers, body).await?;
            if request.reason.trim().is_empty() {
                return Err(ApiError::bad("reason must not be empty"));
            }
            if request.name.trim().is_empty() {
                return Err(ApiError::bad("name (the ready queue) must not be empty"));
            }
            let expires = expiry(request.duration.as_deref(), request.expires.as_deref())?;
            let queues = queues(&listener)?;
            let rule = Arc::new(ReadySuspendRule::new(request.name, request.reason, expires));
            tracing::warn!(
                "admin suspend-ready-q {}: {} ({}) until {}",
                rule.id,
                rule.name,
                rule.reason,
                humantime::format_rfc3339_seconds(rule.expires)
            );
            queues.admin.add_ready_suspension(rule.clone());
            // What already waits in that ready queue is failed over now
            // (the queue opens no connection while suspended).
            let ready = queues.ready.lock().get(&rule.name).cloned();
            if let Some(ready) = ready {
                ready.maybe_spawn(&queues);
            }
            Ok(json_ok(json!({ "id": rule.id })))
        }
        .await,
    )
}

pub async fn suspend_ready_list(State(listener): State<Arc<HttpListener>>) -> Response {
    answer(queues(&listener).map(|queues| {
        let list = queues.admin.ready_suspensions().into_iter().map(|rule| {
            json!({
                "id": rule.id,
                "name": rule.name,
                "reason": rule.reason,
                "duration": remaining(rule.expires),
                "expires": humantime::format_rfc3339_seconds(rule.expires).to_string(),
            })
        });
        json_ok(Value::Array(list.collect()))
    }))
}

pub async fn suspend_ready_cancel(
    State(listener): State<Arc<HttpListener>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    answer(
        cancel(
            &listener,
            headers,
            body,
            "ready-queue suspension",
            AdminRules::cancel_ready_suspension,
        )
        .await,
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterRequest {
    filter: String,
}

/// `POST /api/admin/set_diagnostic_log_filter/v1` with `{"filter": "..."}`
/// (`KUMOD_LOG` syntax): change what the server's diagnostic log shows,
/// without a restart.
pub async fn set_diagnostic_log_filter(headers: HeaderMap, body: Body) -> Response {
    answer(
        async {
            let request: FilterRequest = parse(&headers, body).await?;
            crate::diag::set_filter(&request.filter).map_err(ApiError::bad)?;
            Ok(json_ok(json!({})))
        }
        .await,
    )
}
