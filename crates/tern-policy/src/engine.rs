//! The policy engine: loads the policy into Lua states and dispatches
//! events to its handlers.
//!
//! One `PolicyEngine` exists per server process and is passed by value
//! (it is a cheap handle). Each Lua state carries a [`StateData`] in its
//! app data pointing back at the engine, which is how `kumo.*` functions
//! reach process-wide things (the epoch, the pool limits, the memoize
//! caches) without global variables.

use crate::epoch::ConfigEpoch;
use crate::events::{self, HandlerTable};
use crate::memoize::MemoCaches;
use crate::pool::{Pool, PoolLimits, PooledState};
use crate::reject::Rejection;
use mlua::{Function, Lua, LuaOptions, MultiValue, StdLib, Table};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Adds `kumo.*` functions to every new Lua state. Implemented by the
/// crates that own the Rust types behind those functions.
pub trait LuaRegistrar: Send + Sync {
    fn register(&self, lua: &Lua, kumo: &Table) -> mlua::Result<()>;
}

impl<F> LuaRegistrar for F
where
    F: Fn(&Lua, &Table) -> mlua::Result<()> + Send + Sync,
{
    fn register(&self, lua: &Lua, kumo: &Table) -> mlua::Result<()> {
        self(lua, kumo)
    }
}

pub struct EngineOptions {
    pub policy_path: PathBuf,
    /// `--validate` mode: `_VALIDATING_CONFIG` is true in every state.
    pub validating: bool,
    pub registrars: Vec<Arc<dyn LuaRegistrar>>,
    /// Directories searched by `require`, in addition to the policy's own.
    pub package_dirs: Vec<PathBuf>,
}

impl EngineOptions {
    pub fn new(policy_path: impl Into<PathBuf>) -> Self {
        Self {
            policy_path: policy_path.into(),
            validating: false,
            registrars: Vec::new(),
            package_dirs: vec![
                PathBuf::from("/opt/kumomta/share"),
                PathBuf::from("/opt/kumomta/etc/policy"),
            ],
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{0}")]
    Load(String),
    #[error("{}", describe_lua_error(.0))]
    Lua(mlua::Error),
}

impl PolicyError {
    /// The `kumo.reject`/`kumo.disconnect` carried by this error, if any.
    pub fn rejection(&self) -> Option<&Rejection> {
        match self {
            PolicyError::Lua(err) => Rejection::from_lua_error(err),
            PolicyError::Load(_) => None,
        }
    }
}

/// A readable, single-paragraph description of a Lua error: the message
/// with its `file:line`, without mlua's wrapper words.
pub fn describe_lua_error(err: &mlua::Error) -> String {
    match err {
        mlua::Error::SyntaxError { message, .. } => message.clone(),
        mlua::Error::RuntimeError(message) => message.clone(),
        mlua::Error::CallbackError { traceback, cause } => {
            let inner = describe_lua_error(cause);
            if traceback.is_empty() {
                inner
            } else {
                format!("{inner}\n{traceback}")
            }
        }
        mlua::Error::WithContext { context, cause } => {
            format!("{context}: {}", describe_lua_error(cause))
        }
        other => other.to_string(),
    }
}

pub(crate) struct Shared {
    pub options: EngineOptions,
    pub epoch: Arc<ConfigEpoch>,
    pub pool: Pool,
    pub limits: PoolLimits,
    pub memo: MemoCaches,
    pub validation_failed: AtomicBool,
    pub states_created: AtomicU64,
    /// Pooled states alive now, in use or spare (`lua_count`).
    pub states_alive: Arc<std::sync::atomic::AtomicUsize>,
    /// The events the most recently loaded state has handlers for, so
    /// [`PolicyEngine::has_handler`] answers without a state checkout.
    pub latest_events: parking_lot::RwLock<Option<Arc<std::collections::HashSet<String>>>>,
}

/// Per-state data reachable from any `kumo.*` function through
/// `lua.app_data_ref::<StateData>()`.
pub struct StateData {
    engine: Weak<Shared>,
    pub handlers: HandlerTable,
}

impl StateData {
    pub fn engine(&self) -> Option<PolicyEngine> {
        self.engine.upgrade().map(PolicyEngine)
    }
}

/// Cheap, clonable handle to the engine.
#[derive(Clone)]
pub struct PolicyEngine(Arc<Shared>);

impl PolicyEngine {
    pub fn new(options: EngineOptions) -> Self {
        let mut globs = vec!["/opt/kumomta/etc/**/*.{lua,json,toml,yaml}".to_string()];
        if let Some(dir) = options.policy_path.parent()
            && !dir.as_os_str().is_empty()
        {
            globs.push(format!("{}/**/*.{{lua,json,toml,yaml}}", dir.display()));
        }
        Self(Arc::new(Shared {
            options,
            epoch: ConfigEpoch::new(globs),
            pool: Pool::default(),
            limits: PoolLimits::default(),
            memo: MemoCaches::default(),
            validation_failed: AtomicBool::new(false),
            states_created: AtomicU64::new(0),
            states_alive: Default::default(),
            latest_events: Default::default(),
        }))
    }

    /// The engine of the Lua state `lua`; errors if called on a state the
    /// engine did not make.
    pub fn from_lua(lua: &Lua) -> mlua::Result<Self> {
        lua.app_data_ref::<StateData>()
            .and_then(|data| data.engine())
            .ok_or_else(|| {
                mlua::Error::runtime("this Lua state does not belong to a Tern policy engine")
            })
    }

    pub fn policy_path(&self) -> &Path {
        &self.0.options.policy_path
    }

    pub fn is_validating(&self) -> bool {
        self.0.options.validating
    }

    pub fn epoch(&self) -> &Arc<ConfigEpoch> {
        &self.0.epoch
    }

    pub fn limits(&self) -> &PoolLimits {
        &self.0.limits
    }

    pub(crate) fn memo(&self) -> &MemoCaches {
        &self.0.memo
    }

    pub fn mark_validation_failed(&self) {
        self.0.validation_failed.store(true, Ordering::SeqCst);
    }

    pub fn validation_failed(&self) -> bool {
        self.0.validation_failed.load(Ordering::SeqCst)
    }

    /// How many Lua states have been created (the `lua_load_count` metric).
    pub fn states_created(&self) -> u64 {
        self.0.states_created.load(Ordering::Relaxed)
    }

    /// Pooled Lua states alive now, in use or spare (the `lua_count`
    /// metric).
    pub fn live_states(&self) -> usize {
        self.0.states_alive.load(Ordering::Relaxed)
    }

    pub fn spare_states(&self) -> usize {
        self.0.pool.spare_count()
    }

    /// Create a Lua state, install the `kumo` module and evaluate the
    /// policy file in it.
    pub async fn new_state(&self) -> Result<Lua, PolicyError> {
        let lua = Lua::new_with(StdLib::ALL_SAFE, LuaOptions::default())
            .map_err(|e| PolicyError::Load(format!("failed to create a Lua state: {e}")))?;
        lua.set_app_data(StateData {
            engine: Arc::downgrade(&self.0),
            handlers: HandlerTable::default(),
        });
        self.install_modules(&lua).map_err(|e| {
            PolicyError::Load(format!(
                "failed to set up the kumo module: {}",
                describe_lua_error(&e)
            ))
        })?;
        let path = &self.0.options.policy_path;
        let source = std::fs::read(path).map_err(|e| {
            PolicyError::Load(format!("failed to read policy {}: {e}", path.display()))
        })?;
        let chunk = lua.load(source).set_name(format!("@{}", path.display()));
        chunk.exec_async().await.map_err(|e| {
            PolicyError::Load(format!(
                "failed to load policy {}: {}",
                path.display(),
                describe_lua_error(&e)
            ))
        })?;
        self.0.states_created.fetch_add(1, Ordering::Relaxed);
        if let Some(data) = lua.app_data_ref::<StateData>() {
            *self.0.latest_events.write() = Some(Arc::new(data.handlers.events()));
        }
        Ok(lua)
    }

    fn install_modules(&self, lua: &Lua) -> mlua::Result<()> {
        let globals = lua.globals();
        globals.set("_VALIDATING_CONFIG", self.0.options.validating)?;
        let package: Table = globals.get("package")?;
        let mut dirs: Vec<PathBuf> = Vec::new();
        if let Some(dir) = self.0.options.policy_path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            dirs.push(dir.to_path_buf());
        }
        dirs.extend(self.0.options.package_dirs.iter().cloned());
        let mut path = String::new();
        for dir in &dirs {
            path.push_str(&format!("{0}/?.lua;{0}/?/init.lua;", dir.display()));
        }
        let existing: String = package.get("path")?;
        package.set("path", format!("{path}{existing}"))?;

        let kumo = crate::kumo_module::create(lua)?;
        for registrar in &self.0.options.registrars {
            registrar.register(lua, &kumo)?;
        }
        let loaded: Table = package.get("loaded")?;
        loaded.set("kumo", kumo.clone())?;
        globals.set("kumo", kumo)?;
        Ok(())
    }

    /// Borrow a state from the pool (or make one) for one event.
    async fn checkout(&self) -> Result<PooledState, PolicyError> {
        let epoch = self.0.epoch.current();
        if let Some(state) = self.0.pool.take(&self.0.limits, epoch) {
            return Ok(state);
        }
        let lua = self.new_state().await?;
        Ok(PooledState {
            lua,
            created: Instant::now(),
            uses: 0,
            epoch,
            alive: crate::pool::LiveCount::new(&self.0.states_alive),
        })
    }

    fn checkin(&self, state: PooledState) {
        self.0
            .pool
            .put(state, &self.0.limits, self.0.epoch.current());
    }

    /// Drop expired spare states; run every 30 s by [`Self::run_maintenance`].
    pub fn purge_expired(&self) -> usize {
        self.0.pool.purge(&self.0.limits, self.0.epoch.current())
    }

    /// Background upkeep: purge expired states every 30 s and watch the
    /// configuration files, until `shutdown` fires.
    pub fn run_maintenance(&self, shutdown: tokio::sync::watch::Receiver<bool>) {
        let engine = self.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(30)) => { engine.purge_expired(); }
                    _ = stop.changed() => return,
                }
            }
        });
        let epoch = self.0.epoch.clone();
        tokio::spawn(epoch.monitor(crate::epoch::MONITOR_INTERVAL, shutdown));
    }

    /// Dispatch `event` through a pooled state. `args` builds the
    /// arguments in that state; `convert` turns the first returned values
    /// into `R`. Returns `Ok(None)` when no handler is registered or every
    /// handler returned nothing.
    pub async fn dispatch<R>(
        &self,
        event: &str,
        args: impl FnOnce(&Lua) -> mlua::Result<MultiValue>,
        convert: impl FnOnce(&Lua, MultiValue) -> mlua::Result<R>,
    ) -> Result<Option<R>, PolicyError> {
        let state = self.checkout().await?;
        let result = dispatch_in(&state.lua, event, args, convert).await;
        self.checkin(state);
        result
    }

    /// Whether the policy registered a handler for `event`, as the most
    /// recently loaded state saw it: hot paths ask this for every message
    /// (should an optional event run at all?), so it must not check out a
    /// state. A policy edit applies from the first state that loads it.
    pub async fn has_handler(&self, event: &str) -> Result<bool, PolicyError> {
        if let Some(events) = self.0.latest_events.read().as_ref() {
            return Ok(events.contains(event));
        }
        let state = self.checkout().await?;
        let found = state
            .lua
            .app_data_ref::<StateData>()
            .is_some_and(|d| d.handlers.has_handler(event));
        self.checkin(state);
        Ok(found)
    }
}

/// Dispatch `event` in a specific state (used for `init`, which must run
/// in the state that loaded the policy at startup).
pub async fn dispatch_in<R>(
    lua: &Lua,
    event: &str,
    args: impl FnOnce(&Lua) -> mlua::Result<MultiValue>,
    convert: impl FnOnce(&Lua, MultiValue) -> mlua::Result<R>,
) -> Result<Option<R>, PolicyError> {
    let handlers: Vec<Function> = match lua.app_data_ref::<StateData>() {
        Some(data) => data.handlers.handlers(event),
        None => Vec::new(),
    };
    if handlers.is_empty() {
        return Ok(None);
    }
    let args = args(lua).map_err(PolicyError::Lua)?;
    let globals = lua.globals();
    let previous: mlua::Value = globals
        .raw_get(events::CURRENT_EVENT_GLOBAL)
        .map_err(PolicyError::Lua)?;
    globals
        .raw_set(events::CURRENT_EVENT_GLOBAL, event)
        .map_err(PolicyError::Lua)?;
    let multi = events::is_multi_handler(event);
    let mut outcome = Ok(None);
    for handler in handlers {
        match handler.call_async::<MultiValue>(args.clone()).await {
            Err(err) => {
                outcome = Err(PolicyError::Lua(err));
                break;
            }
            Ok(values) if multi && values.is_empty() => continue,
            Ok(values) if values.is_empty() => break,
            Ok(values) => {
                outcome = convert(lua, values).map(Some).map_err(PolicyError::Lua);
                break;
            }
        }
    }
    let _ = globals.raw_set(events::CURRENT_EVENT_GLOBAL, previous);
    outcome
}
