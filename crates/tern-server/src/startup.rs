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
//! 5. SIGTERM, SIGINT and SIGHUP all start a graceful shutdown.

use crate::init::{InitConfig, InitRecorder};
use crate::options::ServeOptions;
use crate::state::ServerState;
use mlua::{IntoLuaMulti, MultiValue};
use std::sync::Arc;
use tern_policy::engine::dispatch_in;
use tern_policy::{EngineOptions, LuaRegistrar, PolicyEngine, PolicyError};

/// Run `tern serve`; returns the process exit code.
pub async fn serve(options: ServeOptions) -> anyhow::Result<i32> {
    let recorder = InitRecorder::default();
    let mut engine_options = EngineOptions::new(options.policy.clone());
    engine_options.validating = options.validate;
    engine_options
        .registrars
        .push(Arc::new(recorder.clone()) as Arc<dyn LuaRegistrar>);
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
    let node_id = crate::nodeid::load_node_id()?;
    let state = Arc::new(ServerState::new(
        crate::state::hostname(),
        node_id,
        engine.clone(),
    ));
    drop(lua);

    for params in &config.http_listeners {
        let addr = crate::http::start(params, state.clone()).await?;
        tracing::info!("http listener on {addr}");
    }

    engine.run_maintenance(state.shutdown_signal());
    state.set_spool_ready();
    tracing::info!("initialization complete");

    wait_for_signal(signals).await;
    tracing::info!("shutting down");
    state.request_shutdown();
    // Give listeners a moment to stop accepting and finish in-flight work.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    tracing::info!("shutdown complete");
    Ok(0)
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

/// Checks that need the whole init-time configuration.
fn check_config(config: &InitConfig) -> anyhow::Result<()> {
    if config.spools.is_empty() {
        anyhow::bail!("No spools have been defined: call kumo.define_spool in the init event");
    }
    for params in &config.http_listeners {
        params.validate().map_err(anyhow::Error::msg)?;
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
