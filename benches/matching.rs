//! Rule matching throughput (issue 3): normalize + match + evaluate, per message, for
//! 1,000 YAML keyword rules (10 keywords each, Arabic and English), then with 50 regex
//! rules added, against a naive baseline (every rule loops `contains` over its keywords on
//! the normalized text). Everything is generated deterministically.
//!
//! Run: `cargo bench --bench matching` (figures in README "Performance").

use cartat_rules::gateway::model::{Chat, ChatId, Message, MessageKey};
use cartat_rules::rules::{RuleSet, compile_rules, parse_file};
use cartat_rules::text::normalize::normalize;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::path::Path;

const ARABIC: &[&str] = &[
    "بوت",
    "طلب",
    "الغاء",
    "استرجاع",
    "فاتوره",
    "توصيل",
    "شحنه",
    "مشكله",
    "سعر",
    "خصم",
    "موظف",
    "عاجل",
    "ضروري",
    "حساب",
    "دفع",
    "بطاقه",
    "تحويل",
    "رصيد",
    "اشتراك",
    "تجديد",
    "موعد",
    "حجز",
    "فرع",
    "عنوان",
    "رقم",
    "منتج",
    "مقاس",
    "لون",
    "ضمان",
    "صيانه",
    "شكوى",
    "اقتراح",
    "تقييم",
    "متاخر",
    "وصل",
    "تالف",
    "ناقص",
    "بديل",
    "عرض",
    "كوبون",
];
const ENGLISH: &[&str] = &[
    "bot",
    "order",
    "cancel",
    "refund",
    "invoice",
    "delivery",
    "shipping",
    "problem",
    "price",
    "discount",
    "agent",
    "urgent",
    "account",
    "payment",
    "card",
    "transfer",
    "balance",
    "subscription",
    "renewal",
    "appointment",
    "booking",
    "branch",
    "address",
    "number",
    "product",
    "size",
    "color",
    "warranty",
    "repair",
    "complaint",
    "feedback",
    "late",
    "arrived",
    "damaged",
    "missing",
    "replacement",
    "offer",
    "coupon",
    "tracking",
    "status",
];

/// A tiny deterministic generator (xorshift), so every run benchmarks the same data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[(self.next() % from.len() as u64) as usize]
    }
}

const ARABIC_LETTERS: &[&str] = &[
    "ب", "ت", "ث", "ج", "ح", "خ", "د", "ذ", "ر", "ز", "س", "ش", "ص", "ض", "ط", "ظ", "ع", "غ", "ف",
    "ق", "ك", "ل", "م", "ن", "ه", "و", "ي", "ا",
];
const SYLLABLES: &[&str] = &[
    "ka", "lo", "mi", "ne", "ro", "ta", "vi", "zu", "ber", "con", "dal", "fen", "gor", "hul",
    "jax", "kir", "mon", "pel", "quo", "sar", "tin", "vor", "wex", "yal",
];

/// A product, branch or brand name: what distinguishes one rule from another.
fn name(rng: &mut Rng, arabic: bool) -> String {
    if arabic {
        (0..4).map(|_| rng.pick(ARABIC_LETTERS)).collect()
    } else {
        (0..3).map(|_| rng.pick(SYLLABLES)).collect()
    }
}

/// A keyword as a business writes one: a name, or a name with a common word
/// ("order kamiro", "طلب سبحق"). Common words alone would make every rule fire on every
/// other message, which no real rule set of 1,000 rules does.
fn keyword(rng: &mut Rng) -> String {
    let arabic = rng.next().is_multiple_of(2);
    let words = if arabic { ARABIC } else { ENGLISH };
    if rng.next().is_multiple_of(2) {
        name(rng, arabic)
    } else {
        format!("{} {}", rng.pick(words), name(rng, arabic))
    }
}

fn keyword_rules(rng: &mut Rng, n: usize) -> (String, Vec<Vec<String>>) {
    let mut yaml = String::new();
    let mut lists = Vec::new();
    for i in 0..n {
        let kws: Vec<String> = (0..10).map(|_| keyword(rng)).collect();
        let quoted: Vec<String> = kws.iter().map(|k| format!("{k:?}")).collect();
        yaml.push_str(&format!(
            "- id: kw-{i}\n  match:\n    from_me: false\n    body:\n      any: [{}]\n      words: {}\n  actions: [ {{ log: {{ message: x }} }} ]\n",
            quoted.join(", "),
            i % 2 == 0
        ));
        lists.push(kws.iter().map(|k| normalize(k).into_owned()).collect());
    }
    (yaml, lists)
}

fn regex_rules(rng: &mut Rng, n: usize) -> String {
    let mut yaml = String::new();
    for i in 0..n {
        let (a, b) = (rng.pick(ENGLISH), rng.pick(ARABIC));
        let re = match i % 5 {
            0 => format!(r"(?:{a}|{b})\s*(?:رقم\s*)?#?(\d{{3,}})"),
            1 => format!(r"{a}\s+\w+\s+{b}"),
            2 => format!(r"\b{a}\b.*\b\d{{4,}}\b"),
            3 => format!(r"(?:https?://)\S*{a}\S*"),
            _ => format!(r"{b}\s*(\d+)\s*(?:ريال|sar)"),
        };
        yaml.push_str(&format!(
            "- id: re-{i}\n  match:\n    from_me: false\n    body:\n      regex: '{re}'\n  actions: [ {{ log: {{ message: x }} }} ]\n"
        ));
    }
    yaml
}

/// Message bodies of 20–200 characters: Arabic, English and mixed, some with order numbers,
/// tashkeel, tatweel and Arabic-Indic digits.
fn bodies(rng: &mut Rng, n: usize, keywords: &[Vec<String>]) -> Vec<String> {
    let fixed = [
        "السلام عليكم، ابغى اكلم البـوت لو سمحت",
        "Hi, is this a BOT? I need help with my order #4521",
        "مرحبا، عندي مشكلة في الطلب رقم ٤٥٦ ولم يصل حتى الان",
        "Thanks a lot, the delivery arrived on time 👍",
        "وَالبُوتُ ما رد علي من امس، ممكن موظف؟",
        "Can I change the size of the product? It is too small",
    ];
    let mut out: Vec<String> = fixed.iter().map(|s| s.to_string()).collect();
    while out.len() < n {
        let target = 20 + (rng.next() % 181) as usize;
        let mixed = rng.next() % 3;
        let mut s = String::new();
        while s.chars().count() < target {
            let words = match mixed {
                0 => ARABIC,
                1 => ENGLISH,
                _ if rng.next().is_multiple_of(2) => ARABIC,
                _ => ENGLISH,
            };
            let filler = [
                "please",
                "hello",
                "thanks",
                "today",
                "ممكن",
                "لو",
                "سمحت",
                "اليوم",
                "شكرا",
                "عندي",
                "my",
                "the",
                "is",
                "في",
                "من",
            ];
            let w = match rng.next() % 40 {
                // Now and then a message names what some rule is about.
                0 => {
                    let rule = &keywords[(rng.next() % keywords.len() as u64) as usize];
                    rule[(rng.next() % rule.len() as u64) as usize].clone()
                }
                1..=13 => rng.pick(words).to_string(),
                _ => rng.pick(&filler).to_string(),
            };
            if !s.is_empty() {
                s.push(' ');
            }
            s.push_str(&w);
            if rng.next().is_multiple_of(10) {
                s.push_str(&format!(" {}", rng.next() % 100_000));
            }
        }
        out.push(s.chars().take(200).collect());
    }
    out
}

fn compile(yaml: &str) -> RuleSet {
    let parsed = parse_file(Path::new("bench.yaml"), yaml).expect("bench rules parse");
    let (set, d) = compile_rules(vec![parsed]);
    assert!(!d.has_errors(), "{d}");
    set
}

fn message(body: &str) -> Message {
    Message {
        key: MessageKey {
            from_me: false,
            id: "ID".into(),
        },
        serialized_id: "false_966500000000@c.us_ID".into(),
        body: body.into(),
        kind: "chat".into(),
        timestamp: 1_700_000_000,
        from: Some("966500000000@c.us".into()),
        to: None,
        author: None,
        has_media: false,
    }
}

fn bench(c: &mut Criterion) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (kw_yaml, kw_lists) = keyword_rules(&mut rng, 1_000);
    let re_yaml = regex_rules(&mut rng, 50);
    let keywords_only = compile(&kw_yaml);
    let with_regex = compile(&format!("{kw_yaml}{re_yaml}"));
    let messages: Vec<Message> = bodies(&mut rng, 200, &kw_lists)
        .iter()
        .map(|b| message(b))
        .collect();
    let chat = Chat {
        id: "966500000000@c.us".into(),
        name: Some("Bench".into()),
        ..Chat::default()
    };
    let chat_id = ChatId::from_gateway(&chat.id);

    let fired = |set: &RuleSet| -> usize {
        let mut n = 0;
        for m in &messages {
            let p = set.prepare(&m.body);
            n += set.fired(&chat_id, &chat, m, &p).count();
        }
        n
    };
    // What the benchmark does: how many (rule, message) firings there are.
    let chars: usize = messages.iter().map(|m| m.body.chars().count()).sum();
    eprintln!(
        "{} messages, {} characters on average; keyword rules fired {} times, with regex rules {} times",
        messages.len(),
        chars / messages.len(),
        fired(&keywords_only),
        fired(&with_regex)
    );

    let mut g = c.benchmark_group("matching");
    g.throughput(Throughput::Elements(messages.len() as u64));
    g.bench_function("1000_keyword_rules", |b| {
        b.iter(|| black_box(fired(black_box(&keywords_only))))
    });
    g.bench_function("1000_keyword_rules+50_regex_rules", |b| {
        b.iter(|| black_box(fired(black_box(&with_regex))))
    });
    g.bench_function("naive_1000_keyword_rules", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for m in &messages {
                let text = normalize(black_box(&m.body));
                for kws in &kw_lists {
                    if !m.key.from_me && kws.iter().any(|k| text.contains(k.as_str())) {
                        n += 1;
                    }
                }
            }
            black_box(n)
        })
    });
    g.bench_function("1000_keyword_rules_prepare_only", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for m in &messages {
                // Normalizes into the automaton's encoding and matches; builds no text.
                n += keywords_only.prepare(black_box(&m.body)).raw.len();
            }
            black_box(n)
        })
    });
    g.bench_function("normalize_only", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for m in &messages {
                n += normalize(black_box(&m.body)).len();
            }
            black_box(n)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
