//! `cartat-rules reload`: asks a running daemon to reload its rules and config now
//! (`POST /api/reload` with the admin token) and says what it answered: the fingerprint of the
//! set in force and what the config changed (chats, rate limit, and what waits for a restart),
//! or the errors as `path:line:col` while the last good state stays in force. Exit 0
//! when the new set is in force, 1 otherwise — so a deploy script can stop on it.
//!
//! The address and the token come from the config (`server.listen`, `server.admin_token`)
//! unless `--url` and `--token` (or `CARTAT_ADMIN_TOKEN`) say otherwise.

use super::TextOrJson;
use super::health::{Target, loopback_if_unspecified, parse_url, request};
use crate::config::{self, EnvMode};
use secrecy::ExposeSecret;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// One diagnostic of the daemon's answer as `check` prints it.
fn diagnostic_line(d: &Value) -> String {
    format!(
        "{}:{}:{}: {}: {}",
        d["path"].as_str().unwrap_or(""),
        d["line"],
        d["column"],
        d["severity"].as_str().unwrap_or("error"),
        d["message"].as_str().unwrap_or("")
    )
}

pub(super) fn reload(
    config_path: &Path,
    url: Option<&str>,
    token: Option<&str>,
    format: TextOrJson,
    timeout: Duration,
) -> u8 {
    let fail = |msg: String| {
        eprintln!("cartat-rules reload: {msg}");
        1
    };
    let needs_config = url.is_none() || token.is_none();
    let config = if needs_config {
        match config::load(config_path, EnvMode::Optional) {
            Ok((c, _)) => Some(c),
            Err(d) => {
                eprint!("{d}");
                return 1;
            }
        }
    } else {
        None
    };
    let target = match url {
        Some(u) => match parse_url(u) {
            // `http://host:port` alone means the admin API of that daemon.
            Ok(t) if !u.trim_start_matches("http://").contains('/') => Target {
                path: "/api/reload".into(),
                ..t
            },
            Ok(t) => t,
            Err(e) => return fail(e),
        },
        None => match config.as_ref().and_then(|c| c.listen) {
            Some(addr) => Target {
                host: loopback_if_unspecified(addr).to_string(),
                path: "/api/reload".into(),
            },
            None => {
                return fail(format!(
                    "{} has `server.listen: off`: the daemon has no admin API to ask (set server.listen, or pass --url)",
                    config_path.display()
                ));
            }
        },
    };
    let token = match token {
        Some(t) => t.to_string(),
        None => match config.as_ref().and_then(|c| c.admin_token.as_ref()) {
            Some(t) => t.expose_secret().to_string(),
            None => {
                return fail(format!(
                    "no admin token: {} has no `server.admin_token` (pass --token or set CARTAT_ADMIN_TOKEN)",
                    config_path.display()
                ));
            }
        },
    };
    let auth = format!("Bearer {token}");
    let (status, body) = match request(&target, "POST", &[("Authorization", &auth)], timeout) {
        Ok(r) => r,
        Err(e) => {
            return fail(format!(
                "no answer from http://{}{}: {e}",
                target.host, target.path
            ));
        }
    };
    let answer: Value = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(_) => return fail(format!("the daemon answered {status}: {}", body.trim())),
    };
    if format == TextOrJson::Json {
        println!("{answer}");
        return u8::from(status != 200);
    }
    let fingerprint = answer["fingerprint"].as_str().unwrap_or("");
    match status {
        200 => {
            for w in answer["warnings"].as_array().into_iter().flatten() {
                println!("{}", diagnostic_line(w));
            }
            let config = &answer["config"];
            let list = |key: &str| -> Vec<String> {
                config[key]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            };
            for (key, what) in [
                ("chats_added", "config: now watching"),
                ("chats_removed", "config: no longer watching"),
                ("intervals_changed", "config: new poll interval for"),
            ] {
                let ids = list(key);
                if !ids.is_empty() {
                    println!("{what} {}", ids.join(", "));
                }
            }
            if config["rate_limit_changed"] == true {
                println!("config: the API rate limit changed");
            }
            let restart = list("restart_needed");
            if !restart.is_empty() {
                println!(
                    "config: changed, but applied only at the next start: {}",
                    restart.join(", ")
                );
            }
            println!(
                "reloaded: rule set {fingerprint} in force ({} rule(s))",
                answer["rules"]
            );
            0
        }
        422 => {
            for e in answer["errors"].as_array().into_iter().flatten() {
                println!("{}", diagnostic_line(e));
            }
            println!(
                "not reloaded: {}; rule set {fingerprint} stays in force",
                answer["error"].as_str().unwrap_or("refused")
            );
            1
        }
        _ => fail(format!(
            "the daemon answered {status}: {}",
            answer["error"].as_str().unwrap_or(body.trim())
        )),
    }
}
