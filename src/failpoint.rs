//! Fail points: named places where a test can make the process die as if SIGKILLed, to prove
//! that a crash at that exact point loses and repeats nothing (README, "Guarantees").
//!
//! `CARTAT_FAILPOINT=NAME` (or `NAME:N`, the N-th time it is reached, default the first) is read
//! once; when the named point is reached the process calls [`std::process::abort`] — no
//! destructors, no flush, no SQLite rollback: what a SIGKILL leaves behind. The points are
//! `after_fetch` (the poller has a page, nothing is stored), `in_transaction` (the poll
//! transaction is written but not committed), `after_commit` (committed, the dispatcher not yet
//! woken) and `after_post` (a receiver answered, the outcome is not recorded); and
//! `digest_before_commit` (a digest window's webhooks are queued and its firings deleted, not
//! committed), which only a digest rule reaches, so it is not in [`POINTS`].
//!
//! Compiled in always and inert unless the variable is set: one atomic load per call, and the
//! integration tests run the very binary users get (no second build with a cargo feature).
//! Must not: do anything else — no logging, no I/O beyond one line on stderr before aborting.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable naming the armed fail point.
pub const ENV: &str = "CARTAT_FAILPOINT";

/// Every fail point the code has, for tests and documentation.
pub const POINTS: [&str; 4] = [
    "after_fetch",
    "in_transaction",
    "after_commit",
    "after_post",
];

struct Armed {
    name: String,
    nth: u64,
    hits: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| std::env::var(ENV).ok().and_then(|v| parse(&v)))
        .as_ref()
}

/// `NAME` or `NAME:N` → the armed point; empty or malformed → none.
fn parse(value: &str) -> Option<Armed> {
    let value = value.trim();
    let (name, nth) = match value.split_once(':') {
        Some((name, n)) => (name, n.trim().parse::<u64>().ok().filter(|n| *n > 0)?),
        None => (value, 1),
    };
    (!name.is_empty()).then(|| Armed {
        name: name.to_string(),
        nth,
        hits: AtomicU64::new(0),
    })
}

/// Aborts the process if `name` is the armed fail point and this is its N-th hit.
#[inline]
pub fn hit(name: &str) {
    let Some(armed) = armed() else { return };
    if armed.name != name {
        return;
    }
    if armed.hits.fetch_add(1, Ordering::SeqCst) + 1 == armed.nth {
        eprintln!("cartat-rules: fail point `{name}` reached: aborting (simulated crash)");
        std::process::abort();
    }
}

/// The environment variable naming a pause point: `NAME:N:MS` makes the N-th pass through
/// the named point wait MS milliseconds — the poller's `after_fetch` (a poll has its page) or
/// `before_commit` (a poll has decided and holds its commit back) — so that a test can freeze
/// the process (SIGSTOP) with a poll in flight.
pub const PAUSE_ENV: &str = "CARTAT_PAUSE";

/// How long to pause at `name` now, if this is the armed pass (says so on stderr).
pub fn pause_for(name: &str) -> Option<std::time::Duration> {
    struct Pause {
        name: String,
        nth: u64,
        ms: u64,
        hits: AtomicU64,
    }
    static PAUSE: OnceLock<Option<Pause>> = OnceLock::new();
    let p = PAUSE
        .get_or_init(|| {
            let v = std::env::var(PAUSE_ENV).ok()?;
            let mut parts = v.trim().splitn(3, ':');
            let name = parts.next()?.to_string();
            let nth = parts.next()?.parse().ok().filter(|n| *n > 0)?;
            let ms = parts.next()?.parse().ok()?;
            Some(Pause {
                name,
                nth,
                ms,
                hits: AtomicU64::new(0),
            })
        })
        .as_ref()?;
    if p.name != name || p.hits.fetch_add(1, Ordering::SeqCst) + 1 != p.nth {
        return None;
    }
    eprintln!(
        "cartat-rules: pause point `{name}` reached: pausing {} ms",
        p.ms
    );
    Some(std::time::Duration::from_millis(p.ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_name_and_an_optional_count() {
        let a = parse("after_post").unwrap();
        assert_eq!((a.name.as_str(), a.nth), ("after_post", 1));
        let a = parse(" in_transaction:3 ").unwrap();
        assert_eq!((a.name.as_str(), a.nth), ("in_transaction", 3));
        assert!(parse("").is_none());
        assert!(parse("after_fetch:0").is_none());
        assert!(parse("after_fetch:x").is_none());
    }

    #[test]
    fn an_unarmed_point_does_nothing() {
        // The test process has no CARTAT_FAILPOINT: every point is inert.
        for p in POINTS {
            hit(p);
        }
    }
}
