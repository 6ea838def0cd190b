//! Every process the demo starts, and how each is stopped on every exit path: child
//! processes (webhook, agents) get SIGTERM then are waited for (SIGKILL after a grace, and
//! `kill_on_drop` as the last resort); the local control plane is stopped by `down.sh`,
//! from [`ControlPlane::stop`] or, if that never ran, from `Drop`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

/// A child process of the demo.
struct NamedChild {
    name: String,
    child: Child,
}

/// The demo's child processes.
#[derive(Default)]
pub struct Children {
    list: Mutex<Vec<NamedChild>>,
}

impl Children {
    /// Starts `program args...` with `envs`, stdout and stderr appended to `log`.
    pub fn spawn(
        &self,
        name: &str,
        program: &Path,
        args: &[String],
        envs: &[(&str, String)],
        log: &Path,
    ) -> anyhow::Result<u32> {
        let out = std::fs::File::create(log)
            .with_context(|| format!("creating log file {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("opening log file {}", log.display()))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd.spawn().with_context(|| {
            format!("starting {name}: {} {}", program.display(), args.join(" "))
        })?;
        let pid = child.id().unwrap_or(0);
        self.list
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(NamedChild {
                name: name.to_string(),
                child,
            });
        Ok(pid)
    }

    /// `Some(status)` when the named child has exited.
    pub fn exited(&self, name: &str) -> Option<String> {
        let mut list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        let c = list.iter_mut().find(|c| c.name == name)?;
        match c.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }

    /// Stops the children whose name starts with `prefix` (all with `""`): SIGTERM, wait up
    /// to `grace`, then SIGKILL and wait.
    pub async fn stop(&self, prefix: &str, grace: Duration) {
        let stopping: Vec<NamedChild> = {
            let mut list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
            let (take, keep): (Vec<_>, Vec<_>) =
                list.drain(..).partition(|c| c.name.starts_with(prefix));
            *list = keep;
            take
        };
        for c in &stopping {
            if let Some(pid) = c.child.id() {
                send_sigterm(pid).await;
            }
        }
        for mut c in stopping {
            match tokio::time::timeout(grace, c.child.wait()).await {
                Ok(_) => {}
                Err(_) => {
                    tracing::warn!(name = %c.name, "did not stop on SIGTERM; killing it");
                    let _ = c.child.kill().await;
                }
            }
        }
    }
}

/// SIGTERM through `kill(1)` (the workspace forbids `unsafe`, so no libc call here).
async fn send_sigterm(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
}

/// A free TCP port on `ip` (bound, then released).
pub fn free_port(ip: std::net::Ipv4Addr) -> anyhow::Result<u16> {
    let l = TcpListener::bind((ip, 0)).with_context(|| format!("binding {ip}:0"))?;
    Ok(l.local_addr()?.port())
}

/// The local control plane, shared with the tests that must own one
/// (`longhorn_guard_testkit::ControlPlane`).
pub use longhorn_guard_testkit::ControlPlane;

/// Where `control-plane/*.sh` are: `explicit`, else `./control-plane`, else next to the
/// repository the binary was built in (`target/<profile>/longhorn-guard` → `../../`), else
/// the source tree this crate was compiled from.
pub fn control_plane_dir(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = explicit {
        candidates.push(p.to_path_buf());
    }
    if let Ok(cwd) = std::env::current_dir() {
        candidates.push(cwd.join("control-plane"));
    }
    if let Ok(exe) = std::env::current_exe() {
        for up in exe.ancestors().skip(1).take(4) {
            candidates.push(up.join("control-plane"));
        }
    }
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../control-plane"));
    for c in &candidates {
        if c.join("up.sh").is_file() {
            return Ok(c.clone());
        }
    }
    bail!(
        "control-plane scripts not found (looked in {}); pass --control-plane-dir",
        candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}
