//! The gateway's plain-HTTP/1.1 path: hyper's connection API, each connection driven by the
//! poll that uses it, idle connections kept for the next poll.
//!
//! Why not reqwest here: a poll is one small GET to one host, and measured on the idle
//! workload (100 chats, every second, nothing new) reqwest's layers around hyper cost more
//! than the reply's parse: the url is parsed and IDNA-checked per request, the request
//! passes redirect and retry services and the pool, and the connection runs as its own task,
//! so every poll is handed between two tasks (and, on two workers, two threads). Here the
//! request is built from a path, and the poll's own task polls the connection while it waits,
//! so a poll is one task from request to parsed page. reqwest stays for `https://` gateways
//! and for `api.proxy` (TLS, proxies); both paths map to the same [`super::client::FetchError`]s.
//!
//! Owns: connecting (with a deadline), keeping idle connections (most recent first, at most
//! [`MAX_IDLE`]), retrying once on a fresh connection when a kept one turns out closed before
//! the gateway answered. Must not: read a body past the cap it is given, or retry anything the
//! gateway answered.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Body as _;
use hyper::client::conn::http1::{Connection, SendRequest};
use std::future::Future;
use std::pin::pin;
use std::sync::Mutex;
use std::task::Poll;
use tokio::net::TcpStream;

/// The most a connection's read buffer grows to.
const READ_BUFFER: usize = 16 * 1024;

/// Idle connections kept at most; more are closed when their poll ends.
pub const MAX_IDLE: usize = 256;

type Conn = Connection<super::tick_io::TickIo, Full<Bytes>>;

/// One connection: the request side and the connection future that does its I/O.
struct Link {
    send: SendRequest<Full<Bytes>>,
    conn: Conn,
    /// The connection future has finished (the gateway closed it, or it failed).
    done: bool,
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

/// A client for one `http://host:port[/prefix]` gateway.
pub struct Http1 {
    /// `host:port` to connect to (resolved at each new connection).
    authority: String,
    /// The `Host` header.
    host: hyper::header::HeaderValue,
    /// The base url's path, without its trailing `/`; request paths go after it.
    prefix: String,
    idle: Mutex<Vec<Link>>,
}

impl std::fmt::Debug for Http1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http1")
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

/// Polls `conn` while `fut` runs: `fut`'s output, or why the connection ended first (a
/// response that arrived with the close still counts).
async fn drive<F: Future>(conn: &mut Conn, done: &mut bool, fut: F) -> Result<F::Output, String> {
    let mut fut = pin!(fut);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        if *done {
            return Poll::Ready(Err(CLOSED.to_string()));
        }
        let Poll::Ready(r) = std::pin::Pin::new(&mut *conn).poll(cx) else {
            return Poll::Pending;
        };
        *done = true;
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        Poll::Ready(Err(match r {
            Ok(()) => CLOSED.to_string(),
            Err(e) => crate::net::http::error_chain(&e),
        }))
    })
    .await
}

const CLOSED: &str = "the gateway closed the connection";

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
            host: hyper::header::HeaderValue::try_from(host_header).ok()?,
            prefix: url.path().trim_end_matches('/').to_string(),
            idle: Mutex::new(Vec::new()),
        })
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Link>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many idle connections are kept now.
    pub fn idle_count(&self) -> usize {
        self.idle().len()
    }

    async fn connect(&self) -> Result<Link, Failure> {
        let stream = TcpStream::connect(&self.authority)
            .await
            .map_err(|e| Failure::Transport(format!("cannot connect to the gateway: {e}")))?;
        let _ = stream.set_nodelay(true);
        let io = super::tick_io::TickIo::new(stream)
            .map_err(|e| Failure::Transport(format!("cannot use the connection: {e}")))?;
        // hyper's read buffer grows with what it reads (up to 400 KiB) and stays grown: a
        // bunch of 256 connections reading 40 KB pages held 64 KiB each. A reply is copied out
        // as it comes, so 16 KiB reads cost a few more `recv`s and no more.
        let (send, conn) = hyper::client::conn::http1::Builder::new()
            .max_buf_size(READ_BUFFER)
            .handshake(io)
            .await
            .map_err(|e| Failure::Transport(crate::net::http::error_chain(&e)))?;
        Ok(Link {
            send,
            conn,
            done: false,
        })
    }

    /// A connection ready for a request: the most recent idle one still open, or a new one.
    /// Says whether it was kept (the gateway may close a kept one just as the request goes).
    async fn checkout(&self) -> Result<(Link, bool), Failure> {
        loop {
            let popped = self.idle().pop();
            let Some(mut link) = popped else {
                return Ok((self.connect().await?, false));
            };
            if link.done || link.send.is_closed() {
                continue;
            }
            let Link { send, conn, done } = &mut link;
            if let Ok(Ok(())) =
                drive(conn, done, std::future::poll_fn(|cx| send.poll_ready(cx))).await
            {
                return Ok((link, true));
            }
        }
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
        let uri = format!("{}{path}", self.prefix);
        let request = || {
            let mut req = hyper::Request::get(uri.as_str())
                .body(Full::new(body.clone()))
                .map_err(|e| Failure::Transport(format!("cannot build the request: {e}")))?;
            let h = req.headers_mut();
            h.insert(hyper::header::HOST, self.host.clone());
            for (k, v) in headers {
                h.insert(k, v.clone());
            }
            Ok::<_, Failure>(req)
        };
        let (mut link, mut kept) = self.checkout().await?;
        let response = loop {
            let Link { send, conn, done } = &mut link;
            match drive(conn, done, send.send_request(request()?)).await {
                Ok(Ok(r)) => break r,
                Ok(Err(e)) if kept && !e.is_parse() => {}
                Err(_) if kept => {}
                Ok(Err(e)) => return Err(Failure::Transport(crate::net::http::error_chain(&e))),
                Err(e) => return Err(Failure::Transport(e)),
            }
            link = self.connect().await?;
            kept = false;
        };
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            // The body is not read: the connection closes with it.
            return Ok(Answer::refusal(status, response.headers()));
        }
        let mut incoming = response.into_body();
        // Exact when the gateway sent `Content-Length`.
        let length = incoming.size_hint().exact();
        if length.is_some_and(|n| n > cap) {
            return Err(Failure::TooLarge);
        }
        let mut bytes = Vec::with_capacity(length.unwrap_or(64 * 1024).min(cap) as usize);
        loop {
            let Link { conn, done, .. } = &mut link;
            let frame = match drive(conn, done, incoming.frame()).await {
                Ok(None) => break,
                Ok(Some(Ok(frame))) => frame,
                Ok(Some(Err(e))) => {
                    return Err(Failure::Transport(crate::net::http::error_chain(&e)));
                }
                Err(e) => return Err(Failure::Transport(e)),
            };
            if let Ok(data) = frame.into_data() {
                if bytes.len() as u64 + data.len() as u64 > cap {
                    return Err(Failure::TooLarge);
                }
                bytes.extend_from_slice(&data);
            }
        }
        drop(incoming);
        let mut idle = self.idle();
        if !link.done && idle.len() < MAX_IDLE {
            idle.push(link);
        }
        Ok(Answer {
            status,
            retry_after: None,
            body: bytes,
        })
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
