//! The accept loop and per-connection HTTP/2 serving, with the per-connection control that `Reset` and
//! `GoAway` faults need.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{Context as _, bail};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use longhorn_guard_proto::imrpc::proxy_engine_service_server::ProxyEngineServiceServer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tonic::service::Routes;
use tonic_health::pb::health_server::HealthServer;
use tracing::{debug, info, warn};

use crate::health::AlwaysServing;
use crate::service::ProxyService;
use crate::state::FakeEngine;
use crate::tasks::{TaskRegistry, TrackedExecutor};

/// Per-connection control, put into every request's extensions so a handler can act on the connection
/// that carries its call.
#[derive(Clone, Default)]
pub(crate) struct ConnControl {
    reset: Arc<Notify>,
    go_away: Arc<Notify>,
}

impl ConnControl {
    /// Abort the connection (TCP RST, no HTTP/2 response).
    pub(crate) fn reset(&self) {
        self.reset.notify_one();
    }

    /// Gracefully shut the connection down (HTTP/2 GOAWAY).
    pub(crate) fn go_away(&self) {
        self.go_away.notify_one();
    }
}

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

/// Serves `engine` on `addr` (port 0 picks a free port). Only 127.0.0.0/8 addresses are accepted.
pub async fn serve(engine: FakeEngine, addr: SocketAddr) -> anyhow::Result<RunningServer> {
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
                    let conn = serve_connection(stream, peer, routes.clone(), engine.clone(), tasks.clone());
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
    routes: Routes,
    engine: FakeEngine,
    tasks: Arc<TaskRegistry>,
) {
    let _open = engine.connection_opened();
    drop(engine);
    let _ = stream.set_nodelay(true);
    debug!(%peer, "fake-engine connection opened");
    let control = ConnControl::default();
    let io = ConnIo {
        inner: stream,
        reset_on_drop: Arc::new(AtomicBool::new(false)),
    };
    let reset_on_drop = io.reset_on_drop.clone();
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
        }
    }
    debug!(%peer, "fake-engine connection closed");
}

/// The TCP stream of one connection; closes with RST (zero linger) when a `Reset` fault asked for it.
struct ConnIo {
    inner: TcpStream,
    reset_on_drop: Arc<AtomicBool>,
}

impl Drop for ConnIo {
    fn drop(&mut self) {
        if self.reset_on_drop.load(Ordering::SeqCst) {
            let _ = self.inner.set_zero_linger();
        }
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
