//! Digests: a digest rule's firings are collected with the polls that found them
//! ([`crate::model::DigestItem`], committed with the watermark), and once their window has
//! passed, the rule's actions run once per window and group, on the list.
//!
//! Owns: what a sealed digest sends ([`seal`], pure: the rule's actions rendered against the
//! list, with a `delivery_id` made of the rule, the group and the window) and the loop that
//! seals the windows that ended ([`run`]). The store's [`crate::store::Store::seal_digests`]
//! reads a window's firings, queues what [`seal`] made of them and deletes them in one
//! transaction: a crash before its commit leaves every firing to seal again under the same
//! ids, after it nothing is left to send twice. A firing whose poll commits after its window
//! was sealed goes to the next window (the store moves it), so none is lost.
//! Must not: read the clock in [`seal`] (the caller says when "now" is).

use super::decide::{Decision, LogLine, RuleError, run_actions};
use crate::model::{ALL_CHATS, Delivery, DigestWindow, MessageKey, SealedDigest};
use crate::outbox::envelope::{digest_envelope, digest_json, rfc3339};
use crate::rules::{Action, Digest, RuleSet};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the daemon looks for windows that ended.
pub const SEAL_EVERY: Duration = Duration::from_secs(1);

/// The digest rule `rule_id` of `rules`: its description, digest and actions.
fn digest_rule<'r>(
    rules: &'r RuleSet,
    rule_id: &str,
) -> Option<(&'r Option<String>, Digest, &'r [Action])> {
    if let Some(r) = rules.rules.iter().find(|r| r.id == rule_id) {
        return Some((&r.description, r.digest?, &r.actions));
    }
    let r = rules.chat_rules.iter().find(|r| r.id == rule_id)?;
    Some((&r.description, r.digest?, &r.actions))
}

/// Whether any rule of `rules` collects digests.
pub fn has_digests(rules: &RuleSet) -> bool {
    rules.rules.iter().any(|r| r.digest.is_some())
        || rules.chat_rules.iter().any(|r| r.digest.is_some())
}

/// What one window's digest sends: the rule's actions rendered once against the list of its
/// firings (`items`: JSON, oldest first; `count`: how many there were, listed or not), at
/// `now`. `Err`: the rule is gone from `rules`, or collects no digest any more; its firings
/// are dropped with the reason logged.
pub fn seal(
    rules: &RuleSet,
    w: &DigestWindow,
    items: &[String],
    count: usize,
    now: i64,
) -> Result<Decision, String> {
    let Some((description, digest, actions)) = digest_rule(rules, &w.rule_id) else {
        return Err(format!(
            "the rule `{}` is gone from the rules, or no longer has a `digest`",
            w.rule_id
        ));
    };
    let listed: Vec<Value> = items
        .iter()
        .take(digest.max_items)
        .map(|i| serde_json::from_str(i).unwrap_or(Value::Null))
        .collect();
    // The group's chat as its newest firing saw it (a chat renamed inside the window shows
    // its new name); none for a digest of all chats.
    let chat = (w.group != ALL_CHATS).then(|| {
        listed
            .iter()
            .rev()
            .map(|i| i["chat"].clone())
            .find(|c| !c.is_null())
            .unwrap_or_else(|| json!({ "id": w.group }))
    });
    let digest_value = digest_json(
        &rfc3339(w.window_start),
        &rfc3339(w.window_start + w.window_secs),
        count.max(listed.len()),
        listed,
    );
    let ctx = json!({
        "rule": { "id": w.rule_id, "description": description },
        "chat": chat,
        "digest": digest_value,
        "now": rfc3339(now),
    });
    let envelope = |id: &str| digest_envelope(&w.rule_id, id, chat.clone(), &digest_value, now);
    // The same rule, group and window: the same delivery id, however often it is sealed.
    let key = MessageKey {
        from_me: false,
        id: format!("digest@{}", w.window_start),
    };
    let mut d = Decision::default();
    run_actions(
        rules, &w.rule_id, actions, &w.group, &key, ctx, &envelope, &mut d,
    );
    Ok(d)
}

/// Collected firings by window (in time order), each window's firings in the order they
/// came: what the store's tables hold, for `cartat-rules test`, which keeps them in memory.
pub fn by_window(items: &[crate::model::DigestItem]) -> Vec<(DigestWindow, Vec<String>)> {
    let mut windows: Vec<(DigestWindow, Vec<String>)> = Vec::new();
    for i in items {
        let w = DigestWindow {
            rule_id: i.rule_id.clone(),
            group: i.group.clone(),
            window_start: i.window_start,
            window_secs: i.window_secs,
        };
        match windows.iter_mut().find(|(x, _)| *x == w) {
            Some((_, listed)) => listed.push(i.item.clone()),
            None => windows.push((w, vec![i.item.clone()])),
        }
    }
    windows.sort_by_key(|(w, _)| w.window_start);
    windows
}

/// What one pass of the sealer did: the digests sealed, and what their actions logged.
#[derive(Debug, Default)]
pub struct Pass {
    pub sealed: Vec<SealedDigest>,
    pub logs: Vec<LogLine>,
    pub errors: Vec<RuleError>,
    /// (rule id, firings) dropped because the rule is gone or collects no digest any more.
    pub dropped: Vec<(String, usize, String)>,
    pub deliveries: Vec<(String, String)>,
}

/// Seals, in the store's writer, every window that ended by `now_s`. With no digest rule left
/// in `rules`, every window: what is waiting was collected by rules that are gone, and is
/// dropped (logged) rather than kept forever.
pub async fn seal_due(
    commits: &crate::store::group::CommitQueue,
    rules: Arc<RuleSet>,
    now_s: i64,
) -> Result<Pass, String> {
    let ended_by = if has_digests(&rules) { now_s } else { i64::MAX };
    commits
        .read(move |store| {
            let mut pass = Pass::default();
            let mut seal_one =
                |w: &DigestWindow, items: &[String], count: usize| -> Vec<Delivery> {
                    match seal(&rules, w, items, count, now_s) {
                        Ok(d) => {
                            pass.logs.extend(d.logs);
                            pass.errors.extend(d.errors);
                            for x in &d.deliveries {
                                pass.deliveries.push((x.chat_id.clone(), x.url.clone()));
                            }
                            d.deliveries
                        }
                        Err(why) => {
                            pass.dropped.push((w.rule_id.clone(), count, why));
                            Vec::new()
                        }
                    }
                };
            let sealed = store
                .seal_digests(now_s, ended_by, &mut seal_one)
                .map_err(|e| e.to_string())?;
            pass.sealed = sealed;
            Ok(pass)
        })
        .await
        .unwrap_or_else(|| Err("the store's writer has stopped".into()))
}

/// Seals the digests whose window ended, every [`SEAL_EVERY`], until `shutdown`; tells the
/// dispatcher about what it queued.
pub async fn run(
    commits: crate::store::group::CommitQueue,
    rules: Arc<std::sync::RwLock<Arc<RuleSet>>>,
    wake: Arc<crate::outbox::dispatcher::Wake>,
    cluster: Option<Arc<crate::cluster::Cluster>>,
    shutdown: CancellationToken,
) {
    // Firings of a rule removed while this daemon was down may wait in the store: look once.
    let mut look = true;
    let mut tick = tokio::time::interval(SEAL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // In a cluster, the instance that holds the lease on all chats seals (and sends).
        if cluster
            .as_ref()
            .is_some_and(|c| c.token(crate::cluster::ALL).is_none())
        {
            continue;
        }
        let rules = rules.read().unwrap_or_else(|e| e.into_inner()).clone();
        let collecting = has_digests(&rules);
        if !(collecting || look) {
            continue;
        }
        look = collecting;
        let now_s = jiff::Timestamp::now().as_second();
        match seal_due(&commits, rules, now_s).await {
            Ok(pass) => report(&pass, &wake),
            Err(e) => {
                look = true;
                crate::events::digest_failed(&e);
            }
        }
    }
}

fn report(pass: &Pass, wake: &crate::outbox::dispatcher::Wake) {
    for s in &pass.sealed {
        crate::events::digest_sealed(s);
    }
    for (rule, count, why) in &pass.dropped {
        crate::events::digest_dropped(rule, *count, why);
    }
    for l in &pass.logs {
        crate::events::rule_log(&l.rule_id, l.level, &l.text);
    }
    for e in &pass.errors {
        crate::events::rule_error(&e.rule_id, "(digest)", &e.error);
    }
    for (chat, url) in &pass.deliveries {
        wake.group(chat.clone(), url.clone());
    }
}

#[cfg(test)]
mod tests;
