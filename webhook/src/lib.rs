//! longhorn-guard's admission webhook for Longhorn `Backup` CREATEs: it refuses Backups whose
//! Snapshot is missing, removed, lost or of another volume (the v1.7.2 incident: Backups
//! Pending forever, a leaked gRPC client per reconcile), and optionally forces full backups.
//!
//! Decisions are a pure function ([`decide`]) over a compact watch-fed [`Index`]; the index
//! never keeps full objects. This crate must not write to the cluster (its API calls are
//! list/watch and a live GET of a Snapshot before denying on an index miss), with one
//! exception: Kubernetes Events (`events.k8s.io`) on the Volume of a refused Backup, written by
//! a background task off the request path, bounded and rate-limited, their failures never an
//! admission error ([`events`]; policy `events.enabled: false` turns them off). It must not
//! assume Longhorn's namespace, and must not deny on an index miss alone.
//!
//! # Layers: which module may import which
//!
//! Imports run one way, down this list (`python3 scripts/module_graph.py webhook` finds any
//! circle and any function over 80 lines):
//!
//! 1. [`index`], [`version`], [`tls`]: the compact store of Snapshots, Volumes, Engines,
//!    Backups and BackupTargets fed by its own list and watch ([`index::IndexEvent`] at its
//!    boundary, [`index::IndexMetrics`] its metrics); Longhorn release detection; serving
//!    certificates. They import no other module of this crate.
//! 2. [`policy`]: the policy and its sections (throttle, events, engine check) and its hot
//!    reload ([`policy::PolicyCell`]); imports only the index's staleness default.
//! 3. The pure core, no axum and no kube client: [`decision`] (`decide` asks for a live GET by
//!    returning [`Decision::NeedsLiveSnapshot`] instead of doing it), [`throttle`] (its
//!    inputs explicit: [`throttle::admission::ThrottleInputs`]), [`snapshot_source`] (the
//!    trait the live GET goes through).
//! 4. Checks and side effects that do I/O: [`engine_truth`] (gRPC to the agents), [`events`]
//!    (Kubernetes Events).
//! 5. [`metrics`]: registers every module's metric handles in one registry.
//! 6. [`api`]: the HTTP layer; each handler parses, calls the core, translates the answer.
//! 7. This file: the run wiring (listeners, watches, reloads, shutdown).

pub mod api;
pub mod cli;
pub mod decision;
pub mod engine_truth;
pub mod events;
pub mod index;
pub mod metrics;
pub mod node_verdicts;
pub mod policy;
pub mod snapshot_source;
pub mod throttle;
pub mod tls;
pub mod version;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinSet;

pub use api::{AppState, ops_router, router};
pub use decision::{BackupRequest, Decision, Denial, Reason, decide, full_backup_patch};
pub use index::{Index, IndexOptions, IndexView, Kind, WatchScope};
pub use metrics::Metrics;
pub use policy::Policy;
pub use snapshot_source::{ApiSnapshotSource, NoSnapshotSource, SnapshotSource};

/// How to run the webhook. `Default` is what the flags default to ([`cli::WebhookArgs`]):
/// 0.0.0.0:8443 (TLS, certificate in /certs) and 0.0.0.0:9090 (health, readiness, metrics)
/// with the default policy, watching all namespaces.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// Admission endpoints over TLS.
    pub listen: SocketAddr,
    /// `/healthz`, `/readyz`, `/metrics` over plain HTTP.
    pub metrics_listen: SocketAddr,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// YAML [`Policy`]; `None` = defaults.
    pub policy_path: Option<PathBuf>,
    /// Used instead of `policy_path` when set (embedding, tests).
    pub policy: Option<Policy>,
    /// Namespace to watch; `None` = all namespaces.
    pub namespace: Option<String>,
    /// How long shutdown waits for in-flight reviews.
    pub shutdown_grace: Duration,
    /// How often `policy_path` is re-read for hot reload (content compared, not mtime: a
    /// ConfigMap mount swaps a symlink).
    pub policy_poll_interval: Duration,
    /// How often the serving certificate files are checked for a renewal.
    pub tls_poll_interval: Duration,
    /// Engine-truth checks through the per-node agents (mTLS, discovery, limits); `None`
    /// disables them whatever the policy's `engineCheck` says.
    pub engine_truth: Option<engine_truth::EngineTruthConfig>,
    /// Judge by this Longhorn release instead of detecting it (`--longhorn-version`).
    pub longhorn_version: Option<longhorn_types::Release>,
    /// How often the Longhorn version is re-detected (an upgrade changes it).
    pub longhorn_version_poll_interval: Duration,
    /// The guard's namespace, where the agents publish their nodes' verdict Leases
    /// (`crate::node_verdicts`); `None` = no verdicts read, no Backup held back by one.
    pub node_verdict_namespace: Option<String>,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            listen: cli::DEFAULT_LISTEN,
            metrics_listen: cli::DEFAULT_METRICS_LISTEN,
            tls_cert: PathBuf::from(cli::DEFAULT_TLS_CERT),
            tls_key: PathBuf::from(cli::DEFAULT_TLS_KEY),
            policy_path: None,
            policy: None,
            namespace: None,
            shutdown_grace: Duration::from_secs(10),
            policy_poll_interval: Duration::from_secs(5),
            tls_poll_interval: Duration::from_secs(3),
            engine_truth: None,
            longhorn_version: None,
            longhorn_version_poll_interval: Duration::from_secs(60),
            node_verdict_namespace: None,
        }
    }
}

impl WebhookConfig {
    /// The policy to run with: the inline one, else the file, else defaults.
    pub fn load_policy(&self) -> anyhow::Result<Policy> {
        if let Some(p) = &self.policy {
            p.validate()
                .map_err(|m| anyhow::anyhow!("inline policy: {m}"))?;
            return Ok(p.clone());
        }
        match &self.policy_path {
            Some(path) => Ok(Policy::load(path)?),
            None => Ok(Policy::default()),
        }
    }
}

/// Builds the index options the policy needs.
pub fn index_options(policy: &Policy) -> IndexOptions {
    IndexOptions {
        full_backup_label: policy
            .full_backup
            .label_selector()
            .map(|(k, v)| (k.to_string(), v.map(str::to_string))),
    }
}

/// A running webhook. Dropping it without [`WebhookHandle::shutdown`] aborts its tasks.
pub struct WebhookHandle {
    addr: SocketAddr,
    /// Keeps the certificate reloader running as long as the server.
    tls_reload: longhorn_guard_runtime::tls::ReloadHandle,
    metrics_addr: SocketAddr,
    state: AppState,
    tls_handle: axum_server::Handle<SocketAddr>,
    ops_stop: Option<tokio::sync::oneshot::Sender<()>>,
    servers: JoinSet<anyhow::Result<()>>,
    watches: JoinSet<()>,
    /// The Event writer; stopped after the servers so it flushes the last refusals' counts.
    events: Option<events::EventWriterHandle>,
    grace: Duration,
}

impl WebhookHandle {
    /// Serving-certificate reloads so far (and failed attempts, which keep the old pair).
    pub fn tls_reload_stats(&self) -> longhorn_guard_runtime::tls::ReloadStats {
        self.tls_reload.stats()
    }

    /// Where the admission endpoints listen (TLS).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where health, readiness and metrics listen.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Stops accepting, lets in-flight reviews finish (up to the grace period), then stops
    /// the watches.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.state.set_serving(false);
        self.tls_handle.graceful_shutdown(Some(self.grace));
        if let Some(stop) = self.ops_stop.take() {
            let _ = stop.send(());
        }
        let mut result = Ok(());
        while let Some(joined) = self.servers.join_next().await {
            match joined {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = Err(e),
                Err(e) => result = Err(anyhow::anyhow!("server task failed: {e}")),
            }
        }
        if let Some(writer) = self.events.take() {
            writer.stop(self.grace).await;
        }
        self.watches.shutdown().await;
        tracing::info!("webhook stopped");
        result
    }
}

impl Drop for WebhookHandle {
    fn drop(&mut self) {
        self.tls_handle.shutdown();
        self.servers.abort_all();
        self.watches.abort_all();
    }
}

/// Starts the watches and both listeners and returns once they are bound.
pub async fn start(config: WebhookConfig, client: kube::Client) -> anyhow::Result<WebhookHandle> {
    let snapshots: Arc<dyn SnapshotSource> = Arc::new(ApiSnapshotSource::new(client.clone()));
    start_with_source(config, Some(client), snapshots).await
}

/// Like [`start`], with a chosen live-lookup source; `client: None` runs without watches
/// (benchmarks: the index then stays empty and never becomes ready).
pub async fn start_with_source(
    config: WebhookConfig,
    client: Option<kube::Client>,
    snapshots: Arc<dyn SnapshotSource>,
) -> anyhow::Result<WebhookHandle> {
    tls::install_crypto_provider();
    let policy = Arc::new(config.load_policy()?);
    let longhorn = detect_longhorn(&config, client.as_ref()).await?;
    let index = Arc::new(Index::new(index_options(&policy)));
    index.set_staleness(policy.index_staleness());
    let metrics = Arc::new(Metrics::new());
    metrics.policy_in_force(&policy, config.namespace.as_deref());
    let state = AppState::new(policy.clone(), index.clone(), metrics.clone(), snapshots);
    if let Some(info) = longhorn {
        metrics.longhorn.set(&info);
        state.longhorn.set(info);
    }

    let mut watches = JoinSet::new();
    if let Some(truth_config) = &config.engine_truth {
        start_engine_truth(truth_config, client.as_ref(), &state, &mut watches)?;
    }
    let event_writer = client
        .as_ref()
        .map(|client| start_event_writer(client, &state));
    if let Some(client) = client {
        start_cluster_watches(&config, client, &state, &mut watches);
    }
    if config.policy.is_none()
        && let Some(path) = &config.policy_path
    {
        start_policy_reloader(&config, path, &state, &mut watches);
    }
    metrics.throttle.policy_generation.set(1);

    let listeners = start_listeners(&config, &state).await?;
    state.set_serving(true);
    tracing::info!(
        addr = %listeners.addr,
        metrics_addr = %listeners.metrics_addr,
        namespace = ?config.namespace,
        "webhook listening"
    );
    Ok(WebhookHandle {
        addr: listeners.addr,
        tls_reload: listeners.tls_reload,
        metrics_addr: listeners.metrics_addr,
        state,
        tls_handle: listeners.tls_handle,
        ops_stop: Some(listeners.ops_stop),
        servers: listeners.servers,
        watches,
        events: event_writer,
        grace: config.shutdown_grace,
    })
}

/// The Longhorn release to judge by: detected through `client` (refuses to start when
/// Longhorn's CRDs are missing; an unknown version only warns), else the pinned one.
async fn detect_longhorn(
    config: &WebhookConfig,
    client: Option<&kube::Client>,
) -> anyhow::Result<Option<version::LonghornInfo>> {
    Ok(match client {
        Some(c) => Some(
            version::check_at_start(c, config.namespace.as_deref(), config.longhorn_version)
                .await?,
        ),
        None => config.longhorn_version.map(version::LonghornInfo::pinned),
    })
}

/// Builds the engine-truth checks into `state` and, with a client, spawns the agents'
/// discovery watch.
fn start_engine_truth(
    truth_config: &engine_truth::EngineTruthConfig,
    client: Option<&kube::Client>,
    state: &AppState,
    watches: &mut JoinSet<()>,
) -> anyhow::Result<()> {
    let truth = engine_truth::EngineTruth::new(truth_config, state.metrics.engine_checks.clone())?;
    if let Some(watch) = client.and_then(|c| truth.directory().spawn_watch(c.clone())) {
        watches.spawn(watch);
    }
    tracing::info!(agents = %truth.directory().describe(), "engine checks configured");
    let _ = state.engine_truth.set(Arc::new(truth));
    Ok(())
}

/// Spawns the Kubernetes Event writer and hands its sink to `state`.
fn start_event_writer(client: &kube::Client, state: &AppState) -> events::EventWriterHandle {
    let (sink, writer) = events::spawn(events::EventWriter {
        client: client.clone(),
        index: state.index.clone(),
        policy: state.policy.clone(),
        metrics: state.metrics.events.clone(),
        instance: events::reporting_instance(),
    });
    let _ = state.events.set(sink);
    writer
}

/// Spawns the index's list-and-watch loops and, unless the release is pinned, the Longhorn
/// version re-detection.
fn start_cluster_watches(
    config: &WebhookConfig,
    client: kube::Client,
    state: &AppState,
    watches: &mut JoinSet<()>,
) {
    let scope = match &config.namespace {
        Some(ns) => WatchScope::Namespace(ns.clone()),
        None => WatchScope::AllNamespaces,
    };
    if config.longhorn_version.is_none() {
        watches.spawn(version::run_redetection(
            client.clone(),
            config.namespace.clone(),
            state.longhorn.clone(),
            state.metrics.longhorn.clone(),
            config.longhorn_version_poll_interval,
        ));
    }
    if let Some(namespace) = &config.node_verdict_namespace {
        watches.spawn(verdict_watch(&client, namespace, state).run());
    }
    index::run_watches(
        watches,
        client,
        &scope,
        state.index.clone(),
        state.metrics.index.clone(),
    );
}

/// Spawns the policy file's hot reload: a new policy sets the index's staleness, the
/// policy metrics and the generation; a rejected one counts an error.
fn start_policy_reloader(
    config: &WebhookConfig,
    path: &std::path::Path,
    state: &AppState,
    watches: &mut JoinSet<()>,
) {
    let initial = std::fs::read(path).ok();
    let watch = policy::PolicyFileWatch::new(path.to_path_buf(), initial.as_deref());
    let reload_metrics = state.metrics.clone();
    let (reload_index, reload_policy) = (state.index.clone(), state.policy.clone());
    let longhorn_namespace = config.namespace.clone();
    watches.spawn(policy::reload::run_reloader(
        watch,
        state.policy.clone(),
        config.policy_poll_interval,
        move |outcome| match outcome {
            policy::ReloadOutcome::Rejected { .. } => {
                reload_metrics.throttle.policy_reload_errors.inc();
            }
            policy::ReloadOutcome::Reloaded { generation } => {
                let policy = reload_policy.get();
                reload_index.set_staleness(policy.index_staleness());
                reload_metrics.policy_in_force(&policy, longhorn_namespace.as_deref());
                reload_metrics
                    .throttle
                    .policy_generation
                    .set(i64::try_from(*generation).unwrap_or(i64::MAX));
            }
            policy::ReloadOutcome::Unchanged => {}
        },
    ));
}

/// The two bound listeners and their server tasks.
struct Listeners {
    addr: SocketAddr,
    metrics_addr: SocketAddr,
    tls_reload: longhorn_guard_runtime::tls::ReloadHandle,
    tls_handle: axum_server::Handle<SocketAddr>,
    ops_stop: tokio::sync::oneshot::Sender<()>,
    servers: JoinSet<anyhow::Result<()>>,
}

/// Binds the admission listener (TLS, certificate reloaded from its files) and the ops
/// listener (health, readiness, metrics) and spawns their servers.
async fn start_listeners(config: &WebhookConfig, state: &AppState) -> anyhow::Result<Listeners> {
    let (tls_config, tls_reload) =
        tls::reloading_server_config(&config.tls_cert, &config.tls_key, config.tls_poll_interval)?;
    let listener = std::net::TcpListener::bind(config.listen)
        .with_context(|| format!("cannot listen on {} (admission, TLS)", config.listen))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let ops_listener = tokio::net::TcpListener::bind(config.metrics_listen)
        .await
        .with_context(|| format!("cannot listen on {} (metrics)", config.metrics_listen))?;
    let metrics_addr = ops_listener.local_addr()?;

    let tls_handle = axum_server::Handle::<SocketAddr>::new();
    let mut servers = JoinSet::new();
    let server = axum_server::from_tcp_rustls(
        listener,
        axum_server::tls_rustls::RustlsConfig::from_config(tls_config),
    )?
    .handle(tls_handle.clone());
    let app = router(state.clone());
    servers.spawn(async move {
        server
            .serve(app.into_make_service())
            .await
            .with_context(|| format!("admission server on {addr}"))
    });
    let (ops_stop, ops_stopped) = tokio::sync::oneshot::channel::<()>();
    let ops = ops_router(state.clone());
    servers.spawn(async move {
        axum::serve(ops_listener, ops)
            .with_graceful_shutdown(async move {
                let _ = ops_stopped.await;
            })
            .await
            .with_context(|| format!("metrics server on {metrics_addr}"))
    });
    Ok(Listeners {
        addr,
        metrics_addr,
        tls_reload,
        tls_handle,
        ops_stop,
        servers,
    })
}

/// The watch of the nodes' verdict Leases in `namespace`, feeding `state` (its staleness bound
/// is the index's, hot-reloaded).
fn verdict_watch(
    client: &kube::Client,
    namespace: &str,
    state: &AppState,
) -> node_verdicts::watch::VerdictWatch {
    let index = state.index.clone();
    node_verdicts::watch::VerdictWatch {
        client: client.clone(),
        namespace: namespace.to_string(),
        verdicts: state.node_verdicts.clone(),
        metrics: state.metrics.node_verdicts.clone(),
        staleness: Arc::new(move || index.staleness()),
    }
}

/// Runs the webhook until `shutdown` completes, then shuts down gracefully.
pub async fn run(
    config: WebhookConfig,
    client: kube::Client,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let handle = start(config, client).await?;
    shutdown.await;
    tracing::info!("shutdown requested; finishing in-flight reviews");
    handle.shutdown().await
}
