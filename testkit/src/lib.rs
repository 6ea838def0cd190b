//! Test support for longhorn-guard's integration and end-to-end tests.
//!
//! The test command (`scripts/test.sh`) owns ONE local control plane (a real kube-apiserver
//! and etcd on loopback) for the whole run and exports `LHG_TEST_KUBECONFIG`. Tests connect
//! to it through [`TestCluster::connect`], which installs the Longhorn CRDs once, and each
//! test works in its own labelled namespace from [`TestCluster::namespace`].
//!
//! Tests share that one cluster; only a test that must install cluster-scoped objects that
//! would clash with the others (Longhorn CRDs of another release) starts its own through
//! [`ControlPlane`], which stops it on drop. This crate never reads `KUBECONFIG`, so a
//! developer's real cluster cannot be touched by a test.

#![allow(clippy::unwrap_used)]

pub mod admission;
pub mod control_plane;
pub mod crd_cases;
pub use control_plane::ControlPlane;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, Resource};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// Environment variable naming the kubeconfig of the run's local control plane.
pub const KUBECONFIG_ENV: &str = "LHG_TEST_KUBECONFIG";
/// Environment variable naming the kubeconfig of the second control plane, which holds
/// Longhorn's own v1.7.2 CRDs (set by the test command when `../shared/longhorn` exists).
pub const LONGHORN_KUBECONFIG_ENV: &str = "LHG_TEST_LONGHORN_KUBECONFIG";
/// Label every test namespace carries, value = the namespace name. Webhook configurations
/// registered by a test select on it so parallel tests never judge each other's objects.
pub const TEST_NAMESPACE_LABEL: &str = "longhorn-guard.io/test";

/// A connection to the run's local control plane.
#[derive(Clone)]
pub struct TestCluster {
    client: Client,
    config: Config,
    kubeconfig: PathBuf,
}

impl TestCluster {
    /// Connects to the control plane named by `LHG_TEST_KUBECONFIG` and makes sure the
    /// longhorn-guard Longhorn CRDs are installed and Established.
    pub async fn connect() -> Result<Self> {
        let cluster = Self::connect_to(KUBECONFIG_ENV).await?;
        cluster.ensure_crds(longhorn_types::crds::all()).await?;
        Ok(cluster)
    }

    /// Connects to the control plane named by the kubeconfig in environment variable `env`,
    /// installing nothing.
    pub async fn connect_to(env: &str) -> Result<Self> {
        let path = std::env::var_os(env).map(PathBuf::from).ok_or_else(|| {
            anyhow!(
                "no local control plane: {env} is not set. Integration tests run against the \
                 kube-apiserver that `scripts/test.sh` starts for the whole run; run them with \
                 `bash scripts/test.sh` (or start one with control-plane/up.sh and export {env})"
            )
        })?;
        Self::connect_kubeconfig(&path)
            .await
            .with_context(|| format!("{env}={}", path.display()))
    }

    /// Connects to the control plane of the kubeconfig at `path` (a [`ControlPlane`] of the
    /// test's own), installing nothing.
    pub async fn connect_kubeconfig(path: &Path) -> Result<Self> {
        let path = path.to_path_buf();
        let kubeconfig =
            Kubeconfig::read_from(&path).with_context(|| format!("reading {}", path.display()))?;
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .with_context(|| format!("loading {}", path.display()))?;
        let client = Client::try_from(config.clone()).context("building a kube client")?;
        Ok(Self {
            client,
            config,
            kubeconfig: path,
        })
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The kubeconfig file of this control plane (for processes a test starts).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// A command for one of the guard's executables, run against this control plane only:
    /// an empty environment but `PATH`, `KUBECONFIG` (never a developer's own cluster or
    /// settings) and a `HOME` of the tests' own (kubectl writes its discovery cache under
    /// `$HOME/.kube`, and without a HOME into the working directory: the source tree), stdin
    /// closed.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
        let mut cmd = std::process::Command::new(program);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", std::env::temp_dir().join("lhg-test-home"))
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(std::process::Stdio::null());
        cmd
    }

    /// The API server's URL, e.g. `https://127.0.0.1:16443`.
    pub fn api_url(&self) -> String {
        self.config.cluster_url.to_string()
    }

    /// A client of this control plane that connects to `url` instead of the API server's own
    /// address, e.g. a loopback proxy in front of it (the server certificate is still checked:
    /// it names 127.0.0.1, whatever the port).
    pub fn client_via(&self, url: &str) -> Result<Client> {
        let mut config = self.config.clone();
        config.cluster_url = url.parse().with_context(|| format!("not a URL: {url}"))?;
        Client::try_from(config).context("building a kube client for another address")
    }

    /// A client that impersonates `user` with `groups` (the admin may impersonate anyone).
    pub fn client_as(&self, user: &str, groups: &[&str]) -> Result<Client> {
        let mut config = self.config.clone();
        config.auth_info.impersonate = Some(user.to_string());
        config.auth_info.impersonate_groups = Some(groups.iter().map(|g| g.to_string()).collect());
        Client::try_from(config).context("building an impersonating kube client")
    }

    /// A client that does not retry: kube-rs retries 429/503/504 by default (up to 15 times
    /// with exponential backoff), which turns every throttle denial (429) into a long silent
    /// wait. Impersonates `as_user` (name, groups) when given.
    pub fn client_without_retry(&self, as_user: Option<(&str, &[&str])>) -> Result<Client> {
        let mut config = self.config.clone();
        config.default_retry = false;
        if let Some((user, groups)) = as_user {
            config.auth_info.impersonate = Some(user.to_string());
            config.auth_info.impersonate_groups =
                Some(groups.iter().map(|g| g.to_string()).collect());
        }
        Client::try_from(config).context("building a kube client without retries")
    }

    /// Creates a fresh namespace `<prefix>-<random>` labelled [`TEST_NAMESPACE_LABEL`]=name.
    /// Namespaces are never deleted: the 1.20 control plane has no namespace controller, and
    /// the whole cluster is thrown away after the run.
    /// Creates or replaces the ConfigMap `name` in `ns` with one `key` holding `text`
    /// (server-side apply).
    pub async fn put_config_map(&self, ns: &str, name: &str, key: &str, text: &str) -> Result<()> {
        let cm: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": ns},
            "data": {key: text},
        }))?;
        Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(self.client.clone(), ns)
            .patch(
                name,
                &kube::api::PatchParams::apply("longhorn-guard-tests").force(),
                &kube::api::Patch::Apply(&cm),
            )
            .await
            .with_context(|| format!("applying ConfigMap {ns}/{name}"))?;
        Ok(())
    }

    pub async fn namespace(&self, prefix: &str) -> Result<String> {
        let suffix = format!("{:08x}", rand::random::<u32>());
        let mut prefix: String = prefix
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        prefix.truncate(63 - suffix.len() - 1);
        let name = format!("{}-{suffix}", prefix.trim_matches('-'));
        let ns: Namespace = serde_json::from_value(json!({
            "metadata": { "name": name, "labels": { TEST_NAMESPACE_LABEL: name } }
        }))?;
        Api::<Namespace>::all(self.client())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating test namespace {name}"))?;
        Ok(name)
    }

    /// Creates `obj` (a JSON object such as `longhorn_types::shapes::backup(..)`) exactly as
    /// given, `""` and `null` fields included, and reads it back as `K`.
    pub async fn create<K>(&self, ns: &str, obj: Value) -> Result<K>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned + Clone + std::fmt::Debug,
    {
        let raw = self.create_raw::<K>(ns, obj).await?;
        from_dynamic(raw)
    }

    /// Creates `obj`, then writes `status` through the status subresource (a PUT, so `null`
    /// and `""` fields are stored as given), and reads the result back as `K`.
    pub async fn create_with_status<K>(&self, ns: &str, obj: Value, status: Value) -> Result<K>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned + Clone + std::fmt::Debug,
    {
        let created = self.create_raw::<K>(ns, obj).await?;
        let raw = self.put_status::<K>(ns, created, status).await?;
        from_dynamic(raw)
    }

    /// Replaces the status of the object `name` (read first, so the update is conditional on
    /// its resourceVersion).
    pub async fn set_status<K>(&self, ns: &str, name: &str, status: Value) -> Result<K>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned + Clone + std::fmt::Debug,
    {
        let current = self.dynamic_api::<K>(ns).get(name).await?;
        let raw = self.put_status::<K>(ns, current, status).await?;
        from_dynamic(raw)
    }

    /// The namespaced dynamic API of kind `K`.
    pub fn dynamic_api<K: Resource<DynamicType = ()>>(&self, ns: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client(), ns, &ApiResource::erase::<K>(&()))
    }

    async fn create_raw<K: Resource<DynamicType = ()>>(
        &self,
        ns: &str,
        mut obj: Value,
    ) -> Result<DynamicObject> {
        obj["metadata"]["namespace"] = json!(ns);
        let what = describe(&obj);
        let dynamic: DynamicObject = serde_json::from_value(obj)?;
        self.dynamic_api::<K>(ns)
            .create(&PostParams::default(), &dynamic)
            .await
            .with_context(|| format!("creating {what} in {ns}"))
    }

    async fn put_status<K: Resource<DynamicType = ()>>(
        &self,
        ns: &str,
        mut current: DynamicObject,
        status: Value,
    ) -> Result<DynamicObject> {
        let name = current
            .metadata
            .name
            .clone()
            .ok_or_else(|| anyhow!("object without a name"))?;
        current.data["status"] = status;
        self.dynamic_api::<K>(ns)
            .replace_status(&name, &PostParams::default(), &current)
            .await
            .with_context(|| format!("writing status of {} {ns}/{name}", K::kind(&())))
    }

    /// Creates a Longhorn object given as JSON (kind from its `kind` field, plural = lowercase
    /// kind + "s" as for every Longhorn kind), then, if `status` is given, writes it through
    /// the status subresource. Returns the stored object as the API server answers it.
    pub async fn create_longhorn_object(
        &self,
        ns: &str,
        mut obj: Value,
        status: Option<Value>,
    ) -> Result<DynamicObject> {
        let kind = obj["kind"]
            .as_str()
            .ok_or_else(|| anyhow!("object without kind: {obj}"))?
            .to_string();
        let ar = longhorn_api_resource(&kind);
        let api: Api<DynamicObject> = Api::namespaced_with(self.client(), ns, &ar);
        obj["metadata"]["namespace"] = json!(ns);
        let what = describe(&obj);
        let dynamic: DynamicObject = serde_json::from_value(obj)?;
        let mut created = api
            .create(&PostParams::default(), &dynamic)
            .await
            .with_context(|| format!("creating {what} in {ns}"))?;
        let Some(status) = status else {
            return Ok(created);
        };
        let name = created.metadata.name.clone().unwrap_or_default();
        created.data["status"] = status;
        api.replace_status(&name, &PostParams::default(), &created)
            .await
            .with_context(|| format!("writing status of {what} in {ns}"))
    }

    /// Creates each CRD that is missing and waits until all are Established.
    pub async fn ensure_crds(&self, crds: Vec<CustomResourceDefinition>) -> Result<()> {
        let api = Api::<CustomResourceDefinition>::all(self.client());
        for crd in &crds {
            let name = crd.metadata.name.clone().unwrap_or_default();
            if api.get_opt(&name).await?.is_none() {
                match api.create(&PostParams::default(), crd).await {
                    Ok(_) => {}
                    // Another test process created it first.
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => return Err(e).with_context(|| format!("creating CRD {name}")),
                }
            }
        }
        for crd in &crds {
            let name = crd.metadata.name.clone().unwrap_or_default();
            wait_for(
                Duration::from_secs(30),
                &format!("CRD {name} Established"),
                || {
                    let api = api.clone();
                    let name = name.clone();
                    async move {
                        let crd = api.get(&name).await?;
                        Ok(crd
                            .status
                            .and_then(|s| s.conditions)
                            .unwrap_or_default()
                            .iter()
                            .any(|c| c.type_ == "Established" && c.status == "True"))
                    }
                },
            )
            .await?;
        }
        Ok(())
    }
}

/// Polls `check` every 50 ms until it returns `Ok(true)`, failing after `timeout` with
/// `what` and the last error in the message.
pub async fn wait_for<F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let start = Instant::now();
    let mut last_err = None;
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_err = Some(e),
        }
        if start.elapsed() > timeout {
            match last_err {
                Some(e) => {
                    bail!("timed out after {timeout:?} waiting for {what}; last error: {e:#}")
                }
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// The `ApiResource` of a Longhorn kind (`longhorn.io/v1beta2`, plural = lowercase kind + "s").
pub fn longhorn_api_resource(kind: &str) -> ApiResource {
    ApiResource {
        group: longhorn_types::GROUP.into(),
        version: longhorn_types::VERSION.into(),
        api_version: longhorn_types::API_VERSION.into(),
        kind: kind.into(),
        plural: format!("{}s", kind.to_ascii_lowercase()),
    }
}

/// One object of every Longhorn kind the guard reads, each with its status, shaped exactly
/// as Longhorn v1.7.2 writes them (`longhorn_types::shapes`). `(object, status)`.
pub fn longhorn_fixture_objects(ns: &str) -> Vec<(Value, Option<Value>)> {
    use longhorn_types::shapes as s;
    vec![
        (
            s::volume(ns, "pvc-1", "node-1"),
            Some(s::volume_status("node-1")),
        ),
        (
            s::snapshot(ns, "snap-a", "pvc-1"),
            Some(s::snapshot_status("node-1", "")),
        ),
        (
            s::engine(ns, "pvc-1", "node-1"),
            Some(s::engine_status(
                "node-1",
                "instance-manager-0123456789abcdef",
                "10.42.1.17",
                10010,
            )),
        ),
        (
            s::instance_manager(ns, "instance-manager-0123456789abcdef", "node-1"),
            Some(s::instance_manager_status("node-1", "10.42.1.5")),
        ),
        (
            s::backup_target(ns, "default", "s3://backupbucket@us-east-1/"),
            Some(s::backup_target_status("node-1", true)),
        ),
        (s::backup_volume(ns, "pvc-1"), None),
        (
            s::backup(
                ns,
                "backup-1a2b3c4d5e6f7a8b",
                "pvc-1",
                "snap-a",
                Some("daily"),
            ),
            Some(s::backup_status("Pending", "node-1", "pvc-1", "snap-a")),
        ),
        (
            s::backup(ns, "backup-new0000000000000", "pvc-1", "", None),
            Some(s::backup_status("", "", "", "")),
        ),
        (s::setting(ns, "backup-target", ""), None),
    ]
}

/// `obj` with `status`, as the typed object a watch delivers.
pub fn typed_with_status<K: DeserializeOwned>(obj: Value, status: Value) -> Result<K> {
    Ok(serde_json::from_value(
        longhorn_types::shapes::with_status(obj, status),
    )?)
}

/// What an index holds for an admissible Backup of `snapshot` in `ns`: Volume `vol-1`
/// attached to node-1, its ready Snapshot `snapshot`, the available BackupTarget `default`
/// (`s3://bk@us-east-1/`), each with its status.
pub fn admissible_backup_objects(
    ns: &str,
    snapshot: &str,
) -> Result<(
    longhorn_types::Volume,
    longhorn_types::Snapshot,
    longhorn_types::BackupTarget,
)> {
    use longhorn_types::shapes as s;
    Ok((
        typed_with_status(s::volume(ns, "vol-1", "node-1"), s::volume_status("node-1"))?,
        typed_with_status(
            s::snapshot(ns, snapshot, "vol-1"),
            s::snapshot_status("node-1", ""),
        )?,
        typed_with_status(
            s::backup_target(ns, "default", "s3://bk@us-east-1/"),
            s::backup_target_status("node-1", true),
        )?,
    ))
}

/// Longhorn's own v1.7.2 CRDs (test data outside the project, never copied into it):
/// `LHG_LONGHORN_CRDS`, else `../shared/longhorn/crds-v1.7.2.yaml` next to the repository.
pub fn longhorn_crds_file() -> PathBuf {
    std::env::var_os("LHG_LONGHORN_CRDS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/longhorn/crds-v1.7.2.yaml")
        })
}

/// Longhorn's CRDs from [`longhorn_crds_file`], with webhook conversion turned off (only
/// v1beta2 is stored, so reading as v1beta2 needs no conversion; the webhook Service does not
/// exist); `None` when the file is absent (a user's clone).
pub fn longhorn_crds() -> Option<Vec<CustomResourceDefinition>> {
    let path = longhorn_crds_file();
    let text = std::fs::read_to_string(&path).ok()?;
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let mut v: Value = serde::Deserialize::deserialize(doc).expect("CRD YAML parses");
        if v.is_null() {
            continue;
        }
        if v["spec"]["conversion"]["strategy"] == "Webhook" {
            v["spec"]["conversion"] = json!({ "strategy": "None" });
        }
        out.push(serde_json::from_value(v).expect("a CustomResourceDefinition"));
    }
    Some(out)
}

/// [`longhorn_crds`] for the tests that need them: those are `#[ignore]`d (a plain test run
/// shows them skipped), `scripts/test.sh` (and so CI) runs them with `--run-ignored only`,
/// and then a missing file is a failure naming it.
pub fn require_longhorn_crds() -> Vec<CustomResourceDefinition> {
    longhorn_crds().unwrap_or_else(|| {
        panic!(
            "Longhorn's CRDs are absent ({}): this test needs Longhorn v1.7.2's crds-v1.7.2.yaml in ../shared/longhorn next to the repository, or LHG_LONGHORN_CRDS naming it",
            longhorn_crds_file().display()
        )
    })
}

fn from_dynamic<K: DeserializeOwned>(obj: DynamicObject) -> Result<K> {
    Ok(serde_json::from_value(serde_json::to_value(obj)?)?)
}

fn describe(obj: &Value) -> String {
    format!(
        "{} {}",
        obj["kind"].as_str().unwrap_or("object"),
        obj["metadata"]["name"]
            .as_str()
            .or(obj["metadata"]["generateName"].as_str())
            .unwrap_or("<unnamed>")
    )
}
