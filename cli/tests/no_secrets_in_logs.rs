//! The real `longhorn-guard webhook` binary, logging at TRACE (every crate, JSON and text),
//! over a short session with successes and errors: neither the API token of its kubeconfig
//! nor its TLS private key ever appears in its output.
//!
//! Two sessions: one with the test control plane's own admin token (watches and live GETs
//! succeed), one with a random token the API server refuses (401s on every watch and on the
//! live GET, logged as errors). Needs `LHG_TEST_KUBECONFIG`, `openssl` and `curl`.
#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const BIN: &str = env!("CARGO_BIN_EXE_longhorn-guard");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn random_hex(n: usize) -> String {
    let out = Command::new("openssl")
        .args(["rand", "-hex", &n.to_string()])
        .output()
        .expect("openssl");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

struct Session {
    dir: PathBuf,
    child: Option<Child>,
    listen: u16,
    metrics: u16,
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn curl(args: &[&str]) -> String {
    Command::new("curl")
        .args(["-sk", "--max-time", "10"])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn review(uid: &str, snapshot: &str) -> String {
    serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "longhorn.io", "version": "v1beta2", "kind": "Backup"},
            "resource": {"group": "longhorn.io", "version": "v1beta2", "resource": "backups"},
            "namespace": "lhg-no-secrets",
            "operation": "CREATE",
            "userInfo": {"username": "alice"},
            "object": {
                "apiVersion": "longhorn.io/v1beta2", "kind": "Backup",
                "metadata": {"name": "bk", "namespace": "lhg-no-secrets"},
                "spec": {"snapshotName": snapshot},
            },
        },
    })
    .to_string()
}

/// Runs one session and returns everything the binary wrote (stdout + stderr).
fn session(kubeconfig: &Path, cert: &Path, key: &Path, format: &str) -> Result<String> {
    let dir = std::env::temp_dir().join(format!("lhg-logs-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir)?;
    let log = dir.join("out.log");
    let mut s = Session {
        dir: dir.clone(),
        child: None,
        listen: free_port(),
        metrics: free_port(),
    };
    let file = std::fs::File::create(&log)?;
    s.child = Some(
        Command::new(BIN)
            .args([
                "--log-format",
                format,
                "webhook",
                "--namespace",
                "lhg-no-secrets",
            ])
            .args(["--listen", &format!("127.0.0.1:{}", s.listen)])
            .args(["--metrics-listen", &format!("127.0.0.1:{}", s.metrics)])
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "trace")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()?,
    );
    let until = Instant::now() + Duration::from_secs(20);
    while curl(&[&format!("http://127.0.0.1:{}/healthz", s.metrics)]).is_empty() {
        anyhow::ensure!(Instant::now() < until, "webhook never answered /healthz");
        std::thread::sleep(Duration::from_millis(100));
    }
    let url = format!("https://127.0.0.1:{}/validate/backups", s.listen);
    let post = |body: &str| {
        curl(&[
            "-H",
            "content-type: application/json",
            "--data-binary",
            body,
            &url,
        ])
    };
    // A decision that needs a live GET (the snapshot is not indexed), bad bodies, a huge one.
    let answer = post(&review("uid-live-get", "snap-not-there"));
    anyhow::ensure!(answer.contains("uid-live-get"), "no answer: {answer}");
    post("{not json");
    post(&review("", "x"));
    post(&"y".repeat(2 * 1024 * 1024));
    curl(&[&format!("http://127.0.0.1:{}/metrics", s.metrics)]);
    curl(&[&format!("http://127.0.0.1:{}/readyz", s.metrics)]);
    std::thread::sleep(Duration::from_secs(2));
    let mut child = s.child.take().unwrap();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut out = String::new();
    std::fs::File::open(&log)?.read_to_string(&mut out)?;
    Ok(out)
}

fn assert_clean(label: &str, out: &str, secrets: &[(&str, &str)]) {
    for (what, secret) in secrets {
        assert!(
            !out.contains(secret),
            "{label}: the log contains the {what} ({} bytes of log)",
            out.len()
        );
    }
    assert!(
        !out.contains("PRIVATE KEY"),
        "{label}: the log contains a PEM private key"
    );
}

#[test]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
fn neither_the_api_token_nor_the_tls_key_appear_in_trace_logs() -> Result<()> {
    // The webhook refuses to start without Longhorn's CRDs: install them (once per run).
    let cluster =
        tokio::runtime::Runtime::new()?.block_on(longhorn_guard_testkit::TestCluster::connect())?;
    let kubeconfig = cluster.kubeconfig_path();
    let dir = std::env::temp_dir().join(format!("lhg-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert))?;
    let key_pem = std::fs::read_to_string(&key)?;
    // Every base64 line of the key, and the raw scalar as hex (what a Debug print would show).
    let key_lines: Vec<String> = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .map(str::to_string)
        .collect();
    let der_hex = run(Command::new("sh").arg("-c").arg(format!(
        "openssl pkey -in {} -outform DER | od -An -tx1 | tr -d ' \\n'",
        key.display()
    )))?;
    // The private scalar of the P-256 key: after `02 01 01 04 20` in the PKCS#8 DER.
    let at = der_hex
        .find("0201010420")
        .context("no EC private key in the DER")?
        + 10;
    let scalar_hex = der_hex[at..at + 64].to_string();
    assert!(!key_lines.is_empty());

    let text = std::fs::read_to_string(kubeconfig)?;
    let real_token = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("token:"))
        .map(|t| t.trim().trim_matches('"').to_string())
        .context("the test kubeconfig has no token")?;
    let bogus_token = random_hex(24);
    let bogus = dir.join("kubeconfig-bogus");
    std::fs::write(&bogus, text.replace(&real_token, &bogus_token))?;

    let mut secrets: Vec<(&str, &str)> = vec![
        ("admin token", &real_token),
        ("random token", &bogus_token),
        ("private scalar (hex)", &scalar_hex),
    ];
    for l in &key_lines {
        secrets.push(("key PEM line", l));
    }

    let good = session(kubeconfig, &cert, &key, "json")?;
    assert!(
        good.contains("webhook listening"),
        "session did not start:\n{good}"
    );
    assert!(
        good.len() > 10_000,
        "suspiciously short TRACE log ({} bytes)",
        good.len()
    );
    assert_clean("admin token, json", &good, &secrets);

    let bad = session(&bogus, &cert, &key, "text")?;
    assert!(
        bad.contains("401") || bad.to_lowercase().contains("unauthorized"),
        "the bogus token was not refused in the log:\n{}",
        &bad[..bad.len().min(4000)]
    );
    assert_clean("random token, text", &bad, &secrets);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
