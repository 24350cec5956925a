//! Delivery outcome classification and the retry schedule.
//!
//! Owns: turning what one delivery attempt produced on the wire ([`AttemptResult`]) into a
//! [`Verdict`] (delivered, retry, dead letter, endpoint gone), parsing `Retry-After`, and
//! computing when the next attempt is due ([`next_delay`]) from the [`RetryPolicy`].
//!
//! Must not: do I/O, read the clock or a global RNG — `now` and the RNG are inputs, so the
//! dispatcher and the tests control time and jitter. It never panics on a receiver's input
//! (status codes, header values).

use std::time::Duration;

use crate::net::http::parse_retry_after;
pub use crate::net::http::{RETRY_AFTER_MAX, RETRY_AFTER_MIN};

/// How often and how long a delivery is retried.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; after the last one fails → dead letter. Default 12.
    pub max_attempts: u32,
    /// Delay before attempt 2, 3, …; the last entry repeats. Default spreads 12 attempts over
    /// ~2 days: 5s, 30s, 2m, 5m, 15m, 30m, 1h, 2h, 5h, 10h, 24h (sum ≈ 43h).
    /// An empty schedule means the default one.
    pub schedule: Vec<Duration>,
    /// ±fraction of each delay drawn at random, default 0.2 (clamped to 0..=1).
    pub jitter: f64,
    /// Floor after a 429 or a timeout, default 60s.
    pub min_after_throttle: Duration,
}

fn default_schedule() -> Vec<Duration> {
    [
        5, 30, 120, 300, 900, 1_800, 3_600, 7_200, 18_000, 36_000, 86_400,
    ]
    .into_iter()
    .map(Duration::from_secs)
    .collect()
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 12,
            schedule: default_schedule(),
            jitter: 0.2,
            min_after_throttle: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// Scales every delay (and the throttle floor) by `factor` — so tests can compress two
    /// days into seconds. A negative or NaN factor leaves the policy unchanged; results
    /// saturate at `Duration::MAX`. A `Retry-After` sent by a receiver is not scaled.
    pub fn scaled(&self, factor: f64) -> RetryPolicy {
        if factor.is_nan() || factor < 0.0 {
            return self.clone();
        }
        RetryPolicy {
            max_attempts: self.max_attempts,
            schedule: self
                .schedule
                .iter()
                .map(|d| mul_duration(*d, factor))
                .collect(),
            jitter: self.jitter,
            min_after_throttle: mul_duration(self.min_after_throttle, factor),
        }
    }
}

/// `d * factor`, saturating instead of panicking (factor must be ≥ 0; NaN gives zero).
fn mul_duration(d: Duration, factor: f64) -> Duration {
    Duration::try_from_secs_f64(d.as_secs_f64() * factor).unwrap_or(if factor > 0.0 {
        Duration::MAX
    } else {
        Duration::ZERO
    })
}

/// What one delivery attempt produced, as seen on the wire.
#[derive(Clone, Debug, PartialEq)]
pub enum AttemptResult {
    /// Any HTTP response; `retry_after` = raw Retry-After header value.
    Status {
        code: u16,
        retry_after: Option<String>,
    },
    /// No response within `webhooks.timeout`.
    Timeout,
    /// Connection refused/reset, DNS failure, TLS failure…
    Connect(String),
    /// The SSRF guard refused the target — never retried.
    Refused(String),
}

/// The classification of an attempt.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// 2xx.
    Delivered,
    /// 429, 5xx, 408, timeouts, connection errors; `throttled` = 429 or timeout.
    /// `retry_after` is the receiver's `Retry-After`, parsed and clamped, on any of them.
    Retry {
        reason: String,
        throttled: bool,
        retry_after: Option<Duration>,
    },
    /// Other 4xx, 3xx ("redirect not followed"), 1xx and nonsense codes, refused targets.
    Dead { reason: String },
    /// 410: disables the endpoint until the config changes.
    Gone,
}

/// `HTTP 404 Not Found`, or `HTTP 499` when the code has no standard reason phrase.
fn status_text(code: u16) -> String {
    match reqwest::StatusCode::from_u16(code)
        .ok()
        .and_then(|s| s.canonical_reason())
    {
        Some(reason) => format!("HTTP {code} {reason}"),
        None => format!("HTTP {code}"),
    }
}

/// Classifies one attempt. `now_unix` is used to read a `Retry-After` given as a date.
pub fn classify(result: &AttemptResult, now_unix: i64) -> Verdict {
    match result {
        AttemptResult::Status { code, retry_after } => {
            let code = *code;
            let retry = |throttled: bool| Verdict::Retry {
                reason: status_text(code),
                throttled,
                retry_after: retry_after
                    .as_deref()
                    .and_then(|v| parse_retry_after(v, now_unix)),
            };
            match code {
                200..=299 => Verdict::Delivered,
                410 => Verdict::Gone,
                429 => retry(true),
                408 => retry(false),
                500..=599 => retry(false),
                300..=399 => Verdict::Dead {
                    reason: format!("{}: redirect not followed", status_text(code)),
                },
                400..=499 => Verdict::Dead {
                    reason: format!("{}: not retried", status_text(code)),
                },
                _ => Verdict::Dead {
                    reason: format!("HTTP {code}: unexpected status code"),
                },
            }
        }
        AttemptResult::Timeout => Verdict::Retry {
            reason: "timed out".to_owned(),
            throttled: true,
            retry_after: None,
        },
        AttemptResult::Connect(e) => Verdict::Retry {
            reason: format!("connection failed: {e}"),
            throttled: false,
            retry_after: None,
        },
        AttemptResult::Refused(e) => Verdict::Dead {
            reason: format!("target refused: {e}"),
        },
    }
}

/// When to try again after attempt number `attempt` (1-based) failed with `verdict`, or
/// None when the attempts are used up (→ dead letter) or the verdict is not a retry.
///
/// delay = schedule[attempt-1] (last entry repeated) with ±jitter from `rng`; if throttled:
/// max(delay, min_after_throttle, retry_after); a `Retry-After` on a non-throttled retry
/// (503, 408) is honoured too: max(delay, retry_after).
pub fn next_delay(
    policy: &RetryPolicy,
    attempt: u32,
    verdict: &Verdict,
    rng: &mut impl rand::Rng,
) -> Option<Duration> {
    let Verdict::Retry {
        throttled,
        retry_after,
        ..
    } = verdict
    else {
        return None;
    };
    if attempt >= policy.max_attempts {
        return None;
    }
    let fallback;
    let schedule = if policy.schedule.is_empty() {
        fallback = default_schedule();
        &fallback
    } else {
        &policy.schedule
    };
    let index = usize::try_from(attempt.saturating_sub(1))
        .unwrap_or(usize::MAX)
        .min(schedule.len() - 1);
    let base = schedule[index];

    let jitter = if policy.jitter.is_nan() {
        0.0
    } else {
        policy.jitter.clamp(0.0, 1.0)
    };
    let factor = if jitter > 0.0 {
        1.0 + rng.random_range(-jitter..=jitter)
    } else {
        1.0
    };
    let mut delay = mul_duration(base, factor);

    if *throttled {
        delay = delay.max(policy.min_after_throttle);
    }
    if let Some(after) = retry_after {
        delay = delay.max(*after);
    }
    Some(delay)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const NOW: i64 = 1_445_412_480; // Wed, 21 Oct 2015 07:28:00 GMT

    fn status(code: u16) -> AttemptResult {
        AttemptResult::Status {
            code,
            retry_after: None,
        }
    }

    fn retry(reason: &str, throttled: bool, after: Option<u64>) -> Verdict {
        Verdict::Retry {
            reason: reason.to_owned(),
            throttled,
            retry_after: after.map(Duration::from_secs),
        }
    }

    fn dead(reason: &str) -> Verdict {
        Verdict::Dead {
            reason: reason.to_owned(),
        }
    }

    #[test]
    fn classify_table() {
        let with_after = |code: u16, v: &str| AttemptResult::Status {
            code,
            retry_after: Some(v.to_owned()),
        };
        let cases: Vec<(AttemptResult, Verdict)> = vec![
            (status(200), Verdict::Delivered),
            (status(201), Verdict::Delivered),
            (status(204), Verdict::Delivered),
            (status(299), Verdict::Delivered),
            (
                status(301),
                dead("HTTP 301 Moved Permanently: redirect not followed"),
            ),
            (status(302), dead("HTTP 302 Found: redirect not followed")),
            (
                status(307),
                dead("HTTP 307 Temporary Redirect: redirect not followed"),
            ),
            (
                status(308),
                dead("HTTP 308 Permanent Redirect: redirect not followed"),
            ),
            (status(400), dead("HTTP 400 Bad Request: not retried")),
            (status(401), dead("HTTP 401 Unauthorized: not retried")),
            (status(404), dead("HTTP 404 Not Found: not retried")),
            (status(408), retry("HTTP 408 Request Timeout", false, None)),
            (status(409), dead("HTTP 409 Conflict: not retried")),
            (status(410), Verdict::Gone),
            (status(413), dead("HTTP 413 Payload Too Large: not retried")),
            (
                status(422),
                dead("HTTP 422 Unprocessable Entity: not retried"),
            ),
            (status(429), retry("HTTP 429 Too Many Requests", true, None)),
            (
                with_after(429, "120"),
                retry("HTTP 429 Too Many Requests", true, Some(120)),
            ),
            (
                with_after(429, "Wed, 21 Oct 2015 07:30:00 GMT"),
                retry("HTTP 429 Too Many Requests", true, Some(120)),
            ),
            (
                with_after(429, "soon"),
                retry("HTTP 429 Too Many Requests", true, None),
            ),
            (status(499), dead("HTTP 499: not retried")),
            (
                status(500),
                retry("HTTP 500 Internal Server Error", false, None),
            ),
            (status(502), retry("HTTP 502 Bad Gateway", false, None)),
            (
                status(503),
                retry("HTTP 503 Service Unavailable", false, None),
            ),
            (
                with_after(503, "30"),
                retry("HTTP 503 Service Unavailable", false, Some(30)),
            ),
            (status(504), retry("HTTP 504 Gateway Timeout", false, None)),
            (status(599), retry("HTTP 599", false, None)),
            (status(100), dead("HTTP 100: unexpected status code")),
            (status(0), dead("HTTP 0: unexpected status code")),
            (status(600), dead("HTTP 600: unexpected status code")),
            (status(u16::MAX), dead("HTTP 65535: unexpected status code")),
            // Retry-After on a final answer changes nothing.
            (with_after(200, "120"), Verdict::Delivered),
            (with_after(410, "120"), Verdict::Gone),
            (AttemptResult::Timeout, retry("timed out", true, None)),
            (
                AttemptResult::Connect("connection refused".into()),
                retry("connection failed: connection refused", false, None),
            ),
            (
                AttemptResult::Refused("10.0.0.1 is private".into()),
                dead("target refused: 10.0.0.1 is private"),
            ),
        ];
        for (result, want) in cases {
            assert_eq!(classify(&result, NOW), want, "{result:?}");
        }
    }

    #[test]
    fn default_policy() {
        let p = RetryPolicy::default();
        assert_eq!(p.max_attempts, 12);
        assert_eq!(p.schedule.len() as u32, p.max_attempts - 1);
        assert_eq!(p.schedule[0], Duration::from_secs(5));
        assert_eq!(p.schedule[10], Duration::from_secs(24 * 3600));
        assert!(p.schedule.windows(2).all(|w| w[0] < w[1]), "schedule grows");
        let total: Duration = p.schedule.iter().sum();
        assert!(total >= Duration::from_secs(40 * 3600), "{total:?}");
        assert!(total <= Duration::from_secs(56 * 3600), "{total:?}");
        // Even with the whole jitter one way, the spread stays about two days.
        assert!(total.mul_f64(1.0 - p.jitter) >= Duration::from_secs(30 * 3600));
        assert_eq!(p.jitter, 0.2);
        assert_eq!(p.min_after_throttle, Duration::from_secs(60));
    }

    #[test]
    fn scaled_compresses() {
        let p = RetryPolicy::default().scaled(0.001);
        assert_eq!(p.max_attempts, 12);
        assert_eq!(p.schedule[0], Duration::from_millis(5));
        assert_eq!(p.schedule[10], Duration::from_millis(86_400));
        assert_eq!(p.min_after_throttle, Duration::from_millis(60));
        let total: Duration = p.schedule.iter().sum();
        assert!(total < Duration::from_secs(3 * 60), "{total:?}");
        assert_eq!(RetryPolicy::default().scaled(1.0), RetryPolicy::default());
        // Nonsense factors never panic.
        assert_eq!(RetryPolicy::default().scaled(-1.0), RetryPolicy::default());
        assert_eq!(
            RetryPolicy::default().scaled(f64::NAN),
            RetryPolicy::default()
        );
        assert_eq!(
            RetryPolicy::default().scaled(f64::INFINITY).schedule[0],
            Duration::MAX
        );
        assert_eq!(
            RetryPolicy::default().scaled(0.0).schedule[0],
            Duration::ZERO
        );
    }

    #[test]
    fn next_delay_bounds_with_jitter() {
        let p = RetryPolicy::default();
        let v = retry("HTTP 500", false, None);
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 1..p.max_attempts {
            let base = p.schedule[(attempt - 1) as usize];
            let (lo, hi) = (base.mul_f64(0.8), base.mul_f64(1.2));
            let mut seen_low = false;
            let mut seen_high = false;
            for _ in 0..200 {
                let d = next_delay(&p, attempt, &v, &mut rng)
                    .unwrap_or_else(|| panic!("attempt {attempt} got None"));
                assert!(
                    d >= lo && d <= hi,
                    "attempt {attempt}: {d:?} not in {lo:?}..={hi:?}"
                );
                seen_low |= d < base;
                seen_high |= d > base;
            }
            assert!(
                seen_low && seen_high,
                "attempt {attempt}: jitter goes both ways"
            );
        }
    }

    #[test]
    fn next_delay_is_deterministic_for_a_seed() {
        let p = RetryPolicy::default();
        let v = retry("x", false, None);
        let run = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (1..12)
                .map(|a| next_delay(&p, a, &v, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn next_delay_table() {
        let p = RetryPolicy {
            jitter: 0.0,
            ..RetryPolicy::default()
        };
        let s = |n: u64| Some(Duration::from_secs(n));
        let cases: Vec<(&str, u32, Verdict, Option<Duration>)> = vec![
            ("first retry", 1, retry("500", false, None), s(5)),
            ("attempt 0 treated as 1", 0, retry("500", false, None), s(5)),
            ("third", 3, retry("500", false, None), s(120)),
            ("last retry", 11, retry("500", false, None), s(86_400)),
            ("attempts used up", 12, retry("500", false, None), None),
            ("past the end", 40, retry("500", false, None), None),
            ("throttle floor", 1, retry("429", true, None), s(60)),
            (
                "throttle floor below schedule",
                7,
                retry("429", true, None),
                s(3_600),
            ),
            (
                "retry-after above floor",
                1,
                retry("429", true, Some(300)),
                s(300),
            ),
            (
                "retry-after below floor",
                1,
                retry("429", true, Some(10)),
                s(60),
            ),
            (
                "retry-after below schedule",
                8,
                retry("429", true, Some(900)),
                s(7_200),
            ),
            ("timeout floor", 2, retry("timed out", true, None), s(60)),
            (
                "503 retry-after honoured",
                1,
                retry("503", false, Some(30)),
                s(30),
            ),
            (
                "503 retry-after below schedule",
                5,
                retry("503", false, Some(30)),
                s(900),
            ),
            (
                "throttled but used up",
                12,
                retry("429", true, Some(5)),
                None,
            ),
            ("delivered", 1, Verdict::Delivered, None),
            ("dead", 1, dead("HTTP 404"), None),
            ("gone", 1, Verdict::Gone, None),
        ];
        let mut rng = StdRng::seed_from_u64(1);
        for (name, attempt, verdict, want) in cases {
            assert_eq!(next_delay(&p, attempt, &verdict, &mut rng), want, "{name}");
        }
    }

    #[test]
    fn next_delay_throttle_floor_holds_under_jitter() {
        let p = RetryPolicy::default();
        let mut rng = StdRng::seed_from_u64(3);
        for attempt in 1..=6 {
            for _ in 0..100 {
                let d = next_delay(&p, attempt, &retry("429", true, None), &mut rng);
                assert!(d >= Some(Duration::from_secs(60)), "{attempt}: {d:?}");
            }
        }
    }

    #[test]
    fn next_delay_last_entry_repeats_and_odd_policies() {
        let mut rng = StdRng::seed_from_u64(9);
        let v = retry("500", false, None);
        let short = RetryPolicy {
            max_attempts: 6,
            schedule: vec![Duration::from_secs(1), Duration::from_secs(2)],
            jitter: 0.0,
            min_after_throttle: Duration::from_secs(60),
        };
        let got: Vec<_> = (1..=6)
            .map(|a| next_delay(&short, a, &v, &mut rng))
            .collect();
        let s = |n| Some(Duration::from_secs(n));
        assert_eq!(got, vec![s(1), s(2), s(2), s(2), s(2), None]);

        let empty = RetryPolicy {
            schedule: vec![],
            jitter: 0.0,
            ..RetryPolicy::default()
        };
        assert_eq!(
            next_delay(&empty, 1, &v, &mut rng),
            s(5),
            "empty → default schedule"
        );

        let once = RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        };
        assert_eq!(
            next_delay(&once, 1, &v, &mut rng),
            None,
            "one attempt, no retry"
        );

        for jitter in [f64::NAN, -3.0, 5.0, f64::INFINITY] {
            let odd = RetryPolicy {
                jitter,
                ..RetryPolicy::default()
            };
            let d = next_delay(&odd, 2, &v, &mut rng);
            assert!(d <= s(60), "jitter {jitter}: {d:?}");
        }
    }

    #[test]
    fn scaled_policy_delays() {
        let p = RetryPolicy::default().scaled(0.001);
        let mut rng = StdRng::seed_from_u64(5);
        let mut total = Duration::ZERO;
        for attempt in 1..p.max_attempts {
            let d = next_delay(&p, attempt, &retry("500", false, None), &mut rng);
            total += d.unwrap_or_else(|| panic!("attempt {attempt}"));
        }
        assert!(total < Duration::from_secs(4 * 60), "{total:?}");
        assert_eq!(
            next_delay(&p, p.max_attempts, &retry("500", false, None), &mut rng),
            None
        );
        let throttled = next_delay(&p, 1, &retry("429", true, None), &mut rng);
        assert_eq!(
            throttled,
            Some(Duration::from_millis(60)),
            "floor is scaled too"
        );
    }
}
