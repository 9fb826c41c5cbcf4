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
use axum::Extension;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
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

/// What the blocking generation step needs to know about the request's
/// context.
struct Context {
    hostname: String,
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

pub async fn inject(
    State(listener): State<Arc<HttpListener>>,
    ConnectInfo(peer): ConnectInfo<super::PeerAddr>,
    Extension(auth_info): Extension<AuthInfo>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let state = &listener.state;
    if let Some(reason) = state.ingress_refusal() {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, reason);
    }
    let Some(reception) = state.reception().cloned() else {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "waiting for spool startup");
    };
    if let Err(reason) = reception.data.check_free_space() {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, reason);
    }
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
    drop(bytes);
    if request.recipients.is_empty() {
        return json_error(
            StatusCode::BAD_REQUEST,
            "recipients: at least one recipient is required",
        );
    }
    let sender = match EnvelopeAddress::parse(&request.envelope_sender) {
        Ok(sender) => sender,
        Err(err) => {
            return json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("Error: envelope_sender: {err}"),
            );
        }
    };

    let has_handler = match state.engine.has_handler(GENERATED_EVENT).await {
        Ok(found) => found,
        Err(err) => {
            tracing::error!("cannot load the policy: {err}");
            return json_error(StatusCode::INTERNAL_SERVER_ERROR, format!("Error: {err}"));
        }
    };
    let peer_ip = peer.0.ip().to_canonical().to_string();
    let mut base_meta = Map::new();
    base_meta.insert("http_auth".into(), auth_info.summary_for_meta().into());
    base_meta.insert("reception_protocol".into(), "HTTP".into());
    base_meta.insert("received_from".into(), peer_ip.clone().into());
    base_meta.insert(
        "received_via".into(),
        listener.local.ip().to_canonical().to_string().into(),
    );
    base_meta.insert("hostname".into(), listener.hostname.clone().into());
    let context = Context {
        hostname: listener.hostname.clone(),
        peer_ip: peer_ip.clone(),
        headers_up_front: !has_handler,
        base_meta,
    };

    let generated = tokio::task::spawn_blocking(move || {
        let prepared = generate_all(&request, &context);
        (request, context, prepared)
    })
    .await;
    let (request, context, prepared) = match generated {
        Ok((request, context, Ok(prepared))) => (request, context, prepared),
        Ok((_, _, Err(err))) => {
            return json_error(StatusCode::UNPROCESSABLE_ENTITY, err.to_string());
        }
        Err(err) => {
            tracing::error!("injection request generation failed: {err}");
            return json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Error: generation failed",
            );
        }
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
            if let Err(err) = fire_generated(&listener, &msg, &auth_info).await {
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
        match accept(&reception, to_accept, arrival).await {
            Ok(()) => response.success_count += count,
            Err(AcceptError::Spool(err)) => {
                tracing::error!("http injection: spool write failed: {err}");
                return json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("spool write failed: {err}"),
                );
            }
            Err(err @ AcceptError::QueueName { .. }) => {
                tracing::error!("http injection: {err}");
                for email in emails {
                    response.fail(&email, &err);
                }
            }
        }
    }
    let body = serde_json::to_vec(&response).expect("response serializes");
    compressed_response(&headers, StatusCode::OK, "application/json", body)
}

async fn accept(
    reception: &Reception,
    messages: Vec<Message>,
    arrival: Arrival<'_>,
) -> Result<(), AcceptError> {
    reception.accept(messages, arrival).await.map(|_| ())
}

/// Drop messages bound for the `null` queue: they count as delivered but
/// are neither spooled nor logged for HTTP (§5.3, Part V.13). Messages
/// whose queue cannot be computed stay in and make `accept` fail.
fn split_null_queue(
    messages: Vec<(String, Message)>,
    response: &mut InjectResponse,
) -> (Vec<String>, Vec<Message>) {
    let mut emails = Vec::with_capacity(messages.len());
    let mut kept = Vec::with_capacity(messages.len());
    for (email, msg) in messages {
        if msg.queue_name().is_ok_and(|q| q == "null") {
            response.success_count += 1;
            continue;
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
                            context.peer_ip, context.hostname, recipient.email
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

/// The base64 payload of the supplemental trace header (§3.10).
fn supplemental_value(
    email: &str,
    request: &InjectRequest,
    meta: impl Fn(&str) -> Option<Value>,
) -> String {
    let mut object = Map::new();
    object.insert("_@_".into(), "\\_/".into());
    object.insert("recipient".into(), email.into());
    for name in &request.trace_headers.include_meta_names {
        if let Some(value) = meta(name) {
            object.insert(name.clone(), value);
        }
    }
    base64::engine::general_purpose::STANDARD.encode(Value::Object(object).to_string())
}

/// Run `http_message_generated(msg, auth_info)`; an error or
/// `kumo.reject` fails this recipient with its text.
async fn fire_generated(
    listener: &HttpListener,
    msg: &Message,
    auth_info: &AuthInfo,
) -> Result<(), String> {
    let m = msg.clone();
    let info = auth_info.clone();
    let result = listener
        .state
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
