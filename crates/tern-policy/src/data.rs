//! Data helpers (§13): JSON and TOML loading, parsing and encoding.
//!
//! `kumo.serde.*` are the current names; `kumo.json_*` and `kumo.toml_*`
//! are the older aliases that existing policies (and the seed's example)
//! still use. JSON may contain `//`, `#` and `/* */` comments.

use crate::params::{json_to_lua, lua_to_json};
use mlua::{Lua, Table, Value};

/// Remove `//`, `#` and `/* */` comments outside of strings.
pub fn strip_json_comments(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut in_string = false;
    let mut start = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            if b == b'\\' {
                i += 2;
                continue;
            }
            if b == b'"' {
                in_string = false;
            }
            i += 1;
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                i += 1;
            }
            b'#' => {
                out.push_str(&text[start..i]);
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                start = i;
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                out.push_str(&text[start..i]);
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                start = i;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                out.push_str(&text[start..i]);
                i += 2;
                while i < bytes.len() && !(bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/')) {
                    if bytes[i] == b'\n' {
                        // keep line numbers stable for error messages
                        out.push('\n');
                    }
                    i += 1;
                }
                i = (i + 2).min(bytes.len());
                start = i;
            }
            _ => i += 1,
        }
    }
    out.push_str(&text[start.min(text.len())..]);
    out
}

pub fn parse_json(text: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(&strip_json_comments(text)).map_err(|e| e.to_string())
}

fn read(function: &str, path: &str) -> mlua::Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| mlua::Error::runtime(format!("{function}: failed to read {path}: {e}")))
}

fn json_load(lua: &Lua, path: String, function: &str) -> mlua::Result<Value> {
    let text = read(function, &path)?;
    let value =
        parse_json(&text).map_err(|e| mlua::Error::runtime(format!("{function}: {path}: {e}")))?;
    json_to_lua(lua, &value)
}

fn json_parse(lua: &Lua, text: String, function: &str) -> mlua::Result<Value> {
    let value = parse_json(&text).map_err(|e| mlua::Error::runtime(format!("{function}: {e}")))?;
    json_to_lua(lua, &value)
}

fn toml_to_lua(lua: &Lua, text: &str, what: &str) -> mlua::Result<Value> {
    let value: toml::Value =
        toml::from_str(text).map_err(|e| mlua::Error::runtime(format!("{what}: {e}")))?;
    let json = serde_json::to_value(value).map_err(mlua::Error::external)?;
    json_to_lua(lua, &json)
}

fn encode_toml(lua: &Lua, value: Value, pretty: bool, function: &str) -> mlua::Result<String> {
    let json = lua_to_json(lua, value)?;
    let toml_value: toml::Value = serde_json::from_value(json)
        .map_err(|e| mlua::Error::runtime(format!("{function}: {e}")))?;
    let result = if pretty {
        toml::to_string_pretty(&toml_value)
    } else {
        toml::to_string(&toml_value)
    };
    result.map_err(|e| mlua::Error::runtime(format!("{function}: {e}")))
}

/// Install `kumo.serde.*` and the deprecated top-level aliases.
pub fn register(lua: &Lua, kumo: &Table, serde_ns: &Table) -> mlua::Result<()> {
    for (table, prefix) in [(serde_ns, "kumo.serde."), (kumo, "kumo.")] {
        let name = format!("{prefix}json_load");
        table.raw_set(
            "json_load",
            lua.create_function(move |lua, path: String| json_load(lua, path, &name))?,
        )?;
        let name = format!("{prefix}json_parse");
        table.raw_set(
            "json_parse",
            lua.create_function(move |lua, text: String| json_parse(lua, text, &name))?,
        )?;
        table.raw_set(
            "json_encode",
            lua.create_function(|lua, value: Value| {
                let json = lua_to_json(lua, value)?;
                serde_json::to_string(&json).map_err(mlua::Error::external)
            })?,
        )?;
        table.raw_set(
            "json_encode_pretty",
            lua.create_function(|lua, value: Value| {
                let json = lua_to_json(lua, value)?;
                serde_json::to_string_pretty(&json).map_err(mlua::Error::external)
            })?,
        )?;
        let name = format!("{prefix}toml_load");
        table.raw_set(
            "toml_load",
            lua.create_function(move |lua, path: String| {
                let text = read(&name, &path)?;
                toml_to_lua(lua, &text, &format!("{name}: {path}"))
            })?,
        )?;
        let name = format!("{prefix}toml_parse");
        table.raw_set(
            "toml_parse",
            lua.create_function(move |lua, text: String| toml_to_lua(lua, &text, &name))?,
        )?;
        let name = format!("{prefix}toml_encode");
        table.raw_set(
            "toml_encode",
            lua.create_function(move |lua, value: Value| encode_toml(lua, value, false, &name))?,
        )?;
        let name = format!("{prefix}toml_encode_pretty");
        table.raw_set(
            "toml_encode_pretty",
            lua.create_function(move |lua, value: Value| encode_toml(lua, value, true, &name))?,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_are_stripped_outside_strings() {
        let text = r#"{
            // a comment
            "a": "http://x", # another
            /* block
               comment */ "b": 2
        }"#;
        let value = parse_json(text).unwrap();
        assert_eq!(value["a"], "http://x");
        assert_eq!(value["b"], 2);
    }
}
