//! HTTP details both sides of the daemon read the same way: a `Retry-After` header (the
//! gateway's 429s, a receiver's 429s and 503s) and an error's chain of causes on one line.
//!
//! Owns: those two readings. Must not: name any other module of the crate.

use std::time::Duration;

/// The largest wait a `Retry-After` may impose on one delivery.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(15 * 60);
/// The smallest wait a `Retry-After` may ask for (0 and past dates become this).
pub const RETRY_AFTER_MIN: Duration = Duration::from_secs(1);

/// Retry-After as seconds ("120") or an HTTP date ("Wed, 21 Oct 2015 07:28:00 GMT"),
/// relative to now; clamped to [1s, 15min]; None if unparsable.
///
/// Dates are accepted in the three forms HTTP recipients must read (RFC 9110 §5.6.7):
/// IMF-fixdate, the obsolete RFC 850 form and asctime.
pub(crate) fn parse_retry_after(value: &str, now_unix: i64) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    let secs: u64 = if value.bytes().all(|b| b.is_ascii_digit()) {
        // All digits: a number of seconds; one too large for u64 is simply "very long".
        value.parse().unwrap_or(u64::MAX)
    } else {
        let at = parse_http_date(value)?;
        u64::try_from(at.saturating_sub(now_unix)).unwrap_or(0)
    };
    Some(Duration::from_secs(secs).clamp(RETRY_AFTER_MIN, RETRY_AFTER_MAX))
}

/// Unix seconds of an HTTP date, or None.
fn parse_http_date(value: &str) -> Option<i64> {
    // IMF-fixdate is RFC 2822 in GMT; jiff's RFC 2822 parser reads it (and the day name).
    if let Ok(zoned) = jiff::fmt::rfc2822::parse(value) {
        return Some(zoned.timestamp().as_second());
    }
    // RFC 850: "Sunday, 06-Nov-94 08:49:37 GMT"; asctime: "Sun Nov  6 08:49:37 1994".
    let (body, fmt) = if let Some(rest) = value.strip_suffix(" GMT") {
        (rest, "%A, %d-%b-%y %H:%M:%S")
    } else {
        (value, "%a %b %e %H:%M:%S %Y")
    };
    let normalized = body.split_ascii_whitespace().collect::<Vec<_>>().join(" ");
    let dt = jiff::civil::DateTime::strptime(fmt, &normalized).ok()?;
    dt.to_zoned(jiff::tz::TimeZone::UTC)
        .ok()
        .map(|z| z.timestamp().as_second())
}

/// An error and its sources on one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_445_412_480; // Wed, 21 Oct 2015 07:28:00 GMT

    #[test]
    fn parse_retry_after_table() {
        let s = |n: u64| Some(Duration::from_secs(n));
        let cases: &[(&str, Option<Duration>)] = &[
            ("120", s(120)),
            (" 120 ", s(120)),
            ("1", s(1)),
            ("0", s(1)),
            ("900", s(900)),
            ("901", s(900)),
            ("86400", s(900)),
            ("99999999999999999999999", s(900)),
            ("Wed, 21 Oct 2015 07:28:00 GMT", s(1)), // now → 1s
            ("Wed, 21 Oct 2015 07:00:00 GMT", s(1)), // past → 1s
            ("Thu, 01 Jan 1970 00:00:00 GMT", s(1)), // long past → 1s
            ("Wed, 21 Oct 2015 07:28:42 GMT", s(42)), // future
            ("Wed, 21 Oct 2015 07:33:00 GMT", s(300)), // future
            ("Wed, 21 Oct 2015 09:28:00 GMT", s(900)), // far future → 15 min
            ("Wednesday, 21-Oct-15 07:29:00 GMT", s(60)), // RFC 850
            ("Wed Oct 21 07:30:00 2015", s(120)),    // asctime
            ("Thu Oct  1 07:30:00 2015", s(1)),      // asctime, day padded, past
            ("", None),
            ("   ", None),
            ("-5", None),
            ("-0", None),
            ("+5", None),
            ("1.5", None),
            ("12s", None),
            ("soon", None),
            ("Wed, 32 Oct 2015 07:28:00 GMT", None),
            ("Wed, 21 Oct 2015 07:28:00", None),
            ("\u{661}\u{662}", None), // Arabic-Indic digits are not HTTP digits
        ];
        for (value, want) in cases {
            assert_eq!(parse_retry_after(value, NOW), *want, "{value:?}");
        }
    }
}
