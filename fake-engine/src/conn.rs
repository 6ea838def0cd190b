//! One accepted connection: its byte stream (plaintext or TLS), the control a handler uses to act on
//! the connection that carries its call (`Reset` and `GoAway` faults), and the keepalive
//! enforcement that watches the HTTP/2 frames going by (see [`crate::keepalive`]).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;

use crate::keepalive::{
    FLAG_ACK, FRAME_DATA, FRAME_HEADERS, FRAME_PING, FrameScanner, KeepalivePolicy, PingJudge,
    too_many_pings_goaway,
};
use crate::state::ConnectionRecord;

/// Per-connection control, put into every request's extensions so a handler can act on the
/// connection that carries its call.
#[derive(Clone, Default)]
pub(crate) struct ConnControl {
    pub(crate) reset: Arc<Notify>,
    pub(crate) go_away: Arc<Notify>,
    /// Notified once the keepalive enforcement has sent GOAWAY `too_many_pings`.
    pub(crate) calmed: Arc<Notify>,
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

/// A connection's byte stream, in plaintext (h2c) or TLS.
pub(crate) enum Stream {
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

/// Where the keepalive enforcement's GOAWAY stands.
enum GoAway {
    None,
    /// Too many pings: the frame waits for a frame boundary of the server's output.
    Pending {
        frame: Vec<u8>,
        written: usize,
    },
    /// Written and the write side shut: nothing more goes to the client, what it still sends is
    /// read and dropped until it closes.
    Sent,
}

/// grpc-go's keepalive enforcement over the frames of one connection.
struct Enforcer {
    judge: PingJudge,
    inbound: FrameScanner,
    outbound: FrameScanner,
    last_client_stream: u32,
    goaway: GoAway,
    record: Arc<ConnectionRecord>,
    calmed: Arc<Notify>,
}

impl Enforcer {
    fn client_sent(&mut self, bytes: &[u8], now: Instant) {
        let Enforcer {
            judge,
            inbound,
            last_client_stream,
            goaway,
            record,
            ..
        } = self;
        inbound.scan(bytes, |h| {
            if h.kind == FRAME_HEADERS {
                *last_client_stream = (*last_client_stream).max(h.stream_id);
            } else if h.kind == FRAME_PING && h.flags & FLAG_ACK == 0 {
                record.ping_received();
                if judge.ping_received(now) && matches!(goaway, GoAway::None) {
                    *goaway = GoAway::Pending {
                        frame: too_many_pings_goaway(*last_client_stream),
                        written: 0,
                    };
                }
            }
        });
    }

    fn server_sent(&mut self, bytes: &[u8]) {
        let Enforcer {
            judge, outbound, ..
        } = self;
        outbound.scan(bytes, |h| {
            if h.kind == FRAME_HEADERS || h.kind == FRAME_DATA {
                judge.headers_or_data_sent();
            }
        });
    }

    /// Writes the pending GOAWAY, flushes and shuts the write side (grpc-go closes the
    /// connection after this GOAWAY).
    fn poll_send_goaway(
        &mut self,
        inner: &mut Stream,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        if let GoAway::Pending { frame, written } = &mut self.goaway {
            while *written < frame.len() {
                let n = ready!(Pin::new(&mut *inner).poll_write(cx, &frame[*written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                *written += n;
            }
            ready!(Pin::new(&mut *inner).poll_flush(cx))?;
            ready!(Pin::new(&mut *inner).poll_shutdown(cx))?;
            self.goaway = GoAway::Sent;
            self.record.told_too_many_pings();
            self.calmed.notify_one();
        }
        Poll::Ready(Ok(()))
    }
}

/// The stream of one connection as hyper sees it: closes with RST (zero linger) when a `Reset`
/// fault asked for it, and enforces the keepalive policy when there is one.
pub(crate) struct ConnIo {
    inner: Stream,
    reset_on_drop: Arc<AtomicBool>,
    enforcer: Option<Enforcer>,
}

impl ConnIo {
    pub(crate) fn new(
        inner: Stream,
        keepalive: Option<KeepalivePolicy>,
        record: Arc<ConnectionRecord>,
        control: &ConnControl,
    ) -> Self {
        ConnIo {
            inner,
            reset_on_drop: Arc::new(AtomicBool::new(false)),
            enforcer: keepalive.map(|policy| Enforcer {
                judge: PingJudge::new(policy),
                inbound: FrameScanner::client_to_server(),
                outbound: FrameScanner::server_to_client(),
                last_client_stream: 0,
                goaway: GoAway::None,
                record,
                calmed: control.calmed.clone(),
            }),
        }
    }

    /// Set to make the connection close with RST when dropped.
    pub(crate) fn reset_on_drop(&self) -> Arc<AtomicBool> {
        self.reset_on_drop.clone()
    }
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
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(enforcer) = this.enforcer.as_mut() else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        if matches!(enforcer.goaway, GoAway::Sent) {
            // Closed for the client: drop what it still sends; its close ends the connection.
            let mut scratch = [0u8; 4096];
            loop {
                let mut dropped = ReadBuf::new(&mut scratch);
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut dropped))?;
                if dropped.filled().is_empty() {
                    return Poll::Ready(Ok(()));
                }
            }
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        enforcer.client_sent(&buf.filled()[before..], Instant::now());
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Some(enforcer) = this.enforcer.as_mut() else {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        };
        match &enforcer.goaway {
            GoAway::Sent => return Poll::Ready(Ok(buf.len())),
            GoAway::Pending { written, .. } if *written > 0 => {
                ready!(enforcer.poll_send_goaway(&mut this.inner, cx))?;
                return Poll::Ready(Ok(buf.len()));
            }
            _ => {}
        }
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        enforcer.server_sent(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Some(enforcer) = this.enforcer.as_mut() else {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        };
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        match &enforcer.goaway {
            GoAway::Sent => return Poll::Ready(Ok(total)),
            GoAway::Pending { written, .. } if *written > 0 => {
                ready!(enforcer.poll_send_goaway(&mut this.inner, cx))?;
                return Poll::Ready(Ok(total));
            }
            _ => {}
        }
        let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
        let mut left = n;
        for b in bufs {
            if left == 0 {
                break;
            }
            let take = left.min(b.len());
            enforcer.server_sent(&b[..take]);
            left -= take;
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(enforcer) = this.enforcer.as_mut() {
            match &enforcer.goaway {
                GoAway::Sent => return Poll::Ready(Ok(())),
                // After hyper has flushed whole frames (the ping's ACK among them), as grpc-go
                // answers the ping before its GOAWAY.
                GoAway::Pending { written, .. }
                    if *written > 0 || enforcer.outbound.at_boundary() =>
                {
                    return enforcer.poll_send_goaway(&mut this.inner, cx);
                }
                _ => {}
            }
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(enforcer) = &this.enforcer
            && matches!(enforcer.goaway, GoAway::Sent)
        {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
