//! `POST /api/inject/v1` (spec §4.3–4.4): parse the request, expand it
//! into one message per recipient with `tern-inject`, run
//! `http_message_generated` for each (only when the policy has a
//! handler), add the trace headers, and hand every message of the request
//! to [`Reception::accept`] in one call, so the whole request shares one
//! group-committed spool sync.
//!
//! Template compilation and message assembly are CPU work; they run on
//! the blocking pool so the listener's event loop keeps serving.

use super::HttpListener;
use super::auth::{self, AuthInfo};
use super::body::{compressed_response, read_body};
use crate::reception::{AcceptError, Arrival, Reception};
use crate::state::ServerState;
use axum::Extension;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use mlua::IntoLuaMulti;
use serde_json::{Map, Value};
use std::sync::Arc;
use tern_inject::{Generator, InjectRequest, InjectResponse, RequestError};
use tern_message::Message;
use tern_types::{EnvelopeAddress, SpoolId};

/// The event fired for each generated message.
pub const GENERATED_EVENT: &str = "http_message_generated";

/// A JSON error answer: `{"error": "..."}`.
pub fn json_error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": message.into() });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Where a request came from: what the generated messages' meta and
/// trace headers say, and the `auth_info` passed to the policy.
#[derive(Clone, Debug)]
pub struct Origin {
    pub peer_ip: String,
    pub via_ip: String,
    pub hostname: String,
    pub http_auth: String,
    pub auth_info: AuthInfo,
}

impl Origin {
    fn base_meta(&self) -> Map<String, Value> {
        let mut meta = Map::new();
        meta.insert("http_auth".into(), self.http_auth.clone().into());
        meta.insert("reception_protocol".into(), "HTTP".into());
        meta.insert("received_from".into(), self.peer_ip.clone().into());
        meta.insert("received_via".into(), self.via_ip.clone().into());
        meta.insert("hostname".into(), self.hostname.clone().into());
        meta
    }

    /// Recover the origin stored on a deferred generation request.
    fn from_meta(msg: &Message) -> Self {
        let text = |key: &str| msg.get_meta_str(key).unwrap_or_default();
        let auth_info = msg
            .get_meta("auth_info")
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();
        Self {
            peer_ip: text("received_from"),
            via_ip: text("received_via"),
            hostname: text("hostname"),
            http_auth: text("http_auth"),
            auth_info,
        }
    }
}

/// What the blocking generation step needs to know about the request's
/// context.
struct Context {
    /// The listener's `hostname`: the right side of generated Message-IDs.
    hostname: String,
    /// The machine's host name, named by the `Received` header (§4.3).
    machine_hostname: String,
    peer_ip: String,
    /// Whether trace headers can be written before the policy sees the
    /// message (no `http_message_generated` handler).
    headers_up_front: bool,
    base_meta: Map<String, Value>,
}

/// One recipient after generation.
struct Prepared {
    email: String,
    outcome: Result<(SpoolId, EnvelopeAddress, Vec<u8>), String>,
}

/// Why a request could not be expanded and queued as a whole.
#[derive(Debug, thiserror::Error)]
pub enum ExpandError {
    /// Invalid content or templates (HTTP 422).
    #[error("{0}")]
    Request(#[from] RequestError),
    /// The envelope sender is not an address (HTTP 500, as KumoMTA).
    #[error("Error: envelope_sender: {0}")]
    Sender(String),
    /// The spool refused the batch; nothing was kept (HTTP 503).
    #[error("spool write failed: {0}")]
    Spool(String),
    /// The policy could not be loaded, or another internal failure.
    #[error("Error: {0}")]
    Internal(String),
}

impl ExpandError {
    fn status(&self) -> StatusCode {
        match self {
            ExpandError::Request(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ExpandError::Sender(_) | ExpandError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ExpandError::Spool(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// The name of the internal queue that holds deferred generation requests.
pub const GENERATOR_QUEUE: &str = "generator.kumomta.internal";

pub async fn inject(
    State(listener): State<Arc<HttpListener>>,
    ConnectInfo(peer): ConnectInfo<super::PeerAddr>,
    Extension(auth_info): Extension<AuthInfo>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let state = &listener.state;
    // Shutdown, memory, free space and health of both spools (§3.2's
    // order, shared with SMTP).
    if let Some(refusal) = state.refusal() {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, refusal.ingress_text());
    }
    let Some(reception) = state.reception().cloned() else {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "waiting for spool startup");
    };
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            let v = v.trim();
            v.eq_ignore_ascii_case("application/json")
                || (v.len() > 5 && v[..v.len() - 5].contains('/') && v.ends_with("+json"))
        });
    if !is_json {
        return json_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Expected request with `Content-Type: application/json`",
        );
    }
    let bytes = match read_body(&headers, body, listener.params.request_body_limit).await {
        Ok(bytes) => bytes,
        Err(response) => return response,
    };
    let request: InjectRequest = match serde_json::from_slice(&bytes) {
        Ok(request) => request,
        Err(err) => {
            let status = match err.classify() {
                serde_json::error::Category::Data => StatusCode::UNPROCESSABLE_ENTITY,
                _ => StatusCode::BAD_REQUEST,
            };
            return json_error(
                status,
                format!("Failed to deserialize the JSON body into the target type: {err}"),
            );
        }
    };
    if request.recipients.is_empty() {
        return json_error(
            StatusCode::BAD_REQUEST,
            "recipients: at least one recipient is required",
        );
    }
    let origin = Origin {
        peer_ip: peer.0.ip().to_canonical().to_string(),
        via_ip: listener.local.ip().to_canonical().to_string(),
        hostname: listener.hostname.clone(),
        http_auth: auth_info.summary_for_meta(),
        auth_info,
    };
    let result = if request.deferred_generation {
        queue_deferred(&reception, &origin, request, bytes).await
    } else {
        drop(bytes);
        expand_and_accept(state, &reception, &origin, request).await
    };
    match result {
        Ok(response) => {
            let body = serde_json::to_vec(&response).expect("response serializes");
            compressed_response(&headers, StatusCode::OK, "application/json", body)
        }
        Err(err) => {
            if !matches!(err, ExpandError::Request(_)) {
                tracing::error!("http injection from {}: {err}", origin.peer_ip);
            }
            json_error(err.status(), err.to_string())
        }
    }
}

/// `deferred_generation` (§4.5): check the templates now (422 on error),
/// then store the request itself as one message for the internal
/// generator queue; it is expanded later by [`expand_deferred`].
async fn queue_deferred(
    reception: &Reception,
    origin: &Origin,
    request: InjectRequest,
    body: Bytes,
) -> Result<InjectResponse, ExpandError> {
    let sender = EnvelopeAddress::parse(&request.envelope_sender).map_err(ExpandError::Sender)?;
    Generator::new(&request, &origin.hostname)?;
    let mut meta = origin.base_meta();
    meta.insert("queue".into(), GENERATOR_QUEUE.into());
    meta.insert(
        "auth_info".into(),
        serde_json::to_value(&origin.auth_info)
            .map_err(|e| ExpandError::Internal(e.to_string()))?,
    );
    let msg = Message::new(
        SpoolId::new(),
        sender,
        vec![EnvelopeAddress::null_sender()],
        meta,
        body,
    );
    let arrival = Arrival {
        peer: Some(("", &origin.peer_ip)),
        deferred_spool: request.deferred_spool,
    };
    match reception.accept(vec![msg], arrival).await {
        Ok(_) => Ok(InjectResponse::default()),
        Err(AcceptError::Spool(err)) => Err(ExpandError::Spool(err)),
        Err(err) => Err(ExpandError::Internal(err.to_string())),
    }
}

/// Expand a deferred generation request taken from the
/// `generator.kumomta.internal` queue, exactly as an immediate request:
/// one message per recipient, `http_message_generated`, spooling and
/// queueing. For the queue layer: `Ok` means the request is done (remove
/// it; per-recipient failures are in the response), `Err` means nothing of
/// it was kept and it should be retried later.
pub async fn expand_deferred(
    state: &ServerState,
    msg: &Message,
) -> Result<InjectResponse, ExpandError> {
    let reception = state
        .reception()
        .cloned()
        .ok_or_else(|| ExpandError::Internal("the spool is not open yet".into()))?;
    let mut request: InjectRequest = serde_json::from_slice(&msg.data()).map_err(|err| {
        ExpandError::Internal(format!(
            "deferred generation request {} is not valid: {err}",
            msg.id()
        ))
    })?;
    request.deferred_generation = false;
    let origin = Origin::from_meta(msg);
    expand_and_accept(state, &reception, &origin, request).await
}

/// Generate every recipient's message, run the policy event, and hand the
/// whole request to the reception in one call.
pub async fn expand_and_accept(
    state: &ServerState,
    reception: &Reception,
    origin: &Origin,
    request: InjectRequest,
) -> Result<InjectResponse, ExpandError> {
    let sender = EnvelopeAddress::parse(&request.envelope_sender).map_err(ExpandError::Sender)?;
    let has_handler = state
        .engine
        .has_handler(GENERATED_EVENT)
        .await
        .map_err(|err| ExpandError::Internal(format!("cannot load the policy: {err}")))?;
    let context = Context {
        hostname: origin.hostname.clone(),
        machine_hostname: state.hostname.clone(),
        peer_ip: origin.peer_ip.clone(),
        headers_up_front: !has_handler,
        base_meta: origin.base_meta(),
    };

    let generated = tokio::task::spawn_blocking(move || {
        let prepared = generate_all(&request, &context);
        (request, context, prepared)
    })
    .await;
    let (request, context, prepared) = match generated {
        Ok((request, context, prepared)) => (request, context, prepared?),
        Err(err) => return Err(ExpandError::Internal(format!("generation failed: {err}"))),
    };

    let mut response = InjectResponse::default();
    let mut messages = Vec::with_capacity(prepared.len());
    for (index, item) in prepared.into_iter().enumerate() {
        let (id, recipient, data) = match item.outcome {
            Ok(parts) => parts,
            Err(err) => {
                response.fail(&item.email, err);
                continue;
            }
        };
        let mut meta = context.base_meta.clone();
        if let Some(extra) = &request.recipients[index].metadata
            && !extra.is_empty()
        {
            meta.insert("extra".into(), Value::Object(extra.clone()));
        }
        let msg = Message::new(id, sender.clone(), vec![recipient], meta, Bytes::from(data));
        if has_handler {
            if let Err(err) = fire_generated(state, &msg, &origin.auth_info).await {
                response.fail(&item.email, err);
                continue;
            }
            if request.trace_headers.supplemental_header {
                let value = supplemental_value(&item.email, &request, |name| msg.get_meta(name));
                if let Err(err) =
                    msg.prepend_header(&request.trace_headers.header_name, &value, false)
                {
                    response.fail(&item.email, err);
                    continue;
                }
            }
        }
        messages.push((item.email, msg));
    }

    let (emails, to_accept) = split_null_queue(messages, &mut response);
    let count = to_accept.len();
    if count > 0 {
        let arrival = Arrival {
            peer: Some(("", &context.peer_ip)),
            deferred_spool: request.deferred_spool,
        };
        match accept(reception, to_accept, arrival).await {
            Ok(()) => response.success_count += count,
            Err(AcceptError::Spool(err)) => return Err(ExpandError::Spool(err)),
            Err(err @ AcceptError::QueueName { .. }) => {
                tracing::error!("http injection: {err}");
                for email in emails {
                    response.fail(&email, &err);
                }
            }
        }
    }
    Ok(response)
}

async fn accept(
    reception: &Reception,
    messages: Vec<Message>,
    arrival: Arrival<'_>,
) -> Result<(), AcceptError> {
    reception.accept(messages, arrival).await.map(|_| ())
}

/// Drop messages bound for the `null` queue: they count as delivered but
/// are neither spooled nor logged for HTTP (§5.3, Part V.13). A message
/// whose queue cannot be computed (e.g. a null recipient the policy did
/// not route) fails its own recipient here, so that it cannot make
/// `accept` refuse the rest of the request.
fn split_null_queue(
    messages: Vec<(String, Message)>,
    response: &mut InjectResponse,
) -> (Vec<String>, Vec<Message>) {
    let mut emails = Vec::with_capacity(messages.len());
    let mut kept = Vec::with_capacity(messages.len());
    for (email, msg) in messages {
        match msg.queue_name() {
            Ok(queue) if queue == "null" => {
                response.success_count += 1;
                continue;
            }
            Ok(_) => {}
            Err(reason) => {
                response.fail(&email, format!("cannot compute the queue name: {reason}"));
                continue;
            }
        }
        emails.push(email);
        kept.push(msg);
    }
    (emails, kept)
}

/// Compile the request once and build every recipient's message.
fn generate_all(request: &InjectRequest, context: &Context) -> Result<Vec<Prepared>, RequestError> {
    let generator = Generator::new(request, &context.hostname)?;
    let sender_domain = request
        .envelope_sender
        .rsplit_once('@')
        .map(|(_, d)| d)
        .unwrap_or("");
    let date = chrono::Utc::now()
        .format("%a, %d %b %Y %H:%M:%S +0000")
        .to_string();
    let trace = &request.trace_headers;
    let mut prepared = Vec::with_capacity(request.recipients.len());
    for recipient in &request.recipients {
        let email = recipient.email.clone();
        let outcome = EnvelopeAddress::parse(&recipient.email)
            .map_err(|err| format!("invalid recipient address: {err}"))
            .and_then(|address| {
                let id = SpoolId::new();
                let mut data = Vec::with_capacity(generator.size_hint() + 512);
                if context.headers_up_front && trace.supplemental_header {
                    let value = supplemental_value(&recipient.email, request, |name| {
                        context.base_meta.get(name).cloned()
                    });
                    tern_inject::encode::write_unstructured_header(
                        &mut data,
                        &trace.header_name,
                        &value,
                    );
                }
                if trace.received_header {
                    data.extend_from_slice(
                        format!(
                            "Received: from {sender_domain} ({})\r\n  by {} (KumoMTA)\r\n  with HTTP id {id} for <{}>;\r\n  {date}\r\n",
                            context.peer_ip, context.machine_hostname, recipient.email
                        )
                        .as_bytes(),
                    );
                }
                generator.generate_into(&mut data, recipient)?;
                Ok((id, address, data))
            });
        prepared.push(Prepared { email, outcome });
    }
    Ok(prepared)
}

/// The supplemental trace header's value (§3.10) for one recipient.
fn supplemental_value(
    email: &str,
    request: &InjectRequest,
    meta: impl Fn(&str) -> Option<Value>,
) -> String {
    crate::trace::supplemental_value(
        email.into(),
        &request.trace_headers.include_meta_names,
        meta,
    )
}

/// Run `http_message_generated(msg, auth_info)`; an error or
/// `kumo.reject` fails this recipient with its text.
async fn fire_generated(
    state: &ServerState,
    msg: &Message,
    auth_info: &AuthInfo,
) -> Result<(), String> {
    let m = msg.clone();
    let info = auth_info.clone();
    let result = state
        .engine
        .dispatch(
            GENERATED_EVENT,
            move |lua| (m, auth::to_lua(lua, &info)?).into_lua_multi(lua),
            |_, _| Ok(()),
        )
        .await;
    match result {
        Ok(_) => Ok(()),
        Err(err) => match err.rejection() {
            Some(rejection) => Err(rejection.to_string()),
            None => {
                tracing::error!("{GENERATED_EVENT}: {err}");
                Err(err.to_string())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reception::Reception;
    use tern_policy::{EngineOptions, PolicyEngine};
    use tern_spool::{Spool, SpoolConfig, SpoolKind};

    /// A server state with LocalDisk spools in a fresh folder and `policy`.
    fn server(policy: &str) -> (Arc<ServerState>, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("tern-http-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let policy_path = dir.join("init.lua");
        std::fs::write(&policy_path, policy).unwrap();
        let engine = PolicyEngine::new(EngineOptions::new(&policy_path));
        let node_id = uuid::Uuid::new_v4();
        let memory = Arc::new(crate::memory::MemoryGovernor::discover());
        let state = Arc::new(ServerState::new("gen.test".into(), node_id, engine, memory));
        let open = |name: &str| {
            Spool::open(&SpoolConfig::new(
                name,
                dir.join(name),
                SpoolKind::LocalDisk,
            ))
            .unwrap()
        };
        state.set_reception(Arc::new(Reception {
            data: open("data"),
            meta: open("meta"),
            loggers: Arc::new(Vec::new()),
            node_id,
            spooled: Default::default(),
            queues: Default::default(),
            filter: Default::default(),
            hooks: Vec::new(),
        }));
        state.set_spool_ready();
        (state, dir)
    }

    fn origin() -> Origin {
        Origin {
            peer_ip: "192.0.2.7".into(),
            via_ip: "127.0.0.1".into(),
            hostname: "gen.test".into(),
            http_auth: "alice".into(),
            auth_info: AuthInfo {
                peer_address: Some("192.0.2.7".into()),
                identities: vec![auth::Identity {
                    identity: "alice".into(),
                    context: "HttpBasicAuth".into(),
                }],
                groups: vec![],
                basic_user: Some("alice".into()),
            },
        }
    }

    #[tokio::test]
    async fn deferred_generation_round_trip() {
        let (state, dir) = server(
            r#"local kumo = require 'kumo'
kumo.on('http_message_generated', function(msg, auth_info)
  msg:set_meta('seen_identity', auth_info.identities[1].identity)
  if msg:recipient().user == 'no' then kumo.reject(550, 'refused') end
end)
"#,
        );
        let reception = state.reception().cloned().unwrap();
        let body = serde_json::json!({
            "envelope_sender": "s@example.com",
            "deferred_generation": true,
            "content": "Subject: hi {{ name }}\n\nbody\n",
            "recipients": [{"email": "a@example.com", "name": "A"},
                           {"email": "no@example.com"},
                           {"email": "b@example.com", "metadata": {"k": 1}}]
        })
        .to_string();
        let request: InjectRequest = serde_json::from_str(&body).unwrap();
        let response = queue_deferred(&reception, &origin(), request, Bytes::from(body.clone()))
            .await
            .unwrap();
        assert_eq!(response, InjectResponse::default());
        assert_eq!(
            reception.spooled.load(std::sync::atomic::Ordering::Relaxed),
            1
        );

        // What the queue layer would hold: the request as one message.
        let stored = Message::new(
            SpoolId::new(),
            EnvelopeAddress::parse("s@example.com").unwrap(),
            vec![EnvelopeAddress::null_sender()],
            {
                let mut meta = origin().base_meta();
                meta.insert("queue".into(), GENERATOR_QUEUE.into());
                meta.insert(
                    "auth_info".into(),
                    serde_json::to_value(&origin().auth_info).unwrap(),
                );
                meta
            },
            Bytes::from(body),
        );
        assert_eq!(stored.queue_name().unwrap(), GENERATOR_QUEUE);
        let response = expand_deferred(&state, &stored).await.unwrap();
        assert_eq!(response.success_count, 2, "{response:?}");
        assert_eq!(response.failed_recipients, vec!["no@example.com"]);
        assert_eq!(response.errors, vec!["no@example.com: 550 refused"]);
        assert_eq!(
            reception.spooled.load(std::sync::atomic::Ordering::Relaxed),
            3
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn deferred_generation_checks_templates_up_front() {
        let (state, dir) = server("local kumo = require 'kumo'\n");
        let reception = state.reception().cloned().unwrap();
        let body = serde_json::json!({
            "envelope_sender": "s@example.com",
            "deferred_generation": true,
            "content": "Subject: {% if %}\n\nx",
            "recipients": [{"email": "a@example.com"}]
        })
        .to_string();
        let request: InjectRequest = serde_json::from_str(&body).unwrap();
        let err = queue_deferred(&reception, &origin(), request, Bytes::from(body))
            .await
            .unwrap_err();
        assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            reception.spooled.load(std::sync::atomic::Ordering::Relaxed),
            0
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
