//! `Agent`: builds the pool, index, gRPC API (TLS) and the plain-HTTP metrics/health server from
//! one [`AgentConfig`], and runs them until shutdown.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use longhorn_guard_manager_monitor::ManagerMonitor;
use longhorn_guard_proto::agent::snapshot_service_server::SnapshotServiceServer;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tonic::transport::Server;

use crate::config::AgentConfig;
use crate::engine_client::EngineClient;
use crate::engine_index::EngineIndex;
use crate::metrics::{PoolMetrics, agent_registry, encode_registry};
use crate::node_verdict::{PolicyFile, Publisher, VerdictMetrics, VerdictState};
use crate::pool::LeasePool;
use crate::snapshot_service::SnapshotApi;
use crate::tls_server::{TlsReloadCollector, reloadable_server_config, tls_incoming};

/// Everything one node's agent runs. Build it with [`Agent::new`] inside a tokio runtime.
pub struct Agent {
    config: AgentConfig,
    pool: LeasePool,
    index: EngineIndex,
    registry: Arc<Registry>,
    /// Taken (and spawned) by [`Agent::serve`].
    monitor: Option<ManagerMonitor>,
    /// The node's verdict, fed by the monitor (when both are configured).
    verdict: Option<Arc<VerdictState>>,
    /// The policy file followed for the verdict's thresholds; taken by the publisher.
    verdict_policy: Option<PolicyFile>,
    /// Set by [`Agent::with_kube_client`]: what the verdict publisher writes with.
    kube_client: Option<kube::Client>,
    /// Serving certificate that follows its files; the handle keeps the reload watcher alive.
    tls: Arc<rustls::ServerConfig>,
    _tls_reload: Arc<longhorn_guard_runtime::tls::ReloadHandle>,
}

impl Agent {
    pub fn new(config: AgentConfig) -> anyhow::Result<Self> {
        config.validate()?;
        // The pool's tonic TLS client may build its rustls config from the process default.
        longhorn_guard_runtime::install_crypto_provider();
        // Read (and checked) now: a missing or bad certificate fails start-up, not the first call.
        let (tls, tls_reload) = reloadable_server_config(&config)?;
        let tls_reload = Arc::new(tls_reload);
        let metrics = Arc::new(PoolMetrics::new());
        let pool = LeasePool::new(config.pool.clone(), Arc::clone(&metrics))?;
        let index = EngineIndex::new(
            config.node_name.clone(),
            config.namespace.clone(),
            config.engine_proxy_port,
        );
        let mut registry = agent_registry(&metrics);
        // The monitor registers `longhorn_guard_manager_*` in the unprefixed root registry.
        let monitor = config
            .manager_monitor
            .clone()
            .map(|monitor| {
                let proc_root = monitor.proc_root.clone();
                ManagerMonitor::new(monitor, &mut registry).with_context(|| {
                    format!(
                        "longhorn-manager monitor of node {} (procfs at {})",
                        config.node_name,
                        proc_root.display()
                    )
                })
            })
            .transpose()?;
        let agent_registry = registry.sub_registry_with_prefix(crate::metrics::AGENT_PREFIX);
        agent_registry.register_collector(Box::new(TlsReloadCollector {
            handle: Arc::clone(&tls_reload),
        }));
        let (verdict, verdict_policy) = match (&config.node_verdict, &monitor) {
            (Some(verdict), Some(_)) => {
                let mut policy = PolicyFile::new(verdict.policy_file.clone());
                let metrics = VerdictMetrics::register(agent_registry, &config.node_name);
                let (thresholds, problem) = policy.initial();
                if let Some(why) = problem {
                    metrics.policy_error();
                    tracing::warn!(node = %config.node_name, error = %why, "node verdict starts with the default thresholds: the policy file is bad");
                }
                let state = VerdictState::new(&config.node_name, thresholds, metrics);
                (Some(Arc::new(state)), Some(policy))
            }
            (Some(_), None) => {
                tracing::warn!(node = %config.node_name, "no node verdict: it is judged from the longhorn-manager monitor, which is off");
                (None, None)
            }
            (None, _) => (None, None),
        };
        Ok(Self {
            config,
            pool,
            index,
            registry: Arc::new(registry),
            monitor,
            verdict,
            verdict_policy,
            kube_client: None,
            tls,
            _tls_reload: tls_reload,
        })
    }

    /// The client the node verdict's Lease and Events are written with.
    pub fn with_kube_client(mut self, client: kube::Client) -> Self {
        self.kube_client = Some(client);
        self
    }

    /// The node's verdict, when the monitor and the verdict are configured.
    pub fn verdict(&self) -> Option<&Arc<VerdictState>> {
        self.verdict.as_ref()
    }

    pub fn pool(&self) -> &LeasePool {
        &self.pool
    }

    pub fn index(&self) -> &EngineIndex {
        &self.index
    }

    /// Starts the longhorn-manager monitor (feeding the verdict when configured) and the verdict
    /// Lease publisher; both end when `stop` turns true.
    fn start_node_tasks(&mut self, stop: tokio::sync::watch::Receiver<bool>) -> NodeTasks {
        let verdict = self.verdict.clone();
        let monitor = self.monitor.take().map(|monitor| {
            let stop = stopped(stop.clone());
            match verdict.clone() {
                Some(verdict) => {
                    tokio::spawn(monitor.run_with(stop, move |sample| verdict.on_sample(sample)))
                }
                None => tokio::spawn(monitor.run(stop)),
            }
        });
        let publisher = match (
            verdict,
            self.config.node_verdict.clone(),
            self.verdict_policy.take(),
            self.kube_client.clone(),
        ) {
            (Some(state), Some(config), Some(policy), Some(client)) => Some(tokio::spawn(
                Publisher::new(config, state, policy, client).run(stopped(stop)),
            )),
            (Some(_), ..) => {
                tracing::warn!(node = %self.config.node_name, "node verdict judged but not published: no Kubernetes client");
                None
            }
            _ => None,
        };
        NodeTasks { monitor, publisher }
    }

    /// Serves the TLS gRPC API on `grpc` and `/metrics`, `/healthz`, `/readyz` on `http`, and
    /// runs the longhorn-manager monitor when configured, until `shutdown` resolves; then stops
    /// the monitor and closes every pooled channel.
    pub async fn serve(
        mut self,
        grpc: TcpListener,
        http: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let stop_rx = broadcast_shutdown(shutdown);

        // Stopped once both servers have ended, whether by `shutdown` or by an error.
        let (monitor_stop, monitor_stopped) = tokio::sync::watch::channel(false);
        let node_tasks = self.start_node_tasks(monitor_stopped);

        let (health_service, readiness) = grpc_health_until_ready(self.index.clone()).await;

        let api = SnapshotApi::new(
            self.index.clone(),
            EngineClient::new(self.pool.clone()),
            self.config.max_call_timeout,
        );
        let grpc_addr = grpc.local_addr()?;
        // TLS is terminated here, not by tonic, so the certificate can change under a running
        // server: every handshake asks the reloading resolver for the pair in force.
        let incoming = tls_incoming(
            grpc,
            tokio_rustls::TlsAcceptor::from(Arc::clone(&self.tls)),
            self.config.max_tls_handshakes,
        );
        let grpc_server = Server::builder()
            .add_service(health_service)
            .add_service(SnapshotServiceServer::new(api))
            .serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone()));

        let http_addr = http.local_addr()?;
        let router = http_router(HttpState {
            registry: Arc::clone(&self.registry),
            index: self.index.clone(),
        });
        let http_server = axum::serve(http, router).with_graceful_shutdown(stopped(stop_rx));

        tracing::info!(
            node = %self.config.node_name,
            namespace = %self.config.namespace,
            %grpc_addr,
            %http_addr,
            manager_monitor = node_tasks.monitor.is_some(),
            "agent serving"
        );
        let (grpc_result, http_result) = tokio::join!(grpc_server, async {
            http_server.await.map_err(anyhow::Error::from)
        });
        readiness.abort();
        self.pool.shutdown();
        let _ = monitor_stop.send(true);
        node_tasks.join().await;
        grpc_result.with_context(|| format!("agent gRPC server on {grpc_addr}"))?;
        http_result.with_context(|| format!("agent metrics server on {http_addr}"))?;
        Ok(())
    }
}

/// The node's background tasks: the longhorn-manager monitor and the verdict publisher.
struct NodeTasks {
    monitor: Option<tokio::task::JoinHandle<()>>,
    publisher: Option<tokio::task::JoinHandle<()>>,
}

impl NodeTasks {
    /// Waits for both after their stop signal: a sample in flight (bounded by its HTTP timeout)
    /// and a Lease write in flight (bounded by its timeout) finish first.
    async fn join(self) {
        if let Some(monitor) = self.monitor
            && let Err(e) = monitor.await
        {
            tracing::error!(error = %e, "longhorn-manager monitor task failed");
        }
        if let Some(publisher) = self.publisher
            && let Err(e) = publisher.await
        {
            tracing::error!(error = %e, "node verdict publisher task failed");
        }
    }
}

/// A stop signal every server can wait on ([`stopped`]), set when `shutdown` resolves.
fn broadcast_shutdown(
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> tokio::sync::watch::Receiver<bool> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    stop_rx
}

/// Resolves once the stop signal of `rx` is set (or its sender is gone).
async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// The gRPC health service, NOT_SERVING for the snapshot service until the engine index is
/// ready, and the task that then sets it SERVING.
async fn grpc_health_until_ready(
    index: EngineIndex,
) -> (
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    tokio::task::JoinHandle<()>,
) {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_not_serving::<SnapshotServiceServer<SnapshotApi>>()
        .await;
    let readiness = tokio::spawn(async move {
        index.wait_ready().await;
        health_reporter
            .set_serving::<SnapshotServiceServer<SnapshotApi>>()
            .await;
    });
    (health_service, readiness)
}

#[derive(Clone)]
struct HttpState {
    registry: Arc<Registry>,
    index: EngineIndex,
}

fn http_router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz_handler))
        .with_state(state)
}

async fn metrics_handler(State(state): State<HttpState>) -> impl IntoResponse {
    match encode_registry(&state.registry) {
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics failed: {e}"),
        )
            .into_response(),
    }
}

async fn readyz_handler(State(state): State<HttpState>) -> impl IntoResponse {
    if state.index.is_ready() {
        (StatusCode::OK, "ready".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: Engine/InstanceManager watches of namespace {} (node {}) have not synced",
                state.index.namespace(),
                state.index.node()
            ),
        )
    }
}

/// Runs the agent for `config.node_name` until `shutdown` resolves: connects to the cluster
/// (in-cluster config or `KUBECONFIG`), watches Engines and InstanceManagers, serves the API.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let agent = Agent::new(config)?;
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster or KUBECONFIG)")?;
    let agent = agent.with_kube_client(client.clone());
    let watches = agent.index().spawn_watches(client);
    let grpc = TcpListener::bind(agent.config.grpc_listen)
        .await
        .with_context(|| format!("binding the gRPC listener {}", agent.config.grpc_listen))?;
    let http = TcpListener::bind(agent.config.metrics_listen)
        .await
        .with_context(|| {
            format!(
                "binding the metrics listener {}",
                agent.config.metrics_listen
            )
        })?;
    let result = agent.serve(grpc, http, shutdown).await;
    for watch in watches {
        watch.abort();
    }
    result
}
