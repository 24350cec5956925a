use super::CheckFormat;
use crate::config::{self, EnvMode};
use crate::diag::Diagnostics;
use std::path::{Path, PathBuf};

pub(super) fn check(
    config_path: &Path,
    paths: &[PathBuf],
    format: CheckFormat,
    strict: bool,
) -> u8 {
    let mut all = Diagnostics::default();
    let mut rule_paths: Vec<PathBuf> = paths.to_vec();
    let check_config = paths.is_empty() || config_path.exists();
    let mut policy = crate::outbox::ssrf::NetPolicy::AllowAll;
    let mut timezone = None;
    if check_config {
        match config::load(config_path, EnvMode::Optional) {
            Ok((c, warnings)) => {
                all.extend(warnings);
                if rule_paths.is_empty() {
                    rule_paths = c.rule_paths;
                }
                // Webhook urls the daemon would refuse are errors now, not dead letters later.
                policy = c.webhooks.net_policy;
                timezone = c.rules_timezone;
            }
            Err(d) => all.extend(d),
        }
    }
    let mut rule_count = 0;
    let mut fingerprint = None;
    let mut disabled = Vec::new();
    if !rule_paths.is_empty() {
        match crate::rules::load_with(&rule_paths, &policy, timezone.as_ref()) {
            Ok((set, warnings)) => {
                rule_count = set.rules.len() + set.chat_rules.len() + set.script_rules.len();
                fingerprint = Some(set.fingerprint.clone());
                disabled = set.disabled.clone();
                all.extend(warnings);
            }
            Err(d) => all.extend(d),
        }
    }
    let all = all.sorted();
    let errors = all.errors().count();
    let warnings = all.0.len() - errors;
    let failed = errors > 0 || (strict && warnings > 0);
    let summary = if errors > 0 {
        format!("{errors} error(s), {warnings} warning(s)")
    } else if failed {
        format!("{warnings} warning(s), and --strict makes them fail")
    } else {
        let what = if check_config {
            format!("{} and ", config_path.display())
        } else {
            String::new()
        };
        let name = fingerprint
            .as_deref()
            .map(|f| format!("; rule set {f}"))
            .unwrap_or_default();
        let off = if disabled.is_empty() {
            String::new()
        } else {
            format!(
                " ({} disabled, not run: {})",
                disabled.len(),
                disabled.join(", ")
            )
        };
        format!("ok: {what}{rule_count} rule(s) valid{off}, {warnings} warning(s){name}")
    };
    match format {
        CheckFormat::Text => {
            print!("{all}");
            println!("{summary}");
        }
        CheckFormat::Github => {
            for d in &all.0 {
                println!("{}", d.github());
            }
            println!("{summary}");
        }
        CheckFormat::Json => {
            let doc = serde_json::json!({
                "ok": !failed,
                "errors": errors,
                "warnings": warnings,
                "rules": rule_count,
                "fingerprint": fingerprint,
                "disabled": disabled,
                "diagnostics": all.0.iter().map(|d| d.to_json()).collect::<Vec<_>>(),
            });
            println!("{doc}");
        }
    }
    u8::from(failed)
}
