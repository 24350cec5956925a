use super::{LogArgs, runtime};
use crate::config::{self, EnvMode};
use crate::mock::{MockGateway, Scenario};
use crate::receiver::{Received, Receiver};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The conversation the demo plays unless `--scenario` names another.
pub(super) const DEMO_SCENARIO: &str = include_str!("../../examples/demo-scenario.yaml");

/// The demo's config, unless `--config` names another (its paths are relative to
/// `examples/`, as in the repository).
const DEMO_CONFIG: &str = include_str!("../../examples/demo.yaml");

/// The rule files the demo runs: the repository's `rules/` folder, built into the binary so an
/// installed `cartat-rules demo` runs anywhere. A test checks the list is the whole folder.
pub(crate) const DEMO_RULES: [(&str, &str); 9] = [
    (
        "bot-keyword.yaml",
        include_str!("../../rules/bot-keyword.yaml"),
    ),
    (
        "complaints-digest.yaml",
        include_str!("../../rules/complaints-digest.yaml"),
    ),
    (
        "escalation.rhai",
        include_str!("../../rules/escalation.rhai"),
    ),
    (
        "large-payment.yaml",
        include_str!("../../rules/large-payment.yaml"),
    ),
    (
        "order-number.yaml",
        include_str!("../../rules/order-number.yaml"),
    ),
    (
        "unanswered-sla.yaml",
        include_str!("../../rules/unanswered-sla.yaml"),
    ),
    (
        "unread-pileup.yaml",
        include_str!("../../rules/unread-pileup.yaml"),
    ),
    (
        "urgent-group.yaml",
        include_str!("../../rules/urgent-group.yaml"),
    ),
    (
        "urgent-threshold.yaml",
        include_str!("../../rules/urgent-threshold.yaml"),
    ),
];

/// Writes the built-in config and rules under `dir` (as `examples/demo.yaml` and `rules/`);
/// returns the config's path.
fn write_builtin(dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir.join("examples"))?;
    std::fs::create_dir_all(dir.join("rules"))?;
    for (name, text) in DEMO_RULES {
        std::fs::write(dir.join("rules").join(name), text)?;
    }
    let config = dir.join("examples").join("demo.yaml");
    std::fs::write(&config, DEMO_CONFIG)?;
    Ok(config)
}

pub(super) fn demo(
    config_path: Option<&Path>,
    scenario: Option<&Path>,
    duration: Duration,
    log: &LogArgs,
) -> u8 {
    // What the demo prints on stdout is its story (every webhook the receiver gets); the
    // engine's own log lines stay out of it unless asked for (`-v`: its events, `-vv`: debug).
    let args = LogArgs {
        verbose: log.verbose.saturating_sub(1),
        quiet: false,
        log_format: log.log_format,
    };
    let level = if log.verbose == 0 { "error" } else { "info" };
    super::init_logging(&args, level, crate::config::LogFormat::Text);
    let tmp = std::env::temp_dir().join(format!("cartat-rules-demo-{}", std::process::id()));
    let builtin;
    let config_path = match config_path {
        Some(p) => p,
        None => match write_builtin(&tmp) {
            Ok(p) => {
                builtin = p;
                &builtin
            }
            Err(e) => {
                eprintln!(
                    "cartat-rules demo: cannot write the demo's files under {}: {e}",
                    tmp.display()
                );
                return 1;
            }
        },
    };
    let code = demo_with(config_path, scenario, duration, &tmp);
    let _ = std::fs::remove_dir_all(&tmp);
    code
}

fn demo_with(config_path: &Path, scenario: Option<&Path>, duration: Duration, tmp: &Path) -> u8 {
    let scenario = match scenario {
        Some(p) => Scenario::from_file(p),
        None => Scenario::from_yaml(DEMO_SCENARIO),
    };
    let scenario = match scenario {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cartat-rules demo: the scenario is not valid: {e}");
            return 1;
        }
    };
    let (mut config, _) = match config::load(config_path, EnvMode::Optional) {
        Ok(c) => c,
        Err(d) => {
            eprint!("{d}");
            eprintln!(
                "cartat-rules demo: the config {} is not valid (without --config the demo runs its built-in one)",
                config_path.display()
            );
            return 1;
        }
    };
    crate::events::set_masking(config.mask_phone_numbers);
    let (rules, _) = match crate::rules::load_configured(&config) {
        Ok(r) => r,
        Err(d) => {
            eprint!("{d}");
            return 1;
        }
    };
    config.state_path = tmp.join("state.db");
    let receiver_ports: BTreeSet<String> = rules
        .rules
        .iter()
        .flat_map(|r| &r.actions)
        .filter_map(|a| match a {
            crate::rules::Action::Webhook { url, .. } => loopback_authority(url),
            _ => None,
        })
        .collect();
    let rt = match runtime(1) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cartat-rules demo: cannot start the runtime: {e}");
            return 1;
        }
    };
    rt.block_on(async move {
        let gateway_addr = match loopback_authority(&config.accounts[0].api.base_url) {
            Some(a) => a,
            None => {
                eprintln!("cartat-rules demo: api.base_url must be a loopback address for the demo");
                return 1;
            }
        };
        let listener = match tokio::net::TcpListener::bind(&gateway_addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("cartat-rules demo: cannot listen on {gateway_addr} for the mock gateway: {e} (is another demo running?)");
                return 1;
            }
        };
        let gateway = match MockGateway::start(listener, scenario).await {
            Ok(g) => g,
            Err(e) => {
                eprintln!("cartat-rules demo: the mock gateway did not start: {e}");
                return 1;
            }
        };
        let secret = config.webhooks.secret.clone();
        let printer: Arc<dyn Fn(&Received) + Send + Sync> = Arc::new(move |r: &Received| print_webhook(r, secret.as_ref()));
        let mut receivers = Vec::new();
        for addr in &receiver_ports {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => match Receiver::start(l, Some(printer.clone())).await {
                    Ok(r) => receivers.push(r),
                    Err(e) => eprintln!("cartat-rules demo: receiver on {addr}: {e}"),
                },
                Err(e) => {
                    eprintln!("cartat-rules demo: cannot listen on {addr} for the webhook receiver: {e}");
                    return 1;
                }
            }
        }
        println!("cartat-rules demo: mock gateway on http://{gateway_addr}, webhook receiver on {}", receiver_ports.iter().map(|a| format!("http://{a}")).collect::<Vec<_>>().join(", "));
        println!("watching {} chats with {} rules for {}; every webhook the receiver gets is printed below\n", config.chats.len(), rules.rules.len() + rules.chat_rules.len() + rules.script_rules.len(), crate::duration::format(duration));
        let (poller, dispatcher, running) = match crate::daemon::prepare(config, rules) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("cartat-rules demo: {e:#}");
                return 1;
            }
        };
        let shutdown = tokio_util::sync::CancellationToken::new();
        let s = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(duration) => {}
                _ = crate::daemon::signal() => {}
            }
            s.cancel();
        });
        crate::daemon::run(
            poller,
            dispatcher,
            running.reloader.clone(),
            running.take_lease_loop(),
            shutdown,
        )
        .await;
        let received: usize = receivers.iter().map(|r| r.received().len()).sum();
        let st = &running.stats;
        println!(
            "\ndemo finished: {} polls, {} new messages, {} rule firings, {} webhooks received",
            st.polls_ok.load(Ordering::Relaxed),
            st.messages_new.load(Ordering::Relaxed),
            st.rules_fired.load(Ordering::Relaxed),
            received
        );
        for r in receivers {
            r.stop();
        }
        gateway.shutdown().await;
        0
    })
}

/// `host:port` of an http URL on loopback, else None.
fn loopback_authority(url: &str) -> Option<String> {
    let rest = url.strip_prefix("http://")?;
    let authority = rest.split('/').next()?;
    let (host, port) = authority.rsplit_once(':')?;
    let _: u16 = port.parse().ok()?;
    matches!(host, "127.0.0.1" | "localhost").then(|| format!("127.0.0.1:{port}"))
}

fn print_webhook(r: &Received, secret: Option<&crate::outbox::sign::SigningKey>) {
    let v = r.json();
    let signed = match (
        secret,
        r.header("webhook-id"),
        r.header("webhook-timestamp"),
        r.header("webhook-signature"),
    ) {
        (Some(k), Some(id), Some(ts), Some(sig)) => {
            let ok = ts
                .parse()
                .is_ok_and(|ts| crate::outbox::sign::verify(k, id, ts, r.body.as_bytes(), sig));
            if ok {
                "signature ok"
            } else {
                "SIGNATURE INVALID"
            }
        }
        (Some(_), ..) => "UNSIGNED",
        (None, ..) => "unsigned",
    };
    println!("  webhook → {}  {}  ({signed})", r.path, describe(&v));
}

/// One line for a webhook body: the standard envelope's rule, chat, text and what matched; a
/// rule's own body (`webhook.body`) as the compact JSON it is.
fn describe(v: &serde_json::Value) -> String {
    let Some(rule) = v["rule"].as_str() else {
        return format!("body={v}");
    };
    let chat = v["chat"]["name"].as_str().unwrap_or("");
    let mut line = format!("rule={rule}  chat=\"{chat}\"");
    if let Some(text) = v["message"]["body"].as_str() {
        line.push_str(&format!("  text=\"{text}\""));
    }
    if !v["matched"].is_null() {
        line.push_str(&format!("  matched={}", v["matched"]));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_webhook_is_described_by_its_rule_or_as_its_own_body() {
        let envelope = json!({
            "rule": "bot-keyword",
            "chat": { "name": "Sarah" },
            "message": { "body": "bot?" },
            "matched": { "keywords": ["bot"] },
        });
        assert_eq!(
            describe(&envelope),
            r#"rule=bot-keyword  chat="Sarah"  text="bot?"  matched={"keywords":["bot"]}"#
        );
        let chat_rule = json!({ "rule": "unanswered-sla", "chat": { "name": "Abu Fahad" } });
        assert_eq!(
            describe(&chat_rule),
            r#"rule=unanswered-sla  chat="Abu Fahad""#
        );
        let custom = json!({ "order": "4521", "text": "Order 4521 from Sarah" });
        let line = describe(&custom);
        assert!(line.starts_with("body={"), "{line}");
        assert!(
            line.contains(r#""order":"4521""#) && !line.contains("null"),
            "{line}"
        );
    }

    /// The built-in rules are the repository's whole `rules/` folder, byte for byte (its
    /// `tests/` folder holds rule tests, not rules).
    #[test]
    fn the_built_in_rules_are_the_rules_folder() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.') && n != "tests")
            .collect();
        on_disk.sort();
        let built_in: Vec<String> = DEMO_RULES.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(built_in, on_disk);
        for (name, text) in DEMO_RULES {
            assert_eq!(
                std::fs::read_to_string(dir.join(name)).unwrap(),
                text,
                "{name}"
            );
        }
    }
}
