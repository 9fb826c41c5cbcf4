//! Command-line options of `tern serve`, mirroring kumod's flags (§1.1).

use std::path::PathBuf;

#[derive(Clone, Debug, clap::Args)]
pub struct ServeOptions {
    /// The Lua policy file to load.
    #[arg(long, default_value = "/opt/kumomta/etc/policy/init.lua")]
    pub policy: PathBuf,

    /// The user to run as. Required when started as root (use `--user root`
    /// to stay root); when started as another user it must name that user.
    #[arg(long)]
    pub user: Option<String>,

    /// Evaluate the policy, run `pre_init`, `init` and `validate_config`,
    /// then exit: non-zero if anything failed. Binds no port and opens no spool.
    #[arg(long)]
    pub validate: bool,

    /// Run the policy as a script: only the `main` event is called, with the
    /// arguments given after `--`, then the process exits.
    #[arg(long)]
    pub script: bool,

    /// Legacy form of the script arguments; may be repeated.
    #[arg(long = "script-args")]
    pub script_args_legacy: Vec<String>,

    /// Write diagnostic logs to files in this directory instead of stderr.
    #[arg(long)]
    pub diag_log_dir: Option<PathBuf>,

    /// Format of diagnostic logs.
    #[arg(long, value_enum, default_value_t = DiagFormat::Full)]
    pub diag_format: DiagFormat,

    /// Print the OpenAPI description of the HTTP API and exit.
    #[arg(long)]
    pub dump_openapi_spec: bool,

    /// Arguments passed to the `main` event in `--script` mode.
    #[arg(last = true)]
    pub script_args: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DiagFormat {
    Full,
    Compact,
    Pretty,
    Json,
}
