//! Longhorn's keepalive enforcement, done at the connection level.
//!
//! The instance manager's gRPC server (grpc-go) is built with
//! `keepalive.EnforcementPolicy{MinTime: 10s, PermitWithoutStream: true}`. grpc-go's server
//! (`internal/transport/http2_server.go`, `handlePing`) then judges every PING the client sends
//! (not the ACKs):
//!
//! - the ping is answered (PING ACK) first;
//! - if the server has sent HEADERS or DATA since the previous ping, the strike count goes back to
//!   0 and this ping is not judged;
//! - otherwise a ping less than `MinTime` after the previous one is a strike (the first ping
//!   never is; `PermitWithoutStream: true` makes idle connections judged the same way);
//! - at the third strike (more than `maxPingStrikes` = 2) the server sends GOAWAY with
//!   `ENHANCE_YOUR_CALM` and debug data `too_many_pings`, and closes the connection.
//!
//! hyper's HTTP/2 server answers pings inside the `h2` crate and exposes neither received pings
//! nor a GOAWAY with a chosen code, so the fake applies the same rule on the connection's bytes:
//! [`FrameScanner`] follows HTTP/2 frame boundaries in both directions (after TLS, so over the
//! plaintext frames), [`PingJudge`] is grpc-go's rule, and the connection writes the GOAWAY frame
//! itself at a frame boundary of the server's output, after hyper has flushed the ping's ACK
//! (see `conn.rs`).

use std::time::Duration;

use tokio::time::Instant;

/// grpc-go's `maxPingStrikes`.
const MAX_PING_STRIKES: u32 = 2;

/// The server's keepalive enforcement policy (always `PermitWithoutStream: true`, as Longhorn's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeepalivePolicy {
    /// Pings closer together than this are strikes (Longhorn: 10 s).
    pub min_time: Duration,
}

impl KeepalivePolicy {
    /// The instance manager's policy: `MinTime: 10s`, `PermitWithoutStream: true`.
    pub const LONGHORN: Self = Self {
        min_time: Duration::from_secs(10),
    };
}

impl Default for KeepalivePolicy {
    fn default() -> Self {
        Self::LONGHORN
    }
}

/// grpc-go's judgement of a client's pings on one connection.
#[derive(Debug)]
pub(crate) struct PingJudge {
    policy: KeepalivePolicy,
    last_ping_at: Option<Instant>,
    strikes: u32,
    /// HEADERS or DATA were sent since the last ping.
    reset_strikes: bool,
}

impl PingJudge {
    pub(crate) fn new(policy: KeepalivePolicy) -> Self {
        Self {
            policy,
            last_ping_at: None,
            strikes: 0,
            reset_strikes: false,
        }
    }

    /// The server wrote a HEADERS or DATA frame.
    pub(crate) fn headers_or_data_sent(&mut self) {
        self.reset_strikes = true;
    }

    /// A PING (not an ACK) arrived at `now`. `true`: too many pings, the client must be sent
    /// GOAWAY `ENHANCE_YOUR_CALM` "too_many_pings".
    pub(crate) fn ping_received(&mut self, now: Instant) -> bool {
        let last = self.last_ping_at.replace(now);
        if std::mem::take(&mut self.reset_strikes) {
            self.strikes = 0;
            return false;
        }
        if last.is_some_and(|last| last + self.policy.min_time > now) {
            self.strikes += 1;
        }
        self.strikes > MAX_PING_STRIKES
    }
}

pub(crate) const FRAME_DATA: u8 = 0x0;
pub(crate) const FRAME_HEADERS: u8 = 0x1;
pub(crate) const FRAME_PING: u8 = 0x6;
const FRAME_GOAWAY: u8 = 0x7;
pub(crate) const FLAG_ACK: u8 = 0x1;
const ENHANCE_YOUR_CALM: u32 = 0xb;
pub(crate) const TOO_MANY_PINGS: &[u8] = b"too_many_pings";

/// The client connection preface, before the client's first frame.
const CLIENT_PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;

/// One frame header as it went by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    pub(crate) kind: u8,
    pub(crate) flags: u8,
    pub(crate) stream_id: u32,
}

/// Follows the frame boundaries of one direction of an HTTP/2 connection.
#[derive(Debug)]
pub(crate) struct FrameScanner {
    preface_left: usize,
    header: [u8; FRAME_HEADER_LEN],
    header_len: usize,
    payload_left: usize,
}

impl FrameScanner {
    /// The client-to-server direction (starts with the 24-byte preface).
    pub(crate) fn client_to_server() -> Self {
        Self::with_preface(CLIENT_PREFACE_LEN)
    }

    /// The server-to-client direction (frames from the first byte).
    pub(crate) fn server_to_client() -> Self {
        Self::with_preface(0)
    }

    fn with_preface(preface_left: usize) -> Self {
        Self {
            preface_left,
            header: [0; FRAME_HEADER_LEN],
            header_len: 0,
            payload_left: 0,
        }
    }

    /// Between two frames (nothing of a frame pending).
    pub(crate) fn at_boundary(&self) -> bool {
        self.preface_left == 0 && self.header_len == 0 && self.payload_left == 0
    }

    /// Consumes the next bytes of the direction; `on_header` sees each complete frame header.
    pub(crate) fn scan(&mut self, mut bytes: &[u8], mut on_header: impl FnMut(FrameHeader)) {
        while !bytes.is_empty() {
            if self.preface_left > 0 {
                let n = self.preface_left.min(bytes.len());
                self.preface_left -= n;
                bytes = &bytes[n..];
            } else if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                self.payload_left -= n;
                bytes = &bytes[n..];
            } else {
                let n = (FRAME_HEADER_LEN - self.header_len).min(bytes.len());
                self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
                self.header_len += n;
                bytes = &bytes[n..];
                if self.header_len == FRAME_HEADER_LEN {
                    let h = self.header;
                    self.header_len = 0;
                    self.payload_left =
                        usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                    on_header(FrameHeader {
                        kind: h[3],
                        flags: h[4],
                        stream_id: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
                    });
                }
            }
        }
    }
}

/// The GOAWAY grpc-go sends a client that pings too often: last stream id, `ENHANCE_YOUR_CALM`,
/// debug data `too_many_pings`.
pub(crate) fn too_many_pings_goaway(last_stream_id: u32) -> Vec<u8> {
    let payload_len = 8 + TOO_MANY_PINGS.len();
    let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + payload_len);
    // The payload is 22 bytes: the 24-bit length fits in the last byte.
    frame.extend_from_slice(&[0, 0, payload_len as u8, FRAME_GOAWAY, 0, 0, 0, 0, 0]);
    frame.extend_from_slice(&(last_stream_id & 0x7fff_ffff).to_be_bytes());
    frame.extend_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
    frame.extend_from_slice(TOO_MANY_PINGS);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, secs: f64) -> Instant {
        start + Duration::from_secs_f64(secs)
    }

    #[test]
    fn pings_every_10s_are_never_strikes() {
        let start = Instant::now();
        let mut judge = PingJudge::new(KeepalivePolicy::LONGHORN);
        for i in 0..20 {
            assert!(!judge.ping_received(at(start, 10.0 * f64::from(i))));
        }
        assert_eq!(judge.strikes, 0);
    }

    #[test]
    fn the_fourth_fast_ping_is_the_third_strike() {
        let start = Instant::now();
        let mut judge = PingJudge::new(KeepalivePolicy::LONGHORN);
        assert!(
            !judge.ping_received(at(start, 0.0)),
            "first ping: no strike"
        );
        assert!(!judge.ping_received(at(start, 1.0)), "strike 1");
        assert!(!judge.ping_received(at(start, 2.0)), "strike 2");
        assert!(
            judge.ping_received(at(start, 3.0)),
            "strike 3 > maxPingStrikes"
        );
    }

    #[test]
    fn headers_or_data_sent_between_pings_reset_the_strikes() {
        let start = Instant::now();
        let mut judge = PingJudge::new(KeepalivePolicy::LONGHORN);
        for i in 0..10 {
            judge.headers_or_data_sent();
            assert!(!judge.ping_received(at(start, f64::from(i))));
        }
        // Without data in between, strikes count again from 0.
        assert!(!judge.ping_received(at(start, 10.5)));
        assert!(!judge.ping_received(at(start, 11.0)));
        assert!(judge.ping_received(at(start, 11.5)));
    }

    #[test]
    fn scanner_follows_frames_split_anywhere() {
        let mut stream = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        // SETTINGS (empty), PING, PING ACK, HEADERS on stream 3 with a 2-byte payload.
        stream.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
        stream.extend_from_slice(&[0, 0, 8, FRAME_PING, 0, 0, 0, 0, 0]);
        stream.extend_from_slice(&[1; 8]);
        stream.extend_from_slice(&[0, 0, 8, FRAME_PING, FLAG_ACK, 0, 0, 0, 0]);
        stream.extend_from_slice(&[2; 8]);
        stream.extend_from_slice(&[0, 0, 2, FRAME_HEADERS, 0x4, 0x80, 0, 0, 3, 0xaa, 0xbb]);
        for chunk in [1, 2, 5, 9, 13, stream.len()] {
            let mut scanner = FrameScanner::client_to_server();
            let mut seen = Vec::new();
            for piece in stream.chunks(chunk) {
                scanner.scan(piece, |h| seen.push(h));
            }
            assert!(scanner.at_boundary(), "chunk {chunk}");
            let kinds: Vec<(u8, u8, u32)> = seen
                .iter()
                .map(|h| (h.kind, h.flags, h.stream_id))
                .collect();
            assert_eq!(
                kinds,
                [
                    (0x4, 0, 0),
                    (FRAME_PING, 0, 0),
                    (FRAME_PING, FLAG_ACK, 0),
                    (FRAME_HEADERS, 0x4, 3)
                ],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn goaway_frame_is_enhance_your_calm_too_many_pings() {
        let frame = too_many_pings_goaway(7);
        let mut scanner = FrameScanner::server_to_client();
        let mut seen = Vec::new();
        scanner.scan(&frame, |h| seen.push(h));
        assert!(scanner.at_boundary());
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].kind, FRAME_GOAWAY);
        assert_eq!(&frame[9..13], &[0, 0, 0, 7]);
        assert_eq!(&frame[13..17], &[0, 0, 0, 0xb]);
        assert_eq!(&frame[17..], b"too_many_pings");
    }
}
