//! `kumo.make_throttle(name, spec)`: named GCRA throttles for policies
//! (§III.1), for example to limit each tenant's sending in the
//! `throttle_insert_ready_queue` event, or a sender's reception rate in
//! `smtp_server_mail_from`; and `kumo.configure_redis_throttles`, which
//! makes them shared by every node using the same Redis (§19).
//!
//! A throttle object is only a name and a spec; the state lives in the
//! [`Throttles`] the server shares with every Lua state, so two objects
//! made with the same name (in different events, states or policy
//! reloads) count against the same limit. The key is
//! `lua-user-throttle-<name>`, apart from the queue layer's own throttles.

use crate::shared_throttle::{RedisParams, RedisThrottles, Throttles};
use crate::throttle::ThrottleOutcome;
use mlua::{AnyUserData, Lua, ObjectLike, UserData, UserDataMethods, Value};
use serde::Deserialize;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tern_policy::{LuaRegistrar, from_lua_params};
use tern_types::ThrottleSpec;

/// Installs `kumo.make_throttle` and `kumo.configure_redis_throttles`;
/// every state gets the same [`Throttles`].
#[derive(Clone)]
pub struct ThrottleLuaRegistrar {
    throttles: Arc<Throttles>,
}

impl ThrottleLuaRegistrar {
    pub fn new(throttles: Arc<Throttles>) -> Self {
        Self { throttles }
    }
}

/// `kumo.configure_redis_throttles { PARAMS }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RedisConfig {
    /// One URL, or a list holding one (several nodes need `cluster`).
    node: NodeList,
    #[serde(default)]
    cluster: Option<bool>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    /// Accepted for compatibility: Tern multiplexes one connection, so
    /// there is no pool to size (logged when given).
    #[serde(default)]
    pool_size: Option<u64>,
    #[serde(default)]
    read_from_replicas: Option<bool>,
    #[serde(default, with = "tern_types::duration::opt")]
    connect_timeout: Option<Duration>,
    #[serde(default, with = "tern_types::duration::opt")]
    response_timeout: Option<Duration>,
    #[serde(default, with = "tern_types::duration::opt")]
    recycle_timeout: Option<Duration>,
    #[serde(default, with = "tern_types::duration::opt")]
    wait_timeout: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NodeList {
    One(String),
    Many(Vec<String>),
}

impl LuaRegistrar for ThrottleLuaRegistrar {
    fn register(&self, lua: &Lua, kumo: &mlua::Table) -> mlua::Result<()> {
        let throttles = self.throttles.clone();
        kumo.raw_set(
            "make_throttle",
            lua.create_function(move |_, (name, spec): (String, String)| {
                let parsed: ThrottleSpec = spec.parse().map_err(|err| {
                    mlua::Error::runtime(format!(
                        "kumo.make_throttle: '{spec}' is not a throttle spec: {err}"
                    ))
                })?;
                Ok(LuaThrottle {
                    throttles: throttles.clone(),
                    key: format!("lua-user-throttle-{name}"),
                    spec: parsed,
                    spec_text: spec,
                })
            })?,
        )?;
        let throttles = self.throttles.clone();
        kumo.raw_set(
            "configure_redis_throttles",
            lua.create_async_function(move |lua, params: Value| {
                let throttles = throttles.clone();
                async move {
                    const FUNCTION: &str = "kumo.configure_redis_throttles";
                    let config: RedisConfig = from_lua_params(&lua, params, FUNCTION)?;
                    let params = redis_params(config).map_err(mlua::Error::runtime)?;
                    // `--validate` checks the parameters but contacts
                    // nothing, as with every other init-time function.
                    if tern_policy::PolicyEngine::from_lua(&lua)?.is_validating() {
                        return Ok(());
                    }
                    let redis = RedisThrottles::connect(&params)
                        .await
                        .map_err(|err| mlua::Error::runtime(format!("{FUNCTION}: {err}")))?;
                    let node = redis.node.clone();
                    throttles
                        .use_redis(redis)
                        .map_err(|err| mlua::Error::runtime(format!("{FUNCTION}: {err}")))?;
                    tracing::info!("throttles are shared through Redis at {node}");
                    Ok(())
                }
            })?,
        )
    }
}

fn redis_params(config: RedisConfig) -> Result<RedisParams, String> {
    const FUNCTION: &str = "kumo.configure_redis_throttles";
    if config.cluster == Some(true) {
        return Err(format!(
            "{FUNCTION}: cluster = true is not supported by Tern yet (use a single Redis node)"
        ));
    }
    let url = match config.node {
        NodeList::One(url) => url,
        NodeList::Many(mut urls) if urls.len() == 1 => urls.remove(0),
        NodeList::Many(urls) => {
            return Err(format!(
                "{FUNCTION}: {} nodes given; several nodes need cluster = true, which Tern does not support yet",
                urls.len()
            ));
        }
    };
    let ignored: Vec<&str> = [
        ("pool_size", config.pool_size.is_some()),
        ("read_from_replicas", config.read_from_replicas.is_some()),
        ("recycle_timeout", config.recycle_timeout.is_some()),
        ("wait_timeout", config.wait_timeout.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, given)| given.then_some(name))
    .collect();
    if !ignored.is_empty() {
        tracing::info!(
            "{FUNCTION}: {} accepted with no effect (Tern multiplexes one connection to one node)",
            ignored.join(", ")
        );
    }
    Ok(RedisParams {
        url,
        username: config.username,
        password: config.password,
        connect_timeout: config.connect_timeout.unwrap_or(Duration::from_secs(5)),
        response_timeout: config.response_timeout.unwrap_or(Duration::from_secs(5)),
    })
}

/// The object `kumo.make_throttle` returns.
pub struct LuaThrottle {
    throttles: Arc<Throttles>,
    key: String,
    spec: ThrottleSpec,
    spec_text: String,
}

impl LuaThrottle {
    async fn check(&self) -> ThrottleOutcome {
        self.throttles.check(&self.key, &self.spec).await
    }
}

impl UserData for LuaThrottle {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        // Check and count one event; the figures, durations in seconds.
        methods.add_async_method("throttle", |lua, this, ()| async move {
            let outcome = this.check().await;
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
            while let Some(wait) = this.check().await.retry_after {
                waited = true;
                tokio::time::sleep(wait).await;
            }
            Ok(waited)
        });
        // For `throttle_insert_ready_queue`: when refused, move the
        // message's due time to when the throttle allows it; true then.
        methods.add_async_method(
            "delay_message_if_throttled",
            |_, this, msg: AnyUserData| async move {
                match this.check().await.retry_after {
                    None => Ok(false),
                    Some(wait) => {
                        let due = SystemTime::now() + wait;
                        let secs = due
                            .duration_since(UNIX_EPOCH)
                            .unwrap_or_default()
                            .as_secs_f64();
                        msg.call_method::<Value>("set_due", secs)?;
                        Ok(true)
                    }
                }
            },
        );
        methods.add_method("explain", |_, this, ()| {
            let scope = if this.spec.force_local || !this.throttles.is_shared() {
                "node-local"
            } else {
                "shared through Redis"
            };
            Ok(format!(
                "{}: {} (one every {:?}, burst {}, {scope})",
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
