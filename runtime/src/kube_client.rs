//! The Kubernetes client from kubectl's flags: `--kubeconfig` and `--context` mean what a
//! kubectl user expects; without them `KUBECONFIG`, `~/.kube/config`, or the in-cluster
//! service account.

use std::path::PathBuf;

use anyhow::Context;

/// Which cluster to talk to, with kubectl's flag names (so `kubectl longhorn-guard doctor
/// --context prod` means what a kubectl user expects). Without them: `KUBECONFIG`,
/// `~/.kube/config`, or the in-cluster service account.
#[derive(Debug, Clone, clap::Args, Default)]
pub struct KubeArgs {
    /// Path to the kubeconfig file.
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    pub context: Option<String>,
}

impl KubeArgs {
    /// Whether either flag was given.
    pub fn is_set(&self) -> bool {
        self.kubeconfig.is_some() || self.context.is_some()
    }
}

/// Builds the client for the cluster `args` name; the error says which source failed.
pub async fn kube_client(args: &KubeArgs) -> anyhow::Result<kube::Client> {
    use kube::config::{Config, KubeConfigOptions, Kubeconfig};
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..Default::default()
    };
    let config = match &args.kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(file, &options)
                .await
                .with_context(|| format!("using the kubeconfig {}", path.display()))?
        }
        None if args.context.is_some() => Config::from_kubeconfig(&options)
            .await
            .context("using the kubeconfig (KUBECONFIG or ~/.kube/config) with --context")?,
        None => Config::infer().await.context(
            "connecting to the Kubernetes API (--kubeconfig, KUBECONFIG, ~/.kube/config or in-cluster)",
        )?,
    };
    kube::Client::try_from(config).context("building the Kubernetes client")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_kubeconfig_is_an_error_naming_the_file() {
        let args = KubeArgs {
            kubeconfig: Some(PathBuf::from("/nonexistent/longhorn-guard/kubeconfig")),
            context: None,
        };
        assert!(args.is_set());
        let Err(e) = kube_client(&args).await else {
            panic!("a kubeconfig that does not exist gave a client");
        };
        assert!(
            format!("{e:#}").contains("/nonexistent/longhorn-guard/kubeconfig"),
            "{e:#}"
        );
        assert!(!KubeArgs::default().is_set());
    }
}
