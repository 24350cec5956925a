//! The fast path of [`super::normalize`]: one byte-level pass over text written in the
//! characters WhatsApp chats in the Gulf are made of — ASCII, the Arabic block, the invisible
//! controls that `normalize` removes, and emoji.
//!
//! Owns: the proof obligation that, for every text it accepts, it gives exactly what the
//! general path ([`super::general`]: NFKC streamed into the fold) gives. It accepts a text only
//! when every character is one whose NFKC form is itself and that composes with no other
//! accepted character, so NFKC is the identity on the whole text and only the fold is left.
//! The tests check that claim character by character and pair by pair against the general
//! path, and on random texts.
//!
//! Must not: guess. Any other character (Latin-1 letters, the marks U+0653–U+0655 that compose
//! with a letter before them, presentation forms, …) makes it return `None`, and the caller
//! takes the general path for the whole text.

use std::borrow::Cow;

use super::{fold_arabic, is_removed};
use crate::text::compact;

/// What happens to one character. Any other value is the code point that replaces it.
const KEEP: u32 = 0;
const DROP: u32 = 1;
/// Not for the fast path: NFKC would change it or compose it with its neighbour.
const SLOW: u32 = 2;

/// Per code point of the Arabic block U+0600–U+06FF: [`KEEP`], [`DROP`], [`SLOW`] or the
/// replacement.
static ARABIC: [u32; 256] = arabic_table();

const fn arabic_table() -> [u32; 256] {
    let mut table = [KEEP; 256];
    let mut i = 0;
    while i < 256 {
        let cp = 0x0600 + i as u32;
        // Every value in 0x0600..0x0700 is a valid `char`.
        let Some(c) = char::from_u32(cp) else {
            i += 1;
            continue;
        };
        table[i] = match cp {
            // Maddah, hamza above and below compose with the letter before them (ا + ٔ → أ,
            // و + ٔ → ؤ); the high hamza letters decompose under NFKC (ٵ → اٴ).
            0x0653..=0x0655 | 0x0675..=0x0678 => SLOW,
            _ if is_removed(c) => DROP,
            _ => match fold_arabic(c) {
                Some(folded) => folded as u32,
                None => KEEP,
            },
        };
        i += 1;
    }
    table
}

/// Characters outside ASCII and the Arabic block that are kept as they are: the symbols and
/// dingbats (❤ ✅ ☎), variation selectors and the emoji planes (no decomposition, no case, no
/// composition).
fn keep_other(cp: u32) -> bool {
    matches!(cp, 0x2600..=0x27BF | 0xFE00..=0xFE0F | 0x1F300..=0x1FAFF)
}

/// The character starting at `bytes[i]` (valid UTF-8): its length and what happens to it.
#[inline(always)]
fn step(bytes: &[u8], i: usize) -> (usize, u32) {
    let b = bytes[i];
    if b < 0x80 {
        return (
            1,
            if b.is_ascii_uppercase() {
                (b | 0x20) as u32
            } else {
                KEEP
            },
        );
    }
    let cont = |k: usize| (bytes.get(i + k).copied().unwrap_or(0) & 0x3F) as u32;
    match b {
        0xD8..=0xDB => (
            2,
            ARABIC[((((b & 0x1F) as u32) << 6 | cont(1)) - 0x0600) as usize],
        ),
        0xC0..=0xDF => {
            // Only the soft hyphen U+00AD: the rest of Latin-1 needs NFKC or lowercasing.
            let cp = ((b & 0x1F) as u32) << 6 | cont(1);
            (2, if cp == 0x00AD { DROP } else { SLOW })
        }
        0xE0..=0xEF => {
            let cp = ((b & 0x0F) as u32) << 12 | cont(1) << 6 | cont(2);
            (3, classify_other(cp))
        }
        _ => {
            let cp = ((b & 0x07) as u32) << 18 | cont(1) << 12 | cont(2) << 6 | cont(3);
            (4, classify_other(cp))
        }
    }
}

fn classify_other(cp: u32) -> u32 {
    match char::from_u32(cp) {
        Some(c) if is_removed(c) => DROP,
        _ if keep_other(cp) => KEEP,
        _ => SLOW,
    }
}

/// [`super::normalize`] of `s`, or `None` when `s` has a character this path does not take.
/// Borrows when nothing changes; otherwise the output is the only allocation.
pub(super) fn normalize(s: &str) -> Option<Cow<'_, str>> {
    let bytes = s.as_bytes();
    let mut i = 0;
    // Find the first change: text that has none is borrowed.
    loop {
        if i == bytes.len() {
            return Some(Cow::Borrowed(s));
        }
        let (len, action) = step(bytes, i);
        match action {
            KEEP => i += len,
            SLOW => return None,
            _ => break,
        }
    }
    // Unchanged characters are copied a run at a time, not one by one.
    let mut out = String::with_capacity(s.len());
    let mut run = 0;
    while i < bytes.len() {
        let (len, action) = step(bytes, i);
        if action != KEEP {
            out.push_str(s.get(run..i)?);
            match action {
                DROP => {}
                SLOW => return None,
                replacement => out.push(char::from_u32(replacement)?),
            }
            run = i + len;
        }
        i += len;
    }
    out.push_str(s.get(run..)?);
    Some(Cow::Owned(out))
}

/// Per code point of the Arabic block: what [`normalize_compact`] writes. Below 0x100, the
/// one byte of the compact encoding; else [`COMPACT_DROP`], [`COMPACT_SLOW`] or
/// [`COMPACT_ESCAPE`] (kept, but outside the one-byte range: written as an escape).
static ARABIC_COMPACT: [u16; 256] = arabic_compact_table();
const COMPACT_DROP: u16 = 0x100;
const COMPACT_SLOW: u16 = 0x101;
const COMPACT_ESCAPE: u16 = 0x102;

const fn arabic_compact_table() -> [u16; 256] {
    let table = arabic_table();
    let mut out = [COMPACT_SLOW; 256];
    let mut i = 0;
    while i < 256 {
        let target = match table[i] {
            KEEP => 0x0600 + i as u32,
            other => other,
        };
        out[i] = match table[i] {
            DROP => COMPACT_DROP,
            SLOW => COMPACT_SLOW,
            _ => match compact::one_byte(target) {
                Some(b) => b as u16,
                None => COMPACT_ESCAPE,
            },
        };
        i += 1;
    }
    out
}

/// Appends the [`compact`] encoding of `normalize(s)` to `out`, in one pass and without
/// building the normalized text, or returns `false` (with `out` as it was) when `s` has a
/// character this path does not take.
pub(in crate::text) fn normalize_compact(s: &str, out: &mut Vec<u8>) -> bool {
    let bytes = s.as_bytes();
    let start = compact::grow_for(out, bytes.len());
    let buf = &mut out[start..];
    let mut w = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b < 0x80 {
            buf[w] = b.to_ascii_lowercase();
            w += 1;
            i += 1;
            continue;
        }
        if let 0xD8..=0xDB = b {
            let cp = compact::two_byte_code_point(bytes, i);
            let code = ARABIC_COMPACT[(cp - 0x0600) as usize & 0xFF];
            if code < 0x100 {
                buf[w] = code as u8;
                w += 1;
            } else if code == COMPACT_ESCAPE {
                buf[w..w + 5]
                    .copy_from_slice(&compact::escape(char::from_u32(cp).unwrap_or_default()));
                w += 5;
            } else if code == COMPACT_SLOW {
                out.truncate(start);
                return false;
            }
            i += 2;
            continue;
        }
        let (len, action) = step(bytes, i);
        match action {
            DROP => {}
            KEEP => match s.get(i..i + len).and_then(|c| c.chars().next()) {
                Some(c) => {
                    buf[w..w + 5].copy_from_slice(&compact::escape(c));
                    w += 5;
                }
                None => {
                    out.truncate(start);
                    return false;
                }
            },
            // Outside ASCII and the Arabic block, every character is kept, dropped or slow.
            _ => {
                out.truncate(start);
                return false;
            }
        }
        i += len;
    }
    out.truncate(start + w);
    true
}

#[cfg(test)]
mod tests {
    use super::super::general;
    use super::*;
    use proptest::prelude::*;

    /// Every character the fast path can see: ASCII, the Arabic block, the removed controls,
    /// the kept emoji and selectors, and a few it must refuse.
    fn alphabet() -> Vec<char> {
        let mut all: Vec<char> = (0u32..0x80).filter_map(char::from_u32).collect();
        all.extend((0x0600u32..0x0700).filter_map(char::from_u32));
        all.extend(
            (0u32..0x11_0000)
                .filter_map(char::from_u32)
                .filter(|&c| is_removed(c) && !('\u{0600}'..='\u{06FF}').contains(&c)),
        );
        all.extend((0xFE00u32..=0xFE0F).filter_map(char::from_u32));
        all.extend((0x2600u32..=0x27BF).step_by(13).filter_map(char::from_u32));
        all.extend(
            (0x1F300u32..=0x1FAFF)
                .step_by(37)
                .filter_map(char::from_u32),
        );
        all.extend(['é', 'Ä', '\u{00A0}', 'ﻻ', '…', '\u{0301}', '①', '🄰']);
        all
    }

    fn agree(s: &str) {
        let mut compact = vec![b'x'];
        let took = normalize_compact(s, &mut compact);
        assert_eq!(
            took,
            normalize(s).is_some(),
            "the two fast paths differ on taking {s:?}"
        );
        if took {
            let mut expected = vec![b'x'];
            compact::encode(&general(s), &mut expected);
            assert_eq!(compact, expected, "compact fast path differs on {s:?}");
        } else {
            assert_eq!(compact, b"x", "a refused text left output");
        }
        if let Some(fast) = normalize(s) {
            let general = general(s);
            assert_eq!(fast, general, "fast and general paths differ on {s:?}");
            assert_eq!(
                matches!(fast, Cow::Borrowed(_)),
                matches!(general, Cow::Borrowed(_)),
                "only one path borrowed {s:?}"
            );
        }
    }

    #[test]
    fn every_character_it_keeps_is_its_own_normal_form() {
        for cp in (0x1F300u32..=0x1FAFF)
            .chain(0x2600..=0x27BF)
            .chain(0xFE00..=0xFE0F)
            .chain(0x0600..0x0700)
        {
            if let Some(c) = char::from_u32(cp) {
                agree(c.encode_utf8(&mut [0; 4]));
            }
        }
    }

    #[test]
    fn agrees_with_the_general_path_on_every_pair() {
        let alphabet = alphabet();
        let mut s = String::new();
        for &a in &alphabet {
            for &b in &alphabet {
                s.clear();
                s.push(a);
                s.push(b);
                agree(&s);
            }
        }
    }

    #[test]
    fn takes_gulf_chat_text_and_refuses_what_needs_nfkc() {
        for s in [
            "السلام عليكم، ابغى اكلم البـوت لو سمحت",
            "وَالبُوتُ ما رد علي من امس، ممكن موظف؟",
            "مرحبا، عندي مشكلة في الطلب رقم ٤٥٦ ولم يصل حتى الان",
            "Thanks a lot 👍🏽❤️ BOT",
            "بو\u{200D}ت\u{200F}",
        ] {
            assert!(normalize(s).is_some(), "{s:?} took the slow path");
            agree(s);
        }
        for s in ["ﻻ", "café", "ا\u{0654}", "e\u{301}", "x\u{00A0}y", "ٵ"] {
            assert!(normalize(s).is_none(), "{s:?} took the fast path");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn agrees_with_the_general_path_on_random_text(
            s in prop::collection::vec(prop::sample::select(alphabet()), 0..24)
                .prop_map(|cs| cs.into_iter().collect::<String>())
        ) {
            agree(&s);
        }
    }
}
