//! The long run's API server outage: the guard's processes reach the kube-apiserver through a
//! loopback TCP relay the run can cut. Cut, every open connection is closed and every new one
//! is closed on accept (as when the API server's process is down: watches break, requests
//! fail); restored, connections pass again. The demo's own clients (the simulated controller,
//! the storm) go to the API server directly: only the guard loses it.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_yaml::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// A relay to the API server that can be cut.
pub struct ApiRelay {
    pub addr: SocketAddr,
    cut: watch::Sender<bool>,
    refused: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl ApiRelay {
    /// Listens on 127.0.0.1 (a free port) and relays to `upstream` (loopback only).
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        if !upstream.ip().is_loopback() {
            bail!(
                "the API server {upstream} is not on loopback; the long run's outage relay only relays to 127.0.0.0/8"
            );
        }
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("binding the API relay on 127.0.0.1")?;
        let addr = listener.local_addr()?;
        let (cut, cut_rx) = watch::channel(false);
        let refused = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(relay(listener, upstream, cut_rx, refused.clone()));
        Ok(Self {
            addr,
            cut,
            refused,
            task,
        })
    }

    /// Closes every relayed connection and refuses new ones until [`Self::restore`].
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn restore(&self) {
        self.cut.send_replace(false);
    }

    /// Connections closed on accept while cut.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

impl Drop for ApiRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(
    listener: TcpListener,
    upstream: SocketAddr,
    cut: watch::Receiver<bool>,
    refused: Arc<AtomicU64>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((mut client, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                if *cut.borrow() {
                    refused.fetch_add(1, Ordering::Relaxed);
                    continue; // dropped: closed
                }
                let mut cut = cut.clone();
                connections.spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.wait_for(|c| *c) => {}
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// The `server` URL of the kubeconfig's current context (else its first cluster).
fn current_server(config: &Value) -> Option<(usize, String)> {
    let clusters = config.get("clusters")?.as_sequence()?;
    let current = config.get("current-context").and_then(Value::as_str);
    let cluster_name = current.and_then(|c| {
        config
            .get("contexts")?
            .as_sequence()?
            .iter()
            .find(|x| x.get("name").and_then(Value::as_str) == Some(c))?
            .get("context")?
            .get("cluster")?
            .as_str()
    });
    let index = match cluster_name {
        Some(name) => clusters
            .iter()
            .position(|c| c.get("name").and_then(Value::as_str) == Some(name))?,
        None => 0,
    };
    let server = clusters
        .get(index)?
        .get("cluster")?
        .get("server")?
        .as_str()?;
    Some((index, server.to_string()))
}

/// `https://HOST:PORT[/...]` → its socket address (HOST an IPv4 literal or `localhost`).
pub fn server_addr(server: &str) -> anyhow::Result<SocketAddr> {
    let rest = server
        .strip_prefix("https://")
        .with_context(|| format!("API server URL {server:?} is not https://"))?;
    let host_port = rest.split('/').next().unwrap_or_default();
    let (host, port) = host_port
        .rsplit_once(':')
        .with_context(|| format!("API server URL {server:?} has no port"))?;
    let ip: Ipv4Addr = if host == "localhost" {
        Ipv4Addr::LOCALHOST
    } else {
        host.parse()
            .with_context(|| format!("API server host {host:?} is not an IPv4 address"))?
    };
    let port: u16 = port
        .parse()
        .with_context(|| format!("API server port {port:?} is not a port"))?;
    Ok(SocketAddr::from((ip, port)))
}

/// Reads the kubeconfig at `path`: its API server's address, and the same kubeconfig with
/// that server's port replaced by `relay`'s (same host: the serving certificate still fits).
pub fn relayed_kubeconfig(
    path: &Path,
    relay_port: Option<u16>,
) -> anyhow::Result<(SocketAddr, String)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let mut config: Value = serde_yaml::from_str(&text)
        .with_context(|| format!("parsing kubeconfig {}", path.display()))?;
    let (index, server) = current_server(&config)
        .with_context(|| format!("kubeconfig {} names no cluster server", path.display()))?;
    let addr = server_addr(&server)?;
    if let Some(port) = relay_port {
        let relayed = format!("https://{}:{port}", server_host(&server));
        if let Some(s) = config
            .get_mut("clusters")
            .and_then(|c| c.get_mut(index))
            .and_then(|c| c.get_mut("cluster"))
            .and_then(|c| c.get_mut("server"))
        {
            *s = Value::String(relayed);
        }
    }
    Ok((addr, serde_yaml::to_string(&config)?))
}

fn server_host(server: &str) -> &str {
    let rest = server.strip_prefix("https://").unwrap_or(server);
    let host_port = rest.split('/').next().unwrap_or_default();
    host_port.rsplit_once(':').map_or(host_port, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const KUBECONFIG: &str = "apiVersion: v1\nkind: Config\ncurrent-context: b\nclusters:\n\
        - name: a\n  cluster:\n    server: https://127.0.0.1:1111\n\
        - name: bc\n  cluster:\n    server: https://127.0.0.1:6443\n    certificate-authority-data: Zm9v\n\
        contexts:\n- name: b\n  context:\n    cluster: bc\n    user: u\n";

    #[test]
    fn the_current_clusters_server_is_relayed() {
        let dir = std::env::temp_dir().join(format!("lhg-relay-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("kubeconfig");
        std::fs::write(&path, KUBECONFIG).unwrap();
        let (addr, relayed) = relayed_kubeconfig(&path, Some(7000)).unwrap();
        assert_eq!(addr, "127.0.0.1:6443".parse().unwrap());
        assert!(
            relayed.contains("server: https://127.0.0.1:7000"),
            "{relayed}"
        );
        assert!(
            relayed.contains("server: https://127.0.0.1:1111"),
            "{relayed}"
        );
        assert!(relayed.contains("certificate-authority-data: Zm9v"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_servers_are_errors() {
        assert!(server_addr("http://127.0.0.1:1").is_err());
        assert!(server_addr("https://127.0.0.1").is_err());
        assert!(server_addr("https://example.com:443").is_err());
        assert_eq!(
            server_addr("https://localhost:6443/").unwrap(),
            "127.0.0.1:6443".parse().unwrap()
        );
    }

    async fn echo() -> SocketAddr {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(s: &mut TcpStream) -> std::io::Result<[u8; 4]> {
        s.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await?;
        Ok(buf)
    }

    #[tokio::test]
    async fn cut_closes_open_connections_and_refuses_new_ones_until_restored() {
        let relay = ApiRelay::start(echo().await).await.unwrap();
        let mut open = TcpStream::connect(relay.addr).await.unwrap();
        assert_eq!(&round_trip(&mut open).await.unwrap(), b"ping");
        relay.cut();
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), open.read(&mut buf))
            .await
            .expect("the open connection is closed on cut");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        let mut new = TcpStream::connect(relay.addr).await.unwrap();
        assert!(round_trip(&mut new).await.is_err());
        assert_eq!(relay.refused(), 1);
        relay.restore();
        let mut again = TcpStream::connect(relay.addr).await.unwrap();
        assert_eq!(&round_trip(&mut again).await.unwrap(), b"ping");
    }

    #[tokio::test]
    async fn only_loopback_upstreams() {
        assert!(
            ApiRelay::start("10.0.0.1:6443".parse().unwrap())
                .await
                .is_err()
        );
    }
}
