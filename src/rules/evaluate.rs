//! Evaluating a compiled [`RuleSet`] on one message: the message prepared once (keyword hits,
//! candidate rules, the normalized text on first use), then each candidate rule's conditions.
//! Pure.

use super::*;

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
    /// The number a `body.number` condition compared.
    number: Option<f64>,
}

impl Acc<'_, '_> {
    fn mark(&self) -> (usize, usize, Option<f64>) {
        (self.keywords.len(), self.captures.len(), self.number)
    }
    fn reset(&mut self, (k, c, n): (usize, usize, Option<f64>)) {
        self.keywords.truncate(k);
        self.captures.truncate(c);
        self.number = n;
    }
    fn into_matched(self) -> Matched {
        Matched {
            number: self.number,
            keywords: self.keywords.into_iter().map(str::to_string).collect(),
            captures: self
                .captures
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }
}

pub(super) fn set_bit(set: &mut [u64], i: usize) {
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
        match self.eval_candidate(rule, chat_id, chat, msg, p, true) {
            Ok(matched) => Verdict::Fired(matched),
            Err(why) => Verdict::Failed(why),
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
        self.candidates(msg, p).filter_map(move |(_, rule)| {
            match self.eval_candidate(rule, chat_id, chat, msg, p, false) {
                Ok(m) => Some((rule, m)),
                Err(_) => None,
            }
        })
    }

    /// [`RuleSet::fired`] that also says why each other candidate failed (the run history):
    /// `Err((rule index, the first condition that failed))`, in the same single pass.
    pub fn fired_or_why<'s: 'm, 'm>(
        &'s self,
        chat_id: &'m ChatId,
        chat: &'m Chat,
        msg: &'m Message,
        p: &'m Prepared<'_>,
    ) -> impl Iterator<Item = Result<(&'s Rule, Matched), (usize, String)>> + 'm {
        self.candidates(msg, p).map(move |(i, rule)| {
            self.eval_candidate(rule, chat_id, chat, msg, p, true)
                .map(|m| (rule, m))
                .map_err(|why| (i, why))
        })
    }

    /// The candidate rules of a prepared message, with their index, in rule order.
    fn candidates<'s: 'm, 'm>(
        &'s self,
        msg: &'m Message,
        p: &'m Prepared<'_>,
    ) -> impl Iterator<Item = (usize, &'s Rule)> + 'm {
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
                (!notification || rule.sees.contains(&msg.kind)).then_some((i, rule))
            })
    }

    fn eval_candidate(
        &self,
        rule: &Rule,
        chat_id: &ChatId,
        chat: &Chat,
        msg: &Message,
        p: &Prepared,
        explain: bool,
    ) -> Result<Matched, String> {
        let ctx = Ctx {
            rule,
            chat_id,
            chat,
            msg,
            p,
            sandbox: &self.sandbox,
            explain,
        };
        let mut acc = Acc::default();
        match eval(&rule.cond, &ctx, &mut acc) {
            Ok(()) => Ok(acc.into_matched()),
            Err(Why(why)) => Err(why.unwrap_or_default()),
        }
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
        Cond::Chats(ids) if !ids.iter().any(|id| id.selects(ctx.chat_id)) => {
            Err(ctx.why(|| format!("chats: `{}` is not listed", ctx.chat_id)))
        }
        Cond::Body(b) => eval_body(b, ctx, m),
        Cond::Script(s) => eval_script(s, ctx),
        // A message rule asks about the message's own time, as cooldowns do.
        Cond::When(w) if !w.holds(ctx.msg.timestamp) => {
            Err(ctx.why(|| w.why_not(ctx.msg.timestamp).unwrap_or_default()))
        }
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
            return Err(ctx.why(|| {
                match glued_keyword(b, b.any.iter().map(|(_, k)| k.as_str()), ctx) {
                    Some(k) => format!(
                        "body.any: `{k}` occurs, but not as a whole word ({})",
                        word_rule(b)
                    ),
                    None => "body.any: no keyword occurs".into(),
                }
            }));
        }
    }
    if let Some((_, k)) = b.all.iter().find(|(id, _)| !hits.contains(*id)) {
        return Err(ctx.why(|| match glued_keyword(b, [k.as_str()], ctx) {
            Some(_) => format!(
                "body.all: `{k}` occurs, but not as a whole word ({})",
                word_rule(b)
            ),
            None => format!("body.all: `{k}` does not occur"),
        }));
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
    if let Some(n) = &b.number {
        let value = match &n.capture {
            Some(name) => m
                .captures
                .iter()
                .rev()
                .find(|(k, _)| *k == name.as_str())
                .and_then(|(_, v)| crate::text::number::first_number(v)),
            // Digits of every system read the same, normalized or not.
            None => crate::text::number::first_number(ctx.p.raw),
        };
        let Some(value) = value else {
            return Err(ctx.why(|| match &n.capture {
                Some(name) => format!("body.number: the capture `{name}` holds no number"),
                None => "body.number: the text has no number".into(),
            }));
        };
        if let Some((op, bound)) = n.cmp.iter().find(|(op, bound)| !op.holds(value, *bound)) {
            return Err(ctx.why(|| format!("body.number: {value} is not {} {bound}", op.symbol())));
        }
        m.number = Some(value);
    }
    Ok(())
}

/// The whole-word rule a body uses, as the rule writes it.
fn word_rule(b: &BodyCond) -> &'static str {
    if b.suffixes {
        "words: true, suffixes: true"
    } else {
        "words: true"
    }
}

/// For an explanation only: the first of `keywords` that occurs in the text but not as a whole
/// word, when the condition asks for whole words.
fn glued_keyword<'k>(
    b: &BodyCond,
    keywords: impl IntoIterator<Item = &'k str>,
    ctx: &Ctx,
) -> Option<&'k str> {
    if !b.words {
        return None;
    }
    // (With suffixes, a keyword followed by something other than a pronoun is glued too.)
    let text = if b.normalized {
        ctx.p.normalized()
    } else {
        ctx.p.raw
    };
    keywords.into_iter().find(|k| {
        let k = if b.normalized {
            crate::text::normalize::normalize(k)
        } else {
            std::borrow::Cow::Borrowed(*k)
        };
        !k.is_empty() && text.contains(k.as_ref())
    })
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
    chat.insert("id".into(), ctx.chat_id.bare().into());
    chat.insert("account".into(), ctx.chat_id.account().into());
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
