//! Every environment variable the tests, benches and examples read, in one place: [`TestEnv`],
//! loaded once by [`test_env`]. Production flags (clap `env = "LHG_..."`) are not here: they
//! belong to the component that takes them.
//!
//! Names: `LHG_TEST_*` for what the test command sets or a test reads, `LHG_BENCH_*` for
//! what a bench or a measuring example reads. Renamed when this struct was introduced (no
//! script outside the repository sets them):
//! `LHG_LONGHORN_CRDS` → `LHG_TEST_LONGHORN_CRDS`, `LHG_HELM` → `LHG_TEST_HELM`,
//! `LHG_KUBECTL` → `LHG_TEST_KUBECTL`, `LHG_UPDATE_MANIFESTS` → `LHG_TEST_UPDATE_MANIFESTS`,
//! `LHG_ENGINE_FAULT_SECS` → `LHG_TEST_ENGINE_FAULT_SECS`,
//! `LHG_EVENTS_STORM_DENIALS` → `LHG_TEST_EVENTS_STORM_DENIALS`,
//! `LHG_STORM_{BACKUPS,VOLUMES}` → `LHG_TEST_STORM_*` (the test) and `LHG_BENCH_STORM_*` (the
//! `throttle_storm` example), `LHG_REPLICA_STORM_*` → `LHG_TEST_REPLICA_STORM_*`,
//! `LHG_REPLICAS_{BACKUPS,VOLUMES}` → `LHG_TEST_REPLICAS_*` (the test) and
//! `LHG_BENCH_REPLICAS_*` (the bench), `LHG_REPLICAS_COUNTS` → `LHG_BENCH_REPLICAS_COUNTS`.
//!
//! A variable that is set but does not parse is an error naming it (it used to fall back to
//! the default silently, so a typo measured something else than asked).

use std::ffi::OsString;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::OnceLock;

use anyhow::{Result, anyhow, bail};

/// `LHG_TEST_KUBECONFIG`: the kubeconfig of the run's local control plane.
pub const KUBECONFIG_ENV: &str = "LHG_TEST_KUBECONFIG";
/// `LHG_TEST_LONGHORN_KUBECONFIG`: the kubeconfig of the second control plane, which holds
/// Longhorn's own v1.7.2 CRDs (set by the test command when `../shared/longhorn` exists).
pub const LONGHORN_KUBECONFIG_ENV: &str = "LHG_TEST_LONGHORN_KUBECONFIG";
/// `LHG_TEST_LONGHORN_CRDS`: Longhorn's own CRDs file.
pub const LONGHORN_CRDS_ENV: &str = "LHG_TEST_LONGHORN_CRDS";
/// `LHG_TEST_HELM`: the helm binary.
pub const HELM_ENV: &str = "LHG_TEST_HELM";
/// `LHG_TEST_KUBECTL`: the kubectl binary.
pub const KUBECTL_ENV: &str = "LHG_TEST_KUBECTL";

/// Declares [`TestEnv`]'s fields and how [`TestEnv::from_lookup`] reads each, in one list.
macro_rules! test_env_fields {
    ($($(#[doc = $doc:expr])* $field:ident: $ty:ty = $read:ident($name:expr),)*) => {
        /// The test environment: one field per variable, `None` (or `false`) when it is not
        /// set. Defaults that differ between a test and a bench stay with the reader
        /// (`env.storm_backups.unwrap_or(4422)`).
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct TestEnv {
            $($(#[doc = $doc])* pub $field: $ty,)*
        }

        impl TestEnv {
            /// Reads every variable through `lookup` (the process environment in
            /// [`test_env`]).
            pub fn from_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> Result<Self> {
                let vars = Vars(&lookup);
                Ok(Self {
                    $($field: vars.$read($name)?,)*
                })
            }
        }
    };
}

test_env_fields! {
    // What the test command (`scripts/test.sh`) sets up.
    /// `LHG_TEST_KUBECONFIG`: the run's local control plane (see [`crate::TestCluster::connect`]).
    kubeconfig: Option<PathBuf> = path(KUBECONFIG_ENV),
    /// `LHG_TEST_LONGHORN_KUBECONFIG`: the second control plane, for Longhorn's own CRDs.
    longhorn_kubeconfig: Option<PathBuf> = path(LONGHORN_KUBECONFIG_ENV),
    /// `LHG_TEST_LONGHORN_CRDS`: Longhorn's own v1.7.2 CRDs file (else
    /// `../shared/longhorn/crds-v1.7.2.yaml` next to the repository).
    longhorn_crds: Option<PathBuf> = path(LONGHORN_CRDS_ENV),
    /// `LHG_TEST_HELM`: helm v4.1.4 (`source scripts/lib.sh && ensure_helm_kubectl`).
    helm: Option<PathBuf> = path(HELM_ENV),
    /// `LHG_TEST_KUBECTL`: kubectl v1.33.9 (`source scripts/lib.sh && ensure_helm_kubectl`).
    kubectl: Option<PathBuf> = path(KUBECTL_ENV),
    /// `LHG_TEST_UPDATE_MANIFESTS` (any value): rewrite generated manifests instead of only
    /// comparing them (`longhorn-types/tests/crd_manifest.rs`).
    update_manifests: bool = flag("LHG_TEST_UPDATE_MANIFESTS"),

    // Sizes of test scenarios (each test's default when unset).
    /// `LHG_TEST_ENGINE_FAULT_SECS`: seconds per engine fault in `agent/tests/engine_faults.rs`.
    engine_fault_secs: Option<u64> = number("LHG_TEST_ENGINE_FAULT_SECS"),
    /// `LHG_TEST_EVENTS_STORM_DENIALS`: denials in `webhook/tests/events.rs`'s storm.
    events_storm_denials: Option<usize> = number("LHG_TEST_EVENTS_STORM_DENIALS"),
    /// `LHG_TEST_STORM_BACKUPS`: Backups in `webhook/tests/storm.rs`'s storm.
    storm_backups: Option<usize> = number("LHG_TEST_STORM_BACKUPS"),
    /// `LHG_TEST_STORM_VOLUMES`: volumes in `webhook/tests/storm.rs`'s storm.
    storm_volumes: Option<usize> = number("LHG_TEST_STORM_VOLUMES"),
    /// `LHG_TEST_REPLICA_STORM_BACKUPS`: Backups of `storm.rs`'s two-replica storm.
    replica_storm_backups: Option<usize> = number("LHG_TEST_REPLICA_STORM_BACKUPS"),
    /// `LHG_TEST_REPLICA_STORM_VOLUMES`: volumes of `storm.rs`'s two-replica storm.
    replica_storm_volumes: Option<usize> = number("LHG_TEST_REPLICA_STORM_VOLUMES"),
    /// `LHG_TEST_REPLICAS_BACKUPS`: Backups of `webhook/tests/replicas.rs`.
    replicas_backups: Option<usize> = number("LHG_TEST_REPLICAS_BACKUPS"),
    /// `LHG_TEST_REPLICAS_VOLUMES`: volumes of `webhook/tests/replicas.rs`.
    replicas_volumes: Option<usize> = number("LHG_TEST_REPLICAS_VOLUMES"),

    // Bench and measuring-example knobs (each bench's default when unset).
    /// `LHG_BENCH_BACKUPS`: Backups in the index (`reservations`).
    bench_backups: Option<usize> = number("LHG_BENCH_BACKUPS"),
    /// `LHG_BENCH_RESERVATIONS`: reservations held (`reservations`).
    bench_reservations: Option<usize> = number("LHG_BENCH_RESERVATIONS"),
    /// `LHG_BENCH_SETTLES`: settles measured (`reservations`).
    bench_settles: Option<usize> = number("LHG_BENCH_SETTLES"),
    /// `LHG_BENCH_ROUNDS`: measured rounds (`reservations`, `decision_scale`).
    bench_rounds: Option<usize> = number("LHG_BENCH_ROUNDS"),
    /// `LHG_BENCH_DECISIONS`: decisions per size (`decision_scale`).
    bench_decisions: Option<usize> = number("LHG_BENCH_DECISIONS"),
    /// `LHG_BENCH_SIZES`: comma-separated index sizes (`decision_scale`).
    bench_sizes: Option<Vec<usize>> = numbers("LHG_BENCH_SIZES"),
    /// `LHG_BENCH_REQUESTS`: requests sent (`engine_truth`, `webhook_vs_floor`).
    bench_requests: Option<usize> = number("LHG_BENCH_REQUESTS"),
    /// `LHG_BENCH_CLIENTS`: h2load clients (`webhook_vs_floor`).
    bench_clients: Option<usize> = number("LHG_BENCH_CLIENTS"),
    /// `LHG_BENCH_STREAMS`: h2load streams per client (`webhook_vs_floor`).
    bench_streams: Option<usize> = number("LHG_BENCH_STREAMS"),
    /// `LHG_BENCH_CREATES`: Backup CREATEs per target (`apiserver_latency`).
    bench_creates: Option<usize> = number("LHG_BENCH_CREATES"),
    /// `LHG_BENCH_INDEXED_NAMESPACE`: a namespace already filled by `index_memory`, measured
    /// too (`apiserver_latency`).
    bench_indexed_namespace: Option<String> = text("LHG_BENCH_INDEXED_NAMESPACE"),
    /// `LHG_BENCH_SMAPS` (any value): print the agent's smaps breakdown (`agent_rss`).
    bench_smaps: bool = flag("LHG_BENCH_SMAPS"),
    /// `LHG_BENCH_REPLICAS_COUNTS`: comma-separated replica counts (`replicas` bench).
    bench_replicas_counts: Option<Vec<usize>> = numbers("LHG_BENCH_REPLICAS_COUNTS"),
    /// `LHG_BENCH_REPLICAS_BACKUPS`: Backups per run (`replicas` bench).
    bench_replicas_backups: Option<usize> = number("LHG_BENCH_REPLICAS_BACKUPS"),
    /// `LHG_BENCH_REPLICAS_VOLUMES`: volumes per run (`replicas` bench).
    bench_replicas_volumes: Option<usize> = number("LHG_BENCH_REPLICAS_VOLUMES"),
    /// `LHG_BENCH_STORM_BACKUPS`: Backups of the `throttle_storm` example.
    bench_storm_backups: Option<usize> = number("LHG_BENCH_STORM_BACKUPS"),
    /// `LHG_BENCH_STORM_VOLUMES`: volumes of the `throttle_storm` example.
    bench_storm_volumes: Option<usize> = number("LHG_BENCH_STORM_VOLUMES"),
}

/// The process's [`TestEnv`], read once. Panics naming the variable when one is set but
/// malformed (a test or bench cannot run as asked then).
pub fn test_env() -> &'static TestEnv {
    static ENV: OnceLock<TestEnv> = OnceLock::new();
    ENV.get_or_init(|| {
        TestEnv::from_lookup(|name| std::env::var_os(name)).unwrap_or_else(|e| panic!("{e:#}"))
    })
}

impl TestEnv {
    /// The kubeconfig the test command exports as `name` ([`KUBECONFIG_ENV`] or
    /// [`LONGHORN_KUBECONFIG_ENV`]), or an error saying how to get one.
    pub fn kubeconfig_named(&self, name: &str) -> Result<&PathBuf> {
        let path = match name {
            KUBECONFIG_ENV => &self.kubeconfig,
            LONGHORN_KUBECONFIG_ENV => &self.longhorn_kubeconfig,
            other => bail!(
                "{other} is not a control plane's kubeconfig variable (want {KUBECONFIG_ENV} or \
                 {LONGHORN_KUBECONFIG_ENV})"
            ),
        };
        path.as_ref().ok_or_else(|| {
            anyhow!(
                "no local control plane: {name} is not set. Integration tests run against the \
                 kube-apiserver that `scripts/test.sh` starts for the whole run; run them with \
                 `bash scripts/test.sh` (or start one with control-plane/up.sh and export {name})"
            )
        })
    }

    /// The helm binary ([`HELM_ENV`]), or an error saying how to get it.
    pub fn helm(&self) -> Result<&PathBuf> {
        tool(&self.helm, HELM_ENV, "helm v4.1.4")
    }

    /// The kubectl binary ([`KUBECTL_ENV`]), or an error saying how to get it.
    pub fn kubectl(&self) -> Result<&PathBuf> {
        tool(&self.kubectl, KUBECTL_ENV, "kubectl v1.33.9")
    }
}

fn tool<'a>(path: &'a Option<PathBuf>, var: &str, what: &str) -> Result<&'a PathBuf> {
    match path {
        Some(p) if p.is_file() => Ok(p),
        _ => bail!(
            "{var} is not set to the {what} binary: run through `bash scripts/test.sh`, or \
             `source scripts/lib.sh && ensure_helm_kubectl` (exports {var}) before cargo nextest"
        ),
    }
}

/// Typed reads of one lookup, each error naming its variable.
struct Vars<'a, F: Fn(&str) -> Option<OsString>>(&'a F);

impl<F: Fn(&str) -> Option<OsString>> Vars<'_, F> {
    fn path(&self, name: &str) -> Result<Option<PathBuf>> {
        Ok((self.0)(name).filter(|v| !v.is_empty()).map(PathBuf::from))
    }

    fn flag(&self, name: &str) -> Result<bool> {
        Ok((self.0)(name).is_some())
    }

    fn text(&self, name: &str) -> Result<Option<String>> {
        (self.0)(name)
            .map(|v| {
                v.into_string()
                    .map_err(|v| anyhow!("{name}={v:?}: not UTF-8"))
            })
            .transpose()
    }

    fn number<T: FromStr>(&self, name: &str) -> Result<Option<T>> {
        self.text(name)?
            .map(|v| {
                v.trim()
                    .parse()
                    .map_err(|_| anyhow!("{name}={v:?}: want a whole number"))
            })
            .transpose()
    }

    fn numbers<T: FromStr>(&self, name: &str) -> Result<Option<Vec<T>>> {
        self.text(name)?
            .map(|v| {
                v.split(',')
                    .map(|n| n.trim().parse())
                    .collect::<Result<Vec<T>, _>>()
                    .map_err(|_| anyhow!("{name}={v:?}: want whole numbers separated by commas"))
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(vars: &[(&str, &str)]) -> Result<TestEnv> {
        let map: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        TestEnv::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn nothing_set_is_all_unset() {
        assert_eq!(env_of(&[]).unwrap(), TestEnv::default());
    }

    #[test]
    fn each_kind_of_variable_is_read() {
        let env = env_of(&[
            ("LHG_TEST_KUBECONFIG", "/tmp/cp/kubeconfig"),
            ("LHG_TEST_UPDATE_MANIFESTS", ""),
            ("LHG_TEST_STORM_BACKUPS", " 1500 "),
            ("LHG_BENCH_SIZES", "1000, 10000"),
            ("LHG_BENCH_INDEXED_NAMESPACE", "bench-memory"),
        ])
        .unwrap();
        assert_eq!(env.kubeconfig, Some(PathBuf::from("/tmp/cp/kubeconfig")));
        assert!(env.update_manifests);
        assert_eq!(env.storm_backups, Some(1500));
        assert_eq!(env.bench_sizes, Some(vec![1000, 10000]));
        assert_eq!(env.bench_indexed_namespace.as_deref(), Some("bench-memory"));
        assert_eq!(
            env.kubeconfig_named(KUBECONFIG_ENV).unwrap(),
            &PathBuf::from("/tmp/cp/kubeconfig")
        );
    }

    #[test]
    fn a_malformed_value_is_an_error_naming_the_variable() {
        let e = env_of(&[("LHG_TEST_STORM_VOLUMES", "3OO")]).unwrap_err();
        assert!(
            format!("{e:#}").contains("LHG_TEST_STORM_VOLUMES=\"3OO\""),
            "{e:#}"
        );
        let e = env_of(&[("LHG_BENCH_REPLICAS_COUNTS", "1,five")]).unwrap_err();
        assert!(
            format!("{e:#}").contains("LHG_BENCH_REPLICAS_COUNTS"),
            "{e:#}"
        );
    }

    #[test]
    fn a_missing_control_plane_or_tool_says_how_to_get_it() {
        let env = TestEnv::default();
        let e = env.kubeconfig_named(LONGHORN_KUBECONFIG_ENV).unwrap_err();
        assert!(format!("{e}").contains("bash scripts/test.sh"), "{e}");
        let e = env.kubeconfig_named("KUBECONFIG").unwrap_err();
        assert!(format!("{e}").contains("not a control plane"), "{e}");
        let e = env.helm().unwrap_err();
        assert!(format!("{e}").contains("LHG_TEST_HELM"), "{e}");
    }
}
