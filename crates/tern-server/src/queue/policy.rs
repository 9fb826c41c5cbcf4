//! The policy events that configure the queue layer, and their caches.
//!
//! * `get_queue_config(domain, tenant, campaign, routing_domain)` when a
//!   scheduled queue is created and when its configuration is refreshed;
//! * `get_egress_pool(name)` and `get_egress_source(name)`, cached for
//!   their `ttl` (the built-in `unspecified` pool and source are never
//!   looked up);
//! * `get_egress_path_config(routing_domain, egress_source, site_name)`
//!   when a ready queue is created and refreshed.
//!
//! Each returns the plain Rust config struct from `tern-queue`; a Lua
//! error becomes a `String` that the caller turns into a transient failure.

use super::QueueManager;
use mlua::IntoLuaMulti;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tern_queue::config::UNSPECIFIED;
use tern_queue::lua::{
    egress_path_config_from_lua, egress_pool_from_lua, egress_source_from_lua, first_config,
    queue_config_from_lua,
};
use tern_queue::{EgressPathConfig, EgressPool, EgressSource, QueueConfig};
use tern_types::QueueName;

/// Pools and sources by name, with the instant each entry expires.
#[derive(Default)]
pub struct PolicyCache {
    sources: Mutex<HashMap<String, (Arc<EgressSource>, Instant)>>,
    pools: Mutex<HashMap<String, (Arc<EgressPool>, Instant)>>,
}

/// A pool with every member source resolved, in entry order.
pub struct ResolvedPool {
    pub pool: Arc<EgressPool>,
    pub sources: Vec<Arc<EgressSource>>,
    pub weights: Vec<u32>,
}

fn opt(value: &Option<String>) -> Option<String> {
    value.clone()
}

/// `get_queue_config` for the queue `name`; `None` from every handler (or
/// no handler) means all defaults.
pub async fn queue_config(mgr: &QueueManager, name: &str) -> Result<QueueConfig, String> {
    if name == super::deferred_inject::DEFERRED_SMTP_INJECT_QUEUE {
        // Fixed by design: the policy never configures this queue.
        return Ok(super::deferred_inject::queue_config());
    }
    let parsed = QueueName::parse(name);
    let args = (
        parsed.domain.clone(),
        opt(&parsed.tenant),
        opt(&parsed.campaign),
        opt(&parsed.routing_domain),
    );
    let result = mgr
        .engine
        .dispatch(
            "get_queue_config",
            move |lua| args.into_lua_multi(lua),
            |_, values| first_config(values, queue_config_from_lua),
        )
        .await
        .map_err(|err| format!("get_queue_config for {name}: {err}"))?;
    Ok(result.flatten().unwrap_or_default())
}

/// `get_egress_source(name)`, cached for the source's `ttl`.
pub async fn egress_source(mgr: &QueueManager, name: &str) -> Result<Arc<EgressSource>, String> {
    if name == UNSPECIFIED {
        return Ok(Arc::new(EgressSource::unspecified()));
    }
    if let Some((source, expires)) = mgr.policy.sources.lock().get(name)
        && *expires > Instant::now()
    {
        return Ok(source.clone());
    }
    let arg = name.to_string();
    let result = mgr
        .engine
        .dispatch(
            "get_egress_source",
            move |lua| arg.into_lua_multi(lua),
            |_, values| first_config(values, egress_source_from_lua),
        )
        .await
        .map_err(|err| format!("get_egress_source('{name}'): {err}"))?;
    let source = match result.flatten() {
        Some(source) => source,
        None => {
            return Err(format!(
                "get_egress_source('{name}') returned nothing: define the source \
                 with kumo.make_egress_source"
            ));
        }
    };
    let source = Arc::new(source);
    mgr.policy.sources.lock().insert(
        name.to_string(),
        (source.clone(), Instant::now() + source.ttl),
    );
    Ok(source)
}

/// `get_egress_pool(name)` and each member source.
pub async fn egress_pool(mgr: &QueueManager, name: &str) -> Result<ResolvedPool, String> {
    let pool = if name == UNSPECIFIED {
        Arc::new(EgressPool::unspecified())
    } else {
        let cached = mgr
            .policy
            .pools
            .lock()
            .get(name)
            .filter(|(_, expires)| *expires > Instant::now())
            .map(|(pool, _)| pool.clone());
        match cached {
            Some(pool) => pool,
            None => {
                let arg = name.to_string();
                let result = mgr
                    .engine
                    .dispatch(
                        "get_egress_pool",
                        move |lua| arg.into_lua_multi(lua),
                        |_, values| first_config(values, egress_pool_from_lua),
                    )
                    .await
                    .map_err(|err| format!("get_egress_pool('{name}'): {err}"))?;
                let Some(pool) = result.flatten() else {
                    return Err(format!(
                        "get_egress_pool('{name}') returned nothing: define the pool \
                         with kumo.make_egress_pool"
                    ));
                };
                let pool = Arc::new(pool);
                mgr.policy
                    .pools
                    .lock()
                    .insert(name.to_string(), (pool.clone(), Instant::now() + pool.ttl));
                pool
            }
        }
    };
    let mut sources = Vec::with_capacity(pool.entries.len());
    for entry in &pool.entries {
        sources.push(egress_source(mgr, &entry.name).await?);
    }
    let weights = pool.weights();
    Ok(ResolvedPool {
        pool,
        sources,
        weights,
    })
}

/// `get_egress_path_config(routing_domain, egress_source, site_name)`.
pub async fn egress_path(
    mgr: &QueueManager,
    routing_domain: &str,
    source: &str,
    site: &str,
) -> Result<EgressPathConfig, String> {
    let args = (
        routing_domain.to_string(),
        source.to_string(),
        site.to_string(),
    );
    let result = mgr
        .engine
        .dispatch(
            "get_egress_path_config",
            move |lua| args.into_lua_multi(lua),
            |_, values| first_config(values, egress_path_config_from_lua),
        )
        .await
        .map_err(|err| {
            format!("get_egress_path_config('{routing_domain}', '{source}', '{site}'): {err}")
        })?;
    Ok(result.flatten().unwrap_or_default())
}
