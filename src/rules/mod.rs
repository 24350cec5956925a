//! Rules: loaded from files ([`raw`]), compiled once into a [`RuleSet`] that holds the
//! keyword automaton, regexes and templates, then evaluated purely ([`RuleSet::eval_message`]).
//!
//! Owns: the rule language of SPEC §4 for message rules. Must not: do I/O after loading,
//! keep per-chat state (cooldowns and watermarks belong to the engine and the store).

pub mod chat;
pub mod raw;
pub mod rhai_file;
pub mod script;
pub mod template;

use crate::diag::{Diagnostic, Diagnostics};
use crate::gateway::model::{Chat, ChatId, Message};
use crate::text::matcher::{Hits, KeywordId, MatchMode, Matcher, MatcherBuilder};
use crate::text::normalize::normalize;
use raw::{Level, On, RawAction, RawMatch, RawRule};
use serde_json::{Value, json};
use serde_saphyr::{Location, Spanned};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;
use template::{Kind, TemplateId, Templates};

/// Rules see at most this much of a body (SPEC §4).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Message types that are notifications: only a rule that names them in `type` sees them.
pub const NOTIFICATION_TYPES: &[&str] = &[
    "e2e_notification",
    "gp2",
    "notification_template",
    "call_log",
    "protocol",
    "ciphertext",
    "revoked",
    "notification",
    "broadcast_notification",
];

/// A compiled condition.
#[derive(Debug)]
enum Cond {
    All(Vec<Cond>),
    Any(Vec<Cond>),
    Not(Box<Cond>),
    FromMe(bool),
    IsGroup(bool),
    Types(Vec<String>),
    Chats(Vec<ChatId>),
    Body(Box<BodyCond>),
}

#[derive(Debug)]
struct BodyCond {
    any: Vec<(KeywordId, String)>,
    all: Vec<(KeywordId, String)>,
    none: Vec<(KeywordId, String)>,
    regex: Option<regex::Regex>,
    normalized: bool,
}

/// A compiled action.
#[derive(Debug)]
pub enum Action {
    Log {
        level: Level,
        message: TemplateId,
    },
    Webhook {
        url: String,
        headers: Vec<(String, TemplateId)>,
        body: BodyTemplate,
    },
}

/// How a webhook body is made.
#[derive(Debug)]
pub enum BodyTemplate {
    /// The standard envelope of SPEC §5.
    Envelope,
    /// A JSON template string.
    Json(TemplateId),
    /// A structure whose string leaves are text templates.
    Structured(StructuredBody),
}

/// A YAML structure with templated string leaves.
#[derive(Debug)]
pub enum StructuredBody {
    Leaf(TemplateId),
    Value(Value),
    Array(Vec<StructuredBody>),
    Object(Vec<(String, StructuredBody)>),
}

/// One compiled rule.
#[derive(Debug)]
pub struct Rule {
    pub id: String,
    pub description: Option<String>,
    pub source: PathBuf,
    pub cooldown: Option<Duration>,
    pub max_age: Option<Duration>,
    /// Fire only when the rule matched `count` times within the window in one chat.
    pub threshold: Option<(u32, Duration)>,
    pub actions: Vec<Action>,
    cond: Cond,
    /// Notification types this rule names (and so may see).
    sees: Vec<String>,
    /// Every regex capture group the rule's templates may use; absent ones render as "".
    pub capture_names: Vec<String>,
}

/// What made a rule match: the keywords (as written) and regex captures.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Matched {
    pub keywords: Vec<String>,
    pub captures: BTreeMap<String, String>,
}

impl Matched {
    pub fn to_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("keywords".into(), json!(self.keywords));
        if !self.captures.is_empty() {
            m.insert("captures".into(), json!(self.captures));
        }
        Value::Object(m)
    }
}

/// The result of evaluating one rule on one message.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Fired(Matched),
    /// The first condition that failed, for `test --explain`.
    Failed(String),
}

/// Everything needed to evaluate messages: rules, one keyword automaton, templates.
pub struct RuleSet {
    pub rules: Vec<Rule>,
    /// `on: chat` rules, evaluated on every poll of a chat.
    pub chat_rules: Vec<chat::ChatRule>,
    /// `.rhai` rule files, and the sandbox they run in.
    pub script_rules: Vec<rhai_file::ScriptRule>,
    pub host: rhai_file::Host,
    matcher: Matcher,
    pub templates: Templates,
}

impl std::fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleSet")
            .field("rules", &self.rules.len())
            .finish()
    }
}

/// A message prepared once for every rule: the body cut to 64 KiB, normalized once, and the
/// keyword hits.
pub struct Prepared<'a> {
    pub raw: &'a str,
    pub normalized: std::borrow::Cow<'a, str>,
    hits: Hits,
}

impl RuleSet {
    /// An empty set (no rules).
    pub fn empty() -> RuleSet {
        compile_rules(Vec::new()).0
    }

    /// Normalizes the body and runs the keyword automaton once.
    pub fn prepare<'a>(&self, body: &'a str) -> Prepared<'a> {
        let raw = cut(body, MAX_BODY_BYTES);
        let normalized = normalize(raw);
        let mut hits = Hits::new(&self.matcher);
        self.matcher.find(raw, &normalized, &mut hits);
        Prepared {
            raw,
            normalized,
            hits,
        }
    }

    /// Evaluates one rule on one message.
    pub fn eval_message(
        &self,
        rule: &Rule,
        chat_id: &ChatId,
        chat: &Chat,
        msg: &Message,
        p: &Prepared,
    ) -> Verdict {
        if NOTIFICATION_TYPES.contains(&msg.kind.as_str()) && !rule.sees.contains(&msg.kind) {
            return Verdict::Failed(format!(
                "type: `{}` is a notification and the rule does not name it",
                msg.kind
            ));
        }
        let mut matched = Matched::default();
        match eval(&rule.cond, chat_id, chat, msg, p, &mut matched) {
            Ok(()) => Verdict::Fired(matched),
            Err(why) => Verdict::Failed(why),
        }
    }
}

fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn eval(
    c: &Cond,
    chat_id: &ChatId,
    chat: &Chat,
    msg: &Message,
    p: &Prepared,
    m: &mut Matched,
) -> Result<(), String> {
    match c {
        Cond::All(list) => list
            .iter()
            .try_for_each(|c| eval(c, chat_id, chat, msg, p, m)),
        Cond::Any(list) => {
            let mut whys = Vec::new();
            for c in list {
                let mut sub = Matched::default();
                match eval(c, chat_id, chat, msg, p, &mut sub) {
                    Ok(()) => {
                        m.keywords.extend(sub.keywords);
                        m.captures.extend(sub.captures);
                        return Ok(());
                    }
                    Err(w) => whys.push(w),
                }
            }
            Err(format!("any_of: none held ({})", whys.join("; ")))
        }
        Cond::Not(inner) => match eval(inner, chat_id, chat, msg, p, &mut Matched::default()) {
            Ok(()) => Err("not: the inner conditions held".into()),
            Err(_) => Ok(()),
        },
        Cond::FromMe(want) if msg.key.from_me != *want => Err(format!(
            "from_me: the message has from_me={}",
            msg.key.from_me
        )),
        Cond::IsGroup(want) if chat.is_group != *want => {
            Err(format!("is_group: the chat has is_group={}", chat.is_group))
        }
        Cond::Types(types) if !types.contains(&msg.kind) => {
            Err(format!("type: `{}` is not one of {:?}", msg.kind, types))
        }
        Cond::Chats(ids) if !ids.contains(chat_id) => {
            Err(format!("chats: `{chat_id}` is not listed"))
        }
        Cond::Body(b) => eval_body(b, p, m),
        _ => Ok(()),
    }
}

fn eval_body(b: &BodyCond, p: &Prepared, m: &mut Matched) -> Result<(), String> {
    if !b.any.is_empty() {
        let hit: Vec<&String> = b
            .any
            .iter()
            .filter(|(id, _)| p.hits.contains(*id))
            .map(|(_, k)| k)
            .collect();
        if hit.is_empty() {
            return Err("body.any: no keyword occurs".into());
        }
        m.keywords.extend(hit.into_iter().cloned());
    }
    for (id, k) in &b.all {
        if !p.hits.contains(*id) {
            return Err(format!("body.all: `{k}` does not occur"));
        }
    }
    m.keywords.extend(b.all.iter().map(|(_, k)| k.clone()));
    if let Some((_, k)) = b.none.iter().find(|(id, _)| p.hits.contains(*id)) {
        return Err(format!("body.none: `{k}` occurs"));
    }
    if let Some(re) = &b.regex {
        let text: &str = if b.normalized { &p.normalized } else { p.raw };
        let Some(caps) = re.captures(text) else {
            return Err("body.regex: no match".into());
        };
        for (i, name) in re.capture_names().enumerate() {
            if let Some(g) = caps.get(i) {
                let key = name.map(str::to_string).unwrap_or_else(|| i.to_string());
                m.captures.insert(key, g.as_str().to_string());
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Loading and compiling

/// One rule file as parsed: its path and its rules (or the diagnostics that stopped it).
pub struct ParsedFile {
    pub path: PathBuf,
    pub rules: Vec<RawRule>,
}

/// Lists the rule files under the configured paths (files as given, folders one level deep
/// and below, sorted so loading is deterministic).
pub fn discover(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Diagnostics> {
    let mut out = Vec::new();
    let mut d = Diagnostics::default();
    for p in paths {
        if p.is_file() {
            out.push(p.clone());
        } else if p.is_dir() {
            walk(p, &mut out, &mut d);
        } else {
            d.push(Diagnostic::error(p, 0, 0, "no such rule file or folder"));
        }
    }
    if d.has_errors() {
        return Err(d);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>, d: &mut Diagnostics) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            d.push(Diagnostic::error(
                dir,
                0,
                0,
                format!("cannot read the folder: {e}"),
            ));
            return;
        }
    };
    for entry in entries.flatten() {
        let p = entry.path();
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        if p.is_dir() {
            walk(&p, out, d);
        } else if matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "rhai")
        ) {
            out.push(p);
        }
    }
}

/// Parses one YAML rule file: one rule, or a list of rules.
pub fn parse_file(path: &Path, text: &str) -> Result<ParsedFile, Diagnostics> {
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#') && *l != "---")
        .unwrap_or("");
    let result = if first.starts_with("- ") || first == "-" {
        serde_saphyr::from_str::<Vec<RawRule>>(text)
    } else if first.is_empty() {
        Ok(Vec::new())
    } else {
        serde_saphyr::from_str::<RawRule>(text).map(|r| vec![r])
    };
    match result {
        Ok(rules) => Ok(ParsedFile {
            path: path.to_path_buf(),
            rules,
        }),
        Err(e) => Err(Diagnostics(vec![Diagnostic::from_yaml(path, &e)])),
    }
}

/// Loads every rule file under `paths` and compiles the set. Warnings come back with the set.
pub fn load(paths: &[PathBuf]) -> Result<(RuleSet, Diagnostics), Diagnostics> {
    let files = discover(paths)?;
    let mut parsed = Vec::new();
    let mut d = Diagnostics::default();
    let mut scripts = Vec::new();
    for f in files {
        match std::fs::read_to_string(&f) {
            Ok(text) if f.extension().and_then(|e| e.to_str()) == Some("rhai") => {
                scripts.push((f, text))
            }
            Ok(text) => match parse_file(&f, &text) {
                Ok(p) => parsed.push(p),
                Err(e) => d.extend(e),
            },
            Err(e) => d.push(Diagnostic::error(&f, 0, 0, format!("cannot read: {e}"))),
        }
    }
    let (mut set, more) = compile_rules(parsed);
    d.extend(more);
    for (path, text) in scripts {
        match set.host.compile(&path, &text) {
            Ok(rule) => {
                let taken = set
                    .rules
                    .iter()
                    .map(|r| (&r.id, &r.source))
                    .chain(set.chat_rules.iter().map(|r| (&r.id, &r.source)))
                    .chain(set.script_rules.iter().map(|r| (&r.id, &r.source)))
                    .find(|(id, _)| **id == rule.id);
                if let Some((_, other)) = taken {
                    d.push(Diagnostic::error(
                        &path,
                        0,
                        0,
                        format!(
                            "rule id `{}` (the file name) is already used in {}",
                            rule.id,
                            other.display()
                        ),
                    ));
                } else {
                    set.script_rules.push(rule);
                }
            }
            Err(e) => d.push(e),
        }
    }
    if d.has_errors() {
        Err(d.sorted())
    } else {
        Ok((set, d.sorted()))
    }
}

struct Compiler<'a> {
    path: &'a Path,
    builder: &'a mut MatcherBuilder,
    templates: &'a mut Templates,
    d: &'a mut Diagnostics,
    sees: Vec<String>,
    /// Regex capture group names of the rule being compiled (named, else numbered).
    captures: Vec<String>,
    /// Compiling a chat rule: the `matched` its templates will see (only the keys its
    /// conditions produce).
    chat_matched: Option<Value>,
}

/// Compiles parsed files into one set. Rules with errors are left out and reported.
pub fn compile_rules(files: Vec<ParsedFile>) -> (RuleSet, Diagnostics) {
    let mut d = Diagnostics::default();
    let mut builder = MatcherBuilder::new();
    let mut templates = Templates::new();
    let mut rules = Vec::new();
    let mut chat_rules = Vec::new();
    let mut ids: HashMap<String, (PathBuf, Location)> = HashMap::new();
    for file in files {
        for raw in file.rules {
            let before = d.errors().count();
            let id = raw.id.value.trim().to_string();
            if id.is_empty()
                || !id
                    .chars()
                    .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                d.push(Diagnostic::at(
                    &file.path,
                    raw.id.referenced,
                    format!("rule id `{id}` must be non-empty letters, digits, `-`, `_` or `.`"),
                ));
            }
            if let Some((p, loc)) = ids.get(&id) {
                d.push(Diagnostic::at(
                    &file.path,
                    raw.id.referenced,
                    format!(
                        "rule id `{id}` is already used at {}:{}:{}",
                        p.display(),
                        loc.line(),
                        loc.column()
                    ),
                ));
            } else {
                ids.insert(id.clone(), (file.path.clone(), raw.id.referenced));
            }
            let is_chat_rule = matches!(
                raw.on,
                Some(Spanned {
                    value: On::Chat,
                    ..
                })
            );
            let mut c = Compiler {
                path: &file.path,
                builder: &mut builder,
                templates: &mut templates,
                d: &mut d,
                sees: Vec::new(),
                captures: Vec::new(),
                chat_matched: None,
            };
            if is_chat_rule {
                let compiled = c.chat_match(raw.match_.unwrap_or_default());
                if let Some((unread, unanswered, _, _)) = &compiled {
                    let mut m = serde_json::Map::new();
                    m.insert("since".into(), json!("2026-01-01T00:00:00Z"));
                    if unread.is_some() {
                        m.insert("unread_count".into(), json!(5));
                    }
                    if unanswered.is_some() {
                        m.insert("unanswered_for".into(), json!("15m"));
                        m.insert("waiting_since".into(), json!("2026-01-01T00:00:00Z"));
                    }
                    c.chat_matched = Some(Value::Object(m));
                }
                let actions = c.actions(&id, raw.actions);
                if raw.max_age.is_some() {
                    d.push(Diagnostic::warning(&file.path, raw.id.referenced.line(), raw.id.referenced.column(), format!("rule `{id}`: max_age applies to message rules; it has no effect on a chat rule")));
                }
                if raw.enabled == Some(false) || d.errors().count() > before {
                    continue;
                }
                if let Some((unread_count, unanswered_for, hold_for, filter)) = compiled {
                    chat_rules.push(chat::ChatRule {
                        id,
                        description: raw.description,
                        source: file.path.clone(),
                        cooldown: raw.cooldown.map(|c| c.0),
                        actions,
                        unread_count,
                        unanswered_for,
                        hold_for,
                        filter,
                    });
                }
                continue;
            }
            let mut m = raw.match_.unwrap_or_default();
            let threshold = m.threshold.take().and_then(|t| {
                if t.value.count == 0 || t.value.within.0.is_zero() {
                    c.d.push(Diagnostic::at(
                        c.path,
                        t.referenced,
                        "threshold: count and within must be positive",
                    ));
                    return None;
                }
                Some((t.value.count, t.value.within.0))
            });
            let cond = c.cond(m);
            let sees = std::mem::take(&mut c.sees);
            let actions = c.actions(&id, raw.actions);
            let capture_names = std::mem::take(&mut c.captures);
            if raw.enabled == Some(false) || d.errors().count() > before {
                continue;
            }
            rules.push(Rule {
                id,
                description: raw.description,
                source: file.path.clone(),
                cooldown: raw.cooldown.map(|c| c.0),
                max_age: raw.max_age.map(|m| m.0),
                threshold,
                actions,
                cond,
                sees,
                capture_names,
            });
        }
    }
    let matcher = match builder.build() {
        Ok(m) => m,
        Err(e) => {
            d.push(Diagnostic::error(
                Path::new("(rules)"),
                0,
                0,
                format!("keyword automaton: {e}"),
            ));
            MatcherBuilder::new()
                .build()
                .expect("an empty matcher always builds")
        }
    };
    (
        RuleSet {
            rules,
            chat_rules,
            script_rules: Vec::new(),
            host: rhai_file::Host::default(),
            matcher,
            templates,
        },
        d,
    )
}

impl Compiler<'_> {
    fn cond(&mut self, m: RawMatch) -> Cond {
        let mut all = Vec::new();
        if let Some(b) = m.from_me {
            all.push(Cond::FromMe(b));
        }
        if let Some(b) = m.is_group {
            all.push(Cond::IsGroup(b));
        }
        if let Some(t) = m.types {
            let list = t.value.into_vec();
            if list.is_empty() {
                self.d.push(Diagnostic::at(
                    self.path,
                    t.referenced,
                    "type: the list is empty, so nothing would match",
                ));
            }
            self.sees.extend(list.iter().cloned());
            all.push(Cond::Types(list));
        }
        if let Some(chats) = m.chats {
            let mut ids = Vec::new();
            for c in chats {
                match ChatId::parse(&c.value) {
                    Ok(id) => ids.push(id),
                    Err(e) => self.d.push(Diagnostic::at(self.path, c.referenced, e.0)),
                }
            }
            all.push(Cond::Chats(ids));
        }
        if let Some(b) = m.body {
            all.push(self.body(b));
        }
        if let Some(s) = m.script {
            self.d.push(Diagnostic::at(
                self.path,
                s.referenced,
                "`script` conditions are not supported by this build yet",
            ));
        }
        if let Some(t) = m.threshold {
            self.d.push(Diagnostic::at(
                self.path,
                t.referenced,
                "`threshold` goes at the top level of `match`, not inside any_of, all_of or not",
            ));
        }
        for (name, loc) in [
            (
                "unread_count",
                m.unread_count.as_ref().map(|s| s.referenced),
            ),
            (
                "unanswered_for",
                m.unanswered_for.as_ref().map(|s| s.referenced),
            ),
            ("for", m.for_.as_ref().map(|s| s.referenced)),
        ] {
            if let Some(loc) = loc {
                self.d.push(Diagnostic::at(
                    self.path,
                    loc,
                    format!("`{name}` is a chat-rule condition: add `on: chat` to the rule"),
                ));
            }
        }
        if let Some(list) = m.any_of {
            let subs = list.into_iter().map(|s| self.cond(s)).collect();
            all.push(Cond::Any(subs));
        }
        if let Some(list) = m.all_of {
            let subs = list.into_iter().map(|s| self.cond(s)).collect();
            all.push(Cond::All(subs));
        }
        if let Some(n) = m.not {
            all.push(Cond::Not(Box::new(self.cond(*n))));
        }
        Cond::All(all)
    }

    fn body(&mut self, b: raw::RawBody) -> Cond {
        let normalized = b.normalize.unwrap_or(true);
        let mode = MatchMode {
            words: b.words.unwrap_or(false),
            normalized,
        };
        let mut kw = |list: Vec<Spanned<String>>, what: &str| -> Vec<(KeywordId, String)> {
            let mut out = Vec::new();
            for k in list {
                if k.value.is_empty() {
                    self.d.push(Diagnostic::at(
                        self.path,
                        k.referenced,
                        format!("body.{what}: an empty keyword matches everything"),
                    ));
                    continue;
                }
                let id = self.builder.add(&k.value, mode);
                if self.builder.searched_text(id).is_empty() {
                    let loc = k.referenced;
                    self.d.push(Diagnostic::warning(
                        self.path,
                        loc.line(),
                        loc.column(),
                        format!(
                            "body.{what}: `{}` is empty after normalization and can never match",
                            k.value
                        ),
                    ));
                }
                out.push((id, k.value));
            }
            out
        };
        let any = kw(b.any, "any");
        let all = kw(b.all, "all");
        let none = kw(b.none, "none");
        let regex = b.regex.and_then(|r| {
            match regex::RegexBuilder::new(&r.value)
                .size_limit(1 << 20)
                .dfa_size_limit(1 << 20)
                .build()
            {
                Ok(re) => {
                    for (i, name) in re.capture_names().enumerate().skip(1) {
                        self.captures
                            .push(name.map(str::to_string).unwrap_or_else(|| i.to_string()));
                    }
                    Some(re)
                }
                Err(e) => {
                    let msg = e
                        .to_string()
                        .lines()
                        .last()
                        .unwrap_or("invalid regex")
                        .trim()
                        .to_string();
                    self.d.push(Diagnostic::at(
                        self.path,
                        r.referenced,
                        format!("body.regex: {msg}"),
                    ));
                    None
                }
            }
        });
        Cond::Body(Box::new(BodyCond {
            any,
            all,
            none,
            regex,
            normalized,
        }))
    }

    fn template(&mut self, src: &Spanned<String>, kind: Kind, what: &str) -> Option<TemplateId> {
        let id = match self.templates.add(&src.value, kind) {
            Ok(id) => id,
            Err(e) => {
                self.d.push(Diagnostic::at(
                    self.path,
                    src.referenced,
                    format!("{what}: {e}"),
                ));
                return None;
            }
        };
        let mut ctx = template::sample_context();
        for name in &self.captures {
            ctx["matched"]["captures"][name] = Value::String("sample".into());
        }
        if let Some(matched) = &self.chat_matched {
            ctx["matched"] = matched.clone();
        }
        match self.templates.render(&id, &ctx) {
            Ok(out) => {
                if kind == Kind::Json
                    && let Err(e) = serde_json::from_str::<Value>(&out)
                {
                    self.d.push(Diagnostic::at(
                        self.path,
                        src.referenced,
                        format!("{what}: does not render to valid JSON ({e})"),
                    ));
                    return None;
                }
                Some(id)
            }
            Err(e) => {
                self.d.push(Diagnostic::at(
                    self.path,
                    src.referenced,
                    format!("{what}: {e}"),
                ));
                None
            }
        }
    }

    fn actions(&mut self, rule_id: &str, actions: Spanned<Vec<RawAction>>) -> Vec<Action> {
        if actions.value.is_empty() {
            self.d.push(Diagnostic::at(
                self.path,
                actions.referenced,
                format!("rule `{rule_id}` has no actions"),
            ));
        }
        let mut out = Vec::new();
        for a in actions.value {
            match a {
                RawAction::Log(l) => {
                    if let Some(t) = self.template(&l.message, Kind::Text, "log.message") {
                        out.push(Action::Log {
                            level: l.level.unwrap_or_default(),
                            message: t,
                        });
                    }
                }
                RawAction::Webhook(w) => {
                    if let Err(e) = crate::outbox::ssrf::vet_url(
                        &w.url.value,
                        &crate::outbox::ssrf::NetPolicy::AllowAll,
                    ) {
                        self.d.push(Diagnostic::at(
                            self.path,
                            w.url.referenced,
                            format!("webhook.url: `{}`: {e}", w.url.value),
                        ));
                        continue;
                    }
                    let mut headers = Vec::new();
                    for (name, value) in w.headers.unwrap_or_default() {
                        let valid_name = !name.is_empty()
                            && name.bytes().all(|b| {
                                b.is_ascii_alphanumeric() || b"-_!#$%&'*+.^`|~".contains(&b)
                            });
                        if !valid_name {
                            self.d.push(Diagnostic::at(
                                self.path,
                                value.referenced,
                                format!("webhook.headers: `{name}` is not a valid header name"),
                            ));
                            continue;
                        }
                        if value.value.contains(['\r', '\n']) {
                            self.d.push(Diagnostic::at(
                                self.path,
                                value.referenced,
                                format!(
                                    "webhook.headers.{name}: a header value cannot contain CR or LF"
                                ),
                            ));
                            continue;
                        }
                        if let Some(t) =
                            self.template(&value, Kind::Text, &format!("webhook.headers.{name}"))
                        {
                            headers.push((name, t));
                        }
                    }
                    let body = match w.body {
                        None | Some(Value::Null) => BodyTemplate::Envelope,
                        Some(Value::String(s)) => {
                            let spanned = Spanned::new(s, w.url.referenced, w.url.defined);
                            match self.template(&spanned, Kind::Json, "webhook.body") {
                                Some(t) => BodyTemplate::Json(t),
                                None => continue,
                            }
                        }
                        Some(v) => match self.structured(&v, w.url.referenced) {
                            Some(s) => BodyTemplate::Structured(s),
                            None => continue,
                        },
                    };
                    out.push(Action::Webhook {
                        url: w.url.value,
                        headers,
                        body,
                    });
                }
            }
        }
        out
    }

    fn structured(&mut self, v: &Value, loc: Location) -> Option<StructuredBody> {
        Some(match v {
            Value::String(s) => {
                let spanned = Spanned::new(s.clone(), loc, loc);
                StructuredBody::Leaf(self.template(&spanned, Kind::Text, "webhook.body")?)
            }
            Value::Array(items) => StructuredBody::Array(
                items
                    .iter()
                    .map(|i| self.structured(i, loc))
                    .collect::<Option<_>>()?,
            ),
            Value::Object(map) => StructuredBody::Object(
                map.iter()
                    .map(|(k, v)| Some((k.clone(), self.structured(v, loc)?)))
                    .collect::<Option<_>>()?,
            ),
            other => StructuredBody::Value(other.clone()),
        })
    }
}

impl RuleSet {
    /// Renders a structured body against a context.
    pub fn render_structured(&self, s: &StructuredBody, ctx: &Value) -> Result<Value, String> {
        Ok(match s {
            StructuredBody::Leaf(t) => Value::String(self.templates.render(t, ctx)?),
            StructuredBody::Value(v) => v.clone(),
            StructuredBody::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|i| self.render_structured(i, ctx))
                    .collect::<Result<_, _>>()?,
            ),
            StructuredBody::Object(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), self.render_structured(v, ctx)?)))
                    .collect::<Result<_, String>>()?,
            ),
        })
    }
}

#[cfg(test)]
mod tests;
