//! The `longhorn-manager` stand-in (manager-monitor's test binary: its comm is
//! `longhorn-manage`, like the real one's) driven over its stdin, and a loopback
//! instance-manager port for it to connect to: what the agent's manager monitor and the
//! node verdict are tested against.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context as _, anyhow, ensure};

/// A policy file with node-verdict thresholds for seconds-long tests (the agent and the
/// webhook read the same file): a 6 s window, floors over 1 s, 2 s to enter, 3 s to recover;
/// leaking at 300 connections a minute from 20, degrading at 60 from 10; RSS never judged.
/// [`StandIn`]'s `leak ADDR 30 4` (1,800 a minute) turns a node leaking within seconds.
pub const SECONDS_POLICY: &str = "\
nodeProtection:
  mode: enforce
  thresholds:
    windowSeconds: 6
    floorSeconds: 1
    enterAfterSeconds: 2
    recoverAfterSeconds: 3
    degrading: {minConnections: 10, connectionsPerMinute: 60, minRssMib: 100000, rssMibPerMinute: 100000}
    leaking: {minConnections: 20, connectionsPerMinute: 300, minRssMib: 100000, rssMibPerMinute: 100000}
";

/// A loopback "instance manager" port that accepts and holds every connection until dropped.
pub struct ImPort {
    pub port: u16,
    pub accepted: Arc<Mutex<Vec<TcpStream>>>,
}

impl ImPort {
    pub fn bind() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&accepted);
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                sink.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(conn);
            }
        });
        Ok(ImPort { port, accepted })
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for ImPort {
    fn drop(&mut self) {
        self.accepted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

/// The `longhorn-manager` stand-in, killed and reaped on drop.
pub struct StandIn {
    pub child: Child,
    pub stdin: ChildStdin,
    pub stdout: BufReader<ChildStdout>,
}

impl StandIn {
    /// The stand-in is a binary of the manager-monitor package, built beside the running test.
    pub fn binary() -> anyhow::Result<PathBuf> {
        let exe = std::env::current_exe()?;
        let dir = exe
            .parent()
            .and_then(|deps| deps.parent())
            .ok_or_else(|| anyhow!("no target directory above {}", exe.display()))?;
        let bin = dir.join("longhorn-manager");
        ensure!(
            bin.exists(),
            "the longhorn-manager stand-in is not built at {}: run the tests with \
             `cargo nextest run --workspace` or build it with \
             `cargo build -p longhorn-guard-manager-monitor --bin longhorn-manager`",
            bin.display()
        );
        Ok(bin)
    }

    pub fn start(node: &str, instance: &str) -> anyhow::Result<Self> {
        let mut child = Command::new(Self::binary()?)
            .args(["--node", node, "--instance", instance])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawning the longhorn-manager stand-in")?;
        let stdin = child.stdin.take().context("stand-in stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().context("stand-in stdout")?);
        let mut ready = String::new();
        stdout.read_line(&mut ready)?;
        ensure!(ready.starts_with("ready"), "stand-in said {ready:?}");
        Ok(StandIn {
            child,
            stdin,
            stdout,
        })
    }

    pub fn cmd(&mut self, line: &str) -> anyhow::Result<String> {
        writeln!(self.stdin, "{line}")?;
        self.stdin.flush()?;
        let mut reply = String::new();
        self.stdout.read_line(&mut reply)?;
        ensure!(
            reply.starts_with("ok"),
            "stand-in refused {line:?}: {reply:?} (an \"unknown command\" means the \
             longhorn-manager binary in target/ is older than this test: `cargo nextest run -p \
             longhorn-guard-agent` does not rebuild it; `cargo build -p \
             longhorn-guard-manager-monitor --bin longhorn-manager` does)"
        );
        Ok(reply.trim().to_owned())
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
