//! `kumo.make_listener_domain` (§3.6): per-domain relaying rules returned
//! by the `get_listener_domain` event.

use mlua::{Lua, LuaSerdeExt, Table, Value};
use serde::{Deserialize, Serialize};
use tern_policy::{LuaRegistrar, from_lua_params};
use tern_types::{CidrSet, DurationSpec};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum ReportDisposition {
    #[default]
    Ignore,
    LogThenRelay,
    LogThenDrop,
}

impl<'de> Deserialize<'de> for ReportDisposition {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Text(String),
        }
        match Raw::deserialize(d)? {
            // Legacy booleans: true = LogThenRelay, false = Ignore.
            Raw::Bool(true) => Ok(Self::LogThenRelay),
            Raw::Bool(false) => Ok(Self::Ignore),
            Raw::Text(t) => match t.as_str() {
                "Ignore" => Ok(Self::Ignore),
                "LogThenRelay" => Ok(Self::LogThenRelay),
                "LogThenDrop" => Ok(Self::LogThenDrop),
                other => Err(serde::de::Error::custom(format!(
                    "unknown disposition '{other}': expected Ignore, LogThenRelay or LogThenDrop"
                ))),
            },
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerDomain {
    #[serde(default)]
    pub relay_to: bool,
    #[serde(default)]
    pub relay_from: CidrSet,
    #[serde(default)]
    pub log_oob: ReportDisposition,
    #[serde(default)]
    pub log_arf: ReportDisposition,
    /// Deprecated and ignored, accepted for compatibility.
    #[serde(default)]
    pub ttl: Option<DurationSpec>,
}

impl ListenerDomain {
    /// RCPT is accepted (though maybe not relayed) when reports are logged.
    pub fn accepts_reports(&self) -> bool {
        self.log_oob != ReportDisposition::Ignore || self.log_arf != ReportDisposition::Ignore
    }
}

pub struct ListenerDomainRegistrar;

impl LuaRegistrar for ListenerDomainRegistrar {
    fn register(&self, lua: &Lua, kumo: &Table) -> mlua::Result<()> {
        kumo.raw_set(
            "make_listener_domain",
            lua.create_function(|lua, params: Value| {
                let parsed: ListenerDomain =
                    from_lua_params(lua, params, "kumo.make_listener_domain")?;
                // Returned as a plain table; the session re-reads it as JSON.
                lua.to_value_with(&parsed, tern_policy::params::serialize_options())
            })?,
        )
    }
}
