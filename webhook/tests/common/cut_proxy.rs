//! A TCP proxy on loopback between a test's webhooks and the API server, which the test can
//! cut (open connections dropped, new ones closed at once) and restore.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// A TCP proxy on 127.0.0.1 in front of `upstream` that can be cut and restored.
pub struct CutProxy {
    pub addr: SocketAddr,
    state: Arc<Mutex<ProxyConns>>,
    cut: Arc<AtomicBool>,
    pub refused: Arc<AtomicU64>,
    accept: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct ProxyConns {
    conns: JoinSet<()>,
}

impl CutProxy {
    /// A proxy in front of `cluster`'s API server, and a client of that cluster through it.
    pub async fn in_front_of(
        cluster: &longhorn_guard_testkit::TestCluster,
    ) -> Result<(Self, kube::Client)> {
        let api_url: http::Uri = cluster.api_url().parse()?;
        let upstream: SocketAddr = api_url
            .authority()
            .context("API server URL without authority")?
            .as_str()
            .parse()?;
        let proxy = Self::start(upstream).await?;
        let client = cluster.client_via(&format!("https://{}", proxy.addr))?;
        Ok((proxy, client))
    }

    pub async fn start(upstream: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(ProxyConns::default()));
        let cut = Arc::new(AtomicBool::new(false));
        let refused = Arc::new(AtomicU64::new(0));
        let accept = tokio::spawn({
            let (state, cut, refused) = (state.clone(), cut.clone(), refused.clone());
            async move {
                loop {
                    let Ok((inbound, _)) = listener.accept().await else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    // Checked and spawned under the lock `cut()` takes: no connection slips
                    // through a cut.
                    let mut s = state.lock().unwrap();
                    while s.conns.try_join_next().is_some() {}
                    if cut.load(Ordering::SeqCst) {
                        refused.fetch_add(1, Ordering::Relaxed);
                        drop(inbound);
                        continue;
                    }
                    s.conns.spawn(async move {
                        let mut inbound = inbound;
                        if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                }
            }
        });
        Ok(Self {
            addr,
            state,
            cut,
            refused,
            accept,
        })
    }

    /// Drops every open connection and closes new ones as soon as they are accepted.
    pub fn cut(&self) {
        let mut s = self.state.lock().unwrap();
        self.cut.store(true, Ordering::SeqCst);
        s.conns.abort_all();
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.state.lock().unwrap().conns.abort_all();
    }
}
