//! The `longhorn-guard-agent` executable the DaemonSet and the sidecar run: started with the
//! manifests' own container args (listen addresses and file paths moved to loopback and a temp
//! directory), it watches the local kube-apiserver, turns ready, serves its gRPC API over
//! mTLS, and exits cleanly on SIGTERM (what the kubelet sends).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use longhorn_guard_testkit::{TestCluster, free_port, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_longhorn-guard-agent");

/// The container args of the agent in `file` (a manifest of the repository).
fn manifest_args(file: &str) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    let doc: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    let containers = doc["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    let agent = containers
        .iter()
        .find(|c| c["command"][0] == "/usr/local/bin/longhorn-guard-agent")
        .unwrap_or_else(|| panic!("{file}: no container runs longhorn-guard-agent"));
    agent["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

fn curl_code(url: &str) -> String {
    Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "2",
            url,
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

#[tokio::test]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn the_manifests_agent_args_run_the_dedicated_executable_until_sigterm() -> Result<()> {
    let daemonset = manifest_args("base/agent-daemonset.yaml");
    let sidecar = manifest_args("sidecar/longhorn-manager-sidecar.yaml");
    assert_eq!(
        daemonset, sidecar,
        "DaemonSet and sidecar run the agent alike"
    );

    let cluster = TestCluster::connect().await?;
    let ns = cluster.namespace("lhg-agent-bin").await?;
    let dir = std::env::temp_dir().join(format!("lhg-agent-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])?;
    std::fs::write(dir.join("tls.crt"), cert.pem())?;
    std::fs::write(dir.join("tls.key"), signing_key.serialize_pem())?;
    std::fs::write(dir.join("ca.crt"), cert.pem())?;
    let (listen, ops) = (free_port()?, free_port()?);
    let args: Vec<String> = daemonset
        .iter()
        .map(|a| match a.split_once('=') {
            Some(("--node", _)) => "--node=node-1".to_string(),
            Some(("--namespace", _)) => format!("--namespace={ns}"),
            Some(("--listen", _)) => format!("--listen=127.0.0.1:{listen}"),
            Some(("--metrics-listen", _)) => format!("--metrics-listen=127.0.0.1:{ops}"),
            Some((flag, path)) if path.starts_with("/certs/") => {
                format!("{flag}={}", dir.join(&path["/certs/".len()..]).display())
            }
            _ => a.clone(),
        })
        .collect();
    let log = std::fs::File::create(dir.join("agent.log"))?;
    let mut child = cluster
        .command(BIN)
        .args(&args)
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting longhorn-guard-agent")?;
    let ready = format!("http://127.0.0.1:{ops}/readyz");
    let outcome = wait_for(Duration::from_secs(30), "agent /readyz 200", || {
        let ready = ready.clone();
        async move { Ok(curl_code(&ready) == "200") }
    })
    .await;
    let metrics = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "2",
            &format!("http://127.0.0.1:{ops}/metrics"),
        ])
        .output()?;
    let metrics = String::from_utf8_lossy(&metrics.stdout).into_owned();
    // SIGTERM, as the kubelet stops a pod.
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    outcome.with_context(|| format!("agent log:\n{log}"))?;
    assert!(
        metrics.contains("longhorn_guard_agent_leaked_leases 0"),
        "metrics:\n{metrics}"
    );
    let status = status.with_context(|| format!("no exit 15 s after SIGTERM; log:\n{log}"))?;
    assert!(status.success(), "exit {status:?}; log:\n{log}");
    assert!(log.contains("shutdown signal received"), "log:\n{log}");
    Ok(())
}
