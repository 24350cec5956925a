//! The watermark diff: what in a fetched page is new, what is an update, and whether the
//! page may hide more (a gap). Pure: the caller supplies what the store knows.
//!
//! Identity is (watched chat, `id.fromMe`, `id.id`). Ties in the same second are normal and
//! pages may come unsorted, so "new" is decided by id, not by time: a message is new when its
//! id is unknown and it is not older than the chat's low-water mark (below which ids were
//! pruned and only a larger `limit` could show it again).

use crate::config::FirstSight;
use crate::gateway::model::{Message, MessageKey};
use std::collections::HashMap;

pub use crate::model::{ChatState, SeenId};

/// How far a message's time may lag our clock at first sight and still be new (clock skew,
/// messages in flight).
pub const FIRST_SIGHT_SLACK: i64 = 60;

/// The diff of one page against the chat state.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Diff {
    /// Messages to evaluate, oldest first (by time, then id).
    pub new: Vec<usize>,
    /// Known ids whose type or body changed (edits, revokes, decrypted placeholders).
    pub updated: Vec<usize>,
    /// First sight with `skip_history`: recorded as seen, never fired.
    pub history: Vec<usize>,
    /// The page is full and does not reach anything known: ask again with a larger limit.
    pub may_hide_more: bool,
    /// The new watermark and low-water mark to store.
    pub watermark: i64,
    pub low_water: i64,
}

/// Diffs a page (as the gateway returned it, any order) against what is known.
/// `limit` is the `limit` that was asked; a page with fewer messages is the whole chat.
pub fn diff(state: &ChatState, page: &[Message], limit: usize, first_sight: FirstSight) -> Diff {
    let mut order: Vec<usize> = (0..page.len()).collect();
    order.sort_by(|&a, &b| {
        (page[a].timestamp, &page[a].key).cmp(&(page[b].timestamp, &page[b].key))
    });
    // The same id twice in one page: keep the last occurrence only.
    let mut last: HashMap<&MessageKey, usize> = HashMap::with_capacity(page.len());
    for &i in &order {
        last.insert(&page[i].key, i);
    }
    order.retain(|&i| last.get(&page[i].key) == Some(&i));

    let full = page.len() >= limit;
    let oldest = order.first().map(|&i| page[i].timestamp);
    let newest = order.last().map(|&i| page[i].timestamp);
    let mut d = Diff {
        watermark: state.watermark.max(newest.unwrap_or(0)),
        // A full page is the newest `limit`; anything older can come back only with a larger limit.
        low_water: if full {
            oldest.unwrap_or(0).max(state.low_water)
        } else {
            state.low_water
        },
        ..Diff::default()
    };

    if !state.known {
        match first_sight {
            // Since when we watch the chat (`first_seen`: this daemon's start, set by the
            // caller), what arrives is new even when the first poll that succeeds comes much
            // later (a 429 storm, a gateway down at start); what is older is history. Without
            // that time, everything on the first page is history.
            FirstSight::SkipHistory if state.first_seen > 0 => {
                let history_before = state.first_seen - FIRST_SIGHT_SLACK;
                let (history, new): (Vec<usize>, Vec<usize>) = order
                    .iter()
                    .partition(|&&i| page[i].timestamp < history_before);
                // A full page of new messages may hide more of them: ask for more.
                d.may_hide_more = full && history.is_empty() && !new.is_empty();
                d.history = history;
                d.new = new;
            }
            FirstSight::SkipHistory => d.history = order,
            FirstSight::ReplayHistory => d.new = order,
        }
        return d;
    }

    // Before the first sight, with skip_history: what already existed is history, even when
    // the first page came back empty.
    let history_before = match first_sight {
        FirstSight::SkipHistory if state.first_seen > 0 => state.first_seen - FIRST_SIGHT_SLACK,
        _ => i64::MIN,
    };
    let mut reaches_known = false;
    for &i in &order {
        let m = &page[i];
        match state.seen.get(&m.key) {
            Some(seen) => {
                reaches_known = true;
                if seen.fingerprint != m.fingerprint() {
                    d.updated.push(i);
                }
            }
            None if m.timestamp < state.low_water => reaches_known = true,
            None if m.timestamp < history_before => {
                reaches_known = true;
                d.history.push(i);
            }
            None => d.new.push(i),
        }
    }
    // Strictly older than the watermark second: unknown ids *at* that second may be the rest
    // of a same-second burst, so they prove nothing.
    if oldest.is_some_and(|t| t < state.watermark) {
        reaches_known = true;
    }
    d.may_hide_more = full && !reaches_known;
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: &str, ts: i64, body: &str) -> Message {
        let mut m = Message::text("x@c.us", id, ts, false, body);
        m.from = None;
        m
    }

    fn known(page: &[Message], watermark: i64) -> ChatState {
        ChatState {
            known: true,
            watermark,
            low_water: 0,
            first_seen: 0,
            seen: page
                .iter()
                .map(|m| {
                    let seen = SeenId {
                        ts: m.timestamp,
                        fingerprint: m.fingerprint(),
                    };
                    (m.key.clone(), seen)
                })
                .collect(),
        }
    }

    fn ids(page: &[Message], idx: &[usize]) -> Vec<String> {
        idx.iter().map(|&i| page[i].key.id.clone()).collect()
    }

    #[test]
    fn first_sight_skips_or_replays_history() {
        let page = vec![msg("a", 100, "x"), msg("b", 101, "y")];
        let d = diff(&ChatState::default(), &page, 50, FirstSight::SkipHistory);
        assert_eq!(ids(&page, &d.history), ["a", "b"]);
        assert!(d.new.is_empty());
        assert_eq!(d.watermark, 101);
        let d = diff(&ChatState::default(), &page, 50, FirstSight::ReplayHistory);
        assert_eq!(ids(&page, &d.new), ["a", "b"]);
    }

    #[test]
    fn first_sight_after_a_late_first_poll_keeps_what_arrived_since_the_start() {
        // Watched since 1000 (the daemon's start); the first poll that succeeds comes later.
        let unknown = ChatState {
            first_seen: 1000,
            ..ChatState::default()
        };
        let page = vec![
            msg("old", 900, "before the start"),
            msg("slack", 1000 - FIRST_SIGHT_SLACK, "within the clock slack"),
            msg("late", 1010, "arrived during a 429 storm"),
        ];
        /// (first sight, limit, history, new, may hide more)
        type Case = (
            FirstSight,
            usize,
            &'static [&'static str],
            &'static [&'static str],
            bool,
        );
        let cases: [Case; 4] = [
            (
                FirstSight::SkipHistory,
                50,
                &["old"],
                &["slack", "late"],
                false,
            ),
            // Full, and it reaches a message from before the start: nothing is hidden.
            (
                FirstSight::SkipHistory,
                3,
                &["old"],
                &["slack", "late"],
                false,
            ),
            (
                FirstSight::ReplayHistory,
                50,
                &[],
                &["old", "slack", "late"],
                false,
            ),
            (
                FirstSight::ReplayHistory,
                3,
                &[],
                &["old", "slack", "late"],
                false,
            ),
        ];
        for (sight, limit, history, new, hides) in cases {
            let d = diff(&unknown, &page, limit, sight);
            assert_eq!(ids(&page, &d.history), history, "{sight:?} {limit}");
            assert_eq!(ids(&page, &d.new), new, "{sight:?} {limit}");
            assert_eq!(d.may_hide_more, hides, "{sight:?} {limit}");
        }
        // A full page of nothing but new messages may hide more new ones.
        let d = diff(&unknown, &page[1..], 2, FirstSight::SkipHistory);
        assert_eq!(ids(&page[1..], &d.new), ["slack", "late"]);
        assert!(d.may_hide_more);
    }

    #[test]
    fn same_second_ties_are_both_new() {
        let before = vec![msg("a", 100, "x")];
        let page = vec![
            msg("a", 100, "x"),
            msg("b", 105, "one"),
            msg("c", 105, "two"),
        ];
        let d = diff(&known(&before, 100), &page, 50, FirstSight::SkipHistory);
        assert_eq!(ids(&page, &d.new), ["b", "c"]);
        assert!(!d.may_hide_more);
        assert_eq!(d.watermark, 105);
    }

    #[test]
    fn a_tie_at_the_watermark_second_is_still_new() {
        let before = vec![msg("a", 100, "x")];
        let page = vec![msg("a", 100, "x"), msg("b", 100, "same second, later poll")];
        let d = diff(&known(&before, 100), &page, 50, FirstSight::SkipHistory);
        assert_eq!(ids(&page, &d.new), ["b"]);
    }

    #[test]
    fn unsorted_pages_come_out_oldest_first() {
        let before = vec![msg("a", 100, "x")];
        let page = vec![
            msg("d", 130, ""),
            msg("a", 100, "x"),
            msg("c", 120, ""),
            msg("b", 110, ""),
        ];
        let d = diff(&known(&before, 100), &page, 50, FirstSight::SkipHistory);
        assert_eq!(ids(&page, &d.new), ["b", "c", "d"]);
    }

    #[test]
    fn changed_content_is_an_update_not_new() {
        let before = vec![msg("a", 100, "hello"), msg("b", 101, "bot")];
        let mut revoked = msg("b", 101, "");
        revoked.kind = "revoked".into();
        let page = vec![
            msg("a", 100, "hello (edited)"),
            revoked,
            msg("c", 102, "new"),
        ];
        let d = diff(&known(&before, 101), &page, 50, FirstSight::SkipHistory);
        assert_eq!(ids(&page, &d.updated), ["a", "b"]);
        assert_eq!(ids(&page, &d.new), ["c"]);
    }

    #[test]
    fn unchanged_known_messages_are_nothing() {
        let before = vec![msg("a", 100, "x"), msg("b", 101, "y")];
        let d = diff(&known(&before, 101), &before, 50, FirstSight::SkipHistory);
        assert_eq!(
            d,
            Diff {
                watermark: 101,
                low_water: 0,
                ..Diff::default()
            }
        );
    }

    #[test]
    fn a_full_page_that_reaches_nothing_known_may_hide_more() {
        let before = vec![msg("a", 100, "x")];
        let page: Vec<Message> = (0..3).map(|i| msg(&format!("n{i}"), 200 + i, "")).collect();
        let d = diff(&known(&before, 100), &page, 3, FirstSight::SkipHistory);
        assert!(d.may_hide_more);
        assert_eq!(d.new.len(), 3);
        // Not full: the page is the whole chat.
        let d = diff(&known(&before, 100), &page, 4, FirstSight::SkipHistory);
        assert!(!d.may_hide_more);
        // Full but reaching a known id: nothing hidden.
        let mut page2 = page.clone();
        page2[0] = msg("a", 100, "x");
        let d = diff(&known(&before, 100), &page2, 3, FirstSight::SkipHistory);
        assert!(!d.may_hide_more);
    }

    #[test]
    fn a_full_page_reaching_before_the_watermark_second_hides_nothing() {
        let state = ChatState {
            known: true,
            watermark: 150,
            ..ChatState::default()
        };
        let page = vec![msg("w", 149, ""), msg("y", 151, "")];
        let d = diff(&state, &page, 2, FirstSight::SkipHistory);
        assert!(!d.may_hide_more);
        assert_eq!(ids(&page, &d.new), ["w", "y"]);
    }

    #[test]
    fn a_full_page_of_unknown_ids_at_the_watermark_second_may_hide_the_rest_of_the_burst() {
        // `a` was seen at second 100; an album of many images then arrived in that same second.
        let before = vec![msg("a", 100, "")];
        let page = vec![
            msg("img8", 100, ""),
            msg("img9", 100, ""),
            msg("next", 101, ""),
        ];
        let d = diff(&known(&before, 100), &page, 3, FirstSight::SkipHistory);
        assert!(
            d.may_hide_more,
            "img0..img7 may be older in the same second"
        );
    }

    #[test]
    fn after_an_empty_first_page_what_existed_before_first_sight_stays_history() {
        let state = ChatState {
            known: true,
            watermark: 0,
            low_water: 0,
            first_seen: 10_000,
            seen: HashMap::new(),
        };
        let page = vec![
            msg("old1", 5_000, "bot"),
            msg("old2", 9_000, "bot"),
            msg("edge", 9_950, ""),
            msg("new", 10_100, "bot"),
        ];
        let d = diff(&state, &page, 4, FirstSight::SkipHistory);
        assert_eq!(ids(&page, &d.history), ["old1", "old2"]);
        assert_eq!(
            ids(&page, &d.new),
            ["edge", "new"],
            "within the slack or after: new"
        );
        assert!(
            !d.may_hide_more,
            "reaching before first sight is known territory"
        );
        let d = diff(&state, &page, 4, FirstSight::ReplayHistory);
        assert_eq!(d.new.len(), 4, "replay_history wants them all");
    }

    #[test]
    fn unknown_ids_below_the_low_water_mark_are_old_history() {
        let state = ChatState {
            known: true,
            watermark: 300,
            low_water: 200,
            ..ChatState::default()
        };
        let page = vec![msg("old", 150, ""), msg("new", 310, "")];
        let d = diff(&state, &page, 50, FirstSight::SkipHistory);
        assert_eq!(ids(&page, &d.new), ["new"]);
    }

    #[test]
    fn a_full_page_raises_the_low_water_mark() {
        let before = vec![msg("a", 100, "")];
        let page = vec![msg("a", 100, ""), msg("b", 110, "")];
        let d = diff(&known(&before, 100), &page, 2, FirstSight::SkipHistory);
        assert_eq!(d.low_water, 100);
        let d = diff(&known(&before, 100), &page, 3, FirstSight::SkipHistory);
        assert_eq!(d.low_water, 0);
    }

    #[test]
    fn a_duplicated_id_in_one_page_counts_once() {
        let before = vec![msg("a", 100, "")];
        let page = vec![msg("a", 100, ""), msg("b", 110, "v1"), msg("b", 110, "v1")];
        let d = diff(&known(&before, 100), &page, 50, FirstSight::SkipHistory);
        assert_eq!(ids(&page, &d.new), ["b"]);
    }
}
