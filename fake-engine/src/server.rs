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
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::service::Routes;
use tonic_health::pb::health_server::HealthServer;
use tracing::{debug, info, warn};

use crate::health::AlwaysServing;
use crate::service::ProxyService;
use crate::state::FakeEngine;
use crate::tasks::{TaskRegistry, TrackedExecutor};
use crate::tls::FakeTls;

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
    let _open = engine.connection_opened();
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
    drop(engine);
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

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection's byte stream, in plaintext (h2c) or TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => tls.get_ref().0,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// The stream of one connection; closes with RST (zero linger) when a `Reset` fault asked for it.
struct ConnIo {
    inner: Stream,
    reset_on_drop: Arc<AtomicBool>,
}

impl Drop for ConnIo {
    fn drop(&mut self) {
        if self.reset_on_drop.load(Ordering::SeqCst) {
            let _ = self.inner.tcp().set_zero_linger();
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
