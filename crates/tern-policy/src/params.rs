//! Conversion between Lua values and Rust/JSON values.
//!
//! Every `kumo.make_*`, `kumo.start_*` and `kumo.define_*` function takes a
//! single table that must match a Rust struct exactly: an unknown key is an
//! error that names the key and the function (§0.1). The structs themselves
//! live in the crates that use them; this module only does the conversion
//! and the error wording.

use mlua::serde::{DeserializeOptions, SerializeOptions};
use mlua::{Lua, LuaSerdeExt, Value};
use serde::de::DeserializeOwned;

fn deserialize_options() -> DeserializeOptions {
    DeserializeOptions::new()
        .deny_unsupported_types(false)
        .deny_recursive_tables(true)
}

/// Options that map JSON `null` / Rust `None` to Lua `nil` rather than to
/// mlua's `NULL` light userdata, which policies cannot compare with nil.
pub fn serialize_options() -> SerializeOptions {
    SerializeOptions::new()
        .serialize_none_to_null(false)
        .serialize_unit_to_null(false)
}

/// Deserialize a Lua parameter table into `T`. Errors read like
/// `kumo.make_queue_config: unknown field `foo`, expected one of ...,
/// while processing {"foo":1}`.
pub fn from_lua_params<T: DeserializeOwned>(
    lua: &Lua,
    value: Value,
    function: &str,
) -> mlua::Result<T> {
    // The JSON rendering is only for the error text, so it is built only
    // when parsing fails: this function is on the path of every realtime
    // `kumo.make_*` call.
    lua.from_value_with::<T>(value.clone(), deserialize_options())
        .map_err(|err| {
            let what = match lua_to_json(lua, value) {
                Ok(json) => format!(", while processing {json}"),
                Err(_) => String::new(),
            };
            mlua::Error::runtime(format!("{function}: {}{what}", strip_mlua_prefix(&err)))
        })
}

fn strip_mlua_prefix(err: &mlua::Error) -> String {
    let text = err.to_string();
    text.strip_prefix("deserialize error: ")
        .map(str::to_string)
        .unwrap_or(text)
}

/// Convert a Lua value into JSON. Functions and userdata are an error.
pub fn lua_to_json(lua: &Lua, value: Value) -> mlua::Result<serde_json::Value> {
    lua.from_value_with(value, DeserializeOptions::new().deny_recursive_tables(true))
}

/// Convert JSON into a Lua value (`null` becomes `nil`).
pub fn json_to_lua(lua: &Lua, value: &serde_json::Value) -> mlua::Result<Value> {
    lua.to_value_with(value, serialize_options())
}
