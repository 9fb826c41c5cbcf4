//! Connection metadata (§3.9): the `conn_meta` object passed to every
//! `smtp_server_*` event and copied into each message's meta at DATA time.

use mlua::{UserData, UserDataMethods, Value};
use parking_lot::Mutex;
use serde_json::Map;
use std::sync::Arc;
use tern_policy::{json_to_lua, lua_to_json};

#[derive(Clone, Default)]
pub struct ConnectionMeta(Arc<Mutex<Map<String, serde_json::Value>>>);

impl ConnectionMeta {
    pub fn set(&self, key: &str, value: impl Into<serde_json::Value>) {
        self.0.lock().insert(key.to_string(), value.into());
    }

    pub fn get(&self, key: &str) -> Option<serde_json::Value> {
        self.0.lock().get(key).cloned()
    }

    pub fn get_str(&self, key: &str) -> Option<String> {
        match self.get(key)? {
            serde_json::Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn snapshot(&self) -> Map<String, serde_json::Value> {
        self.0.lock().clone()
    }

    pub fn merge(&self, values: &Map<String, serde_json::Value>) {
        let mut meta = self.0.lock();
        for (k, v) in values {
            meta.insert(k.clone(), v.clone());
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
            table.set("identities", identities)?;
            table.set("groups", lua.create_table()?)?;
            if let Some(peer) = this.get_str("received_from") {
                table.set("peer_address", peer)?;
            }
            Ok(table)
        });
    }
}
