//! Test stand-in for longhorn-manager (its comm is `longhorn-manage`, like the real one's).
//! Never deploy it. It serves a fake Go pprof goroutine endpoint and a fake `/metrics` on an
//! ephemeral loopback port, and obeys one command per stdin line, answering `ok ...` or `err ...`:
//!
//! - `connect ADDR:PORT N`: open and hold N more TCP connections to ADDR:PORT
//! - `drop PORT N`: close N held connections whose remote port is PORT
//! - `grow MIB`: allocate and touch MIB more MiB
//! - `threads N`: start N more idle threads
//! - `goroutines N`: the total the pprof endpoint reports
//! - `proxy N`: the `longhorn_instance_manager_proxy_grpc_connection` total for `--node`
//! - `leak ADDR:PORT PER_SECOND MIB_PER_SECOND`: from now on, in the background, open
//!   PER_SECOND connections a second to ADDR:PORT and never close them, and grow by
//!   MIB_PER_SECOND MiB a second (v1.7.2's leak: one client per stuck Backup per reconcile)
//! - `churn ADDR:PORT N`: from now on, in the background, open N connections, hold them
//!   ~200 ms and close them all, again and again (a busy, healthy manager)
//! - `calm`: stop `leak` and `churn` (what leaked stays held, as in a manager whose stuck
//!   Backups were pruned; answers `ok held=N`)
//! - `exit`
//!
//! Arguments: `--node NAME` (default `node-1`), `--instance ID` (only to tell test instances
//! apart in the command line). Prints `ready pid=PID http=PORT` when listening.

use std::io::{BufRead, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

struct Fake {
    node: String,
    goroutines: AtomicI64,
    proxy: AtomicI64,
}

fn serve(listener: TcpListener, fake: Arc<Fake>) {
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let fake = Arc::clone(&fake);
        std::thread::spawn(move || {
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&req);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let response = if path == "/debug/pprof/goroutine?debug=1" {
                let body = format!(
                    "goroutine profile: total {}\n1 @ 0x43b0d6 0x40a5cc\n#\t0x43b0d5\truntime.gopark+0x115\n",
                    fake.goroutines.load(Ordering::SeqCst)
                );
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else if path == "/metrics" {
                let total = fake.proxy.load(Ordering::SeqCst);
                let (a, b) = if total >= 1 {
                    (total - 1, 1)
                } else {
                    (total, 0)
                };
                let body = format!(
                    "# HELP longhorn_instance_manager_proxy_grpc_connection The number of proxy gRPC connection of this longhorn instance manager\n\
                     # TYPE longhorn_instance_manager_proxy_grpc_connection gauge\n\
                     longhorn_instance_manager_proxy_grpc_connection{{instance_manager=\"instance-manager-a\",instance_manager_type=\"aio\",node=\"{n}\"}} {a}\n\
                     longhorn_instance_manager_proxy_grpc_connection{{instance_manager=\"instance-manager-b\",instance_manager_type=\"aio\",node=\"{n}\"}} {b}\n\
                     longhorn_instance_manager_proxy_grpc_connection{{instance_manager=\"instance-manager-c\",instance_manager_type=\"aio\",node=\"other-node\"}} 1000\n\
                     # HELP longhorn_node_count_total Total number of nodes\n\
                     # TYPE longhorn_node_count_total gauge\n\
                     longhorn_node_count_total 3\n",
                    n = fake.node
                );
                // Chunked, as Go's net/http sends bodies it did not size up front.
                let mut chunked = String::new();
                for part in body.as_bytes().chunks(100) {
                    chunked.push_str(&format!(
                        "{:x}\r\n{}\r\n",
                        part.len(),
                        String::from_utf8_lossy(part)
                    ));
                }
                chunked.push_str("0\r\n\r\n");
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{chunked}"
                )
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_owned()
            };
            let _ = conn.write_all(response.as_bytes());
        });
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let node = args
        .windows(2)
        .find(|w| w[0] == "--node")
        .map(|w| w[1].clone())
        .unwrap_or_else(|| "node-1".to_owned());
    let fake = Arc::new(Fake {
        node,
        goroutines: AtomicI64::new(0),
        proxy: AtomicI64::new(0),
    });
    let listener = match TcpListener::bind("127.0.0.1:0") {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bind: {e}");
            std::process::exit(1);
        }
    };
    let http_port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    {
        let fake = Arc::clone(&fake);
        std::thread::spawn(move || serve(listener, fake));
    }
    println!("ready pid={} http={http_port}", std::process::id());

    let mut process = Process {
        fake,
        held: Vec::new(),
        memory: Vec::new(),
        background: Background::default(),
    };
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let reply = process.command(&line);
        println!("{reply}");
        let _ = std::io::stdout().flush();
    }
}

/// What the fake manager holds on behalf of the test driving it over stdin.
struct Process {
    fake: Arc<Fake>,
    /// Open TCP connections by destination port (a leak the test makes).
    held: Vec<(u16, TcpStream)>,
    memory: Vec<Vec<u8>>,
    background: Background,
}

/// What the `leak` and `churn` threads hold and the flag that stops them.
#[derive(Default)]
struct Background {
    running: Arc<AtomicBool>,
    leaked: Arc<Mutex<Vec<TcpStream>>>,
    memory: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Background {
    fn held(&self) -> usize {
        self.leaked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Starts `tick` every 100 ms on its own thread until `calm`.
    fn every_tenth_second(&self, mut tick: impl FnMut() + Send + 'static) {
        self.running.store(true, Ordering::SeqCst);
        let running = Arc::clone(&self.running);
        std::thread::spawn(move || {
            while running.load(Ordering::SeqCst) {
                tick();
                std::thread::sleep(Duration::from_millis(100));
            }
        });
    }

    fn leak(&self, addr: String, per_second: f64, mib_per_second: f64) {
        let (leaked, memory) = (Arc::clone(&self.leaked), Arc::clone(&self.memory));
        let (mut connections_due, mut bytes_due) = (0.0, 0.0);
        self.every_tenth_second(move || {
            connections_due += per_second / 10.0;
            bytes_due += mib_per_second * 1024.0 * 1024.0 / 10.0;
            while connections_due >= 1.0 {
                connections_due -= 1.0;
                if let Ok(s) = TcpStream::connect(&addr) {
                    leaked
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(s);
                }
            }
            if bytes_due >= 1.0 {
                // Touched, so it is resident.
                memory
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(vec![0x5a; bytes_due as usize]);
                bytes_due = 0.0;
            }
        });
    }

    fn churn(&self, addr: String, n: usize) {
        let mut round = 0u64;
        self.every_tenth_second(move || {
            // Every other tick: open n connections, hold them 200 ms, close them all.
            round += 1;
            if round % 2 == 1 {
                let open: Vec<TcpStream> = (0..n)
                    .filter_map(|_| TcpStream::connect(&addr).ok())
                    .collect();
                std::thread::sleep(Duration::from_millis(200));
                drop(open);
            }
        });
    }
}

impl Process {
    /// One stdin command (`connect ADDR:PORT N`, `drop PORT N`, `grow MIB`, `threads N`,
    /// `goroutines N`, `proxy N`, `exit`) and its one-line reply.
    fn command(&mut self, line: &str) -> String {
        let words: Vec<&str> = line.split_whitespace().collect();
        let number = |i: usize| words.get(i).and_then(|w| w.parse::<i64>().ok());
        match words.as_slice() {
            ["connect", addr, _] => self.connect(addr, number(2)),
            ["drop", port, _] => self.drop_held(port, number(2)),
            ["grow", _] => match number(1).and_then(|m| usize::try_from(m).ok()) {
                Some(mib) => {
                    self.memory.push(vec![0x5a; mib * 1024 * 1024]);
                    format!(
                        "ok mib={}",
                        self.memory.iter().map(Vec::len).sum::<usize>() / (1024 * 1024)
                    )
                }
                None => "err usage: grow MIB".to_owned(),
            },
            ["threads", _] => match number(1) {
                Some(n) => {
                    for _ in 0..n {
                        std::thread::spawn(|| {
                            loop {
                                std::thread::park();
                            }
                        });
                    }
                    "ok".to_owned()
                }
                None => "err usage: threads N".to_owned(),
            },
            ["goroutines", _] => match number(1) {
                Some(n) => {
                    self.fake.goroutines.store(n, Ordering::SeqCst);
                    "ok".to_owned()
                }
                None => "err usage: goroutines N".to_owned(),
            },
            ["proxy", _] => match number(1) {
                Some(n) => {
                    self.fake.proxy.store(n, Ordering::SeqCst);
                    "ok".to_owned()
                }
                None => "err usage: proxy N".to_owned(),
            },
            ["leak", addr, per_second, mib] => {
                match (per_second.parse::<f64>(), mib.parse::<f64>()) {
                    (Ok(per_second), Ok(mib)) if per_second >= 0.0 && mib >= 0.0 => {
                        self.background.leak((*addr).to_owned(), per_second, mib);
                        "ok".to_owned()
                    }
                    _ => "err usage: leak ADDR:PORT PER_SECOND MIB_PER_SECOND".to_owned(),
                }
            }
            ["churn", addr, _] => match number(2).and_then(|n| usize::try_from(n).ok()) {
                Some(n) => {
                    self.background.churn((*addr).to_owned(), n);
                    "ok".to_owned()
                }
                None => "err usage: churn ADDR:PORT N".to_owned(),
            },
            ["calm"] => {
                self.background.running.store(false, Ordering::SeqCst);
                format!("ok held={}", self.background.held())
            }
            ["exit"] => std::process::exit(0),
            _ => format!("err unknown command {line:?}"),
        }
    }

    /// Opens `n` connections to `addr` and holds them.
    fn connect(&mut self, addr: &str, n: Option<i64>) -> String {
        let port = addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok());
        let (Some(n), Some(port)) = (n, port) else {
            return "err usage: connect ADDR:PORT N".to_owned();
        };
        for _ in 0..n {
            match TcpStream::connect(addr) {
                Ok(s) => self.held.push((port, s)),
                Err(e) => return format!("err connect {addr}: {e}"),
            }
        }
        format!("ok held={}", self.held.len())
    }

    /// Closes `n` held connections to `port`.
    fn drop_held(&mut self, port: &str, n: Option<i64>) -> String {
        let (Some(port), Some(n)) = (port.parse::<u16>().ok(), n) else {
            return "err usage: drop PORT N".to_owned();
        };
        let mut left = n;
        self.held.retain(|(p, _)| {
            if *p == port && left > 0 {
                left -= 1;
                false
            } else {
                true
            }
        });
        format!("ok held={}", self.held.len())
    }
}
