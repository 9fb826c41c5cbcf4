//! The startup sequence (§1.2) and graceful shutdown (§1.1).
//!
//! 1. evaluate the policy in a fresh Lua state (errors name file and line);
//! 2. run `pre_init` then `init` in that state;
//! 3. `--validate`: run `validate_config`, check the recorded
//!    configuration, exit; `--script`: run `main` instead of all this;
//! 4. otherwise bind the listeners (each prints `<proto> listener on
//!    <addr>`), open the spools and recover what they hold (ingress answers
//!    "waiting for spool startup" meanwhile), then print
//!    `initialization complete`;
//! 5. start the spool maintenance task (cleanup every 10 minutes);
//! 6. SIGTERM, SIGINT and SIGHUP all start a graceful shutdown: new work
//!    is refused, delivery connections get a few seconds to finish, the
//!    loggers are flushed, messages held only in memory (`deferred_spool`)
//!    are written to the spool, and the spools are closed.

use crate::init::{InitConfig, InitRecorder};
use crate::options::ServeOptions;
use crate::state::ServerState;
use mlua::{IntoLuaMulti, MultiValue};
use std::sync::Arc;
use tern_policy::engine::dispatch_in;
use tern_policy::{EngineOptions, LuaRegistrar, PolicyEngine, PolicyError};

/// Run `tern serve`; returns the process exit code.
pub async fn serve(options: ServeOptions) -> anyhow::Result<i32> {
    // Spool entries created from here on are live, not for recovery.
    let process_started = std::time::SystemTime::now();
    let recorder = InitRecorder::default();
    let mut engine_options = EngineOptions::new(options.policy.clone());
    engine_options.validating = options.validate;
    // §1.2 step 1: memory limits first, so the policy can override them.
    let memory = Arc::new(crate::memory::MemoryGovernor::discover());
    let spools_for_save = Arc::new(std::sync::OnceLock::new());
    let throttles = shared_throttles();
    let (registrars, dns) = registrars(&recorder, &memory, &spools_for_save, &throttles)?;
    for registrar in registrars {
        engine_options.registrars.push(registrar);
    }
    let engine = PolicyEngine::new(engine_options);

    if !options.policy.exists() {
        anyhow::bail!(
            "the policy file {} does not exist (pass --policy PATH)",
            options.policy.display()
        );
    }

    let lua = engine
        .new_state()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    if options.script {
        let mut args = options.script_args_legacy.clone();
        args.extend(options.script_args.iter().cloned());
        let result = dispatch_in(
            &lua,
            "main",
            move |lua| mlua::Variadic::from_iter(args).into_lua_multi(lua),
            |_, _| Ok(()),
        )
        .await;
        return match result {
            Ok(Some(())) | Ok(None) => Ok(0),
            Err(err) => {
                eprintln!("error in main: {err}");
                Ok(1)
            }
        };
    }

    let no_args = |_: &mlua::Lua| Ok(MultiValue::new());
    let ignore = |_: &mlua::Lua, _: MultiValue| Ok(());
    run_event(&lua, "pre_init", no_args, ignore).await?;
    run_event(&lua, "init", no_args, ignore).await?;
    let config = recorder.take();
    let signals = Signals::install()?;

    if options.validate {
        let result = dispatch_in(&lua, "validate_config", no_args, ignore).await;
        let mut failed = engine.validation_failed();
        if let Err(err) = result {
            eprintln!("validate_config failed: {err}");
            failed = true;
        }
        if let Err(err) = check_config(&config) {
            eprintln!("{err}");
            failed = true;
        }
        if failed {
            eprintln!("policy {} is NOT valid", options.policy.display());
            return Ok(1);
        }
        println!("policy {} is valid", options.policy.display());
        return Ok(0);
    }

    check_config(&config)?;
    let suspend_when_spool_unhealthy = config.suspend_delivery_when_spool_unhealthy();
    let spoolin_threads = config.spoolin_threads();
    let node_id = crate::nodeid::load_node_id()?;
    let state = Arc::new(ServerState::new(
        crate::state::hostname(),
        node_id,
        engine.clone(),
        memory.clone(),
    ));
    drop(lua);
    let _memory_sampler = memory.spawn_sampler(std::time::Duration::from_secs(1));

    // Listeners are bound first so their ports are known and bind errors
    // stop startup early; they answer "waiting for spool startup" until
    // the spool is open and recovered.
    for listener in config.esmtp_listeners {
        let addr = crate::esmtp::listener::start(listener, state.clone()).await?;
        tracing::info!("smtp listener on {addr}");
    }
    for params in &config.http_listeners {
        let addr = crate::http::start(params, state.clone()).await?;
        tracing::info!("http listener on {addr}");
    }
    engine.run_maintenance(state.shutdown_signal());

    let (hook_slots, hook_receivers) = crate::log_hooks::build(config.log_hooks)?;
    let mut reception = open_spools_and_logs(&config.spools, config.log_configs, node_id).await?;
    reception.hooks = hook_slots;
    let reception = Arc::new(reception);
    let _ = spools_for_save.set(reception.clone());
    let _ = reception
        .filter
        .set(Arc::new(crate::log_hooks::PolicyFilter(engine.clone())));
    for (hook, rx) in hook_receivers {
        tokio::spawn(crate::log_hooks::run_hook(
            reception.clone(),
            engine.clone(),
            hook,
            rx,
        ));
    }
    state.set_reception(reception.clone());
    let queues = crate::queue::QueueManager::new(
        engine.clone(),
        reception.clone(),
        state.hostname.clone(),
        state.shutdown_signal(),
        crate::queue::QueueServices {
            dns,
            throttles: throttles.clone(),
            metrics: state.metrics.clone(),
            suspend_when_spool_unhealthy,
        },
    );
    let _ = reception
        .queues
        .set(Arc::new(crate::queue::ManagerSink(queues.clone())));
    let _ = queues
        .generator
        .set(Arc::new(HttpGenerator(Arc::downgrade(&state))));
    crate::metrics::register_collectors(&state, &reception, &queues);
    state.set_queues(queues.clone());
    let recovery_options = crate::queue::recovery::RecoveryOptions {
        started: process_started,
        workers: spoolin_threads,
    };
    let recovered = crate::queue::recovery::recover(&queues, recovery_options)
        .await
        .map_err(|err| anyhow::anyhow!("spool recovery aborted: {err}"))?;
    reception
        .spooled
        .store(recovered.queued, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(
        "spool recovery: {} messages queued, {} expired, {} corrupt entries removed, \
         {} left for a failed get_queue_config, {} live entries ignored in {:.2}s",
        recovered.queued,
        recovered.expired,
        recovered.corrupt,
        recovered.failed,
        recovered.ignored,
        recovered.seconds
    );
    state.set_spool_ready();
    let _maintenance = crate::maintenance::spawn_spool_maintenance(
        reception.clone(),
        |reception| vec![&reception.data, &reception.meta],
        crate::maintenance::SPOOL_MAINTENANCE_INTERVAL,
        state.shutdown_signal(),
    );
    tracing::info!("initialization complete");

    wait_for_signal(signals).await;
    tracing::info!("shutting down");
    state.request_shutdown();
    // Give sessions a moment to finish the transaction in progress, and
    // delivery connections a little longer to settle the message they are
    // sending (its outcome is logged and written back before the spool
    // closes). A connection still waiting for a slow server after that is
    // abandoned; its message is saved below or recovered at next start.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let settle_until = std::time::Instant::now() + SHUTDOWN_SETTLE;
    while queues.active_connections() > 0 && std::time::Instant::now() < settle_until {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // §1.1: the policy's last word before the loggers close (a handler may
    // still log or flush something of its own). A failing handler is
    // reported and does not stop the shutdown.
    if let Err(err) = engine
        .dispatch(
            "shutdown_logging",
            |_| Ok(mlua::MultiValue::new()),
            |_, _| Ok(()),
        )
        .await
    {
        tracing::error!("shutdown_logging: {err}");
    }
    for logger in reception.loggers.iter() {
        if let Err(err) = logger.shutdown().await {
            tracing::error!("log shutdown: {err}");
        }
    }
    let saved = queues.save_unspooled().await;
    if saved > 0 {
        tracing::info!("shutdown: wrote {saved} deferred-spool messages to the spool");
    }
    let _ = reception.data.close().await;
    let _ = reception.meta.close().await;
    for spool in [&reception.data, &reception.meta] {
        let stats = spool.stats();
        tracing::info!(
            "spool {}: {} messages stored in {} group commits ({} syncs) since startup",
            spool.name(),
            stats.stores,
            stats.commits,
            stats.syncs
        );
    }
    tracing::info!("shutdown complete");
    Ok(0)
}

/// How long shutdown waits for delivery connections to finish.
const SHUTDOWN_SETTLE: std::time::Duration = std::time::Duration::from_secs(3);

/// Everything that adds `kumo.*` functions to the policy's Lua states.
#[allow(clippy::type_complexity)]
fn registrars(
    recorder: &InitRecorder,
    memory: &Arc<crate::memory::MemoryGovernor>,
    spools_for_save: &Arc<std::sync::OnceLock<Arc<crate::reception::Reception>>>,
    throttles: &Arc<tern_queue::Throttles>,
) -> anyhow::Result<(Vec<Arc<dyn LuaRegistrar>>, tern_dns::DnsHandle)> {
    let dns = match tern_dns::DnsHandle::system() {
        Ok(handle) => handle,
        Err(err) => {
            tracing::warn!(
                "the system DNS resolver is unavailable ({err}); policies must configure one"
            );
            let empty = tern_dns::TestResolver::from_zones::<&str>(&[])
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            tern_dns::DnsHandle::new(tern_dns::MxResolver::new(
                Arc::new(tern_dns::Resolver::Test(empty)),
                tern_dns::MxSettings::default(),
            ))
        }
    };
    let registrars: Vec<Arc<dyn LuaRegistrar>> = vec![
        Arc::new(recorder.clone()),
        Arc::new(crate::listener_domain::ListenerDomainRegistrar),
        Arc::new(crate::memory::MemoryRegistrar(memory.clone())),
        Arc::new(tern_dns::DnsRegistrar::new(dns.clone())),
        Arc::new(tern_queue::lua::QueueLuaRegistrar),
        Arc::new(tern_queue::ThrottleLuaRegistrar::new(throttles.clone())),
        Arc::new(crate::diag::DiagRegistrar),
        Arc::new(tern_message::mimepart_lua::register),
        Arc::new(tern_luahttp::HttpRegistrar::default()),
        Arc::new(crate::reception::SaveRegistrar(spools_for_save.clone())),
        Arc::new(
            tern_dkim::DkimRegistrar::new(Arc::new(tern_dkim::SignerCache::default()))
                .with_dns(dns.clone()),
        ),
    ];
    Ok((registrars, dns))
}

/// The throttles of the queue layer and of `kumo.make_throttle`, shared
/// by every Lua state, with a task that drops node-local throttles that
/// have fully recovered (policies often name one per tenant or sender, so
/// the keys would otherwise only grow).
fn shared_throttles() -> Arc<tern_queue::Throttles> {
    let throttles = Arc::new(tern_queue::Throttles::new());
    let weak = Arc::downgrade(&throttles);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
            match weak.upgrade() {
                Some(throttles) => throttles.local().purge_idle(std::time::Instant::now()),
                None => return,
            }
        }
    });
    throttles
}

async fn run_event(
    lua: &mlua::Lua,
    event: &str,
    args: impl FnOnce(&mlua::Lua) -> mlua::Result<MultiValue>,
    convert: impl FnOnce(&mlua::Lua, MultiValue) -> mlua::Result<()>,
) -> anyhow::Result<()> {
    dispatch_in(lua, event, args, convert)
        .await
        .map(|_| ())
        .map_err(|err: PolicyError| anyhow::anyhow!("error in the {event} event: {err}"))
}

async fn open_spools_and_logs(
    spools: &[tern_spool::SpoolConfig],
    log_configs: Vec<tern_log::LogConfig>,
    node_id: uuid::Uuid,
) -> anyhow::Result<crate::reception::Reception> {
    let find = |name: &str| {
        spools.iter().find(|s| s.name == name).ok_or_else(|| {
            anyhow::anyhow!(
                "no '{name}' spool is defined: define both 'data' and 'meta' with kumo.define_spool"
            )
        })
    };
    let data_config = find("data")?.clone();
    let meta_config = find("meta")?.clone();
    let (data, meta) = tokio::task::spawn_blocking(move || {
        // RocksDB data and meta spools share one writer thread.
        let group = tern_spool::SpoolGroup::new();
        let data = tern_spool::Spool::open_in(&data_config, &group)
            .map_err(|e| anyhow::anyhow!("cannot open the data spool: {e}"))?;
        let meta = tern_spool::Spool::open_in(&meta_config, &group)
            .map_err(|e| anyhow::anyhow!("cannot open the meta spool: {e}"))?;
        Ok::<_, anyhow::Error>((data, meta))
    })
    .await??;
    let mut loggers = Vec::with_capacity(log_configs.len());
    for config in log_configs {
        let dir = config.log_dir.display().to_string();
        let logger = tern_log::Logger::start(config)
            .map_err(|e| anyhow::anyhow!("cannot start the logger for {dir}: {e}"))?;
        loggers.push(logger);
    }
    Ok(crate::reception::Reception {
        data,
        meta,
        loggers: Arc::new(loggers),
        node_id,
        spooled: Default::default(),
        queues: Default::default(),
        filter: Default::default(),
        hooks: Vec::new(),
    })
}

/// Checks that need the whole init-time configuration.
fn check_config(config: &InitConfig) -> anyhow::Result<()> {
    if config.spools.is_empty() {
        anyhow::bail!("No spools have been defined: call kumo.define_spool in the init event");
    }
    for params in &config.http_listeners {
        params.validate().map_err(anyhow::Error::msg)?;
    }
    for listener in &config.esmtp_listeners {
        listener
            .base
            .listen
            .parse::<std::net::SocketAddr>()
            .map_err(|e| {
                anyhow::anyhow!(
                    "kumo.start_esmtp_listener: invalid listen address '{}': {e}",
                    listener.base.listen
                )
            })?;
    }
    Ok(())
}

/// The shutdown signals, installed before `initialization complete` is
/// printed so that a signal sent right after it is never lost.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

async fn wait_for_signal(signals: Signals) {
    let Signals {
        mut term,
        mut int,
        mut hup,
    } = signals;
    tokio::select! {
        _ = term.recv() => tracing::info!("received SIGTERM"),
        _ = int.recv() => tracing::info!("received SIGINT"),
        _ = hup.recv() => tracing::info!("received SIGHUP (Tern, like KumoMTA, shuts down on SIGHUP)"),
    }
}

/// Deferred HTTP generation for the queue layer, through the HTTP module.
struct HttpGenerator(std::sync::Weak<ServerState>);

impl crate::queue::DeferredGenerator for HttpGenerator {
    fn expand<'a>(
        &'a self,
        request: &'a tern_message::Message,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send + 'a>>
    {
        Box::pin(async move {
            let state = self.0.upgrade().ok_or("the server is shutting down")?;
            let response = crate::http::inject::expand_deferred(&state, request)
                .await
                .map_err(|err| err.to_string())?;
            Ok(format!(
                "generated {} messages ({} failed)",
                response.success_count, response.fail_count
            ))
        })
    }
}
