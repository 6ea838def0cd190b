//! `longhorn-guard`: one binary, one image. Each subcommand is a thin wrapper over a crate of
//! the workspace; no logic lives here beyond parsing flags and setting up logs.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "longhorn-guard",
    version,
    about = "Guards Longhorn against Backup storms and engine gRPC leaks"
)]
struct Cli {
    /// Log format: `json` (default, for clusters) or `text`.
    #[arg(long, global = true, env = "LHG_LOG_FORMAT", default_value = "json")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[derive(Subcommand)]
enum Command {
    /// Print the Longhorn v1beta2 CRDs for a local control plane without Longhorn (YAML).
    Crds,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    let result = match cli.command {
        Command::Crds => print_crds(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("longhorn-guard: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_crds() -> anyhow::Result<()> {
    print!("{}", longhorn_types::crds::yaml()?);
    Ok(())
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
