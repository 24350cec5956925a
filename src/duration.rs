//! Human durations as the config writes them: `500ms`, `10s`, `5m`, `1h`, `2d`.
//!
//! Owns parsing and printing only; what a duration means is up to the caller.

use std::fmt;
use std::time::Duration;

/// Parses `500ms`, `10s`, `5m`, `1h`, `2d`, and sums of them written together, largest first
/// or not (`1h30m`, `2d12h`, `1m30s`); `0` alone is zero.
///
/// ```
/// use std::time::Duration;
/// use cartat_rules::duration::parse;
///
/// assert_eq!(parse("15m"), Ok(Duration::from_secs(900)));
/// assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
/// assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
/// assert!(parse("15").unwrap_err().contains("no unit"));
/// ```
pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.is_empty() {
        return Err("an empty duration: write it as 500ms, 10s, 5m, 1h or 2d".into());
    }
    let mut rest = t;
    let mut total: u64 = 0;
    let mut units_seen: Vec<&str> = Vec::new();
    while !rest.is_empty() {
        let split = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(|| {
            if rest == t {
                format!("`{t}` has no unit: write it as 500ms, 10s, 5m, 1h or 2d")
            } else {
                format!("`{t}` has no unit after `{rest}`: write it as 1h30m")
            }
        })?;
        let (num, after) = rest.split_at(split);
        if num.is_empty() {
            return Err(format!(
                "`{t}` is not a duration: write it as 500ms, 10s, 5m, 1h or 2d (or 1h30m)"
            ));
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("`{t}` is too large a duration"))?;
        let ms_per_unit: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => {
                return Err(format!(
                    "`{t}` has an unknown unit `{unit}`: use ms, s, m, h or d"
                ));
            }
        };
        if units_seen.contains(&unit) {
            return Err(format!(
                "`{t}` names `{unit}` twice: write each unit once, e.g. 1h30m"
            ));
        }
        units_seen.push(unit);
        total = n
            .checked_mul(ms_per_unit)
            .and_then(|ms| total.checked_add(ms))
            .ok_or_else(|| format!("`{t}` is too large a duration"))?;
        rest = next;
    }
    Ok(Duration::from_millis(total))
}

/// Prints a duration back in the shortest exact unit (`90s` → `90s`, `900s` → `15m`).
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// A duration read from config text; (de)serializes as its text form.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(pub Duration);

impl fmt::Debug for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format(self.0))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format(self.0))
    }
}

impl<'de> serde::Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s)
            .map(HumanDuration)
            .map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        let cases = [
            ("500ms", Duration::from_millis(500)),
            ("10s", Duration::from_secs(10)),
            ("5m", Duration::from_secs(300)),
            ("1h", Duration::from_secs(3600)),
            ("2d", Duration::from_secs(172_800)),
            ("0", Duration::ZERO),
            (" 15m ", Duration::from_secs(900)),
            ("1h30m", Duration::from_secs(5400)),
            ("2d12h", Duration::from_secs(216_000)),
            ("1m30s", Duration::from_secs(90)),
            ("1s500ms", Duration::from_millis(1500)),
            ("30m1h", Duration::from_secs(5400)),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn rejects_bad_text_with_a_hint() {
        for bad in [
            "10",
            "s",
            "10 s",
            "1.5s",
            "10x",
            "-1s",
            "99999999999999999999s",
            "1h30",
            "1h 30m",
            "1h-30m",
            "1h1h",
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains(bad.trim()), "{bad}: {err}");
        }
    }

    #[test]
    fn formats_in_the_largest_exact_unit() {
        assert_eq!(format(Duration::from_secs(900)), "15m");
        assert_eq!(format(Duration::from_secs(90)), "90s");
        assert_eq!(format(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format(Duration::from_secs(7200)), "2h");
    }
}
