//! The accept loop and per-connection HTTP/2 serving (the connection itself, its fault control and
//! keepalive enforcement are in `conn.rs`).

use std::net::{IpAddr, SocketAddr};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context as _, bail};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use longhorn_guard_proto::imrpc::proxy_engine_service_server::ProxyEngineServiceServer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tonic::service::Routes;
use tonic_health::pb::health_server::HealthServer;
use tracing::{debug, info, warn};

use crate::conn::{ConnControl, ConnIo, Stream};
use crate::health::AlwaysServing;
use crate::service::ProxyService;
use crate::state::FakeEngine;
use crate::tasks::{TaskRegistry, TrackedExecutor};
use crate::tls::FakeTls;

/// A running fake engine proxy.
pub struct RunningServer {
    pub local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    accept: Option<JoinHandle<()>>,
    tasks: Arc<TaskRegistry>,
}

impl RunningServer {
    /// Stops accepting, closes every connection (in-flight calls are cancelled); every task of the server
    /// has ended when this returns.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(accept) = self.accept.take()
            && let Err(e) = accept.await
            && e.is_panic()
        {
            warn!(error = %e, "fake-engine accept loop panicked");
        }
        self.tasks.close();
        self.tasks.wait_idle().await;
        info!(addr = %self.local_addr, "fake-engine stopped");
    }

    /// Tasks of this server still running (connections and HTTP/2 streams).
    pub fn live_tasks(&self) -> usize {
        self.tasks.live_tasks()
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
        self.tasks.close();
    }
}

/// Serves `engine` on `addr` (port 0 picks a free port) in plaintext h2c, as an instance manager
/// without Longhorn's TLS files does. Only 127.0.0.0/8 addresses are accepted.
pub async fn serve(engine: FakeEngine, addr: SocketAddr) -> anyhow::Result<RunningServer> {
    serve_with(engine, addr, None).await
}

/// Serves `engine` on `addr` over TLS as an instance manager with Longhorn's TLS files does:
/// TLS 1.3 only, a client certificate from `tls.client_ca_path` carrying `tls.client_name` is
/// required. Completed handshakes count in [`crate::Stats::tls_connections`], refused or
/// broken ones (a plaintext client included) in [`crate::Stats::tls_handshake_failures`].
pub async fn serve_tls(
    engine: FakeEngine,
    addr: SocketAddr,
    tls: &FakeTls,
) -> anyhow::Result<RunningServer> {
    let acceptor = TlsAcceptor::from(tls.server_config()?);
    serve_with(engine, addr, Some(acceptor)).await
}

async fn serve_with(
    engine: FakeEngine,
    addr: SocketAddr,
    tls: Option<TlsAcceptor>,
) -> anyhow::Result<RunningServer> {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => {}
        ip => bail!(
            "fake-engine refuses to listen on {ip}: only loopback addresses (127.0.0.0/8) are allowed"
        ),
    }
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("fake-engine cannot listen on {addr}"))?;
    let local_addr = listener
        .local_addr()
        .context("fake-engine listener has no local address")?;
    let routes = Routes::new(ProxyEngineServiceServer::new(ProxyService::new(
        engine.clone(),
    )))
    .add_service(HealthServer::new(AlwaysServing::new(engine.clone())))
    .prepare();
    let tasks = TaskRegistry::new();
    let (stop, stopped) = watch::channel(false);
    let accept = tokio::spawn(accept_loop(
        listener,
        routes,
        engine,
        tls,
        tasks.clone(),
        stopped,
    ));
    info!(addr = %local_addr, "fake-engine listening");
    Ok(RunningServer {
        local_addr,
        stop,
        accept: Some(accept),
        tasks,
    })
}

async fn accept_loop(
    listener: TcpListener,
    routes: Routes,
    engine: FakeEngine,
    tls: Option<TlsAcceptor>,
    tasks: Arc<TaskRegistry>,
    mut stopped: watch::Receiver<bool>,
) {
    // Also ends when the RunningServer is gone (the sender is dropped).
    let mut stop = pin!(async move {
        let _ = stopped.wait_for(|s| *s).await;
    });
    loop {
        tokio::select! {
            () = stop.as_mut() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let conn = serve_connection(stream, peer, tls.clone(), routes.clone(), engine.clone(), tasks.clone());
                    tasks.spawn(conn);
                }
                Err(e) => {
                    // e.g. EMFILE: back off instead of spinning.
                    warn!(error = %e, "fake-engine accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    routes: Routes,
    engine: FakeEngine,
    tasks: Arc<TaskRegistry>,
) {
    let open = engine.connection_opened(peer);
    let _ = stream.set_nodelay(true);
    debug!(%peer, "fake-engine connection opened");
    let stream = match tls {
        None => Stream::Plain(stream),
        Some(acceptor) => {
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    engine.tls_handshake_completed();
                    Stream::Tls(Box::new(tls))
                }
                Ok(Err(e)) => {
                    engine.tls_handshake_failed();
                    debug!(%peer, error = %e, "fake-engine TLS handshake refused");
                    return;
                }
                Err(_) => {
                    engine.tls_handshake_failed();
                    debug!(%peer, "fake-engine TLS handshake timed out");
                    return;
                }
            }
        }
    };
    let keepalive = engine.keepalive_policy();
    drop(engine);
    let control = ConnControl::default();
    let io = ConnIo::new(stream, keepalive, open.record(), &control);
    let reset_on_drop = io.reset_on_drop();
    let per_request = control.clone();
    let svc = tower::ServiceBuilder::new()
        .map_request(move |mut req: http::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(per_request.clone());
            req
        })
        .service(routes);
    let conn = hyper::server::conn::http2::Builder::new(TrackedExecutor(tasks))
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(svc));
    let mut conn = pin!(conn);
    let mut going_away = false;
    let mut calmed_at: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    debug!(%peer, error = %e, "fake-engine connection ended with an error");
                }
                break;
            }
            () = control.reset.notified() => {
                debug!(%peer, "fake-engine resets the connection");
                reset_on_drop.store(true, Ordering::SeqCst);
                break;
            }
            () = control.go_away.notified(), if !going_away => {
                debug!(%peer, "fake-engine sends GOAWAY");
                going_away = true;
                conn.as_mut().graceful_shutdown();
            }
            () = control.calmed.notified(), if calmed_at.is_none() => {
                // GOAWAY too_many_pings is out and the write side shut; grpc-go closes the
                // connection now. Wait a little for the client to close its side, so closing ours
                // with unread bytes (a TCP RST) cannot overtake the GOAWAY.
                debug!(%peer, "fake-engine told the client too_many_pings");
                calmed_at = Some(tokio::time::Instant::now());
            }
            () = tokio::time::sleep_until(calmed_at.unwrap_or_else(tokio::time::Instant::now) + CALMED_LINGER), if calmed_at.is_some() => break,
        }
    }
    debug!(%peer, "fake-engine connection closed");
}

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection told `too_many_pings` waits for the client to close before it closes.
const CALMED_LINGER: Duration = Duration::from_secs(2);
