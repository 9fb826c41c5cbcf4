//! `kumo.memoize`: process-wide caching of a Lua function's results.
//!
//! The cache is shared by every Lua state of the engine (a value computed
//! in one state is visible in all), so values are stored as JSON. Each
//! named cache has a TTL and a capacity, and may be invalidated when the
//! configuration epoch changes. Concurrent misses for the same key wait for
//! a single population.

use crate::engine::PolicyEngine;
use crate::params::{from_lua_params, json_to_lua, lua_to_json};
use mlua::{Function, Lua, MultiValue, Table, Value};
use parking_lot::Mutex;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_types::duration;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemoizeParams {
    name: String,
    #[serde(with = "duration::req")]
    ttl: Duration,
    capacity: usize,
    #[serde(default)]
    invalidate_with_epoch: bool,
    #[serde(default, with = "duration::opt")]
    populate_timeout: Option<Duration>,
    #[serde(default)]
    retry_on_populate_timeout: bool,
    #[serde(default)]
    allow_stale_reads: bool,
}

struct Entry {
    value: serde_json::Value,
    expires: Instant,
    epoch: u64,
}

pub struct NamedCache {
    ttl: Mutex<Duration>,
    capacity: Mutex<usize>,
    invalidate_with_epoch: bool,
    entries: Mutex<HashMap<String, Entry>>,
    populating: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl NamedCache {
    fn get(&self, key: &str, epoch: u64) -> Option<serde_json::Value> {
        let entries = self.entries.lock();
        let entry = entries.get(key)?;
        let fresh =
            entry.expires > Instant::now() && (!self.invalidate_with_epoch || entry.epoch == epoch);
        fresh.then(|| entry.value.clone())
    }

    fn insert(&self, key: String, value: serde_json::Value, epoch: u64) {
        let now = Instant::now();
        let ttl = *self.ttl.lock();
        let capacity = (*self.capacity.lock()).max(1);
        let mut entries = self.entries.lock();
        if entries.len() >= capacity && !entries.contains_key(&key) {
            entries.retain(|_, e| e.expires > now);
            while entries.len() >= capacity {
                let oldest = entries
                    .iter()
                    .min_by_key(|(_, e)| e.expires)
                    .map(|(k, _)| k.clone());
                match oldest {
                    Some(k) => entries.remove(&k),
                    None => break,
                };
            }
        }
        entries.insert(
            key,
            Entry {
                value,
                expires: now + ttl,
                epoch,
            },
        );
    }

    fn population_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.populating
            .lock()
            .entry(key.to_string())
            .or_default()
            .clone()
    }

    fn done_populating(&self, key: &str) {
        let mut map = self.populating.lock();
        if let Some(lock) = map.get(key)
            && Arc::strong_count(lock) <= 1
        {
            map.remove(key);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Default)]
pub struct MemoCaches {
    caches: Mutex<HashMap<String, Arc<NamedCache>>>,
}

impl MemoCaches {
    fn get_or_create(&self, params: &MemoizeParams) -> Arc<NamedCache> {
        let mut caches = self.caches.lock();
        let cache = caches.entry(params.name.clone()).or_insert_with(|| {
            Arc::new(NamedCache {
                ttl: Mutex::new(params.ttl),
                capacity: Mutex::new(params.capacity),
                invalidate_with_epoch: params.invalidate_with_epoch,
                entries: Mutex::new(HashMap::new()),
                populating: Mutex::new(HashMap::new()),
            })
        });
        // The latest policy's settings win, as each new state re-runs memoize.
        *cache.ttl.lock() = params.ttl;
        *cache.capacity.lock() = params.capacity;
        cache.clone()
    }

    pub fn named(&self, name: &str) -> Option<Arc<NamedCache>> {
        self.caches.lock().get(name).cloned()
    }
}

fn cache_key(lua: &Lua, args: &MultiValue) -> mlua::Result<String> {
    let mut parts = Vec::with_capacity(args.len());
    for arg in args.iter() {
        parts.push(lua_to_json(lua, arg.clone()).map_err(|e| {
            mlua::Error::runtime(format!(
                "kumo.memoize: arguments must be plain data to be used as a cache key: {e}"
            ))
        })?);
    }
    serde_json::to_string(&parts).map_err(mlua::Error::external)
}

/// `kumo.memoize(func, params)`.
pub fn register(lua: &Lua, kumo: &Table) -> mlua::Result<()> {
    let memoize = lua.create_function(|lua, (func, params): (Function, Value)| {
        let params: MemoizeParams = from_lua_params(lua, params, "kumo.memoize")?;
        if params.populate_timeout.is_some() || params.retry_on_populate_timeout || params.allow_stale_reads {
            tracing::debug!("kumo.memoize: populate_timeout/allow_stale_reads are accepted; populations are not timed out");
        }
        let engine = PolicyEngine::from_lua(lua)?;
        let cache = engine.memo().get_or_create(&params);
        let name = params.name.clone();
        lua.create_async_function(move |lua, args: MultiValue| {
            let cache = cache.clone();
            let func = func.clone();
            let name = name.clone();
            async move {
                let epoch = PolicyEngine::from_lua(&lua)?.epoch().current();
                let key = cache_key(&lua, &args)?;
                if let Some(hit) = cache.get(&key, epoch) {
                    return json_to_lua(&lua, &hit);
                }
                let lock = cache.population_lock(&key);
                let guard = lock.lock().await;
                let result = async {
                    if let Some(hit) = cache.get(&key, epoch) {
                        return json_to_lua(&lua, &hit);
                    }
                    let value: Value = func.call_async(args).await?;
                    let json = lua_to_json(&lua, value.clone()).map_err(|e| {
                        mlua::Error::runtime(format!(
                            "kumo.memoize '{name}': the function returned a value that cannot be cached: {e}"
                        ))
                    })?;
                    cache.insert(key.clone(), json, epoch);
                    Ok(value)
                }
                .await;
                drop(guard);
                drop(lock);
                cache.done_populating(&key);
                result
            }
        })
    })?;
    kumo.raw_set("memoize", memoize)
}
