//! The `kumo` module table every Lua state starts with.
//!
//! This holds the functions that belong to the policy engine itself:
//! `kumo.on`, rejection, the epoch and pool knobs, logging, and the data
//! helpers. Crates that own other parts of the server add their functions
//! through [`crate::LuaRegistrar`]; [`namespace`] gives them sub-tables
//! such as `kumo.dns` with the same "not supported yet" behaviour for
//! unknown names.

use crate::engine::{PolicyEngine, StateData};
use crate::reject::{DisconnectMode, Rejection};
use mlua::{Function, Lua, Table, Value, Variadic};
use std::time::Duration;

/// Give `table` a metatable whose `__index` raises
/// `<prefix>.<name> is not supported by Tern yet` for unknown names.
pub fn mark_unsupported_names(lua: &Lua, table: &Table, prefix: &str) -> mlua::Result<()> {
    let prefix = prefix.to_string();
    let meta = lua.create_table()?;
    meta.raw_set(
        "__index",
        lua.create_function(
            move |_, (_table, key): (Value, Value)| -> mlua::Result<Value> {
                let name = match key {
                    Value::String(s) => s.to_string_lossy(),
                    other => format!("{other:?}"),
                };
                Err(mlua::Error::runtime(format!(
                    "{prefix}.{name} is not supported by Tern yet"
                )))
            },
        )?,
    )?;
    table.set_metatable(Some(meta))?;
    Ok(())
}

/// Get or create the sub-table `kumo.<name>`.
pub fn namespace(lua: &Lua, kumo: &Table, name: &str) -> mlua::Result<Table> {
    if let Value::Table(existing) = kumo.raw_get::<Value>(name)? {
        return Ok(existing);
    }
    let table = lua.create_table()?;
    mark_unsupported_names(lua, &table, &format!("kumo.{name}"))?;
    kumo.raw_set(name, table.clone())?;
    Ok(table)
}

fn lua_log(level: tracing::Level) -> impl Fn(&Lua, Variadic<Value>) -> mlua::Result<()> {
    move |lua, args| {
        let location = crate::events::caller_location(lua);
        let mut text = String::new();
        for (i, arg) in args.iter().enumerate() {
            if i > 0 {
                text.push(' ');
            }
            match arg {
                Value::String(s) => text.push_str(&s.to_string_lossy()),
                other => text.push_str(&other.to_string().unwrap_or_else(|_| format!("{other:?}"))),
            }
        }
        match level {
            tracing::Level::ERROR => tracing::error!(target: "lua", "{location}: {text}"),
            tracing::Level::WARN => tracing::warn!(target: "lua", "{location}: {text}"),
            tracing::Level::INFO => tracing::info!(target: "lua", "{location}: {text}"),
            _ => tracing::debug!(target: "lua", "{location}: {text}"),
        }
        Ok(())
    }
}

fn rejection_error(code: u16, message: String, disconnect: Option<DisconnectMode>) -> mlua::Error {
    mlua::Error::external(Rejection {
        code,
        message,
        disconnect,
    })
}

pub fn create(lua: &Lua) -> mlua::Result<Table> {
    let kumo = lua.create_table()?;
    mark_unsupported_names(lua, &kumo, "kumo")?;

    kumo.raw_set("version", concat!("tern ", env!("CARGO_PKG_VERSION")))?;

    kumo.raw_set(
        "on",
        lua.create_function(|lua, (event, function): (String, Function)| {
            let data = lua
                .app_data_ref::<StateData>()
                .ok_or_else(|| mlua::Error::runtime("kumo.on: no policy engine"))?;
            crate::events::kumo_on(lua, &data.handlers, event, function)
        })?,
    )?;

    kumo.raw_set(
        "reject",
        lua.create_function(|_, (code, message): (u16, String)| -> mlua::Result<()> {
            Err(rejection_error(code, message, None))
        })?,
    )?;
    kumo.raw_set(
        "disconnect",
        lua.create_function(
            |_, (code, message, mode): (u16, String, Option<String>)| -> mlua::Result<()> {
                let mode = match mode {
                    Some(mode) => DisconnectMode::parse(&mode).map_err(mlua::Error::runtime)?,
                    None => DisconnectMode::ForceDisconnect,
                };
                Err(rejection_error(code, message, Some(mode)))
            },
        )?,
    )?;

    kumo.raw_set(
        "bump_config_epoch",
        lua.create_function(|lua, ()| {
            PolicyEngine::from_lua(lua)?.epoch().bump();
            Ok(())
        })?,
    )?;
    kumo.raw_set(
        "set_config_monitor_globs",
        lua.create_function(|lua, globs: Vec<String>| {
            PolicyEngine::from_lua(lua)?.epoch().set_globs(globs);
            Ok(())
        })?,
    )?;
    kumo.raw_set(
        "eval_config_monitor_globs",
        lua.create_function(|lua, ()| {
            let engine = PolicyEngine::from_lua(lua)?;
            Ok(engine
                .epoch()
                .matching_files()
                .into_iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>())
        })?,
    )?;

    kumo.raw_set(
        "set_max_lua_context_age",
        lua.create_function(|lua, secs: f64| {
            PolicyEngine::from_lua(lua)?
                .limits()
                .set_max_age(Duration::from_secs_f64(secs.max(0.0)));
            Ok(())
        })?,
    )?;
    kumo.raw_set(
        "set_max_lua_context_use_count",
        lua.create_function(|lua, n: usize| {
            PolicyEngine::from_lua(lua)?.limits().set_max_use_count(n);
            Ok(())
        })?,
    )?;
    kumo.raw_set(
        "set_max_spare_lua_contexts",
        lua.create_function(|lua, n: usize| {
            PolicyEngine::from_lua(lua)?.limits().set_max_spare(n);
            Ok(())
        })?,
    )?;
    kumo.raw_set(
        "set_lua_gc_on_put",
        lua.create_function(|lua, pct: usize| {
            PolicyEngine::from_lua(lua)?.limits().set_gc_on_put(pct);
            Ok(())
        })?,
    )?;

    kumo.raw_set(
        "available_parallelism",
        lua.create_function(|_, ()| {
            Ok(std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1))
        })?,
    )?;
    kumo.raw_set(
        "validation_failed",
        lua.create_function(|lua, ()| {
            PolicyEngine::from_lua(lua)?.mark_validation_failed();
            Ok(())
        })?,
    )?;

    kumo.raw_set(
        "log_error",
        lua.create_function(lua_log(tracing::Level::ERROR))?,
    )?;
    kumo.raw_set(
        "log_warn",
        lua.create_function(lua_log(tracing::Level::WARN))?,
    )?;
    kumo.raw_set(
        "log_info",
        lua.create_function(lua_log(tracing::Level::INFO))?,
    )?;
    kumo.raw_set(
        "log_debug",
        lua.create_function(lua_log(tracing::Level::DEBUG))?,
    )?;

    let sleep = lua.create_async_function(|_, secs: f64| async move {
        tokio::time::sleep(Duration::from_secs_f64(secs.max(0.0))).await;
        Ok(())
    })?;
    kumo.raw_set("sleep", sleep.clone())?;
    let time = namespace(lua, &kumo, "time")?;
    time.raw_set("sleep", sleep)?;

    let uuid = namespace(lua, &kumo, "uuid")?;
    uuid.raw_set(
        "new_v4",
        lua.create_function(|_, ()| Ok(uuid::Uuid::new_v4().to_string()))?,
    )?;
    uuid.raw_set(
        "new_v7",
        lua.create_function(|_, ()| Ok(uuid::Uuid::now_v7().to_string()))?,
    )?;
    uuid.raw_set(
        "new_v1",
        lua.create_function(|_, ()| Ok(tern_types::SpoolId::new().uuid().to_string()))?,
    )?;

    let serde_ns = namespace(lua, &kumo, "serde")?;
    crate::data::register(lua, &kumo, &serde_ns)?;
    crate::memoize::register(lua, &kumo)?;

    Ok(kumo)
}
