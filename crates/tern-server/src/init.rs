//! Init-time configuration functions: `kumo.define_spool`,
//! `kumo.start_esmtp_listener`, `kumo.start_http_listener`,
//! `kumo.configure_local_logs`, `kumo.suspend_delivery_when_spool_unhealthy`,
//! `kumo.set_spoolin_threads`, and the other thread-pool knobs.
//!
//! Each function checks its parameter table strictly and records it in the
//! shared [`InitConfig`]; the startup sequence acts on the record once
//! `init` has returned.

use crate::esmtp::params::ListenerConfig;
use crate::http::HttpListenerParams;
use mlua::{Lua, Table, Value};
use parking_lot::Mutex;
use std::sync::Arc;
use tern_log::LogConfig;
use tern_policy::events::current_event;
use tern_policy::{LuaRegistrar, from_lua_params, lua_to_json};
use tern_spool::SpoolConfig;

/// What the `init` event asked for.
#[derive(Default, Debug)]
pub struct InitConfig {
    pub spools: Vec<SpoolConfig>,
    pub esmtp_listeners: Vec<ListenerConfig>,
    pub http_listeners: Vec<HttpListenerParams>,
    pub log_configs: Vec<LogConfig>,
    pub log_hooks: Vec<tern_log::LogHookConfig>,
    /// `kumo.suspend_delivery_when_spool_unhealthy`; `None` = the default
    /// (true).
    pub suspend_delivery_when_spool_unhealthy: Option<bool>,
    /// `kumo.set_spoolin_threads`; `None` = the default (see
    /// [`InitConfig::spoolin_threads`]).
    pub spoolin_threads: Option<usize>,
}

impl InitConfig {
    /// Whether delivery pauses while a spool is latched unhealthy.
    pub fn suspend_delivery_when_spool_unhealthy(&self) -> bool {
        self.suspend_delivery_when_spool_unhealthy.unwrap_or(true)
    }

    /// How many entries spool recovery processes at once: the policy's
    /// choice, else half the CPUs (at least one), as KumoMTA sizes its
    /// spool-in pool.
    pub fn spoolin_threads(&self) -> usize {
        self.spoolin_threads.unwrap_or_else(|| {
            (std::thread::available_parallelism().map_or(1, |n| n.get()) / 2).max(1)
        })
    }
}

#[derive(Clone, Default)]
pub struct InitRecorder(Arc<Mutex<InitConfig>>);

impl InitRecorder {
    pub fn take(&self) -> InitConfig {
        std::mem::take(&mut *self.0.lock())
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut InitConfig) -> R) -> R {
        f(&mut self.0.lock())
    }
}

fn require_init(lua: &Lua, function: &str) -> mlua::Result<()> {
    match current_event(lua).as_deref() {
        Some("init") | Some("pre_init") => Ok(()),
        Some(other) => Err(mlua::Error::runtime(format!(
            "{function} may only be called from the init event, not from '{other}'"
        ))),
        None => Err(mlua::Error::runtime(format!(
            "{function} may only be called from the init event, not at the top level of the policy"
        ))),
    }
}

fn table_json(lua: &Lua, value: Value, function: &str) -> mlua::Result<serde_json::Value> {
    match value {
        Value::Table(_) => {
            lua_to_json(lua, value).map_err(|e| mlua::Error::runtime(format!("{function}: {e}")))
        }
        other => Err(mlua::Error::runtime(format!(
            "{function} expects a table of parameters, got {}",
            other.type_name()
        ))),
    }
}

impl LuaRegistrar for InitRecorder {
    fn register(&self, lua: &Lua, kumo: &Table) -> mlua::Result<()> {
        let rec = self.clone();
        kumo.raw_set(
            "define_spool",
            lua.create_function(move |lua, params: Value| {
                require_init(lua, "kumo.define_spool")?;
                let parsed: SpoolConfig = from_lua_params(lua, params, "kumo.define_spool")?;
                parsed
                    .validate()
                    .map_err(|e| mlua::Error::runtime(format!("kumo.define_spool: {e}")))?;
                rec.with(|cfg| cfg.spools.push(parsed));
                Ok(())
            })?,
        )?;
        let rec = self.clone();
        kumo.raw_set(
            "start_esmtp_listener",
            lua.create_function(move |lua, params: Value| {
                require_init(lua, "kumo.start_esmtp_listener")?;
                let json = table_json(lua, params, "kumo.start_esmtp_listener")?;
                let parsed = ListenerConfig::from_json(&json).map_err(mlua::Error::runtime)?;
                rec.with(|cfg| cfg.esmtp_listeners.push(parsed));
                Ok(())
            })?,
        )?;
        let rec = self.clone();
        kumo.raw_set(
            "start_http_listener",
            lua.create_function(move |lua, params: Value| {
                require_init(lua, "kumo.start_http_listener")?;
                let parsed: HttpListenerParams =
                    from_lua_params(lua, params, "kumo.start_http_listener")?;
                rec.with(|cfg| cfg.http_listeners.push(parsed));
                Ok(())
            })?,
        )?;
        let rec = self.clone();
        kumo.raw_set(
            "configure_local_logs",
            lua.create_function(move |lua, params: Value| {
                require_init(lua, "kumo.configure_local_logs")?;
                let json = table_json(lua, params, "kumo.configure_local_logs")?;
                let parsed = LogConfig::from_json(json.clone()).map_err(|e| {
                    mlua::Error::runtime(format!(
                        "kumo.configure_local_logs: {e}, while processing {json}"
                    ))
                })?;
                rec.with(|cfg| cfg.log_configs.push(parsed));
                Ok(())
            })?,
        )?;
        let rec = self.clone();
        kumo.raw_set(
            "configure_log_hook",
            lua.create_function(move |lua, params: Value| {
                require_init(lua, "kumo.configure_log_hook")?;
                let json = table_json(lua, params, "kumo.configure_log_hook")?;
                let parsed = tern_log::LogHookConfig::from_json(json)
                    .map_err(|e| mlua::Error::runtime(format!("kumo.configure_log_hook: {e}")))?;
                rec.with(|cfg| cfg.log_hooks.push(parsed));
                Ok(())
            })?,
        )?;
        let rec = self.clone();
        kumo.raw_set(
            "suspend_delivery_when_spool_unhealthy",
            lua.create_function(move |lua, enabled: Value| {
                require_init(lua, "kumo.suspend_delivery_when_spool_unhealthy")?;
                let Value::Boolean(enabled) = enabled else {
                    return Err(mlua::Error::runtime(format!(
                        "kumo.suspend_delivery_when_spool_unhealthy expects a boolean, got {}",
                        enabled.type_name()
                    )));
                };
                rec.with(|cfg| cfg.suspend_delivery_when_spool_unhealthy = Some(enabled));
                Ok(())
            })?,
        )?;
        // Spool recovery runs this many entries at once (§2.3).
        let rec = self.clone();
        kumo.raw_set(
            "set_spoolin_threads",
            lua.create_function(move |lua, n: Value| {
                require_init(lua, "kumo.set_spoolin_threads")?;
                let n = match n {
                    Value::Integer(n) if n >= 1 => n as usize,
                    Value::Number(n) if n >= 1.0 && n.fract() == 0.0 => n as usize,
                    other => {
                        return Err(mlua::Error::runtime(format!(
                            "kumo.set_spoolin_threads expects a positive whole number, got {}",
                            match other {
                                Value::Integer(n) => n.to_string(),
                                Value::Number(n) => n.to_string(),
                                other => other.type_name().to_string(),
                            }
                        )));
                    }
                };
                rec.with(|cfg| cfg.spoolin_threads = Some(n));
                Ok(())
            })?,
        )?;
        // Tern runs every component on one shared tokio runtime, so the
        // other per-pool thread counts of upstream have nothing to size.
        // They are accepted (policies call them in pre_init) and said to
        // be ignored.
        for name in [
            "set_smtpsrv_threads",
            "set_httpinject_threads",
            "set_readyq_threads",
            "set_ready_qmaint_threads",
            "set_qmaint_threads",
            "set_logging_threads",
        ] {
            kumo.raw_set(
                name,
                lua.create_function(move |_, n: usize| {
                    tracing::info!(
                        "kumo.{name}({n}): Tern uses one shared runtime sized to the machine; this setting has no effect"
                    );
                    Ok(())
                })?,
            )?;
        }
        Ok(())
    }
}
