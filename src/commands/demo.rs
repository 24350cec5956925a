use super::{LogArgs, runtime};
use crate::config::{self, EnvMode};
use crate::mock::{MockGateway, Scenario};
use crate::receiver::{Received, Receiver};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The conversation the demo plays unless `--scenario` names another.
pub(super) const DEMO_SCENARIO: &str = include_str!("../../examples/demo-scenario.yaml");

pub(super) fn demo(
    config_path: &Path,
    scenario: Option<&Path>,
    duration: Duration,
    log: &LogArgs,
) -> u8 {
    // The engine's own events (rule fired, delivered) are the demo's story; the rest is quiet.
    if std::env::var_os("RUST_LOG").is_none() && log.verbose == 0 {
        // SAFETY-free alternative to set_var: build the filter directly.
        let args = LogArgs {
            verbose: 0,
            quiet: false,
            log_format: log.log_format,
        };
        super::init_logging(
            &args,
            "warn,cartat_rules::events=info",
            crate::config::LogFormat::Text,
        );
    } else {
        super::init_logging(log, "info", crate::config::LogFormat::Text);
    }
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
                "cartat-rules demo: run it from the project folder (it reads {})",
                config_path.display()
            );
            return 1;
        }
    };
    crate::events::set_masking(config.mask_phone_numbers);
    let (rules, _) = match crate::rules::load_for(&config.rule_paths, &config.webhooks.net_policy) {
        Ok(r) => r,
        Err(d) => {
            eprint!("{d}");
            return 1;
        }
    };
    let tmp = std::env::temp_dir().join(format!("cartat-rules-demo-{}", std::process::id()));
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
    let code = rt.block_on(async move {
        let gateway_addr = match loopback_authority(&config.api.base_url) {
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
        crate::daemon::run(poller, dispatcher, shutdown).await;
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
    });
    let _ = std::fs::remove_dir_all(&tmp);
    code
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
    let rule = v["rule"].as_str().unwrap_or("(custom body)");
    let chat = v["chat"]["name"]
        .as_str()
        .or(v["chat"].as_str())
        .unwrap_or("");
    let body = v["message"]["body"]
        .as_str()
        .or(v["text"].as_str())
        .unwrap_or("");
    println!(
        "  webhook → {}  rule={rule}  chat=\"{chat}\"  text=\"{body}\"  matched={}  ({signed})",
        r.path, v["matched"]
    );
}
