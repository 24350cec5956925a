//! Text normalization for matching.
//!
//! Owns: the one function, [`normalize`], that turns a message body or a keyword into the form
//! that keyword matching and regexes see, plus [`is_removed`], the set of code points it deletes.
//!
//! Must not: do I/O, log, read the environment or a locale, or allocate when nothing changes.
//! It is pure and deterministic: the same input gives the same output on every machine
//! (compiled Unicode data, no locale-dependent case rules).

use std::borrow::Cow;
use std::fmt;

use icu_normalizer::ComposingNormalizerBorrowed;

mod fast;

pub(in crate::text) use fast::normalize_compact;

/// NFKC with compiled data: building it is a `const` operation, no allocation, no I/O.
const NFKC: ComposingNormalizerBorrowed<'static> = ComposingNormalizerBorrowed::new_nfkc();

/// Upper bound on NFKC/fold rounds. One round is the norm; a second one is needed only when
/// removing a mark or lowercasing exposes a new composition (e.g. `J` + U+030C → `ǰ`). The bound
/// only guards against an unforeseen Unicode oddity; it is never reached by known inputs.
const MAX_ROUNDS: usize = 8;

/// Normalizes text for matching. Borrows when nothing changes.
///
/// ```
/// use cartat_rules::text::normalize::normalize;
///
/// // Tashkeel and tatweel go, alef forms fold, Latin is lowercased.
/// assert_eq!(normalize("بُوت"), "بوت");
/// assert_eq!(normalize("البـــوت"), "البوت");
/// assert_eq!(normalize("أهلا BOT"), "اهلا bot");
/// // Nothing to change: the input is borrowed, not copied.
/// assert!(matches!(normalize("bot"), std::borrow::Cow::Borrowed(_)));
/// ```
///
/// Steps, in order:
/// 1. NFKC (compatibility composition: presentation forms such as `ﻻ` → `لا`, ligatures such
///    as `ﷺ`, full-width `ＢＯＴ` → `BOT`).
/// 2. Full Unicode lowercase (`char::to_lowercase`, context-free, so `Σ` always becomes `σ`;
///    no case *folding*: `ß` stays `ß`).
/// 3. Arabic tashkeel and Quranic annotation marks removed: U+0610–U+061A, U+064B–U+065F,
///    U+0670, U+06D6–U+06DC, U+06DF–U+06E4, U+06E7–U+06E8, U+06EA–U+06ED.
/// 4. Tatweel (kashida) U+0640 removed.
/// 5. Alef forms `أ` U+0623, `إ` U+0625, `آ` U+0622, `ٱ` U+0671 → `ا` U+0627.
/// 6. `ى` U+0649 → `ي` U+064A and `ة` U+0629 → `ه` U+0647.
/// 7. Persian/Urdu letters common on Gulf keyboards folded to their Arabic twins:
///    yeh `ی` U+06CC → `ي` U+064A and keheh `ک` U+06A9 → `ك` U+0643.
/// 8. Arabic-Indic digits U+0660–U+0669 and Persian digits U+06F0–U+06F9 → ASCII `0`–`9`.
/// 9. Invisible controls removed: ZWSP U+200B, ZWNJ U+200C, ZWJ U+200D, LRM U+200E,
///    RLM U+200F, U+202A–U+202E, U+2060–U+2064, U+2066–U+2069, BOM U+FEFF, Arabic letter mark
///    U+061C, soft hyphen U+00AD.
/// 10. NFKC again, only if a removal or lowercasing in steps 2–9 left a non-NFKC sequence
///     (a mark that a removed character used to block), then steps 2–9 again on what changed.
///
/// The result is idempotent: `normalize(&normalize(x)) == normalize(x)` for every `x`.
///
/// Cost: pure ASCII without uppercase is returned borrowed after one byte scan. Text made only
/// of ASCII, the Arabic block, the removed controls and emoji takes the fast path (`fast`):
/// one table lookup per character, borrowed when nothing changes. Any other text already in
/// normal form is returned borrowed after one NFKC quick-check and one fold scan. Otherwise
/// the output `String` is the only allocation (the normalizer streams into the fold), except
/// in the rare step 10.
pub fn normalize(s: &str) -> Cow<'_, str> {
    if s.is_ascii() {
        // ASCII is always NFKC and contains no removed or folded code point.
        return if s.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(s.to_ascii_lowercase())
        } else {
            Cow::Borrowed(s)
        };
    }
    match fast::normalize(s) {
        Some(out) => out,
        None => general(s),
    }
}

/// [`normalize`] for any text: NFKC streamed into the fold, then step 10 when needed.
fn general(s: &str) -> Cow<'_, str> {
    // `head + NFKC(tail) == NFKC(s)`, and `head` is already NFKC.
    let (head, tail) = NFKC.split_normalized(s);
    let first_change = head
        .char_indices()
        .find(|&(_, c)| !matches!(classify(c), Fold::Keep))
        .map(|(i, _)| i);
    if tail.is_empty() && first_change.is_none() {
        return Cow::Borrowed(s);
    }

    let (clean, to_fold) = head.split_at(first_change.unwrap_or(head.len()));
    let mut out = String::with_capacity(s.len());
    out.push_str(clean);
    let mut sink = FoldSink {
        out: &mut out,
        exposes: false,
    };
    sink.push_str(to_fold);
    // Writing into a `FoldSink` never fails, so neither does this.
    let _ = NFKC.normalize_to(tail, &mut sink);
    let mut exposes = sink.exposes;

    // Step 10: everything in `out` is fold-stable; re-run NFKC only where it is not NFKC.
    let mut rounds = 1;
    while exposes && rounds < MAX_ROUNDS {
        let (head, tail) = NFKC.split_normalized(&out);
        if tail.is_empty() {
            break;
        }
        let mut next = String::with_capacity(out.len());
        next.push_str(head);
        let mut sink = FoldSink {
            out: &mut next,
            exposes: false,
        };
        let _ = NFKC.normalize_to(tail, &mut sink);
        exposes = sink.exposes;
        out = next;
        rounds += 1;
    }
    Cow::Owned(out)
}

/// True for every code point that [`normalize`] deletes: Arabic tashkeel and Quranic marks,
/// tatweel, and the invisible controls listed there. [`normalize`]'s output never contains one.
/// Whole-word checks treat these as transparent (see `matcher::is_whole_word`).
pub const fn is_removed(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{0610}'..='\u{061A}'
            | '\u{061C}'
            | '\u{0640}'
            | '\u{064B}'..='\u{065F}'
            | '\u{0670}'
            | '\u{06D6}'..='\u{06DC}'
            | '\u{06DF}'..='\u{06E4}'
            | '\u{06E7}'..='\u{06E8}'
            | '\u{06EA}'..='\u{06ED}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{FEFF}'
    )
}

/// What steps 2–9 do to one code point.
enum Fold {
    /// Unchanged.
    Keep,
    /// Deleted (may expose a composition).
    Drop,
    /// Replaced by one starter that composes with nothing that survives the fold.
    Replace(char),
    /// Replaced by its full lowercase mapping (may expose a composition).
    Lower,
}

#[inline]
fn classify(c: char) -> Fold {
    if c.is_ascii() {
        return if c.is_ascii_uppercase() {
            Fold::Lower
        } else {
            Fold::Keep
        };
    }
    if is_removed(c) {
        return Fold::Drop;
    }
    if let Some(folded) = fold_arabic(c) {
        return Fold::Replace(folded);
    }
    match c {
        // The rest of the Arabic block has no case: skip the case-table lookup.
        '\u{0600}'..='\u{06FF}' => Fold::Keep,
        _ => {
            let mut lower = c.to_lowercase();
            if lower.len() == 1 && lower.next() == Some(c) {
                Fold::Keep
            } else {
                Fold::Lower
            }
        }
    }
}

/// Steps 5–8: the one-to-one replacements of Arabic-block letters and digits.
const fn fold_arabic(c: char) -> Option<char> {
    Some(match c {
        '\u{0622}' | '\u{0623}' | '\u{0625}' | '\u{0671}' => '\u{0627}',
        '\u{0649}' | '\u{06CC}' => '\u{064A}',
        '\u{0629}' => '\u{0647}',
        '\u{06A9}' => '\u{0643}',
        // The ranges guarantee an offset of 0..=9.
        '\u{0660}'..='\u{0669}' => (b'0' + (c as u32 - 0x0660) as u8) as char,
        '\u{06F0}'..='\u{06F9}' => (b'0' + (c as u32 - 0x06F0) as u8) as char,
        _ => return None,
    })
}

/// Applies steps 2–9 to everything written into it (the NFKC normalizer streams into it).
struct FoldSink<'a> {
    out: &'a mut String,
    /// Set when a removal or lowercasing happened, i.e. the output may no longer be NFKC.
    exposes: bool,
}

impl FoldSink<'_> {
    #[inline]
    fn push(&mut self, c: char) {
        match classify(c) {
            Fold::Keep => self.out.push(c),
            Fold::Drop => self.exposes = true,
            Fold::Replace(r) => self.out.push(r),
            Fold::Lower => {
                self.out.extend(c.to_lowercase());
                self.exposes = true;
            }
        }
    }

    fn push_str(&mut self, s: &str) {
        for c in s.chars() {
            self.push(c);
        }
    }
}

impl fmt::Write for FoldSink<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push_str(s);
        Ok(())
    }

    fn write_char(&mut self, c: char) -> fmt::Result {
        self.push(c);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn table() {
        let cases: &[(&str, &str)] = &[
            // empty and plain ASCII
            ("", ""),
            ("bot", "bot"),
            ("BOT", "bot"),
            ("Hello, World! 123", "hello, world! 123"),
            // NFKC
            ("ＢＯＴ", "bot"),
            ("ﻻ", "لا"),
            ("ﷲ", "الله"),
            ("ﷺ", "صلي الله عليه وسلم"), // NFKC, then ى → ي
            ("ﬁle", "file"),
            ("①②", "12"),
            ("x²", "x2"),
            ("e\u{301}", "é"),
            ("Å", "å"),     // U+212B ANGSTROM SIGN → Å → å
            ("K", "k"),     // U+212A KELVIN SIGN
            ("ﺑﻮﺕ", "بوت"), // presentation forms
            // lowercase
            ("Straße", "straße"),
            ("ÉCOLE", "école"),
            ("ΟΔΟΣ", "οδοσ"),
            ("İ", "i\u{307}"),
            ("ǅ", "dž"), // NFKC splits the digraph
            // tashkeel and Quranic marks
            ("بُوت", "بوت"),
            ("مُحَمَّد", "محمد"),
            ("كِتَابٌ", "كتاب"),
            ("رَحْمٰن", "رحمن"), // U+0670 superscript alef
            ("ٱلرَّحِيمِ", "الرحيم"),
            ("قُرْءَانًۭا", "قرءانا"), // U+06ED
            ("صلى\u{0610}", "صلي"),
            ("ذٰلِكَ\u{06D6}", "ذلك"),
            // tatweel
            ("بـوت", "بوت"),
            ("البـوت", "البوت"),
            ("ســـلام", "سلام"),
            // alef forms
            ("أهلاً", "اهلا"),
            ("إسلام", "اسلام"),
            ("آمين", "امين"),
            ("ٱسم", "اسم"),
            ("ا\u{0654}", "ا"), // decomposed أ composes, then folds
            // ى, ة
            ("مستشفى", "مستشفي"),
            ("مدرسة", "مدرسه"),
            ("ﺓ", "ه"),
            // Persian/Urdu letters
            ("یک", "يك"),
            ("کتاب", "كتاب"),
            // digits
            ("رقم ٤٥٦", "رقم 456"),
            ("۱۲۳", "123"),
            ("٠٩", "09"),
            ("۰۹", "09"),
            // invisible controls
            ("بو\u{200D}ت", "بوت"),
            ("بو\u{200C}ت", "بوت"),
            ("\u{200F}بوت\u{200E}", "بوت"),
            ("b\u{200B}o\u{2060}t\u{FEFF}", "bot"),
            ("\u{202B}بوت\u{202C}", "بوت"),
            ("\u{2067}بوت\u{2069}", "بوت"),
            ("\u{061C}بوت", "بوت"),
            ("bo\u{00AD}t", "bot"),
            // removal exposes a composition
            ("e\u{200D}\u{301}", "é"),
            ("J\u{30C}", "ǰ"),
            // untouched
            ("👍🏽 ok", "👍🏽 ok"),
            ("日本語", "日本語"),
            ("ؤ ئ ء", "ؤ ئ ء"),
            // mixed
            ("مرحبا BOT، رقم ٤٥٦!", "مرحبا bot، رقم 456!"),
            ("طلب ORDER #۱۲", "طلب order #12"),
        ];
        assert!(cases.len() >= 40);
        for &(input, expected) in cases {
            let got = normalize(input);
            assert_eq!(
                got, expected,
                "normalize({input:?}) = {got:?}, expected {expected:?}"
            );
            assert_eq!(normalize(&got), got, "not idempotent on {input:?}");
        }
    }

    #[test]
    fn borrows_when_nothing_changes() {
        for s in [
            "",
            "bot here",
            "بوت",
            "مرحبا bot 123",
            "straße",
            "👍",
            "日本語",
        ] {
            assert!(matches!(normalize(s), Cow::Borrowed(_)), "{s:?} was copied");
        }
        for s in ["BOT", "بُوت", "ﻻ", "b\u{200D}ot"] {
            assert!(matches!(normalize(s), Cow::Owned(_)), "{s:?} was borrowed");
        }
    }

    fn check_output(input: &str) -> Result<(), TestCaseError> {
        let once = normalize(input);
        let twice = normalize(&once);
        prop_assert_eq!(&twice, &once, "not idempotent on {:?}", input);
        prop_assert!(
            matches!(twice, Cow::Borrowed(_)),
            "normal form was copied: {:?}",
            once
        );
        prop_assert!(
            !once.chars().any(is_removed),
            "removed char survived: {:?}",
            once
        );
        prop_assert!(NFKC.is_normalized(&once), "not NFKC: {:?}", once);
        for c in once.chars() {
            prop_assert!(
                matches!(classify(c), Fold::Keep),
                "unfolded {:?} in {:?}",
                c,
                once
            );
        }
        Ok(())
    }

    /// Letters, marks, tatweel, digits, controls and presentation forms, plus Latin bases and
    /// combining marks that compose once a control between them is gone.
    const TRICKY: &[char] = &[
        'ا', 'أ', 'إ', 'آ', 'ٱ', 'ب', 'و', 'ت', 'ل', 'ف', 'ك', 'ی', 'ک', 'ى', 'ي', 'ة', 'ه', 'ئ',
        'ؤ', 'ء', '\u{064B}', '\u{064E}', '\u{064F}', '\u{0650}', '\u{0651}', '\u{0652}',
        '\u{0653}', '\u{0654}', '\u{0655}', '\u{0670}', '\u{0610}', '\u{06D6}', '\u{06E7}',
        '\u{06ED}', '\u{0640}', '٠', '٤', '٩', '۰', '۴', '۹', '\u{200B}', '\u{200C}', '\u{200D}',
        '\u{200E}', '\u{200F}', '\u{202B}', '\u{2066}', '\u{FEFF}', '\u{061C}', '\u{00AD}', 'ﻻ',
        'ﷺ', 'ﺓ', 'ﯼ', 'ﮎ', 'ﹱ', 'ﹲ', ' ', '.', 'J', 'j', 'W', 'e', 'E', 'A', 'I', 'İ', 'Σ',
        '\u{301}', '\u{30A}', '\u{30C}', '\u{307}', '\u{323}', 'ᄀ', 'ᅡ', 'ᆨ', 'Ⅻ', 'ǅ', '①',
    ];

    fn tricky_string() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(TRICKY), 0..40)
            .prop_map(|cs| cs.into_iter().collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn idempotent_on_arbitrary_strings(s in any::<String>()) {
            check_output(&s)?;
        }

        #[test]
        fn idempotent_on_arabic_heavy_strings(s in tricky_string()) {
            check_output(&s)?;
        }

        #[test]
        fn ascii_lowercase_is_borrowed(
            bytes in prop::collection::vec((0u8..128).prop_map(|b| b.to_ascii_lowercase()), 0..64)
        ) {
            let s: String = bytes.into_iter().map(char::from).collect();
            let out = normalize(&s);
            prop_assert!(matches!(out, Cow::Borrowed(_)));
            prop_assert_eq!(out, s.as_str());
        }
    }
}
