use super::*;
use proptest::prelude::*;

const WORDS: MatchMode = MatchMode {
    words: true,
    normalized: true,
    suffixes: false,
};
const SUBSTRING: MatchMode = MatchMode {
    words: false,
    normalized: true,
    suffixes: false,
};
const RAW: MatchMode = MatchMode {
    words: false,
    normalized: false,
    suffixes: false,
};
const RAW_WORDS: MatchMode = MatchMode {
    words: true,
    normalized: false,
    suffixes: false,
};
const SUFFIXED: MatchMode = MatchMode {
    words: true,
    normalized: true,
    suffixes: true,
};
const RAW_SUFFIXED: MatchMode = MatchMode {
    words: true,
    normalized: false,
    suffixes: true,
};

#[test]
fn attached_pronouns_end_a_word_only_when_the_rule_says_suffixes() {
    let cases: &[(&str, MatchMode, &str, bool)] = &[
        // Every attached pronoun, with and without proclitics in front.
        ("بوت", SUFFIXED, "بوتي", true),
        ("بوت", SUFFIXED, "بوتك", true),
        // `ه` alone (his) reads like `ة`, another word: طلبة are students.
        ("بوت", SUFFIXED, "بوته", false),
        ("طلب", SUFFIXED, "طلبة", false),
        ("بوت", SUFFIXED, "بوتها", true),
        ("بوت", SUFFIXED, "بوتنا", true),
        ("بوت", SUFFIXED, "بوتكم", true),
        ("بوت", SUFFIXED, "بوتكما", true),
        ("بوت", SUFFIXED, "بوتكن", true),
        ("بوت", SUFFIXED, "بوتهم", true),
        ("بوت", SUFFIXED, "بوتهما", true),
        ("بوت", SUFFIXED, "بوتهن", true),
        ("بوت", SUFFIXED, "وبوتكم؟", true),
        ("بوت", SUFFIXED, "ابي اكلم بوتكم لو سمحت", true),
        ("بوت", SUFFIXED, "بوت", true),
        ("طلب", SUFFIXED, "وين طلبي؟", true),
        // Spelled with alef maqsura, with tashkeel or tatweel inside: the same pronoun.
        ("بوت", SUFFIXED, "بوتى", true),
        ("بوت", SUFFIXED, "بُوتـكُم", true),
        ("بوت", RAW_SUFFIXED, "بوتى", true),
        ("بوت", RAW_SUFFIXED, "بوتكم", true),
        // Not a pronoun: plurals, duals, other words.
        ("بوت", SUFFIXED, "بوتات", false),
        ("بوت", SUFFIXED, "بوتين", false),
        ("بوت", SUFFIXED, "بوتان", false),
        ("بوت", SUFFIXED, "روبوت", false),
        ("بوت", SUFFIXED, "روبوتي", false),
        ("بوت", SUFFIXED, "بوتكمم", false),
        ("bot", SUFFIXED, "bots", false),
        // Without suffixes: true, a pronoun glues the word as before.
        ("بوت", WORDS, "بوتي", false),
        ("بوت", WORDS, "بوتكم", false),
        ("بوت", RAW_WORDS, "بوتى", false),
    ];
    for &(keyword, mode, text, want) in cases {
        assert_eq!(
            matches(keyword, mode, text),
            want,
            "{keyword:?} in {text:?} with {mode:?}"
        );
    }
    // The same word in one rule with suffixes and in another without: each gets its own verdict.
    let m = matcher(&[("بوت", WORDS), ("بوت", SUFFIXED)]);
    assert_eq!(hits_in(&m, "بوتي"), [1]);
    assert_eq!(hits_in(&m, "بوت"), [0, 1]);
    assert!(is_whole_word_suffixed("بوتي", 0, "بوت".len()));
    assert!(!is_whole_word("بوتي", 0, "بوت".len()));
}

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
        // proclitics
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
    "ي",
    "هم",
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
        suffixes: rng.below(3) == 0,
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
                        && (!mode.words
                            || if mode.suffixes {
                                is_whole_word_suffixed(text, i, i + pattern.len())
                            } else {
                                is_whole_word(text, i, i + pattern.len())
                            })
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
        any::<bool>(),
    )
        .prop_map(|(pieces, words, normalized, suffixes)| {
            (
                pieces.concat(),
                MatchMode {
                    words,
                    normalized,
                    suffixes,
                },
            )
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
