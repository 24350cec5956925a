//! Diagnostics that point at a place in a file: `path:line:col: message`.
//!
//! Owns: the one way every config and rule error is reported, so `check`, `run` and the
//! reloader print the same thing. Must not: decide what is an error.

use std::fmt;
use std::path::{Path, PathBuf};

/// How bad a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

/// One finding in one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub path: PathBuf,
    /// 1-based; 0 when the file as a whole is meant.
    pub line: u64,
    pub col: u64,
    pub severity: Severity,
    pub message: String,
}

impl Diagnostic {
    pub fn error(path: &Path, line: u64, col: u64, message: impl Into<String>) -> Self {
        Diagnostic {
            path: path.to_path_buf(),
            line,
            col,
            severity: Severity::Error,
            message: message.into(),
        }
    }

    pub fn warning(path: &Path, line: u64, col: u64, message: impl Into<String>) -> Self {
        Diagnostic {
            path: path.to_path_buf(),
            line,
            col,
            severity: Severity::Warning,
            message: message.into(),
        }
    }

    /// An error at a serde-saphyr location (or the file as a whole when it is unknown).
    pub fn at(path: &Path, loc: serde_saphyr::Location, message: impl Into<String>) -> Self {
        Diagnostic::error(path, loc.line(), loc.column(), message)
    }

    /// A YAML parse or type error, with its position taken from the error itself.
    pub fn from_yaml(path: &Path, err: &serde_saphyr::Error) -> Self {
        let (line, col) = err
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((0, 0));
        Diagnostic::error(path, line, col, yaml_message(err))
    }
}

/// The message of a YAML error without the position or snippet serde-saphyr adds.
pub(crate) fn yaml_message(err: &serde_saphyr::Error) -> String {
    let options = serde_saphyr::render_options! { snippets: serde_saphyr::SnippetMode::Off };
    let text = err.render_with_options(options);
    let first = text.lines().next().unwrap_or("").trim();
    // serde-saphyr appends " at line N, column M"; the position is ours to print.
    let trimmed = match first.rfind(" at line ") {
        Some(i) => &first[..i],
        None => first,
    };
    let message = trimmed.strip_prefix("error: ").unwrap_or(trimmed);
    suggest_field(message)
        .or_else(|| expected_form(message))
        .unwrap_or_else(|| message.to_string())
}

/// The parser's terse complaints, with what to write instead.
fn expected_form(message: &str) -> Option<String> {
    if message == "invalid boolean" {
        return Some("invalid boolean: write `true` or `false`".into());
    }
    if let Some(ty) = message.strip_prefix("invalid ")
        && let Some(bits) = ty.strip_prefix('u')
        && bits.parse::<u8>().is_ok()
    {
        return Some(format!(
            "invalid {ty}: write a whole number of 0 or more, like `3`"
        ));
    }
    if let Some(ty) = message.strip_prefix("invalid ")
        && let Some(bits) = ty.strip_prefix('i')
        && bits.parse::<u8>().is_ok()
    {
        return Some(format!("invalid {ty}: write a whole number, like `3`"));
    }
    if message == "alias references unknown anchor"
        || message.starts_with("while scanning an anchor or alias")
    {
        // `*text` is a YAML alias: what a Markdown list or a note pasted into a .yaml looks like.
        return Some(
            "this is not a YAML rule file (a `*` starts a YAML alias here): a rule file is a \
             YAML mapping like `id: bot-keyword`, or a list of them (`cartat-rules schema` \
             prints the format)"
                .into(),
        );
    }
    None
}

/// serde's "unknown field `bdy`, expected one of `a`, `b`" → "unknown field `bdy`, did you
/// mean `body`? (expected one of …)"; `None` when the message is not that or nothing is close.
fn suggest_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (field, rest) = rest.split_once('`')?;
    let expected = rest.strip_prefix(", expected ")?;
    let candidates: Vec<&str> = expected
        .trim_start_matches("one of ")
        .split(['`', ','])
        .map(str::trim)
        .filter(|c| !c.is_empty() && *c != "or")
        .collect();
    let best = did_you_mean(field, &candidates)?;
    Some(format!(
        "unknown field `{field}`, did you mean `{best}`? (expected {expected})"
    ))
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Warning => "warning: ",
            Severity::Error => "",
        };
        if self.line == 0 {
            write!(f, "{}: {sev}{}", self.path.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {sev}{}",
                self.path.display(),
                self.line,
                self.col,
                self.message
            )
        }
    }
}

impl Diagnostic {
    /// The GitHub Actions workflow command that annotates this diagnostic's line in a pull
    /// request: `::error file=…,line=…,col=…::message` (`::warning` for a warning), escaped as
    /// the runner expects; a diagnostic of a whole file names no line.
    pub fn github(&self) -> String {
        fn data(s: &str) -> String {
            s.replace('%', "%25")
                .replace('\r', "%0D")
                .replace('\n', "%0A")
        }
        fn property(s: &str) -> String {
            data(s).replace(':', "%3A").replace(',', "%2C")
        }
        let kind = match self.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        let file = property(&self.path.display().to_string());
        let at = if self.line == 0 {
            String::new()
        } else {
            format!(",line={},col={}", self.line, self.col)
        };
        format!("::{kind} file={file}{at}::{}", data(&self.message))
    }

    /// This diagnostic as JSON: `path`, `line` and `column` (0 for the whole file),
    /// `severity` (`error` or `warning`) and `message`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "path": self.path.display().to_string(),
            "line": self.line,
            "column": self.col,
            "severity": match self.severity {
                Severity::Warning => "warning",
                Severity::Error => "error",
            },
            "message": self.message,
        })
    }
}

/// Every diagnostic of a load, errors and warnings together.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }

    pub fn has_errors(&self) -> bool {
        self.0.iter().any(|d| d.severity == Severity::Error)
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.severity == Severity::Error)
    }

    pub fn extend(&mut self, other: Diagnostics) {
        self.0.extend(other.0);
    }

    /// Sorted by file, line and column, as a compiler prints them.
    pub fn sorted(mut self) -> Self {
        self.0
            .sort_by(|a, b| (&a.path, a.line, a.col).cmp(&(&b.path, b.line, b.col)));
        self
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

#[cfg(test)]
#[test]
fn terse_parser_errors_say_what_to_write() {
    let cases = [
        (
            "invalid boolean",
            Some("invalid boolean: write `true` or `false`"),
        ),
        (
            "invalid u32",
            Some("invalid u32: write a whole number of 0 or more, like `3`"),
        ),
        (
            "invalid i64",
            Some("invalid i64: write a whole number, like `3`"),
        ),
        ("invalid type: string", None),
        ("invalid url", None),
    ];
    for (m, want) in cases {
        assert_eq!(expected_form(m).as_deref(), want, "{m}");
    }
    assert!(
        expected_form("alias references unknown anchor")
            .unwrap()
            .contains("not a YAML rule file")
    );
}

/// The closest candidate to a misspelled name, for `did you mean …?` (edit distance ≤ 2).
pub(crate) fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (levenshtein(word, c), *c))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_a_compiler() {
        let d = Diagnostic::error(Path::new("rules/x.yaml"), 3, 5, "unknown field `bdy`");
        assert_eq!(d.to_string(), "rules/x.yaml:3:5: unknown field `bdy`");
        let w = Diagnostic::warning(Path::new("a.yaml"), 1, 1, "hm");
        assert_eq!(w.to_string(), "a.yaml:1:1: warning: hm");
        let whole = Diagnostic::error(Path::new("a.yaml"), 0, 0, "unreadable");
        assert_eq!(whole.to_string(), "a.yaml: unreadable");
    }

    #[test]
    fn unknown_field_messages_get_a_suggestion() {
        assert_eq!(
            suggest_field("unknown field `bdy`, expected one of `from_me`, `body`, `script`")
                .as_deref(),
            Some(
                "unknown field `bdy`, did you mean `body`? (expected one of `from_me`, `body`, `script`)"
            )
        );
        assert_eq!(
            suggest_field("unknown field `x`, expected `level` or `message`"),
            None
        );
        assert_eq!(
            suggest_field("unknown field `levl`, expected `level` or `message`").as_deref(),
            Some("unknown field `levl`, did you mean `level`? (expected `level` or `message`)")
        );
        assert_eq!(suggest_field("invalid type: string, expected u32"), None);
    }

    #[test]
    fn suggests_close_names_only() {
        let keys = ["match", "actions", "cooldown", "max_age"];
        assert_eq!(did_you_mean("mtch", &keys), Some("match"));
        assert_eq!(did_you_mean("action", &keys), Some("actions"));
        assert_eq!(did_you_mean("zzzzzz", &keys), None);
    }
}

#[cfg(test)]
#[test]
fn diagnostics_become_github_annotations_and_json() {
    let cases = [
        (
            Diagnostic::error(Path::new("rules/a.yaml"), 3, 12, "invalid boolean"),
            "::error file=rules/a.yaml,line=3,col=12::invalid boolean",
        ),
        (
            Diagnostic::warning(Path::new("rules/b.json"), 0, 0, "not read: 100% sure"),
            "::warning file=rules/b.json::not read: 100%25 sure",
        ),
        (
            Diagnostic::error(Path::new("a,b:c.yaml"), 1, 1, "two\nlines"),
            "::error file=a%2Cb%3Ac.yaml,line=1,col=1::two%0Alines",
        ),
    ];
    for (d, want) in cases {
        assert_eq!(d.github(), want);
    }
    let d = Diagnostic::warning(Path::new("r.yaml"), 2, 5, "redundant");
    assert_eq!(
        d.to_json(),
        serde_json::json!({"path": "r.yaml", "line": 2, "column": 5, "severity": "warning", "message": "redundant"})
    );
}
