//! The manager monitor's `/proc` parsers on arbitrary file contents: `/proc/PID/stat`
//! (`parse_stat_start_time`), `/proc/PID/status` (`parse_status`), `/proc/PID/net/tcp{,6}`
//! (`net_tcp::parse_table`, `parse_line`, `parse_endpoint`) and an fd's link target
//! (`parse_socket_link`).
//!
//! Input: `STAT \0 STATUS \0 TCP \0 LINK` (bytes, read lossily as the monitor reads them).
//! Invariants: no panic; a parsed table has one socket per data line and each line parses
//! alone to the same socket; a parsed socket inode is the
//! one a canonical link names; memory figures are whole KiB.
#![no_main]

use libfuzzer_sys::fuzz_target;
use longhorn_guard_manager_monitor::net_tcp::{parse_endpoint, parse_line, parse_table};
use longhorn_guard_manager_monitor::procfs::{
    parse_socket_link, parse_stat_start_time, parse_status,
};

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(4, |b| *b == 0).map(String::from_utf8_lossy);
    let stat = parts.next().unwrap_or_default();
    let status = parts.next().unwrap_or_default();
    let tcp = parts.next().unwrap_or_default();
    let link = parts.next().unwrap_or_default();

    let _ = parse_stat_start_time(&stat);
    if let Some((rss, hwm, _threads)) = parse_status(&status) {
        assert!(rss % 1024 == 0 || rss == u64::MAX);
        assert!(hwm % 1024 == 0 || hwm == u64::MAX);
    }
    if let Ok(sockets) = parse_table(&tcp) {
        let lines: Vec<&str> = tcp
            .lines()
            .filter(|l| {
                let t = l.trim_start();
                !t.is_empty() && !t.starts_with("sl ")
            })
            .collect();
        assert_eq!(sockets.len(), lines.len());
        for (line, socket) in lines.iter().zip(&sockets) {
            assert_eq!(parse_line(line).as_ref(), Ok(socket));
            assert!(!socket.state.as_str().is_empty());
        }
    }
    for token in tcp.split_whitespace().take(64) {
        let _ = parse_endpoint(token);
    }
    if let Some(inode) = parse_socket_link(&link) {
        assert_eq!(parse_socket_link(&format!("socket:[{inode}]")), Some(inode));
    }
});
