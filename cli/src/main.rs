//! The `rhone` binary: `rhone dev` (the whole platform on one machine), `rhone serve ROLE`
//! (one role of a multi-host install) and the client commands. Thin: parse, init tracing,
//! hand over to a module.

mod client;
mod commands;
mod dev;
mod runners;
mod serve;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "rhone", version, about = "Rhone: deploy and run Vango apps")]
struct Cli {
    /// Print machine-readable JSON instead of human output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the whole platform on this machine: Temporal (with its UI), the API with
    /// GraphiQL, the worker, the edge and one runner, over an SQLite file.
    Dev(dev::DevArgs),
    /// Run one server role of a multi-host install, configured by RHONE_* variables.
    Serve(serve::ServeArgs),
    /// Runner hosts (platform operators): add one and get its credential, list, revoke.
    #[command(subcommand)]
    Runners(runners::RunnersCmd),
    #[command(flatten)]
    Client(commands::ClientCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("RHONE_LOG").unwrap_or_else(|_| {
        let default = match cli.command {
            Command::Dev(_) | Command::Serve(_) => {
                "info,temporalio_sdk_core=warn,sqlx=warn,sea_orm_migration=warn"
            }
            Command::Client(_) | Command::Runners(_) => "warn",
        };
        tracing_subscriber::EnvFilter::new(default)
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Dev(args) => dev::run(args).await,
            Command::Serve(args) => serve::run(args).await,
            Command::Runners(cmd) => runners::run(cmd, cli.json).await,
            Command::Client(cmd) => commands::run(cmd, cli.json).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
