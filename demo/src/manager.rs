//! The slow-leak run's simulated longhorn-manager: one process per node (`longhorn-guard
//! demo-manager --node N --instance ID`, this binary), so that each node's real agent, with its
//! real manager monitor reading `/proc`, follows its own node's manager. The simulated backup
//! controller (in the demo process) tells the leaky node's manager to open a connection to its
//! node's engine proxy on each reconcile and never close it, and to grow its memory with it:
//! the connections and the RSS the monitor sees are that process's own.
//!
//! The process side ([`serve_stdin`]) obeys one command per stdin line and answers one line:
//! `connect ADDR:PORT N` (open and hold N more connections), `grow MIB` (allocate and touch
//! MIB more MiB), `exit`; every answer is `ok connections=N mib=M` or `err ...`.

use std::io::{BufRead, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Stdio;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// The subcommand of the demo's binary that runs a simulated manager.
pub const SUBCOMMAND: &str = "demo-manager";

/// The most memory one simulated manager grows to, MiB (keeps the machine alive).
pub const MAX_MIB: usize = 1024;

/// What a simulated manager holds.
#[derive(Default)]
struct Held {
    connections: Vec<TcpStream>,
    memory: Vec<Vec<u8>>,
}

impl Held {
    fn mib(&self) -> usize {
        self.memory.len()
    }

    fn command(&mut self, line: &str) -> Option<String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let number = |i: usize| words.get(i).and_then(|w| w.parse::<usize>().ok());
        match words.as_slice() {
            ["exit"] => return None,
            ["connect", addr, _] => {
                let Some(n) = number(2) else {
                    return Some("err usage: connect ADDR:PORT N".into());
                };
                for _ in 0..n {
                    match TcpStream::connect(addr) {
                        Ok(s) => self.connections.push(s),
                        Err(e) => return Some(format!("err connecting to {addr}: {e}")),
                    }
                }
            }
            ["grow", _] => {
                let Some(mib) = number(1) else {
                    return Some("err usage: grow MIB".into());
                };
                for _ in 0..mib.min(MAX_MIB.saturating_sub(self.mib())) {
                    // Touched, so it is resident.
                    self.memory.push(vec![0x5a; 1024 * 1024]);
                }
            }
            _ => return Some(format!("err unknown command {line:?}")),
        }
        Some(format!(
            "ok connections={} mib={}",
            self.connections.len(),
            self.mib()
        ))
    }
}

/// The simulated manager process: obeys stdin until `exit` or end of input.
pub fn serve_stdin() -> anyhow::Result<()> {
    let mut held = Held::default();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    writeln!(out, "ready pid={}", std::process::id())?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        let Some(reply) = held.command(&line?) else {
            break;
        };
        writeln!(out, "{reply}")?;
        out.flush()?;
    }
    Ok(())
}

/// A running simulated manager, driven over its stdin by a task; killed on drop.
pub struct SimulatedManager {
    pub node: String,
    /// The agent's `--manager-process-match` that finds this process and no other.
    pub process_match: String,
    commands: mpsc::UnboundedSender<String>,
    child: Child,
}

impl SimulatedManager {
    /// Starts `exe demo-manager --node NODE --instance INSTANCE`, its stderr in `log`.
    pub async fn start(exe: &Path, node: &str, instance: &str, log: &Path) -> anyhow::Result<Self> {
        let err = std::fs::File::create(log)
            .with_context(|| format!("creating log file {}", log.display()))?;
        let mut child = Command::new(exe)
            .args([SUBCOMMAND, "--node", node, "--instance", instance])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting the simulated longhorn-manager of node {node}"))?;
        let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            bail!("the simulated longhorn-manager of node {node} has no stdin/stdout");
        };
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(std::time::Duration::from_secs(10), lines.next_line())
            .await
            .with_context(|| {
                format!("the simulated longhorn-manager of node {node} did not start")
            })??
            .unwrap_or_default();
        if !ready.starts_with("ready") {
            bail!("the simulated longhorn-manager of node {node} said {ready:?}");
        }
        let (commands, mut rx) = mpsc::unbounded_channel::<String>();
        let owner = node.to_string();
        tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                let sent = stdin.write_all(format!("{line}\n").as_bytes()).await;
                let reply = match sent {
                    Ok(()) => lines.next_line().await,
                    Err(e) => Err(e),
                };
                match reply {
                    Ok(Some(r)) if r.starts_with("ok") => {}
                    Ok(r) => {
                        tracing::warn!(node = %owner, command = %line, reply = ?r, "simulated longhorn-manager refused a command")
                    }
                    Err(e) => {
                        tracing::warn!(node = %owner, error = %e, "simulated longhorn-manager is gone");
                        return;
                    }
                }
            }
        });
        Ok(Self {
            node: node.to_string(),
            process_match: format!(
                "regex:{SUBCOMMAND} --node {} --instance {}$",
                regex_escape(node),
                regex_escape(instance)
            ),
            commands,
            child,
        })
    }

    /// A handle the simulated controller sends commands through.
    pub fn commands(&self) -> mpsc::UnboundedSender<String> {
        self.commands.clone()
    }

    /// Kills the process and waits for it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// `s` with the regex metacharacters escaped (node names and instance ids are plain, but a
/// `.` must not match anything).
fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let escape = "\\.+*?()|[]{}^$".contains(c);
            escape.then_some('\\').into_iter().chain(std::iter::once(c))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_hold_connections_and_memory_and_refuse_nonsense() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
        let addr = listener.local_addr().expect("addr");
        let mut held = Held::default();
        assert_eq!(
            held.command(&format!("connect {addr} 3")).as_deref(),
            Some("ok connections=3 mib=0")
        );
        assert_eq!(
            held.command("grow 2").as_deref(),
            Some("ok connections=3 mib=2")
        );
        assert!(held.command("grow x").is_some_and(|r| r.starts_with("err")));
        assert!(held.command("fly").is_some_and(|r| r.starts_with("err")));
        assert!(
            held.command("connect 127.0.0.1:1 1")
                .is_some_and(|r| r.starts_with("err connecting to 127.0.0.1:1"))
        );
        assert_eq!(held.command("exit"), None);
        assert_eq!(regex_escape("node-1.a"), "node-1\\.a");
    }
}
