//! Templates for log messages, webhook bodies and headers (minijinja, strict).
//!
//! Owns: compiling every template once, rendering against `rule`, `chat`, `message`,
//! `matched`, `now`. Must not: see raw config or do I/O.

use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde_json::Value;

/// All templates of a rule set, compiled once.
pub struct Templates {
    env: Environment<'static>,
    count: usize,
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

/// How a template's output is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Plain text (log lines, header values, string leaves of a structured body).
    Text,
    /// A JSON document: values are JSON-escaped as they are inserted.
    Json,
}

/// A handle to one compiled template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateId(String);

impl Templates {
    pub fn new() -> Self {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".json") {
                AutoEscape::Json
            } else {
                AutoEscape::None
            }
        });
        Templates { env, count: 0 }
    }

    /// Compiles a template; the error is minijinja's, without position (the caller adds it).
    pub fn add(&mut self, source: &str, kind: Kind) -> Result<TemplateId, String> {
        self.count += 1;
        let name = match kind {
            Kind::Text => format!("t{}.txt", self.count),
            Kind::Json => format!("t{}.json", self.count),
        };
        self.env
            .add_template_owned(name.clone(), source.to_string())
            .map_err(describe)?;
        Ok(TemplateId(name))
    }

    /// Renders one template against a context.
    pub fn render(&self, id: &TemplateId, ctx: &Value) -> Result<String, String> {
        let t = self.env.get_template(&id.0).map_err(describe)?;
        t.render(ctx).map_err(describe)
    }
}

impl Templates {
    /// The first variable (a dotted path) that template `id` uses and `ctx` does not have, with
    /// the closest name `ctx` has at that place (`mesage.body` → `message`), for the error that
    /// strict rendering gives without naming either.
    pub fn unknown_variable(
        &self,
        id: &TemplateId,
        ctx: &Value,
    ) -> Option<(String, Option<String>)> {
        let t = self.env.get_template(&id.0).ok()?;
        let mut vars: Vec<String> = t.undeclared_variables(true).into_iter().collect();
        vars.sort();
        for v in vars {
            let mut node = ctx;
            let mut path: Vec<&str> = Vec::new();
            for part in v.split('.') {
                if let Some(next) = node.get(part) {
                    node = next;
                    path.push(part);
                    continue;
                }
                let keys: Vec<&str> = node
                    .as_object()
                    .map(|o| o.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                let best = crate::diag::did_you_mean(part, &keys).map(|b| {
                    let mut p = path.clone();
                    p.push(b);
                    p.join(".")
                });
                path.push(part);
                return Some((path.join("."), best));
            }
        }
        None
    }
}

fn describe(e: minijinja::Error) -> String {
    let mut s = match e.detail() {
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.kind().to_string(),
    };
    if let Some(line) = e.line() {
        s.push_str(&format!(" (template line {line})"));
    }
    s
}

/// A context shaped like a real one, for rendering every template at load time.
pub fn sample_context() -> Value {
    serde_json::json!({
        "rule": { "id": "sample", "description": "" },
        "chat": { "id": "966500000000@c.us", "account": "default", "name": "Sample", "is_group": false, "unread_count": 1 },
        "message": {
            "id": "false_966500000000@c.us_SAMPLE", "body": "sample \"text\"", "type": "chat",
            "timestamp": 1_700_000_000, "from": "966500000000@c.us", "author": null, "from_me": false
        },
        "matched": { "keywords": ["sample"], "captures": {} },
        "now": "2026-01-01T00:00:00Z",
        "delivery_id": "0000",
        "resolved": false,
    })
}

/// What a digest rule's templates see, built from a firing's `sample`: the rule, the group's
/// chat (`group_by: [chat]`; none otherwise), the digest, now and the delivery id.
pub fn digest_sample_context(sample: &Value, by_chat: bool) -> Value {
    let item = serde_json::json!({
        "chat": sample["chat"],
        "message": sample["message"],
        "matched": sample["matched"],
        "fired_at": sample["now"],
    });
    serde_json::json!({
        "rule": sample["rule"],
        "chat": if by_chat { sample["chat"].clone() } else { Value::Null },
        "digest": crate::model::digest_json(
            "2026-01-01T00:00:00Z", "2026-01-01T00:15:00Z", 1, vec![item]),
        "now": sample["now"],
        "delivery_id": sample["delivery_id"],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_variable_is_named_with_the_closest_known_one() {
        let mut t = Templates::new();
        let ctx = sample_context();
        let cases = [
            ("{{ mesage.body }}", Some(("mesage", Some("message")))),
            (
                "{{ message.bdy }}",
                Some(("message.bdy", Some("message.body"))),
            ),
            (
                "{{ chat.name }} {{ nothing_like_it }}",
                Some(("nothing_like_it", None)),
            ),
            (
                "{{ rule.id }} {% for k in matched.keywords %}{{ k }}{% endfor %}",
                None,
            ),
        ];
        for (src, want) in cases {
            let id = t.add(src, Kind::Text).unwrap();
            let got = t.unknown_variable(&id, &ctx);
            let want = want.map(|(v, b)| (v.to_string(), b.map(str::to_string)));
            assert_eq!(got, want, "{src}");
        }
    }

    #[test]
    fn text_templates_render_and_unknown_variables_fail() {
        let mut t = Templates::new();
        let id = t
            .add(
                "{{ rule.id }} in {{ chat.name }}: {{ message.body }}",
                Kind::Text,
            )
            .unwrap();
        assert_eq!(
            t.render(&id, &sample_context()).unwrap(),
            "sample in Sample: sample \"text\""
        );
        let bad = t.add("{{ mesage.body }}", Kind::Text).unwrap();
        assert!(
            t.render(&bad, &sample_context())
                .unwrap_err()
                .contains("undefined")
        );
        assert!(t.add("{{ unclosed", Kind::Text).is_err());
    }

    #[test]
    fn json_templates_escape_values() {
        let mut t = Templates::new();
        let id = t
            .add(r#"{"text": {{ message.body }}}"#, Kind::Json)
            .unwrap();
        let out = t.render(&id, &sample_context()).unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["text"], "sample \"text\"");
    }
}
