//! `kumo.make_throttle(name, spec)`: named GCRA throttles for policies
//! (§III.1), for example to limit each tenant's sending in the
//! `throttle_insert_ready_queue` event, or a sender's reception rate in
//! `smtp_server_mail_from`.
//!
//! A throttle object is only a name and a spec; the state lives in the
//! [`ThrottleRegistry`] the server shares with every Lua state, so two
//! objects made with the same name (in different events, states or
//! policy reloads) count against the same limit. The key is
//! `lua-user-throttle-<name>`, apart from the queue layer's own throttles.
//! Throttles are node-local: Tern has no Redis-shared throttles yet, so a
//! spec's `local:` prefix changes nothing.

use crate::throttle::{ThrottleOutcome, ThrottleRegistry};
use mlua::{AnyUserData, Lua, ObjectLike, UserData, UserDataMethods};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tern_policy::LuaRegistrar;
use tern_types::ThrottleSpec;

/// Installs `kumo.make_throttle`; every state gets the same registry.
#[derive(Clone, Debug)]
pub struct ThrottleLuaRegistrar {
    registry: Arc<ThrottleRegistry>,
}

impl ThrottleLuaRegistrar {
    pub fn new(registry: Arc<ThrottleRegistry>) -> Self {
        Self { registry }
    }
}

impl LuaRegistrar for ThrottleLuaRegistrar {
    fn register(&self, lua: &Lua, kumo: &mlua::Table) -> mlua::Result<()> {
        let registry = self.registry.clone();
        kumo.raw_set(
            "make_throttle",
            lua.create_function(move |_, (name, spec): (String, String)| {
                let parsed: ThrottleSpec = spec.parse().map_err(|err| {
                    mlua::Error::runtime(format!(
                        "kumo.make_throttle: '{spec}' is not a throttle spec: {err}"
                    ))
                })?;
                Ok(LuaThrottle {
                    registry: registry.clone(),
                    key: format!("lua-user-throttle-{name}"),
                    spec: parsed,
                    spec_text: spec,
                })
            })?,
        )
    }
}

/// The object `kumo.make_throttle` returns.
pub struct LuaThrottle {
    registry: Arc<ThrottleRegistry>,
    key: String,
    spec: ThrottleSpec,
    spec_text: String,
}

impl LuaThrottle {
    fn check(&self) -> ThrottleOutcome {
        self.registry
            .check_detailed(&self.key, &self.spec, Instant::now())
    }
}

impl UserData for LuaThrottle {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        // Check and count one event; the figures, durations in seconds.
        methods.add_method("throttle", |lua, this, ()| {
            let outcome = this.check();
            let table = lua.create_table()?;
            table.set("throttled", outcome.throttled)?;
            table.set("limit", outcome.limit)?;
            table.set("remaining", outcome.remaining)?;
            table.set("reset_after", outcome.reset_after.as_secs_f64())?;
            table.set("retry_after", outcome.retry_after.map(|d| d.as_secs_f64()))?;
            Ok(table)
        });
        // Wait (without blocking other events) until the event is allowed;
        // true when it had to wait.
        methods.add_async_method("sleep_if_throttled", |_, this, ()| async move {
            let mut waited = false;
            while let Some(wait) = this.check().retry_after {
                waited = true;
                tokio::time::sleep(wait).await;
            }
            Ok(waited)
        });
        // For `throttle_insert_ready_queue`: when refused, move the
        // message's due time to when the throttle allows it; true then.
        methods.add_method(
            "delay_message_if_throttled",
            |_, this, msg: AnyUserData| match this.check().retry_after {
                None => Ok(false),
                Some(wait) => {
                    let due = SystemTime::now() + wait;
                    let secs = due
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_secs_f64();
                    msg.call_method::<mlua::Value>("set_due", secs)?;
                    Ok(true)
                }
            },
        );
        methods.add_method("explain", |_, this, ()| {
            Ok(format!(
                "{}: {} (one every {:?}, burst {}, node-local)",
                this.key,
                this.spec_text,
                this.spec.emission_interval(),
                this.spec.max_burst
            ))
        });
        methods.add_meta_method(mlua::MetaMethod::ToString, |_, this, ()| {
            Ok(format!("throttle {} {}", this.key, this.spec_text))
        });
    }
}
