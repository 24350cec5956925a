//! A gateway connection read on a shared clock instead of on readiness.
//!
//! Why: on a 2-core machine the CPU of a poll is mostly waking up. A socket registered with
//! the runtime's reactor wakes the daemon for every reply that arrives, and a gateway answers
//! a bunch of requests one by one, so 100 chats polled at once cost 100–200 wake-ups (each a
//! context switch, an `epoll_wait`, a task poll that reads a part of a reply). Here a
//! connection is a plain non-blocking socket the reactor never sees: a read that finds no
//! data waits for the next instant of a process-wide grid ([`TICK`]), so every connection
//! that is waiting wakes in the same turn of the runtime's timer, and a bunch's replies are
//! read in a handful of wake-ups. The price is at most one [`TICK`] of latency per read that
//! had to wait, which is nothing against a poll interval of seconds and a gateway that takes
//! tens of milliseconds to answer.
//!
//! Owns: the socket's reads, writes and shutdown for hyper ([`hyper::rt::Read`],
//! [`hyper::rt::Write`]). Must not: block (every call is non-blocking) or spin (a call that
//! cannot make progress always waits for a tick).

use std::io::{self, Write as _};
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// The grid a waiting read or write retries on.
pub(super) const TICK: Duration = Duration::from_millis(4);

/// The next grid instant after `now` (the grid starts at the first call in the process).
fn next_tick(now: Instant) -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(|| now);
    let tick = TICK.as_nanos();
    let since = now.saturating_duration_since(origin).as_nanos();
    let n = since / tick + 1;
    origin + Duration::from_nanos((n * tick) as u64)
}

/// A connected, non-blocking TCP stream whose waits follow the grid.
pub(super) struct TickIo {
    stream: std::net::TcpStream,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl TickIo {
    /// Takes a connected stream out of the reactor (it is non-blocking from then on).
    pub(super) fn new(stream: tokio::net::TcpStream) -> io::Result<TickIo> {
        let stream = stream.into_std()?;
        stream.set_nonblocking(true)?;
        Ok(TickIo {
            stream,
            sleep: None,
        })
    }

    /// Runs `op` until it does not say "would block", waiting for the grid in between.
    fn until_ready<T>(
        &mut self,
        cx: &mut Context<'_>,
        mut op: impl FnMut(&mut &std::net::TcpStream) -> io::Result<T>,
    ) -> Poll<io::Result<T>> {
        loop {
            match op(&mut &self.stream) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => return Poll::Ready(done),
            }
            if self.wait(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }

    /// Pending until the next grid instant (the task is woken then); Ready when the instant
    /// this connection waited for has passed (the caller tries again).
    fn wait(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let now = Instant::now();
        match &mut self.sleep {
            Some(s) if s.deadline() > now => return s.as_mut().poll(cx),
            Some(s) if !s.is_elapsed() => {
                // Its instant passed but the timer has not said so yet: it wakes us soon.
                return s.as_mut().poll(cx);
            }
            _ => {}
        }
        let at = next_tick(now);
        match &mut self.sleep {
            Some(s) => s.as_mut().reset(at),
            None => self.sleep = Some(Box::pin(tokio::time::sleep_until(at))),
        }
        match self.sleep.as_mut().map(|s| s.as_mut().poll(cx)) {
            Some(Poll::Pending) | None => Poll::Pending,
            Some(Poll::Ready(())) => Poll::Ready(()),
        }
    }
}

use std::future::Future as _;

impl hyper::rt::Read for TickIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            // SAFETY: recv writes at most `len` bytes into the cursor's unfilled part, and
            // only the `n` bytes it reports written are marked filled.
            let n = unsafe {
                let dst: &mut [MaybeUninit<u8>] = buf.as_mut();
                libc::recv(
                    this.stream.as_raw_fd(),
                    dst.as_mut_ptr().cast(),
                    dst.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n >= 0 {
                // SAFETY: recv initialized the first `n` bytes.
                unsafe { buf.advance(n as usize) };
                return Poll::Ready(Ok(()));
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => {}
                _ => return Poll::Ready(Err(e)),
            }
            if this.wait(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

impl hyper::rt::Write for TickIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().until_ready(cx, |s| s.write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().until_ready(cx, |s| s.write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_on_one_grid_and_always_ahead() {
        let a = Instant::now();
        let t1 = next_tick(a);
        assert!(t1 > a && t1 - a <= TICK);
        let b = a + Duration::from_micros(1_300);
        let t2 = next_tick(b);
        assert!(t2 > b && t2 - b <= TICK);
        // Two instants in the same grid step wait for the same tick.
        let steps = |t: Instant| (t - next_tick(a)).as_nanos() % TICK.as_nanos();
        assert_eq!(steps(t2), 0);
        assert_eq!(next_tick(t1), t1 + TICK);
    }
}
