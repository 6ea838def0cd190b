//! Reading one process through procfs: discovery by name or command line, identity (pid +
//! start time), status, fds and its TCP sockets. Everything here is external input: a process
//! can exit between any two reads, so every read maps "gone" to [`Error::ProcessVanished`].
//! No file or directory handle outlives the function that opened it.

use std::collections::{BTreeMap, HashSet};
use std::io::ErrorKind;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use crate::config::ProcessMatch;
use crate::error::{Error, Result};
use crate::net_tcp::{self, TcpState};

/// A process is the same process only while both its pid and its start time stay the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProcessIdentity {
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22).
    pub start_time_ticks: u64,
    pub pid: i32,
}

impl std::fmt::Display for ProcessIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} (start time {} ticks)",
            self.pid, self.start_time_ticks
        )
    }
}

/// What one read of the process gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessSample {
    pub identity: ProcessIdentity,
    /// `VmRSS` in bytes.
    pub resident_memory_bytes: u64,
    /// `VmHWM` (peak RSS) in bytes.
    pub resident_memory_peak_bytes: u64,
    pub threads: u64,
    pub open_fds: u64,
    /// Sockets this process owns whose remote port is in `im_ports`, by (remote port, state).
    pub im_connections: BTreeMap<(u16, TcpState), u64>,
}

impl ProcessSample {
    /// Owned sockets to `port` in `state`.
    pub fn connections(&self, port: u16, state: TcpState) -> u64 {
        self.im_connections
            .get(&(port, state))
            .copied()
            .unwrap_or(0)
    }

    /// Owned sockets to `port` that still hold a connection (every state but listen,
    /// time_wait and close): what a leaked gRPC client keeps open.
    pub fn open_connections_to(&self, port: u16) -> u64 {
        self.open_connections_where(|p| p == port)
    }

    /// Owned sockets to every instance-manager port that still hold a connection.
    pub fn open_connections(&self) -> u64 {
        self.open_connections_where(|_| true)
    }

    fn open_connections_where(&self, port: impl Fn(u16) -> bool) -> u64 {
        self.im_connections
            .iter()
            .filter(|((p, s), _)| port(*p) && s.is_connection())
            .map(|(_, n)| *n)
            .sum()
    }
}

fn map_io(pid: i32, path: &Path, e: std::io::Error) -> Error {
    match e.kind() {
        // ESRCH surfaces as NotFound or as a raw "No such process"; both mean it exited.
        ErrorKind::NotFound => Error::ProcessVanished { pid },
        ErrorKind::PermissionDenied => Error::PermissionDenied {
            path: path.to_owned(),
        },
        _ if e.raw_os_error() == Some(3) => Error::ProcessVanished { pid },
        _ => Error::ProcRead {
            path: path.to_owned(),
            source: e,
        },
    }
}

fn read_string(pid: i32, path: &Path) -> Result<String> {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .map_err(|e| map_io(pid, path, e))
}

/// Start time (field 22) from `/proc/PID/stat`; the comm field may contain spaces and
/// parentheses, so fields are counted after the last `)`.
pub fn parse_stat_start_time(stat: &str) -> Option<u64> {
    let after = stat.get(stat.rfind(')')? + 1..)?;
    // after ")" come field 3 (state) onwards; start time is field 22 → index 19.
    after.split_whitespace().nth(19)?.parse().ok()
}

/// `(VmRSS bytes, VmHWM bytes, Threads)` from `/proc/PID/status`.
pub fn parse_status(status: &str) -> Option<(u64, u64, u64)> {
    let mut rss = None;
    let mut hwm = None;
    let mut threads = None;
    for line in status.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let number = || {
            value
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
        };
        match key {
            "VmRSS" => rss = number().map(|kb| kb.saturating_mul(1024)),
            "VmHWM" => hwm = number().map(|kb| kb.saturating_mul(1024)),
            "Threads" => threads = number(),
            _ => {}
        }
    }
    Some((rss?, hwm?, threads?))
}

/// The inode of a socket from an fd's link target (`socket:[INODE]`); `None` for any other
/// file.
pub fn parse_socket_link(target: &str) -> Option<u64> {
    target
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The process table under `proc_root`.
#[derive(Clone, Debug)]
pub struct Procfs {
    root: PathBuf,
}

impl Procfs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn pid_dir(&self, pid: i32) -> PathBuf {
        self.root.join(pid.to_string())
    }

    /// The identity of `pid`, or `ProcessVanished`.
    pub fn identity(&self, pid: i32) -> Result<ProcessIdentity> {
        let path = self.pid_dir(pid).join("stat");
        let stat = read_string(pid, &path)?;
        let start_time_ticks = parse_stat_start_time(&stat).ok_or_else(|| Error::ProcParse {
            path: path.clone(),
            what: "no start time (field 22)".into(),
        })?;
        Ok(ProcessIdentity {
            start_time_ticks,
            pid,
        })
    }

    /// Every process matching `matcher`, oldest first (earliest start time, then lowest pid).
    /// Processes that exit or cannot be read during the scan are left out.
    pub fn find(&self, matcher: &ProcessMatch) -> Result<Vec<ProcessIdentity>> {
        let entries = std::fs::read_dir(&self.root).map_err(|e| Error::ProcRead {
            path: self.root.clone(),
            source: e,
        })?;
        let mut found = Vec::new();
        for entry in entries {
            let Ok(entry) = entry else { continue };
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let dir = entry.path();
            let comm = std::fs::read(dir.join("comm"))
                .map(|b| {
                    String::from_utf8_lossy(&b)
                        .trim_end_matches('\n')
                        .to_owned()
                })
                .unwrap_or_default();
            let argv: Vec<String> = std::fs::read(dir.join("cmdline"))
                .map(|b| {
                    b.split(|c| *c == 0)
                        .filter(|a| !a.is_empty())
                        .map(|a| String::from_utf8_lossy(a).into_owned())
                        .collect()
                })
                .unwrap_or_default();
            if comm.is_empty() && argv.is_empty() {
                continue;
            }
            if matcher.matches(&comm, &argv)
                && let Ok(id) = self.identity(pid)
            {
                found.push(id);
            }
        }
        found.sort();
        Ok(found)
    }

    /// Reads status, fds and sockets of `id`, then re-checks the identity so a pid reused
    /// mid-read is reported as vanished rather than mixed into the sample.
    pub fn sample(
        &self,
        id: ProcessIdentity,
        im_ports: &RangeInclusive<u16>,
    ) -> Result<ProcessSample> {
        let pid = id.pid;
        let dir = self.pid_dir(pid);

        let status_path = dir.join("status");
        let status = read_string(pid, &status_path)?;
        let (resident_memory_bytes, resident_memory_peak_bytes, threads) = parse_status(&status)
            .ok_or_else(|| Error::ProcParse {
                path: status_path.clone(),
                what: "missing VmRSS, VmHWM or Threads (a zombie or kernel thread?)".into(),
            })?;

        let fd_dir = dir.join("fd");
        let mut open_fds = 0u64;
        let mut socket_inodes = HashSet::new();
        {
            let entries = std::fs::read_dir(&fd_dir).map_err(|e| map_io(pid, &fd_dir, e))?;
            for entry in entries {
                let entry = match entry {
                    Ok(entry) => entry,
                    Err(e) => return Err(map_io(pid, &fd_dir, e)),
                };
                open_fds += 1;
                // An fd closed between readdir and readlink is simply not a socket any more.
                if let Ok(target) = std::fs::read_link(entry.path())
                    && let Some(inode) = target.to_str().and_then(parse_socket_link)
                {
                    socket_inodes.insert(inode);
                }
            }
        }

        let mut im_connections = BTreeMap::new();
        for table in ["tcp", "tcp6"] {
            let path = dir.join("net").join(table);
            let text = match std::fs::read(&path) {
                Ok(b) => String::from_utf8_lossy(&b).into_owned(),
                // tcp6 is absent on kernels without IPv6.
                Err(e) if e.kind() == ErrorKind::NotFound && table == "tcp6" && dir.exists() => {
                    continue;
                }
                Err(e) => return Err(map_io(pid, &path, e)),
            };
            let sockets = net_tcp::parse_table(&text).map_err(|e| Error::ProcParse {
                path: path.clone(),
                what: e.to_string(),
            })?;
            for s in sockets {
                if s.inode != 0
                    && socket_inodes.contains(&s.inode)
                    && im_ports.contains(&s.remote_port)
                {
                    *im_connections.entry((s.remote_port, s.state)).or_insert(0) += 1;
                }
            }
        }

        if self.identity(pid)? != id {
            return Err(Error::ProcessVanished { pid });
        }
        Ok(ProcessSample {
            identity: id,
            resident_memory_bytes,
            resident_memory_peak_bytes,
            threads,
            open_fds,
            im_connections,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_start_time_survives_odd_comm() {
        let stat = "4242 (longhorn (x) y) S 1 4242 4242 0 -1 4194560 1 0 0 0 5 6 0 0 20 0 31 0 987654 123 456";
        assert_eq!(parse_stat_start_time(stat), Some(987_654));
        assert_eq!(parse_stat_start_time("4242 (x) S 1 2"), None);
        assert_eq!(parse_stat_start_time("garbage"), None);
    }

    #[test]
    fn status_fields() {
        let status =
            "Name:\tlonghorn-manage\nVmHWM:\t  20480 kB\nVmRSS:\t   10240 kB\nThreads:\t37\n";
        assert_eq!(parse_status(status), Some((10_485_760, 20_971_520, 37)));
        assert_eq!(parse_status("Name:\tkthreadd\nThreads:\t1\n"), None);
    }

    #[test]
    fn open_connections_exclude_time_wait() {
        let mut c = BTreeMap::new();
        c.insert((8501, TcpState::Established), 5);
        c.insert((8501, TcpState::CloseWait), 2);
        c.insert((8501, TcpState::TimeWait), 9);
        c.insert((8500, TcpState::Established), 1);
        let s = ProcessSample {
            identity: ProcessIdentity {
                start_time_ticks: 1,
                pid: 1,
            },
            resident_memory_bytes: 0,
            resident_memory_peak_bytes: 0,
            threads: 1,
            open_fds: 0,
            im_connections: c,
        };
        assert_eq!(s.open_connections_to(8501), 7);
        assert_eq!(s.connections(8501, TcpState::TimeWait), 9);
        assert_eq!(s.connections(8502, TcpState::Established), 0);
    }
}
