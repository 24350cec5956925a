//! Rules as written, for comparing two rule sets and naming one: YAML rules as JSON values
//! (formatting, comments, key order and file layout gone), rule files (rhai) as their text.
//! `plan` diffs two sets of these; [`fingerprint`] names a set so a deploy can tell which one
//! a daemon runs (the same on the deployer's machine as in the daemon: no secrets, no paths).
//!
//! Owns: reading rule files as documents, the fingerprint. Must not: compile or judge rules
//! (the loader does; callers load a set before they read it as documents).

use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::PathBuf;

/// One rule as written.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RuleDoc {
    pub id: String,
    pub path: PathBuf,
    pub body: Body,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Body {
    /// A YAML rule (one mapping of a rule file).
    Yaml(Value),
    /// A rule file (rhai): its text.
    Script(String),
}

/// The rules in `files` (as [`super::discover`] lists them), in file order.
pub(crate) fn read_docs(files: &[PathBuf]) -> Result<Vec<RuleDoc>, String> {
    let mut texts = Vec::with_capacity(files.len());
    for f in files {
        let text =
            std::fs::read_to_string(f).map_err(|e| format!("{}: cannot read: {e}", f.display()))?;
        texts.push((f.clone(), text));
    }
    docs_of(&texts)
}

/// The rules in these (path, text) pairs, in order.
pub(crate) fn docs_of(files: &[(PathBuf, String)]) -> Result<Vec<RuleDoc>, String> {
    let mut docs = Vec::new();
    for (f, text) in files {
        if f.extension().and_then(|e| e.to_str()) == Some("rhai") {
            let id = f
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            docs.push(RuleDoc {
                id,
                path: f.clone(),
                body: Body::Script(text.clone()),
            });
            continue;
        }
        let value: Value =
            serde_saphyr::from_str(text).map_err(|e| format!("{}: {e}", f.display()))?;
        let rules = match value {
            Value::Array(items) => items,
            Value::Null => Vec::new(),
            one => vec![one],
        };
        for r in rules {
            let id = r
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            docs.push(RuleDoc {
                id,
                path: f.clone(),
                body: Body::Yaml(r),
            });
        }
    }
    Ok(docs)
}

impl RuleDoc {
    /// As `GET /api/rules` answers it.
    pub(crate) fn to_json(&self) -> Value {
        match &self.body {
            Body::Yaml(v) => {
                serde_json::json!({"id": self.id, "path": self.path.display().to_string(), "kind": "yaml", "rule": v})
            }
            Body::Script(text) => {
                serde_json::json!({"id": self.id, "path": self.path.display().to_string(), "kind": "rhai", "script": text})
            }
        }
    }

    /// Reads one back from `GET /api/rules`.
    pub(crate) fn from_json(v: &Value) -> Option<RuleDoc> {
        let id = v.get("id")?.as_str()?.to_string();
        let path = PathBuf::from(v.get("path")?.as_str()?);
        let body = match v.get("kind")?.as_str()? {
            "yaml" => Body::Yaml(v.get("rule")?.clone()),
            "rhai" => Body::Script(v.get("script")?.as_str()?.to_string()),
            _ => return None,
        };
        Some(RuleDoc { id, path, body })
    }
}

/// A rule set's name: the first 16 hex digits of a SHA-256 over its rules in id order, each
/// as canonical JSON (keys sorted) or a script's trimmed text. File names, folders, comments
/// and formatting do not change it; any change to what a rule does, does.
pub(crate) fn fingerprint(docs: &[RuleDoc]) -> String {
    let mut sorted: Vec<&RuleDoc> = docs.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let mut h = Sha256::new();
    for d in sorted {
        h.update(d.id.as_bytes());
        h.update([0]);
        match &d.body {
            Body::Yaml(v) => {
                h.update(b"yaml\0");
                h.update(v.to_string().as_bytes());
            }
            Body::Script(text) => {
                h.update(b"rhai\0");
                h.update(text.trim().as_bytes());
            }
        }
        h.update([0]);
    }
    let digest = h.finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The paths where `old` and `new` differ, with both values. Objects are compared key by key,
/// arrays of the same length element by element; anything else as a whole.
pub(crate) fn differences(
    path: &str,
    old: Option<&Value>,
    new: Option<&Value>,
    out: &mut Vec<(String, Option<Value>, Option<Value>)>,
) {
    match (old, new) {
        (Some(a), Some(b)) if a == b => {}
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                differences(&p, a.get(k), b.get(k), out);
            }
        }
        (Some(Value::Array(a)), Some(Value::Array(b)))
            if a.len() == b.len() && a.iter().chain(b).all(Value::is_object) =>
        {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                differences(&format!("{path}[{i}]"), Some(x), Some(y), out);
            }
        }
        (a, b) => out.push((path.to_string(), a.cloned(), b.cloned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(id: &str, path: &str, text: &str) -> RuleDoc {
        RuleDoc {
            id: id.into(),
            path: path.into(),
            body: Body::Yaml(serde_saphyr::from_str(text).unwrap()),
        }
    }

    #[test]
    fn the_fingerprint_follows_what_rules_do_not_how_they_are_written() {
        let a = yaml(
            "a",
            "rules/a.yaml",
            "id: a\nactions: [ { log: { message: x } } ]\n",
        );
        let b = RuleDoc {
            id: "b".into(),
            path: "rules/b.rhai".into(),
            body: Body::Script("fn on_message(m, c) {}\n".into()),
        };
        let f = fingerprint(&[a.clone(), b.clone()]);
        assert_eq!(f.len(), 16);
        // Another order, another folder, other formatting: the same set.
        let a2 = yaml(
            "a",
            "elsewhere/all.yaml",
            "# a comment\nactions:\n  - log:\n      message: x\nid: a\n",
        );
        let mut b2 = b.clone();
        b2.body = Body::Script("fn on_message(m, c) {}".into());
        assert_eq!(fingerprint(&[b2, a2]), f);
        // What a rule does changes it.
        let a3 = yaml(
            "a",
            "rules/a.yaml",
            "id: a\nactions: [ { log: { message: y } } ]\n",
        );
        assert_ne!(fingerprint(&[a3, b.clone()]), f);
        assert_ne!(fingerprint(&[a]), f);
    }
}
