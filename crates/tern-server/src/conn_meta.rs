//! Connection metadata (§3.9): the `conn_meta` object passed to every
//! `smtp_server_*` event and copied into each message's meta at DATA time.
//!
//! Besides the key/value map it remembers what a successful
//! `smtp_server_auth_plain` returned when that was an AuthInfo table
//! (extra identities and groups), so `conn_meta:auth_info()` can report it.

use mlua::{UserData, UserDataMethods, Value};
use parking_lot::Mutex;
use serde_json::Map;
use std::sync::Arc;
use tern_policy::{json_to_lua, lua_to_json};

#[derive(Default)]
struct Inner {
    values: Map<String, serde_json::Value>,
    /// Identities returned by the auth event beyond the AUTH PLAIN pair.
    extra_identities: Vec<(String, String)>,
    /// Groups returned by the auth event.
    groups: Vec<String>,
}

#[derive(Clone, Default)]
pub struct ConnectionMeta(Arc<Mutex<Inner>>);

impl ConnectionMeta {
    pub fn set(&self, key: &str, value: impl Into<serde_json::Value>) {
        self.0.lock().values.insert(key.to_string(), value.into());
    }

    pub fn get(&self, key: &str) -> Option<serde_json::Value> {
        self.0.lock().values.get(key).cloned()
    }

    /// Set `key` unless it is already present (the `orig_*` keys keep the
    /// address of the real TCP connection across several XCLIENTs).
    pub fn set_if_absent(&self, key: &str, value: impl Into<serde_json::Value>) {
        self.0
            .lock()
            .values
            .entry(key.to_string())
            .or_insert_with(|| value.into());
    }

    /// Record a successful AUTH PLAIN: `authz_id`/`authn_id`, plus what an
    /// AuthInfo table returned by the event added (`identities` entries of
    /// `{identity=..., context=...}` and `groups`).
    pub fn set_authenticated(&self, authz: &str, authc: &str, info: Option<&serde_json::Value>) {
        let mut inner = self.0.lock();
        inner.values.insert("authz_id".into(), authz.into());
        inner.values.insert("authn_id".into(), authc.into());
        let Some(info) = info else { return };
        if let Some(list) = info.get("identities").and_then(|v| v.as_array()) {
            for entry in list {
                let identity = entry.get("identity").and_then(|v| v.as_str());
                let context = entry.get("context").and_then(|v| v.as_str());
                if let (Some(identity), Some(context)) = (identity, context) {
                    inner
                        .extra_identities
                        .push((identity.to_string(), context.to_string()));
                }
            }
        }
        if let Some(list) = info.get("groups").and_then(|v| v.as_array()) {
            inner
                .groups
                .extend(list.iter().filter_map(|g| g.as_str().map(str::to_string)));
        }
    }

    pub fn get_str(&self, key: &str) -> Option<String> {
        match self.get(key)? {
            serde_json::Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn snapshot(&self) -> Map<String, serde_json::Value> {
        self.0.lock().values.clone()
    }

    pub fn merge(&self, values: &Map<String, serde_json::Value>) {
        let mut inner = self.0.lock();
        for (k, v) in values {
            inner.values.insert(k.clone(), v.clone());
        }
    }
}

impl UserData for ConnectionMeta {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("get_meta", |lua, this, name: String| {
            match this.get(&name) {
                Some(value) => json_to_lua(lua, &value),
                None => Ok(Value::Nil),
            }
        });
        methods.add_method("set_meta", |lua, this, (name, value): (String, Value)| {
            let json = lua_to_json(lua, value)?;
            this.set(&name, json);
            Ok(())
        });
        methods.add_method("auth_info", |lua, this, ()| {
            let table = lua.create_table()?;
            let identities = lua.create_table()?;
            for (key, context) in [
                ("authz_id", "SmtpAuthPlainAuthorization"),
                ("authn_id", "SmtpAuthPlainAuthentication"),
            ] {
                if let Some(id) = this.get_str(key) {
                    let entry = lua.create_table()?;
                    entry.set("identity", id)?;
                    entry.set("context", context)?;
                    identities.push(entry)?;
                }
            }
            let (extra, groups) = {
                let inner = this.0.lock();
                (inner.extra_identities.clone(), inner.groups.clone())
            };
            for (identity, context) in extra {
                let entry = lua.create_table()?;
                entry.set("identity", identity)?;
                entry.set("context", context)?;
                identities.push(entry)?;
            }
            table.set("identities", identities)?;
            table.set("groups", lua.create_sequence_from(groups)?)?;
            if let Some(peer) = this.get_str("received_from") {
                table.set("peer_address", peer)?;
            }
            Ok(table)
        });
    }
}
