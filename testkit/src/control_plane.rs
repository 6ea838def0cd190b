//! A control plane of one's own (kube-apiserver + etcd on 127.0.0.1), started by
//! `control-plane/up.sh` and stopped by `down.sh` — from [`ControlPlane::stop`] or, if that
//! never ran (a panic), from `Drop`, so it never outlives its owner. The demo uses it, and
//! the few tests that must install cluster-scoped objects of their own (for example Longhorn
//! CRDs of another release) which would clash with the tests sharing the run's control plane.
//! About 5 s to start once the API server binary is cached.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, bail};
use tokio::process::Command;

/// The local control plane (kube-apiserver + etcd on 127.0.0.1) started by
/// `control-plane/up.sh` into a state directory of its own.
pub struct ControlPlane {
    scripts: PathBuf,
    state: PathBuf,
    stopped: bool,
}

impl ControlPlane {
    /// Runs `build.sh` (0 s when the apiserver binary is cached) then `up.sh` on free ports.
    pub async fn start(scripts: &Path, state: &Path) -> anyhow::Result<Self> {
        for script in ["build.sh", "up.sh", "down.sh"] {
            if !scripts.join(script).is_file() {
                bail!(
                    "control-plane script {} not found (pass --control-plane-dir)",
                    scripts.join(script).display()
                );
            }
        }
        let build = Command::new("bash")
            .arg(scripts.join("build.sh"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .await
            .context("running control-plane/build.sh")?;
        if !build.success() {
            bail!("control-plane/build.sh failed ({build})");
        }
        let lo = std::net::Ipv4Addr::LOCALHOST;
        // Held together so the three differ; released just before up.sh binds them.
        let ports: Vec<TcpListener> = (0..3)
            .map(|_| TcpListener::bind((lo, 0)))
            .collect::<Result<_, _>>()
            .context("finding free loopback ports")?;
        let port = |i: usize| -> anyhow::Result<String> {
            Ok(ports
                .get(i)
                .context("port list")?
                .local_addr()?
                .port()
                .to_string())
        };
        let (api, etcd, peer) = (port(0)?, port(1)?, port(2)?);
        drop(ports);
        let mut cp = Self {
            scripts: scripts.to_path_buf(),
            state: state.to_path_buf(),
            stopped: false,
        };
        let up = Command::new("bash")
            .arg(scripts.join("up.sh"))
            .arg(state)
            .env("LHG_CP_API_PORT", api)
            .env("LHG_CP_ETCD_PORT", etcd)
            .env("LHG_CP_ETCD_PEER_PORT", peer)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .await
            .context("running control-plane/up.sh")?;
        if !up.success() {
            cp.stop().await;
            bail!("control-plane/up.sh {} failed ({up})", state.display());
        }
        Ok(cp)
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.state.join("kubeconfig")
    }

    /// Runs `down.sh` (idempotent).
    pub async fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        if !self.state.join(".lhg-control-plane").exists() {
            return;
        }
        let status = Command::new("bash")
            .arg(self.scripts.join("down.sh"))
            .arg(&self.state)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .await;
        if let Err(e) = status {
            eprintln!("control-plane/down.sh failed: {e}");
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if self.stopped || !self.state.join(".lhg-control-plane").exists() {
            return;
        }
        // Last resort (panic, or a path that skipped `stop`): blocking is fine here.
        let _ = std::process::Command::new("bash")
            .arg(self.scripts.join("down.sh"))
            .arg(&self.state)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status();
    }
}

/// `control-plane/` of this source tree (for tests).
pub fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../control-plane")
}
