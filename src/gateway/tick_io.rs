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
//! A read that waits does not try the socket again at every tick: that was a `recv` answering
//! "would block" for every waiting connection on every tick (at workload B, 1,000 chats, four
//! of five `recv` calls). Every connection is registered, edge-triggered, with one epoll set of
//! the process ([`Ledger`]); at each tick the first connection to look drains that set once
//! (`epoll_wait` with a zero timeout) into the set of sockets data reached since, and a waiting
//! connection tries its socket again only when it is in there. An edge is never lost: the
//! kernel keeps it until a drain, and a drain keeps it until the connection it belongs to
//! looks. A stale entry (data that arrived while the connection was reading anyway) costs one
//! `recv` that finds nothing. Without an epoll set (it could not be created), a waiting read
//! tries its socket at every tick as before.
//!
//! Owns: the socket's reads and writes for [`super::http1`], and the ledger of edges. Must
//! not: block (every call is non-blocking) or spin (a call that cannot make progress always waits for a tick).

use std::collections::HashSet;
use std::future::Future as _;
use std::io::{self, Write as _};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::{Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// The grid a waiting read or write retries on.
pub(super) const TICK: Duration = Duration::from_millis(4);

/// The grid's origin: the first instant any connection asked about.
fn origin(now: Instant) -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(|| now)
}

/// The number of the grid step `now` is in.
fn step(now: Instant) -> u128 {
    now.saturating_duration_since(origin(now)).as_nanos() / TICK.as_nanos()
}

/// The next grid instant after `now` (the grid starts at the first call in the process).
fn next_tick(now: Instant) -> Instant {
    let origin = origin(now);
    let n = step(now) + 1;
    origin + Duration::from_nanos((n * TICK.as_nanos()) as u64)
}

/// The process's epoll set of gateway connections, and the edges drained from it.
struct Ledger {
    epoll: OwnedFd,
    state: Mutex<Drained>,
}

#[derive(Default)]
struct Drained {
    /// The grid step of the last drain.
    step: Option<u128>,
    /// Sockets data (or the end of the stream) reached since they last looked.
    ready: HashSet<RawFd>,
}

impl Ledger {
    /// The process's ledger; `None` if the kernel would not create an epoll set.
    fn get() -> Option<&'static Ledger> {
        static LEDGER: OnceLock<Option<Ledger>> = OnceLock::new();
        LEDGER
            .get_or_init(|| {
                // SAFETY: epoll_create1 takes no pointers; a non-negative result is a new fd
                // that nothing else owns.
                let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
                (fd >= 0).then(|| Ledger {
                    epoll: unsafe { OwnedFd::from_raw_fd(fd) },
                    state: Mutex::default(),
                })
            })
            .as_ref()
    }

    /// Watches `fd` for data, edge-triggered; false if the kernel refused.
    fn add(&self, fd: RawFd) -> bool {
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: fd as u64,
        };
        // SAFETY: `event` is a valid epoll_event for the duration of the call.
        unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) == 0 }
    }

    /// Stops watching `fd` and forgets its edges (before the fd is closed and its number reused).
    fn remove(&self, fd: RawFd) {
        // SAFETY: a null event is allowed for EPOLL_CTL_DEL.
        unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            );
        }
        self.drained().ready.remove(&fd);
    }

    fn drained(&self) -> std::sync::MutexGuard<'_, Drained> {
        // The state is a set of numbers: a panic elsewhere cannot leave it half-written.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether data reached `fd` since it last looked, draining the kernel's edges first if
    /// nobody has in the grid step of `now`. Takes the answer: the next look starts afresh.
    fn take(&self, fd: RawFd, now: Instant) -> bool {
        let mut drained = self.drained();
        let step = step(now);
        if drained.step != Some(step) {
            drained.step = Some(step);
            const MAX: usize = 256;
            let mut events = [libc::epoll_event { events: 0, u64: 0 }; MAX];
            loop {
                // SAFETY: `events` has room for MAX entries; a zero timeout never blocks.
                let n = unsafe {
                    libc::epoll_wait(
                        self.epoll.as_raw_fd(),
                        events.as_mut_ptr(),
                        MAX as libc::c_int,
                        0,
                    )
                };
                if n <= 0 {
                    break;
                }
                let n = n as usize;
                drained
                    .ready
                    .extend(events[..n].iter().map(|e| e.u64 as RawFd));
                if n < MAX {
                    break;
                }
            }
        }
        drained.ready.remove(&fd)
    }
}

/// A connected, non-blocking TCP stream whose waits follow the grid.
pub(super) struct TickIo {
    stream: std::net::TcpStream,
    sleep: Option<Pin<Box<Sleep>>>,
    /// The ledger this socket is registered with; `None`: it tries its socket at every tick.
    ledger: Option<&'static Ledger>,
    /// The last `recv` found nothing, or a request went out since (an answer cannot be there
    /// before the gateway was told): a read asks the ledger before the socket.
    waiting: bool,
}

impl TickIo {
    /// Takes a connected stream out of the reactor (it is non-blocking from then on).
    pub(super) fn new(stream: tokio::net::TcpStream) -> io::Result<TickIo> {
        let stream = stream.into_std()?;
        stream.set_nonblocking(true)?;
        let ledger = Ledger::get().filter(|l| l.add(stream.as_raw_fd()));
        Ok(TickIo {
            stream,
            sleep: None,
            ledger,
            waiting: false,
        })
    }

    /// Whether the socket is worth a `recv`: always without a ledger or when the last read
    /// found something; else when the ledger saw data reach it.
    fn worth_reading(&mut self) -> bool {
        match self.ledger {
            Some(ledger) if self.waiting => ledger.take(self.stream.as_raw_fd(), Instant::now()),
            _ => true,
        }
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

    /// Reads into `dst`, waiting on the grid while nothing is there; `Ok(0)` at the end of the
    /// stream. The count returned is of bytes written at the start of `dst`.
    fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
        dst: &mut [MaybeUninit<u8>],
    ) -> Poll<io::Result<usize>> {
        loop {
            if !self.worth_reading() {
                if self.wait(cx).is_pending() {
                    return Poll::Pending;
                }
                continue;
            }
            self.waiting = false;
            // SAFETY: recv writes at most `dst.len()` bytes into `dst`.
            let n = unsafe {
                libc::recv(
                    self.stream.as_raw_fd(),
                    dst.as_mut_ptr().cast(),
                    dst.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n >= 0 {
                return Poll::Ready(Ok(n as usize));
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => {}
                _ => return Poll::Ready(Err(e)),
            }
            self.waiting = true;
            if self.wait(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }

    /// Reads what is there, at most `want` bytes, onto the end of `buf` (no zeroing first: at
    /// workload B zeroing each read's fresh room was 2 % of the daemon's CPU and most of its
    /// page faults). The count read, at least 1; `0` at the end of the stream.
    pub(super) async fn recv_onto(&mut self, buf: &mut Vec<u8>, want: usize) -> io::Result<usize> {
        buf.reserve(want);
        let n = std::future::poll_fn(|cx| {
            let spare = buf.spare_capacity_mut();
            let len = spare.len().min(want);
            self.poll_recv(cx, &mut spare[..len])
        })
        .await?;
        // SAFETY: recv initialized the first `n` bytes of the spare capacity (n ≤ its length).
        unsafe { buf.set_len(buf.len() + n) };
        Ok(n)
    }

    /// Writes all of `data`. From then on a read asks the ledger first: the answer cannot be
    /// there before the gateway got the request.
    pub(super) async fn send_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = std::future::poll_fn(|cx| self.until_ready(cx, |s| s.write(data))).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.waiting = true;
            data = &data[n..];
        }
        Ok(())
    }

    /// Whether nothing reached the socket since its last answer was read: no data the gateway
    /// sent unasked, no close. Asks the ledger, and the socket itself only when the ledger saw
    /// something (an edge may be stale: data that arrived while the answer was being read).
    pub(super) fn quiet(&mut self) -> bool {
        if let Some(ledger) = self.ledger
            && !ledger.take(self.stream.as_raw_fd(), Instant::now())
        {
            return true;
        }
        let mut byte = 0u8;
        // SAFETY: recv writes at most one byte into `byte`; MSG_PEEK leaves it in the socket.
        let n = unsafe {
            libc::recv(
                self.stream.as_raw_fd(),
                (&raw mut byte).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
    }
}

impl Drop for TickIo {
    fn drop(&mut self) {
        if let Some(ledger) = self.ledger {
            ledger.remove(self.stream.as_raw_fd());
        }
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

    /// Crosses into a later grid step, so that the next look drains the kernel's edges.
    fn next_step() {
        std::thread::sleep(TICK * 2);
    }

    #[test]
    fn the_ledger_says_when_data_reached_a_socket_and_only_once() {
        use std::io::Write;
        let ledger = Ledger::get().expect("an epoll set");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let fd = client.as_raw_fd();
        assert!(ledger.add(fd));

        next_step();
        assert!(!ledger.take(fd, Instant::now()), "nothing was sent yet");

        server.write_all(b"answer").unwrap();
        next_step();
        assert!(
            ledger.take(fd, Instant::now()),
            "the answer's edge is in the ledger"
        );
        assert!(!ledger.take(fd, Instant::now()), "taken once");
        next_step();
        assert!(!ledger.take(fd, Instant::now()), "no new data, no new edge");

        // The end of the stream is an edge too: a waiting read must see the gateway close.
        drop(server);
        next_step();
        assert!(
            ledger.take(fd, Instant::now()),
            "the close is in the ledger"
        );

        // Removed: its number may be reused by another socket, which must start clean.
        ledger.remove(fd);
        next_step();
        assert!(!ledger.take(fd, Instant::now()));
    }
}
