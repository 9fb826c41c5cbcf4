//! Diagnostic (tracing) logs: `KUMOD_LOG` filter, `--diag-format`,
//! `--diag-log-dir`, and changing the filter while the server runs
//! (`kumo.set_diagnostic_log_filter`, `POST
//! /api/admin/set_diagnostic_log_filter/v1`).
//!
//! The filter sits behind a reload handle kept in a process-wide cell: the
//! subscriber it changes is tracing's global one, installed once per
//! process, so there is exactly one filter to change.

use crate::options::DiagFormat;
use std::path::Path;
use std::sync::OnceLock;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Replace the diagnostic filter (`KUMOD_LOG` syntax, e.g.
/// `tern_server=debug,info`). An invalid filter changes nothing.
pub fn set_filter(spec: &str) -> Result<(), String> {
    let filter = EnvFilter::try_new(spec)
        .map_err(|e| format!("invalid diagnostic log filter '{spec}': {e}"))?;
    let handle = FILTER
        .get()
        .ok_or("diagnostic logging is not set up in this process")?;
    handle
        .reload(filter)
        .map_err(|e| format!("cannot change the diagnostic log filter: {e}"))?;
    tracing::info!("diagnostic log filter is now '{spec}'");
    Ok(())
}

/// Installs `kumo.set_diagnostic_log_filter(filter)`.
pub struct DiagRegistrar;

impl tern_policy::LuaRegistrar for DiagRegistrar {
    fn register(&self, lua: &mlua::Lua, kumo: &mlua::Table) -> mlua::Result<()> {
        kumo.raw_set(
            "set_diagnostic_log_filter",
            lua.create_function(|_, spec: String| {
                set_filter(&spec).map_err(|e| {
                    mlua::Error::runtime(format!("kumo.set_diagnostic_log_filter: {e}"))
                })
            })?,
        )
    }
}

/// The filter used when `KUMOD_LOG` is not set.
pub const DEFAULT_SERVICE_FILTER: &str = "tern=info,tern_server=info,tern_policy=info,tern_spool=info,tern_log=info,tern_queue=info,tern_delivery=info,lua=info";

pub fn init(format: DiagFormat, dir: Option<&Path>, quiet_mode: bool) -> anyhow::Result<()> {
    let default = if quiet_mode {
        "error"
    } else {
        DEFAULT_SERVICE_FILTER
    };
    let filter = match std::env::var("KUMOD_LOG") {
        Ok(spec) if !spec.is_empty() => EnvFilter::try_new(&spec)
            .map_err(|e| anyhow::anyhow!("invalid KUMOD_LOG filter '{spec}': {e}"))?,
        _ => EnvFilter::new(default),
    };
    use std::io::IsTerminal;
    let ansi =
        dir.is_none() && std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let writer: Box<dyn Fn() -> Box<dyn std::io::Write> + Send + Sync> = match dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| {
                anyhow::anyhow!("cannot create --diag-log-dir {}: {e}", dir.display())
            })?;
            let name = format!("tern-{}.log", chrono_like_stamp());
            let path = dir.join(name);
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| {
                    anyhow::anyhow!("cannot open diagnostic log {}: {e}", path.display())
                })?;
            let file = std::sync::Arc::new(parking_lot::Mutex::new(file));
            Box::new(move || Box::new(SharedFile(file.clone())) as Box<dyn std::io::Write>)
        }
        None => Box::new(|| Box::new(std::io::stderr()) as Box<dyn std::io::Write>),
    };
    let (filter, handle) = reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(writer);
    let fmt = match format {
        DiagFormat::Full => fmt.boxed(),
        DiagFormat::Compact => fmt.compact().boxed(),
        DiagFormat::Pretty => fmt.pretty().boxed(),
        DiagFormat::Json => fmt.json().boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init()
        .map_err(|e| anyhow::anyhow!("failed to set up diagnostic logging: {e}"))?;
    let _ = FILTER.set(handle);
    Ok(())
}

struct SharedFile(std::sync::Arc<parking_lot::Mutex<std::fs::File>>);

impl std::io::Write for SharedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().flush()
    }
}

fn chrono_like_stamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    format!("{secs}-{}", std::process::id())
}
