//! Compiling parsed rules into one [`RuleSet`]: every keyword into one automaton, regexes
//! with size limits, templates, scripts in the sandbox; a rule with errors is left out and
//! reported with its `path:line:col`.

use super::evaluate::set_bit;
use super::*;

pub(super) struct Compiler<'a> {
    pub(super) path: &'a Path,
    pub(super) builder: &'a mut MatcherBuilder,
    pub(super) templates: &'a mut Templates,
    pub(super) d: &'a mut Diagnostics,
    pub(super) sees: Vec<String>,
    /// Regex capture group names of the rule being compiled (named, else numbered).
    pub(super) captures: Vec<String>,
    /// The rule being compiled compares a number (`matched.number` exists for its templates).
    pub(super) number: bool,
    /// Compiling a chat rule: the `matched` its templates will see (only the keys its
    /// conditions produce).
    pub(super) chat_matched: Option<Value>,
    /// Compiling a digest rule: its templates see `digest` (the list) instead of one firing.
    pub(super) digest: Option<Digest>,
    pub(super) sandbox: &'a Sandbox,
    /// Keywords of the rule being compiled, as searched: text and normalize flag → the
    /// keyword as written and where, for the "same after normalization" warning.
    pub(super) keywords: HashMap<(String, bool), (String, Location)>,
    /// Where the rule's first webhook action is (for the `from_me` warning).
    pub(super) first_webhook: Option<Location>,
    /// The network policy webhook urls are vetted against.
    pub(super) policy: &'a crate::net::ssrf::NetPolicy,
    /// The time zone of `when:` conditions that name none (`rules.timezone`); None: UTC.
    pub(super) timezone: Option<&'a jiff::tz::TimeZone>,
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
    compile_rules_with(files, policy, None)
}

/// As [`compile_rules_for`], with the time zone of `when:` conditions that name none.
pub fn compile_rules_with(
    files: Vec<ParsedFile>,
    policy: &crate::net::ssrf::NetPolicy,
    timezone: Option<&jiff::tz::TimeZone>,
) -> (RuleSet, Diagnostics) {
    let mut d = Diagnostics::default();
    let mut builder = MatcherBuilder::new();
    let mut templates = Templates::new();
    let sandbox = Sandbox::default().with_variables(SCRIPT_VARIABLES);
    let mut rules = Vec::new();
    let mut chat_rules = Vec::new();
    let mut disabled = Vec::new();
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
                number: false,
                chat_matched: None,
                digest: None,
                sandbox: &sandbox,
                keywords: HashMap::new(),
                first_webhook: None,
                policy,
                timezone,
            };
            c.digest = raw.digest.and_then(|dg| c.digest_of(dg));
            let digest = c.digest;
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
                let notify_resolved = raw.notify_resolved == Some(true);
                if notify_resolved && digest.is_some() {
                    d.push(Diagnostic::at(&file.path, raw.id.referenced, format!("rule `{id}`: notify_resolved and digest do not go together (a digest has no one firing to resolve)")));
                }
                if d.errors().count() > before {
                    continue;
                }
                if raw.enabled == Some(false) {
                    disabled.push(id);
                    continue;
                }
                if let Some((unread_count, unanswered_for, hold_for, filter)) = compiled {
                    chat_rules.push(chat::ChatRule {
                        id,
                        description: raw.description,
                        source: file.path.clone(),
                        cooldown: raw.cooldown.map(|c| c.0),
                        digest,
                        notify_resolved,
                        actions,
                        unread_count,
                        unanswered_for,
                        hold_for,
                        filter,
                    });
                }
                continue;
            }
            if raw.notify_resolved.is_some() {
                c.d.push(Diagnostic::at(&file.path, raw.id.referenced, format!("rule `{id}`: notify_resolved applies to chat rules (`on: chat`), whose condition can stop holding; a message rule fires once per message")));
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
            if d.errors().count() > before {
                continue;
            }
            if raw.enabled == Some(false) {
                disabled.push(id);
                continue;
            }
            rules.push(Rule {
                id,
                description: raw.description,
                source: file.path.clone(),
                cooldown: raw.cooldown.map(|c| c.0),
                max_age: raw.max_age.map(|m| m.0),
                threshold,
                digest,
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
            fingerprint: String::new(),
            docs: Vec::new(),
            disabled,
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
    pub(super) fn cond(&mut self, m: RawMatch) -> Cond {
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
        if let Some(w) = m.when
            && let Some(when) = self.when(w)
        {
            all.push(Cond::When(Box::new(when)));
        }
        if let Some(b) = m.body {
            let says_nothing = b.value.any.is_empty()
                && b.value.all.is_empty()
                && b.value.none.is_empty()
                && b.value.regex.is_none()
                && b.value.number.is_none();
            if says_nothing {
                // `any: []` read as "no keyword required": the rule would fire on every message.
                self.d.push(Diagnostic::at(
                    self.path,
                    b.referenced,
                    "body: no keyword, no regex and no number, so it would match every message; list keywords in `any`, `all` or `none`, give a `regex` or a `number`, or remove `body`",
                ));
            }
            all.push(self.body(b.value));
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

    /// Compiles `when:`; every problem is reported at the key.
    fn when(&mut self, w: Spanned<raw::RawWhen>) -> Option<crate::rules::WhenCond> {
        let at = w.referenced;
        let w = w.value;
        let fail = |d: &mut Diagnostics, msg: String| d.push(Diagnostic::at(self.path, at, msg));
        let mut ok = true;
        let days = match &w.days {
            None => 0x7f,
            Some(list) => {
                let mut mask = 0u8;
                for day in list {
                    match crate::rules::DAY_NAMES
                        .iter()
                        .position(|d| d.eq_ignore_ascii_case(day.trim()))
                    {
                        Some(i) => mask |= 1 << i,
                        None => {
                            fail(
                                self.d,
                                format!(
                                    "when.days: `{day}` is not a day; write sun, mon, tue, wed, thu, fri or sat"
                                ),
                            );
                            ok = false;
                        }
                    }
                }
                if list.is_empty() {
                    fail(
                        self.d,
                        "when.days: the list is empty, so it would never hold".into(),
                    );
                    ok = false;
                }
                mask
            }
        };
        let parse_hhmm = |t: &str| -> Option<u16> {
            let (h, m) = t.trim().split_once(':')?;
            let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60).then_some(h * 60 + m)
        };
        let between = match &w.between {
            None => None,
            Some(text) => match text
                .split_once('-')
                .and_then(|(a, b)| Some((parse_hhmm(a)?, parse_hhmm(b)?)))
            {
                Some((a, b)) if a != b => Some((a, b)),
                Some(_) => {
                    fail(
                        self.d,
                        format!(
                            "when.between: `{text}` starts and ends at the same time; leave `between` out for the whole day"
                        ),
                    );
                    ok = false;
                    None
                }
                None => {
                    fail(
                        self.d,
                        format!(
                            "when.between: `{text}` is not a window like 08:00-17:00 (24-hour local times; 22:00-06:00 spans midnight)"
                        ),
                    );
                    ok = false;
                    None
                }
            },
        };
        let (tz, tz_name) = match &w.tz {
            Some(name) => match jiff::tz::TimeZone::get(name) {
                Ok(tz) => (tz, name.clone()),
                Err(_) => {
                    fail(
                        self.d,
                        format!(
                            "when.tz: `{name}` is not a time zone; write an IANA name such as Asia/Riyadh or Asia/Dubai"
                        ),
                    );
                    return None;
                }
            },
            None => match self.timezone {
                Some(tz) => (
                    tz.clone(),
                    tz.iana_name().unwrap_or("rules.timezone").to_string(),
                ),
                None => (jiff::tz::TimeZone::UTC, "UTC".to_string()),
            },
        };
        let mut holidays = Vec::new();
        for day in w.holidays.iter().flatten() {
            match day.trim().parse::<jiff::civil::Date>() {
                Ok(date) => holidays.push(date),
                Err(_) => {
                    fail(
                        self.d,
                        format!("when.holidays: `{day}` is not a date like 2026-12-02"),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(crate::rules::WhenCond {
            days,
            between,
            tz,
            tz_name,
            holidays,
        })
    }

    pub(super) fn body(&mut self, b: raw::RawBody) -> Cond {
        // Duplicates are looked for within one `body` (any, all and none together): the same
        // keyword in two branches of an `any_of` is legitimate.
        self.keywords.clear();
        let normalized = b.normalize.unwrap_or(true);
        let words = b.words.unwrap_or(false);
        let suffixes = b.suffixes.as_ref().is_some_and(|s| s.value);
        if let Some(s) = b.suffixes.as_ref().filter(|s| s.value && !words) {
            self.d.push(Diagnostic::warning(
                self.path,
                s.referenced.line(),
                s.referenced.column(),
                "body.suffixes: has effect only with `words: true` (without it, keywords match inside any word, suffixed or not)",
            ));
        }
        let mode = MatchMode {
            words,
            normalized,
            suffixes: suffixes && words,
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
        let capture_keys: Vec<String> = regex
            .as_ref()
            .map(|re| {
                re.capture_names()
                    .enumerate()
                    .map(|(i, name)| name.map(str::to_string).unwrap_or_else(|| i.to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let number = b.number.and_then(|n| {
            let at = n.referenced;
            let n = n.value;
            let cmp: Vec<(crate::rules::NumberOp, f64)> = [
                (crate::rules::NumberOp::Gt, n.gt),
                (crate::rules::NumberOp::Gte, n.gte),
                (crate::rules::NumberOp::Lt, n.lt),
                (crate::rules::NumberOp::Lte, n.lte),
                (crate::rules::NumberOp::Eq, n.eq),
            ]
            .into_iter()
            .filter_map(|(op, v)| v.map(|v| (op, v)))
            .collect();
            if cmp.is_empty() {
                self.d.push(Diagnostic::at(
                    self.path,
                    at,
                    "body.number: give a comparison: gt, gte, lt, lte or eq",
                ));
                return None;
            }
            if cmp.iter().any(|(_, v)| !v.is_finite()) {
                self.d.push(Diagnostic::at(
                    self.path,
                    at,
                    "body.number: compare with a finite number",
                ));
                return None;
            }
            // Bounds no number meets (gt: 10 with lt: 5, eq: 3 with gt: 4) would never fire.
            // The numbers that meet them, if any, form an interval whose ends are bounds: one
            // of the bounds, or the float next to one, is in it.
            let mut probes = cmp
                .iter()
                .flat_map(|(_, v)| [*v, v.next_up(), v.next_down()]);
            if !probes.any(|x| cmp.iter().all(|(op, v)| op.holds(x, *v))) {
                self.d.push(Diagnostic::at(
                    self.path,
                    at,
                    "body.number: no number meets all of these bounds, so the rule would never fire",
                ));
                return None;
            }
            if let Some(name) = &n.capture
                && !capture_keys.iter().any(|k| k == name)
            {
                self.d.push(Diagnostic::at(
                    self.path,
                    at,
                    if regex.is_some() {
                        format!("body.number.capture: the regex has no group named `{name}` (write it as (?P<{name}>…))")
                    } else {
                        format!("body.number.capture: `{name}` names a capture, but the body has no `regex`")
                    },
                ));
                return None;
            }
            self.number = true;
            Some(crate::rules::NumberCond {
                capture: n.capture,
                cmp,
            })
        });
        Cond::Body(Box::new(BodyCond {
            any,
            all,
            none,
            regex,
            capture_keys,
            normalized,
            words: mode.words,
            suffixes: mode.suffixes,
            number,
        }))
    }

    pub(super) fn template(
        &mut self,
        src: &Spanned<String>,
        kind: Kind,
        what: &str,
    ) -> Option<TemplateId> {
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
        if self.number {
            ctx["matched"]["number"] = serde_json::json!(1500);
        }
        if let Some(matched) = &self.chat_matched {
            ctx["matched"] = matched.clone();
        }
        if let Some(digest) = &self.digest {
            ctx = template::digest_sample_context(&ctx, digest.by_chat);
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
                let message = match self.templates.unknown_variable(&id, &ctx) {
                    Some((var, Some(best))) => {
                        format!(
                            "{what}: `{var}` is not a template variable, did you mean `{best}`? ({e})"
                        )
                    }
                    Some((var, None)) if self.digest.is_some() => format!(
                        "{what}: `{var}` is not a template variable of a digest (they are rule, {}digest, now, delivery_id; each of digest.items has chat, message, matched and fired_at; {e})",
                        if self.digest.is_some_and(|d| d.by_chat) {
                            "chat, "
                        } else {
                            ""
                        }
                    ),
                    Some((var, None)) => format!(
                        "{what}: `{var}` is not a template variable (they are rule, chat, message, matched, now, delivery_id, resolved; {e})"
                    ),
                    None => format!("{what}: {e}"),
                };
                self.d
                    .push(Diagnostic::at(self.path, src.referenced, message));
                None
            }
        }
    }

    pub(super) fn actions(
        &mut self,
        rule_id: &str,
        actions: Spanned<Vec<RawAction>>,
    ) -> Vec<Action> {
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

    /// Checks a `digest:` and compiles it; None (and an error) when it cannot work.
    pub(super) fn digest_of(&mut self, dg: Spanned<raw::RawDigest>) -> Option<Digest> {
        let at = dg.referenced;
        let raw = dg.value;
        let every = raw.every.0;
        if every < Duration::from_secs(1) || every.subsec_nanos() != 0 {
            self.d.push(Diagnostic::at(
                self.path,
                at,
                "digest.every: a window is a whole number of seconds, at least 1s",
            ));
            return None;
        }
        if every > Duration::from_secs(7 * 86_400) {
            self.d.push(Diagnostic::at(
                self.path,
                at,
                "digest.every: a window is at most 7d (the firings wait in the state file until it ends)",
            ));
            return None;
        }
        let group_by = raw.group_by.unwrap_or_default();
        let by_chat = group_by.contains(&raw::GroupBy::Chat);
        let max_items = match raw.max_items {
            None => DIGEST_ITEMS,
            Some(n) if (1..=DIGEST_ITEMS_MAX as u32).contains(&n) => n as usize,
            Some(n) => {
                self.d.push(Diagnostic::at(
                    self.path,
                    at,
                    format!("digest.max_items: {n} is not between 1 and {DIGEST_ITEMS_MAX}"),
                ));
                return None;
            }
        };
        Some(Digest {
            every,
            by_chat,
            max_items,
        })
    }

    pub(super) fn structured(&mut self, v: &Value, loc: Location) -> Option<StructuredBody> {
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
