//! [`TestCluster`]: the connection to the run's local control plane, its clients, commands
//! run against it, and the test namespaces in it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::PostParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::json;

use crate::TEST_NAMESPACE_LABEL;
use crate::env::{KUBECONFIG_ENV, test_env};
#[cfg(doc)]
use crate::{ControlPlane, TestEnv};

/// A connection to the run's local control plane.
#[derive(Clone)]
pub struct TestCluster {
    client: Client,
    config: Config,
    kubeconfig: PathBuf,
}

impl TestCluster {
    /// Connects to the control plane named by `LHG_TEST_KUBECONFIG` ([`TestEnv::kubeconfig`]) and makes sure the
    /// longhorn-guard Longhorn CRDs are installed and Established.
    pub async fn connect() -> Result<Self> {
        let cluster = Self::connect_to(KUBECONFIG_ENV).await?;
        cluster.ensure_crds(longhorn_types::crds::all()).await?;
        Ok(cluster)
    }

    /// Connects to the control plane whose kubeconfig the test command exports as `env`
    /// ([`KUBECONFIG_ENV`] or [`crate::LONGHORN_KUBECONFIG_ENV`], read through [`test_env`]),
    /// installing nothing.
    pub async fn connect_to(env: &str) -> Result<Self> {
        let path = test_env().kubeconfig_named(env)?;
        Self::connect_kubeconfig(path)
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

    /// Creates a fresh namespace `<prefix>-<random>` labelled [`TEST_NAMESPACE_LABEL`]=name.
    /// Namespaces are never deleted: the 1.20 control plane has no namespace controller, and
    /// the whole cluster is thrown away after the run.
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
}
