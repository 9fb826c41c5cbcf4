//! Init-time configuration functions: `kumo.define_spool`,
//! `kumo.start_esmtp_listener`, `kumo.start_http_listener`,
//! `kumo.configure_local_logs`, and the thread-pool knobs.
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
        // Tern runs every component on one shared tokio runtime, so the
        // per-pool thread counts of upstream have nothing to size. They are
        // accepted (policies call them in pre_init) and said to be ignored.
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
        for name in [
            "set_smtpsrv_threads",
            "set_httpinject_threads",
            "set_spoolin_threads",
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
