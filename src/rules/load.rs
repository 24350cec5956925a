//! Finding and parsing rule files: the configured paths walked in a stable order, each file
//! parsed into raw rules with `path:line:col` diagnostics, then compiled.

use super::*;

/// One rule file as parsed: its path and its rules (or the diagnostics that stopped it).
pub struct ParsedFile {
    pub path: PathBuf,
    pub rules: Vec<RawRule>,
}

/// Lists the rule files under the configured paths (files as given, folders one level deep
/// and below, sorted so loading is deterministic), with warnings about files not read.
pub fn discover(paths: &[PathBuf]) -> Result<(Vec<PathBuf>, Diagnostics), Diagnostics> {
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
    Ok((out, d))
}

/// Files in a rules folder that look meant as rules but are not read: said, not skipped silently.
fn skipped_warning(p: &Path) -> Option<Diagnostic> {
    match p.extension().and_then(|e| e.to_str()) {
        Some("json") => Some(Diagnostic::warning(
            p,
            0,
            0,
            "not read: rule files end in .yaml, .yml or .rhai (JSON is valid YAML: rename it to .yaml to use it)",
        )),
        _ => None,
    }
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
        } else if let Some(w) = skipped_warning(&p) {
            d.push(w);
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
    let (files, mut d) = discover(paths)?;
    let mut parsed = Vec::new();
    let mut scripts = Vec::new();
    for f in files {
        match std::fs::read_to_string(&f) {
            Ok(text) if f.extension().and_then(|e| e.to_str()) == Some("rhai") => {
                scripts.push((f, text))
            }
            Ok(text) => match parse_file(&f, &text) {
                Ok(p) => {
                    if p.rules.is_empty() {
                        d.push(Diagnostic::warning(
                            &f,
                            0,
                            0,
                            "the file holds no rule (it is empty or only comments)",
                        ));
                    }
                    parsed.push(p)
                }
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
