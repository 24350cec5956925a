//! Rule tests with expectations: `cartat-rules test --rules rules/` runs the test files under
//! `rules/tests/` (or `--tests PATH`), says which expectations failed, as a diff, and exits 1
//! when one did — the way `promtool test rules` checks alerting rules before they deploy.
//!
//! A test describes one chat as the mock gateway's scenario does (its messages appear at
//! offsets from time 0, may be edited or revoked later) and polls it at given offsets; each
//! poll says exactly which rules fire then, optionally with the message each fired on, parts
//! of the webhook body and a piece of the log line. A poll runs what the daemon runs: the
//! mock's reply for that moment (the exact whatsapp-web.js shape), the daemon's parser, the
//! watermark diff, [`decide_poll`], and the snapshot update of [`commit_of`] — so cooldowns,
//! thresholds, chat-rule timers and rule-file state carry from poll to poll as they do across
//! the daemon's polls, and a chat rule's `for:` is waited for, not assumed.
//!
//! Owns: the test file format, running a file, the report (text with a diff, or one JSON
//! document). Must not: do network I/O or read the clock (time 0 is the file's `start`).

use super::TestFormat;
use crate::config::FirstSight;
use crate::engine::snapshot::ChatSnapshot;
use crate::engine::step::{commit_of, decide_poll, new_messages};
use crate::engine::watermark::diff;
use crate::gateway::model::{ChatId, Message, parse_reply};
use crate::mock::{ChatSpec, Offset, Replay, Scenario};
use crate::rules::RuleSet;
use serde::Deserialize;
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Time 0 when a file names none.
const DEFAULT_START: &str = "2026-01-01T00:00:00Z";

/// One test file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    /// Time 0 of every `at` (RFC 3339). Default 2026-01-01T00:00:00Z.
    #[serde(default)]
    start: Option<String>,
    /// What the first poll does with messages older than time 0 (less a minute of slack), as
    /// the config's `on_first_sight`. Default `skip_history`.
    #[serde(default)]
    first_sight: FirstSight,
    tests: Vec<TestCase>,
}

/// One test: a chat and the polls of it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestCase {
    name: String,
    /// The chat, written as in a mock gateway scenario.
    chat: ChatSpec,
    /// The polls, in time order.
    polls: Vec<PollSpec>,
}

/// One poll and what it must show.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PollSpec {
    /// When, from time 0 (`30s`, `10m`, `-5m`).
    at: Offset,
    /// The `unreadCount` the reply says at this poll (else the chat's own).
    #[serde(default)]
    unread_count: Option<i64>,
    /// Exactly the rules that fire at this poll (`[]`: none); absent: not checked.
    #[serde(default)]
    fires: Option<Vec<Expect>>,
}

/// A rule that must fire: its id, or its id with details.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Expect {
    Rule(String),
    Detailed(ExpectDetail),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectDetail {
    rule: String,
    /// The body of the message it fired on.
    #[serde(default)]
    message: Option<String>,
    /// Parts of a webhook body it sends: every key given must be there with this value.
    #[serde(default)]
    webhook: Option<Value>,
    /// A piece of a log line it writes.
    #[serde(default)]
    log: Option<String>,
}

impl Expect {
    fn rule(&self) -> &str {
        match self {
            Expect::Rule(r) => r,
            Expect::Detailed(d) => &d.rule,
        }
    }
}

/// A rule that fired at a poll, with what it did.
#[derive(Debug, Clone, PartialEq)]
struct Fired {
    rule: String,
    /// The body of the message it fired on (`None`: a chat rule).
    message: Option<String>,
    webhooks: Vec<Value>,
    logs: Vec<String>,
}

impl Fired {
    fn describe(&self) -> String {
        match &self.message {
            Some(body) => format!("{} on {:?}", self.rule, preview(body)),
            None => format!("{} (chat)", self.rule),
        }
    }
}

fn preview(text: &str) -> String {
    let mut p: String = text.chars().take(50).collect();
    if text.chars().count() > 50 {
        p.push('…');
    }
    p
}

/// What went wrong at one poll.
#[derive(Debug, Clone, PartialEq)]
enum Problem {
    /// Expected to fire; did not.
    Missing { expected: String },
    /// Fired; not expected.
    Unexpected { fired: String },
    /// Fired, but not as expected.
    Mismatch { fired: String, why: String },
    /// A rule failed while deciding.
    RuleError { rule: String, error: String },
}

impl Problem {
    fn line(&self) -> String {
        match self {
            Problem::Missing { expected } => format!("- {expected}    expected, did not fire"),
            Problem::Unexpected { fired } => format!("+ {fired}    fired, not expected"),
            Problem::Mismatch { fired, why } => format!("~ {fired}: {why}"),
            Problem::RuleError { rule, error } => format!("! {rule} failed: {error}"),
        }
    }

    fn json(&self) -> Value {
        match self {
            Problem::Missing { expected } => json!({"kind": "missing", "rule": expected}),
            Problem::Unexpected { fired } => json!({"kind": "unexpected", "fired": fired}),
            Problem::Mismatch { fired, why } => {
                json!({"kind": "mismatch", "fired": fired, "detail": why})
            }
            Problem::RuleError { rule, error } => {
                json!({"kind": "rule_error", "rule": rule, "detail": error})
            }
        }
    }
}

/// One poll's outcome.
#[derive(Debug)]
struct PollResult {
    at: Offset,
    when: i64,
    fired: Vec<Fired>,
    problems: Vec<Problem>,
}

/// One test's outcome: its polls, or why it could not run.
#[derive(Debug)]
struct CaseResult {
    name: String,
    polls: Vec<PollResult>,
    error: Option<String>,
}

impl CaseResult {
    fn ok(&self) -> bool {
        self.error.is_none() && self.polls.iter().all(|p| p.problems.is_empty())
    }
}

/// The first way `actual` differs from `expected`, where every key `expected` gives must be in
/// `actual` with a matching value (objects: a subset; arrays and scalars: equal, elementwise).
fn subset_mismatch(expected: &Value, actual: &Value, at: &str) -> Option<String> {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => e.iter().find_map(|(k, ev)| match a.get(k) {
            Some(av) => subset_mismatch(ev, av, &format!("{at}/{k}")),
            None => Some(format!("{at}/{k}: expected {ev}, but there is no `{k}`")),
        }),
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => e
            .iter()
            .zip(a)
            .enumerate()
            .find_map(|(i, (ev, av))| subset_mismatch(ev, av, &format!("{at}/{i}"))),
        (e, a) if e == a => None,
        (e, a) => Some(format!(
            "{}: expected {e}, got {a}",
            if at.is_empty() { "/" } else { at }
        )),
    }
}

/// Why `fired` does not show what `detail` asks; `None` when it does.
fn detail_mismatch(detail: &ExpectDetail, fired: &Fired) -> Option<String> {
    if let Some(want) = &detail.message {
        match &fired.message {
            Some(got) if got == want => {}
            Some(got) => return Some(format!("fired on {got:?}, expected on {want:?}")),
            None => {
                return Some(format!(
                    "a chat rule fires on no message (expected {want:?})"
                ));
            }
        }
    }
    if let Some(want) = &detail.webhook {
        if fired.webhooks.is_empty() {
            return Some("sent no webhook".into());
        }
        let mut first = None;
        for body in &fired.webhooks {
            match subset_mismatch(want, body, "") {
                None => {
                    first = None;
                    break;
                }
                Some(why) => {
                    first.get_or_insert(why);
                }
            }
        }
        if let Some(why) = first {
            return Some(format!("webhook body at {why}"));
        }
    }
    if let Some(want) = &detail.log
        && !fired.logs.iter().any(|l| l.contains(want.as_str()))
    {
        return Some(match fired.logs.as_slice() {
            [] => format!("wrote no log line (expected one with {want:?})"),
            logs => format!("no log line has {want:?}; it wrote {:?}", logs.join(" | ")),
        });
    }
    None
}

/// Pairs the expected firings with the actual ones (each used once; expectations with details
/// choose first, so a plain rule id never takes the firing a detailed one needs) and lists the
/// differences, in the order the expectations are written, then what fired unexpected.
fn compare(expected: &[Expect], actual: &[Fired]) -> Vec<Problem> {
    let mut used = vec![false; actual.len()];
    let mut outcome: Vec<Option<Problem>> = vec![None; expected.len()];
    let detailed_first = (0..expected.len())
        .filter(|&k| matches!(expected[k], Expect::Detailed(_)))
        .chain((0..expected.len()).filter(|&k| matches!(expected[k], Expect::Rule(_))));
    let mut unmatched = Vec::new();
    for k in detailed_first {
        let e = &expected[k];
        let hit = (0..actual.len()).find(|&i| {
            !used[i]
                && actual[i].rule == e.rule()
                && match e {
                    Expect::Rule(_) => true,
                    Expect::Detailed(d) => detail_mismatch(d, &actual[i]).is_none(),
                }
        });
        match hit {
            Some(i) => used[i] = true,
            None => unmatched.push(k),
        }
    }
    // What is left: the closest firing of the same rule (a mismatch), else nothing (missing).
    for k in unmatched {
        let e = &expected[k];
        let candidate = (0..actual.len()).find(|&i| !used[i] && actual[i].rule == e.rule());
        outcome[k] = Some(match (candidate, e) {
            (Some(i), Expect::Detailed(d)) => {
                used[i] = true;
                Problem::Mismatch {
                    fired: actual[i].describe(),
                    why: detail_mismatch(d, &actual[i]).unwrap_or_default(),
                }
            }
            _ => Problem::Missing {
                expected: e.rule().to_string(),
            },
        });
    }
    let mut problems: Vec<Problem> = outcome.into_iter().flatten().collect();
    for (i, f) in actual.iter().enumerate() {
        if !used[i] {
            problems.push(Problem::Unexpected {
                fired: f.describe(),
            });
        }
    }
    problems
}

/// Every rule id of the set.
fn rule_ids(rules: &RuleSet) -> Vec<&str> {
    rules
        .rules
        .iter()
        .map(|r| r.id.as_str())
        .chain(rules.chat_rules.iter().map(|r| r.id.as_str()))
        .chain(rules.script_rules.iter().map(|r| r.id.as_str()))
        .collect()
}

/// Runs one test: every poll, in order, with what the rules remember carried between them.
fn run_case(
    rules: &RuleSet,
    start_s: i64,
    first_sight: FirstSight,
    case: &TestCase,
) -> Result<Vec<PollResult>, String> {
    let known = rule_ids(rules);
    for (k, poll) in case.polls.iter().enumerate() {
        for e in poll.fires.iter().flatten() {
            if !known.contains(&e.rule()) {
                return Err(format!(
                    "polls[{k}]: no rule `{}` in the rules (they are: {})",
                    e.rule(),
                    known.join(", ")
                ));
            }
        }
        if k > 0 && poll.at <= case.polls[k - 1].at {
            return Err(format!(
                "polls[{k}]: at {} is not after the poll before it ({})",
                poll.at,
                case.polls[k - 1].at
            ));
        }
    }
    let chat_id = ChatId::parse(&case.chat.id).map_err(|e| format!("chat.id: {e}"))?;
    let scenario = Scenario {
        chats: vec![case.chat.clone()],
        ..Scenario::default()
    };
    let replay =
        Replay::new(&scenario, start_s * 1000).map_err(|e| e.replace("chats[0]", "chat"))?;
    let mut snap = ChatSnapshot::default();
    snap.state.first_seen = start_s;
    let mut results = Vec::with_capacity(case.polls.len());
    // Digest rules' firings, until a poll after their window's end sends the digest.
    let mut collected: Vec<crate::model::DigestItem> = Vec::new();
    for (k, poll) in case.polls.iter().enumerate() {
        let at_ms = poll.at.as_millis();
        let reply = replay
            .reply(chat_id.as_str(), None, at_ms)
            .ok_or_else(|| format!("polls[{k}]: the chat `{chat_id}` is not served"))?;
        let mut page = parse_reply(reply.as_bytes(), &chat_id)
            .map_err(|e| format!("polls[{k}]: the reply does not parse: {e}"))?;
        if let Some(unread) = poll.unread_count {
            page.chat.unread_count = Some(unread);
        }
        // Every visible message is on the page: it never hides more.
        let d = diff(&snap.state, &page.messages, usize::MAX, first_sight);
        let now_ms = start_s * 1000 + at_ms;
        let new_msgs = new_messages(&page, &d);
        let decision = decide_poll(
            rules,
            &chat_id,
            &page,
            &new_msgs,
            &snap.memory,
            &[],
            now_ms,
            false,
        );
        let webhooks_of = |rule: &str, key: Option<&str>| -> Vec<Value> {
            decision
                .deliveries
                .iter()
                .filter(|w| w.rule_id == rule && key.is_none_or(|k| w.message_key == k))
                .map(|w| serde_json::from_str(&w.body).unwrap_or(Value::String(w.body.clone())))
                .collect()
        };
        let logs_of = |rule: &str, key: Option<&str>| -> Vec<String> {
            decision
                .logs
                .iter()
                .filter(|l| l.rule_id == rule && key.is_none_or(|k| l.message_key == k))
                .map(|l| l.text.clone())
                .collect()
        };
        let on_message = |rule: &str, msg: &Message| {
            let key = msg.key.compact();
            Fired {
                rule: rule.to_string(),
                message: Some(msg.body.clone()),
                webhooks: webhooks_of(rule, Some(&key)),
                logs: logs_of(rule, Some(&key)),
            }
        };
        let mut fired: Vec<Fired> = decision
            .firings
            .iter()
            .map(|f| on_message(&f.rule_id, new_msgs[f.message_index]))
            .collect();
        for f in &decision.script_firings {
            fired.push(match f.message_index {
                Some(i) => on_message(&f.rule_id, new_msgs[i]),
                None => Fired {
                    rule: f.rule_id.clone(),
                    message: None,
                    webhooks: webhooks_of(&f.rule_id, None),
                    logs: logs_of(&f.rule_id, None),
                },
            });
        }
        for f in &decision.chat_firings {
            fired.push(Fired {
                rule: f.rule_id.clone(),
                message: None,
                webhooks: webhooks_of(&f.rule_id, None),
                logs: logs_of(&f.rule_id, None),
            });
        }
        // A resolved event is the rule's too: its webhook says `"type": "rule.resolved"`.
        for rule in &decision.resolved {
            fired.push(Fired {
                rule: rule.clone(),
                message: None,
                webhooks: webhooks_of(rule, None),
                logs: Vec::new(),
            });
        }
        // A window that has ended by this poll sends its digest (as the daemon's sealer does
        // within a second of the end): one firing of the rule on no message.
        collected.extend(decision.digest_items.iter().cloned());
        let now_s = now_ms.div_euclid(1000);
        for (w, items) in crate::engine::digest::by_window(&collected) {
            if w.window_start + w.window_secs > now_s {
                continue;
            }
            collected.retain(|i| {
                (i.rule_id.as_str(), i.group.as_str(), i.window_start)
                    != (w.rule_id.as_str(), w.group.as_str(), w.window_start)
            });
            if let Ok(sent) = crate::engine::digest::seal(rules, &w, &items, items.len(), now_s) {
                fired.push(Fired {
                    rule: w.rule_id.clone(),
                    message: None,
                    webhooks: sent
                        .deliveries
                        .iter()
                        .map(|x| serde_json::from_str(&x.body).unwrap_or(Value::Null))
                        .collect(),
                    logs: sent.logs.iter().map(|l| l.text.clone()).collect(),
                });
            }
        }
        let mut problems = match &poll.fires {
            Some(expected) => compare(expected, &fired),
            None => Vec::new(),
        };
        problems.extend(decision.errors.iter().map(|e| Problem::RuleError {
            rule: e.rule_id.clone(),
            error: e.error.clone(),
        }));
        if let Some(commit) = commit_of(chat_id.as_str(), &page, &d, &decision, &snap.state, now_ms)
        {
            snap.apply(&commit);
        }
        results.push(PollResult {
            at: poll.at,
            when: now_ms.div_euclid(1000),
            fired,
            problems,
        });
    }
    Ok(results)
}

/// Reads and runs one test file; an unreadable file is one failed result named after it.
fn run_file(rules: &RuleSet, path: &Path) -> Vec<CaseResult> {
    let failed = |error: String| {
        vec![CaseResult {
            name: "(the file)".into(),
            polls: Vec::new(),
            error: Some(error),
        }]
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return failed(format!("cannot read: {e}")),
    };
    let options = serde_saphyr::options! {
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::Error,
    };
    let file: TestFile = match serde_saphyr::from_str_with_options(&text, options) {
        Ok(f) => f,
        Err(e) => {
            let d = crate::diag::Diagnostic::from_yaml(path, &e);
            return failed(format!("{}:{}: {}", d.line, d.col, d.message));
        }
    };
    let start = file.start.as_deref().unwrap_or(DEFAULT_START);
    let start_s = match start.parse::<jiff::Timestamp>() {
        Ok(t) => t.as_second(),
        Err(e) => return failed(format!("start: `{start}` is not an RFC 3339 time: {e}")),
    };
    if file.tests.is_empty() {
        return failed("the file holds no test (`tests:` is empty)".into());
    }
    file.tests
        .iter()
        .map(
            |case| match run_case(rules, start_s, file.first_sight, case) {
                Ok(polls) => CaseResult {
                    name: case.name.clone(),
                    polls,
                    error: None,
                },
                Err(error) => CaseResult {
                    name: case.name.clone(),
                    polls: Vec::new(),
                    error: Some(error),
                },
            },
        )
        .collect()
}

/// The test files under `path` (a file, or every `.yaml`/`.yml` below a folder), sorted.
fn test_files(path: &Path) -> Result<Vec<PathBuf>, String> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    if !path.is_dir() {
        return Err(format!("{}: no such test file or folder", path.display()));
    }
    let mut out = Vec::new();
    let mut dirs = vec![path.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries =
            std::fs::read_dir(&dir).map_err(|e| format!("{}: cannot read: {e}", dir.display()))?;
        for entry in entries.flatten() {
            let p = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            if p.is_dir() {
                dirs.push(p);
            } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
                out.push(p);
            }
        }
    }
    out.sort();
    if out.is_empty() {
        return Err(format!(
            "{}: no test file (.yaml) in this folder",
            path.display()
        ));
    }
    Ok(out)
}

/// `cartat-rules test` with test files: runs them all, prints the report, 0 if every test
/// passed, 1 otherwise.
pub(super) fn run(
    rules_path: &Path,
    tests: Option<&Path>,
    format: TestFormat,
    timezone: Option<&jiff::tz::TimeZone>,
) -> u8 {
    let tests_path = match tests {
        Some(p) => p.to_path_buf(),
        None if rules_path.is_dir() => rules_path.join("tests"),
        None => {
            eprintln!(
                "{}: a single rule file has no tests folder: give --tests PATH (rule tests) or --input FILE (a saved reply)",
                rules_path.display()
            );
            return 1;
        }
    };
    if tests.is_none() && !tests_path.exists() {
        eprintln!(
            "{}: no rule tests here. Write some (README, \"Rule tests\"), give --tests PATH, or try the rules on a saved reply with --input FILE",
            tests_path.display()
        );
        return 1;
    }
    let files = match test_files(&tests_path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    let Some(rules) = super::load_rules_to_test(rules_path, timezone) else {
        return 1;
    };
    let results: Vec<(PathBuf, Vec<CaseResult>)> = files
        .into_iter()
        .map(|f| {
            let r = run_file(&rules, &f);
            (f, r)
        })
        .collect();
    let total: usize = results.iter().map(|(_, r)| r.len()).sum();
    let failed: usize = results
        .iter()
        .map(|(_, r)| r.iter().filter(|c| !c.ok()).count())
        .sum();
    let out = match format {
        TestFormat::Text => report_text(&results, total, failed),
        TestFormat::Json => report_json(&results, total, failed),
    };
    print!("{out}");
    u8::from(failed > 0)
}

fn report_text(results: &[(PathBuf, Vec<CaseResult>)], total: usize, failed: usize) -> String {
    let mut out = String::new();
    for (file, cases) in results {
        let _ = writeln!(out, "{}", file.display());
        for case in cases {
            if case.ok() {
                let _ = writeln!(
                    out,
                    "  ok    {} ({} poll{})",
                    case.name,
                    case.polls.len(),
                    if case.polls.len() == 1 { "" } else { "s" }
                );
                continue;
            }
            let _ = writeln!(out, "  FAIL  {}", case.name);
            if let Some(e) = &case.error {
                let _ = writeln!(out, "        {e}");
            }
            for (k, poll) in case.polls.iter().enumerate() {
                if poll.problems.is_empty() {
                    continue;
                }
                let _ = writeln!(
                    out,
                    "        poll {} at {} ({}):",
                    k + 1,
                    poll.at,
                    crate::model::rfc3339(poll.when)
                );
                for p in &poll.problems {
                    let _ = writeln!(out, "          {}", p.line());
                }
                let fired: Vec<String> = poll.fired.iter().map(Fired::describe).collect();
                let _ = writeln!(
                    out,
                    "          fired: {}",
                    if fired.is_empty() {
                        "nothing".to_string()
                    } else {
                        fired.join(", ")
                    }
                );
            }
        }
    }
    let files = results.len();
    let _ = writeln!(
        out,
        "\n{files} file{}, {total} test{}: {}",
        if files == 1 { "" } else { "s" },
        if total == 1 { "" } else { "s" },
        if failed == 0 {
            "all passed".to_string()
        } else {
            format!("{} passed, {failed} failed", total - failed)
        }
    );
    out
}

fn report_json(results: &[(PathBuf, Vec<CaseResult>)], total: usize, failed: usize) -> String {
    let tests: Vec<Value> = results
        .iter()
        .flat_map(|(file, cases)| {
            cases.iter().map(move |case| {
                json!({
                    "file": file.display().to_string(),
                    "name": case.name,
                    "ok": case.ok(),
                    "error": case.error,
                    "polls": case.polls.iter().map(|p| json!({
                        "at": p.at.to_string(),
                        "time": crate::model::rfc3339(p.when),
                        "fired": p.fired.iter().map(|f| json!({
                            "rule": f.rule,
                            "message": f.message,
                            "webhooks": f.webhooks,
                            "logs": f.logs,
                        })).collect::<Vec<_>>(),
                        "problems": p.problems.iter().map(Problem::json).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                })
            })
        })
        .collect();
    let doc = json!({
        "ok": failed == 0,
        "files": results.len(),
        "tests": total,
        "passed": total - failed,
        "failed": failed,
        "results": tests,
    });
    format!("{doc}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{compile_rules, parse_file};

    fn rules(yaml: &str) -> RuleSet {
        let file = parse_file(Path::new("r.yaml"), yaml).unwrap();
        let (rules, d) = compile_rules(vec![file]);
        assert!(!d.has_errors(), "{d}");
        rules
    }

    fn cases(yaml: &str) -> TestFile {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn fired(rule: &str, message: Option<&str>, webhook: Value, log: &str) -> Fired {
        Fired {
            rule: rule.into(),
            message: message.map(str::to_string),
            webhooks: vec![webhook],
            logs: vec![log.into()],
        }
    }

    #[test]
    fn subsets_name_the_first_difference_by_path() {
        let actual =
            json!({"rule": "r", "message": {"body": "بوت", "from_me": false}, "tags": [1, 2]});
        let table: &[(Value, Option<&str>)] = &[
            (json!({}), None),
            (json!({"message": {"body": "بوت"}}), None),
            (json!({"tags": [1, 2]}), None),
            (
                json!({"message": {"body": "bot"}}),
                Some("/message/body: expected \"bot\", got \"بوت\""),
            ),
            (
                json!({"chat": "x"}),
                Some("/chat: expected \"x\", but there is no `chat`"),
            ),
            (json!({"tags": [1]}), Some("/tags: expected [1], got [1,2]")),
            (json!("text"), Some("/: expected \"text\", got")),
        ];
        for (expected, want) in table {
            let got = subset_mismatch(expected, &actual, "");
            match want {
                None => assert_eq!(got, None, "{expected}"),
                Some(w) => assert!(
                    got.as_deref().is_some_and(|g| g.starts_with(w)),
                    "{expected}: {got:?}"
                ),
            }
        }
    }

    #[test]
    fn compare_lists_missing_unexpected_and_mismatched_firings() {
        let actual = vec![
            fired(
                "bot",
                Some("بوت"),
                json!({"message": {"body": "بوت"}}),
                "bot in A",
            ),
            fired("order", Some("order 4521"), json!({"order": "4521"}), ""),
        ];
        let detailed = |yaml: &str| -> Expect { serde_saphyr::from_str(yaml).unwrap() };
        // Exactly right, in another order.
        let ok = [Expect::Rule("order".into()), Expect::Rule("bot".into())];
        assert_eq!(compare(&ok, &actual), []);
        // Details that hold.
        let ok = [
            detailed("{ rule: bot, message: بوت, webhook: { message: { body: بوت } }, log: in A }"),
            detailed("{ rule: order, webhook: { order: '4521' } }"),
        ];
        assert_eq!(compare(&ok, &actual), []);
        // One missing, one unexpected.
        let wrong = [Expect::Rule("bot".into()), Expect::Rule("sla".into())];
        assert_eq!(
            compare(&wrong, &actual),
            [
                Problem::Missing {
                    expected: "sla".into()
                },
                Problem::Unexpected {
                    fired: "order on \"order 4521\"".into()
                },
            ]
        );
        // Fired, with another body.
        let wrong = [
            detailed("{ rule: bot, webhook: { message: { body: bot } } }"),
            Expect::Rule("order".into()),
        ];
        assert_eq!(
            compare(&wrong, &actual),
            [Problem::Mismatch {
                fired: "bot on \"بوت\"".into(),
                why: "webhook body at /message/body: expected \"bot\", got \"بوت\"".into()
            }]
        );
        let wrong = [
            detailed("{ rule: bot, log: nope }"),
            Expect::Rule("order".into()),
        ];
        assert!(
            matches!(&compare(&wrong, &actual)[0], Problem::Mismatch { why, .. } if why.contains("no log line has \"nope\""))
        );
        // Nothing expected.
        assert_eq!(compare(&[], &actual).len(), 2);
        // A plain id written before a detailed one of the same rule does not take its firing.
        let twice = vec![
            fired("bot", Some("a"), json!({}), ""),
            fired("bot", Some("b"), json!({}), ""),
        ];
        let ok = [
            Expect::Rule("bot".into()),
            detailed("{ rule: bot, message: a }"),
        ];
        assert_eq!(compare(&ok, &twice), []);
    }

    const BOT: &str = "id: bot\nmatch: { from_me: false, body: { any: [بوت], words: true } }\ncooldown: 1m\nactions: [ { log: { message: '{{ message.body }}' } }, { webhook: { url: 'http://127.0.0.1:9/h' } } ]\n";

    #[test]
    fn polls_see_only_what_is_new_and_carry_cooldowns() {
        let rules = rules(BOT);
        let file = cases(
            r#"
tests:
  - name: t
    chat:
      id: "966500000001"
      messages:
        - { at: -1h, body: "بوت" }
        - { at: 5s, body: "ابي البوت" }
        - { at: 20s, body: "بوت" }
        - { at: 2m, body: "بُوت" }
    polls:
      - { at: 1s, fires: [] }
      - { at: 10s, fires: [ { rule: bot, message: "ابي البوت", webhook: { message: { body: "ابي البوت" } }, log: "ابي" } ] }
      - { at: 30s, fires: [] }
      - { at: 3m, fires: [bot] }
"#,
        );
        let start = 1_800_000_000;
        let polls = run_case(&rules, start, file.first_sight, &file.tests[0]).unwrap();
        let problems: Vec<_> = polls.iter().map(|p| p.problems.clone()).collect();
        assert!(problems.iter().all(Vec::is_empty), "{problems:?}");
        // History is not fired; the message at 20s is inside the cooldown; the one at 2m is not.
        assert!(polls[0].fired.is_empty() && polls[2].fired.is_empty());
        assert_eq!(polls[3].fired[0].message.as_deref(), Some("بُوت"));
        assert_eq!(polls[1].when, start + 10);
    }

    #[test]
    fn a_chat_rule_waits_for_its_for_across_polls() {
        let rules = rules(
            "id: pileup\non: chat\nmatch: { unread_count: { gte: 5 }, for: 10m }\nactions: [ { log: { message: '{{ matched.unread_count }} unread' } } ]\n",
        );
        let file = cases(
            r#"
tests:
  - name: t
    chat: { id: "966500000001", messages: [ { at: -1m, body: hi } ] }
    polls:
      - { at: 0s, unread_count: 5, fires: [] }
      - { at: 9m, unread_count: 6, fires: [] }
      - { at: 10m, unread_count: 6, fires: [ { rule: pileup, log: "6 unread" } ] }
      - { at: 11m, unread_count: 7, fires: [] }
"#,
        );
        let polls = run_case(&rules, 1_800_000_000, file.first_sight, &file.tests[0]).unwrap();
        for p in &polls {
            assert!(p.problems.is_empty(), "{:?}", p.problems);
        }
        // A wrong expectation is caught: the rule fires at 10m, not at 9m.
        let wrong = cases(
            r#"
tests:
  - name: t
    chat: { id: "966500000001", messages: [ { at: -1m, body: hi } ] }
    polls:
      - { at: 0s, unread_count: 5 }
      - { at: 9m, unread_count: 6, fires: [pileup] }
      - { at: 10m, unread_count: 6, fires: [] }
"#,
        );
        let polls = run_case(&rules, 1_800_000_000, wrong.first_sight, &wrong.tests[0]).unwrap();
        assert_eq!(
            polls[1].problems,
            [Problem::Missing {
                expected: "pileup".into()
            }]
        );
        assert_eq!(
            polls[2].problems,
            [Problem::Unexpected {
                fired: "pileup (chat)".into()
            }]
        );
    }

    #[test]
    fn a_chat_rule_with_business_hours_waits_for_the_morning() {
        let rules = rules(
            "id: sla\non: chat\nmatch: { unanswered_for: 15m, when: { days: [sun, mon, tue, wed, thu], between: \"08:00-17:00\", tz: Asia/Riyadh } }\nactions: [ { log: { message: '{{ matched.waiting_since }}' } } ]\n",
        );
        // Time 0 is Thursday 16:50 in Riyadh; the customer writes then.
        let start = "2026-12-03T13:50:00Z"
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_second();
        let file = cases(
            r#"
tests:
  - name: t
    chat: { id: "966500000001", messages: [ { at: 1s, body: "hello?" } ] }
    polls:
      - { at: 5m, fires: [] }
      - { at: 20m, fires: [] }
      - { at: 62h, fires: [] }
      - { at: 3795m, fires: [ { rule: sla, log: "2026-12-03T13:50:01Z" } ] }
      - { at: 3830m, fires: [] }
  - name: fired before closing, not again in the morning for the same wait
    chat: { id: "966500000001", messages: [ { at: -30m, body: "hello?" } ] }
    polls:
      - { at: 5m, fires: [sla] }
      - { at: 20m, fires: [] }
      - { at: 3795m, fires: [] }
"#,
        );
        // 20m: 17:10 Thursday, after hours; 62h: Sunday 06:50, before hours; 3795m: Sunday
        // 08:05 (3795m = 63h15m), open: the customer has waited since Thursday.
        for case in &file.tests {
            let polls = run_case(&rules, start, file.first_sight, case).unwrap();
            for p in &polls {
                assert!(p.problems.is_empty(), "{}: {:?}", case.name, p.problems);
            }
        }
    }

    #[test]
    fn a_test_that_names_an_unknown_rule_or_polls_back_in_time_is_an_error() {
        let rules = rules(BOT);
        let file = cases(
            "tests:\n  - name: t\n    chat: { id: \"966500000001\" }\n    polls: [ { at: 1s, fires: [bott] } ]\n",
        );
        let err = run_case(&rules, 0, file.first_sight, &file.tests[0]).unwrap_err();
        assert!(
            err.contains("no rule `bott`") && err.contains("bot"),
            "{err}"
        );
        let file = cases(
            "tests:\n  - name: t\n    chat: { id: \"966500000001\" }\n    polls: [ { at: 5s }, { at: 5s } ]\n",
        );
        let err = run_case(&rules, 0, file.first_sight, &file.tests[0]).unwrap_err();
        assert!(err.contains("polls[1]: at 5s is not after"), "{err}");
        let file = cases(
            "tests:\n  - name: t\n    chat: { id: \"+966500000001\" }\n    polls: [ { at: 5s } ]\n",
        );
        let err = run_case(&rules, 0, file.first_sight, &file.tests[0]).unwrap_err();
        assert!(
            err.contains("chat.id") && err.contains("did you mean 966500000001"),
            "{err}"
        );
    }
}
