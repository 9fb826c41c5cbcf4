//! Diagnostic (tracing) logs: `KUMOD_LOG` filter, `--diag-format`,
//! `--diag-log-dir`.

use crate::options::DiagFormat;
use std::path::Path;
use tracing_subscriber::EnvFilter;

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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
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
    let result = match format {
        DiagFormat::Full => builder.with_writer(writer).try_init(),
        DiagFormat::Compact => builder.compact().with_writer(writer).try_init(),
        DiagFormat::Pretty => builder.pretty().with_writer(writer).try_init(),
        DiagFormat::Json => builder.json().with_writer(writer).try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("failed to set up diagnostic logging: {e}"))
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
