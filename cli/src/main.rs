//! `longhorn-guard`: one binary, one image. Each subcommand is a thin wrapper over a crate of
//! the workspace; no logic lives here beyond parsing flags and setting up logs.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use longhorn_guard_agent::cli::AgentArgs;
use longhorn_guard_runtime::{KubeArgs, LogFormat, init_logs, kube_client, shutdown_signal};
use longhorn_guard_stuck_backups::cli::{DoctorCommandArgs, PruneArgs, run_doctor, run_prune};
use longhorn_guard_webhook::cli::WebhookArgs;

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
    #[command(flatten)]
    kube: KubeArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the validating admission webhook for Longhorn Backups.
    Webhook(WebhookArgs),
    /// Run the per-node agent (engine gRPC through lease-bounded channels, leak metrics).
    Agent(AgentArgs),
    /// List non-terminal Backups with the reason each is stuck, and check the guard's own
    /// policy (read-only). Exit code 0: nothing needs attention; 1: something does; 2: the
    /// check itself failed.
    Doctor(DoctorCommandArgs),
    /// Delete Backup objects that can never complete and hold no data in the backup target
    /// (dry run unless --yes; writes a restore file first).
    Prune(PruneArgs),
    /// Print the Longhorn v1beta2 CRDs for a local control plane without Longhorn (YAML).
    Crds,
    /// Bootstrap or rotate the guard's CA, certificates and webhook caBundle.
    #[command(subcommand)]
    Certs(longhorn_guard_certs::CertsCommand),
    /// Replay the Longhorn v1.7.2 Backup storm without and with the guard on a local
    /// control plane (or the cluster of --kubeconfig) and report side by side.
    #[cfg(feature = "demo")]
    Demo(DemoArgs),
    /// The demo's simulated longhorn-manager (a process per node of the slow-leak run, driven
    /// by the demo over stdin). Not for use outside the demo.
    #[cfg(feature = "demo")]
    #[command(name = "demo-manager", hide = true)]
    DemoManager(DemoManagerArgs),
}

#[cfg(feature = "demo")]
#[derive(clap::Args)]
struct DemoManagerArgs {
    /// The simulated node (in the command line, for the agent's process match).
    #[arg(long)]
    node: String,
    /// Tells the demo's processes apart in the command line.
    #[arg(long)]
    instance: String,
}

#[cfg(feature = "demo")]
#[derive(clap::Args)]
struct DemoArgs {
    /// Backups the storm creates.
    #[arg(long, default_value_t = 4422)]
    backups: usize,
    #[arg(long, default_value_t = 300)]
    volumes: usize,
    #[arg(long, default_value_t = 4)]
    nodes: usize,
    /// Share of the Backups whose snapshot was lost in the outage (0..1).
    #[arg(long, default_value_t = 0.30)]
    lost_share: f64,
    /// Share whose snapshot disappears right after the Backup is admitted (0..1).
    #[arg(long, default_value_t = 0.03)]
    mid_storm_loss_share: f64,
    /// Bound of each run in seconds (storm + observation).
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// The storm's CREATEs start evenly over this many seconds.
    #[arg(long, default_value_t = 30)]
    storm_seconds: u64,
    /// Seconds between two reconciles of a stuck Backup by the simulated v1.7.2 controller.
    #[arg(long, default_value_t = 15)]
    resync: u64,
    /// Backup CREATEs in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Leaked connections at which a run is cut short (keeps the machine alive).
    #[arg(long, default_value_t = 5000)]
    leak_cap: usize,
    /// Report directory (report.json, report.md, in-flight.svg, logs/).
    #[arg(long, default_value = "demo-out")]
    out: PathBuf,
    /// Where control-plane/{build,up,down}.sh are (found next to the repository by default).
    #[arg(long)]
    control_plane_dir: Option<PathBuf>,
    /// The first simulated node's loopback address (127.0.0.0/8); the others follow it.
    #[arg(long)]
    node_address: Option<std::net::Ipv4Addr>,
    /// Instead of the two storms: the long run. The guard's topology for this many minutes
    /// with storm waves, engine faults and an API server outage, sampled and judged
    /// (long-run.md, long-run.json, one SVG per series; exit 1 when a goal is missed).
    #[arg(long)]
    long_run_minutes: Option<u64>,
    /// Long run: seconds between two storm waves (default 300, or a quarter of the run).
    #[arg(long, requires = "long_run_minutes")]
    wave_seconds: Option<u64>,
    /// Long run: Backups per wave.
    #[arg(long, default_value_t = 600)]
    wave_backups: usize,
    /// Long run: seconds the guard loses the API server (default 20, 10 under 10 minutes).
    #[arg(long, requires = "long_run_minutes")]
    outage_seconds: Option<u64>,
    /// Long run: seconds between two samples.
    #[arg(long, default_value_t = 10)]
    sample_seconds: u64,
    /// Seconds of each half of the third run, "slow leak" (loop off, loop enforcing); 0 skips it.
    #[arg(long, default_value_t = 45)]
    slow_leak_seconds: u64,
    /// Backups a second in the slow-leak run (under the static caps).
    #[arg(long, default_value_t = 4.0)]
    slow_leak_rate: f64,
}

/// The executable's name when kubectl runs it as a plugin (`kubectl longhorn-guard ...`:
/// kubectl looks for `kubectl-` + the command with `-` written `_`).
pub const KUBECTL_PLUGIN_NAME: &str = "kubectl-longhorn_guard";

fn parse_cli() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    let invoked_as = std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    let mut command = Cli::command();
    if invoked_as.as_deref() == Some(KUBECTL_PLUGIN_NAME) {
        // Usage lines and errors then read as the user typed them.
        command = command.bin_name("kubectl longhorn-guard");
    }
    let matches = command.get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

fn main() -> ExitCode {
    let cli = parse_cli();
    init_logs(cli.log_format);
    let kube = cli.kube;
    let result = match cli.command {
        Command::Webhook(args) => block_on(run_webhook(args, kube)),
        Command::Agent(args) => {
            if kube.is_set() {
                Err(anyhow::anyhow!(
                    "the agent takes its cluster from the in-cluster config or KUBECONFIG; --kubeconfig and --context are for the other commands"
                ))
            } else {
                args.run()
            }
        }
        Command::Doctor(args) => {
            return match block_on_value(
                async move { run_doctor(args, kube_client(&kube).await?).await },
            ) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("longhorn-guard doctor: {e:#}");
                    ExitCode::from(2)
                }
            };
        }
        Command::Prune(args) => {
            block_on(async move { run_prune(args, kube_client(&kube).await?).await })
        }
        Command::Crds => print_crds(),
        Command::Certs(cmd) => block_on(run_certs(cmd, kube)),
        #[cfg(feature = "demo")]
        Command::Demo(a) => block_on(run_demo(a, kube)),
        #[cfg(feature = "demo")]
        Command::DemoManager(a) => {
            tracing::debug!(node = %a.node, instance = %a.instance, "simulated longhorn-manager");
            longhorn_guard_demo::manager::serve_stdin()
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("longhorn-guard: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn block_on(fut: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    block_on_value(fut)
}

fn block_on_value<T>(
    fut: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    longhorn_guard_runtime::install_crypto_provider();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(fut)
}

#[cfg(feature = "demo")]
async fn run_demo(a: DemoArgs, kube: KubeArgs) -> anyhow::Result<()> {
    use std::time::Duration;
    let options = longhorn_guard_demo::DemoOptions {
        backups: a.backups,
        volumes: a.volumes,
        nodes: a.nodes,
        lost_share: a.lost_share,
        mid_storm_loss_share: a.mid_storm_loss_share,
        duration: Duration::from_secs(a.duration),
        storm_spread: Duration::from_secs(a.storm_seconds),
        resync: Duration::from_secs(a.resync),
        concurrency: a.concurrency,
        leak_cap: a.leak_cap,
        out_dir: a.out.clone(),
        kubeconfig: kube.kubeconfig,
        control_plane_dir: a.control_plane_dir,
        node_address: a.node_address,
        slow_leak: Duration::from_secs(a.slow_leak_seconds),
        slow_leak_rate: a.slow_leak_rate,
        ..Default::default()
    };
    if let Some(minutes) = a.long_run_minutes {
        let long = longhorn_guard_demo::long_run::LongRunOptions {
            total: Duration::from_secs(minutes.saturating_mul(60)),
            wave_every: a.wave_seconds.map(Duration::from_secs),
            wave_backups: a.wave_backups,
            outage: a.outage_seconds.map(Duration::from_secs),
            sample_every: Duration::from_secs(a.sample_seconds),
        };
        let report = longhorn_guard_demo::long_run::run(options, long).await?;
        print!("{}", report.markdown());
        println!(
            "\nWritten to {}: long-run.json, long-run.md, one SVG per series, logs/",
            a.out.display()
        );
        if !report.passed() {
            anyhow::bail!(
                "the long run missed its goals: {}",
                report.failures.join("; ")
            );
        }
        return Ok(());
    }
    let report = longhorn_guard_demo::run(options).await?;
    print!("{}", report.markdown());
    println!(
        "\nWritten to {}: report.json, report.md, in-flight.svg{}, logs/",
        a.out.display(),
        if report.slow_leak.is_empty() {
            ""
        } else {
            ", slow-leak.svg"
        }
    );
    Ok(())
}

async fn run_webhook(args: WebhookArgs, kube: KubeArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let client = kube_client(&kube).await?;
    longhorn_guard_webhook::run(config, client, shutdown_signal()).await
}

fn print_crds() -> anyhow::Result<()> {
    print!("{}", longhorn_types::crds::yaml()?);
    Ok(())
}

async fn run_certs(cmd: longhorn_guard_certs::CertsCommand, kube: KubeArgs) -> anyhow::Result<()> {
    let report = cmd.run_with(kube_client(&kube).await?).await?;
    tracing::info!(changed = report.changed(), "certs: done");
    Ok(())
}
