//! A one-byte-per-letter encoding of normalized text, for the keyword automaton only.
//!
//! Owns: [`encode`], and decoding one character forwards or backwards from a position.
//!
//! Why: in UTF-8 every Arabic letter takes two bytes, so an automaton over Arabic keywords has
//! twice the states and walks twice the bytes it would over one byte per letter. With ten
//! thousand keywords its table no longer fits in the CPU caches, and each extra byte is a
//! cache miss. This encoding gives each Arabic letter one byte, halving both.
//!
//! The code, byte by byte:
//! - `0x00..=0x7F`: the ASCII character itself;
//! - `0x80..=0xBF`: the Arabic code point U+0620 + (byte − 0x80), i.e. U+0620..=U+065F, every
//!   letter that normalized text can hold;
//! - [`ESCAPE`] (`0xF8`) then four digits in `0xC0..=0xF7` (base 56, most significant first):
//!   any other character.
//!
//! A character starts only at a byte below `0xC0` or at `ESCAPE`, and a digit is never the
//! first byte of a character, so an encoded keyword found in an encoded text always starts and
//! ends on character boundaries: a byte match is exactly a character match. The tests check
//! this against `str::contains`.
//!
//! Must not: be used for anything a user sees. It is not UTF-8.

use std::borrow::Cow;

use super::normalize::{normalize, normalize_compact};

/// Starts a character outside ASCII and U+0620..=U+065F.
pub const ESCAPE: u8 = 0xF8;
const DIGIT0: u8 = 0xC0;
const BASE: u32 = 56;
const ARABIC_FIRST: u32 = 0x0620;

/// The one byte that encodes `cp`, when it has one (ASCII and U+0620..=U+065F).
pub const fn one_byte(cp: u32) -> Option<u8> {
    if cp < 0x80 {
        Some(cp as u8)
    } else if cp >= ARABIC_FIRST && cp < ARABIC_FIRST + 0x40 {
        Some((0x80 + cp - ARABIC_FIRST) as u8)
    } else {
        None
    }
}

/// Appends the encoding of `normalize(raw)` to `out`. Returns the normalized text when it had
/// to build it (text outside the fast path's characters), so the caller need not build it
/// again; `None` when the encoding came straight from `raw`.
pub fn encode_normalized<'a>(raw: &'a str, out: &mut Vec<u8>) -> Option<Cow<'a, str>> {
    if normalize_compact(raw, out) {
        return None;
    }
    let normalized = normalize(raw);
    encode(&normalized, out);
    Some(normalized)
}

/// Grows `out` by the most that encoding `len` bytes of UTF-8 can take (a 2-byte character
/// becomes 5 bytes) and returns where the encoding starts. Writing into that slice and
/// truncating after keeps the length in a register: pushing byte by byte is twice as slow.
pub(crate) fn grow_for(out: &mut Vec<u8>, len: usize) -> usize {
    let start = out.len();
    out.resize(start + len / 2 * 5 + 5, 0);
    start
}

/// The code point of `bytes[i..i + 2]` read as a 2-byte UTF-8 sequence, whatever the bytes.
#[inline(always)]
pub(crate) fn two_byte_code_point(bytes: &[u8], i: usize) -> u32 {
    u32::from(bytes[i] & 0x1F) << 6 | u32::from(bytes.get(i + 1).copied().unwrap_or(0) & 0x3F)
}

/// Appends the encoding of `text` to `out`.
pub fn encode(text: &str, out: &mut Vec<u8>) {
    let bytes = text.as_bytes();
    let start = grow_for(out, bytes.len());
    let buf = &mut out[start..];
    let mut w = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        // The code point if `b` leads two bytes. Computed without asking which lead byte it
        // is: D8 and D9 alternate at random in Arabic text, and a branch on them would be
        // mispredicted at every other letter. Other lead bytes give values outside the range.
        let offset = two_byte_code_point(bytes, i).wrapping_sub(ARABIC_FIRST);
        if b < 0x80 {
            buf[w] = b;
            i += 1;
        } else if offset < 0x40 && b & 0xE0 == 0xC0 {
            buf[w] = 0x80 + offset as u8;
            i += 2;
        } else {
            // `i` is on a character boundary, so there is a character here.
            let Some(c) = text.get(i..).and_then(|t| t.chars().next()) else {
                break;
            };
            buf[w..w + 5].copy_from_slice(&escape(c));
            w += 5;
            i += c.len_utf8();
            continue;
        }
        w += 1;
    }
    out.truncate(start + w);
}

/// The escape of a character outside ASCII and U+0620..=U+065F.
pub fn escape(c: char) -> [u8; 5] {
    let mut v = c as u32;
    let mut code = [ESCAPE, DIGIT0, DIGIT0, DIGIT0, DIGIT0];
    for d in code[1..].iter_mut().rev() {
        *d = DIGIT0 + (v % BASE) as u8;
        v /= BASE;
    }
    code
}

fn unescape(digits: &[u8]) -> Option<char> {
    let v = digits.iter().try_fold(0u32, |v, &d| {
        Some(v * BASE + u32::from(d.checked_sub(DIGIT0)?))
    })?;
    char::from_u32(v)
}

/// The character that starts at `at` and its length in bytes; `None` at the end or when `at`
/// is not the start of a character.
pub fn char_at(bytes: &[u8], at: usize) -> Option<(char, usize)> {
    match *bytes.get(at)? {
        b @ 0..=0x7F => Some((char::from(b), 1)),
        b @ 0x80..=0xBF => Some((char::from_u32(ARABIC_FIRST + u32::from(b - 0x80))?, 1)),
        ESCAPE => Some((unescape(bytes.get(at + 1..at + 5)?)?, 5)),
        _ => None,
    }
}

/// The character that ends at `at` (exclusive) and its length in bytes; `None` at the start or
/// when `at` is not the end of a character.
pub fn char_before(bytes: &[u8], at: usize) -> Option<(char, usize)> {
    let last = *bytes.get(at.checked_sub(1)?)?;
    if last < 0xC0 {
        return char_at(bytes, at - 1);
    }
    let start = at.checked_sub(5)?;
    (bytes.get(start) == Some(&ESCAPE)).then_some(())?;
    char_at(bytes, start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc(s: &str) -> Vec<u8> {
        let mut out = Vec::new();
        encode(s, &mut out);
        out
    }

    fn decode(bytes: &[u8]) -> Option<String> {
        let mut out = String::new();
        let mut at = 0;
        while at < bytes.len() {
            let (c, len) = char_at(bytes, at)?;
            out.push(c);
            at += len;
        }
        Some(out)
    }

    fn decode_backwards(bytes: &[u8]) -> Option<String> {
        let mut out = Vec::new();
        let mut at = bytes.len();
        while at > 0 {
            let (c, len) = char_before(bytes, at)?;
            out.push(c);
            at -= len;
        }
        Some(out.into_iter().rev().collect())
    }

    #[test]
    fn table() {
        let cases: &[(&str, &[u8])] = &[
            ("", b""),
            ("bot", b"bot"),
            ("ؠ", &[0x80]),
            ("ا", &[0x87]),
            ("بوت", &[0x88, 0xA8, 0x8A]),
            ("ٟ", &[0xBF]),
            ("٠", &[ESCAPE, 0xC0, 0xC0, 0xDD, 0xC8]), // U+0660 = 29 × 56 + 8
            ("؟", &[ESCAPE, 0xC0, 0xC0, 0xDB, 0xF7]), // U+061F = 27 × 56 + 55
            ("é", &[ESCAPE, 0xC0, 0xC0, 0xC4, 0xC9]), // U+00E9 = 4 × 56 + 9
            ("a👍", &[b'a', ESCAPE, 0xC0, 0xE8, 0xEF, 0xC5]),
        ];
        for &(text, expected) in cases {
            assert_eq!(enc(text), expected, "encode({text:?})");
            assert_eq!(
                decode(expected).as_deref(),
                Some(text),
                "decode of {text:?}"
            );
        }
        assert_eq!(char_at(&[0xC5], 0), None, "a digit starts nothing");
        assert_eq!(
            char_before(&[b'a', 0xC5], 2),
            None,
            "a lone digit ends nothing"
        );
        let last = char::MAX.to_string();
        assert_eq!(decode(&enc(&last)), Some(last));
    }

    fn text() -> impl Strategy<Value = String> {
        let alphabet = prop::sample::select(vec![
            'a',
            'b',
            ' ',
            'ب',
            'و',
            'ت',
            'ا',
            'ل',
            'ؠ',
            'ٟ',
            '٠',
            '؟',
            'ۀ',
            'é',
            'ȁ',
            '\u{C0}',
            '\u{F7}',
            '\u{3C0}',
            '日',
            '👍',
            '\u{10FFFF}',
        ]);
        prop::collection::vec(alphabet, 0..12).prop_map(|cs| cs.into_iter().collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn round_trips_both_ways(s in any::<String>()) {
            let bytes = enc(&s);
            prop_assert_eq!(decode(&bytes), Some(s.clone()));
            prop_assert_eq!(decode_backwards(&bytes), Some(s));
        }

        /// The reason the encoding exists: searching encoded bytes finds a keyword exactly
        /// where searching the text finds it.
        #[test]
        fn a_byte_match_is_a_character_match(hay in text(), needle in text()) {
            prop_assume!(!needle.is_empty());
            let (h, n) = (enc(&hay), enc(&needle));
            let text_hits: Vec<usize> = hay
                .char_indices()
                .map(|(i, _)| i)
                .filter(|&i| hay[i..].starts_with(needle.as_str()))
                .collect();
            let mut byte_hits = Vec::new();
            for at in (0..h.len()).filter(|&at| h[at..].starts_with(&n)) {
                // Every byte hit starts on a character boundary: what precedes it decodes.
                let before = decode(&h[..at]);
                prop_assert!(before.is_some(), "hit at byte {} is inside a character", at);
                byte_hits.push(before.map_or(0, |b| b.len()));
            }
            prop_assert_eq!(byte_hits, text_hits);
        }
    }
}
