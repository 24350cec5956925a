//! The gateway's plain-HTTP/1.1 path: one `GET` and its answer on a kept connection, read
//! on the grid of `gateway::tick_io`, idle connections kept for the next poll.
//!
//! Why not reqwest here: a poll is one small GET to one host, and measured on the idle
//! workload (100 chats, every second, nothing new) reqwest's layers around hyper cost more
//! than the reply's parse: the url is parsed and IDNA-checked per request, the request
//! passes redirect and retry services and the pool, and the connection runs as its own task.
//! reqwest stays for `https://` gateways and for `api.proxy` (TLS, proxies); both paths map to
//! the same [`super::client::FetchError`]s.
//!
//! Why not hyper's connection API either (this path used it until it was measured): each kept
//! connection held ~43 KB — the request channel hyper keeps per connection (a block of 32
//! request slots, ~9 KB, and the next one), an 8 KB write buffer and a read buffer that grew
//! to 16 KiB — and the first polls of 100 chats keep 100 connections: 4.3 MB of workload A's
//! 12 MB heap (heaptrack), and 11 MB at B's 256 connections in flight. Each request also
//! went through that channel, a one-shot answer channel and a header map. Here a kept
//! connection is its socket and a timer; an answer's head is parsed by `httparse` (hyper's
//! own parser) from one read buffer, and its body is read straight into the `Vec` the page
//! parser gets. Only what a gateway answer needs is spoken: `Content-Length`, chunked and
//! read-to-close bodies, `1xx` answers skipped, `Connection: close` and HTTP/1.0 honoured.
//!
//! Owns: connecting, keeping idle connections (most recent first, at most [`MAX_IDLE`], each
//! for at most [`IDLE_KEEP`]), retrying once on a fresh connection when a kept one turns out
//! closed before the gateway answered. Must not: read a body past the cap it is given, or
//! retry anything the gateway answered.

use bytes::Bytes;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

use super::tick_io::TickIo;

/// Idle connections kept at most; more are closed when their poll ends.
pub const MAX_IDLE: usize = 256;

/// How long an idle connection is kept. Under Node.js (the gateway is whatsapp-web.js behind
/// an HTTP server) a server closes a keep-alive connection idle for 5 s, so one kept longer
/// is mostly found closed, or closed as the request goes.
pub const IDLE_KEEP: Duration = Duration::from_secs(4);

/// The longest answer head (status line and headers) read.
const MAX_HEAD: usize = 64 * 1024;

/// The most headers an answer may have.
const MAX_HEADERS: usize = 64;

/// What one read asks the socket for, when the length to come is not known.
const READ_CHUNK: usize = 16 * 1024;

const CLOSED: &str = "the gateway closed the connection";

/// One kept connection.
struct Link {
    io: TickIo,
    /// Since when it is idle (set when it goes back to the idle list).
    since: Instant,
}

/// What the gateway answered.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// A refusal's `Retry-After` (read only when the status is not 2xx).
    pub retry_after: Option<String>,
    /// The body, read to its end (only for a 2xx answer; empty otherwise).
    pub body: Vec<u8>,
}

impl Answer {
    /// A non-2xx answer: its status and `Retry-After`, its body left unread.
    pub fn refusal(status: u16, headers: &hyper::HeaderMap) -> Answer {
        Answer {
            status,
            retry_after: headers
                .get(hyper::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            body: Vec::new(),
        }
    }
}

/// Why a request got no usable answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    /// The body is longer than the cap (said by `Content-Length`, or seen while reading).
    TooLarge,
    /// Connecting, sending or reading failed.
    Transport(String),
}

/// Why one exchange on one connection failed.
#[derive(Debug)]
enum Broken {
    /// Not a byte of an answer arrived: the connection was closed or reset first (a kept
    /// connection the gateway had closed). The request may go again on a new connection.
    Unanswered(String),
    /// Anything else: the gateway answered, or tried to.
    Failed(Failure),
}

fn transport(e: impl Into<String>) -> Broken {
    Broken::Failed(Failure::Transport(e.into()))
}

/// How an answer's body ends.
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    /// At the end of the stream (no length given): the connection cannot be kept.
    Close,
}

/// An answer's head, parsed.
#[derive(Debug)]
struct Head {
    /// Its length in bytes, blank line included.
    len: usize,
    status: u16,
    framing: Framing,
    /// The connection can carry another request after this answer (HTTP/1.1 without
    /// `Connection: close`).
    keep: bool,
    retry_after: Option<String>,
}

/// Parses the answer head at the start of `buf`: `None` while it is incomplete.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, Broken> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Partial) => return Ok(None),
        Ok(httparse::Status::Complete(len)) => len,
        Err(e) => {
            return Err(transport(format!(
                "the gateway's answer is not HTTP/1.1: {e}"
            )));
        }
    };
    let status = response.code.unwrap_or(0);
    let mut keep = response.version == Some(1);
    let (mut length, mut chunked, mut encoded, mut retry_after) = (None, false, false, None);
    for h in response.headers.iter() {
        let value = || std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            let n: u64 = value().parse().map_err(|_| {
                transport(format!(
                    "the gateway sent a bad Content-Length: {:?}",
                    value()
                ))
            })?;
            if length.is_some_and(|l| l != n) {
                return Err(transport("the gateway sent two different Content-Lengths"));
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            encoded = true;
            // Chunked only if it is the last coding applied.
            chunked = value()
                .rsplit(',')
                .next()
                .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            if value()
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("close"))
            {
                keep = false;
            }
        } else if h.name.eq_ignore_ascii_case("retry-after") {
            retry_after = Some(value().to_string());
        }
    }
    let framing = if status == 204 || status == 304 {
        Framing::Length(0)
    } else if chunked {
        Framing::Chunked
    } else if encoded {
        // A coding other than chunked last: the body ends with the connection.
        Framing::Close
    } else {
        length.map_or(Framing::Close, Framing::Length)
    };
    if framing == Framing::Close {
        keep = false;
    }
    Ok(Some(Head {
        len,
        status,
        framing,
        keep,
        retry_after,
    }))
}

/// Reads up to `want` more bytes of an answer already begun onto `buf`: the end of the stream
/// is an error.
async fn read_more(io: &mut TickIo, buf: &mut Vec<u8>, want: usize) -> Result<(), Broken> {
    match io.recv_onto(buf, want).await {
        Ok(0) => Err(transport(format!("{CLOSED} in the middle of the answer"))),
        Ok(_) => Ok(()),
        Err(e) => Err(transport(format!("cannot read the answer: {e}"))),
    }
}

/// A chunked body's decoder over a buffer that grows as bytes arrive. Pure: the reads are
/// [`read_chunked`]'s.
#[derive(Debug, Default)]
struct Dechunk {
    /// Where the next size line (or trailer line) starts in the buffer.
    at: usize,
    /// The last chunk (size 0) is in: trailer lines follow, up to a blank line.
    trailers: bool,
}

impl Dechunk {
    /// Decodes the whole chunks `raw` holds from [`Dechunk::at`] onto `body`: `Some(end)` once
    /// the last chunk and the trailers' blank line are in (`end`: the bytes of `raw` the body
    /// took), `None` while more bytes are needed.
    fn step(&mut self, raw: &[u8], body: &mut Vec<u8>, cap: u64) -> Result<Option<usize>, Broken> {
        loop {
            let rest = &raw[self.at..];
            if self.trailers {
                match memchr::memmem::find(rest, b"\r\n") {
                    Some(0) => {
                        self.at += 2;
                        return Ok(Some(self.at));
                    }
                    Some(i) => self.at += i + 2,
                    None if rest.len() > MAX_HEAD => {
                        return Err(transport(
                            "the gateway's answer has trailers longer than 64 KiB",
                        ));
                    }
                    None => return Ok(None),
                }
                continue;
            }
            let (consumed, size) = match httparse::parse_chunk_size(rest) {
                Ok(httparse::Status::Complete(c)) => c,
                Ok(httparse::Status::Partial) if rest.len() > 1024 => {
                    return Err(transport(
                        "the gateway sent a chunk size line longer than 1 KiB",
                    ));
                }
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(_) => return Err(transport("the gateway sent a bad chunk size")),
            };
            if size == 0 {
                self.at += consumed;
                self.trailers = true;
                continue;
            }
            if size > cap.saturating_sub(body.len() as u64) {
                return Err(Broken::Failed(Failure::TooLarge));
            }
            let end = consumed + size as usize;
            if rest.len() < end + 2 {
                return Ok(None);
            }
            if &rest[end..end + 2] != b"\r\n" {
                return Err(transport("the gateway sent a chunk longer than its size"));
            }
            body.extend_from_slice(&rest[consumed..end]);
            self.at += end + 2;
        }
    }

    /// Drops the part of `raw` already decoded.
    fn compact(&mut self, raw: &mut Vec<u8>) {
        raw.drain(..self.at);
        self.at = 0;
    }
}

/// The body of a chunked answer, from `raw` (what was read after the head) and the socket.
/// Returns the body and whether bytes came after its end (then the connection is not kept).
async fn read_chunked(
    io: &mut TickIo,
    mut raw: Vec<u8>,
    cap: u64,
) -> Result<(Vec<u8>, bool), Broken> {
    let mut body = Vec::new();
    let mut dechunk = Dechunk::default();
    loop {
        if let Some(end) = dechunk.step(&raw, &mut body, cap)? {
            return Ok((body, raw.len() > end));
        }
        if dechunk.at > READ_CHUNK {
            dechunk.compact(&mut raw);
        }
        read_more(io, &mut raw, READ_CHUNK).await?;
    }
}

/// Sends `request` on `io` and reads the answer: a 2xx body up to `cap` bytes. Says whether
/// the connection can carry the next request.
async fn exchange(io: &mut TickIo, request: &[u8], cap: u64) -> Result<(Answer, bool), Broken> {
    io.send_all(request)
        .await
        .map_err(|e| Broken::Unanswered(format!("cannot send the request: {e}")))?;
    let mut buf = Vec::new();
    let head = loop {
        if let Some(head) = parse_head(&buf)? {
            if (100..200).contains(&head.status) && head.status != 101 {
                // An interim answer (`100 Continue`, `103 Early Hints`): the real one follows.
                buf.drain(..head.len);
                continue;
            }
            break head;
        }
        if buf.len() >= MAX_HEAD {
            return Err(transport(
                "the gateway's answer has a head longer than 64 KiB",
            ));
        }
        if !buf.is_empty() {
            read_more(io, &mut buf, READ_CHUNK).await?;
            continue;
        }
        match io.recv_onto(&mut buf, READ_CHUNK).await {
            Ok(0) => return Err(Broken::Unanswered(CLOSED.into())),
            Ok(_) => {}
            Err(e) => return Err(Broken::Unanswered(format!("cannot read the answer: {e}"))),
        }
    };
    if !(200..300).contains(&head.status) {
        // The body is not read: the connection closes with it.
        let answer = Answer {
            status: head.status,
            retry_after: head.retry_after,
            body: Vec::new(),
        };
        return Ok((answer, false));
    }
    let rest = &buf[head.len..];
    let (body, keep) = match head.framing {
        Framing::Length(n) if n > cap => return Err(Broken::Failed(Failure::TooLarge)),
        Framing::Length(n) => {
            let n = n as usize;
            let mut body = Vec::with_capacity(n);
            body.extend_from_slice(&rest[..rest.len().min(n)]);
            while body.len() < n {
                let want = n - body.len();
                read_more(io, &mut body, want).await?;
            }
            (body, head.keep && rest.len() <= n)
        }
        Framing::Chunked => {
            let (body, extra) = read_chunked(io, rest.to_vec(), cap).await?;
            (body, head.keep && !extra)
        }
        Framing::Close => {
            let mut body = rest.to_vec();
            loop {
                if body.len() as u64 > cap {
                    return Err(Broken::Failed(Failure::TooLarge));
                }
                match io.recv_onto(&mut body, READ_CHUNK).await {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => return Err(transport(format!("cannot read the answer: {e}"))),
                }
            }
            (body, false)
        }
    };
    let answer = Answer {
        status: head.status,
        retry_after: None,
        body,
    };
    Ok((answer, keep))
}

/// A client for one `http://host:port[/prefix]` gateway.
pub struct Http1 {
    /// `host:port` to connect to (resolved at each new connection).
    authority: String,
    /// The `Host` header.
    host: String,
    /// The base url's path, without its trailing `/`; request paths go after it.
    prefix: String,
    /// Oldest first: a connection goes back on top and is taken from the top.
    idle: Mutex<Vec<Link>>,
    /// [`IDLE_KEEP`], shorter in tests.
    idle_keep: Duration,
}

impl std::fmt::Debug for Http1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http1")
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

impl Http1 {
    /// A client for `base_url` if it is plain `http://` without credentials, query or
    /// fragment; `None` sends the caller to the general client.
    pub fn for_base_url(base_url: &str) -> Option<Http1> {
        let url = reqwest::Url::parse(base_url).ok()?;
        if url.scheme() != "http"
            || !url.username().is_empty()
            || url.password().is_some()
            || url.query().is_some()
            || url.fragment().is_some()
        {
            return None;
        }
        let host = url.host()?;
        let port = url.port_or_known_default()?;
        let authority = format!("{host}:{port}");
        let host_header = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        Some(Http1 {
            authority,
            host: host_header,
            prefix: url.path().trim_end_matches('/').to_string(),
            idle: Mutex::new(Vec::new()),
            idle_keep: IDLE_KEEP,
        })
    }

    /// Keeps idle connections for `keep` instead of [`IDLE_KEEP`].
    #[cfg(test)]
    fn keeping_idle_for(mut self, keep: Duration) -> Http1 {
        self.idle_keep = keep;
        self
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Link>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many idle connections are kept now.
    pub fn idle_count(&self) -> usize {
        self.idle().len()
    }

    async fn connect(&self) -> Result<TickIo, Failure> {
        let stream = TcpStream::connect(&self.authority)
            .await
            .map_err(|e| Failure::Transport(format!("cannot connect to the gateway: {e}")))?;
        let _ = stream.set_nodelay(true);
        TickIo::new(stream)
            .map_err(|e| Failure::Transport(format!("cannot use the connection: {e}")))
    }

    /// The most recent idle connection that nothing reached since its last answer.
    fn checkout(&self) -> Option<TickIo> {
        let mut idle = self.idle();
        while let Some(mut link) = idle.pop() {
            if link.io.quiet() {
                return Some(link.io);
            }
        }
        None
    }

    /// Puts `io` back on top of the idle list, closing those idle for longer than the keep.
    fn checkin(&self, io: TickIo) {
        let now = Instant::now();
        let mut idle = self.idle();
        let stale = idle
            .iter()
            .take_while(|l| now.duration_since(l.since) > self.idle_keep)
            .count();
        idle.drain(..stale);
        if idle.len() < MAX_IDLE {
            idle.push(Link { io, since: now });
        }
    }

    /// The request's bytes: `GET {prefix}{path}`, the `Host`, `headers`, and `body`.
    fn request(
        &self,
        path: &str,
        headers: &[(hyper::header::HeaderName, hyper::header::HeaderValue)],
        body: &[u8],
    ) -> Vec<u8> {
        use std::io::Write as _;
        let mut r = Vec::with_capacity(256 + body.len());
        let _ = write!(
            r,
            "GET {}{path} HTTP/1.1\r\nhost: {}\r\n",
            self.prefix, self.host
        );
        for (name, value) in headers {
            r.extend_from_slice(name.as_str().as_bytes());
            r.extend_from_slice(b": ");
            r.extend_from_slice(value.as_bytes());
            r.extend_from_slice(b"\r\n");
        }
        let _ = write!(r, "content-length: {}\r\n\r\n", body.len());
        r.extend_from_slice(body);
        r
    }

    /// Sends `GET {prefix}{path}` with `headers` and `body`, reads a 2xx answer's body up to
    /// `cap` bytes, and keeps the connection for the next request. A kept connection that
    /// fails before the gateway answered is retried once on a new one.
    pub async fn get(
        &self,
        path: &str,
        headers: &[(hyper::header::HeaderName, hyper::header::HeaderValue)],
        body: &Bytes,
        cap: u64,
    ) -> Result<Answer, Failure> {
        let request = self.request(path, headers, body);
        let (mut io, mut kept) = match self.checkout() {
            Some(io) => (io, true),
            None => (self.connect().await?, false),
        };
        loop {
            match exchange(&mut io, &request, cap).await {
                Ok((answer, keep)) => {
                    if keep {
                        self.checkin(io);
                    }
                    return Ok(answer);
                }
                Err(Broken::Unanswered(_)) if kept => {
                    io = self.connect().await?;
                    kept = false;
                }
                Err(Broken::Unanswered(e)) => return Err(Failure::Transport(e)),
                Err(Broken::Failed(f)) => return Err(f),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// What the test server saw.
    #[derive(Default)]
    struct Seen {
        connections: AtomicUsize,
        requests: Mutex<Vec<String>>,
    }

    /// A real server on 127.0.0.1 that answers the n-th request (counted over all its
    /// connections) with `answer(n)`: the raw bytes, and whether to close after them.
    async fn server(
        answer: impl Fn(usize) -> (Vec<u8>, bool) + Send + Sync + 'static,
    ) -> (String, Arc<Seen>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Seen::default());
        let (answer, s) = (Arc::new(answer), seen.clone());
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                s.connections.fetch_add(1, Ordering::SeqCst);
                let (answer, s) = (answer.clone(), s.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let Some(end) = memchr::memmem::find(&buf, b"\r\n\r\n") else {
                            let mut chunk = [0u8; 4096];
                            match sock.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_string();
                        let length: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length: ")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        while buf.len() < end + 4 + length {
                            let mut chunk = [0u8; 4096];
                            match sock.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let body =
                            String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).to_string();
                        buf.drain(..end + 4 + length);
                        let n = {
                            let mut r = s.requests.lock().unwrap();
                            r.push(format!("{head}\r\n\r\n{body}"));
                            r.len()
                        };
                        let (bytes, close) = answer(n);
                        if sock.write_all(&bytes).await.is_err() || close {
                            return;
                        }
                    }
                });
            }
        });
        (url, seen)
    }

    fn ok(body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    async fn get(c: &Http1, cap: u64) -> Result<Answer, Failure> {
        let headers = [(
            hyper::header::AUTHORIZATION,
            hyper::header::HeaderValue::from_static("Bearer t"),
        )];
        c.get(
            "/chats/9665?limit=2",
            &headers,
            &Bytes::from_static(b"{\"limit\":2}"),
            cap,
        )
        .await
    }

    #[test]
    fn an_answer_head_says_how_its_body_ends_and_whether_the_connection_stays() {
        let head = |text: &str| parse_head(text.as_bytes()).map_err(|e| format!("{e:?}"));
        for (text, framing, keep) in [
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n",
                Framing::Length(12),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 12\r\ncontent-length: 12\r\n\r\n",
                Framing::Length(12),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                Framing::Chunked,
                true,
            ),
            // Transfer-Encoding wins over Content-Length.
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 3\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n",
                Framing::Chunked,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
                Framing::Close,
                false,
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", Framing::Close, false),
            (
                "HTTP/1.1 200 OK\r\nconnection: keep-alive, Close\r\ncontent-length: 2\r\n\r\n",
                Framing::Length(2),
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n",
                Framing::Length(2),
                false,
            ),
            ("HTTP/1.1 204 No Content\r\n\r\n", Framing::Length(0), true),
        ] {
            let h = head(text)
                .unwrap()
                .unwrap_or_else(|| panic!("incomplete: {text:?}"));
            assert_eq!(
                (h.len, h.framing, h.keep),
                (text.len(), framing, keep),
                "{text:?}"
            );
        }
        let h = head("HTTP/1.1 429 Too Many\r\nRetry-After:  30 \r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((h.status, h.retry_after.as_deref()), (429, Some("30")));
        assert!(
            head("HTTP/1.1 200 OK\r\ncontent-le").unwrap().is_none(),
            "incomplete"
        );
        assert!(head("").unwrap().is_none());
        for bad in [
            "SSH-2.0-OpenSSH_9.6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n",
        ] {
            assert!(head(bad).is_err(), "{bad:?}");
        }
    }

    /// A real server on 127.0.0.1 that answers each request of one connection with the
    /// pieces of `answer`, written one by one with a pause between them.
    async fn slow_server(answer: Vec<&'static [u8]>) -> (String, Arc<Seen>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Seen::default());
        let s = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                s.connections.fetch_add(1, Ordering::SeqCst);
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let mut chunk = [0u8; 4096];
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        // The request's body is `{"limit":2}`, after its head.
                        if !buf.ends_with(b"{\"limit\":2}") {
                            continue;
                        }
                        buf.clear();
                        for piece in &answer {
                            if sock.write_all(piece).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(15)).await;
                        }
                    }
                });
            }
        });
        (url, seen)
    }

    #[tokio::test]
    async fn answers_arriving_in_pieces_are_read_whole_interim_answers_skipped() {
        let answers: [Vec<&'static [u8]>; 2] = [
            // A `100 Continue` first, then a head cut mid-line, a body in three pieces.
            vec![
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-len",
                b"gth: 11\r\n\r\nhel",
                b"lo wo",
                b"rld",
            ],
            // Chunked, with an extension and a trailer, the chunks cut anywhere.
            vec![
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r",
                b"\nhel",
                b"lo\r\n6\r\n world\r\n0\r\nx-trailer: 1",
                b"\r\n\r\n",
            ],
        ];
        for pieces in answers {
            let (url, _) = slow_server(pieces).await;
            let c = Http1::for_base_url(&url).unwrap();
            for _ in 0..2 {
                assert_eq!(get(&c, 1024).await.unwrap().body, b"hello world");
            }
            assert_eq!(c.idle_count(), 1, "kept");
        }
    }

    #[tokio::test]
    async fn a_body_without_a_length_ends_with_the_connection_which_is_not_kept() {
        let (url, seen) = server(|n| {
            (
                format!("HTTP/1.0 200 OK\r\n\r\nuntil the end {n}").into_bytes(),
                true,
            )
        })
        .await;
        let c = Http1::for_base_url(&url).unwrap();
        for n in 1..=2 {
            assert_eq!(
                get(&c, 1024).await.unwrap().body,
                format!("until the end {n}").into_bytes()
            );
            assert_eq!(c.idle_count(), 0);
        }
        assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
        // Past the cap, it is refused all the same.
        let (url, _) = server(|_| {
            (
                format!("HTTP/1.1 200 OK\r\n\r\n{}", "z".repeat(5000)).into_bytes(),
                true,
            )
        })
        .await;
        let c = Http1::for_base_url(&url).unwrap();
        assert_eq!(get(&c, 4096).await.unwrap_err(), Failure::TooLarge);
    }

    #[tokio::test]
    async fn what_a_gateway_sends_unasked_on_an_idle_connection_is_never_taken_for_an_answer() {
        // After each answer the server sends a stray answer on the same connection (as a
        // server timing out an idle connection may, with `408`), and keeps it open.
        let (url, seen) = server(|n| {
            let mut bytes = ok(&format!("reply {n}"));
            bytes.extend_from_slice(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n\r\n");
            (bytes, false)
        })
        .await;
        let c = Http1::for_base_url(&url).unwrap();
        for n in 1..=3 {
            let a = get(&c, 1024).await.unwrap();
            assert_eq!((a.status, a.body), (200, format!("reply {n}").into_bytes()));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(seen.connections.load(Ordering::SeqCst), 3);
        // The same, the stray answer arriving a moment after the answer was read.
        let (url, seen) = slow_server(vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nreply",
            b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n\r\n",
        ])
        .await;
        let c = Http1::for_base_url(&url).unwrap();
        for _ in 1..=3 {
            let a = get(&c, 1024).await.unwrap();
            assert_eq!((a.status, a.body), (200, b"reply".to_vec()));
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
        assert_eq!(seen.connections.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn garbage_instead_of_an_answer_is_a_transport_error_not_retried() {
        let (url, seen) = server(|_| (b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec(), false)).await;
        let c = Http1::for_base_url(&url).unwrap();
        match get(&c, 1024).await {
            Err(Failure::Transport(e)) => assert!(e.contains("not HTTP/1.1"), "{e}"),
            other => panic!("{other:?}"),
        }
        let (url, _) = server(|_| {
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n".to_vec(),
                false,
            )
        })
        .await;
        let c = Http1::for_base_url(&url).unwrap();
        match get(&c, 1024).await {
            Err(Failure::Transport(e)) => assert!(e.contains("chunk size"), "{e}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(seen.requests.lock().unwrap().len(), 1);
    }

    /// `body` chunked in pieces of `sizes` (cycled), each size line with an extension when
    /// `ext`, and `trailers` trailer lines.
    fn chunked(body: &[u8], sizes: &[usize], ext: bool, trailers: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let (mut at, mut i) = (0, 0);
        while at < body.len() {
            let n = sizes[i % sizes.len()].min(body.len() - at);
            i += 1;
            out.extend_from_slice(format!("{n:X}").as_bytes());
            if ext {
                out.extend_from_slice(b";name=\"v\"");
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(&body[at..at + n]);
            out.extend_from_slice(b"\r\n");
            at += n;
        }
        out.extend_from_slice(b"0\r\n");
        for t in 0..trailers {
            out.extend_from_slice(format!("x-t{t}: {t}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    proptest::proptest! {
        /// However the encoded body is cut as it arrives, the decoder gives back the body,
        /// says it is done exactly when its last byte is in, and keeps what follows apart.
        #[test]
        fn a_chunked_body_decodes_the_same_however_it_arrives(
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
            sizes in proptest::collection::vec(1usize..200, 1..5),
            ext in proptest::bool::ANY,
            trailers in 0usize..3,
            cuts in proptest::collection::vec(0usize..1000, 0..8),
            after in proptest::bool::ANY,
            compact in proptest::bool::ANY,
        ) {
            let encoded = chunked(&body, &sizes, ext, trailers);
            let mut stream = encoded.clone();
            if after {
                stream.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
            cuts.push(stream.len());
            cuts.sort_unstable();
            let (mut raw, mut got, mut dechunk) = (Vec::new(), Vec::new(), Dechunk::default());
            let (mut from, mut taken, mut done) = (0, 0, None);
            for cut in cuts {
                raw.extend_from_slice(&stream[from..cut]);
                from = cut;
                let step = dechunk.step(&raw, &mut got, u64::MAX).unwrap();
                if let Some(end) = step {
                    done = Some(taken + end);
                    break;
                }
                proptest::prop_assert!(cut < encoded.len(), "all of it is in, yet not done");
                if compact {
                    taken += dechunk.at;
                    dechunk.compact(&mut raw);
                }
            }
            proptest::prop_assert_eq!(done, Some(encoded.len()));
            proptest::prop_assert_eq!(got, body);
        }
    }

    #[test]
    fn a_chunked_body_past_the_cap_or_malformed_is_refused() {
        let step = |raw: &[u8], cap: u64| Dechunk::default().step(raw, &mut Vec::new(), cap);
        let encoded = chunked(&[7; 100], &[40], false, 0);
        assert!(matches!(step(&encoded, 100), Ok(Some(_))));
        assert!(matches!(
            step(&encoded, 99),
            Err(Broken::Failed(Failure::TooLarge))
        ));
        for bad in [&b"zz\r\n"[..], b"3\r\nabcd\r\n0\r\n\r\n", &[b'1'; 2000]] {
            assert!(
                matches!(step(bad, 1000), Err(Broken::Failed(Failure::Transport(_)))),
                "{:?}",
                String::from_utf8_lossy(&bad[..bad.len().min(20)])
            );
        }
    }

    #[test]
    fn only_plain_http_without_credentials_query_or_fragment_takes_this_path() {
        for (url, authority, prefix) in [
            ("http://127.0.0.1:3000", "127.0.0.1:3000", ""),
            ("http://gw.local/api/", "gw.local:80", "/api"),
            ("http://[::1]:8080/v1", "[::1]:8080", "/v1"),
        ] {
            let c = Http1::for_base_url(url).unwrap_or_else(|| panic!("{url}"));
            assert_eq!(
                (c.authority.as_str(), c.prefix.as_str()),
                (authority, prefix),
                "{url}"
            );
        }
        for url in [
            "https://gw.example.com",
            "http://user:pw@gw.local",
            "http://gw.local/?x=1",
            "http://gw.local/#f",
            "not a url",
        ] {
            assert!(Http1::for_base_url(url).is_none(), "{url}");
        }
    }

    #[tokio::test]
    async fn requests_reuse_one_connection_and_send_what_the_gateway_expects() {
        let (url, seen) = server(|n| (ok(&format!("reply {n}")), false)).await;
        let c = Http1::for_base_url(&format!("{url}/api/")).unwrap();
        for n in 1..=3 {
            let a = get(&c, 1024).await.unwrap();
            assert_eq!((a.status, a.body), (200, format!("reply {n}").into_bytes()));
        }
        assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
        assert_eq!(c.idle_count(), 1);
        let first = seen.requests.lock().unwrap()[0].clone();
        let host = url.trim_start_matches("http://");
        assert!(
            first.starts_with("GET /api/chats/9665?limit=2 HTTP/1.1\r\n"),
            "{first}"
        );
        assert!(
            first
                .to_ascii_lowercase()
                .contains(&format!("host: {host}\r\n")),
            "{first}"
        );
        assert!(first.contains("authorization: Bearer t\r\n"), "{first}");
        assert!(first.ends_with("\r\n\r\n{\"limit\":2}"), "{first}");
    }

    #[tokio::test]
    async fn connections_idle_for_longer_than_the_keep_are_closed_the_busy_ones_kept() {
        let (url, seen) = server(|n| (ok(&format!("reply {n}")), false)).await;
        let c = Http1::for_base_url(&url)
            .unwrap()
            .keeping_idle_for(Duration::from_millis(300));
        // A bunch of three at once: three connections.
        let (a, b, d) = tokio::join!(get(&c, 1024), get(&c, 1024), get(&c, 1024));
        assert!(a.is_ok() && b.is_ok() && d.is_ok());
        assert_eq!(
            (seen.connections.load(Ordering::SeqCst), c.idle_count()),
            (3, 3)
        );
        // Then one poll at a time, for longer than the keep: they take the top connection,
        // and the two below it, idle since the bunch, are closed.
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(120)).await;
            get(&c, 1024).await.unwrap();
        }
        assert_eq!(c.idle_count(), 1);
        assert_eq!(
            seen.connections.load(Ordering::SeqCst),
            3,
            "no new connection"
        );
    }

    #[tokio::test]
    async fn a_gateway_that_closes_after_each_answer_or_while_idle_costs_no_poll() {
        // Says so in the header: the connection is not kept.
        let (url, seen) = server(|n| {
            let body = format!("closing {n}");
            (
                format!(
                    "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes(),
                true,
            )
        })
        .await;
        let c = Http1::for_base_url(&url).unwrap();
        for n in 1..=3 {
            assert_eq!(
                get(&c, 1024).await.unwrap().body,
                format!("closing {n}").into_bytes()
            );
        }
        assert_eq!(seen.connections.load(Ordering::SeqCst), 3);
        // Says nothing and hangs up after each answer (a keep-alive timeout): the kept
        // connection is found closed, or fails as the request goes, and a new one serves it.
        let (url, seen) = server(|n| (ok(&format!("quiet {n}")), true)).await;
        let c = Http1::for_base_url(&url).unwrap();
        for n in 1..=3 {
            assert_eq!(
                get(&c, 1024).await.unwrap().body,
                format!("quiet {n}").into_bytes()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(seen.connections.load(Ordering::SeqCst), 3);
        assert_eq!(
            seen.requests.lock().unwrap().len(),
            3,
            "no request sent twice"
        );
    }

    #[tokio::test]
    async fn chunked_bodies_are_read_whole_and_a_body_past_the_cap_is_refused() {
        let (url, _) = server(|n| match n {
            1 => (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n".to_vec(), false),
            2 => (ok(&"x".repeat(100)), false),
            _ => (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n40\r\n".iter().copied().chain([b'y'; 64]).chain(*b"\r\n40\r\n").chain([b'y'; 64]).chain(*b"\r\n0\r\n\r\n").collect(), false),
        })
        .await;
        let c = Http1::for_base_url(&url).unwrap();
        assert_eq!(get(&c, 1024).await.unwrap().body, b"hello world");
        assert_eq!(
            get(&c, 99).await.unwrap_err(),
            Failure::TooLarge,
            "said by content-length"
        );
        assert_eq!(
            get(&c, 100).await.unwrap_err(),
            Failure::TooLarge,
            "seen while reading"
        );
    }

    #[tokio::test]
    async fn a_refusal_keeps_its_status_and_retry_after_and_an_absent_gateway_is_a_transport_error()
    {
        let (url, _) = server(|_| (b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 7\r\ncontent-length: 4\r\n\r\nslow".to_vec(), false)).await;
        let c = Http1::for_base_url(&url).unwrap();
        let a = get(&c, 1024).await.unwrap();
        assert_eq!(
            (a.status, a.retry_after.as_deref(), a.body.len()),
            (429, Some("7"), 0)
        );
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let c = Http1::for_base_url(&format!("http://127.0.0.1:{port}")).unwrap();
        match get(&c, 1024).await {
            Err(Failure::Transport(e)) => {
                assert!(e.starts_with("cannot connect to the gateway"), "{e}")
            }
            other => panic!("{other:?}"),
        }
    }
}
