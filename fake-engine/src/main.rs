//! `fake-engine`: runs a [`fake_engine::FakeEngine`] on a loopback address until SIGINT/SIGTERM,
//! serving the engines of a scenario file (format: `fake-engine/SCENARIOS.md`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use fake_engine::{FakeEngine, KeepalivePolicy, Scenario, serve};

/// A scriptable stand-in for Longhorn's instance-manager engine proxy (imrpc.ProxyEngineService).
#[derive(Parser, Debug)]
#[command(name = "fake-engine", version)]
struct Args {
    /// Loopback address to listen on (127.0.0.0/8 only; port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8501")]
    listen: SocketAddr,
    /// The engines the proxy can reach: a scenario file (YAML, see SCENARIOS.md). Repeatable;
    /// a later file replaces an engine of an earlier one at the same address.
    #[arg(long = "scenario", value_name = "FILE")]
    scenarios: Vec<PathBuf>,
    /// Check the scenario files and exit (prints the engines they define).
    #[arg(long)]
    check: bool,
    /// Keepalive enforcement: GOAWAY ENHANCE_YOUR_CALM "too_many_pings" to a client pinging
    /// more often than this many seconds, as Longhorn's instance manager does (10); 0 disables it.
    #[arg(long, default_value_t = 10)]
    keepalive_min_time_seconds: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    longhorn_guard_runtime::init_logs(longhorn_guard_runtime::LogFormat::Text);
    let args = Args::parse();
    let engine = FakeEngine::new();
    for path in &args.scenarios {
        let scenario = Scenario::from_file(path)?;
        engine.load_scenario(&scenario)?;
        for e in &scenario.engines {
            tracing::info!(scenario = %path.display(), address = %e.address, engine = %e.engine, volume = %e.volume, "engine added");
        }
    }
    if args.check {
        println!("scenario files are valid");
        return Ok(());
    }
    engine.set_keepalive_policy(
        (args.keepalive_min_time_seconds > 0).then(|| KeepalivePolicy {
            min_time: Duration::from_secs(args.keepalive_min_time_seconds),
        }),
    );
    let server = serve(engine, args.listen).await?;
    println!("fake-engine listening on {}", server.local_addr);

    longhorn_guard_runtime::shutdown_signal().await;
    server.shutdown().await;
    Ok(())
}
