//! Custom Lua delivery (§22): `protocol = { custom_lua = { constructor = ... } }`.
//!
//! A dispatcher session runs in its own Lua state (loaded from the policy):
//! the constructor event is called once with `(domain, tenant, campaign)`
//! of a scheduled queue feeding the ready queue and returns an object with
//! `send(self, msg)` (or `send_batch(self, msgs)` when `batch_size > 1`)
//! and an optional `close(self)`. Each message's outcome comes from how
//! `send` returns: a string is a `Delivery` (code 200, that text),
//! `kumo.reject` with a 4xx is a `TransientFailure` (421 also ends the
//! session), any other `kumo.reject` a `Bounce`, any other error a
//! `TransientFailure` that ends the session. This is what log hooks use to
//! post records to webhooks with `kumo.http`.

use super::QueueManager;
use super::disposition;
use super::ready::{ReadyQueue, queue_of};
use super::scheduled::internal;
use mlua::{Function, IntoLuaMulti, Table, Value};
use std::sync::Arc;
use std::time::Instant;
use tern_log::{RecordType, Response};
use tern_message::Message;
use tern_policy::Rejection;
use tern_queue::EgressPathConfig;
use tern_queue::config::CustomLuaProtocol;
use tern_types::QueueName;

/// What one `send` (or one message of a `send_batch`) came to.
#[derive(Clone)]
enum Sent {
    Delivered(String),
    Transient(Response, bool),
    Bounced(Response),
}

pub async fn run(
    mgr: &Arc<QueueManager>,
    ready: &Arc<ReadyQueue>,
    path: &EgressPathConfig,
    protocol: &CustomLuaProtocol,
    queue: &str,
) {
    let mut facts = ready.facts();
    facts.delivery_protocol = Some("Lua");
    facts.session_id = Some(uuid::Uuid::new_v4());
    let (lua, object) = match construct(mgr, protocol, queue).await {
        Ok(made) => made,
        Err(err) => {
            // Without a connection object nothing can be sent: fail the
            // message at the front so the error is visible and retried.
            if let Some(msg) = ready.pop() {
                let response = internal(451, "4.4.4", &format!("KumoMTA internal: {err}"));
                let queue = queue_of(&msg);
                disposition::transient(mgr, msg, &queue, &ready.name, response, Some(&facts)).await;
            }
            return;
        }
    };
    let batch_size = protocol.batch_size.max(1);
    let mut shutdown = mgr.shutdown.clone();
    let mut sent = 0usize;
    'session: while sent < path.max_deliveries_per_connection && !mgr.shutting_down() {
        let mut batch = Vec::with_capacity(batch_size);
        let first = match ready.pop() {
            Some(msg) => msg,
            None => {
                tokio::select! {
                    _ = ready.notify.notified() => {}
                    _ = tokio::time::sleep(path.idle_timeout) => {}
                    _ = shutdown.changed() => {}
                }
                match ready.pop() {
                    Some(msg) => msg,
                    None => break,
                }
            }
        };
        batch.push(first);
        let deadline = Instant::now() + protocol.max_batch_latency;
        while batch.len() < batch_size {
            match ready.pop() {
                Some(msg) => batch.push(msg),
                None if batch.len() < protocol.min_batch_size && Instant::now() < deadline => {
                    tokio::select! {
                        _ = ready.notify.notified() => {}
                        _ = tokio::time::sleep_until(deadline.into()) => {}
                    }
                }
                None => break,
            }
        }
        sent += batch.len();
        let outcomes = if batch_size == 1 {
            vec![send_one(&object, &batch[0]).await]
        } else {
            send_batch(&lua, &object, &batch).await
        };
        let mut end_session = false;
        for (msg, outcome) in batch.into_iter().zip(outcomes) {
            let queue = queue_of(&msg);
            match outcome {
                Sent::Delivered(text) => {
                    let response = Response::new(200, None, text);
                    disposition::log(
                        mgr,
                        RecordType::Delivery,
                        &msg,
                        &queue,
                        &ready.name,
                        response,
                        Some(&facts),
                    )
                    .await;
                    disposition::remove(mgr, &msg).await;
                }
                Sent::Transient(response, closes) => {
                    end_session |= closes;
                    disposition::transient(mgr, msg, &queue, &ready.name, response, Some(&facts))
                        .await;
                }
                Sent::Bounced(response) => {
                    disposition::bounce(mgr, msg, &queue, &ready.name, response, Some(&facts))
                        .await;
                }
            }
        }
        if end_session {
            break 'session;
        }
    }
    if let Ok(close) = object.get::<Function>("close")
        && let Err(err) = close.call_async::<()>(object.clone()).await
    {
        tracing::warn!("{}: close(): {err}", ready.name);
    }
}

/// A fresh Lua state and the object the constructor event returned.
async fn construct(
    mgr: &QueueManager,
    protocol: &CustomLuaProtocol,
    queue: &str,
) -> Result<(mlua::Lua, Table), String> {
    let lua = mgr.engine.new_state().await.map_err(|e| e.to_string())?;
    let parts = QueueName::parse(queue);
    let args = (parts.domain, parts.tenant, parts.campaign);
    let made = tern_policy::engine::dispatch_in(
        &lua,
        &protocol.constructor,
        move |lua| args.into_lua_multi(lua),
        |_, values| match values.into_iter().next() {
            Some(Value::Table(table)) => Ok(Some(table)),
            _ => Ok(None),
        },
    )
    .await
    .map_err(|err| format!("{}: {err}", protocol.constructor))?;
    match made.flatten() {
        Some(object) => Ok((lua, object)),
        None => Err(format!(
            "the custom_lua constructor '{}' returned no object (define it with kumo.on)",
            protocol.constructor
        )),
    }
}

async fn send_one(object: &Table, msg: &Message) -> Sent {
    let send = match object.get::<Function>("send") {
        Ok(send) => send,
        Err(_) => {
            return Sent::Transient(
                internal(
                    451,
                    "4.4.4",
                    "KumoMTA internal: the custom_lua object has no send method",
                ),
                true,
            );
        }
    };
    match send
        .call_async::<Value>((object.clone(), msg.clone()))
        .await
    {
        Ok(value) => Sent::Delivered(success_text(value)),
        Err(err) => failure(&err),
    }
}

async fn send_batch(lua: &mlua::Lua, object: &Table, batch: &[Message]) -> Vec<Sent> {
    // One call covers the whole batch, so every message shares its outcome.
    let outcome = match object.get::<Function>("send_batch") {
        Err(_) => Sent::Transient(
            internal(
                451,
                "4.4.4",
                "KumoMTA internal: the custom_lua object has no send_batch method \
                 (batch_size > 1)",
            ),
            true,
        ),
        Ok(send) => match lua.create_sequence_from(batch.iter().cloned()) {
            Err(err) => Sent::Transient(
                internal(451, "4.4.4", &format!("KumoMTA internal: {err}")),
                true,
            ),
            Ok(list) => match send.call_async::<Value>((object.clone(), list)).await {
                Ok(value) => Sent::Delivered(success_text(value)),
                Err(err) => failure(&err),
            },
        },
    };
    vec![outcome; batch.len()]
}

fn success_text(value: Value) -> String {
    match value {
        Value::String(text) => text.to_string_lossy(),
        _ => String::new(),
    }
}

fn failure(err: &mlua::Error) -> Sent {
    match Rejection::from_lua_error(err) {
        Some(rejection) => {
            let response = disposition::rejection_response(rejection);
            if (400..500).contains(&rejection.code) {
                Sent::Transient(response, rejection.code == 421)
            } else {
                Sent::Bounced(response)
            }
        }
        None => Sent::Transient(
            internal(451, "4.4.4", &format!("KumoMTA internal: {err}")),
            true,
        ),
    }
}
