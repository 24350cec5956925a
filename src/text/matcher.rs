//! Keyword matching for rule bodies (SPEC §4 "Rules", DESIGN "Key decisions → Text").
//!
//! Owns: one Aho-Corasick automaton over every distinct keyword of every rule (a second one for
//! the keywords of `normalize: false` rules), the mapping from a found pattern back to the
//! keyword ids that share it, and the whole-word rule with its Arabic proclitics.
//!
//! The automaton over normalized keywords runs on their [`compact`] encoding (one byte per
//! Arabic letter instead of two), which halves its size and the bytes it walks; the message
//! is encoded the same way into a buffer that [`Hits`] keeps from message to message.
//!
//! Must not: know about rules, conditions or regexes, do I/O, or log. Everything here is pure;
//! a built [`Matcher`] is immutable, `Send + Sync`, and meant to be shared through an `Arc`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};

/// Above this many pattern bytes the automaton is the crate's choice instead of a full DFA.
const DFA_MAX_PATTERN_BYTES: usize = 512 * 1024;

use super::compact;
use super::normalize::{is_removed, normalize};

/// Dense id of one keyword of one rule: `0..n` in [`MatcherBuilder::add`] call order.
pub type KeywordId = u32;

/// How one keyword is matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MatchMode {
    /// whole words only (SPEC §4): not glued to other letters/digits, except Arabic proclitics in front
    pub words: bool,
    /// match against normalized text (true, the default) or the raw text as written (false)
    pub normalized: bool,
}

impl Default for MatchMode {
    /// Substring match on normalized text: SPEC §4's defaults.
    fn default() -> Self {
        Self {
            words: false,
            normalized: true,
        }
    }
}

/// Why a [`MatcherBuilder`] could not be built.
#[derive(Clone, Debug)]
pub enum MatcherError {
    /// A keyword is empty as written. (One that only *normalizes* to nothing, e.g. only
    /// tashkeel, tatweel or controls, is not an error: it never matches, and
    /// [`MatcherBuilder::searched_text`] returns `""` for it so the caller can warn.)
    EmptyKeyword {
        /// The keyword's id.
        id: KeywordId,
    },
    /// More keywords than [`KeywordId`] can number.
    TooManyKeywords,
    /// The automaton could not be built (e.g. it would exceed aho-corasick's size limits).
    Automaton(aho_corasick::BuildError),
}

impl fmt::Display for MatcherError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EmptyKeyword { id } => write!(f, "keyword #{id} is empty"),
            Self::TooManyKeywords => write!(f, "more than {} keywords", KeywordId::MAX),
            Self::Automaton(e) => write!(f, "cannot build the keyword automaton: {e}"),
        }
    }
}

impl std::error::Error for MatcherError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Automaton(e) => Some(e),
            _ => None,
        }
    }
}

/// One registered keyword.
#[derive(Clone, Debug)]
struct Entry {
    /// Empty as written (an error at build time).
    empty: bool,
    /// As searched: `normalize(keyword)` or `keyword`.
    searched: Box<str>,
    mode: MatchMode,
}

/// Collects keywords, then builds a [`Matcher`].
#[derive(Debug, Default)]
pub struct MatcherBuilder {
    entries: Vec<Entry>,
    overflow: bool,
}

impl MatcherBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers one keyword of one rule as written; normalizes it when mode.normalized. Returns its id (ids are dense, 0..n, in call order).
    pub fn add(&mut self, keyword: &str, mode: MatchMode) -> KeywordId {
        let id = match KeywordId::try_from(self.entries.len()) {
            Ok(id) if id < KeywordId::MAX => id,
            _ => {
                // Reported by `build`.
                self.overflow = true;
                return KeywordId::MAX;
            }
        };
        let searched = if mode.normalized {
            normalize(keyword).into()
        } else {
            keyword.into()
        };
        self.entries.push(Entry {
            empty: keyword.is_empty(),
            searched,
            mode,
        });
        id
    }

    /// The keyword as it will be searched (normalized or raw) — used for "two keywords normalize to the same text" warnings.
    ///
    /// An unknown id gives `""`.
    pub fn searched_text(&self, id: KeywordId) -> &str {
        entry_text(&self.entries, id)
    }

    /// Number of keywords added so far.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Builds the automata. Fails on a keyword that is empty as written; a keyword that is
    /// empty only after normalization is left out of the automata and never matches (one bad
    /// keyword must not disable the others).
    pub fn build(self) -> Result<Matcher, MatcherError> {
        if self.overflow {
            return Err(MatcherError::TooManyKeywords);
        }
        let mut normalized = SideBuilder::default();
        let mut raw = SideBuilder::default();
        for (id, entry) in (0..).zip(&self.entries) {
            if entry.empty {
                return Err(MatcherError::EmptyKeyword { id });
            }
            if entry.searched.is_empty() {
                // Normalized to nothing: an empty pattern would match everywhere.
                continue;
            }
            let side = if entry.mode.normalized {
                &mut normalized
            } else {
                &mut raw
            };
            side.add(&entry.searched, id, entry.mode.words);
        }
        let normalized = normalized.build(Encoding::Compact)?;
        let raw = raw.build(Encoding::Utf8)?;
        Ok(Matcher {
            normalized,
            raw,
            entries: self
                .entries
                .into_iter()
                .map(|e| (e.searched, e.mode))
                .collect(),
        })
    }
}

fn entry_text(entries: &[Entry], id: KeywordId) -> &str {
    entries
        .get(id as usize)
        .map_or("", |entry| entry.searched.as_ref())
}

/// The keyword ids that share one distinct pattern, split by whether they need whole words.
#[derive(Debug, Default)]
struct Targets {
    substring: Vec<KeywordId>,
    words: Vec<KeywordId>,
}

#[derive(Default)]
struct SideBuilder<'a> {
    index: HashMap<&'a str, usize>,
    patterns: Vec<&'a str>,
    targets: Vec<Targets>,
}

impl<'a> SideBuilder<'a> {
    fn add(&mut self, pattern: &'a str, id: KeywordId, words: bool) {
        let at = *self.index.entry(pattern).or_insert_with(|| {
            self.patterns.push(pattern);
            self.targets.push(Targets::default());
            self.patterns.len() - 1
        });
        if let Some(targets) = self.targets.get_mut(at) {
            if words {
                targets.words.push(id);
            } else {
                targets.substring.push(id);
            }
        }
    }

    fn build(self, encoding: Encoding) -> Result<Option<Side>, MatcherError> {
        if self.patterns.is_empty() {
            return Ok(None);
        }
        let patterns: Vec<Vec<u8>> = self
            .patterns
            .iter()
            .map(|p| match encoding {
                Encoding::Utf8 => p.as_bytes().to_vec(),
                Encoding::Compact => {
                    let mut out = Vec::new();
                    compact::encode(p, &mut out);
                    out
                }
            })
            .collect();
        // A full DFA costs memory (states × byte classes) but is several times faster per
        // byte than the default NFA on thousands of patterns; take it while the patterns are
        // small enough (10,000 keywords of ~15 bytes → a few MB), else let the crate choose.
        let bytes: usize = patterns.iter().map(Vec::len).sum();
        let kind = (bytes <= DFA_MAX_PATTERN_BYTES).then_some(AhoCorasickKind::DFA);
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .kind(kind)
            .build(&patterns)
            .map_err(MatcherError::Automaton)?;
        Ok(Some(Side {
            automaton,
            targets: self.targets.into_iter().map(Targets::shrink).collect(),
        }))
    }
}

impl Targets {
    fn shrink(mut self) -> Self {
        self.substring.shrink_to_fit();
        self.words.shrink_to_fit();
        self
    }
}

/// How a side's patterns are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Encoding {
    Utf8,
    Compact,
}

/// A message as one side reads it: in the encoding of that side's patterns.
#[derive(Clone, Copy)]
enum Text<'t> {
    Utf8(&'t str),
    Compact(&'t [u8]),
}

impl Text<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Text::Utf8(text) => text.as_bytes(),
            Text::Compact(bytes) => bytes,
        }
    }

    /// [`is_whole_word`] for a match at `start..end` of this text.
    fn is_whole_word(&self, start: usize, end: usize) -> bool {
        match *self {
            Text::Utf8(text) => is_whole_word(text, start, end),
            Text::Compact(text) => {
                let mut back = start;
                let before = std::iter::from_fn(|| {
                    let (c, len) = compact::char_before(text, back)?;
                    back -= len;
                    Some(c)
                });
                let mut ahead = end;
                let after = std::iter::from_fn(|| {
                    let (c, len) = compact::char_at(text, ahead)?;
                    ahead += len;
                    Some(c)
                });
                whole_word(before, after)
            }
        }
    }
}

/// One automaton and, per pattern index, who wants it.
#[derive(Debug)]
struct Side {
    automaton: AhoCorasick,
    targets: Box<[Targets]>,
}

impl Side {
    /// `text` must be in the encoding the side was built with.
    fn find(&self, text: Text<'_>, hits: &mut Hits) {
        // Standard semantics always support overlapping search, so this cannot fail.
        let Ok(found) = self.automaton.try_find_overlapping_iter(text.bytes()) else {
            debug_assert!(false, "overlapping search unsupported");
            return;
        };
        for m in found {
            let Some(targets) = self.targets.get(m.pattern().as_usize()) else {
                continue;
            };
            // A list is always inserted whole, so its first id stands for all of it: once set,
            // later occurrences of the same pattern cost one bit test.
            if let Some(&first) = targets.substring.first()
                && !hits.contains(first)
            {
                targets.substring.iter().for_each(|&id| hits.insert(id));
            }
            if let Some(&first) = targets.words.first()
                && !hits.contains(first)
                && text.is_whole_word(m.start(), m.end())
            {
                targets.words.iter().for_each(|&id| hits.insert(id));
            }
        }
    }
}

/// Every keyword of every rule, compiled. Immutable, `Send + Sync`, cheap to share via `Arc`.
#[derive(Debug)]
pub struct Matcher {
    normalized: Option<Side>,
    raw: Option<Side>,
    entries: Box<[(Box<str>, MatchMode)]>,
}

impl Matcher {
    /// Number of keyword ids.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The keyword as searched (see [`MatcherBuilder::searched_text`]); `""` for an unknown id.
    pub fn searched_text(&self, id: KeywordId) -> &str {
        self.entries
            .get(id as usize)
            .map_or("", |(searched, _)| searched.as_ref())
    }

    /// The mode a keyword was added with; `None` for an unknown id.
    pub fn mode(&self, id: KeywordId) -> Option<MatchMode> {
        self.entries.get(id as usize).map(|&(_, mode)| mode)
    }

    /// Finds every keyword id with at least one valid occurrence in the message `raw`.
    ///
    /// Returns `normalize(raw)` when it had to build it (see [`compact::encode_normalized`]),
    /// so the caller can keep it instead of building it again.
    ///
    /// Adds to `hits` and never clears it: call [`Hits::clear`] between messages. A `hits`
    /// sized for a smaller matcher is grown (the only allocation this may make).
    pub fn find<'r>(&self, raw: &'r str, hits: &mut Hits) -> Option<Cow<'r, str>> {
        hits.grow_to(self.len());
        let mut normalized = None;
        if let Some(side) = &self.normalized {
            let mut text = std::mem::take(&mut hits.compact);
            text.clear();
            normalized = compact::encode_normalized(raw, &mut text);
            side.find(Text::Compact(&text), hits);
            hits.compact = text;
        }
        if let Some(side) = &self.raw {
            side.find(Text::Utf8(raw), hits);
        }
        normalized
    }
}

/// A reusable set of keyword ids (a bitset sized to the matcher); `clear()` between messages without reallocating.
#[derive(Clone, Debug, Default)]
pub struct Hits {
    words: Vec<u64>,
    len: usize,
    /// The ids in the set, in the order they were found: clearing and listing cost what was
    /// found, not the number of keywords.
    found: Vec<KeywordId>,
    /// The message's normalized text in the [`compact`] encoding, kept for its capacity.
    compact: Vec<u8>,
}

impl Hits {
    pub fn new(matcher: &Matcher) -> Self {
        Self::with_capacity(matcher.len())
    }

    /// A set able to hold ids `0..n` without reallocating.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            words: vec![0; n.div_ceil(64)],
            len: n,
            found: Vec::new(),
            compact: Vec::new(),
        }
    }

    pub fn contains(&self, id: KeywordId) -> bool {
        let i = id as usize;
        self.words
            .get(i / 64)
            .is_some_and(|word| word & (1 << (i % 64)) != 0)
    }

    fn insert(&mut self, id: KeywordId) {
        let i = id as usize;
        if let Some(word) = self.words.get_mut(i / 64)
            && *word & (1 << (i % 64)) == 0
        {
            *word |= 1 << (i % 64);
            self.found.push(id);
        }
    }

    fn grow_to(&mut self, n: usize) {
        if n > self.len {
            self.words.resize(n.div_ceil(64), 0);
            self.len = n;
        }
    }

    pub fn clear(&mut self) {
        for &id in &self.found {
            if let Some(word) = self.words.get_mut(id as usize / 64) {
                *word = 0;
            }
        }
        self.found.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.found.is_empty()
    }

    /// Number of ids in the set.
    pub fn count(&self) -> usize {
        self.found.len()
    }

    /// The ids in the set, in the order they were found.
    pub fn found(&self) -> &[KeywordId] {
        &self.found
    }

    /// The ids in the set, ascending.
    pub fn iter(&self) -> impl Iterator<Item = KeywordId> + '_ {
        self.words
            .iter()
            .enumerate()
            .flat_map(|(at, &word)| {
                let base = at * 64;
                let mut rest = word;
                std::iter::from_fn(move || {
                    if rest == 0 {
                        return None;
                    }
                    let bit = rest.trailing_zeros() as usize;
                    rest &= rest - 1;
                    Some(base + bit)
                })
            })
            .filter_map(|i| KeywordId::try_from(i).ok())
    }
}

/// True when text[start..end] is a whole word per SPEC §4 (pure; exposed for tests and for the explain output).
///
/// The character after `end` must not be alphanumeric (`char::is_alphanumeric`). The character
/// before `start` must not be alphanumeric either, unless the run of alphanumerics in front of
/// `start` (back to the previous non-alphanumeric character or the start of the text) is an
/// Arabic proclitic sequence: optional conjunction `و`/`ف`, then optional preposition
/// `ب`/`ك`/`ل`, then optional article `ال` (with `ل`+`ال` written `لل`), not empty — so `ال`,
/// `و`, `ب`, `وال`, `بال`, `فبال`, `لل`, `ولل`, … are accepted.
///
/// Characters that `normalize` deletes (tashkeel, tatweel, invisible controls) are transparent
/// here, so a raw (`normalize: false`) text gives the same verdict as its normalized form:
/// `وَالبوتُ` still has `بوت` as a whole word, `بوتـات` does not.
///
/// `start`/`end` that are out of range, reversed, or not on character boundaries give `false`.
pub fn is_whole_word(text: &str, start: usize, end: usize) -> bool {
    if start > end {
        return false;
    }
    let (Some(before), Some(after)) = (text.get(..start), text.get(end..)) else {
        return false;
    };
    whole_word(before.chars().rev(), after.chars())
}

/// [`is_whole_word`] given the characters before the match (nearest first) and after it.
fn whole_word(before: impl Iterator<Item = char>, mut after: impl Iterator<Item = char>) -> bool {
    if after
        .find(|&c| !is_removed(c))
        .is_some_and(char::is_alphanumeric)
    {
        return false;
    }
    // Longest proclitic sequence: conjunction + preposition + article = 4 letters (فبال).
    let mut run = ['\0'; 4];
    let mut n = 0;
    for c in before {
        if is_removed(c) {
            continue;
        }
        if !c.is_alphanumeric() {
            break;
        }
        let Some(slot) = run.get_mut(n) else {
            return false;
        };
        *slot = c;
        n += 1;
    }
    let run = &mut run[..n];
    run.reverse();
    run.is_empty() || is_proclitic_sequence(run)
}

/// `[و|ف]? (ب|ك|ل)? (ال)?` with `ل`+`ال` → `لل`, non-empty (the caller checks that).
fn is_proclitic_sequence(letters: &[char]) -> bool {
    let rest = match letters {
        ['و' | 'ف', rest @ ..] => rest,
        _ => letters,
    };
    matches!(
        rest,
        [] | ['ب' | 'ك' | 'ل'] | ['ا', 'ل'] | ['ب' | 'ك', 'ا', 'ل'] | ['ل', 'ل']
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const WORDS: MatchMode = MatchMode {
        words: true,
        normalized: true,
    };
    const SUBSTRING: MatchMode = MatchMode {
        words: false,
        normalized: true,
    };
    const RAW: MatchMode = MatchMode {
        words: false,
        normalized: false,
    };
    const RAW_WORDS: MatchMode = MatchMode {
        words: true,
        normalized: false,
    };

    fn matcher(keywords: &[(&str, MatchMode)]) -> Matcher {
        let mut builder = MatcherBuilder::new();
        for &(keyword, mode) in keywords {
            builder.add(keyword, mode);
        }
        builder.build().expect("valid keywords")
    }

    fn hits_in(m: &Matcher, raw: &str) -> Vec<KeywordId> {
        let mut hits = Hits::new(m);
        m.find(raw, &mut hits);
        hits.iter().collect()
    }

    fn matches(keyword: &str, mode: MatchMode, raw: &str) -> bool {
        !hits_in(&matcher(&[(keyword, mode)]), raw).is_empty()
    }

    #[test]
    fn table() {
        let cases: &[(&str, MatchMode, &str, bool)] = &[
            // SPEC §4: proclitics
            ("بوت", WORDS, "البوت", true),
            ("بوت", WORDS, "والبوت", true),
            ("بوت", WORDS, "بالبوت", true),
            ("بوت", WORDS, "فالبوت", true),
            ("بوت", WORDS, "كالبوت", true),
            ("بوت", WORDS, "للبوت", true),
            ("بوت", WORDS, "وللبوت", true),
            ("بوت", WORDS, "فبالبوت", true),
            ("بوت", WORDS, "وبوت", true),
            ("بوت", WORDS, "فبوت", true),
            ("بوت", WORDS, "لبوت", true),
            ("بوت", WORDS, "كبوت", true),
            ("بوت", WORDS, "ببوت", true),
            ("بوت", WORDS, "بوت", true),
            ("بوت", WORDS, "بوت؟", true),
            ("بوت", WORDS, "(بوت)", true),
            ("بوت", WORDS, "كلمني البوت، شكرا", true),
            // not proclitics
            ("بوت", WORDS, "روبوت", false),
            ("بوت", WORDS, "بوتات", false),
            ("بوت", WORDS, "الروبوت", false),
            ("بوت", WORDS, "لالبوت", false),
            ("بوت", WORDS, "والالبوت", false),
            ("بوت", WORDS, "ووبوت", false),
            ("بوت", WORDS, "1بوت", false),
            // a later valid occurrence is not hidden by an earlier glued one
            ("بوت", WORDS, "روبوت ثم بوت", true),
            ("بوت", WORDS, "روبوتبوت بوتات", false),
            // normalization applies to the text
            ("بوت", WORDS, "البُوت", true),
            ("بوت", WORDS, "البـوت", true),
            ("بوت", WORDS, "ال\u{200C}بوت", true),
            ("بوت", WORDS, "بوت\u{200D}ات", false),
            ("بوت", SUBSTRING, "بُوت", true),
            ("بوت", SUBSTRING, "بـوت", true),
            ("بوت", SUBSTRING, "روبوت", true),
            ("بوت", SUBSTRING, "بوتات", true),
            // normalization applies to the keyword
            ("بُوت", WORDS, "البوت", true),
            ("مدرسة", WORDS, "المدرسه", true),
            ("أهلاً", WORDS, "اهلا وسهلا", true),
            ("رقم ٤٥٦", SUBSTRING, "رقم 456", true),
            // English
            ("bot", WORDS, "a bot here", true),
            ("bot", WORDS, "robot", false),
            ("bot", WORDS, "bots", false),
            ("bot", WORDS, "bot.", true),
            ("bot", WORDS, "BOT", true),
            ("bot", WORDS, "ＢＯＴ!", true),
            ("bot", WORDS, "bot_x", true), // `_` is not alphanumeric
            ("BOT", WORDS, "the bot", true),
            ("bot", SUBSTRING, "robots", true),
            ("hello world", WORDS, "say hello world!", true),
            ("hello world", WORDS, "say hello worlds", false),
            // digits
            ("12", WORDS, "order 123", false),
            ("12", WORDS, "order 12", true),
            ("12", WORDS, "order #12!", true),
            ("12", WORDS, "order ١٢", true),
            ("12", WORDS, "a12", false),
            ("order 12", WORDS, "order 123", false),
            ("order 12", WORDS, "Order 12.", true),
            // raw keywords
            ("BOT", RAW, "BOT", true),
            ("BOT", RAW, "bot", false),
            ("BOT", RAW, "ROBOT", true),
            ("BOT", RAW_WORDS, "ROBOT", false),
            ("بوت", RAW, "بُوت", false),
            ("بوت", RAW_WORDS, "وَالبوتُ", true),
            ("بوت", RAW_WORDS, "بوتـات", false),
            ("بوت", RAW_WORDS, "روبوت", false),
        ];
        for &(keyword, mode, text, expected) in cases {
            assert_eq!(
                matches(keyword, mode, text),
                expected,
                "keyword {keyword:?} ({mode:?}) in {text:?}"
            );
        }
    }

    #[test]
    fn whole_word_is_pure_and_total() {
        let text = "والبوت bot";
        let start = text.find("بوت").expect("present");
        assert!(is_whole_word(text, start, start + "بوت".len()));
        assert!(!is_whole_word(text, start - 1, start + "بوت".len())); // not a boundary
        assert!(!is_whole_word(text, start + 1, start + 2));
        assert!(!is_whole_word(text, 5, 2));
        assert!(!is_whole_word(text, 0, text.len() + 1));
        let b = text.find("bot").expect("present");
        assert!(is_whole_word(text, b, text.len()));
    }

    #[test]
    fn proclitic_sequences() {
        let valid = [
            "ال", "و", "ف", "ب", "ل", "ك", "وال", "فال", "بال", "كال", "لل", "وبال", "فبال", "ولل",
            "فلل", "وب", "ول", "وك", "فب", "فل", "فك", "وكال", "فكال",
        ];
        for p in valid {
            let letters: Vec<char> = p.chars().collect();
            assert!(is_proclitic_sequence(&letters), "{p} should be a proclitic");
            let text = format!("{p}بوت");
            assert!(is_whole_word(&text, p.len(), text.len()), "{text}");
        }
        for p in [
            "ا", "لال", "ي", "ر", "الو", "بو", "وو", "بب", "الل", "فو", "بك",
        ] {
            let letters: Vec<char> = p.chars().collect();
            assert!(
                !is_proclitic_sequence(&letters),
                "{p} should not be a proclitic"
            );
        }
    }

    #[test]
    fn shared_keyword_gets_every_id() {
        let m = matcher(&[
            ("بوت", WORDS),
            ("bot", SUBSTRING),
            ("بوت", WORDS),
            ("بُوت", SUBSTRING),
            ("روبوت", SUBSTRING),
            ("بوت", RAW),
        ]);
        assert_eq!(m.len(), 6);
        assert_eq!(hits_in(&m, "البوت"), vec![0, 2, 3, 5]);
        assert_eq!(hits_in(&m, "روبوت"), vec![3, 4, 5]);
        assert_eq!(hits_in(&m, "robot"), vec![1]);
        assert_eq!(hits_in(&m, "بُوت"), vec![0, 2, 3]);
        assert_eq!(hits_in(&m, "nothing"), Vec::<KeywordId>::new());
    }

    #[test]
    fn ids_are_dense_and_searched_text_is_normalized() {
        let mut builder = MatcherBuilder::new();
        assert!(builder.is_empty());
        assert_eq!(builder.add("بُوت", WORDS), 0);
        assert_eq!(builder.add("BOT", SUBSTRING), 1);
        assert_eq!(builder.add("BOT", RAW), 2);
        assert_eq!(builder.add("بوت", SUBSTRING), 3);
        assert_eq!(builder.len(), 4);
        assert_eq!(builder.searched_text(0), "بوت");
        assert_eq!(builder.searched_text(1), "bot");
        assert_eq!(builder.searched_text(2), "BOT");
        assert_eq!(builder.searched_text(0), builder.searched_text(3));
        assert_eq!(builder.searched_text(99), "");
        let m = builder.build().expect("valid");
        assert_eq!(m.len(), 4);
        assert!(!m.is_empty());
        assert_eq!(m.searched_text(0), "بوت");
        assert_eq!(m.mode(2), Some(RAW));
        assert_eq!(m.mode(4), None);
    }

    #[test]
    fn empty_keywords_are_rejected() {
        for mode in [WORDS, SUBSTRING, RAW, RAW_WORDS] {
            let mut builder = MatcherBuilder::new();
            builder.add("ok", WORDS);
            builder.add("", mode);
            match builder.build() {
                Err(e @ MatcherError::EmptyKeyword { id: 1, .. }) => {
                    assert_eq!(e.to_string(), "keyword #1 is empty");
                }
                other => panic!("{mode:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn keywords_empty_after_normalization_never_match() {
        let mut builder = MatcherBuilder::new();
        let marks = builder.add("ـ\u{064E}", SUBSTRING);
        let control = builder.add("\u{200D}", WORDS);
        let ok = builder.add("bot", WORDS);
        // An invisible character is a valid raw keyword: it is searched as written.
        let raw = builder.add("\u{200D}", RAW);
        assert_eq!(builder.searched_text(marks), "");
        assert_eq!(builder.searched_text(control), "");
        let m = builder.build().expect("only normalizes to empty");
        assert_eq!(m.len(), 4);
        assert_eq!(m.searched_text(marks), "");
        assert_eq!(hits_in(&m, "bot \u{200D}ـ\u{064E}"), vec![ok, raw]);
        assert_eq!(hits_in(&m, ""), Vec::<KeywordId>::new());
    }

    #[test]
    fn empty_matcher_finds_nothing() {
        let m = MatcherBuilder::new().build().expect("empty is fine");
        assert!(m.is_empty());
        let mut hits = Hits::new(&m);
        m.find("bot", &mut hits);
        assert!(hits.is_empty());
    }

    #[test]
    fn hits_reuse_and_grow() {
        let m = matcher(&[("a", SUBSTRING); 130]);
        let mut hits = Hits::with_capacity(3);
        m.find("a", &mut hits);
        assert_eq!(hits.count(), 130);
        assert!(hits.contains(129));
        assert!(!hits.contains(130));
        assert!(!hits.contains(KeywordId::MAX));
        let capacity = hits.words.capacity();
        hits.clear();
        assert!(hits.is_empty());
        m.find("b", &mut hits);
        assert!(hits.is_empty());
        m.find("xa", &mut hits);
        assert_eq!(
            hits.iter().collect::<Vec<_>>(),
            (0..130).collect::<Vec<_>>()
        );
        assert_eq!(hits.words.capacity(), capacity);
    }

    #[test]
    fn matcher_is_send_sync() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<Matcher>();
        assert_send_sync::<MatcherError>();
    }

    /// A tiny deterministic generator (xorshift64*), so the oracle test needs no extra crate.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn pick<'a>(&mut self, items: &'a [&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
    }

    /// Pieces that make keywords collide, overlap and sit behind proclitics.
    const PIECES: &[&str] = &[
        "ب",
        "و",
        "ت",
        "ال",
        "ل",
        "ف",
        "ك",
        "ر",
        "ا",
        "بوت",
        "روبوت",
        "b",
        "o",
        "t",
        "bot",
        "ro",
        "1",
        "2",
        "12",
        "٢",
    ];
    /// Noise only a message gets: separators, case, marks, tatweel, controls, alef forms.
    const NOISE: &[&str] = &[
        " ", " ", " ", ".", "؟", "(", ")", "B", "O", "T", "\u{064F}", "\u{0640}", "\u{200C}",
        "\u{200F}", "أ", "ة", "ى", "ـ", "_", "#",
    ];

    fn keyword(rng: &mut Rng) -> String {
        (0..1 + rng.below(3)).map(|_| rng.pick(PIECES)).collect()
    }

    fn message(rng: &mut Rng) -> String {
        (0..rng.below(40))
            .map(|_| {
                if rng.below(3) == 0 {
                    rng.pick(NOISE)
                } else {
                    rng.pick(PIECES)
                }
            })
            .collect()
    }

    fn mode(rng: &mut Rng) -> MatchMode {
        MatchMode {
            words: rng.below(2) == 0,
            normalized: rng.below(5) != 0,
        }
    }

    /// The oracle: every keyword checked on its own, at every char boundary.
    fn naive(keywords: &[(String, MatchMode)], raw: &str) -> Vec<KeywordId> {
        let normalized = normalize(raw);
        (0..)
            .zip(keywords)
            .filter(|(_, (keyword, mode))| {
                let (text, pattern) = if mode.normalized {
                    (normalized.as_ref(), normalize(keyword))
                } else {
                    (raw, keyword.as_str().into())
                };
                // A keyword that normalizes to nothing never matches.
                !pattern.is_empty()
                    && text.char_indices().any(|(i, _)| {
                        text[i..].starts_with(pattern.as_ref())
                            && (!mode.words || is_whole_word(text, i, i + pattern.len()))
                    })
            })
            .map(|(id, _)| id)
            .collect()
    }

    fn agree(keywords: &[(String, MatchMode)], messages: &[String]) -> Result<(), TestCaseError> {
        let mut builder = MatcherBuilder::new();
        for (keyword, mode) in keywords {
            builder.add(keyword, *mode);
        }
        let m = builder
            .build()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut hits = Hits::new(&m);
        for raw in messages {
            hits.clear();
            m.find(raw, &mut hits);
            let found: Vec<KeywordId> = hits.iter().collect();
            let mut in_found_order = hits.found().to_vec();
            in_found_order.sort_unstable();
            prop_assert_eq!(&in_found_order, &found, "found() and iter() differ");
            prop_assert_eq!(found, naive(keywords, raw), "message {:?}", raw);
        }
        Ok(())
    }

    #[test]
    fn agrees_with_naive_scan_on_1000_keywords() {
        let mut rng = Rng(0x5EED_CA27_A7B0_7001);
        let keywords: Vec<(String, MatchMode)> = (0..1000)
            .map(|_| (keyword(&mut rng), mode(&mut rng)))
            .collect();
        let messages: Vec<String> = (0..300).map(|_| message(&mut rng)).collect();
        let total: usize = messages.iter().map(|raw| naive(&keywords, raw).len()).sum();
        assert!(
            total > 1000,
            "the oracle test should see many hits, saw {total}"
        );
        if let Err(e) = agree(&keywords, &messages) {
            panic!("{e}");
        }
    }

    fn keyword_strategy() -> impl Strategy<Value = (String, MatchMode)> {
        (
            prop::collection::vec(prop::sample::select(PIECES), 1..4),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(pieces, words, normalized)| {
                (pieces.concat(), MatchMode { words, normalized })
            })
    }

    fn message_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                2 => prop::sample::select(PIECES),
                1 => prop::sample::select(NOISE),
            ],
            0..30,
        )
        .prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn agrees_with_naive_scan(
            keywords in prop::collection::vec(keyword_strategy(), 1..60),
            messages in prop::collection::vec(message_strategy(), 1..8),
        ) {
            agree(&keywords, &messages)?;
        }

        #[test]
        fn raw_and_normalized_whole_word_agree_on_marks(
            prefix in prop::sample::select(&["", "و", "ال", "وال", "بال", "لل", "ر", "الرو"][..]),
            mark in prop::sample::select(&["", "\u{064E}", "\u{0640}", "\u{200C}"][..]),
            suffix in prop::sample::select(&["", " ", "ات", "؟"][..]),
        ) {
            let raw = format!("{prefix}{mark}بوت{mark}{suffix}");
            let raw_hit = matches("بوت", RAW_WORDS, &raw);
            let normalized_hit = matches("بوت", WORDS, &raw);
            prop_assert_eq!(raw_hit, normalized_hit, "{:?}", raw);
        }
    }
}
