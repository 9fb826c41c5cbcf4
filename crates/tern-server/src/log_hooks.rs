//! Log hooks (§12.4) and `filter_event` (§12.1): the two places where log
//! records meet the policy.
//!
//! * [`PolicyFilter`] answers a logger's `filter_event` by dispatching the
//!   named event with the message.
//! * A hook configured by `kumo.configure_log_hook` receives every record
//!   (see `Reception::feed_hooks`) through a bounded channel; one task per
//!   hook ([`run_hook`]) turns each record into a message, asks
//!   `should_enqueue_log_record(msg, hook_name)`, and gives the message to
//!   `Reception::accept` when the answer is true. The policy normally sets
//!   meta `queue` there, to a queue with a `custom_lua` protocol that posts
//!   records with `kumo.http`.

use crate::reception::{Arrival, HookSlot, Reception};
use mlua::{IntoLuaMulti, Value};
use std::sync::Arc;
use tern_log::{FilterFuture, HookMessage, LogHook, LogHookConfig, LogRecord, RecordFilter};
use tern_message::Message;
use tern_policy::PolicyEngine;
use tern_types::{EnvelopeAddress, SpoolId};
use tokio::sync::mpsc;

/// `filter_event` through the policy engine.
pub struct PolicyFilter(pub PolicyEngine);

impl RecordFilter<Message> for PolicyFilter {
    fn keep<'a>(
        &'a self,
        event: &'a str,
        message: &'a Message,
        _record: &'a LogRecord,
    ) -> FilterFuture<'a> {
        Box::pin(async move {
            let msg = message.clone();
            let answer = self
                .0
                .dispatch(
                    event,
                    move |lua| msg.into_lua_multi(lua),
                    |_, values| Ok(values.into_iter().next()),
                )
                .await
                .map_err(|err| err.to_string())?;
            match answer.flatten() {
                Some(Value::Boolean(keep)) => Ok(keep),
                Some(other) => Err(format!(
                    "the handler returned {} instead of a boolean",
                    other.type_name()
                )),
                None => Err("no handler is registered for it".to_string()),
            }
        })
    }
}

/// A receiving end for each configured hook, and the slots that feed them.
pub type HookReceivers = Vec<(Arc<LogHook>, mpsc::Receiver<HookMessage>)>;

pub fn build(configs: Vec<LogHookConfig>) -> anyhow::Result<(Vec<HookSlot>, HookReceivers)> {
    let mut slots = Vec::with_capacity(configs.len());
    let mut receivers = Vec::with_capacity(configs.len());
    for config in configs {
        let capacity = config.back_pressure.max(1);
        let hook = Arc::new(
            LogHook::new(config).map_err(|e| anyhow::anyhow!("kumo.configure_log_hook: {e}"))?,
        );
        let (tx, rx) = mpsc::channel(capacity);
        slots.push(HookSlot {
            hook: hook.clone(),
            tx,
        });
        receivers.push((hook, rx));
    }
    Ok((slots, receivers))
}

/// Turn one hook's records into messages until the channel closes.
pub async fn run_hook(
    reception: Arc<Reception>,
    engine: PolicyEngine,
    hook: Arc<LogHook>,
    mut rx: mpsc::Receiver<HookMessage>,
) {
    while let Some(made) = rx.recv().await {
        let Some(msg) = to_message(made) else {
            continue;
        };
        let name = hook.name().to_string();
        let m = msg.clone();
        let answer = engine
            .dispatch(
                "should_enqueue_log_record",
                move |lua| (m, name).into_lua_multi(lua),
                |_, values| {
                    Ok(matches!(
                        values.into_iter().next(),
                        Some(Value::Boolean(true))
                    ))
                },
            )
            .await;
        match answer {
            Ok(Some(true)) => {
                let arrival = Arrival {
                    peer: None,
                    deferred_spool: hook.config().deferred_spool,
                };
                if let Err(err) = reception.accept(vec![msg], arrival).await {
                    tracing::error!("log hook {}: {err}", hook.name());
                }
            }
            Ok(_) => {}
            Err(err) => tracing::error!(
                "log hook {}: should_enqueue_log_record failed: {err}",
                hook.name()
            ),
        }
    }
}

fn to_message(made: HookMessage) -> Option<Message> {
    let sender = if made.sender.is_empty() {
        EnvelopeAddress::null_sender()
    } else {
        EnvelopeAddress::parse(&made.sender).ok()?
    };
    let recipients: Vec<EnvelopeAddress> = made
        .recipients
        .iter()
        .filter_map(|r| EnvelopeAddress::parse(r).ok())
        .collect();
    if recipients.is_empty() {
        return None;
    }
    Some(Message::new(
        SpoolId::new(),
        sender,
        recipients,
        made.meta,
        bytes::Bytes::from(made.body),
    ))
}
