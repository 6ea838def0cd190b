//! `longhorn-guard-agent`: the per-node agent alone (the flags of `longhorn-guard agent`).
//! The DaemonSet and the sidecar run this executable: it leaves out the webhook, the demo and
//! the operator tools, so each node maps less code.

use std::process::ExitCode;

use clap::Parser;
use longhorn_guard_agent::cli::AgentArgs;
use longhorn_guard_runtime::{LogFormat, init_logs};

#[derive(Parser)]
#[command(
    name = "longhorn-guard-agent",
    version,
    about = "longhorn-guard's per-node agent: engine gRPC through lease-bounded channels, leak metrics"
)]
struct Cli {
    /// Log format: `json` (default, for clusters) or `text`.
    #[arg(long, env = "LHG_LOG_FORMAT", default_value = "json")]
    log_format: LogFormat,
    #[command(flatten)]
    agent: AgentArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    match cli.agent.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("longhorn-guard-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
