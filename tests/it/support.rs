//! Makes tests read like the SPEC: `Gateway::start(scenario)`, `Receiver::start()`,
//! `Daemon::spawn(config)` running the real binary, a temp dir per test.

#![allow(dead_code)]

use cartat_rules::mock::{MockGateway, Scenario};
use cartat_rules::receiver::{Received, Receiver};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_cartat-rules");

/// The project root (for `rules/`, `examples/`).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Starts the mock gateway on 127.0.0.1:0 from scenario YAML.
pub async fn gateway(yaml: &str) -> MockGateway {
    let scenario = Scenario::from_yaml(yaml).expect("test scenario");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    MockGateway::start(listener, scenario).await.unwrap()
}

/// Starts a webhook receiver on 127.0.0.1:0.
pub async fn receiver() -> Receiver {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    Receiver::start(listener, None).await.unwrap()
}

/// A temp dir with a config and rule files in it.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Workspace {
        Workspace {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    /// A config for `gateway`, watching `chats`, delivering to loopback ([`Config`]'s defaults,
    /// `extra` appended; the metrics server off unless `extra` has a `server:` section).
    pub fn config(&self, gateway: &MockGateway, chats: &[&str], extra: &str) -> PathBuf {
        let server = if extra.contains("server:") {
            None
        } else {
            Some("\"off\"")
        };
        let text = Config {
            server,
            rest: extra,
            ..Config::new(gateway, chats)
        }
        .yaml();
        self.write("cartat.yaml", &text)
    }
}

/// The suite's one config builder: every test's `cartat.yaml` is made here, from these
/// defaults and what a test changes (field update syntax: `Config { poll: …, ..Config::new(…) }`).
pub struct Config<'a> {
    pub base_url: String,
    pub chats: Vec<String>,
    /// `api.timeout`.
    pub api_timeout: &'a str,
    /// `api.rate_limit`, as a YAML flow map; None: not written (`api_extra` may).
    pub rate_limit: Option<&'a str>,
    /// More lines of the `api:` section (indented two spaces).
    pub api_extra: &'a str,
    /// The whole `poll:` section's body (indented), or "" for the defaults.
    pub poll: &'a str,
    /// `rules.watch`.
    pub watch_rules: bool,
    pub webhook_timeout: &'a str,
    pub retry_scale: f64,
    /// `server.listen`; None: no `server:` section (the test writes its own in `rest`).
    pub server: Option<&'a str>,
    /// Top-level sections appended as they are.
    pub rest: &'a str,
    /// Several gateway accounts (`accounts:`) instead of `api:` and `chats:` (`base_url`
    /// and `chats` are then not written); each with the `api:` settings above.
    pub accounts: Vec<Account>,
}

/// One account of [`Config::accounts`].
pub struct Account {
    pub name: String,
    pub base_url: String,
    pub token: String,
    pub chats: Vec<String>,
}

impl Account {
    /// Account `name` on `gateway` (with its token), watching `chats`.
    pub fn on<S: AsRef<str>>(name: &str, gateway: &MockGateway, chats: &[S]) -> Account {
        Account {
            name: name.into(),
            base_url: gateway.base_url(),
            token: gateway.token().into(),
            chats: chats.iter().map(|c| c.as_ref().to_owned()).collect(),
        }
    }
}

impl<'a> Config<'a> {
    pub fn new<S: AsRef<str>>(gateway: &MockGateway, chats: &[S]) -> Config<'a> {
        Config {
            base_url: gateway.base_url(),
            chats: chats.iter().map(|c| c.as_ref().to_owned()).collect(),
            api_timeout: "3s",
            rate_limit: Some("{ per_second: 20, burst: 5 }"),
            api_extra: "",
            poll: "  interval: 300ms\n",
            watch_rules: true,
            webhook_timeout: "2s",
            retry_scale: 0.01,
            server: Some("\"off\""),
            rest: "",
            accounts: Vec::new(),
        }
    }

    pub fn yaml(&self) -> String {
        let chats: String = self
            .chats
            .iter()
            .map(|c| format!("  - \"{c}\"\n"))
            .collect();
        let poll = if self.poll.is_empty() {
            String::new()
        } else {
            format!("poll:\n{}", self.poll)
        };
        let rate = self
            .rate_limit
            .map(|r| format!("  rate_limit: {r}\n"))
            .unwrap_or_default();
        let server = self
            .server
            .map(|l| format!("server:\n  listen: {l}\n"))
            .unwrap_or_default();
        let gateways = if self.accounts.is_empty() {
            format!(
                "api:\n  base_url: {}\n  token: mock-token\n  timeout: {}\n{rate}  message_limit: 20\n{}\
                 chats:\n{chats}",
                self.base_url, self.api_timeout, self.api_extra,
            )
        } else {
            let indent =
                |text: &str| -> String { text.lines().map(|l| format!("    {l}\n")).collect() };
            let mut out = String::from("accounts:\n");
            for a in &self.accounts {
                let chats: String = a
                    .chats
                    .iter()
                    .map(|c| format!("      - \"{c}\"\n"))
                    .collect();
                out.push_str(&format!(
                    "  - name: {}\n    api:\n      base_url: {}\n      token: {}\n      timeout: {}\n{}      message_limit: 20\n{}    chats:\n{chats}",
                    a.name,
                    a.base_url,
                    a.token,
                    self.api_timeout,
                    indent(&rate),
                    indent(self.api_extra),
                ));
            }
            out
        };
        format!(
            "{gateways}{poll}state:\n  path: ./state/test.db\nrules:\n  paths: [./rules]\n  watch: {}\n\
             webhooks:\n  timeout: {}\n  allow_private_networks: [127.0.0.1/32]\n  retry_scale: {}\n\
             log:\n  mask_phone_numbers: false\n{server}{}",
            self.watch_rules, self.webhook_timeout, self.retry_scale, self.rest
        )
    }
}

/// The real daemon, as a child process.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn spawn(config: &Path) -> Daemon {
        let log = config.with_file_name(format!(
            "daemon-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(BIN)
            .args(["run", "-c"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn the daemon");
        Daemon { child, log }
    }

    /// Spawns the daemon on `config` and waits until `gateway` has had its first request.
    pub async fn spawn_polled(config: &Path, gateway: &MockGateway) -> Daemon {
        let daemon = Daemon::spawn(config);
        wait_for("the first poll", SOON, || !gateway.requests().is_empty()).await;
        daemon
    }

    /// Waits for the process to exit on its own (after a signal, say): its status and how
    /// long that took. Fails the test after `limit`.
    pub async fn exit_within(&mut self, limit: Duration) -> (std::process::ExitStatus, Duration) {
        let t = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the daemon") {
                return (status, t.elapsed());
            }
            assert!(
                t.elapsed() < limit,
                "the daemon did not exit within {limit:?}\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// SIGTERM, then wait for the exit code.
    pub fn stop(mut self) -> i32 {
        self.signal(libc::SIGTERM);
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = self.child.kill();
                panic!(
                    "the daemon did not stop within 30s after SIGTERM:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `cond` holds, polling; panics with `what` after `timeout`.
pub async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How long a test waits for what the daemon should do within a few poll intervals.
pub const SOON: Duration = Duration::from_secs(20);

/// Waits until `rx` has received at least `n` webhooks (what comes after is the test's to
/// check); fails the test with `what` after [`SOON`].
pub async fn wait_received(rx: &Receiver, n: usize, what: &str) {
    wait_for(what, SOON, || rx.received().len() >= n).await;
}

/// A message rule `id` that sends every message naming one of `words` (a YAML list's items,
/// e.g. `alpha` or `help, urgent`) to `rx` at `/w`.
pub fn word_rule(rx: &Receiver, id: &str, words: &str) -> String {
    format!(
        "id: {id}\nmatch: {{ body: {{ any: [{words}] }} }}\nactions: [ {{ webhook: {{ url: \"{}\" }} }} ]\n",
        rx.url("/w")
    )
}

/// The suite's rule: `id` fires on inbound messages with the word `bot` or `بوت`, one webhook
/// action per url. (Other rules are written out where a test is about them.)
pub fn bot_rule(id: &str, urls: &[String]) -> String {
    let actions: String = urls
        .iter()
        .map(|u| format!("  - webhook: {{ url: \"{u}\" }}\n"))
        .collect();
    format!(
        "id: {id}\nmatch:\n  from_me: false\n  body:\n    any: [\"bot\", \"بوت\"]\n    words: true\nactions:\n{actions}"
    )
}

/// The `message.body` of every standard envelope received, in order.
pub fn bodies(received: &[Received]) -> Vec<String> {
    received
        .iter()
        .map(|r| {
            r.json()["message"]["body"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

/// How long a command-line run may take before the test fails (a `run` that was expected to
/// refuse its config and started the daemon instead would otherwise hang the suite).
pub const CLI_DEADLINE: Duration = Duration::from_secs(60);

/// Runs the binary to completion with args; returns (exit code, stdout, stderr). Kills it and
/// fails the test after [`CLI_DEADLINE`].
pub fn run_cli(args: &[&str], cwd: &Path) -> (i32, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the binary");
    let read = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = read(Box::new(child.stdout.take().unwrap()));
    let err = read(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the binary") {
            break status;
        }
        if start.elapsed() > CLI_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`cartat-rules {}` still running after {CLI_DEADLINE:?}; killed\nstderr:\n{}",
                args.join(" "),
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status.code().unwrap_or(-1),
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    )
}

/// A process's peak resident memory (`VmHWM` in `/proc/PID/status`), in KiB; 0 if unreadable.
pub fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A mock scenario of these chats, each without messages (tests push what they need).
pub fn quiet_chats(chats: &[String]) -> String {
    let mut s = String::from("chats:\n");
    for c in chats {
        s.push_str(&format!("  - {{ id: \"{c}\", messages: [] }}\n"));
    }
    s
}
