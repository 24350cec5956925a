//! What `deploy/` ships, checked: the production config passes `check` with the repo's rules,
//! the systemd unit passes `systemd-analyze verify`, the Dockerfile says what a deployer relies
//! on (and builds, where a Docker daemon answers), and `cartat-rules health` tells a live
//! daemon from a dead one.

use crate::support::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn deploy(file: &str) -> String {
    std::fs::read_to_string(root().join("deploy").join(file))
        .unwrap_or_else(|e| panic!("deploy/{file}: {e}"))
}

#[test]
fn the_production_config_passes_check_with_the_rules_it_ships_with() {
    // The image and the unit read it at /etc/cartat-rules with deploy/rules beside it; here
    // the same text points at deploy/rules and a temporary state folder.
    let ws = Workspace::new();
    let rules = root().join("deploy/rules");
    let text = deploy("cartat.yaml")
        .replace("/etc/cartat-rules/rules", &rules.display().to_string())
        .replace(
            "/var/lib/cartat-rules",
            &ws.path().join("state").display().to_string(),
        );
    assert_ne!(text, deploy("cartat.yaml"), "the paths to replace moved");
    let cfg = ws.write("cartat.yaml", &text);
    let (code, out, err) = run_cli(&["check", "-c", cfg.to_str().unwrap()], ws.path());
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    // The secrets come from the environment, and check says which ones it did not find.
    for var in ["CARTAT_BASE_URL", "CARTAT_TOKEN", "WEBHOOK_SECRET"] {
        assert!(
            text.contains(&format!("${{{var}}}")),
            "{var} not read from the environment"
        );
    }
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let Some(analyze) = which("systemd-analyze") else {
        eprintln!("SKIPPED: no systemd-analyze on this machine; the unit is not verified");
        assert!(
            std::env::var_os("CI").is_none(),
            "systemd-analyze is missing in CI"
        );
        return;
    };
    let unit = deploy("cartat-rules.service");
    for key in [
        "DynamicUser=yes",
        "StateDirectory=cartat-rules",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
    ] {
        assert!(unit.contains(key), "the unit lacks {key}");
    }
    // verify checks that ExecStart's binary exists: point it at the one under test.
    let ws = Workspace::new();
    let path = ws.write(
        "cartat-rules.service",
        &unit.replace("/usr/local/bin/cartat-rules", BIN),
    );
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .expect("run systemd-analyze");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{err}"
    );
    // Unknown keys and bad values are warnings with exit 0: any line naming the unit fails.
    let about_unit: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("cartat-rules.service"))
        .collect();
    assert!(about_unit.is_empty(), "systemd-analyze verify:\n{err}");
}

/// The Dockerfile's instructions of its last stage, as (keyword, arguments).
fn final_stage(text: &str) -> Vec<(String, String)> {
    let joined = text.replace("\\\n", " ");
    let mut stages: Vec<Vec<(String, String)>> = Vec::new();
    for line in joined.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (kw, args) = line.split_once(' ').unwrap_or((line, ""));
        let kw = kw.to_ascii_uppercase();
        if kw == "FROM" {
            stages.push(Vec::new());
        }
        stages
            .last_mut()
            .expect("an instruction before the first FROM")
            .push((kw, args.trim().to_string()));
    }
    assert!(stages.len() >= 2, "not a multi-stage build");
    stages.pop().unwrap()
}

#[test]
fn the_dockerfile_runs_as_non_root_with_a_state_volume_and_a_health_check() {
    let text = deploy("Dockerfile");
    let last = final_stage(&text);
    let get = |kw: &str| -> Vec<&str> {
        last.iter()
            .filter(|(k, _)| k == kw)
            .map(|(_, a)| a.as_str())
            .collect()
    };
    let user = *get("USER")
        .last()
        .expect("no USER: the image would run as root");
    assert!(
        !user.starts_with("root") && !user.starts_with("0"),
        "runs as {user}"
    );
    let config_state = deploy("cartat.yaml");
    let state_dir = "/var/lib/cartat-rules";
    assert!(config_state.contains(&format!("path: {state_dir}/")));
    assert!(
        get("VOLUME").iter().any(|v| v.contains(state_dir)),
        "the state folder is not a volume"
    );
    let health = *get("HEALTHCHECK").first().expect("no HEALTHCHECK");
    assert!(
        health.contains(r#""cartat-rules", "health", "-c", "/etc/cartat-rules/cartat.yaml""#),
        "{health}"
    );
    let cmd = *get("CMD").last().expect("no CMD");
    assert!(cmd.contains("/etc/cartat-rules/cartat.yaml"), "{cmd}");
    // What the image copies from the build context exists in the repo.
    for line in text.replace("\\\n", " ").lines().map(str::trim) {
        let Some(args) = line.strip_prefix("COPY ") else {
            continue;
        };
        if args.starts_with("--from") {
            continue;
        }
        let parts: Vec<&str> = args.split_whitespace().collect();
        for src in &parts[..parts.len() - 1] {
            assert!(root().join(src).exists(), "COPY {src}: not in the repo");
        }
    }
    // The health check names a command the binary has.
    let (code, out, _) = run_cli(&["health", "--help"], &root());
    assert_eq!(code, 0);
    assert!(out.contains("--url"), "{out}");

    match Command::new("docker").arg("info").output() {
        Ok(o) if o.status.success() => {
            let out = Command::new("docker")
                .args([
                    "build",
                    "-f",
                    "deploy/Dockerfile",
                    "-t",
                    "cartat-rules:test",
                    ".",
                ])
                .current_dir(root())
                .output()
                .expect("docker build");
            assert!(
                out.status.success(),
                "docker build:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        _ => eprintln!("NOTE: no Docker daemon answers here; the Dockerfile is checked, not built"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_0_for_a_live_daemon_and_1_otherwise() {
    let gw = gateway("chats:\n  - { id: \"966500000001\", messages: [] }\n").await;
    let rx = receiver().await;
    let ws = Workspace::new();
    ws.write("rules/bot.yaml", &crate::poller::bot_rule(&rx));
    let cfg = ws.config(&gw, &["966500000001"], "server:\n  listen: 127.0.0.1:0\n");
    let daemon = Daemon::spawn(&cfg);
    let mut addr = None;
    wait_for(
        "the server's address",
        std::time::Duration::from_secs(15),
        || {
            addr = crate::metrics::server_addr(&daemon.output());
            addr.is_some()
        },
    )
    .await;
    let url = format!("http://{}/healthz", addr.unwrap());
    let (code, out, err) = run_cli(&["health", "--url", &url], ws.path());
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.starts_with("healthy"), "{out}");
    assert_eq!(daemon.stop(), 0);

    // The daemon is gone: nothing answers at that address.
    let (code, _, err) = run_cli(&["health", "--url", &url, "--timeout", "2s"], ws.path());
    assert_eq!(code, 1);
    assert!(err.contains("no answer from"), "{err}");

    // A config whose server is off has no /healthz to ask, and says so.
    let off = ws.write(
        "off.yaml",
        &std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("listen: 127.0.0.1:0", "listen: \"off\""),
    );
    let (code, _, err) = run_cli(&["health", "-c", off.to_str().unwrap()], ws.path());
    assert_eq!(code, 1);
    assert!(err.contains("server.listen: off"), "{err}");
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// A free port on 127.0.0.1 (bound, then let go) for a config that scripts read.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_deploy_script_checks_tests_plans_reloads_and_waits_for_the_new_set() {
    let gw = gateway("chats:\n  - id: \"966500000001\"\n").await;
    let rx = receiver().await;
    let ws = Workspace::new();
    ws.write("rules/old.yaml", &word_rule(&rx, "old", "hello"));
    let port = free_port();
    let listen = format!("127.0.0.1:{port}\n  admin_token: deploy-token");
    let text = Config {
        watch_rules: false,
        server: Some(&listen),
        ..Config::new(&gw, &["966500000001"])
    }
    .yaml();
    let cfg = ws.write("cartat.yaml", &text);
    let daemon = Daemon::spawn(&cfg);
    wait_for("the server", Duration::from_secs(10), || {
        daemon
            .output()
            .contains("health and metrics server listening")
    })
    .await;

    // The repo's rules and their tests, deployed over the one rule running now.
    let new = root().join("rules");
    let (_, out, _) = run_cli(
        &["check", "--format", "json", new.to_str().unwrap()],
        ws.path(),
    );
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let want = doc["fingerprint"].as_str().unwrap().to_string();
    let script = root().join("examples/deploy-rules.sh");
    let deploy = |new: &Path| {
        Command::new("bash")
            .arg(&script)
            .arg(new)
            .arg(ws.path().join("rules"))
            .arg(&cfg)
            .env("YES", "1")
            .env("CARTAT_RULES", BIN)
            .current_dir(ws.path())
            .output()
            .unwrap()
    };
    let run = deploy(&new);
    let out = String::from_utf8_lossy(&run.stdout);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "stdout:\n{out}\nstderr:\n{err}");
    for step in [
        "== check",
        "== test",
        "9 files, 21 tests: all passed",
        "== plan",
        "+ add      bot-keyword",
        "- remove   old",
        "== reload",
        &format!("reloaded: rule set {want} in force (9 rule(s))"),
    ] {
        assert!(out.contains(step), "no {step:?} in\n{out}");
    }
    assert!(
        out.ends_with(&format!("deployed: the daemon runs rule set {want}\n")),
        "{out}"
    );
    let live: Vec<String> = std::fs::read_dir(ws.path().join("rules"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(live.len(), 9, "the rules, not their tests: {live:?}");
    assert!(!live.contains(&"tests".to_string()));

    // A rule test that fails stops the deploy before anything is copied.
    let broken = ws.path().join("broken");
    std::fs::create_dir_all(broken.join("tests")).unwrap();
    for f in ["bot-keyword.yaml", "order-number.yaml"] {
        std::fs::copy(new.join(f), broken.join(f)).unwrap();
    }
    std::fs::write(
        broken.join("tests/t.yaml"),
        "tests:\n  - name: wrong\n    chat: { id: \"966500000001\", messages: [ { at: 1s, body: hi } ] }\n    polls: [ { at: 2s, fires: [bot-keyword] } ]\n",
    )
    .unwrap();
    let run = deploy(&broken);
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(!run.status.success(), "{out}");
    assert!(
        out.contains("- bot-keyword    expected, did not fire"),
        "{out}"
    );
    assert!(!out.contains("== copy"), "{out}");
    let (code, health, _) = run_cli(&["health", "-c", cfg.to_str().unwrap()], ws.path());
    assert_eq!(code, 0);
    assert!(health.contains(&format!("rule set {want}")), "{health}");

    // A set the daemon refuses — an empty folder, a deploy that lost its files: `check` finds
    // nothing wrong in no rules, the daemon refuses to run without any — and the previous
    // rules are put back on disk too (a restart would otherwise load nothing).
    let refused = ws.path().join("refused");
    std::fs::create_dir_all(&refused).unwrap();
    let run = deploy(&refused);
    let out = String::from_utf8_lossy(&run.stdout);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{out}");
    assert!(
        out.contains("== reload") && out.contains("not reloaded"),
        "{out}"
    );
    assert!(err.contains("putting the previous ones back"), "{err}");
    let live = ws.path().join("rules");
    assert!(
        live.join("bot-keyword.yaml").exists(),
        "the previous rules are back"
    );
    let (_, health, _) = run_cli(&["health", "-c", cfg.to_str().unwrap()], ws.path());
    assert!(health.contains(&format!("rule set {want}")), "{health}");
    assert_eq!(daemon.stop(), 0);
    gw.shutdown().await;
}
