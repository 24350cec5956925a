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
use script::Sandbox;
use serde_json::{Value, json};
use serde_saphyr::{Location, Spanned};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
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
    Script(Box<ScriptCond>),
}

#[derive(Debug)]
struct BodyCond {
    any: Vec<(KeywordId, String)>,
    all: Vec<(KeywordId, String)>,
    none: Vec<(KeywordId, String)>,
    regex: Option<regex::Regex>,
    /// The key each capture group is reported under: its name, else its number (`0` is the
    /// whole match).
    capture_keys: Vec<String>,
    normalized: bool,
}

/// A compiled `script` condition: the rhai AST, compiled once at load.
#[derive(Debug)]
struct ScriptCond {
    ast: rhai::AST,
    /// Set once the first failure has been logged (later ones go to debug level).
    reported: AtomicBool,
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
    sandbox: Sandbox,
    /// Keyword id → the index of the rule it gates (`u32::MAX`: it gates none). A rule is
    /// gated when its top-level `body` needs a keyword (`any` or `all` not empty): it can only
    /// fire on a message where one of its gate keywords was found.
    gate_of: Vec<u32>,
    /// Bitset of the rules that are not gated (evaluated on every message).
    ungated: Vec<u64>,
}

impl std::fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleSet")
            .field("rules", &self.rules.len())
            .finish()
    }
}

/// Per-message buffers, pooled per thread so preparing a message does not allocate them.
#[derive(Default)]
struct Scratch {
    hits: Hits,
    /// Bitset of the rules that may fire on this message (ungated ∪ gated with a hit).
    candidates: Vec<u64>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<Scratch>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A message prepared once for every rule: the body cut to 64 KiB, the keyword hits and the
/// rules they make candidates, and the normalized text, built once on first use (the keyword
/// automaton reads a normalized encoding made straight from the body, so a message that only
/// keyword rules see never needs the text itself).
pub struct Prepared<'a> {
    pub raw: &'a str,
    normalized: std::cell::OnceCell<std::borrow::Cow<'a, str>>,
    scratch: Scratch,
}

impl Prepared<'_> {
    /// The body as regexes, scripts and `test --explain` see it: `normalize(raw)`.
    pub fn normalized(&self) -> &str {
        self.normalized.get_or_init(|| normalize(self.raw))
    }
}

impl Drop for Prepared<'_> {
    fn drop(&mut self) {
        let scratch = std::mem::take(&mut self.scratch);
        SCRATCH.with(|pool| {
            if let Ok(mut pool) = pool.try_borrow_mut()
                && pool.len() < 8
            {
                pool.push(scratch);
            }
        });
    }
}

impl Prepared<'_> {
    fn hits(&self) -> &Hits {
        &self.scratch.hits
    }
}

/// Evaluation inputs for one message, shared by every condition of one rule.
struct Ctx<'m, 'b> {
    rule: &'m Rule,
    chat_id: &'m ChatId,
    chat: &'m Chat,
    msg: &'m Message,
    /// `'b`, the body's lifetime, is its own: `Prepared` is invariant in it.
    p: &'m Prepared<'b>,
    sandbox: &'m Sandbox,
    /// Build the reasons of failures (`test --explain`); off on the hot path.
    explain: bool,
}

/// Why a condition failed: built only when explaining.
struct Why(Option<String>);

impl Ctx<'_, '_> {
    fn why(&self, f: impl FnOnce() -> String) -> Why {
        Why(self.explain.then(f))
    }
}

/// What matched so far, borrowed: keywords and captures are copied only when a rule fires.
#[derive(Default)]
struct Acc<'r, 't> {
    keywords: Vec<&'r str>,
    captures: Vec<(&'r str, &'t str)>,
}

impl Acc<'_, '_> {
    fn mark(&self) -> (usize, usize) {
        (self.keywords.len(), self.captures.len())
    }
    fn reset(&mut self, (k, c): (usize, usize)) {
        self.keywords.truncate(k);
        self.captures.truncate(c);
    }
    fn into_matched(self) -> Matched {
        Matched {
            keywords: self.keywords.into_iter().map(str::to_string).collect(),
            captures: self
                .captures
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }
}

fn set_bit(set: &mut [u64], i: usize) {
    if let Some(w) = set.get_mut(i / 64) {
        *w |= 1 << (i % 64);
    }
}

impl RuleSet {
    /// An empty set (no rules).
    pub fn empty() -> RuleSet {
        compile_rules(Vec::new()).0
    }

    /// Normalizes the body, runs the keyword automaton once and finds the candidate rules.
    pub fn prepare<'a>(&self, body: &'a str) -> Prepared<'a> {
        let raw = cut(body, MAX_BODY_BYTES);
        let mut scratch = SCRATCH
            .with(|pool| pool.try_borrow_mut().ok().and_then(|mut p| p.pop()))
            .unwrap_or_default();
        scratch.hits.clear();
        let normalized = std::cell::OnceCell::new();
        if let Some(text) = self.matcher.find(raw, &mut scratch.hits) {
            let _ = normalized.set(text);
        }
        scratch.candidates.clear();
        scratch.candidates.extend_from_slice(&self.ungated);
        for &id in scratch.hits.found() {
            if let Some(&rule) = self.gate_of.get(id as usize)
                && rule != u32::MAX
            {
                set_bit(&mut scratch.candidates, rule as usize);
            }
        }
        Prepared {
            raw,
            normalized,
            scratch,
        }
    }

    /// Evaluates one rule on one message, saying which condition failed first (for
    /// `test --explain`). The daemon uses [`RuleSet::fired`], which gives the same verdicts.
    pub fn eval_message(
        &self,
        rule: &Rule,
        chat_id: &ChatId,
        chat: &Chat,
        msg: &Message,
        p: &Prepared,
    ) -> Verdict {
        if is_notification(&msg.kind) && !rule.sees.contains(&msg.kind) {
            return Verdict::Failed(format!(
                "type: `{}` is a notification and the rule does not name it",
                msg.kind
            ));
        }
        let ctx = Ctx {
            rule,
            chat_id,
            chat,
            msg,
            p,
            sandbox: &self.sandbox,
            explain: true,
        };
        let mut acc = Acc::default();
        match eval(&rule.cond, &ctx, &mut acc) {
            Ok(()) => Verdict::Fired(acc.into_matched()),
            Err(Why(why)) => Verdict::Failed(why.unwrap_or_default()),
        }
    }

    /// The rules that fire on one message, in rule order, with what they matched. Only the
    /// candidate rules are evaluated (ungated ones, and gated ones whose keyword was found),
    /// and no failure reason is built: this is the hot path.
    pub fn fired<'s: 'm, 'm>(
        &'s self,
        chat_id: &'m ChatId,
        chat: &'m Chat,
        msg: &'m Message,
        p: &'m Prepared<'_>,
    ) -> impl Iterator<Item = (&'s Rule, Matched)> + 'm {
        let notification = is_notification(&msg.kind);
        p.scratch
            .candidates
            .iter()
            .enumerate()
            .flat_map(|(at, &word)| {
                let mut rest = word;
                std::iter::from_fn(move || {
                    if rest == 0 {
                        return None;
                    }
                    let b = rest.trailing_zeros() as usize;
                    rest &= rest - 1;
                    Some(at * 64 + b)
                })
            })
            .filter_map(move |i| {
                let rule = self.rules.get(i)?;
                if notification && !rule.sees.contains(&msg.kind) {
                    return None;
                }
                let ctx = Ctx {
                    rule,
                    chat_id,
                    chat,
                    msg,
                    p,
                    sandbox: &self.sandbox,
                    explain: false,
                };
                let mut acc = Acc::default();
                eval(&rule.cond, &ctx, &mut acc).ok()?;
                Some((rule, acc.into_matched()))
            })
    }
}

fn is_notification(kind: &str) -> bool {
    NOTIFICATION_TYPES.contains(&kind)
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

fn eval<'r, 't>(c: &'r Cond, ctx: &Ctx<'t, '_>, m: &mut Acc<'r, 't>) -> Result<(), Why>
where
    'r: 't,
{
    match c {
        Cond::All(list) => list.iter().try_for_each(|c| eval(c, ctx, m)),
        Cond::Any(list) => {
            let mut whys = Vec::new();
            for c in list {
                let mark = m.mark();
                match eval(c, ctx, m) {
                    Ok(()) => return Ok(()),
                    Err(Why(w)) => {
                        m.reset(mark);
                        whys.extend(w);
                    }
                }
            }
            Err(ctx.why(|| format!("any_of: none held ({})", whys.join("; "))))
        }
        Cond::Not(inner) => {
            let mark = m.mark();
            let r = eval(inner, ctx, m);
            m.reset(mark);
            match r {
                Ok(()) => Err(ctx.why(|| "not: the inner conditions held".into())),
                Err(_) => Ok(()),
            }
        }
        Cond::FromMe(want) if ctx.msg.key.from_me != *want => {
            Err(ctx.why(|| format!("from_me: the message has from_me={}", ctx.msg.key.from_me)))
        }
        Cond::IsGroup(want) if ctx.chat.is_group != *want => {
            Err(ctx.why(|| format!("is_group: the chat has is_group={}", ctx.chat.is_group)))
        }
        Cond::Types(types) if !types.contains(&ctx.msg.kind) => {
            Err(ctx.why(|| format!("type: `{}` is not one of {:?}", ctx.msg.kind, types)))
        }
        Cond::Chats(ids) if !ids.contains(ctx.chat_id) => {
            Err(ctx.why(|| format!("chats: `{}` is not listed", ctx.chat_id)))
        }
        Cond::Body(b) => eval_body(b, ctx, m),
        Cond::Script(s) => eval_script(s, ctx),
        _ => Ok(()),
    }
}

fn eval_body<'r, 't>(b: &'r BodyCond, ctx: &Ctx<'t, '_>, m: &mut Acc<'r, 't>) -> Result<(), Why>
where
    'r: 't,
{
    let hits = ctx.p.hits();
    if !b.any.is_empty() {
        let before = m.keywords.len();
        m.keywords.extend(
            b.any
                .iter()
                .filter(|(id, _)| hits.contains(*id))
                .map(|(_, k)| k.as_str()),
        );
        if m.keywords.len() == before {
            return Err(ctx.why(|| "body.any: no keyword occurs".into()));
        }
    }
    if let Some((_, k)) = b.all.iter().find(|(id, _)| !hits.contains(*id)) {
        return Err(ctx.why(|| format!("body.all: `{k}` does not occur")));
    }
    m.keywords.extend(b.all.iter().map(|(_, k)| k.as_str()));
    if let Some((_, k)) = b.none.iter().find(|(id, _)| hits.contains(*id)) {
        return Err(ctx.why(|| format!("body.none: `{k}` occurs")));
    }
    if let Some(re) = &b.regex {
        let text: &'t str = if b.normalized {
            ctx.p.normalized()
        } else {
            ctx.p.raw
        };
        let Some(caps) = re.captures(text) else {
            return Err(ctx.why(|| "body.regex: no match".into()));
        };
        for (i, key) in b.capture_keys.iter().enumerate() {
            if let Some(g) = caps.get(i) {
                m.captures.push((key.as_str(), g.as_str()));
            }
        }
    }
    Ok(())
}

fn eval_script(s: &ScriptCond, ctx: &Ctx) -> Result<(), Why> {
    let vars = script_vars(ctx);
    match ctx.sandbox.eval_bool(&s.ast, vars) {
        Ok(true) => Ok(()),
        Ok(false) => Err(ctx.why(|| "script: returned false".into())),
        Err(e) => {
            let first = !s.reported.swap(true, Ordering::Relaxed);
            crate::events::script_failed(
                &ctx.rule.id,
                &ctx.rule.source,
                ctx.chat_id.as_str(),
                &e.to_string(),
                first,
            );
            Err(ctx.why(|| format!("script: rule `{}`: {e}", ctx.rule.id)))
        }
    }
}

/// The variables a `script` condition sees: `msg` and `chat`.
fn script_vars(ctx: &Ctx) -> [(&'static str, rhai::Dynamic); 2] {
    use rhai::{Dynamic, Map};
    let opt = |s: &Option<String>| s.clone().map_or(Dynamic::UNIT, Dynamic::from);
    let mut msg = Map::new();
    msg.insert("body".into(), ctx.p.raw.into());
    msg.insert("normalized".into(), ctx.p.normalized().into());
    msg.insert("type".into(), ctx.msg.kind.as_str().into());
    msg.insert("from_me".into(), ctx.msg.key.from_me.into());
    msg.insert("timestamp".into(), ctx.msg.timestamp.into());
    msg.insert("from".into(), opt(&ctx.msg.from));
    msg.insert("author".into(), opt(&ctx.msg.author));
    msg.insert("id".into(), ctx.msg.serialized_id.as_str().into());
    let mut chat = Map::new();
    chat.insert("id".into(), ctx.chat_id.as_str().into());
    chat.insert("name".into(), opt(&ctx.chat.name));
    chat.insert("is_group".into(), ctx.chat.is_group.into());
    // `()` when the reply did not say, as `on_chat` sees the JSON null.
    chat.insert(
        "unread_count".into(),
        ctx.chat.unread_count.map_or(Dynamic::UNIT, Dynamic::from),
    );
    [("msg", msg.into()), ("chat", chat.into())]
}

/// The variable names a `script` condition may use.
pub const SCRIPT_VARIABLES: &[&str] = &["msg", "chat"];

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
    // A key written twice in one mapping is an error, never silently "last one wins".
    let options = serde_saphyr::options! {
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::Error,
    };
    let result = if first.starts_with("- ") || first == "-" {
        serde_saphyr::from_str_with_options::<Vec<RawRule>>(text, options)
    } else if first.is_empty() {
        Ok(Vec::new())
    } else {
        serde_saphyr::from_str_with_options::<RawRule>(text, options).map(|r| vec![r])
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
/// Webhook urls are vetted for their form only (`test`, and rule folders checked alone).
pub fn load(paths: &[PathBuf]) -> Result<(RuleSet, Diagnostics), Diagnostics> {
    load_for(paths, &crate::net::ssrf::NetPolicy::AllowAll)
}

/// As [`load`], with the config's network policy: a webhook url whose literal address (or
/// `localhost`) the policy refuses is an error here rather than a dead letter later.
pub fn load_for(
    paths: &[PathBuf],
    policy: &crate::net::ssrf::NetPolicy,
) -> Result<(RuleSet, Diagnostics), Diagnostics> {
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
    let (mut set, more) = compile_rules_for(parsed, policy);
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
    sandbox: &'a Sandbox,
    /// Keywords of the rule being compiled, as searched: text and normalize flag → the
    /// keyword as written and where, for the "same after normalization" warning.
    keywords: HashMap<(String, bool), (String, Location)>,
    /// Where the rule's first webhook action is (for the `from_me` warning).
    first_webhook: Option<Location>,
    /// The network policy webhook urls are vetted against.
    policy: &'a crate::net::ssrf::NetPolicy,
}

/// Compiles parsed files into one set. Rules with errors are left out and reported.
pub fn compile_rules(files: Vec<ParsedFile>) -> (RuleSet, Diagnostics) {
    compile_rules_for(files, &crate::net::ssrf::NetPolicy::AllowAll)
}

/// As [`compile_rules`], vetting webhook urls against `policy`.
pub fn compile_rules_for(
    files: Vec<ParsedFile>,
    policy: &crate::net::ssrf::NetPolicy,
) -> (RuleSet, Diagnostics) {
    let mut d = Diagnostics::default();
    let mut builder = MatcherBuilder::new();
    let mut templates = Templates::new();
    let sandbox = Sandbox::default().with_variables(SCRIPT_VARIABLES);
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
                sandbox: &sandbox,
                keywords: HashMap::new(),
                first_webhook: None,
                policy,
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
            let from_me_set = m.from_me.is_some();
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
            if !from_me_set && let Some(loc) = c.first_webhook.take() {
                c.d.push(Diagnostic::warning(
                    c.path,
                    loc.line(),
                    loc.column(),
                    format!(
                        "rule `{id}` sends a webhook and has no `match.from_me`, so it also fires on messages we send; add `from_me: false` to react to the customer only"
                    ),
                ));
            }
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
    let mut gate_of = vec![u32::MAX; matcher.len()];
    let mut ungated = vec![0u64; rules.len().div_ceil(64)];
    for (index, rule) in rules.iter().enumerate() {
        let gate = gate_keywords(&rule.cond);
        if gate.is_empty() {
            set_bit(&mut ungated, index);
        }
        for (id, _) in gate {
            if let Some(slot) = gate_of.get_mut(*id as usize) {
                *slot = u32::try_from(index).unwrap_or(u32::MAX);
            }
        }
    }
    (
        RuleSet {
            rules,
            chat_rules,
            script_rules: Vec::new(),
            host: rhai_file::Host::default(),
            matcher,
            templates,
            sandbox,
            gate_of,
            ungated,
        },
        d,
    )
}

/// The keywords one of which must occur for the rule to fire: its top-level `body.any`,
/// else its `body.all` (empty: the rule is evaluated on every message).
fn gate_keywords(c: &Cond) -> &[(KeywordId, String)] {
    let Cond::All(list) = c else { return &[] };
    for c in list {
        if let Cond::Body(b) = c {
            if !b.any.is_empty() {
                return &b.any;
            }
            if !b.all.is_empty() {
                return &b.all;
            }
        }
    }
    &[]
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
            match self.sandbox.compile_expression(&s.value) {
                Ok(ast) => all.push(Cond::Script(Box::new(ScriptCond {
                    ast,
                    reported: AtomicBool::new(false),
                }))),
                Err(e) => self.d.push(Diagnostic::at(
                    self.path,
                    s.referenced,
                    format!("script: {e}"),
                )),
            }
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
        // Duplicates are looked for within one `body` (any, all and none together): the same
        // keyword in two branches of an `any_of` is legitimate.
        self.keywords.clear();
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
                let searched = self.builder.searched_text(id).to_string();
                if !searched.is_empty() {
                    match self.keywords.get(&(searched.clone(), mode.normalized)) {
                        Some((first, at)) => {
                            let loc = k.referenced;
                            let same = if *first == k.value {
                                "is listed twice".to_string()
                            } else if mode.normalized {
                                format!("normalizes to the same text as `{first}`")
                            } else {
                                format!("is the same as `{first}`")
                            };
                            self.d.push(Diagnostic::warning(
                                self.path,
                                loc.line(),
                                loc.column(),
                                format!(
                                    "body.{what}: `{}` {same} (line {}:{}); one of them is redundant",
                                    k.value,
                                    at.line(),
                                    at.column()
                                ),
                            ));
                        }
                        None => {
                            self.keywords.insert(
                                (searched, mode.normalized),
                                (k.value.clone(), k.referenced),
                            );
                        }
                    }
                }
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
        let capture_keys = regex
            .as_ref()
            .map(|re| {
                re.capture_names()
                    .enumerate()
                    .map(|(i, name)| name.map(str::to_string).unwrap_or_else(|| i.to_string()))
                    .collect()
            })
            .unwrap_or_default();
        Cond::Body(Box::new(BodyCond {
            any,
            all,
            none,
            regex,
            capture_keys,
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
                    self.first_webhook.get_or_insert(w.url.referenced);
                    if let Err(e) = crate::net::ssrf::vet_url_literal(&w.url.value, self.policy) {
                        self.d.push(Diagnostic::at(
                            self.path,
                            w.url.referenced,
                            format!(
                                "webhook.url: `{}`: {e}",
                                crate::net::ssrf::redacted(&w.url.value)
                            ),
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
