//! End to end, the way an operator installs the guard, on the run's real kube-apiserver:
//!
//! 1. a ValidatingWebhookConfiguration registered by `url: https://127.0.0.1:PORT/...` with no
//!    caBundle (so the API server cannot call it yet);
//! 2. `longhorn-guard certs bootstrap` (the real binary) creates the CA and the Secrets and
//!    patches that caBundle;
//! 3. the real `longhorn-guard webhook` serves the Secret's certificate from a directory laid
//!    out as kubelet lays out a Secret volume (`tls.crt -> ..data/tls.crt`, `..data` an atomic
//!    symlink swap);
//! 4. the API server calls it: a Backup of a missing snapshot is denied with the guard's
//!    message, a Backup of an existing one is created;
//! 5. under a steady stream of Backup CREATEs through the API server, with
//!    `failurePolicy: Fail` so that any failed call reaches the client as an error:
//!    `certs rotate --force` (new leaves), then a two-phase CA roll (`rotate` staging a next CA,
//!    `rotate` promoting it), each followed by the volume update kubelet would make. Every
//!    request gets the guard's verdict (0 failed), and the webhook ends up serving a leaf of
//!    the new CA.
//!
//! Needs `LHG_TEST_KUBECONFIG` (the test command's control plane).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use longhorn_guard_certs::pki;
use longhorn_guard_testkit::{TestCluster, free_port, wait_for};
use longhorn_types::{Backup, shapes};

const BIN: &str = env!("CARGO_BIN_EXE_longhorn-guard");
const ENTRY: &str = "backups.e2e.longhorn-guard.io";
const WEBHOOK_SECRET: &str = "longhorn-guard-webhook-tls";

/// A directory laid out like a kubelet Secret volume: the files are symlinks into `..data`,
/// which points at a timestamped directory and is replaced with one atomic rename.
struct SecretVolume {
    dir: PathBuf,
    generation: u32,
}

impl SecretVolume {
    fn new(dir: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir, generation: 0 })
    }

    fn project(&mut self, secret: &Secret) -> Result<()> {
        self.generation += 1;
        let version = format!("..v{}", self.generation);
        let target = self.dir.join(&version);
        std::fs::create_dir(&target)?;
        for (key, value) in secret.data.as_ref().context("secret without data")? {
            std::fs::write(target.join(key), &value.0)?;
        }
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp)?;
        std::fs::rename(&tmp, self.dir.join("..data"))?;
        for key in ["tls.crt", "tls.key", "ca.crt"] {
            let link = self.dir.join(key);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(Path::new("..data").join(key), &link)?;
            }
        }
        Ok(())
    }

    fn file(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }
}

impl Drop for SecretVolume {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The real webhook binary, killed on drop.
struct Webhook {
    child: Child,
    listen: u16,
    metrics: u16,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn certs(cluster: &TestCluster, args: &[&str]) -> Result<String> {
    let out = cluster
        .command(BIN)
        .args(["--log-format", "text", "certs"])
        .args(args)
        .output()
        .context("running longhorn-guard certs")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "certs {args:?} failed: {text}");
    Ok(text)
}

async fn secret(client: &Client, ns: &str) -> Result<Secret> {
    Ok(Api::<Secret>::namespaced(client.clone(), ns)
        .get(WEBHOOK_SECRET)
        .await?)
}

fn data<'a>(secret: &'a Secret, key: &str) -> Result<&'a [u8]> {
    Ok(&secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .with_context(|| format!("secret has no {key}"))?
        .0)
}

/// The serial of the certificate the webhook presents on `port`, verified against `bundle`
/// for the name 127.0.0.1 (what the API server checks).
async fn served_serial(port: u16, bundle: &[u8]) -> Result<String> {
    let mut roots = rustls::RootCertStore::empty();
    for der in pem(bundle)? {
        roots.add(der)?;
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
    let tls = connector.connect(name, tcp).await?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .context("no peer certificate")?;
    Ok(pki::inspect(leaf).map_err(anyhow::Error::msg)?.serial_hex)
}

/// The certificates of a PEM bundle.
fn pem(bytes: &[u8]) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    pki::pem_certs(std::str::from_utf8(bytes)?).map_err(anyhow::Error::msg)
}

fn leaf_serial(secret: &Secret) -> Result<String> {
    let leaf = pem(data(secret, "tls.crt")?)?.remove(0);
    Ok(pki::inspect(&leaf).map_err(anyhow::Error::msg)?.serial_hex)
}

/// Projects the Secret into the volume and waits until the webhook serves its leaf.
async fn roll_out(client: &Client, ns: &str, volume: &mut SecretVolume, port: u16) -> Result<()> {
    let secret = secret(client, ns).await?;
    volume.project(&secret)?;
    let want = leaf_serial(&secret)?;
    let bundle = data(&secret, "ca.crt")?.to_vec();
    wait_for(
        Duration::from_secs(30),
        &format!("the webhook to serve certificate {want}"),
        || {
            let bundle = bundle.clone();
            let want = want.clone();
            async move { Ok(served_serial(port, &bundle).await? == want) }
        },
    )
    .await
}

#[derive(Default)]
struct Tally {
    created: AtomicU64,
    denied_missing: AtomicU64,
    failed: AtomicU64,
    failures: std::sync::Mutex<Vec<String>>,
}

/// One worker of the review stream: alternately a Backup of an existing snapshot (must be
/// created) and one of a missing snapshot (must be denied by the guard) until `stop`.
async fn stream(
    client: Client,
    ns: String,
    worker: usize,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    let api: Api<Backup> = Api::namespaced(client, &ns);
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let missing = i.is_multiple_of(2);
        let snapshot = if missing { "snap-gone" } else { "snap-ok" };
        let name = format!("bk-{worker}-{i}");
        let backup: Backup =
            serde_json::from_value(shapes::backup(&ns, &name, "vol-1", snapshot, None)).unwrap();
        let outcome = api.create(&PostParams::default(), &backup).await;
        match (missing, outcome) {
            (false, Ok(_)) => {
                tally.created.fetch_add(1, Ordering::Relaxed);
            }
            (true, Err(kube::Error::Api(e)))
                if e.message.contains("longhorn-guard denied")
                    && e.message.contains("snap-gone") =>
            {
                tally.denied_missing.fetch_add(1, Ordering::Relaxed);
            }
            (_, other) => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
                tally
                    .failures
                    .lock()
                    .unwrap()
                    .push(format!("{name} ({snapshot}): {other:?}"));
            }
        }
    }
}

#[tokio::test]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn bootstrapped_certificates_are_served_called_by_the_api_server_and_rotate_without_a_failed_request()
-> Result<()> {
    longhorn_guard_runtime::install_crypto_provider();
    let cluster = TestCluster::connect().await?;
    let client = cluster.client();
    let ns = cluster.namespace("lhg-certs-e2e").await?;
    common::seed_volume_snapshot_and_target(&cluster, &ns).await?;

    // 1. Registered by url, without a caBundle: nothing can call it yet.
    let listen = free_port()?;
    let vwc_name = format!("lhg-e2e-{ns}");
    let vwc = common::backup_webhook_by_url(
        &vwc_name,
        ENTRY,
        &ns,
        &format!("https://127.0.0.1:{listen}/validate/backups"),
        None,
    )?;
    let vwcs = Api::<ValidatingWebhookConfiguration>::all(client.clone());
    vwcs.create(&PostParams::default(), &vwc).await?;

    // 2. Bootstrap with the real binary.
    let common = [
        "--namespace",
        &ns,
        "--validating-webhook-configuration",
        &vwc_name,
        "--mutating-webhook-configuration",
        "",
        "--webhook-name",
        ENTRY,
        "--webhook-san",
        "127.0.0.1",
    ];
    let mut args = vec!["bootstrap"];
    args.extend(common);
    certs(&cluster, &args)?;
    let first = secret(&client, &ns).await?;
    let patched = vwcs.get(&vwc_name).await?;
    let bundle = patched.webhooks.as_ref().unwrap()[0]
        .client_config
        .ca_bundle
        .clone()
        .context("bootstrap did not patch the caBundle")?;
    assert_eq!(
        bundle.0,
        data(&first, "ca.crt")?,
        "caBundle = the Secret's trust bundle"
    );

    // 3. The real webhook serving the Secret from a kubelet-style volume.
    let volume_dir = std::env::temp_dir().join(format!("lhg-certs-e2e-{}", rand::random::<u32>()));
    let mut volume = SecretVolume::new(volume_dir.clone())?;
    volume.project(&first)?;
    let policy = volume_dir.join("policy.yaml");
    // Throttling off: every Backup of snap-ok must be created, whatever the stream's size.
    std::fs::write(&policy, "throttle:\n  enabled: false\n")?;
    let metrics = free_port()?;
    let log = std::fs::File::create(volume_dir.join("webhook.log"))?;
    let webhook = Webhook {
        child: cluster
            .command(BIN)
            .args(["--log-format", "text", "webhook", "--namespace", &ns])
            .args(["--listen", &format!("127.0.0.1:{listen}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
            .arg("--tls-cert")
            .arg(volume.file("tls.crt"))
            .arg("--tls-key")
            .arg(volume.file("tls.key"))
            .arg("--policy")
            .arg(&policy)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?,
        listen,
        metrics,
    };
    common::wait_until_ready(webhook.metrics).await?;
    assert_eq!(
        served_serial(webhook.listen, &bundle.0).await?,
        leaf_serial(&first)?
    );

    // 4. The API server calls it with the patched bundle.
    let api: Api<Backup> = Api::namespaced(client.clone(), &ns);
    wait_for(
        Duration::from_secs(20),
        "the API server to call the webhook",
        || {
            let api = api.clone();
            let ns = ns.clone();
            async move {
                let b: Backup = serde_json::from_value(shapes::backup(
                    &ns,
                    "probe",
                    "vol-1",
                    "snap-gone",
                    None,
                ))?;
                match api.create(&PostParams::default(), &b).await {
                    Err(kube::Error::Api(e)) => Ok(e.message.contains("longhorn-guard denied")),
                    Ok(_) => bail!("a Backup of a missing snapshot was created"),
                    Err(e) => Err(e.into()),
                }
            }
        },
    )
    .await?;
    let ok: Backup =
        serde_json::from_value(shapes::backup(&ns, "first-ok", "vol-1", "snap-ok", None))?;
    api.create(&PostParams::default(), &ok).await?;

    // 5. Rotation under a steady stream of reviews through the API server.
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let workers: Vec<_> = (0..4)
        .map(|w| {
            tokio::spawn(stream(
                client.clone(),
                ns.clone(),
                w,
                stop.clone(),
                tally.clone(),
            ))
        })
        .collect();
    let settle = || tokio::time::sleep(Duration::from_secs(2));
    settle().await;

    let mut args = vec!["rotate", "--force"];
    args.extend(common);
    certs(&cluster, &args)?;
    let renewed = secret(&client, &ns).await?;
    assert_ne!(
        leaf_serial(&renewed)?,
        leaf_serial(&first)?,
        "--force re-issues the leaf"
    );
    roll_out(&client, &ns, &mut volume, webhook.listen).await?;
    settle().await;

    // CA roll, phase 1: a next CA is staged into every bundle (the leaf stays).
    let mut args = vec!["rotate", "--ca-renew-before", "7300d"];
    args.extend(common);
    certs(&cluster, &args)?;
    let staged = secret(&client, &ns).await?;
    ensure!(
        pem(data(&staged, "ca.crt")?)?.len() >= 2,
        "the staged CA is in the trust bundle"
    );
    volume.project(&staged)?;
    settle().await;

    // Phase 2: the staged CA is promoted and signs new leaves.
    let mut args = vec!["rotate", "--ca-renew-before", "7300d", "--ca-overlap", "0s"];
    args.extend(common);
    certs(&cluster, &args)?;
    let promoted = secret(&client, &ns).await?;
    roll_out(&client, &ns, &mut volume, webhook.listen).await?;
    settle().await;

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await?;
    }

    // The webhook serves a leaf signed by a CA the old bundle did not hold.
    let old_cas = pem(data(&first, "ca.crt")?)?;
    let new_leaf = pem(data(&promoted, "tls.crt")?)?.remove(0);
    assert!(
        !old_cas.iter().any(|ca| pki::is_signed_by(&new_leaf, ca)),
        "after the roll the leaf is signed by the new CA"
    );
    let final_bundle = vwcs.get(&vwc_name).await?.webhooks.unwrap()[0]
        .client_config
        .ca_bundle
        .clone()
        .unwrap();
    assert_eq!(final_bundle.0, data(&promoted, "ca.crt")?);

    let (created, denied, failed) = (
        tally.created.load(Ordering::Relaxed),
        tally.denied_missing.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
    );
    eprintln!("stream: {created} created, {denied} denied (missing snapshot), {failed} failed");
    assert_eq!(
        failed,
        0,
        "failed requests during rotation: {:?}",
        tally
            .failures
            .lock()
            .unwrap()
            .iter()
            .take(5)
            .collect::<Vec<_>>()
    );
    assert!(
        created > 10 && denied > 10,
        "the stream ran: {created} / {denied}"
    );

    drop(webhook);
    vwcs.delete(&vwc_name, &DeleteParams::default()).await?;
    Ok(())
}
