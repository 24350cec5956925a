//! One poll of one chat, after the page is read: what the rules do about what is new, and the
//! commit that records it. Pure; the poller runs it against the gateway and the store, and
//! `cartat-rules test` runs it over the polls of a rule test file, so both decide alike.
//!
//! Owns: the order of a poll's decisions (message rules on the new messages, oldest first,
//! then chat rules on the whole page, under one script budget) and what a commit holds. Must
//! not: do I/O or read the clock (the caller says when "now" is).

use super::decide::{Clock, Decision, decide_chat, decide_with_reasons};
use super::watermark::Diff;
use crate::gateway::model::{ChatId, Message, Page};
use crate::model::{ChatState, Memory};
use crate::store::PollCommit;
use std::time::Duration;

/// How long one poll's rule scripts may run in all (each evaluation also has its own
/// deadline): a page of many messages times several slow scripts holds its chat this long at
/// most; the scripts left over fail as rule errors, counted and logged.
pub const SCRIPT_BUDGET_PER_POLL: Duration = Duration::from_millis(250);

/// The messages of `page` the diff `d` found new, oldest first (what message rules see).
pub fn new_messages<'p>(page: &'p Page, d: &Diff) -> Vec<&'p Message> {
    d.new.iter().map(|&i| &page.messages[i]).collect()
}

/// The rules' decision on a page: message rules on its new messages (`new_msgs`, from
/// [`new_messages`]), then chat rules on the whole page, with `memory` as the last commit left
/// it; the actions of rules that `silences` mute in this chat left out. `reasons`: say why each
/// candidate rule that did not match failed (for the run history).
#[allow(clippy::too_many_arguments)]
pub fn decide_poll(
    rules: &crate::rules::RuleSet,
    chat_id: &ChatId,
    page: &Page,
    new_msgs: &[&Message],
    memory: &Memory,
    silences: &[crate::model::Silence],
    now_ms: i64,
    reasons: bool,
) -> Decision {
    crate::rules::script::with_poll_budget(SCRIPT_BUDGET_PER_POLL, || {
        let mut decision = decide_with_reasons(
            rules,
            chat_id,
            &page.chat,
            new_msgs,
            memory,
            Clock::Now(now_ms.div_euclid(1000)),
            reasons,
        );
        decide_chat(
            rules,
            chat_id,
            &page.chat,
            &page.messages,
            memory,
            now_ms.div_euclid(1000),
            &mut decision,
        );
        super::silence::mute(&mut decision, chat_id.as_str(), silences, now_ms);
        decision
    })
}

/// The commit of a poll: the diff's watermarks and seen ids, the decision's deliveries and
/// rule memory. `None` when it would change nothing (most polls of idle chats): no write.
pub fn commit_of(
    chat_key: &str,
    page: &Page,
    d: &Diff,
    decision: &Decision,
    state: &ChatState,
    now_ms: i64,
) -> Option<PollCommit> {
    let mut seen = Vec::with_capacity(d.new.len() + d.updated.len() + d.history.len());
    for &i in d.new.iter().chain(&d.updated).chain(&d.history) {
        let m = &page.messages[i];
        seen.push((m.key.clone(), m.timestamp, m.fingerprint()));
    }
    let commit = PollCommit {
        chat_id: chat_key.to_owned(),
        watermark: d.watermark,
        low_water: d.low_water,
        seen,
        deliveries: decision.deliveries.clone(),
        digest_items: decision.digest_items.clone(),
        cooldowns: decision.cooldowns.clone(),
        thresholds: decision.thresholds.clone(),
        chat_rules: decision.chat_rules.clone(),
        script_state: decision.script_state.clone(),
        first_seen: state.first_seen,
        lease: None,
        now_ms,
        history: Vec::new(),
    };
    let changes_nothing = state.known
        && commit.seen.is_empty()
        && commit.deliveries.is_empty()
        && commit.digest_items.is_empty()
        && commit.cooldowns.is_empty()
        && commit.thresholds.is_empty()
        && commit.chat_rules.is_empty()
        && commit.script_state.is_empty()
        && commit.watermark <= state.watermark
        && commit.low_water <= state.low_water;
    (!changes_nothing).then_some(commit)
}
