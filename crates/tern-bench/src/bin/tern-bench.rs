//! `tern-bench send|sink ...`: the bench tools without the main `tern`
//! binary (same arguments as `tern bench send|sink`).

use clap::{Parser, Subcommand};
use tern_bench::cli::{SendArgs, SinkArgs, run_send, run_sink};

#[derive(Parser)]
#[command(name = "tern-bench", about = "Tern load generator and test SMTP sink")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inject mail over SMTP or HTTP and report throughput and latency.
    Send(SendArgs),
    /// Run a test SMTP sink.
    Sink(SinkArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let result = match Cli::parse().command {
        Command::Send(args) => run_send(args).await.map(|_| ()),
        Command::Sink(args) => run_sink(args).await.map(|_| ()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tern-bench: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
