use crate::config::{self, EnvMode};
use crate::diag::Diagnostics;
use std::path::{Path, PathBuf};

pub(super) fn check(config_path: &Path, paths: &[PathBuf]) -> u8 {
    let mut all = Diagnostics::default();
    let mut rule_paths: Vec<PathBuf> = paths.to_vec();
    let check_config = paths.is_empty() || config_path.exists();
    let mut policy = crate::outbox::ssrf::NetPolicy::AllowAll;
    if check_config {
        match config::load(config_path, EnvMode::Optional) {
            Ok((c, warnings)) => {
                all.extend(warnings);
                if rule_paths.is_empty() {
                    rule_paths = c.rule_paths;
                }
                // Webhook urls the daemon would refuse are errors now, not dead letters later.
                policy = c.webhooks.net_policy;
            }
            Err(d) => all.extend(d),
        }
    }
    let mut rule_count = 0;
    if !rule_paths.is_empty() {
        match crate::rules::load_for(&rule_paths, &policy) {
            Ok((set, warnings)) => {
                rule_count = set.rules.len() + set.chat_rules.len() + set.script_rules.len();
                all.extend(warnings);
            }
            Err(d) => all.extend(d),
        }
    }
    let all = all.sorted();
    print!("{all}");
    let errors = all.errors().count();
    let warnings = all.0.len() - errors;
    if errors > 0 {
        println!("{errors} error(s), {warnings} warning(s)");
        1
    } else {
        let what = if check_config {
            format!("{} and ", config_path.display())
        } else {
            String::new()
        };
        println!("ok: {what}{rule_count} rule(s) valid, {warnings} warning(s)");
        0
    }
}
