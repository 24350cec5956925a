//! Reading a chat's reply again for the price of what changed.
//!
//! A chat polled every second sends nearly the same reply every time: the same messages,
//! byte for byte, shifted by the few that arrived (the gateway sends the last `limit`, oldest
//! first). [`ReplyMemo`] keeps, for each message of the chat's last reply, the length and a
//! keyed hash of its JSON bytes and what it parsed to. The next reply is aligned against it:
//! from the start of the `messages` array, each element whose bytes hash as a remembered one
//! (same length, same hash, followed by `,` or `]`) is that message again and is not parsed;
//! what is left — the reply with the remembered run cut out, a few hundred bytes when nothing
//! is new — goes through the full parser ([`super::model::parse_reply`]). An idle chat's poll
//! then costs a hash of its reply (≈ 4 µs for 44 KB) instead of a parse (≈ 100 µs).
//!
//! The result is always what the full parser gives for the whole reply: a message's parse
//! depends on its own bytes only, the cut keeps every byte outside the remembered elements,
//! and every doubt falls back to the full parse — the `messages` key not found at the top
//! level of the reply, a second top-level `messages` key (the last one wins in the parser),
//! a reply that is not valid UTF-8, a cut that does not parse. A test checks the two agree on
//! arbitrary sequences of replies.
//!
//! The hash is foldhash's quality hasher with a random per-process seed (foldhash is already in
//! the build, through hashbrown): a false match would need two different messages of the same
//! length whose 64-bit hashes collide under a seed nobody outside the process knows.
//!
//! Owns: the memo and the alignment. Must not: do I/O or decide what a message means.

use super::model::{ChatId, Message, Page, ReplyError, Skipped, parse_reply};
use super::wire::top_level_messages;
use serde_json::value::RawValue;
use std::hash::BuildHasher;
use std::sync::OnceLock;

/// What one chat's last reply left for the next; empty until a reply was parsed in full.
#[derive(Debug, Default)]
pub struct ReplyMemo {
    elements: Vec<Element>,
    /// Replies in a row the memo did not help with. A gateway whose replies never line up
    /// (newest first, say) would pay for remembering every reply and use none: after
    /// [`MISSES_BEFORE_BACKOFF`] misses, only one reply in [`BACKOFF_EVERY`] is remembered.
    misses: u32,
}

const MISSES_BEFORE_BACKOFF: u32 = 3;
const BACKOFF_EVERY: u32 = 32;

/// One element of the last reply's `messages` array.
#[derive(Debug)]
struct Element {
    len: usize,
    hash: u64,
    parsed: Parsed,
}

#[derive(Debug)]
enum Parsed {
    Message(Message),
    Skipped { reason: String, identity: u64 },
}

/// How a reply was read, for tests and the benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reading {
    /// Parsed in full.
    Full,
    /// `reused` messages came from the memo; the rest was parsed.
    Reused { reused: usize },
}

fn hash(bytes: &[u8]) -> u64 {
    static SEED: OnceLock<foldhash::quality::RandomState> = OnceLock::new();
    SEED.get_or_init(foldhash::quality::RandomState::default)
        .hash_one(bytes)
}

impl ReplyMemo {
    /// How many messages the memo holds.
    pub fn len(&self) -> usize {
        self.elements.len()
    }

    pub fn is_empty(&self) -> bool {
        self.elements.is_empty()
    }

    /// Parses `bytes` as [`parse_reply`] would, reusing what the last reply parsed to, and
    /// remembers this reply for the next. A reply that fails leaves the memo empty.
    pub fn parse(&mut self, bytes: &[u8], watched: &ChatId) -> Result<Page, ReplyError> {
        self.parse_how(bytes, watched).map(|(page, _)| page)
    }

    /// As [`ReplyMemo::parse`], also saying how the reply was read.
    pub fn parse_how(
        &mut self,
        bytes: &[u8],
        watched: &ChatId,
    ) -> Result<(Page, Reading), ReplyError> {
        if let Some((page, reused)) = self.reuse(bytes, watched) {
            self.misses = 0;
            return Ok((page, Reading::Reused { reused }));
        }
        if !self.elements.is_empty() || self.misses >= MISSES_BEFORE_BACKOFF {
            self.misses = self.misses.saturating_add(1);
        }
        self.elements.clear();
        let page = parse_reply(bytes, watched)?;
        let remember =
            self.misses < MISSES_BEFORE_BACKOFF || self.misses.is_multiple_of(BACKOFF_EVERY);
        // Offsets are of the bytes as sent: a reply read with replacement characters is not
        // remembered (the next one is parsed in full again).
        if !remember {
            return Ok((page, Reading::Full));
        }
        if let Ok(text) = std::str::from_utf8(bytes)
            && let Some(raws) = top_level_messages(text)
            && raws.len() == page.messages.len() + page.skipped.len()
        {
            self.elements = elements_of(&raws, &page);
        }
        Ok((page, Reading::Full))
    }

    /// The reply read with the memo, or `None` when it cannot be (then it is parsed in full).
    fn reuse(&mut self, bytes: &[u8], watched: &ChatId) -> Option<(Page, usize)> {
        if self.elements.is_empty() {
            return None;
        }
        // The first `"messages"` that is a key of the reply's object (a value or a nested key
        // spelled the same comes first only in odd replies: a few are tried).
        let key = memchr::memmem::find_iter(bytes, b"\"messages\"")
            .take(4)
            .find(|&at| is_top_level_key(&bytes[..at]))?;
        let mut at = skip_ws(bytes, key + b"\"messages\"".len());
        if bytes.get(at) != Some(&b':') {
            return None;
        }
        at = skip_ws(bytes, at + 1);
        if bytes.get(at) != Some(&b'[') {
            return None;
        }
        let start = skip_ws(bytes, at + 1);
        // The first remembered element the array starts with, then as many of the following
        // remembered ones as come next, in order.
        let first = self
            .elements
            .iter()
            .position(|e| ends_at(bytes, start, e).is_some())?;
        let mut last = first;
        let mut end = ends_at(bytes, start, &self.elements[first])?;
        let tail = loop {
            match bytes.get(end) {
                Some(b']') => break end,
                Some(b',') => {
                    let next = skip_ws(bytes, end + 1);
                    match self
                        .elements
                        .get(last + 1)
                        .and_then(|e| ends_at(bytes, next, e))
                    {
                        Some(e) => {
                            last += 1;
                            end = e;
                        }
                        None => break next,
                    }
                }
                _ => return None,
            }
        };
        // The reply without the remembered run: what it has around the array, and the
        // elements after the run.
        let mut rest = Vec::with_capacity(start + bytes.len() - tail);
        rest.extend_from_slice(&bytes[..start]);
        rest.extend_from_slice(&bytes[tail..]);
        let text = std::str::from_utf8(&rest).ok()?;
        let raws = top_level_messages(text)?;
        let tail_page = parse_reply(text.as_bytes(), watched).ok()?;
        if raws.len() != tail_page.messages.len() + tail_page.skipped.len() {
            return None;
        }
        let reused = last + 1 - first;
        let mut elements: Vec<Element> = self.elements.drain(first..=last).collect();
        elements.extend(elements_of(&raws, &tail_page));
        self.elements = elements;
        Some((self.page(tail_page.chat), reused))
    }

    /// The page the remembered elements make, with `chat`.
    fn page(&self, chat: super::model::Chat) -> Page {
        let mut page = Page {
            chat,
            messages: Vec::with_capacity(self.elements.len()),
            skipped: Vec::new(),
        };
        for (index, e) in self.elements.iter().enumerate() {
            match &e.parsed {
                Parsed::Message(m) => page.messages.push(m.clone()),
                Parsed::Skipped { reason, identity } => page.skipped.push(Skipped {
                    index,
                    reason: reason.clone(),
                    identity: *identity,
                }),
            }
        }
        page
    }
}

/// The memo elements of `raws` (a reply's `messages` array) as `page` parsed them (its
/// skipped indices count from the first of `raws`); empty if the two do not line up.
fn elements_of(raws: &[&RawValue], page: &Page) -> Vec<Element> {
    let mut messages = page.messages.iter();
    let mut skipped = page.skipped.iter().peekable();
    raws.iter()
        .enumerate()
        .filter_map(|(index, raw)| {
            let parsed = match skipped.peek() {
                Some(s) if s.index == index => {
                    let s = skipped.next()?;
                    Parsed::Skipped {
                        reason: s.reason.clone(),
                        identity: s.identity,
                    }
                }
                _ => Parsed::Message(messages.next()?.clone()),
            };
            let bytes = raw.get().as_bytes();
            Some(Element {
                len: bytes.len(),
                hash: hash(bytes),
                parsed,
            })
        })
        .collect()
}

/// Where element `e` ends (past any whitespace after it) if the bytes at `at` are `e` again.
fn ends_at(bytes: &[u8], at: usize, e: &Element) -> Option<usize> {
    let end = at.checked_add(e.len)?;
    let after = skip_ws(bytes, end);
    if !matches!(bytes.get(after), Some(b',' | b']')) {
        return None;
    }
    (hash(bytes.get(at..end)?) == e.hash).then_some(after)
}

fn skip_ws(bytes: &[u8], mut at: usize) -> usize {
    while matches!(bytes.get(at), Some(b' ' | b'\n' | b'\r' | b'\t')) {
        at += 1;
    }
    at
}

/// Whether a key starting right after `before` is a key of the top-level object: `before`
/// opens exactly one object and ends where a key may start (after `{` or `,`).
fn is_top_level_key(before: &[u8]) -> bool {
    let mut depth = 0i32;
    let mut in_string = false;
    let mut escaped = false;
    let mut last = 0u8;
    for &c in before {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                in_string = false;
                last = c;
            }
            continue;
        }
        match c {
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth -= 1,
            _ => {}
        }
        if !matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
            last = c;
        }
    }
    !in_string && depth == 1 && matches!(last, b'{' | b',')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn message(i: usize, body: &str) -> String {
        format!(
            r#"{{"_data":{{"id":{{"fromMe":false,"remote":"966500000000@c.us","id":"M{i}","_serialized":"false_966500000000@c.us_M{i}"}},"body":"{body}","t":{t},"x":[1,{{"messages":[2]}}]}},"id":{{"fromMe":false,"remote":"966500000000@c.us","id":"M{i}","_serialized":"false_966500000000@c.us_M{i}"}},"body":"{body}","type":"chat","timestamp":{t}}}"#,
            t = 1_700_000_000 + i
        )
    }

    fn reply(chat: &str, elements: &[String]) -> Vec<u8> {
        format!(
            r#"{{"status":"success","chat":{chat},"messages":[{}]}}"#,
            elements.join(",")
        )
        .into_bytes()
    }

    fn chat(unread: i64) -> String {
        format!(
            r#"{{"id":{{"_serialized":"966500000000@c.us"}},"name":"A \"messages\":[ B","unreadCount":{unread}}}"#
        )
    }

    fn watched() -> ChatId {
        ChatId::parse("966500000000").unwrap()
    }

    /// Parses `bytes` with the memo and checks it against the full parser.
    fn read(memo: &mut ReplyMemo, bytes: &[u8]) -> Reading {
        let (page, how) = memo.parse_how(bytes, &watched()).unwrap();
        assert_eq!(page, parse_reply(bytes, &watched()).unwrap(), "{how:?}");
        how
    }

    #[test]
    fn a_repeated_reply_reuses_every_message_and_a_shifted_one_all_but_the_new() {
        let msgs: Vec<String> = (0..21).map(|i| message(i, "مرحبا")).collect();
        let mut memo = ReplyMemo::default();
        assert_eq!(
            read(&mut memo, &reply(&chat(0), &msgs[..20])),
            Reading::Full
        );
        assert_eq!(memo.len(), 20);
        assert_eq!(
            read(&mut memo, &reply(&chat(0), &msgs[..20])),
            Reading::Reused { reused: 20 }
        );
        // One new message, the oldest out of the window, the chat object changed.
        let (page, how) = memo
            .parse_how(&reply(&chat(1), &msgs[1..21]), &watched())
            .unwrap();
        assert_eq!(how, Reading::Reused { reused: 19 });
        assert_eq!(page.chat.unread_count, Some(1));
        assert_eq!(page.messages.last().unwrap().key.id, "M20");
        assert_eq!(
            page,
            parse_reply(&reply(&chat(1), &msgs[1..21]), &watched()).unwrap()
        );
        assert_eq!(memo.len(), 20);
    }

    #[test]
    fn an_edited_message_ends_the_reused_run_and_is_parsed_again() {
        let mut msgs: Vec<String> = (0..5).map(|i| message(i, "one")).collect();
        let mut memo = ReplyMemo::default();
        read(&mut memo, &reply(&chat(0), &msgs));
        msgs[2] = message(2, "edited");
        assert_eq!(
            read(&mut memo, &reply(&chat(0), &msgs)),
            Reading::Reused { reused: 2 }
        );
        // The edited one and those after it are remembered again, as they are now.
        assert_eq!(
            read(&mut memo, &reply(&chat(0), &msgs)),
            Reading::Reused { reused: 5 }
        );
    }

    #[test]
    fn skipped_elements_are_remembered_with_their_reason_and_counted_where_they_now_are() {
        let msgs = vec![
            message(0, "a"),
            "7".to_string(),
            r#"{"body":"no id"}"#.to_string(),
            message(3, "b"),
        ];
        let mut memo = ReplyMemo::default();
        read(&mut memo, &reply(&chat(0), &msgs));
        assert_eq!(
            read(&mut memo, &reply(&chat(0), &msgs[1..])),
            Reading::Reused { reused: 3 }
        );
        let page = memo
            .parse(&reply(&chat(0), &msgs[1..]), &watched())
            .unwrap();
        assert_eq!(
            page.skipped.iter().map(|s| s.index).collect::<Vec<_>>(),
            [0, 1]
        );
    }

    #[test]
    fn every_doubt_reads_the_reply_in_full() {
        let msgs: Vec<String> = (0..3).map(|i| message(i, "x")).collect();
        let joined = msgs.join(",");
        let doubts = [
            // A second top-level `messages` (the last one wins), also spelled with an escape.
            format!(r#"{{"status":"success","messages":[{joined}],"messages":[]}}"#),
            format!(r#"{{"status":"success","messages":[{joined}],"messag\u0065s":[]}}"#),
            // The key first found nested, not at the top level.
            format!(r#"{{"status":"success","chat":{{"messages":[{joined}]}},"messages":[]}}"#),
            // Not an array, not an object, not JSON, not UTF-8.
            format!(r#"{{"status":"success","messages":{{"a":[{joined}]}}}}"#),
            format!(r#"[{{"status":"success","messages":[{joined}]}}]"#),
            format!(r#"{{"status":"success","messages":[{joined}]"#),
        ];
        for doubt in &doubts {
            let mut memo = ReplyMemo::default();
            read(&mut memo, &reply(&chat(0), &msgs));
            let full = parse_reply(doubt.as_bytes(), &watched());
            let (got, how) = match memo.parse_how(doubt.as_bytes(), &watched()) {
                Ok((page, how)) => (Ok(page), Some(how)),
                Err(e) => (Err(e), None),
            };
            assert_eq!(got, full, "{doubt}");
            assert_ne!(how, Some(Reading::Reused { reused: 3 }), "{doubt}");
        }
        let mut memo = ReplyMemo::default();
        read(&mut memo, &reply(&chat(0), &msgs));
        let mut bad = reply(&chat(0), &msgs);
        bad.insert(20, 0xff);
        assert_eq!(memo.parse(&bad, &watched()), parse_reply(&bad, &watched()));
        assert!(
            memo.is_empty(),
            "a reply read with replacements is not remembered"
        );
    }

    #[test]
    fn replies_that_never_line_up_are_soon_not_remembered() {
        // Newest first: each reply starts with a message the last one did not have.
        let msgs: Vec<String> = (0..200).map(|i| message(i, "x")).collect();
        let mut memo = ReplyMemo::default();
        let mut remembered = 0;
        for n in 5..200 {
            let page: Vec<String> = msgs[n - 5..n].iter().rev().cloned().collect();
            assert_eq!(read(&mut memo, &reply(&chat(0), &page)), Reading::Full);
            remembered += usize::from(!memo.is_empty());
        }
        assert!(
            remembered <= 3 + 195 / 32 + 1,
            "{remembered} of 195 remembered"
        );
        // Once they line up again, the memo is back in use.
        let page: Vec<String> = msgs[..5].to_vec();
        while memo.is_empty() {
            read(&mut memo, &reply(&chat(0), &page));
        }
        assert_eq!(
            read(&mut memo, &reply(&chat(0), &page)),
            Reading::Reused { reused: 5 }
        );
    }

    #[test]
    fn whitespace_between_elements_is_allowed() {
        let msgs: Vec<String> = (0..4).map(|i| message(i, "x")).collect();
        let pretty = |m: &[String]| {
            format!(
                "{{\n  \"status\": \"success\",\n  \"messages\" : [\n    {}\n  ]\n}}",
                m.join(" ,\n    ")
            )
            .into_bytes()
        };
        let mut memo = ReplyMemo::default();
        read(&mut memo, &pretty(&msgs));
        assert_eq!(
            read(&mut memo, &pretty(&msgs[1..])),
            Reading::Reused { reused: 3 }
        );
    }

    /// One element of a generated reply: a message, an edit of one, or something skipped.
    fn element() -> impl Strategy<Value = String> {
        prop_oneof![
            6 => (0usize..12).prop_map(|i| message(i, "x")),
            2 => (0usize..12).prop_map(|i| message(i, "edited \\\"messages\\\":[")),
            1 => Just("null".to_string()),
            1 => Just(r#"{"id":{"fromMe":true}}"#.to_string()),
            1 => Just(r#"{"messages":[1],"id":{"fromMe":true,"id":"Q"},"timestamp":5}"#.to_string()),
        ]
    }

    proptest! {
        /// Any sequence of replies reads through the memo exactly as the full parser reads it.
        #[test]
        fn the_memo_agrees_with_the_full_parser(
            replies in proptest::collection::vec(
                (proptest::collection::vec(element(), 0..8), 0i64..3, 0u8..6),
                1..8,
            ),
        ) {
            let mut memo = ReplyMemo::default();
            for (elements, unread, shape) in replies {
                let joined = elements.join(if shape == 1 { " , " } else { "," });
                let text = match shape {
                    0 | 1 => format!(r#"{{"status":"success","chat":{},"messages":[{joined}]}}"#, chat(unread)),
                    2 => format!(r#"{{"messages":[{joined}],"status":"success"}}"#),
                    3 => format!(r#"{{"status":"success","messages":[{joined}],"messages":[{joined}]}}"#),
                    4 => format!(r#"{{"status":"failed","messages":[{joined}]}}"#),
                    _ => format!(r#"{{"status":"success","messages":[{joined}"#),
                };
                let got = memo.parse(text.as_bytes(), &watched());
                prop_assert_eq!(got, parse_reply(text.as_bytes(), &watched()), "{}", text);
            }
        }
    }
}
