//! `tern`: the command-line entry point.
//!
//! A thin layer over the library crates: it parses the command line and
//! hands each subcommand to the crate that implements it.

use clap::{Parser, Subcommand};
use tern_server::ServeOptions;

#[derive(Parser)]
#[command(
    name = "tern",
    version,
    about = "Tern: a high-volume outbound MTA configured by a KumoMTA-compatible Lua policy",
    long_about = "Tern receives mail over ESMTP and HTTP, keeps it durably in a spool, and delivers it \
                  under the traffic shaping your Lua policy describes. Start with `tern serve --help`."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the MTA daemon (the equivalent of kumod).
    Serve(ServeOptions),
    /// Print the records of a log folder as JSON lines, with filters and --follow.
    Logs(tern_log::cli::LogsArgs),
    /// Load-testing tools: a mail generator and a test sink.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Talk to a running server's admin API: bounce, suspend, rebind, inspect, metrics.
    #[command(alias = "kcli")]
    Admin(tern_admin::AdminArgs),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Inject mail over SMTP or the HTTP injection API and report throughput and latency.
    Send(tern_bench::cli::SendArgs),
    /// Run an SMTP sink that accepts, discards or fails mail by recipient local part.
    Sink(tern_bench::cli::SinkArgs),
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Serve(options) => run_serve(options),
        Command::Bench(command) => run_bench(command),
        Command::Admin(args) => run_admin(args),
        Command::Logs(args) => match tern_log::cli::run(args) {
            Ok(()) => 0,
            Err(err) => {
                eprintln!("tern logs: {err:#}");
                1
            }
        },
    };
    std::process::exit(code);
}

/// A runtime for the client commands, or the exit code after saying why
/// there is none.
fn client_runtime(multi_thread: bool) -> Result<tokio::runtime::Runtime, i32> {
    let mut builder = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder.enable_all().build().map_err(|err| {
        eprintln!("tern: cannot start the runtime: {err}");
        2
    })
}

fn run_admin(args: tern_admin::AdminArgs) -> i32 {
    let runtime = match client_runtime(false) {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match runtime.block_on(tern_admin::run(args)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("tern admin: {err:#}");
            1
        }
    }
}

fn run_bench(command: BenchCommand) -> i32 {
    let runtime = match client_runtime(true) {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let result = runtime.block_on(async move {
        match command {
            BenchCommand::Send(args) => tern_bench::cli::run_send(args).await.map(|_| ()),
            BenchCommand::Sink(args) => tern_bench::cli::run_sink(args).await.map(|_| ()),
        }
    });
    match result {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("tern bench: {err:#}");
            1
        }
    }
}

fn run_serve(options: ServeOptions) -> i32 {
    if options.dump_openapi_spec {
        println!("{}", tern_server::http::openapi_spec());
        return 0;
    }
    let quiet = options.validate || options.script;
    if let Err(err) =
        tern_server::diag::init(options.diag_format, options.diag_log_dir.as_deref(), quiet)
    {
        eprintln!("tern: {err}");
        return 2;
    }
    if !quiet {
        match tern_server::privileges::raise_open_files_limit() {
            Ok(limit) => tracing::info!("open files limit: {limit}"),
            Err(err) => eprintln!("tern: warning: cannot raise the open files limit: {err}"),
        }
    }
    // Privileges are dropped before the runtime starts any thread.
    if !quiet && let Err(err) = tern_server::privileges::drop_privileges(options.user.as_deref()) {
        eprintln!("tern: {err}");
        return 2;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tern")
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("tern: cannot start the runtime: {err}");
            return 2;
        }
    };
    match runtime.block_on(tern_server::serve(options)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("tern: {err:#}");
            1
        }
    }
}
