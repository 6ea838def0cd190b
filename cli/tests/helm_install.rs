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
//!    the agent runs the same way from the installed DaemonSet (its own executable, node
//!    `node-1`), and answers a gRPC health check over mTLS made with the webhook's client
//!    certificate, CA and agent server name from the Deployment's args (refusing a client
//!    without a certificate);
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
//! 7. `helm uninstall` removes the registration, before the webhook's Deployment and Service
//!    (the etcd revisions of their DELETED watch events).
//!
//! The one change to an installed object: the registration's `clientConfig.service` becomes
//! `url: https://127.0.0.1:PORT/validate/backups` (caBundle kept), because the local control
//! plane has no Service network; hence the extra `127.0.0.1` SAN in step 2.
//!
//! Needs `LHG_TEST_KUBECONFIG`, `LHG_TEST_HELM` and `LHG_TEST_KUBECTL` (scripts/test.sh sets all three).
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

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/helm/longhorn-guard")
}

/// helm or kubectl against the test cluster only (its kubeconfig, a private helm home, and a
/// private HOME: kubectl's discovery cache goes to `$HOME/.kube/cache`, and with no HOME it
/// lands in the working directory, the crate's source tree).
fn client(cluster: &TestCluster, program: &Path, home: &Path) -> Command {
    let mut cmd = cluster.command(program);
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

/// A container of an installed pod template, run here as kubelet would run it: its Secret
/// and ConfigMap volumes projected into `volumes_dir/<volume>` (an optional Secret that does
/// not exist becomes an empty directory, as kubelet mounts it), the mount paths in its args
/// pointed there, `$(VAR)` in its args expanded from its env (downward-API fields: node
/// `node-1`, pod IP `127.0.0.1`), every `0.0.0.0:PORT` listener moved by `listeners`, and its
/// command (when it names one) resolved next to the guard's binary.
struct Container {
    child: Killed,
    args: Vec<String>,
    log: PathBuf,
    volumes: BTreeMap<String, Value>,
}

impl Container {
    fn run(
        cluster: &TestCluster,
        kubectl: &impl Fn() -> Command,
        ns: &str,
        pod: &Value,
        volumes_dir: &Path,
        listeners: &[(&str, String)],
    ) -> Result<Self> {
        let container = &pod["containers"][0];
        let volumes: BTreeMap<String, Value> = pod["volumes"]
            .as_array()
            .context("volumes")?
            .iter()
            .map(|v| (v["name"].as_str().unwrap_or_default().to_owned(), v.clone()))
            .collect();
        let mut mounts = Vec::new();
        for m in container["volumeMounts"]
            .as_array()
            .context("volumeMounts")?
        {
            let name = m["name"].as_str().context("mount name")?;
            let dir = volumes_dir.join(name);
            let volume = volumes.get(name).context("mounted volume")?;
            if volume["secret"]["optional"] == json!(true) && !secret_exists(kubectl, ns, volume)? {
                std::fs::create_dir_all(&dir)?;
            } else {
                project(kubectl, ns, volume, &dir)?;
            }
            let path = m["mountPath"].as_str().context("mountPath")?;
            mounts.push((path.trim_end_matches('/').to_owned(), dir));
        }
        let mut env = Vec::new();
        for e in container["env"].as_array().context("env")? {
            let name = e["name"].as_str().context("env name")?.to_owned();
            let value = match (
                e["value"].as_str(),
                e["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
            ) {
                (Some(v), _) => v.to_owned(),
                (None, Some("spec.nodeName")) => "node-1".to_owned(),
                (None, Some("status.podIP")) => "127.0.0.1".to_owned(),
                (None, Some("metadata.name")) => "installed-pod".to_owned(),
                _ => bail!("env {name}: a source this test does not map: {e}"),
            };
            env.push((name, value));
        }
        let mut args = Vec::new();
        for arg in container["args"].as_array().context("args")? {
            let mut arg = arg.as_str().context("arg")?.to_owned();
            for (path, dir) in &mounts {
                arg = arg.replace(&format!("={path}/"), &format!("={}/", dir.display()));
            }
            for (name, value) in &env {
                arg = arg.replace(&format!("$({name})"), value);
            }
            for (from, to) in listeners {
                arg = arg.replace(from, to);
            }
            ensure!(
                !arg.contains("0.0.0.0") && !arg.contains("$("),
                "an arg this test does not map: {arg}"
            );
            args.push(arg);
        }
        let program = match container["command"][0].as_str() {
            None => PathBuf::from(BIN),
            Some(command) => {
                let name = Path::new(command).file_name().context("command")?;
                let sibling = Path::new(BIN).with_file_name(name);
                ensure!(
                    sibling.is_file(),
                    "{} is not built (cargo build -p longhorn-guard-agent; scripts/test.sh builds every binary)",
                    sibling.display()
                );
                sibling
            }
        };
        let mut command = cluster.command(&program);
        command.args(&args).envs(env);
        std::fs::create_dir_all(volumes_dir)?;
        let log = volumes_dir.join("container.log");
        let file = std::fs::File::create(&log)?;
        let child = Killed(command.stdout(file.try_clone()?).stderr(file).spawn()?);
        Ok(Self {
            child,
            args,
            log,
            volumes,
        })
    }
}

/// Whether the Secret of a secret volume exists.
fn secret_exists(kubectl: &impl Fn() -> Command, ns: &str, volume: &Value) -> Result<bool> {
    let name = volume["secret"]["secretName"]
        .as_str()
        .context("secretName")?;
    let mut cmd = kubectl();
    cmd.args([
        "get",
        "secret",
        name,
        "-n",
        ns,
        "--ignore-not-found",
        "-o",
        "name",
    ]);
    Ok(!run(cmd, "kubectl get secret")?.trim().is_empty())
}

/// Watches for the deletion of the registration and of the objects it relies on (the webhook's
/// Deployment and Service), recording the revision of each DELETED event.
struct Deletions {
    watches: Vec<(&'static str, tokio::task::JoinHandle<Result<u64>>)>,
}

impl Deletions {
    async fn watch(client: kube::Client, ns: &str) -> Result<Self> {
        use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
        use k8s_openapi::api::apps::v1::Deployment;
        use k8s_openapi::api::core::v1::Service;
        let watches = vec![
            (
                "registration",
                deleted(
                    kube::Api::<ValidatingWebhookConfiguration>::all(client.clone()),
                    "longhorn-guard",
                )
                .await?,
            ),
            (
                "Deployment",
                deleted(
                    kube::Api::<Deployment>::namespaced(client.clone(), ns),
                    "longhorn-guard-webhook",
                )
                .await?,
            ),
            (
                "Service",
                deleted(
                    kube::Api::<Service>::namespaced(client, ns),
                    "longhorn-guard-webhook",
                )
                .await?,
            ),
        ];
        Ok(Self { watches })
    }

    async fn collect(self) -> Result<BTreeMap<&'static str, u64>> {
        let mut order = BTreeMap::new();
        for (what, watch) in self.watches {
            let revision = tokio::time::timeout(Duration::from_secs(60), watch)
                .await
                .with_context(|| format!("no DELETED event for the {what} within 60 s"))??;
            order.insert(what, revision?);
        }
        Ok(order)
    }
}

/// A task that resolves to the revision at which the object `name` is deleted (watching from
/// its current resourceVersion, so a deletion after this call is not missed).
async fn deleted<K>(api: kube::Api<K>, name: &str) -> Result<tokio::task::JoinHandle<Result<u64>>>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    use futures::StreamExt;
    let current = api.get(name).await?;
    let version = current
        .meta()
        .resource_version
        .clone()
        .context("resourceVersion")?;
    let params = kube::api::WatchParams::default().fields(&format!("metadata.name={name}"));
    let name = name.to_owned();
    Ok(tokio::spawn(async move {
        let mut stream = api.watch(&params, &version).await?.boxed();
        while let Some(event) = stream.next().await {
            if let kube::api::WatchEvent::Deleted(obj) = event? {
                let revision = obj.meta().resource_version.clone().unwrap_or_default();
                return revision
                    .parse()
                    .with_context(|| format!("{name}: resourceVersion {revision}"));
            }
        }
        bail!("the watch of {name} ended before its deletion")
    }))
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn helm_install_then_the_installed_pieces_guard_backups() -> Result<()> {
    let cluster = TestCluster::connect().await?;
    let guard = cluster.namespace("helm-guard").await?;
    let longhorn = cluster.namespace("helm-longhorn").await?;
    let work = std::env::temp_dir().join(format!("lhg-helm-install-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&work)?;
    let (helm_binary, kubectl_binary) = (common::helm(), common::kubectl());
    let helm = || client(&cluster, &helm_binary, &work);
    let kubectl = || client(&cluster, &kubectl_binary, &work);

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
    let (listen, metrics) = (free_port()?, free_port()?);
    let webhook_pod = Container::run(
        &cluster,
        &kubectl,
        &guard,
        &deploy["spec"]["template"]["spec"],
        &work.join("volumes"),
        &[
            ("0.0.0.0:8443", format!("127.0.0.1:{listen}")),
            ("0.0.0.0:9090", format!("127.0.0.1:{metrics}")),
        ],
    )?;
    let volumes = &webhook_pod.volumes;
    let mut webhook = webhook_pod.child;
    common::wait_until_ready(metrics)
        .await
        .with_context(|| std::fs::read_to_string(&webhook_pod.log).unwrap_or_default())?;

    // 3b. The agent as the DaemonSet runs it (the agent-only executable its command names,
    //     on node "node-1"), then called over mTLS exactly as the installed webhook would call
    //     it: the webhook's client certificate, CA and agent server name from the Deployment's
    //     args, all issued by the bootstrap. A client without a certificate is refused.
    let daemonset = get(
        &kubectl,
        &["-n", &guard, "daemonset", "longhorn-guard-agent"],
    )?;
    let (agent_grpc, agent_metrics) = (free_port()?, free_port()?);
    let agent = Container::run(
        &cluster,
        &kubectl,
        &guard,
        &daemonset["spec"]["template"]["spec"],
        &work.join("agent-volumes"),
        &[
            ("0.0.0.0:9443", format!("127.0.0.1:{agent_grpc}")),
            ("0.0.0.0:9091", format!("127.0.0.1:{agent_metrics}")),
        ],
    )?;
    common::wait_until_ready(agent_metrics)
        .await
        .with_context(|| std::fs::read_to_string(&agent.log).unwrap_or_default())?;
    let flag = |name: &str| -> Result<String> {
        let prefix = format!("--{name}=");
        webhook_pod
            .args
            .iter()
            .find_map(|a| a.strip_prefix(&prefix).map(str::to_owned))
            .with_context(|| format!("the installed webhook has no {prefix}"))
    };
    let agent_url = format!("https://127.0.0.1:{agent_grpc}");
    let tls = tonic::transport::ClientTlsConfig::new()
        .domain_name(flag("agent-server-name")?)
        .ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(
            flag("agent-ca")?,
        )?));
    let identity = tonic::transport::Identity::from_pem(
        std::fs::read(flag("agent-client-cert")?)?,
        std::fs::read(flag("agent-client-key")?)?,
    );
    let channel = tonic::transport::Channel::from_shared(agent_url.clone())?
        .tls_config(tls.clone().identity(identity))?
        .connect()
        .await
        .context("the webhook's client certificate to the installed agent")?;
    let serving = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .context("health check through the webhook's mTLS identity")?
        .into_inner()
        .status;
    assert_eq!(
        serving,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let anonymous = async {
        let channel = tonic::transport::Channel::from_shared(agent_url)?
            .tls_config(tls)?
            .connect()
            .await?;
        tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await?;
        anyhow::Ok(())
    };
    ensure!(
        anonymous.await.is_err(),
        "the installed agent served a client without a certificate"
    );

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

    // 7. helm uninstall removes the registration, and removes it first: were the webhook's
    //    Deployment or Service gone while the registration (failurePolicy Fail) still named
    //    them, every Backup CREATE in between would fail. Order = the etcd revisions of the
    //    DELETED watch events (one global sequence).
    let deletions = Deletions::watch(cluster.client(), &guard).await?;
    run(release.0.take().context("release guard")?, "helm uninstall")?;
    let order = deletions.collect().await?;
    let registration = order["registration"];
    for (what, revision) in &order {
        ensure!(
            *what == "registration" || registration < *revision,
            "helm uninstall deleted the webhook's {what} (revision {revision}) before its registration (revision {registration}): {order:?}"
        );
    }
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
