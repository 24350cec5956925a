//! `cartat-rules silence add|list|expire`: silences in the state, next to a running daemon
//! (which reads them every second) or without one (they are in force from its next start);
//! and `cartat-rules cluster status`, the other command that reads the state beside a daemon
//! for operators.

use super::SilenceAction;
use crate::gateway::model::ChatId;
use crate::model::{Silence, rfc3339};
use std::path::Path;

pub(super) fn silence(config_path: &Path, action: SilenceAction) -> u8 {
    // A silence may come before the daemon's first start made the state file.
    let Some((config, store)) = super::config_and_state(config_path, true) else {
        return 1;
    };
    let now = jiff::Timestamp::now().as_millisecond();
    match action {
        SilenceAction::Add {
            rule,
            chat,
            for_,
            until,
            reason,
        } => {
            let chat = match chat.as_deref().map(ChatId::parse).transpose() {
                Ok(c) => c.map(|c| c.as_str().to_string()),
                Err(e) => {
                    eprintln!("cartat-rules: --chat {e}");
                    return 2;
                }
            };
            let until_ms = match (for_, until) {
                (Some(d), _) if d.is_zero() => {
                    eprintln!("cartat-rules: --for 0s mutes nothing; give a length, e.g. 2h");
                    return 2;
                }
                (Some(d), _) => i64::try_from(d.as_millis())
                    .ok()
                    .and_then(|ms| now.checked_add(ms))
                    .unwrap_or(i64::MAX),
                (None, Some(s)) => s.saturating_mul(1000),
                (None, None) => unreachable!("clap requires --for or --until"),
            };
            if until_ms <= now {
                eprintln!("cartat-rules: --until is not in the future");
                return 2;
            }
            if reason.trim().is_empty() {
                eprintln!("cartat-rules: --reason is empty; say why, for whoever looks next");
                return 2;
            }
            if let Some(r) = &rule
                && let Ok((rules, _)) = crate::rules::load_with(
                    &config.rule_paths,
                    &crate::net::ssrf::NetPolicy::AllowAll,
                    config.rules_timezone.as_ref(),
                )
                && !rules.docs.iter().any(|d| d.id == *r)
            {
                eprintln!(
                    "warning: no rule `{r}` in {}; the silence is added all the same",
                    config
                        .rule_paths
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            let s = Silence {
                id: 0,
                rule_id: rule,
                chat_id: chat,
                until_ms,
                reason,
                created_at_ms: now,
            };
            match store.add_silence(&s) {
                Ok(id) => {
                    println!("silence {id}: {}", describe(&s));
                    0
                }
                Err(e) => {
                    eprintln!("cartat-rules: {e}");
                    1
                }
            }
        }
        SilenceAction::List { all } => match store.silences((!all).then_some(now)) {
            Ok(list) => {
                println!(
                    "{:>4}  {:<8}  {:<20}  {:<24}  {:<28}  reason",
                    "id", "state", "until", "rule", "chat"
                );
                for s in list {
                    println!(
                        "{:>4}  {:<8}  {:<20}  {:<24}  {:<28}  {}",
                        s.id,
                        if s.until_ms > now { "active" } else { "ended" },
                        rfc3339(s.until_ms.div_euclid(1000)),
                        s.rule_id.as_deref().unwrap_or("(every rule)"),
                        s.chat_id.as_deref().unwrap_or("(every chat)"),
                        s.reason
                    );
                }
                0
            }
            Err(e) => {
                eprintln!("cartat-rules: {e}");
                1
            }
        },
        SilenceAction::Expire { id } => match store.expire_silence(id, now) {
            Ok(true) => {
                println!("silence {id} ended");
                0
            }
            Ok(false) => {
                eprintln!("cartat-rules: no silence {id} in force (see `silence list --all`)");
                1
            }
            Err(e) => {
                eprintln!("cartat-rules: {e}");
                1
            }
        },
    }
}

/// `rule bot-keyword in chat 966500000000@c.us until 2026-12-07T15:00:00Z (migration)`.
fn describe(s: &Silence) -> String {
    let what = match (&s.rule_id, &s.chat_id) {
        (Some(r), Some(c)) => format!("rule {r} in chat {c}"),
        (Some(r), None) => format!("rule {r} in every chat"),
        (None, Some(c)) => format!("every rule in chat {c}"),
        (None, None) => "every rule".into(),
    };
    format!(
        "{what} muted until {} ({})",
        rfc3339(s.until_ms.div_euclid(1000)),
        s.reason
    )
}

/// `cartat-rules cluster status`: the instances alive, when each was last heard from, and how
/// many leases each holds (the pseudo-chat `*` of the digests over all chats included).
pub(super) fn cluster_status(config_path: &Path) -> u8 {
    let Some((config, store)) = super::config_and_state(config_path, false) else {
        return 1;
    };
    let Some(ttl) = config.cluster else {
        eprintln!(
            "cartat-rules: {} has no `cluster:` section: this daemon is alone on its state",
            config_path.display()
        );
        return 1;
    };
    match store.cluster_status(ttl.as_millis() as i64) {
        Ok(list) => {
            let chats = config.chats.len() + 1;
            let held: i64 = list.iter().map(|(_, _, n)| n).sum();
            println!(
                "{} instance(s) alive, {held} of {chats} lease(s) held (the chats and `*`, the digests of all chats)",
                list.len()
            );
            println!("{:<40}  {:>10}  {:>6}", "instance", "last seen", "leases");
            for (id, ago_ms, n) in list {
                println!("{id:<40}  {:>8}ms  {n:>6}", ago_ms);
            }
            0
        }
        Err(e) => {
            eprintln!("cartat-rules: {e}");
            1
        }
    }
}
