//! The Lua face of the queue and egress configuration:
//! `kumo.make_queue_config`, `kumo.make_egress_source`,
//! `kumo.make_egress_pool` and `kumo.make_egress_path`.
//!
//! Each constructor parses its table strictly into the Rust struct from
//! [`crate::config`] (an unknown key is an error naming the key and the
//! function), runs the struct's `validate()` so an option Tern cannot honour
//! fails at the call site with "... is not supported by Tern yet", and
//! returns the struct wrapped in a userdata ([`LuaQueueConfig`] and
//! friends). The server then takes the struct straight back out of the
//! handler's return value with [`queue_config_from_lua`] and friends,
//! without serializing it through a table again.
//!
//! The wrappers are read-only from Lua: `cfg.max_age` reads a field (the
//! value as the struct serializes it, durations as humantime strings such
//! as `"2h"`), assigning a
//! field is an error. KumoMTA documents no pattern of mutating a config
//! object after construction, so none is offered.
//!
//! The conversion helpers also accept a plain table in place of the
//! userdata, parsed with the same strict rules, because a policy that
//! builds its configs from data files may hand back the table itself.

use crate::config::ConfigError;
use crate::{EgressPathConfig, EgressPool, EgressSource, QueueConfig};
use mlua::{FromLua, Lua, MetaMethod, MultiValue, UserData, UserDataMethods, Value};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tern_policy::{LuaRegistrar, from_lua_params, json_to_lua};

/// Installs the four `kumo.make_*` constructors in every Lua state; add an
/// `Arc` of it to `EngineOptions::registrars`.
#[derive(Clone, Copy, Debug, Default)]
pub struct QueueLuaRegistrar;

impl LuaRegistrar for QueueLuaRegistrar {
    fn register(&self, lua: &Lua, kumo: &mlua::Table) -> mlua::Result<()> {
        kumo.raw_set(
            "make_queue_config",
            lua.create_function(|lua, params: Value| {
                make::<QueueConfig>(lua, params, "kumo.make_queue_config", QueueConfig::validate)
                    .map(LuaQueueConfig)
            })?,
        )?;
        kumo.raw_set(
            "make_egress_source",
            lua.create_function(|lua, params: Value| {
                make::<EgressSource>(
                    lua,
                    params,
                    "kumo.make_egress_source",
                    EgressSource::validate,
                )
                .map(LuaEgressSource)
            })?,
        )?;
        kumo.raw_set(
            "make_egress_pool",
            lua.create_function(|lua, params: Value| {
                make::<EgressPool>(lua, params, "kumo.make_egress_pool", EgressPool::validate)
                    .map(LuaEgressPool)
            })?,
        )?;
        kumo.raw_set(
            "make_egress_path",
            lua.create_function(|lua, params: Value| {
                make::<EgressPathConfig>(
                    lua,
                    params,
                    "kumo.make_egress_path",
                    EgressPathConfig::validate,
                )
                .map(LuaEgressPathConfig)
            })?,
        )?;
        Ok(())
    }
}

/// Parse `params` strictly into `T` and validate it; errors are prefixed
/// with `function`.
fn make<T: DeserializeOwned>(
    lua: &Lua,
    params: Value,
    function: &str,
    validate: fn(&T) -> Result<(), ConfigError>,
) -> mlua::Result<T> {
    if !matches!(params, Value::Table(_)) {
        return Err(mlua::Error::runtime(format!(
            "{function}: expected a table of parameters, got {}",
            params.type_name()
        )));
    }
    // Fast path first: `from_lua_params` renders the whole table as JSON
    // up front for its error text, which doubled the cost of every call
    // (see examples/dispatch_bench.rs). Only on failure is it called, so
    // the error wording stays the engine's.
    let config: T = match parse_strict(params.clone()) {
        Ok(config) => config,
        Err(_) => from_lua_params(lua, params, function)?,
    };
    validate(&config).map_err(|err| mlua::Error::runtime(format!("{function}: {err}")))?;
    Ok(config)
}

/// Deserialize a Lua value with the same options as `from_lua_params`
/// (unknown keys are errors through `deny_unknown_fields`), without
/// building any error context.
fn parse_strict<T: DeserializeOwned>(value: Value) -> Result<T, mlua::Error> {
    let options = mlua::serde::de::Options::new()
        .deny_unsupported_types(false)
        .deny_recursive_tables(true);
    T::deserialize(mlua::serde::Deserializer::new_with_options(value, options))
}

/// The value of field `key` of `config` as Lua sees it in a table; `nil`
/// for a name that is not a field.
fn read_field<T: Serialize>(lua: &Lua, config: &T, key: &str) -> mlua::Result<Value> {
    let json = serde_json::to_value(config).map_err(mlua::Error::external)?;
    match json.get(key) {
        Some(value) => json_to_lua(lua, value),
        None => Ok(Value::Nil),
    }
}

/// Defines a read-only userdata wrapper around a config struct, its
/// `FromLua` (clone out of the userdata) and its conversion helper.
macro_rules! config_object {
    (
        $(#[$meta:meta])*
        $wrapper:ident($inner:ty), $lua_name:literal, $function:literal,
        $(#[$from_meta:meta])*
        fn $from_lua:ident
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq)]
        pub struct $wrapper(pub $inner);

        impl UserData for $wrapper {
            fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
                methods.add_meta_method(MetaMethod::Index, |lua, this, key: String| {
                    read_field(lua, &this.0, &key)
                });
                methods.add_meta_method(
                    MetaMethod::NewIndex,
                    |_, _, (key, _value): (String, Value)| -> mlua::Result<()> {
                        Err(mlua::Error::runtime(format!(
                            "cannot set '{key}': a {} made by {} is read-only; \
                             pass the value to {} instead",
                            $lua_name, $function, $function
                        )))
                    },
                );
                methods.add_meta_method(MetaMethod::ToString, |_, this, ()| {
                    serde_json::to_string(&this.0)
                        .map(|json| format!("{}{json}", $lua_name))
                        .map_err(mlua::Error::external)
                });
            }
        }

        impl FromLua for $wrapper {
            fn from_lua(value: Value, _lua: &Lua) -> mlua::Result<Self> {
                $from_lua(value).map($wrapper)
            }
        }

        $(#[$from_meta])*
        pub fn $from_lua(value: Value) -> mlua::Result<$inner> {
            from_value(value, $lua_name, $function)
        }
    };
}

config_object! {
    /// What `kumo.make_queue_config` returns.
    LuaQueueConfig(QueueConfig), "QueueConfig", "kumo.make_queue_config",
    /// The `QueueConfig` in a `get_queue_config` return value: the object
    /// from `kumo.make_queue_config` or a plain table of the same keys.
    fn queue_config_from_lua
}

config_object! {
    /// What `kumo.make_egress_source` returns.
    LuaEgressSource(EgressSource), "EgressSource", "kumo.make_egress_source",
    /// The `EgressSource` in a `get_egress_source` return value.
    fn egress_source_from_lua
}

config_object! {
    /// What `kumo.make_egress_pool` returns.
    LuaEgressPool(EgressPool), "EgressPool", "kumo.make_egress_pool",
    /// The `EgressPool` in a `get_egress_pool` return value.
    fn egress_pool_from_lua
}

config_object! {
    /// What `kumo.make_egress_path` returns.
    LuaEgressPathConfig(EgressPathConfig), "EgressPathConfig", "kumo.make_egress_path",
    /// The `EgressPathConfig` in a `get_egress_path_config` return value.
    fn egress_path_config_from_lua
}

/// Validation hook per config type, so a plain table gets the same checks
/// as the constructor.
trait Validated: DeserializeOwned + Clone + 'static {
    type Wrapper: 'static;
    fn validate_config(&self) -> Result<(), ConfigError>;
    fn unwrap(wrapper: &Self::Wrapper) -> &Self;
}

macro_rules! validated {
    ($inner:ty, $wrapper:ident) => {
        impl Validated for $inner {
            type Wrapper = $wrapper;
            fn validate_config(&self) -> Result<(), ConfigError> {
                self.validate()
            }
            fn unwrap(wrapper: &$wrapper) -> &Self {
                &wrapper.0
            }
        }
    };
}

validated!(QueueConfig, LuaQueueConfig);
validated!(EgressSource, LuaEgressSource);
validated!(EgressPool, LuaEgressPool);
validated!(EgressPathConfig, LuaEgressPathConfig);

/// Take a `T` out of its userdata wrapper (a clone; the userdata stays
/// usable), or parse and validate a plain table.
fn from_value<T: Validated>(value: Value, lua_name: &str, function: &str) -> mlua::Result<T> {
    match value {
        Value::UserData(ud) => ud
            .borrow_scoped::<T::Wrapper, T>(|wrapper| T::unwrap(wrapper).clone())
            .map_err(|_| {
                mlua::Error::runtime(format!(
                    "expected a {lua_name} (from {function}), got a different userdata"
                ))
            }),
        Value::Table(table) => {
            let config = parse_strict::<T>(Value::Table(table)).map_err(|err| {
                let text = err.to_string();
                let text = text.strip_prefix("deserialize error: ").unwrap_or(&text);
                mlua::Error::runtime(format!("{function} (plain table): {text}"))
            })?;
            config
                .validate_config()
                .map_err(|err| mlua::Error::runtime(format!("{function}: {err}")))?;
            Ok(config)
        }
        other => Err(mlua::Error::runtime(format!(
            "expected a {lua_name} (from {function}), got {}",
            other.type_name()
        ))),
    }
}

/// The first value a handler returned, or `None` when it returned nothing
/// or `nil` (meaning "use the defaults"); use with
/// `PolicyEngine::dispatch`'s `convert` callback:
/// `|_, values| first_config(values, queue_config_from_lua)`.
pub fn first_config<T>(
    values: MultiValue,
    convert: fn(Value) -> mlua::Result<T>,
) -> mlua::Result<Option<T>> {
    match values.into_iter().next() {
        None | Some(Value::Nil) => Ok(None),
        Some(value) => convert(value).map(Some),
    }
}
