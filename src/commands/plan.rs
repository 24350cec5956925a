//! `cartat-rules plan --rules NEW --against OLD`: what deploying a rule set would change, rule
//! by rule, before it is deployed — the way `terraform plan` shows a change before `apply`.
//!
//! The diff is semantic: rules are matched by id across files, so moving a rule to another
//! file, reordering, reformatting or editing comments changes nothing; what changed is said as
//! the paths inside the rule that differ (`match.body.any`, `actions[1].webhook.url`), old and
//! new value. A rule removed and another added with the same content is a rename. Each change
//! also says what it does to the state the daemon keeps per rule and chat (cooldowns,
//! threshold counts, chat-rule timers, rule-file state are keyed by rule id: a renamed rule
//! starts from nothing).
//!
//! Both sets must load as `check` loads them (an invalid new set is refused with its errors,
//! so a plan is never shown for a set that would not deploy).
//!
//! Owns: the rule-by-rule diff and its report. Must not: write anything or reach the network.

use super::TextOrJson;
use crate::rules::docs::{Body, RuleDoc, differences, read_docs};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

impl RuleDoc {
    fn kind(&self) -> &'static str {
        match &self.body {
            Body::Script(_) => "rule file",
            Body::Yaml(v) if v.get("on").and_then(Value::as_str) == Some("chat") => "chat rule",
            Body::Yaml(_) => "message rule",
        }
    }

    fn disabled(&self) -> bool {
        matches!(&self.body, Body::Yaml(v) if v.get("enabled") == Some(&Value::Bool(false)))
    }

    /// The body without what does not change behaviour: the id and the description.
    fn content(&self) -> Body {
        match &self.body {
            Body::Yaml(Value::Object(m)) => {
                let mut m = m.clone();
                m.remove("id");
                m.remove("description");
                Body::Yaml(Value::Object(m))
            }
            other => other.clone(),
        }
    }

    /// Whether the rule collects its firings into digests.
    fn has_digest(&self) -> bool {
        matches!(&self.body, Body::Yaml(v) if v.get("digest").is_some())
    }

    /// What the daemon keeps per chat under this rule's id.
    fn state(&self) -> Vec<&'static str> {
        let Body::Yaml(v) = &self.body else {
            return vec!["its per-chat state (state_set)"];
        };
        let mut kept = Vec::new();
        if v.get("on").and_then(Value::as_str) == Some("chat") {
            kept.push("its timers (how long its condition has held)");
        }
        if v.get("cooldown").is_some() {
            kept.push("its running cooldowns");
        }
        if v.pointer("/match/threshold").is_some() {
            kept.push("the matches counted towards its threshold");
        }
        kept
    }
}

/// One change a deploy makes.
#[derive(Clone, Debug, PartialEq)]
enum Change {
    Added(RuleDoc),
    Removed(RuleDoc),
    Renamed {
        from: RuleDoc,
        to: RuleDoc,
    },
    Changed {
        old: RuleDoc,
        new: RuleDoc,
        /// (path inside the rule, old value, new value); `None`: absent.
        fields: Vec<(String, Option<Value>, Option<Value>)>,
    },
}

/// What a deploy changes, and how many rules stay as they are.
#[derive(Debug, Default)]
struct Plan {
    changes: Vec<Change>,
    unchanged: usize,
    old_count: usize,
    new_count: usize,
}

/// The plan from `old` to `new` (each a rule set's rules, ids unique within a set).
fn plan(old: &[RuleDoc], new: &[RuleDoc]) -> Plan {
    let old_by: BTreeMap<&str, &RuleDoc> = old.iter().map(|r| (r.id.as_str(), r)).collect();
    let new_by: BTreeMap<&str, &RuleDoc> = new.iter().map(|r| (r.id.as_str(), r)).collect();
    let mut p = Plan {
        old_count: old.len(),
        new_count: new.len(),
        ..Plan::default()
    };
    let mut removed: Vec<&RuleDoc> = old_by
        .iter()
        .filter(|(id, _)| !new_by.contains_key(*id))
        .map(|(_, r)| *r)
        .collect();
    let mut added: Vec<&RuleDoc> = new_by
        .iter()
        .filter(|(id, _)| !old_by.contains_key(*id))
        .map(|(_, r)| *r)
        .collect();
    // A rule removed and one added with the same conditions and actions: a rename.
    let mut renames = Vec::new();
    removed.retain(|r| {
        match added
            .iter()
            .position(|a| a.content() == r.content() && a.kind() == r.kind())
        {
            Some(i) => {
                renames.push(((*r).clone(), added.remove(i).clone()));
                false
            }
            None => true,
        }
    });
    for (id, o) in &old_by {
        let Some(n) = new_by.get(id) else { continue };
        let mut fields = Vec::new();
        match (&o.body, &n.body) {
            (Body::Yaml(a), Body::Yaml(b)) => {
                let mut a = a.clone();
                let mut b = b.clone();
                for v in [&mut a, &mut b] {
                    if let Value::Object(m) = v {
                        m.remove("id");
                    }
                }
                differences("", Some(&a), Some(&b), &mut fields);
            }
            (Body::Script(a), Body::Script(b)) if a.trim() == b.trim() => {}
            (Body::Script(a), Body::Script(b)) => fields.push((
                "script".into(),
                Some(Value::String(a.clone())),
                Some(Value::String(b.clone())),
            )),
            _ => fields.push(("kind".into(), Some(o.kind().into()), Some(n.kind().into()))),
        }
        if fields.is_empty() {
            p.unchanged += 1;
        } else {
            p.changes.push(Change::Changed {
                old: (*o).clone(),
                new: (*n).clone(),
                fields,
            });
        }
    }
    p.changes
        .extend(added.into_iter().map(|r| Change::Added(r.clone())));
    p.changes
        .extend(removed.into_iter().map(|r| Change::Removed(r.clone())));
    p.changes.extend(
        renames
            .into_iter()
            .map(|(from, to)| Change::Renamed { from, to }),
    );
    p
}

/// Said of a digest rule that is removed, renamed or loses its `digest`.
const DIGEST_DROPPED: &str = "firings collected for its digest and not sent yet are dropped when the new rules load (logged as digest.dropped)";

/// What a change does to the state the daemon keeps, and to what fires; one line each.
fn warnings(change: &Change) -> Vec<String> {
    let mut w = Vec::new();
    match change {
        Change::Added(r) if r.disabled() => w.push("added disabled: it does not run".into()),
        Change::Added(_) => {}
        Change::Removed(r) => {
            let state = r.state();
            if !state.is_empty() {
                w.push(format!(
                    "{} stay in the state unused (a rule with this id later finds them again)",
                    state.join(", ")
                ));
            }
            if r.has_digest() {
                w.push(DIGEST_DROPPED.into());
            }
        }
        Change::Renamed { from, to } => {
            let state = from.state();
            if !state.is_empty() {
                w.push(format!(
                    "state is kept by rule id: {} under `{}` do not carry over, so `{}` starts from nothing (it may fire where `{}` would have been silent)",
                    state.join(", "),
                    from.id,
                    to.id,
                    from.id
                ));
            }
            if from.has_digest() {
                w.push(DIGEST_DROPPED.into());
            }
        }
        Change::Changed { old, new, fields } => {
            if !old.disabled() && new.disabled() {
                w.push("disabled: it stops firing (its state stays)".into());
            }
            if old.disabled() && !new.disabled() {
                w.push("enabled again: it fires from the next poll".into());
            }
            for (path, _, _) in fields {
                let p = path.as_str();
                if p == "on" || p == "kind" {
                    w.push(format!(
                        "it becomes a {}: its state as a {} is not used",
                        new.kind(),
                        old.kind()
                    ));
                } else if p.starts_with("match.threshold") {
                    w.push("the matches counted so far are judged by the new threshold".into());
                } else if p == "cooldown" {
                    w.push(
                        "cooldowns already running keep the end they had; the new length applies from the next firing".into(),
                    );
                } else if p == "match.for" {
                    w.push("timers already running count from when they started, against the new length".into());
                } else if p == "digest" && !new.has_digest() {
                    w.push(format!("{DIGEST_DROPPED}; from now it acts on each firing"));
                } else if p == "digest" && !old.has_digest() {
                    w.push(
                        "from now its firings are collected and sent as one digest per window"
                            .into(),
                    );
                } else if p.starts_with("digest.") {
                    w.push("firings already collected are sent as they were collected (their window and group); new ones follow the new digest".into());
                } else if p == "script" {
                    w.push(
                        "the per-chat state it set (state_set) is kept: the new script reads it"
                            .into(),
                    );
                }
            }
        }
    }
    w.dedup();
    w
}

/// A value as one short line.
fn show(v: &Option<Value>) -> String {
    match v {
        None => "(absent)".into(),
        Some(Value::String(s)) if s.contains('\n') => format!("{} lines", s.lines().count()),
        Some(v) => {
            let s = v.to_string();
            if s.chars().count() > 80 {
                format!("{}…", s.chars().take(80).collect::<String>())
            } else {
                s
            }
        }
    }
}

/// How a script's lines changed: lines only in the old, lines only in the new.
fn script_lines(old: &str, new: &str) -> (usize, usize) {
    let a: Vec<&str> = old.lines().map(str::trim_end).collect();
    let b: Vec<&str> = new.lines().map(str::trim_end).collect();
    let gone = a.iter().filter(|l| !b.contains(l)).count();
    let came = b.iter().filter(|l| !a.contains(l)).count();
    (gone, came)
}

fn report_text(p: &Plan, old: &str, new: &Path) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "plan: {} ({} rules) → {} ({} rules)",
        old,
        p.old_count,
        new.display(),
        p.new_count
    );
    for c in &p.changes {
        match c {
            Change::Added(r) => {
                let _ = writeln!(
                    out,
                    "+ add      {}  ({}, {})",
                    r.id,
                    r.kind(),
                    r.path.display()
                );
            }
            Change::Removed(r) => {
                let _ = writeln!(
                    out,
                    "- remove   {}  ({}, {})",
                    r.id,
                    r.kind(),
                    r.path.display()
                );
            }
            Change::Renamed { from, to } => {
                let _ = writeln!(
                    out,
                    "~ rename   {} → {}  (same conditions and actions; {})",
                    from.id,
                    to.id,
                    to.path.display()
                );
            }
            Change::Changed { new, fields, .. } => {
                let _ = writeln!(out, "~ change   {}  ({})", new.id, new.path.display());
                for (path, a, b) in fields {
                    match (path.as_str(), a, b) {
                        ("script", Some(Value::String(a)), Some(Value::String(b))) => {
                            let (gone, came) = script_lines(a, b);
                            let _ =
                                writeln!(out, "    script: {gone} line(s) removed, {came} added");
                        }
                        _ => {
                            let _ = writeln!(out, "    {path}: {} → {}", show(a), show(b));
                        }
                    }
                }
            }
        }
        for w in warnings(c) {
            let _ = writeln!(out, "    ! {w}");
        }
    }
    let _ = writeln!(
        out,
        "{} change(s), {} rule(s) unchanged",
        p.changes.len(),
        p.unchanged
    );
    out
}

fn report_json(p: &Plan) -> String {
    let doc =
        |r: &RuleDoc| json!({"id": r.id, "kind": r.kind(), "path": r.path.display().to_string()});
    let changes: Vec<Value> = p
        .changes
        .iter()
        .map(|c| {
            let mut v = match c {
                Change::Added(r) => json!({"change": "add", "rule": doc(r)}),
                Change::Removed(r) => json!({"change": "remove", "rule": doc(r)}),
                Change::Renamed { from, to } => {
                    json!({"change": "rename", "from": doc(from), "rule": doc(to)})
                }
                Change::Changed { new, fields, .. } => json!({
                    "change": "change",
                    "rule": doc(new),
                    "fields": fields.iter().map(|(path, a, b)| json!({"path": path, "old": a, "new": b})).collect::<Vec<_>>(),
                }),
            };
            v["warnings"] = json!(warnings(c));
            v
        })
        .collect();
    format!(
        "{}\n",
        json!({
            "changes": changes,
            "unchanged": p.unchanged,
            "rules_before": p.old_count,
            "rules_after": p.new_count,
        })
    )
}

/// Reads a rule set as written. The set must load as `check` loads it; its errors otherwise.
fn read_set(path: &Path) -> Result<Vec<RuleDoc>, String> {
    if let Err(d) = crate::rules::load(&[path.to_path_buf()]) {
        return Err(d.to_string());
    }
    let (files, _) = crate::rules::discover(&[path.to_path_buf()]).map_err(|d| d.to_string())?;
    read_docs(&files)
}

/// The rule set a running daemon has in force (`GET /api/rules`), and its fingerprint.
fn daemon_set(url: &str, token: Option<&str>) -> Result<(Vec<RuleDoc>, String), String> {
    let token = token
        .ok_or("asking a daemon needs its admin token: pass --token or set CARTAT_ADMIN_TOKEN")?;
    let mut target = super::health::parse_url(url)?;
    if matches!(
        url.trim_start_matches("http://").split_once('/'),
        None | Some((_, ""))
    ) {
        target.path = "/api/rules".into();
    }
    let auth = format!("Bearer {token}");
    let (status, body) = super::health::request(
        &target,
        "GET",
        &[("Authorization", &auth)],
        std::time::Duration::from_secs(10),
    )
    .map_err(|e| format!("no answer from {url}: {e}"))?;
    let answer: Value = serde_json::from_str(&body)
        .map_err(|_| format!("{url} answered {status}: {}", body.trim()))?;
    if status != 200 {
        return Err(format!(
            "{url} answered {status}: {}",
            answer["error"].as_str().unwrap_or(body.trim())
        ));
    }
    let docs = answer["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            RuleDoc::from_json(r)
                .ok_or_else(|| format!("{url}: a rule it sent is not readable: {r}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let fingerprint = answer["fingerprint"].as_str().unwrap_or("").to_string();
    if fingerprint.is_empty() {
        return Err(format!(
            "{url} could not say which rules it runs (its rule files were not readable as written)"
        ));
    }
    Ok((docs, fingerprint))
}

/// `cartat-rules plan`: prints the plan; 0 when both sets load, 1 otherwise.
pub(super) fn run(new: &Path, against: &str, token: Option<&str>, format: TextOrJson) -> u8 {
    let scheme = against
        .split_once("://")
        .map(|(s, _)| s.to_ascii_lowercase());
    if scheme.as_deref().is_some_and(|s| s != "http") {
        eprintln!(
            "cartat-rules plan: `{against}`: the daemon's admin API speaks plain http:// (or give a folder)"
        );
        return 1;
    }
    let old = if scheme.is_some() {
        daemon_set(against, token)
            .map(|(docs, fingerprint)| (docs, format!("{against} (rule set {fingerprint})")))
    } else {
        read_set(Path::new(against)).map(|docs| (docs, against.to_string()))
    };
    let (old_docs, old_name) = match old {
        Ok(o) => o,
        Err(e) => {
            eprint!("the rules deployed now ({against}) do not load:\n{e}");
            if !e.ends_with('\n') {
                eprintln!();
            }
            return 1;
        }
    };
    let new_docs = match read_set(new) {
        Ok(d) => d,
        Err(e) => {
            eprint!(
                "the new rules ({}) do not load, so they would not deploy:\n{e}",
                new.display()
            );
            return 1;
        }
    };
    let p = plan(&old_docs, &new_docs);
    let out = match format {
        TextOrJson::Text => report_text(&p, &old_name, new),
        TextOrJson::Json => report_json(&p),
    };
    print!("{out}");
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn yaml(id: &str, text: &str) -> RuleDoc {
        RuleDoc {
            id: id.into(),
            path: PathBuf::from(format!("rules/{id}.yaml")),
            body: Body::Yaml(serde_saphyr::from_str(text).unwrap()),
        }
    }

    const BOT: &str = "id: bot\nmatch: { body: { any: [بوت, bot] } }\ncooldown: 10m\nactions: [ { log: { message: x } }, { webhook: { url: 'http://a/h' } } ]\n";

    #[test]
    fn a_plan_names_what_changed_inside_a_rule_and_ignores_the_rest() {
        let old = [yaml("bot", BOT)];
        // Reformatted, a comment, another file: nothing changed.
        let mut moved = yaml(
            "bot",
            "# the bot\nid: bot\nactions:\n  - log: { message: x }\n  - webhook: { url: 'http://a/h' }\ncooldown: 10m\nmatch:\n  body: { any: [بوت, bot] }\n",
        );
        moved.path = PathBuf::from("rules/other.yaml");
        let p = plan(&old, &[moved]);
        assert_eq!((p.changes.len(), p.unchanged), (0, 1));

        let new = [yaml(
            "bot",
            "id: bot\nmatch: { body: { any: [بوت, bot, روبوت] } }\ncooldown: 20m\nactions: [ { log: { message: x } }, { webhook: { url: 'http://b/h' } } ]\n",
        )];
        let p = plan(&old, &new);
        let Change::Changed { fields, .. } = &p.changes[0] else {
            panic!("{:?}", p.changes)
        };
        let paths: Vec<&str> = fields.iter().map(|(p, _, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            ["actions[1].webhook.url", "cooldown", "match.body.any"]
        );
        assert_eq!(fields[0].2, Some(json!("http://b/h")));
        let w = warnings(&p.changes[0]);
        assert!(w[0].contains("cooldowns already running"), "{w:?}");
    }

    #[test]
    fn a_plan_says_what_becomes_of_the_firings_a_digest_has_collected() {
        let digest = |every: &str| {
            format!(
                "id: d\nmatch: {{ body: {{ any: [x] }} }}\ndigest: {{ every: {every} }}\nactions: [ {{ log: {{ message: x }} }} ]\n"
            )
        };
        let plain = "id: d\nmatch: { body: { any: [x] } }\nactions: [ { log: { message: x } } ]\n";
        let cases: [(&str, String, Option<String>, &str); 4] = [
            ("removed", digest("15m"), None, "not sent yet are dropped"),
            (
                "digest gone",
                digest("15m"),
                Some(plain.into()),
                "from now it acts on each firing",
            ),
            (
                "digest added",
                plain.into(),
                Some(digest("15m")),
                "collected and sent as one digest per window",
            ),
            (
                "window changed",
                digest("15m"),
                Some(digest("1h")),
                "sent as they were collected",
            ),
        ];
        for (what, old, new, want) in cases {
            let new: Vec<_> = new.iter().map(|n| yaml("d", n)).collect();
            let p = plan(&[yaml("d", &old)], &new);
            assert_eq!(p.changes.len(), 1, "{what}");
            let w = warnings(&p.changes[0]);
            assert!(w.iter().any(|l| l.contains(want)), "{what}: {w:?}");
        }
    }

    #[test]
    fn a_removed_and_an_added_rule_with_the_same_content_is_a_rename_that_loses_state() {
        let old = [
            yaml("bot", BOT),
            yaml(
                "gone",
                "id: gone\non: chat\nmatch: { unread_count: { gte: 5 }, for: 10m }\nactions: [ { log: { message: x } } ]\n",
            ),
        ];
        let new = [
            yaml(
                "bot-v2",
                &BOT.replace("id: bot", "id: bot-v2\ndescription: new name"),
            ),
            yaml(
                "fresh",
                "id: fresh\nenabled: false\nactions: [ { log: { message: y } } ]\n",
            ),
        ];
        let p = plan(&old, &new);
        let kinds: Vec<String> = p
            .changes
            .iter()
            .map(|c| match c {
                Change::Added(r) => format!("+{}", r.id),
                Change::Removed(r) => format!("-{}", r.id),
                Change::Renamed { from, to } => format!("{}→{}", from.id, to.id),
                Change::Changed { new, .. } => format!("~{}", new.id),
            })
            .collect();
        assert_eq!(kinds, ["+fresh", "-gone", "bot→bot-v2"]);
        assert_eq!(warnings(&p.changes[0]), ["added disabled: it does not run"]);
        assert!(warnings(&p.changes[1])[0].starts_with("its timers"));
        let rename = &warnings(&p.changes[2])[0];
        assert!(
            rename.contains("its running cooldowns under `bot` do not carry over, so `bot-v2` starts from nothing"),
            "{rename}"
        );
    }

    #[test]
    fn scripts_compare_by_text_and_a_change_of_kind_is_said() {
        let script = |text: &str| RuleDoc {
            id: "esc".into(),
            path: "rules/esc.rhai".into(),
            body: Body::Script(text.into()),
        };
        let p = plan(
            &[script("fn on_message(m, c) {}\n")],
            &[script("fn on_message(m, c) {}")],
        );
        assert_eq!(p.unchanged, 1);
        let p = plan(
            &[script("fn on_message(m, c) {\n  log(\"a\");\n}\n")],
            &[script("fn on_message(m, c) {\n  log(\"b\");\n}\n")],
        );
        let text = report_text(&p, "old", Path::new("new"));
        assert!(
            text.contains("    script: 1 line(s) removed, 1 added\n"),
            "{text}"
        );
        assert!(
            text.contains("! the per-chat state it set (state_set) is kept"),
            "{text}"
        );
        let p = plan(
            &[yaml("esc", BOT.replace("id: bot", "id: esc").as_str())],
            &[script("x")],
        );
        assert!(warnings(&p.changes[0])[0].contains("it becomes a rule file"));
    }
}
