//! The generator's HTTP/1.1 client: one connection, one request at a time, the request written
//! with one `write` and the answer read into a buffer that lives as long as the connection.
//!
//! Why not hyper's client: it splits a connection into a request handle and a connection task,
//! so every request crosses two tasks (and, on a multi-threaded runtime, often two threads)
//! and allocates a request and a header map; measured against nginx on this project's 2-core
//! machine it cost 14-17 us of client CPU per answer where wrk cost 11-13 and this client
//! 7-12 (docs/benchmarks.md, "The client"). On a machine where the client shares the cores
//! with the server under test, the client's cost per answer is taken from the server's.
//!
//! Framing follows RFC 9112 section 6.3 for responses: no body for 1xx/204/304, chunked when
//! the last transfer coding is chunked, Content-Length, otherwise until the server closes.

use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// How long a connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The read buffer grows by this much, up to [`MAX_ANSWER`].
const READ_CHUNK: usize = 16 * 1024;
/// An answer (head and body) larger than this is refused: OCSP answers are a few hundred bytes.
const MAX_ANSWER: usize = 4 * 1024 * 1024;

/// Why an exchange produced no answer. Each maps to one of the report's `no answer: ...` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    ConnectTimeout,
    ConnectRefused,
    /// The connection was closed (or reset) before any byte of the answer arrived: on a
    /// kept-alive connection, the server had closed it in the meantime.
    Closed,
    /// Closed or failed in the middle of an answer.
    Truncated,
    /// Not an HTTP/1.x answer, or framing we cannot follow.
    Malformed,
    TooLarge,
}

impl Failure {
    pub fn what(self) -> &'static str {
        match self {
            Failure::ConnectTimeout => "no answer: connect timeout",
            Failure::ConnectRefused => "no answer: connect refused",
            Failure::Closed => "no answer: connection closed",
            Failure::Truncated => "no answer: answer cut short",
            Failure::Malformed => "no answer: malformed HTTP",
            Failure::TooLarge => "no answer: answer too large",
        }
    }
}

/// One answer, borrowed from the connection's buffers until the next exchange.
pub struct Answer<'a> {
    pub status: u16,
    pub body: &'a [u8],
    /// The `X-Cache-Status` header (nginx playing the CDN).
    pub cache_status: Option<&'a [u8]>,
    /// The server will not take another request on this connection.
    pub close: bool,
}

/// An open connection.
pub struct Wire {
    stream: TcpStream,
    buf: Vec<u8>,
    /// A chunked body, decoded.
    dechunked: Vec<u8>,
}

impl Wire {
    pub async fn connect(addr: SocketAddr) -> Result<Wire, Failure> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| Failure::ConnectTimeout)?
            .map_err(|_| Failure::ConnectRefused)?;
        // Requests are written whole: no reason to wait for an ACK before sending one.
        let _ = stream.set_nodelay(true);
        Ok(Wire { stream, buf: Vec::with_capacity(READ_CHUNK), dechunked: Vec::new() })
    }

    /// Writes `request` (a whole HTTP/1.1 request) and reads its answer.
    pub async fn exchange(&mut self, request: &[u8]) -> Result<Answer<'_>, Failure> {
        self.buf.clear();
        // A write to a connection the server closed fails only later, if at all: either way
        // nothing of the answer has arrived, which is what `Closed` means.
        self.stream.write_all(request).await.map_err(|_| Failure::Closed)?;
        let mut head: Option<Head> = None;
        loop {
            if self.buf.len() == self.buf.capacity() {
                if self.buf.capacity() >= MAX_ANSWER {
                    return Err(Failure::TooLarge);
                }
                self.buf.reserve(READ_CHUNK);
            }
            let eof = match self.stream.read_buf(&mut self.buf).await {
                Ok(n) => n == 0,
                Err(_) if self.buf.is_empty() => return Err(Failure::Closed),
                Err(_) => return Err(Failure::Truncated),
            };
            if eof && self.buf.is_empty() {
                return Err(Failure::Closed);
            }
            if head.is_none() {
                head = parse_head(&self.buf)?;
            }
            if let Some(h) = &head {
                if let Some(body) = body_of(h, &self.buf, eof, &mut self.dechunked)? {
                    let close = h.close || eof || body.end < self.buf.len();
                    let cache_status = h.cache_status.clone().map(|r| &self.buf[r]);
                    let body = match body.source {
                        Source::Buffer => &self.buf[body.range],
                        Source::Dechunked => &self.dechunked[..],
                    };
                    return Ok(Answer { status: h.status, body, cache_status, close });
                }
            }
            if eof {
                return Err(Failure::Truncated);
            }
        }
    }
}

/// How the body of an answer ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(usize),
    Chunked,
    UntilClose,
}

/// A parsed status line and header section.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Head {
    status: u16,
    /// Bytes of the status line and headers, with the blank line.
    len: usize,
    framing: Framing,
    cache_status: Option<Range<usize>>,
    close: bool,
}

/// The head at the start of `buf`, once it is complete.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, Failure> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(Failure::Malformed),
    };
    let status = response.code.ok_or(Failure::Malformed)?;
    // HTTP/1.0 closes unless asked to keep the connection; 1.1 keeps it unless told otherwise.
    let mut close = response.version != Some(1);
    let (mut length, mut chunked, mut other_coding, mut cache_status) = (None, false, false, None);
    for h in response.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse::<usize>().ok());
            match (n, length) {
                (Some(n), None) => length = Some(n),
                (Some(n), Some(m)) if n == m => {}
                _ => return Err(Failure::Malformed),
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Only the last coding decides whether the body is chunked.
            let last = h.value.rsplit(|b| *b == b',').next().unwrap_or_default();
            chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
            other_coding = !chunked;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && response.version == Some(0) {
                    close = false;
                }
            }
        } else if name.eq_ignore_ascii_case(b"x-cache-status") {
            let start = h.value.as_ptr() as usize - buf.as_ptr() as usize;
            cache_status = Some(start..start + h.value.len());
        }
    }
    let framing = if status < 200 || status == 204 || status == 304 {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if other_coding {
        Framing::UntilClose
    } else {
        length.map_or(Framing::UntilClose, Framing::Length)
    };
    if status < 200 {
        // Interim answers (100 Continue) are never asked for: we send no Expect header.
        return Err(Failure::Malformed);
    }
    if framing == Framing::UntilClose {
        close = true;
    }
    Ok(Some(Head { status, len, framing, cache_status, close }))
}

#[derive(Debug, PartialEq, Eq)]
enum Source {
    Buffer,
    Dechunked,
}

/// Where a complete body is: a range of the buffer, or the dechunked copy.
#[derive(Debug, PartialEq, Eq)]
struct Body {
    source: Source,
    range: Range<usize>,
    /// Where the answer ends in the buffer.
    end: usize,
}

/// The body, once `buf` (ending at EOF if `eof`) holds all of it.
fn body_of(head: &Head, buf: &[u8], eof: bool, dechunked: &mut Vec<u8>) -> Result<Option<Body>, Failure> {
    let start = head.len;
    let in_buffer = |range: Range<usize>| Some(Body { source: Source::Buffer, end: range.end, range });
    Ok(match head.framing {
        Framing::Empty => in_buffer(start..start),
        Framing::Length(n) => {
            let end = start.checked_add(n).ok_or(Failure::TooLarge)?;
            if end > MAX_ANSWER {
                return Err(Failure::TooLarge);
            }
            (buf.len() >= end).then_some(Body { source: Source::Buffer, range: start..end, end })
        }
        Framing::UntilClose => eof.then_some(Body { source: Source::Buffer, range: start..buf.len(), end: buf.len() }),
        Framing::Chunked => dechunk(&buf[start..], dechunked)?.map(|used| Body {
            source: Source::Dechunked,
            range: 0..dechunked.len(),
            end: start + used,
        }),
    })
}

/// Decodes a chunked body from the start of `src` into `out`: the bytes it took once the last
/// chunk and the trailers are complete, `None` while they are not.
fn dechunk(src: &[u8], out: &mut Vec<u8>) -> Result<Option<usize>, Failure> {
    out.clear();
    let mut at = 0;
    loop {
        let Some(eol) = find_crlf(&src[at..]) else { return Ok(None) };
        let line = &src[at..at + eol];
        let digits = line.split(|b| *b == b';').next().unwrap_or_default().trim_ascii();
        let size = std::str::from_utf8(digits)
            .ok()
            .and_then(|d| usize::from_str_radix(d, 16).ok())
            .ok_or(Failure::Malformed)?;
        at += eol + 2;
        if size == 0 {
            // Trailer fields, then an empty line.
            loop {
                let Some(eol) = find_crlf(&src[at..]) else { return Ok(None) };
                at += eol + 2;
                if eol == 0 {
                    return Ok(Some(at));
                }
            }
        }
        if size > MAX_ANSWER || out.len() + size > MAX_ANSWER {
            return Err(Failure::TooLarge);
        }
        if src.len() < at + size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&src[at..at + size]);
        if &src[at + size..at + size + 2] != b"\r\n" {
            return Err(Failure::Malformed);
        }
        at += size + 2;
    }
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Status, body, whether the connection closes, X-Cache-Status.
    type Parsed = (u16, Vec<u8>, bool, Option<Vec<u8>>);

    fn answer(raw: &[u8], eof: bool) -> Result<Option<Parsed>, Failure> {
        let Some(head) = parse_head(raw)? else { return Ok(None) };
        let mut dechunked = Vec::new();
        Ok(body_of(&head, raw, eof, &mut dechunked)?.map(|b| {
            let body = match b.source {
                Source::Buffer => raw[b.range].to_vec(),
                Source::Dechunked => dechunked.clone(),
            };
            (head.status, body, head.close || b.end < raw.len(), head.cache_status.map(|r| raw[r].to_vec()))
        }))
    }

    #[test]
    fn content_length_waits_for_the_whole_body() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Cache-Status: HIT\r\n\r\nhello";
        for cut in 0..raw.len() {
            assert_eq!(answer(&raw[..cut], false), Ok(None), "complete after {cut} bytes");
        }
        assert_eq!(answer(raw, false), Ok(Some((200, b"hello".to_vec(), false, Some(b"HIT".to_vec())))));
        // nginx sends the head and a sendfile body in two writes: the first alone is not enough.
        assert_eq!(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false), Ok(None));
        assert_eq!(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", true), Ok(None));
    }

    #[test]
    fn connection_persistence() {
        let close = |raw: &[u8]| answer(raw, false).unwrap().unwrap().2;
        assert!(!close(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(close(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"));
        assert!(close(b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive, Close\r\nContent-Length: 0\r\n\r\n"));
        assert!(close(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(!close(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"));
        // Bytes after the answer were never asked for: the connection cannot be trusted.
        assert!(close(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxy"));
    }

    #[test]
    fn body_until_close_for_http_1_0_without_length() {
        // What `openssl ocsp` sends.
        let raw = b"HTTP/1.0 200 OK\r\nContent-type: application/ocsp-response\r\n\r\nabc";
        assert_eq!(answer(raw, false), Ok(None));
        assert_eq!(answer(raw, true), Ok(Some((200, b"abc".to_vec(), true, None))));
    }

    #[test]
    fn chunked_bodies() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n";
        for cut in 0..raw.len() {
            assert_eq!(answer(&raw[..cut], false), Ok(None), "complete after {cut} bytes");
        }
        assert_eq!(answer(raw, false), Ok(Some((200, b"abcde".to_vec(), false, None))));
        let bad = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        assert_eq!(answer(bad, false), Err(Failure::Malformed));
        let overrun = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc\r\n";
        assert_eq!(answer(overrun, false), Err(Failure::Malformed));
    }

    #[test]
    fn bodiless_statuses_and_bad_heads() {
        assert_eq!(
            answer(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", false),
            Ok(Some((304, vec![], false, None)))
        );
        assert_eq!(answer(b"HTTP/1.1 100 Continue\r\n\r\n", false), Err(Failure::Malformed));
        assert_eq!(answer(b"SSH-2.0-OpenSSH\r\n\r\n", false), Err(Failure::Malformed));
        let two_lengths = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab";
        assert_eq!(answer(two_lengths, false), Err(Failure::Malformed));
        let huge = b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n";
        assert_eq!(answer(huge, false), Err(Failure::TooLarge));
    }

    #[tokio::test]
    async fn exchanges_over_a_socket() {
        // A server that answers the first request in two writes (like nginx with sendfile),
        // the second with Connection: close, then closes.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            use std::io::{Read as _, Write as _};
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).unwrap();
            assert!(buf[..n].starts_with(b"GET /a HTTP/1.1\r\n"));
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n").unwrap();
            std::thread::sleep(Duration::from_millis(20));
            s.write_all(b"abc").unwrap();
            let _ = s.read(&mut buf).unwrap();
            s.write_all(b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx").unwrap();
        });
        let mut wire = Wire::connect(addr).await.unwrap();
        let a = wire.exchange(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        assert_eq!((a.status, a.body, a.close), (200, &b"abc"[..], false));
        let a = wire.exchange(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        assert_eq!((a.status, a.body, a.close), (404, &b"x"[..], true));
        server.join().unwrap();
        assert!(matches!(wire.exchange(b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n").await, Err(Failure::Closed)));
    }
}
