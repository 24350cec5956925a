//! Numbers in message text: the first number a customer wrote, in any of the digit systems
//! Gulf keyboards type (ASCII `0-9`, Arabic-Indic `٠-٩`, Persian `۰-۹`), with the separators
//! each uses. For `body.number` conditions and the rule scripts' `parse_int`/`parse_float`.
//!
//! What is read: an optional `-` right before the first digit (not glued to a letter), digits,
//! thousands groups (`,` or `٬` followed by exactly three digits: `1,500`, `١٬٥٠٠`), and one
//! decimal part (`.` or `٫` followed by a digit: `3.5`, `٣٫٥`). `1,50` is the number 1 (a
//! comma before two digits is not a thousands separator); `v2` is 2.
//!
//! Owns: reading numbers. Must not: read past the first number.

/// The value of a digit in any of the three systems.
fn digit(c: char) -> Option<u32> {
    match c {
        '0'..='9' => Some(c as u32 - '0' as u32),
        '\u{0660}'..='\u{0669}' => Some(c as u32 - 0x0660),
        '\u{06F0}'..='\u{06F9}' => Some(c as u32 - 0x06F0),
        _ => None,
    }
}

fn is_group_separator(c: char) -> bool {
    matches!(c, ',' | '\u{066C}')
}

fn is_decimal_point(c: char) -> bool {
    matches!(c, '.' | '\u{066B}')
}

/// A number read from text: its value, where it starts (its `-`, if any) and ends (bytes),
/// and whether it has a decimal part.
struct Scanned {
    value: f64,
    start: usize,
    end: usize,
    decimal: bool,
}

fn scan(text: &str) -> Option<Scanned> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut first = chars.iter().position(|&(_, c)| digit(c).is_some())?;
    // `.5` and `٫٥` are a half: the point belongs to the number when no digit precedes it.
    let bare_point = first > 0
        && is_decimal_point(chars[first - 1].1)
        && (first < 2 || !chars[first - 2].1.is_alphanumeric());
    let mut ascii = String::new();
    if bare_point {
        first -= 1;
        ascii.push('0');
    }
    let negative = first > 0
        && chars[first - 1].1 == '-'
        && (first < 2 || !chars[first - 2].1.is_alphanumeric());
    let is_digit = |j: usize| chars.get(j).is_some_and(|&(_, c)| digit(c).is_some());
    // The digits as ASCII, parsed once: summing `d * 0.1^k` rounds (0.3 would not be 0.3).
    let mut i = first;
    loop {
        while let Some(d) = chars.get(i).and_then(|&(_, c)| digit(c)) {
            ascii.push(char::from(b'0' + d as u8));
            i += 1;
        }
        // A thousands group: a separator and exactly three digits.
        match chars.get(i) {
            Some(&(_, c))
                if is_group_separator(c) && (i + 1..i + 4).all(is_digit) && !is_digit(i + 4) =>
            {
                i += 1;
            }
            _ => break,
        }
    }
    let mut decimal = false;
    if let Some(&(_, c)) = chars.get(i)
        && is_decimal_point(c)
        && is_digit(i + 1)
    {
        decimal = true;
        ascii.push('.');
        i += 1;
        while let Some(d) = chars.get(i).and_then(|&(_, c)| digit(c)) {
            ascii.push(char::from(b'0' + d as u8));
            i += 1;
        }
    }
    let value: f64 = ascii.parse().ok().filter(|v: &f64| v.is_finite())?;
    let start = if negative { first - 1 } else { first };
    Some(Scanned {
        value: if negative { -value } else { value },
        start: chars[start].0,
        end: chars.get(i).map_or(text.len(), |&(at, _)| at),
        decimal,
    })
}

/// The first number in `text`, if any.
pub fn first_number(text: &str) -> Option<f64> {
    scan(text).map(|s| s.value)
}

/// The number `text` is, whole (surrounding spaces allowed); `None` if it is anything else.
fn whole(text: &str) -> Option<Scanned> {
    let t = text.trim();
    scan(t).filter(|s| s.start == 0 && s.end == t.len())
}

/// `text` as a whole number (surrounding spaces allowed, digits in any system, thousands
/// groups allowed); `None` if it is anything else.
pub fn parse_int(text: &str) -> Option<i64> {
    whole(text)
        .filter(|s| !s.decimal && s.value.abs() < 9.0e15)
        .map(|s| s.value as i64)
}

/// `text` as a number (as [`parse_int`], a decimal part allowed); `None` if anything else.
pub fn parse_float(text: &str) -> Option<f64> {
    whole(text).map(|s| s.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_number_in_three_digit_systems() {
        let table: &[(&str, Option<f64>)] = &[
            ("order 4521 please", Some(4521.0)),
            ("طلب رقم ٤٥٢١", Some(4521.0)),
            ("سفارش ۴۵۲۱", Some(4521.0)),
            ("السعر ١٬٥٠٠ ريال", Some(1500.0)),
            ("total 1,500.50 SAR", Some(1500.5)),
            ("٣٫٥ كيلو", Some(3.5)),
            ("1,234,567", Some(1234567.0)),
            ("1,50", Some(1.0)),
            ("1,5000", Some(1.0)),
            ("v2 of the app", Some(2.0)),
            ("temperature -5 today", Some(-5.0)),
            ("item-5", Some(5.0)),
            ("no digits here", None),
            ("", None),
            ("3.", Some(3.0)),
            ("x ٠٠٧", Some(7.0)),
            // Decimals are exact as f64 reads them: what `eq` and `lte` compare.
            ("0.3", Some(0.3)),
            ("price 99.99", Some(99.99)),
            ("١٢٫٣٥", Some(12.35)),
            ("about .5 kg", Some(0.5)),
            ("-.25", Some(-0.25)),
            ("v.5", Some(5.0)),
        ];
        for (text, want) in table {
            assert_eq!(first_number(text), *want, "{text:?}");
        }
    }

    #[test]
    fn whole_numbers_parse_only_when_the_text_is_one() {
        assert_eq!(parse_int(" ١٢٣ "), Some(123));
        assert_eq!(parse_int("1,500"), Some(1500));
        assert_eq!(parse_int("-42"), Some(-42));
        assert_eq!(parse_int("42 SAR"), None);
        assert_eq!(parse_int("4.5"), None);
        assert_eq!(parse_int("abc"), None);
        assert_eq!(parse_int("1,50"), None);
        assert_eq!(parse_int("x1"), None);
        assert_eq!(parse_float("٣٫٥"), Some(3.5));
        assert_eq!(parse_float("2.25"), Some(2.25));
        assert_eq!(parse_float("2.25kg"), None);
        assert_eq!(parse_float(".5"), Some(0.5));
        assert_eq!(parse_int(".5"), None);
    }
}
