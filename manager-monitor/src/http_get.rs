//! A minimal blocking HTTP/1.1 GET with one overall deadline, for the manager's pprof and
//! metrics endpoints. Each call opens one connection and closes it before returning, so the
//! monitor holds no socket between samples.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// `http://host:port/path?query` split into its parts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpTarget {
    pub host: String,
    pub port: u16,
    pub path_and_query: String,
}

impl HttpTarget {
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url:?}: only http:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{url:?}: unterminated [IPv6] host"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| format!("{url:?}: bad port"))?,
                None if after.is_empty() => 80,
                None => return Err(format!("{url:?}: junk after [IPv6] host")),
            };
            (h.to_owned(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_owned(),
                    p.parse().map_err(|_| format!("{url:?}: bad port"))?,
                ),
                None => (authority.to_owned(), 80),
            }
        };
        if host.is_empty() {
            return Err(format!("{url:?}: no host"));
        }
        Ok(Self {
            host,
            port,
            path_and_query: path.to_owned(),
        })
    }

    fn host_header(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// A response body, possibly cut at the caller's limit.
#[derive(Debug)]
pub struct Body {
    pub bytes: Vec<u8>,
    pub truncated: bool,
}

const MAX_HEADER: usize = 16 * 1024;

/// GETs `target`, reading at most `max_body` body bytes (a longer body is cut and
/// `truncated` set). Fails on non-200 statuses, on time-out, and on malformed responses.
pub fn get(target: &HttpTarget, timeout: Duration, max_body: usize) -> Result<Body, String> {
    let deadline = Instant::now() + timeout;
    let mut stream = send_request(target, timeout, deadline)?;
    let response = read_response(&mut stream, timeout, deadline, max_body)?;
    drop(stream);
    Ok(response.into_body(max_body))
}

/// Time left before `deadline` (of a call of `timeout`); an error once it has passed.
fn remaining(deadline: Instant, timeout: Duration) -> Result<Duration, String> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("timed out after {timeout:?}"))
}

/// Connects to `target` and writes the GET request.
fn send_request(
    target: &HttpTarget,
    timeout: Duration,
    deadline: Instant,
) -> Result<TcpStream, String> {
    let addrs: Vec<SocketAddr> = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|e| format!("resolving {}: {e}", target.host))?
        .collect();
    let addr = addrs
        .first()
        .ok_or_else(|| format!("{} resolves to no address", target.host))?;
    let mut stream =
        TcpStream::connect_timeout(addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_write_timeout(Some(remaining(deadline, timeout)?))
        .map_err(|e| e.to_string())?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: longhorn-guard-manager-monitor\r\nAccept: text/plain\r\nConnection: close\r\n\r\n",
        target.path_and_query,
        target.host_header()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("sending request: {e}"))?;
    Ok(stream)
}

/// A response as read: its raw bytes, where the header ends, and what the header says of the
/// body.
struct RawResponse {
    raw: Vec<u8>,
    header_end: usize,
    content_length: Option<usize>,
    chunked: bool,
}

/// Reads a 200 response until its body is complete, `max_body` (plus a little) is reached or
/// the server closes; refuses other statuses, oversized headers and the deadline passing.
fn read_response(
    stream: &mut TcpStream,
    timeout: Duration,
    deadline: Instant,
    max_body: usize,
) -> Result<RawResponse, String> {
    let mut raw = Vec::with_capacity(8 * 1024);
    let mut buf = [0u8; 8 * 1024];
    let mut header_end: Option<usize> = None;
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    loop {
        if let Some(h) = header_end {
            let body_len = raw.len() - h;
            if content_length.is_some_and(|n| body_len >= n)
                || body_len >= max_body.saturating_add(64)
            {
                break;
            }
        } else if raw.len() > MAX_HEADER {
            return Err("response header larger than 16 KiB".into());
        }
        stream
            .set_read_timeout(Some(remaining(deadline, timeout)?))
            .map_err(|e| e.to_string())?;
        let n = match stream.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!("timed out after {timeout:?}"));
            }
            Err(e) => return Err(format!("reading response: {e}")),
        };
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if header_end.is_none()
            && let Some(pos) = find(&raw, b"\r\n\r\n")
        {
            let end = pos + 4;
            header_end = Some(end);
            let head = String::from_utf8_lossy(&raw[..pos]).into_owned();
            let (status, cl, ch) = parse_head(&head)?;
            if status != 200 {
                return Err(format!("HTTP status {status}"));
            }
            content_length = cl;
            chunked = ch;
        }
    }
    let header_end = header_end.ok_or("connection closed before the response header ended")?;
    Ok(RawResponse {
        raw,
        header_end,
        content_length,
        chunked,
    })
}

impl RawResponse {
    /// The body, dechunked or cut at its Content-Length, at most `max_body` bytes.
    fn into_body(self, max_body: usize) -> Body {
        let body = &self.raw[self.header_end..];
        let (mut bytes, complete) = if self.chunked {
            dechunk(body)
        } else {
            let complete = self.content_length.is_none_or(|n| body.len() >= n);
            let body = match self.content_length {
                Some(n) if body.len() > n => &body[..n],
                _ => body,
            };
            (body.to_vec(), complete)
        };
        let mut truncated = !complete;
        if bytes.len() > max_body {
            bytes.truncate(max_body);
            truncated = true;
        }
        Body { bytes, truncated }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_head(head: &str) -> Result<(u16, Option<usize>, bool), String> {
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1.x response: {status_line:?}"));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(
                value
                    .parse()
                    .map_err(|_| format!("bad Content-Length {value:?}"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
        {
            chunked = true;
        }
    }
    Ok((status, content_length, chunked))
}

/// Decodes a chunked body; returns what could be decoded and whether the final chunk was seen.
fn dechunk(mut body: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::with_capacity(body.len());
    loop {
        let Some(line_end) = find(body, b"\r\n") else {
            return (out, false);
        };
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size_hex = size_text.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_hex, 16) else {
            return (out, false);
        };
        body = &body[line_end + 2..];
        if size == 0 {
            return (out, true);
        }
        if body.len() < size {
            out.extend_from_slice(body);
            return (out, false);
        }
        out.extend_from_slice(&body[..size]);
        body = body.get(size + 2..).unwrap_or(&[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn url_forms() {
        let t = HttpTarget::parse("http://127.0.0.1:9500/metrics").expect("v4");
        assert_eq!(
            (t.host.as_str(), t.port, t.path_and_query.as_str()),
            ("127.0.0.1", 9500, "/metrics")
        );
        let t = HttpTarget::parse("http://[::1]:6060/debug/pprof/goroutine?debug=1").expect("v6");
        assert_eq!(
            (t.host.as_str(), t.port, t.path_and_query.as_str()),
            ("::1", 6060, "/debug/pprof/goroutine?debug=1")
        );
        assert_eq!(t.host_header(), "[::1]:6060");
        let t = HttpTarget::parse("http://localhost").expect("bare");
        assert_eq!((t.port, t.path_and_query.as_str()), (80, "/"));
        for bad in [
            "https://x/",
            "http://:80/",
            "http://x:port/",
            "http://[::1/",
            "ftp://x",
        ] {
            assert!(HttpTarget::parse(bad).is_err(), "accepted {bad}");
        }
    }

    #[test]
    fn chunked_bodies() {
        assert_eq!(
            dechunk(b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n"),
            (b"hello world".to_vec(), true)
        );
        assert_eq!(dechunk(b"5\r\nhel"), (b"hel".to_vec(), false));
        assert_eq!(dechunk(b"zz\r\n"), (Vec::new(), false));
    }

    fn serve_once(response: &'static [u8]) -> HttpTarget {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let port = listener.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let mut req = [0u8; 1024];
                let _ = s.read(&mut req);
                let _ = s.write_all(response);
            }
        });
        HttpTarget::parse(&format!("http://127.0.0.1:{port}/x")).expect("url")
    }

    #[test]
    fn get_reads_plain_chunked_and_refuses_errors() {
        let t = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
        let b = get(&t, Duration::from_secs(5), 100).expect("plain");
        assert_eq!((b.bytes.as_slice(), b.truncated), (&b"hello"[..], false));

        let t = serve_once(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        );
        let b = get(&t, Duration::from_secs(5), 100).expect("chunked");
        assert_eq!((b.bytes.as_slice(), b.truncated), (&b"abc"[..], false));

        let t = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789");
        let b = get(&t, Duration::from_secs(5), 4).expect("cut");
        assert_eq!((b.bytes.as_slice(), b.truncated), (&b"0123"[..], true));

        let t = serve_once(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        assert!(get(&t, Duration::from_secs(5), 100).is_err_and(|e| e.contains("404")));
    }

    #[test]
    fn get_times_out_on_a_silent_server() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let port = listener.local_addr().expect("addr").port();
        let t = HttpTarget::parse(&format!("http://127.0.0.1:{port}/")).expect("url");
        let started = Instant::now();
        let r = get(&t, Duration::from_millis(300), 100);
        assert!(r.is_err_and(|e| e.contains("timed out")));
        assert!(started.elapsed() < Duration::from_secs(3));
        drop(listener);
    }
}
