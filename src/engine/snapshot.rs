//! What the store holds about one chat, kept in memory by the poller between polls, so a poll
//! reads nothing from SQLite: [`ChatSnapshot::apply`] moves the snapshot exactly as
//! [`Store::commit_poll`](crate::store::Store::commit_poll) moves the rows. Pure.
//!
//! The snapshot is loaded from the store on a chat's first poll (and again after any poll that
//! failed after its fetch), and replaced only once a commit has succeeded, so it never holds
//! anything the store does not: a crash loses the snapshot and nothing else.

use crate::engine::decide::{ChatRuleState, Memory};
use crate::engine::watermark::{ChatState, SeenId};
use crate::store::PollCommit;

/// One chat's stored state: watermark, seen ids and rule memory.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChatSnapshot {
    pub state: ChatState,
    pub memory: Memory,
}

impl ChatSnapshot {
    /// The snapshot after `c` is committed (mirrors `commit_poll`'s SQL, row for row).
    pub fn apply(&mut self, c: &PollCommit) {
        let now_s = c.now_ms / 1000;
        let st = &mut self.state;
        if st.known {
            st.watermark = st.watermark.max(c.watermark);
            st.low_water = st.low_water.max(c.low_water);
        } else {
            st.known = true;
            st.watermark = c.watermark;
            st.low_water = c.low_water;
            st.first_seen = if c.first_seen > 0 {
                c.first_seen
            } else {
                now_s
            };
        }
        for (key, ts, fingerprint) in &c.seen {
            // An id seen again keeps its first time; only its fingerprint moves.
            st.seen
                .entry(key.clone())
                .and_modify(|s| s.fingerprint = *fingerprint)
                .or_insert(SeenId {
                    ts: *ts,
                    fingerprint: *fingerprint,
                });
        }
        let mem = &mut self.memory;
        for (rule, until) in &c.cooldowns {
            mem.cooldowns
                .entry(rule.clone())
                .and_modify(|u| *u = (*u).max(*until))
                .or_insert(*until);
        }
        for (rule, hits) in &c.thresholds {
            if hits.is_empty() {
                mem.thresholds.remove(rule);
            } else {
                mem.thresholds.insert(rule.clone(), hits.clone());
            }
        }
        for (rule, state) in &c.script_state {
            mem.script_state.insert(rule.clone(), state.clone());
        }
        for (rule, state) in &c.chat_rules {
            if *state == ChatRuleState::default() {
                mem.chat_rules.remove(rule);
            } else {
                mem.chat_rules.insert(rule.clone(), *state);
            }
        }
        st.seen.retain(|_, s| s.ts >= c.low_water);
        let spent = now_s.min(c.watermark);
        mem.cooldowns.retain(|_, until| *until >= spent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::model::MessageKey;
    use crate::store::Store;
    use proptest::prelude::*;

    fn key(id: &str, from_me: bool) -> MessageKey {
        MessageKey {
            from_me,
            id: id.into(),
        }
    }

    /// A commit drawn from a small world, so ids, rules and times collide often.
    fn commit() -> impl Strategy<Value = PollCommit> {
        let ids = proptest::sample::select(vec!["a", "b", "c", "d", "e"]);
        let rules = proptest::sample::select(vec!["r1", "r2", "r3"]);
        (
            90i64..130,
            0i64..120,
            proptest::collection::vec((ids, any::<bool>(), 80i64..130, 0u64..4), 0..5),
            proptest::collection::vec((rules.clone(), 80i64..160), 0..3),
            proptest::collection::vec(
                (rules.clone(), proptest::collection::vec(90i64..130, 0..3)),
                0..3,
            ),
            proptest::collection::vec(
                (
                    rules.clone(),
                    proptest::option::of(90i64..130),
                    any::<bool>(),
                ),
                0..3,
            ),
            proptest::collection::vec((rules, 0i64..3), 0..2),
            95i64..140,
        )
            .prop_map(
                |(watermark, low_water, seen, cooldowns, thresholds, chat_rules, script, now)| {
                    PollCommit {
                        chat_id: "966500000000@c.us".into(),
                        watermark,
                        low_water,
                        seen: seen
                            .into_iter()
                            .map(|(id, me, ts, fp)| (key(id, me), ts, fp))
                            .collect(),
                        deliveries: Vec::new(),
                        lease: None,
                        history: Vec::new(),
                        digest_items: Vec::new(),
                        cooldowns: cooldowns
                            .into_iter()
                            .map(|(r, u)| (r.to_string(), u))
                            .collect(),
                        thresholds: thresholds
                            .into_iter()
                            .map(|(r, h)| (r.to_string(), h))
                            .collect(),
                        chat_rules: chat_rules
                            .into_iter()
                            .map(|(r, since, fired)| {
                                (r.to_string(), ChatRuleState { since, fired })
                            })
                            .collect(),
                        script_state: script
                            .into_iter()
                            .map(|(r, n)| {
                                let mut m = serde_json::Map::new();
                                m.insert("n".into(), n.into());
                                (r.to_string(), m)
                            })
                            .collect(),
                        first_seen: if now % 2 == 0 { now - 30 } else { 0 },
                        now_ms: now * 1000,
                    }
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// The snapshot kept in memory is what a fresh load from the real SQLite file gives,
        /// after every commit of any sequence.
        #[test]
        fn the_snapshot_equals_a_fresh_load_after_every_commit(
            commits in proptest::collection::vec(commit(), 1..8)
        ) {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(&dir.path().join("state.db")).unwrap();
            let chat = "966500000000@c.us";
            let mut snap = ChatSnapshot::default();
            let (state, memory) = store.load_chat(chat).unwrap();
            prop_assert_eq!(&snap, &ChatSnapshot { state, memory });
            for c in &commits {
                store.commit_poll(c).unwrap();
                snap.apply(c);
                let (state, memory) = store.load_chat(chat).unwrap();
                prop_assert_eq!(&snap, &ChatSnapshot { state, memory });
            }
        }
    }
}
