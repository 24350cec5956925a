//! Keyword matching for rule bodies.
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
    /// whole words only: not glued to other letters/digits, except Arabic proclitics in front
    pub words: bool,
    /// match against normalized text (true, the default) or the raw text as written (false)
    pub normalized: bool,
    /// with `words`: an Arabic attached pronoun after the word is allowed (`بوتي`, `بوتك`,
    /// `طلبهم`): see [`ENCLITICS`]
    pub suffixes: bool,
}

impl Default for MatchMode {
    /// Substring match on normalized text: the defaults.
    fn default() -> Self {
        Self {
            words: false,
            normalized: true,
            suffixes: false,
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
            side.add(&entry.searched, id, entry.mode);
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

/// The keyword ids that share one distinct pattern, split by whether they need whole words
/// (and whether an attached pronoun may follow).
#[derive(Debug, Default)]
struct Targets {
    substring: Vec<KeywordId>,
    words: Vec<KeywordId>,
    suffixed: Vec<KeywordId>,
}

#[derive(Default)]
struct SideBuilder<'a> {
    index: HashMap<&'a str, usize>,
    patterns: Vec<&'a str>,
    targets: Vec<Targets>,
}

impl<'a> SideBuilder<'a> {
    fn add(&mut self, pattern: &'a str, id: KeywordId, mode: MatchMode) {
        let at = *self.index.entry(pattern).or_insert_with(|| {
            self.patterns.push(pattern);
            self.targets.push(Targets::default());
            self.patterns.len() - 1
        });
        if let Some(targets) = self.targets.get_mut(at) {
            match (mode.words, mode.suffixes) {
                (true, true) => targets.suffixed.push(id),
                (true, false) => targets.words.push(id),
                (false, _) => targets.substring.push(id),
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
        self.suffixed.shrink_to_fit();
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

    /// [`is_whole_word`] (or, with `suffixes`, [`is_whole_word_suffixed`]) for a match at
    /// `start..end` of this text.
    fn is_whole_word(&self, start: usize, end: usize, suffixes: bool) -> bool {
        match *self {
            Text::Utf8(text) => whole_word_in(text, start, end, suffixes),
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
                whole_word(before, after, suffixes)
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
                && text.is_whole_word(m.start(), m.end(), false)
            {
                targets.words.iter().for_each(|&id| hits.insert(id));
            }
            if let Some(&first) = targets.suffixed.first()
                && !hits.contains(first)
                && text.is_whole_word(m.start(), m.end(), true)
            {
                targets.suffixed.iter().for_each(|&id| hits.insert(id));
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

/// True when text[start..end] is a whole word as the rule language defines them (pure; exposed for tests and for the explain output).
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
    whole_word_in(text, start, end, false)
}

/// As [`is_whole_word`], and the word may also end in one Arabic attached pronoun
/// ([`ENCLITICS`]): `بوتي` (my bot), `بوتك`, `طلبهم` have `بوت`/`طلب` as a word; `بوتات`
/// (another word, the plural) and `بوتين` do not. The pronoun is read as `normalize` writes it
/// (`ى` counts as `ي`), with tashkeel and tatweel transparent.
pub fn is_whole_word_suffixed(text: &str, start: usize, end: usize) -> bool {
    whole_word_in(text, start, end, true)
}

fn whole_word_in(text: &str, start: usize, end: usize, suffixes: bool) -> bool {
    if start > end {
        return false;
    }
    let (Some(before), Some(after)) = (text.get(..start), text.get(end..)) else {
        return false;
    };
    whole_word(before.chars().rev(), after.chars(), suffixes)
}

/// The Arabic attached (enclitic) pronouns `suffixes: true` lets follow a word, as normalized
/// text writes them: my/me, your (m., f., pl., dual), her, our, their (m., f., dual).
///
/// `ه` (his) alone is left out: normalized text writes `ة` as `ه`, so `طلبه` (his order) cannot
/// be told from `طلبة` (students), a word of its own.
pub const ENCLITICS: &[&str] = &[
    "ي", "ني", "ك", "كم", "كما", "كن", "ها", "هم", "هما", "هن", "نا",
];

/// Whether the letters after a match are one attached pronoun.
fn is_enclitic(letters: &[char]) -> bool {
    ENCLITICS.iter().any(|e| {
        e.chars().count() == letters.len()
            && e.chars().zip(letters).all(|(a, &b)| {
                let b = match b {
                    'ى' | 'ی' => 'ي',
                    'ک' => 'ك',
                    other => other,
                };
                a == b
            })
    })
}

/// [`is_whole_word`] given the characters before the match (nearest first) and after it.
fn whole_word(
    before: impl Iterator<Item = char>,
    after: impl Iterator<Item = char>,
    suffixes: bool,
) -> bool {
    // The letters glued after the match: none, or (with `suffixes`) one attached pronoun.
    let mut tail = ['\0'; 4];
    let mut t = 0;
    for c in after {
        if is_removed(c) {
            continue;
        }
        if !c.is_alphanumeric() {
            break;
        }
        match tail.get_mut(t) {
            Some(slot) if suffixes => {
                *slot = c;
                t += 1;
            }
            _ => return false,
        }
    }
    if t > 0 && !is_enclitic(&tail[..t]) {
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
mod tests;
