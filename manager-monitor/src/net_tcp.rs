//! Parser for `/proc/<pid>/net/tcp` and `/proc/<pid>/net/tcp6`.
//!
//! Each data line looks like
//! `0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 12345 1 ...`:
//! local and remote address as hex words printed in host byte order, ports as hex numbers, the
//! state as a hex byte (`include/net/tcp_states.h`), and the socket inode in the 10th column.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Linux TCP states (`include/net/tcp_states.h`), named as the kernel names them, lowercased.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TcpState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
}

impl TcpState {
    /// Every state, in kernel order.
    pub const ALL: [TcpState; 12] = [
        TcpState::Established,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::Listen,
        TcpState::Closing,
        TcpState::NewSynRecv,
    ];

    /// The kernel's numeric code (`TCP_ESTABLISHED` = 1, ...).
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1..=12 => Some(Self::ALL[usize::from(code - 1)]),
            _ => None,
        }
    }

    /// The label value: the kernel's name lowercased (`established`, `close_wait`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            TcpState::Established => "established",
            TcpState::SynSent => "syn_sent",
            TcpState::SynRecv => "syn_recv",
            TcpState::FinWait1 => "fin_wait1",
            TcpState::FinWait2 => "fin_wait2",
            TcpState::TimeWait => "time_wait",
            TcpState::Close => "close",
            TcpState::CloseWait => "close_wait",
            TcpState::LastAck => "last_ack",
            TcpState::Listen => "listen",
            TcpState::Closing => "closing",
            TcpState::NewSynRecv => "new_syn_recv",
        }
    }

    /// Whether a socket in this state still occupies a connection slot of its owner
    /// (everything but `listen`, `time_wait` and `close`, which no process fd holds open).
    pub fn is_connection(self) -> bool {
        !matches!(
            self,
            TcpState::Listen | TcpState::TimeWait | TcpState::Close
        )
    }
}

impl std::fmt::Display for TcpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One socket line of `/proc/net/tcp{,6}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpSocket {
    pub local: IpAddr,
    pub local_port: u16,
    /// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are given as the IPv4 address.
    pub remote: IpAddr,
    pub remote_port: u16,
    pub state: TcpState,
    /// 0 for sockets no fd refers to (e.g. `time_wait`).
    pub inode: u64,
}

/// Why a line could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed /proc/net/tcp line ({what}): {line:?}")]
pub struct ParseError {
    pub what: &'static str,
    pub line: String,
}

fn bad(what: &'static str, line: &str) -> ParseError {
    ParseError {
        what,
        line: line.chars().take(200).collect(),
    }
}

/// Parses `ADDR:PORT` where ADDR is 8 (IPv4) or 32 (IPv6) hex digits in host word order.
pub fn parse_endpoint(s: &str) -> Option<(IpAddr, u16)> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match addr.len() {
        8 => {
            let word = u32::from_str_radix(addr, 16).ok()?;
            IpAddr::V4(Ipv4Addr::from(word.to_ne_bytes()))
        }
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_exact_mut(4).enumerate() {
                let hex = addr.get(i * 8..i * 8 + 8)?;
                let word = u32::from_str_radix(hex, 16).ok()?;
                chunk.copy_from_slice(&word.to_ne_bytes());
            }
            let v6 = Ipv6Addr::from(bytes);
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }
        }
        _ => return None,
    };
    Some((ip, port))
}

/// Parses one data line. The header line (`sl local_address ...`) is an error; use
/// [`parse_table`] for whole files.
pub fn parse_line(line: &str) -> Result<TcpSocket, ParseError> {
    let mut fields = line.split_whitespace();
    let slot = fields.next().ok_or_else(|| bad("empty line", line))?;
    if !slot.ends_with(':') {
        return Err(bad("slot", line));
    }
    let (local, local_port) = fields
        .next()
        .and_then(parse_endpoint)
        .ok_or_else(|| bad("local address", line))?;
    let (remote, remote_port) = fields
        .next()
        .and_then(parse_endpoint)
        .ok_or_else(|| bad("remote address", line))?;
    let state = fields
        .next()
        .and_then(|s| u8::from_str_radix(s, 16).ok())
        .and_then(TcpState::from_code)
        .ok_or_else(|| bad("state", line))?;
    // tx_queue:rx_queue, tr:tm->when, retrnsmt, uid, timeout, then the inode.
    let inode = fields
        .nth(5)
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| bad("inode", line))?;
    Ok(TcpSocket {
        local,
        local_port,
        remote,
        remote_port,
        state,
        inode,
    })
}

/// Parses a whole `/proc/net/tcp{,6}` file: skips the header and blank lines. A malformed line
/// is returned as an error (the kernel format is fixed; garbage means we read the wrong file).
pub fn parse_table(text: &str) -> Result<Vec<TcpSocket>, ParseError> {
    let mut out = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with("sl ") {
            continue;
        }
        out.push(parse_line(line)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Literal lines as a little-endian kernel prints them.
    const V4_LISTEN: &str = "   0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31337 1 0000000000000000 100 0 0 10 0";
    const V4_ESTAB: &str = "   3: 0100007F:A2C4 0100007F:2135 01 00000000:00000000 02:000A7D3E 00000000  1000        0 4242424 2 0000000000000000 20 4 30 10 -1";
    const V4_TIME_WAIT: &str = "  12: 0A00020F:D3A8 6E1F000A:2135 06 00000000:00000000 03:00001502 00000000     0        0 0 3 0000000000000000";
    const V4_CLOSE_WAIT: &str = "   7: 0100007F:8ACE 0100007F:2136 08 00000000:00000001 00:00000000 00000000  1000        0 555 1 0000000000000000 20 4 1 10 -1";
    const V6_ESTAB: &str = "   1: 00000000000000000000000001000000:E6D2 00000000000000000000000001000000:2135 01 00000000:00000000 00:00000000 00000000  1000        0 777 1 0000000000000000 20 4 0 10 -1";
    const V6_MAPPED: &str = "   2: 0000000000000000FFFF00000100007F:C000 0000000000000000FFFF00000F02000A:2137 02 00000001:00000000 01:00000064 00000000     0        0 888 1 0000000000000000 100 0 0 10 0";
    const V6_GLOBAL: &str = "   4: B80D0120000000000000000001000000:0050 B80D012000000000000000000200ADDE:1F95 08 00000000:00000000 00:00000000 00000000     0        0 999 1 0000000000000000 20 4 0 10 -1";

    #[test]
    fn every_state_code_round_trips_and_unknown_codes_are_refused() {
        for (i, state) in TcpState::ALL.iter().enumerate() {
            let code = u8::try_from(i + 1).unwrap_or(0);
            assert_eq!(TcpState::from_code(code), Some(*state));
        }
        assert_eq!(TcpState::from_code(0), None);
        assert_eq!(TcpState::from_code(13), None);
        assert_eq!(TcpState::CloseWait.as_str(), "close_wait");
        assert_eq!(TcpState::TimeWait.as_str(), "time_wait");
        assert_eq!(TcpState::SynSent.as_str(), "syn_sent");
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn ipv4_lines() {
        let s = parse_line(V4_LISTEN).expect("listen line");
        assert_eq!(s.local, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(s.local_port, 8000);
        assert_eq!(s.remote, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert_eq!(s.remote_port, 0);
        assert_eq!(s.state, TcpState::Listen);
        assert_eq!(s.inode, 31337);

        let s = parse_line(V4_ESTAB).expect("established line");
        assert_eq!(s.local_port, 0xA2C4);
        assert_eq!(s.remote, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(s.remote_port, 8501);
        assert_eq!(s.state, TcpState::Established);
        assert_eq!(s.inode, 4_242_424);

        let s = parse_line(V4_TIME_WAIT).expect("time_wait line");
        assert_eq!(s.local, IpAddr::V4(Ipv4Addr::new(15, 2, 0, 10)));
        assert_eq!(s.remote, IpAddr::V4(Ipv4Addr::new(10, 0, 31, 110)));
        assert_eq!(s.remote_port, 8501);
        assert_eq!(s.state, TcpState::TimeWait);
        assert_eq!(s.inode, 0);

        let s = parse_line(V4_CLOSE_WAIT).expect("close_wait line");
        assert_eq!(s.remote_port, 8502);
        assert_eq!(s.state, TcpState::CloseWait);
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn ipv6_lines_including_ipv4_mapped() {
        let s = parse_line(V6_ESTAB).expect("v6 line");
        assert_eq!(s.local, IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(s.remote, IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(s.remote_port, 8501);
        assert_eq!(s.inode, 777);

        let s = parse_line(V6_MAPPED).expect("mapped line");
        assert_eq!(s.local, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(s.remote, IpAddr::V4(Ipv4Addr::new(10, 0, 2, 15)));
        assert_eq!(s.remote_port, 8503);
        assert_eq!(s.state, TcpState::SynSent);

        let s = parse_line(V6_GLOBAL).expect("global v6 line");
        let want_local: Ipv6Addr = "2001:db8::1".parse().expect("literal");
        let want_remote: Ipv6Addr = "2001:db8::dead:2".parse().expect("literal");
        assert_eq!(s.local, IpAddr::V6(want_local));
        assert_eq!(s.remote, IpAddr::V6(want_remote));
        assert_eq!(s.remote_port, 8085);
        assert_eq!(s.state, TcpState::CloseWait);
    }

    #[test]
    fn whole_table_skips_header_and_blank_lines() {
        let text = format!(
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n{V4_LISTEN}\n\n{V4_ESTAB}\n{V4_TIME_WAIT}\n"
        );
        let table = parse_table(&text).expect("table");
        assert_eq!(table.len(), 3);
        assert_eq!(
            table.iter().map(|s| s.inode).collect::<Vec<_>>(),
            vec![31337, 4_242_424, 0]
        );
    }

    #[test]
    fn malformed_lines_are_errors_not_panics() {
        for line in [
            "0: zz:1F40 00000000:0000 0A 0:0 0:0 0 0 0 1",
            "0: 0100007F:1F40 00000000:0000 FF 00000000:00000000 00:00000000 00000000 0 0 1 1",
            "0: 0100007F:1F40 00000000:0000 01 00000000:00000000 00:00000000 00000000 0 0",
            "0: 0100007F 00000000:0000 01 00000000:00000000 00:00000000 00000000 0 0 1",
            "0: 0100007F:1F40 000000:0000 01 00000000:00000000 00:00000000 00000000 0 0 1",
            "no-colon 0100007F:1F40 00000000:0000 01 00000000:00000000 00:00000000 00000000 0 0 1",
            "",
        ] {
            assert!(parse_line(line).is_err(), "accepted {line:?}");
        }
        // A multi-byte character where hex digits are expected must not panic on slicing.
        assert!(parse_endpoint("0000000000000000000000000000000é:0050").is_none());
    }

    #[test]
    fn connection_states() {
        assert!(TcpState::Established.is_connection());
        assert!(TcpState::CloseWait.is_connection());
        assert!(TcpState::SynSent.is_connection());
        assert!(!TcpState::TimeWait.is_connection());
        assert!(!TcpState::Listen.is_connection());
    }
}
