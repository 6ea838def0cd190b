//! The Helm chart installed for real on the run's kube-apiserver (v1.20), then the pieces run
//! the way the installed objects say:
//!
//! 1. `helm install` (helm v4.1.4) of `manifests/helm/longhorn-guard` into a test namespace, with
//!    `longhornNamespace` = another test namespace holding a Volume, a Snapshot and a
//!    BackupTarget; every rendered object is then read back from the API server;
//! 2. the certificate bootstrap runs as the installed Job's container args (plus
//!    `--webhook-san 127.0.0.1`, see below) and patches the installed registration's caBundle;
//! 3. the webhook runs with the installed Deployment's args and env; its Secret and ConfigMap
//!    volumes are written to local directories and the mount paths in the args pointed there;
//!    `0.0.0.0:PORT` listeners are moved to free loopback ports;
//! 4. kubectl v1.33.9 creates a Backup of a missing snapshot (denied, with the guard's message
//!    shown to the user) and one of an existing snapshot (created);
//! 5. rotation under load (RELIABILITY.md, R3): an unpaced stream of Backup CREATE dry runs
//!    through the API server (registration at `failurePolicy: Fail`, so nothing is silently
//!    ignored), at least 100 reviews answered in each phase, while the CronJob's command renews
//!    the leaves and rolls the CA: no failed review, no webhook restart, the renewed leaf served
//!    afterwards (by its serial). The rate is printed, not asserted (RELIABILITY.md has the
//!    figures: 144-187 reviews/s here);
//! 6. `helm upgrade --set policy.mode=warn-only`: the running webhook takes the new ConfigMap up
//!    without a restart (the next missing-snapshot Backup is admitted with the guard's warning);
//! 7. `helm uninstall` removes the registration.
//!
//! The one change to an installed object: the registration's `clientConfig.service` becomes
//! `url: https://127.0.0.1:PORT/validate/backups` (caBundle kept), because the local control
//! plane has no Service network; hence the extra `127.0.0.1` SAN in step 2.
//!
//! Needs `LHG_TEST_KUBECONFIG`, `LHG_HELM` and `LHG_KUBECTL` (scripts/test.sh sets all three).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use longhorn_guard_testkit::{TestCluster, free_port, wait_for};
use longhorn_types::shapes;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_longhorn-guard");

fn tool(var: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(p) if Path::new(&p).is_file() => PathBuf::from(p),
        _ => panic!(
            "{var} is not set: run through `bash scripts/test.sh`, or \
             `source scripts/lib.sh && ensure_helm_kubectl` before cargo nextest"
        ),
    }
}

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/helm/longhorn-guard")
}

/// helm or kubectl against the test cluster only (its kubeconfig, a private helm home, and a
/// private HOME: kubectl's discovery cache goes to `$HOME/.kube/cache`, and with no HOME it
/// lands in the working directory, the crate's source tree).
fn client(cluster: &TestCluster, var: &str, home: &Path) -> Command {
    let mut cmd = cluster.command(tool(var));
    cmd.env("HOME", home)
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_DATA_HOME", home.join("data"));
    cmd
}

fn run(mut cmd: Command, what: &str) -> Result<String> {
    let out = cmd.output().with_context(|| what.to_owned())?;
    ensure!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

fn get(kubectl: &impl Fn() -> Command, args: &[&str]) -> Result<Value> {
    let mut cmd = kubectl();
    cmd.arg("get").args(args).args(["-o", "json"]);
    Ok(serde_json::from_str(&run(
        cmd,
        &format!("kubectl get {args:?}"),
    )?)?)
}

/// The files of a Secret or ConfigMap volume at `link`, updated the way kubelet updates a
/// volume: written into a new directory, then the symlink `link` swapped to it atomically.
fn project(kubectl: &impl Fn() -> Command, ns: &str, volume: &Value, link: &Path) -> Result<()> {
    let generation = link.with_extension(format!("gen{}", rand::random::<u32>()));
    std::fs::create_dir_all(&generation)?;
    if let Some(name) = volume["secret"]["secretName"].as_str() {
        let secret = get(kubectl, &["-n", ns, "secret", name])?;
        for (key, b64) in secret["data"].as_object().context("secret data")? {
            let bytes = base64_decode(b64.as_str().context("secret value")?)?;
            std::fs::write(generation.join(key), bytes)?;
        }
    } else if let Some(name) = volume["configMap"]["name"].as_str() {
        let cm = get(kubectl, &["-n", ns, "configmap", name])?;
        for (key, text) in cm["data"].as_object().context("configmap data")? {
            std::fs::write(
                generation.join(key),
                text.as_str().context("configmap value")?,
            )?;
        }
    } else {
        bail!("volume {volume} is neither a Secret nor a ConfigMap");
    }
    let swap = link.with_extension("swap");
    let _ = std::fs::remove_file(&swap);
    std::os::unix::fs::symlink(&generation, &swap)?;
    std::fs::rename(&swap, link)?;
    Ok(())
}

fn base64_decode(text: &str) -> Result<Vec<u8>> {
    let bytes: k8s_openapi::ByteString = serde_json::from_value(json!(text))?;
    Ok(bytes.0)
}

fn set_client_config(kubectl: &impl Fn() -> Command, client_config: &Value) -> Result<()> {
    let mut patch = kubectl();
    patch
        .args([
            "patch",
            "validatingwebhookconfiguration",
            "longhorn-guard",
            "--type=json",
            "-p",
        ])
        .arg(
            json!([{"op": "replace", "path": "/webhooks/0/clientConfig", "value": client_config}])
                .to_string(),
        );
    run(patch, "kubectl patch the registration's clientConfig").map(drop)
}

/// Uninstalls the release when the test ends early (its cluster-scoped objects have fixed
/// names; a leftover would keep the next run from installing).
struct Release(Option<Command>);
impl Drop for Release {
    fn drop(&mut self) {
        if let Some(mut uninstall) = self.0.take() {
            let _ = uninstall.output();
        }
    }
}

/// The serial of the certificate served on 127.0.0.1:`port` (`serial=...` as openssl prints it).
fn served_serial(port: u16) -> Result<String> {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!(
        "openssl s_client -connect 127.0.0.1:{port} </dev/null 2>/dev/null | openssl x509 -noout -serial"
    ));
    run(cmd, "openssl s_client | openssl x509 -serial")
}

#[derive(Default)]
struct Tally {
    admitted: u64,
    denied: u64,
    failures: Vec<String>,
    seconds: f64,
}

impl Tally {
    fn total(&self) -> u64 {
        self.admitted + self.denied + self.failures.len() as u64
    }
}

/// Four workers creating Backups with dryRun through the API server as fast as it answers;
/// every odd one is of a missing snapshot and must be denied by the guard, every even one
/// admitted. Anything else is a failure.
struct Stream {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tally: std::sync::Arc<std::sync::Mutex<Tally>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    started: std::time::Instant,
}

impl Stream {
    fn start(client: kube::Client, ns: &str) -> Self {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tally = std::sync::Arc::new(std::sync::Mutex::new(Tally::default()));
        let workers = (0..4)
            .map(|worker| {
                let (stop, tally) = (stop.clone(), tally.clone());
                let api: kube::Api<longhorn_types::Backup> =
                    kube::Api::namespaced(client.clone(), ns);
                let ns = ns.to_owned();
                tokio::spawn(async move {
                    let dry_run = kube::api::PostParams {
                        dry_run: true,
                        ..Default::default()
                    };
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let missing = i % 2 == 1;
                        let snapshot = if missing { "snap-gone" } else { "snap-ok" };
                        let name = format!("stream-{worker}-{i}");
                        let backup: longhorn_types::Backup = serde_json::from_value(
                            shapes::backup(&ns, &name, "vol-1", snapshot, None),
                        )
                        .unwrap();
                        let outcome = api.create(&dry_run, &backup).await;
                        let mut tally = tally.lock().unwrap();
                        match (missing, outcome) {
                            (false, Ok(_)) => tally.admitted += 1,
                            (true, Err(kube::Error::Api(e)))
                                if e.message.contains("longhorn-guard denied")
                                    && e.message.contains("snap-gone") =>
                            {
                                tally.denied += 1
                            }
                            (_, other) => tally
                                .failures
                                .push(format!("{name} ({snapshot}): {other:?}")),
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            tally,
            workers,
            started: std::time::Instant::now(),
        }
    }

    /// Waits until `n` more reviews have been answered (a fact, not a time).
    async fn wait_for_more(&self, n: u64) -> Result<()> {
        let target = self.tally.lock().unwrap().total() + n;
        wait_for(
            Duration::from_secs(60),
            &format!("{n} more reviews"),
            || {
                let done = self.tally.lock().unwrap().total() >= target;
                async move { Ok(done) }
            },
        )
        .await
    }

    async fn stop(self) -> Tally {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in self.workers {
            let _ = w.await;
        }
        let mut tally = std::mem::take(&mut *self.tally.lock().unwrap());
        tally.seconds = self.started.elapsed().as_secs_f64();
        tally
    }
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn helm_install_then_the_installed_pieces_guard_backups() -> Result<()> {
    let cluster = TestCluster::connect().await?;
    let guard = cluster.namespace("helm-guard").await?;
    let longhorn = cluster.namespace("helm-longhorn").await?;
    let work = std::env::temp_dir().join(format!("lhg-helm-install-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&work)?;
    let helm = || client(&cluster, "LHG_HELM", &work);
    let kubectl = || client(&cluster, "LHG_KUBECTL", &work);

    // Kubernetes 1.20 does not label namespaces with their name; the registration selects on
    // it (NOTES.txt tells 1.20 users to do this).
    let mut label = kubectl();
    label
        .args(["label", "namespace", &longhorn])
        .arg(format!("kubernetes.io/metadata.name={longhorn}"));
    run(label, "kubectl label namespace")?;
    common::seed_volume_snapshot_and_target(&cluster, &longhorn).await?;

    // 1. helm install, and every rendered object is in the cluster.
    let mut install = helm();
    install
        .args(["install", "lhg"])
        .arg(chart())
        .args(["--namespace", &guard])
        .args(["--set", &format!("longhornNamespace={longhorn}")])
        // Fail: a review that does not reach the guard is an error the stream below counts
        // (with Ignore it would pass unseen). No throttle: the stream's Backups all get the
        // snapshot check's verdict, whatever their rate.
        .args(["--set", "webhook.failurePolicy=Fail"])
        .args(["--set", "policy.throttle.enabled=false"]);
    run(install, "helm install")?;
    let mut release = Release(Some({
        let mut uninstall = helm();
        uninstall.args(["uninstall", "lhg", "--namespace", &guard]);
        uninstall
    }));
    let mut manifest = helm();
    manifest.args(["get", "manifest", "lhg", "--namespace", &guard]);
    let manifest_file = work.join("manifest.yaml");
    std::fs::write(&manifest_file, run(manifest, "helm get manifest")?)?;
    let mut installed = kubectl();
    installed
        .args(["get", "-o", "name", "-f"])
        .arg(&manifest_file);
    let rendered = run(installed, "kubectl get every object of the release")?
        .lines()
        .count();
    ensure!(rendered >= 20, "only {rendered} objects installed");
    let cron = get(
        &kubectl,
        &["-n", &guard, "cronjob", "longhorn-guard-certs-rotate"],
    )?;
    assert_eq!(
        cron["apiVersion"], "batch/v1beta1",
        "1.20 gets the v1beta1 CronJob"
    );

    // 2. The bootstrap, as the Job runs it.
    let job = get(
        &kubectl,
        &["-n", &guard, "job", "longhorn-guard-certs-bootstrap"],
    )?;
    let job_args: Vec<String> =
        serde_json::from_value(job["spec"]["template"]["spec"]["containers"][0]["args"].clone())?;
    assert_eq!(
        job_args,
        ["certs", "bootstrap", &format!("--namespace={guard}")]
    );
    let mut bootstrap = cluster.command(BIN);
    bootstrap
        .args(&job_args)
        .args(["--webhook-san", "127.0.0.1"]);
    run(bootstrap, "the certs Job's command")?;
    let vwc = get(
        &kubectl,
        &["validatingwebhookconfiguration", "longhorn-guard"],
    )?;
    let bundle = vwc["webhooks"][0]["clientConfig"]["caBundle"]
        .as_str()
        .context("the bootstrap did not patch the installed registration's caBundle")?
        .to_owned();
    let serving = get(
        &kubectl,
        &["-n", &guard, "secret", "longhorn-guard-webhook-tls"],
    )?;
    assert_eq!(
        json!(bundle),
        serving["data"]["ca.crt"],
        "caBundle = the serving Secret's CA"
    );

    // 3. The webhook as the Deployment runs it.
    let deploy = get(
        &kubectl,
        &["-n", &guard, "deployment", "longhorn-guard-webhook"],
    )?;
    let pod = &deploy["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let volumes: BTreeMap<&str, &Value> = pod["volumes"]
        .as_array()
        .context("volumes")?
        .iter()
        .map(|v| (v["name"].as_str().unwrap_or_default(), v))
        .collect();
    let mut mounts = Vec::new();
    for m in container["volumeMounts"]
        .as_array()
        .context("volumeMounts")?
    {
        let name = m["name"].as_str().context("mount name")?;
        let dir = work.join("volumes").join(name);
        project(
            &kubectl,
            &guard,
            volumes.get(name).context("mounted volume")?,
            &dir,
        )?;
        mounts.push((
            m["mountPath"].as_str().context("mountPath")?.to_owned(),
            dir,
        ));
    }
    let (listen, metrics) = (free_port()?, free_port()?);
    let mut args = Vec::new();
    for arg in container["args"].as_array().context("args")? {
        let mut arg = arg.as_str().context("arg")?.to_owned();
        for (path, dir) in &mounts {
            arg = arg.replace(&format!("={path}/"), &format!("={}/", dir.display()));
        }
        arg = arg
            .replace("0.0.0.0:8443", &format!("127.0.0.1:{listen}"))
            .replace("0.0.0.0:9090", &format!("127.0.0.1:{metrics}"));
        ensure!(
            !arg.contains("0.0.0.0"),
            "a listener this test does not map: {arg}"
        );
        args.push(arg);
    }
    let mut command = cluster.command(BIN);
    command.args(&args);
    for e in container["env"].as_array().context("env")? {
        command.env(
            e["name"].as_str().context("env name")?,
            e["value"].as_str().context("env value")?,
        );
    }
    let log = std::fs::File::create(work.join("webhook.log"))?;
    let mut webhook = Killed(command.stdout(log.try_clone()?).stderr(log).spawn()?);
    common::wait_until_ready(metrics)
        .await
        .with_context(|| std::fs::read_to_string(work.join("webhook.log")).unwrap_or_default())?;

    // No Service network here: the registration calls the webhook by URL, same caBundle.
    let mut installed_client_config = vwc["webhooks"][0]["clientConfig"].clone();
    let mut by_url =
        json!({"url": format!("https://127.0.0.1:{listen}/validate/backups"), "caBundle": bundle});
    set_client_config(&kubectl, &by_url)?;

    // 4. kubectl 1.33 creates Backups through the API server, which calls the guard.
    let backup_file = |name: &str, snapshot: &str| -> Result<PathBuf> {
        let path = work.join(format!("{name}.json"));
        std::fs::write(
            &path,
            shapes::backup(&longhorn, name, "vol-1", snapshot, None).to_string(),
        )?;
        Ok(path)
    };
    let gone = backup_file("of-a-missing-snapshot", "snap-gone")?;
    let mut denial = String::new();
    wait_for(
        Duration::from_secs(20),
        "kubectl create to be denied by the guard",
        || {
            let out = kubectl().arg("create").arg("-f").arg(&gone).output();
            let seen = out
                .as_ref()
                .map(|o| String::from_utf8_lossy(&o.stderr).into_owned());
            if let Ok(text) = &seen {
                denial.clone_from(text);
            }
            async move {
                let out = out?;
                ensure!(
                    !out.status.success(),
                    "a Backup of a missing snapshot was created"
                );
                Ok(String::from_utf8_lossy(&out.stderr).contains("longhorn-guard denied"))
            }
        },
    )
    .await?;
    assert!(
        denial.contains("snap-gone"),
        "the user sees which snapshot is missing: {denial}"
    );
    let ok = backup_file("of-an-existing-snapshot", "snap-ok")?;
    let mut create = kubectl();
    create.arg("create").arg("-f").arg(&ok);
    run(create, "kubectl create a Backup of an existing snapshot")?;

    // 5. Rotation under load: a stream of Backup CREATE dry runs through the API server (half of
    //    missing snapshots) while the CronJob's command rotates: forced leaf renewal, then a CA
    //    roll in two phases, each followed by the volume update kubelet would make.
    let cron = get(
        &kubectl,
        &["-n", &guard, "cronjob", "longhorn-guard-certs-rotate"],
    )?;
    let rotate_args: Vec<String> = serde_json::from_value(
        cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"].clone(),
    )?;
    assert_eq!(
        rotate_args,
        ["certs", "rotate", &format!("--namespace={guard}")]
    );
    let rotate = |extra: &[&str]| -> Result<()> {
        let mut cmd = cluster.command(BIN);
        // The registration is called by url here, so name its entry (and keep the 127.0.0.1 SAN).
        cmd.args(&rotate_args)
            .args([
                "--webhook-name",
                "backups.longhorn-guard.io",
                "--webhook-san",
                "127.0.0.1",
            ])
            .args(extra);
        run(cmd, &format!("the certs CronJob's command {extra:?}")).map(drop)
    };
    let roll_out = |volume: &str| -> Result<()> {
        project(
            &kubectl,
            &guard,
            volumes.get(volume).context("volume")?,
            &work.join("volumes").join(volume),
        )
    };
    let stream = Stream::start(cluster.client(), &longhorn);
    stream.wait_for_more(100).await?;
    let before = served_serial(listen)?;
    rotate(&["--force"])?;
    roll_out("serving-cert")?;
    roll_out("client-cert")?;
    stream.wait_for_more(100).await?;
    rotate(&["--ca-renew-before", "7300d"])?;
    roll_out("serving-cert")?;
    roll_out("client-cert")?;
    stream.wait_for_more(100).await?;
    rotate(&["--ca-renew-before", "7300d", "--ca-overlap", "0s"])?;
    roll_out("serving-cert")?;
    roll_out("client-cert")?;
    let renewed = get(
        &kubectl,
        &["-n", &guard, "secret", "longhorn-guard-webhook-tls"],
    )?;
    let leaf = work.join("renewed.crt");
    std::fs::write(
        &leaf,
        base64_decode(renewed["data"]["tls.crt"].as_str().context("tls.crt")?)?,
    )?;
    let mut serial = Command::new("openssl");
    serial.args(["x509", "-noout", "-serial", "-in"]).arg(&leaf);
    let renewed_serial = run(serial, "openssl x509 -serial")?;
    wait_for(
        Duration::from_secs(120),
        "the webhook to serve the renewed leaf",
        || {
            let served = served_serial(listen);
            let renewed_serial = renewed_serial.clone();
            async move { Ok(served? == renewed_serial) }
        },
    )
    .await?;
    stream.wait_for_more(100).await?;
    let tally = stream.stop().await;
    eprintln!(
        "rotation under load: {} reviews in {:.1} s = {:.0}/s ({} admitted, {} denied for the \
         missing snapshot, {} failed); served serial {} -> {}",
        tally.total(),
        tally.seconds,
        tally.total() as f64 / tally.seconds,
        tally.admitted,
        tally.denied,
        tally.failures.len(),
        before.trim(),
        renewed_serial.trim()
    );
    ensure!(
        tally.failures.is_empty(),
        "{} reviews failed during the rotation, e.g. {:?}",
        tally.failures.len(),
        &tally.failures[..tally.failures.len().min(5)]
    );
    ensure!(before != renewed_serial, "the leaf was not renewed");
    ensure!(
        webhook.0.try_wait()?.is_none(),
        "the webhook restarted during the rotation"
    );
    let rotated = get(
        &kubectl,
        &["validatingwebhookconfiguration", "longhorn-guard"],
    )?;
    let live_bundle = rotated["webhooks"][0]["clientConfig"]["caBundle"].clone();
    ensure!(
        live_bundle != json!(bundle),
        "the CA roll did not reach the caBundle"
    );
    installed_client_config["caBundle"] = live_bundle.clone();
    by_url["caBundle"] = live_bundle.clone();

    // 6. helm upgrade with a changed policy value: the new ConfigMap reaches the mounted file
    //    (projected as kubelet does, atomically) and the running webhook takes it up without a
    //    restart: the same process now only warns about a missing snapshot.
    //    The clientConfig goes back to the installed one first (helm would merge its service
    //    into our url), and the bootstrap's caBundle must survive the upgrade.
    set_client_config(&kubectl, &installed_client_config)?;
    let mut upgrade = helm();
    upgrade.args(["upgrade", "lhg"]).arg(chart()).args([
        "--namespace",
        &guard,
        "--reuse-values",
        "--set",
        "policy.mode=warn-only",
    ]);
    run(upgrade, "helm upgrade --set policy.mode=warn-only")?;
    let upgraded = get(
        &kubectl,
        &["validatingwebhookconfiguration", "longhorn-guard"],
    )?;
    assert_eq!(
        upgraded["webhooks"][0]["clientConfig"]["caBundle"].as_str(),
        live_bundle.as_str(),
        "helm upgrade dropped the caBundle the certs rotation wrote"
    );
    set_client_config(&kubectl, &by_url)?;
    project(
        &kubectl,
        &guard,
        volumes.get("policy").context("policy volume")?,
        &work.join("volumes/policy"),
    )?;
    let warned = backup_file("warned-about", "snap-gone-too")?;
    wait_for(
        Duration::from_secs(30),
        "the upgraded policy (warn-only) to be in force",
        || {
            let out = kubectl().arg("create").arg("-f").arg(&warned).output();
            async move {
                let out = out?;
                let stderr = String::from_utf8_lossy(&out.stderr);
                if out.status.success() {
                    ensure!(
                        stderr.contains("snap-gone-too"),
                        "admitted without the guard's warning: {stderr}"
                    );
                    return Ok(true);
                }
                ensure!(
                    stderr.contains("longhorn-guard denied"),
                    "not the guard's answer: {stderr}"
                );
                Ok(false)
            }
        },
    )
    .await?;
    ensure!(
        webhook.0.try_wait()?.is_none(),
        "the webhook restarted or exited on the policy change"
    );

    // 7. helm uninstall removes the registration.
    run(release.0.take().context("release guard")?, "helm uninstall")?;
    let mut left = kubectl();
    left.args([
        "get",
        "validatingwebhookconfiguration",
        "longhorn-guard",
        "--ignore-not-found",
        "-o",
        "name",
    ]);
    assert_eq!(run(left, "kubectl get the registration")?.trim(), "");
    std::fs::remove_dir_all(&work).ok();
    Ok(())
}
