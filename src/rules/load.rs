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
            // A rules folder's `tests` folder holds rule tests (`cartat-rules test`), not rules.
            if name != "tests" {
                walk(&p, out, d);
            }
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

/// Parses one YAML rule file: one rule, or a list of rules; every problem found, or the rules.
pub fn parse_file(path: &Path, text: &str) -> Result<ParsedFile, Diagnostics> {
    let (rules, problems) = parse_file_partly(path, text);
    if problems.is_empty() {
        Ok(ParsedFile {
            path: path.to_path_buf(),
            rules,
        })
    } else {
        Err(Diagnostics(problems))
    }
}

/// As [`parse_file`], keeping the rules that read well next to the problems of the others: the
/// parser stops at a file's first error, so a list's rules are then read one by one, and the
/// good ones still go on to be compiled (their regexes, templates and urls checked), so `check`
/// reports every rule's problems, not only the file's first.
pub(super) fn parse_file_partly(path: &Path, text: &str) -> (Vec<RawRule>, Vec<Diagnostic>) {
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#') && *l != "---")
        .unwrap_or("");
    // A key written twice in one mapping is an error, never silently "last one wins".
    let options = || {
        serde_saphyr::options! {
            duplicate_keys: serde_saphyr::DuplicateKeyPolicy::Error,
        }
    };
    let result = if first.starts_with("- ") || first == "-" {
        serde_saphyr::from_str_with_options::<Vec<RawRule>>(text, options())
    } else if first.is_empty() {
        Ok(Vec::new())
    } else {
        serde_saphyr::from_str_with_options::<RawRule>(text, options()).map(|r| vec![r])
    };
    let whole = match result {
        Ok(rules) => return (rules, Vec::new()),
        Err(e) => Diagnostic::from_yaml(path, &e),
    };
    let Some(items) = list_items(text).filter(|items| items.len() > 1) else {
        return (Vec::new(), vec![whole]);
    };
    let mut rules = Vec::new();
    let mut problems = Vec::new();
    for item in &items {
        match serde_saphyr::from_str_with_options::<Vec<RawRule>>(item, options()) {
            Ok(r) => rules.extend(r),
            Err(e) => problems.push(Diagnostic::from_yaml(path, &e)),
        }
    }
    if problems.is_empty() {
        // Every rule reads alone: the problem is between them (an anchor, say).
        return (Vec::new(), vec![whole]);
    }
    (rules, problems)
}

/// The items of a file that is a block list at its top level (`- ` at column 0), each as a
/// text of its own that keeps the item's lines where they are in the file (the lines before it
/// are left empty), so positions in errors stay right. `None` for any other shape.
fn list_items(text: &str) -> Option<Vec<String>> {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let starts: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("- ") || l.trim_end() == "-")
        .map(|(i, _)| i)
        .collect();
    let first = *starts.first()?;
    // Only comments, blank lines or a document start may come before the first item.
    let head_ok = lines[..first].iter().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#') || t == "---"
    });
    if !head_ok {
        return None;
    }
    let mut items = Vec::with_capacity(starts.len());
    for (k, &start) in starts.iter().enumerate() {
        let end = starts.get(k + 1).copied().unwrap_or(lines.len());
        let mut item = "\n".repeat(start);
        item.extend(lines[start..end].iter().copied());
        items.push(item);
    }
    Some(items)
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
    load_with(paths, policy, None)
}

/// The rules a config names, as `run` loads them (its network policy and `rules.timezone`).
pub fn load_configured(
    config: &crate::config::Config,
) -> Result<(RuleSet, Diagnostics), Diagnostics> {
    load_with(
        &config.rule_paths,
        &config.webhooks.net_policy,
        config.rules_timezone.as_ref(),
    )
}

/// As [`load_for`], with the time zone of `when:` conditions that name none
/// (`rules.timezone`; None: UTC).
pub fn load_with(
    paths: &[PathBuf],
    policy: &crate::net::ssrf::NetPolicy,
    timezone: Option<&jiff::tz::TimeZone>,
) -> Result<(RuleSet, Diagnostics), Diagnostics> {
    let (files, mut d) = discover(paths)?;
    // Named by the very texts compiled below (read once: a file replaced between two reads
    // would give a name to another set).
    let mut texts = Vec::with_capacity(files.len());
    let mut parsed = Vec::new();
    let mut scripts = Vec::new();
    for f in files {
        let read = std::fs::read_to_string(&f);
        if let Ok(text) = &read {
            texts.push((f.clone(), text.clone()));
        }
        match read {
            Ok(text) if f.extension().and_then(|e| e.to_str()) == Some("rhai") => {
                scripts.push((f, text))
            }
            Ok(text) => {
                let (rules, problems) = parse_file_partly(&f, &text);
                if rules.is_empty() && problems.is_empty() {
                    d.push(Diagnostic::warning(
                        &f,
                        0,
                        0,
                        "the file holds no rule (it is empty or only comments)",
                    ));
                }
                d.extend(Diagnostics(problems));
                parsed.push(ParsedFile { path: f, rules });
            }
            Err(e) => d.push(Diagnostic::error(&f, 0, 0, format!("cannot read: {e}"))),
        }
    }
    let (mut set, more) = super::compile::compile_rules_with(parsed, policy, timezone);
    if let Ok(docs) = super::docs::docs_of(&texts) {
        set.fingerprint = super::docs::fingerprint(&docs);
        set.docs = docs;
    }
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
