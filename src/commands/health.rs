//! `cartat-rules health`: asks a running daemon's `GET /healthz` and exits 0 when it answers
//! 200, 1 otherwise — for a container's HEALTHCHECK or a monitoring probe, where no `curl`
//! may exist. The address is the config's `server.listen` (an unspecified address such as
//! `0.0.0.0` is asked on loopback) unless `--url` names one.
//!
//! Plain HTTP/1.1 over std's `TcpStream` with a deadline: one request to the daemon's own
//! server on this machine needs no runtime and no client library.

use crate::config::{self, EnvMode};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::{Duration, Instant};

pub(super) fn health(config_path: &Path, url: Option<&str>, timeout: Duration) -> u8 {
    let target = match url {
        Some(u) => match parse_url(u) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("cartat-rules health: {e}");
                return 1;
            }
        },
        None => match config::load(config_path, EnvMode::Optional) {
            Ok((c, _)) => match c.listen {
                Some(addr) => Target {
                    host: loopback_if_unspecified(addr).to_string(),
                    path: "/healthz".into(),
                },
                None => {
                    eprintln!(
                        "cartat-rules health: {} has `server.listen: off`: there is no /healthz to ask (set server.listen, or pass --url)",
                        config_path.display()
                    );
                    return 1;
                }
            },
            Err(d) => {
                eprint!("{d}");
                return 1;
            }
        },
    };
    match get(&target, timeout) {
        Ok((200, body)) => {
            println!("healthy: {}", body.trim());
            0
        }
        Ok((status, body)) => {
            println!("unhealthy ({status}): {}", body.trim());
            1
        }
        Err(e) => {
            eprintln!(
                "cartat-rules health: no answer from http://{}{}: {e}",
                target.host, target.path
            );
            1
        }
    }
}

/// Where to send the request: `host:port` and the path.
#[derive(Debug, PartialEq)]
pub(super) struct Target {
    pub(super) host: String,
    pub(super) path: String,
}

/// `http://host:port/path` (https is refused: the daemon's server speaks plain HTTP).
pub(super) fn parse_url(url: &str) -> Result<Target, String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        format!("`{url}`: only http:// urls (the daemon's server speaks plain HTTP)")
    })?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/healthz"),
    };
    if host.is_empty() {
        return Err(format!("`{url}` names no host"));
    }
    let host = if host.contains(':') && !host.ends_with(']') {
        host.to_string()
    } else {
        format!("{host}:80")
    };
    Ok(Target {
        host,
        path: path.to_string(),
    })
}

pub(super) fn loopback_if_unspecified(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => {
            SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, a.port()))
        }
        SocketAddr::V6(a) if a.ip().is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, a.port()))
        }
        other => other,
    }
}

/// One GET; the status and at most 4 KiB of the body.
fn get(target: &Target, timeout: Duration) -> Result<(u16, String), String> {
    request(target, "GET", &[], timeout)
        .map(|(status, body)| (status, body.chars().take(4096).collect()))
}

/// One request with an empty body; the status and at most 64 KiB of the answer's body.
pub(super) fn request(
    target: &Target,
    method: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<(u16, String), String> {
    let deadline = Instant::now() + timeout;
    let addrs: Vec<SocketAddr> = target
        .host
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .collect();
    let addr = addrs.first().ok_or("the host resolves to no address")?;
    let mut stream = TcpStream::connect_timeout(addr, timeout).map_err(|e| e.to_string())?;
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    stream
        .set_write_timeout(Some(left()))
        .map_err(|e| e.to_string())?;
    let mut head = format!(
        "{method} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: cartat-rules\r\nContent-Length: 0\r\n",
        target.path, target.host
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        stream
            .set_read_timeout(Some(left()))
            .map_err(|e| e.to_string())?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                reply.extend_from_slice(&buf[..n]);
                if reply.len() > 70 * 1024 {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if reply.is_empty() => return Err(e.to_string()),
            Err(_) => break,
        }
    }
    parse_reply(&reply)
}

/// The status code and body of an HTTP/1.x reply.
fn parse_reply(reply: &[u8]) -> Result<(u16, String), String> {
    let text = String::from_utf8_lossy(reply);
    let status_line = text.lines().next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|s| s.get(2..5))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("not an HTTP reply: {status_line:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    Ok((status, body.chars().take(64 * 1024).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_host_port_and_path() {
        let t = |host: &str, path: &str| Target {
            host: host.into(),
            path: path.into(),
        };
        assert_eq!(
            parse_url("http://127.0.0.1:9464/healthz"),
            Ok(t("127.0.0.1:9464", "/healthz"))
        );
        assert_eq!(
            parse_url("http://localhost:9464"),
            Ok(t("localhost:9464", "/healthz"))
        );
        assert_eq!(
            parse_url("http://example.com/h"),
            Ok(t("example.com:80", "/h"))
        );
        assert_eq!(
            parse_url("http://[::1]:9464/healthz"),
            Ok(t("[::1]:9464", "/healthz"))
        );
        assert_eq!(
            parse_url("http://[::1]/healthz"),
            Ok(t("[::1]:80", "/healthz"))
        );
        assert!(
            parse_url("https://x/healthz")
                .unwrap_err()
                .contains("only http://")
        );
        assert!(
            parse_url("http:///healthz")
                .unwrap_err()
                .contains("no host")
        );
    }

    #[test]
    fn an_unspecified_listen_address_is_asked_on_loopback() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            loopback_if_unspecified(a("0.0.0.0:9464")),
            a("127.0.0.1:9464")
        );
        assert_eq!(loopback_if_unspecified(a("[::]:9464")), a("[::1]:9464"));
        assert_eq!(
            loopback_if_unspecified(a("10.0.0.5:9464")),
            a("10.0.0.5:9464")
        );
    }

    #[test]
    fn replies_give_status_and_body() {
        assert_eq!(
            parse_reply(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
            Ok((200, "ok".into()))
        );
        assert_eq!(
            parse_reply(b"HTTP/1.1 503 Service Unavailable\r\n\r\nstore failing")
                .unwrap()
                .0,
            503
        );
        assert!(parse_reply(b"SSH-2.0-OpenSSH").is_err());
    }
}
