//! The floor of a poll's cost: fetch every chat's page on a kept connection and throw it away
//! — no parsing, no rules, no state, no webhooks — with blocking std I/O on one thread. Run it
//! as a peer of the side-by-side benchmark to see what the fetch alone costs on this machine:
//!
//! ```sh
//! cargo build --release --example fetch_floor
//! python3 ../shared/bench/peers/bench.py --name floor --runs 1 --chats 100 --rate 1 \
//!     -- target/release/examples/fetch_floor
//! ```
//!
//! It reads what the harness gives every peer (`GATEWAY_URL`, `GATEWAY_TOKEN`, `N_CHATS`,
//! `LIMIT`, `POLL_INTERVAL`, `RUN_SECONDS`) and polls chat `i` as the mock names synthetic
//! chats (`9665` and the 8 digits of 10,000,000 + i). Measured in the README ("the cost of a
//! poll"): this alone is about 0.06× the naive Python poller's CPU at workload A, so a full
//! poller at 0.1× would have 0.04× left for parsing, rules, state and webhooks together.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn env(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_string())
}

/// Reads one response (headers and a `Content-Length` body) into `buf`; false if it failed.
fn read_response(stream: &mut TcpStream, buf: &mut [u8]) -> bool {
    let mut have = 0;
    loop {
        let n = match stream.read(&mut buf[have..]) {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        have += n;
        if let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if have >= end + 4 + length {
                return true;
            }
        }
        if have == buf.len() {
            return false;
        }
    }
}

fn main() {
    let url = env("GATEWAY_URL", "http://127.0.0.1:8000");
    let host = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let token = env("GATEWAY_TOKEN", "");
    let chats: usize = env("N_CHATS", "100").parse().unwrap_or(100);
    let limit = env("LIMIT", "20");
    let interval: f64 = env("POLL_INTERVAL", "1").parse().unwrap_or(1.0);
    let run_for: f64 = env("RUN_SECONDS", "60").parse().unwrap_or(60.0);
    let mut conns: Vec<Option<TcpStream>> = (0..chats).map(|_| None).collect();
    let mut buf = vec![0u8; 1 << 20];
    let start = Instant::now();
    let mut round = 0u32;
    while start.elapsed().as_secs_f64() < run_for {
        let due = start + Duration::from_secs_f64(interval * f64::from(round));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        round += 1;
        for (i, conn) in conns.iter_mut().enumerate() {
            let request = format!(
                "GET /chats/9665{:08}?limit={limit} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\r\n",
                10_000_000 + i
            );
            // A kept connection the gateway closed is opened again, once.
            for _ in 0..2 {
                if conn.is_none() {
                    *conn = TcpStream::connect(&host).ok();
                }
                let Some(stream) = conn.as_mut() else { break };
                if stream.write_all(request.as_bytes()).is_ok() && read_response(stream, &mut buf) {
                    break;
                }
                *conn = None;
            }
        }
    }
}
