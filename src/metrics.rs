//! The daemon's metrics and health, in one handle owned by the daemon (no global registry).
//!
//! Owns: every metric family and its name, the health flags `/healthz` reads, and rendering
//! the Prometheus text exposition. Labels are bounded: outcomes and kinds are fixed words and
//! rule ids come from the config — never a phone number, a URL or an error string.
//! Must not: do I/O (the server reads the store and hands the figures in).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};

type Outcome = [(&'static str, &'static str); 1];
type FloatCounter = Counter<f64, AtomicU64>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// How a poll of one chat ended (the `outcome` label of `cartat_polls_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollOutcome {
    Ok,
    RateLimited,
    Unauthorized,
    NotFound,
    ServerError,
    HttpError,
    Timeout,
    Transport,
    BadReply,
    StoreError,
}

impl PollOutcome {
    /// Every outcome, so each series is exposed (at 0) from the start; in declaration order
    /// (`outcome as usize` is an outcome's place here).
    pub const ALL: [PollOutcome; 10] = [
        PollOutcome::Ok,
        PollOutcome::RateLimited,
        PollOutcome::Unauthorized,
        PollOutcome::NotFound,
        PollOutcome::ServerError,
        PollOutcome::HttpError,
        PollOutcome::Timeout,
        PollOutcome::Transport,
        PollOutcome::BadReply,
        PollOutcome::StoreError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PollOutcome::Ok => "ok",
            PollOutcome::RateLimited => "rate_limited",
            PollOutcome::Unauthorized => "unauthorized",
            PollOutcome::NotFound => "not_found",
            PollOutcome::ServerError => "server_error",
            PollOutcome::HttpError => "http_error",
            PollOutcome::Timeout => "timeout",
            PollOutcome::Transport => "transport",
            PollOutcome::BadReply => "bad_reply",
            PollOutcome::StoreError => "store_error",
        }
    }
}

/// The `kind` label of `cartat_messages_total`.
const MESSAGE_KINDS: [&str; 3] = ["new", "updated", "skipped"];
/// The `outcome` label of `cartat_deliveries_total`.
const DELIVERY_OUTCOMES: [&str; 4] = ["delivered", "retry", "dead", "gone"];

/// The process's own figures for `/metrics` (read from `/proc` by the server).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessFigures {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub open_fds: u64,
    pub start_time_seconds: f64,
}

/// How many store errors in a row make `/healthz` fail.
pub(crate) const UNHEALTHY_STORE_ERRORS: u32 = 3;

/// The metrics and health of one daemon; share it behind an `Arc`.
pub struct Metrics {
    registry: Registry,
    /// In a cluster: this instance's name (for `/healthz`).
    instance: std::sync::OnceLock<String>,
    polls: Family<[(&'static str, String); 2], Counter>,
    poll_duration: Histogram,
    messages: Family<Outcome, Counter>,
    matches: Family<[(&'static str, String); 1], Counter>,
    muted: Family<[(&'static str, String); 1], Counter>,
    leases: Gauge,
    lease_takeovers: Counter,
    fenced: Counter,
    rule_errors: Family<[(&'static str, String); 1], Counter>,
    deliveries: Family<Outcome, Counter>,
    outbox_scans: Family<Outcome, Counter>,
    gaps: Counter,
    budget_wait: Family<[(&'static str, String); 1], FloatCounter>,
    /// The gateway accounts' names, by index (the `account` label).
    accounts: Vec<String>,
    /// Each account's `cartat_polls_total` series, by outcome (in [`PollOutcome::ALL`]'s
    /// order), and its `cartat_budget_wait_seconds_total`: taken once, so a poll counts
    /// without building its labels.
    poll_series: Vec<Vec<Counter>>,
    budget_series: Vec<FloatCounter>,
    outbox_depth: Gauge,
    dead_letters: Gauge,
    max_lag: FloatGauge,
    chats: Gauge,
    /// Unix ms of each chat's last successful poll, by chat key (a chat a reload removed holds
    /// `i64::MAX`: never late).
    last_ok_ms: std::sync::RwLock<std::collections::HashMap<String, AtomicI64>>,
    started_ms: i64,
    rules_loaded: AtomicBool,
    /// The rule set in force: its fingerprint, and the series that says it.
    rule_set: std::sync::Mutex<String>,
    rule_set_info: Family<[(&'static str, String); 1], Gauge>,
    store_errors_in_a_row: AtomicU32,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    /// A handle for no chats (components built before the daemon wires the real one).
    fn default() -> Self {
        Metrics::new(&[crate::gateway::model::DEFAULT_ACCOUNT], &[])
    }
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

impl Metrics {
    /// A handle for gateway `accounts` (by name, in the config's order) and the watched
    /// `chats` (by key), every family registered.
    pub fn new(accounts: &[&str], chats: &[&str]) -> Metrics {
        let mut registry = Registry::with_prefix("cartat");
        let polls = Family::<[(&'static str, String); 2], Counter>::default();
        registry.register(
            "polls",
            "Polls of a chat, by gateway account and outcome (ok, rate_limited, unauthorized, not_found, server_error, http_error, timeout, transport, bad_reply, store_error)",
            polls.clone(),
        );
        let poll_duration = Histogram::new(exponential_buckets(0.002, 2.0, 14));
        registry.register(
            "poll_duration_seconds",
            "Time one poll of a chat took: fetch (with gap recovery), diff, rules and commit",
            poll_duration.clone(),
        );
        let messages = Family::<Outcome, Counter>::default();
        registry.register(
            "messages",
            "Messages seen, by kind: new (evaluated), updated (edit, revoke), skipped (unparsable, counted once)",
            messages.clone(),
        );
        let matches = Family::<[(&'static str, String); 1], Counter>::default();
        registry.register("rule_matches", "Rules fired, by rule id", matches.clone());
        let leases = Gauge::default();
        registry.register(
            "leases",
            "In a cluster: the chat leases this instance holds",
            leases.clone(),
        );
        let lease_takeovers = Counter::default();
        registry.register(
            "lease_takeovers",
            "In a cluster: leases this instance took (a chat new to it, from an instance gone or over its share)",
            lease_takeovers.clone(),
        );
        let fenced = Counter::default();
        registry.register(
            "fenced_commits",
            "In a cluster: poll commits refused because the chat's lease moved on while the poll ran",
            fenced.clone(),
        );
        let muted = Family::<[(&'static str, String); 1], Counter>::default();
        registry.register(
            "rule_muted",
            "Firings whose actions a silence muted (`cartat-rules silence`), by rule id",
            muted.clone(),
        );
        let rule_errors = Family::<[(&'static str, String); 1], Counter>::default();
        registry.register(
            "rule_errors",
            "Rule evaluations that failed (a script error or bound, an action that could not be made), by rule id; logged at most once a minute per rule and chat",
            rule_errors.clone(),
        );
        let deliveries = Family::<Outcome, Counter>::default();
        registry.register(
            "deliveries",
            "Webhook delivery attempts, by outcome (delivered, retry, dead)",
            deliveries.clone(),
        );
        let outbox_scans = Family::<Outcome, Counter>::default();
        registry.register(
            "outbox_scans",
            "The dispatcher's outbox reads, by kind: full (every chat and url's oldest row; once a second, and when a slot frees for a row that waited) and groups (the rows a poll or a delivery changed)",
            outbox_scans.clone(),
        );
        let gaps = Counter::default();
        registry.register(
            "gaps_detected",
            "Polls where more messages arrived than the largest limit returns (gap_detected)",
            gaps.clone(),
        );
        let budget_wait = Family::<[(&'static str, String); 1], FloatCounter>::default();
        registry.register(
            "budget_wait_seconds",
            "Time spent waiting for a gateway account's rate budget (including Retry-After pauses), by account",
            budget_wait.clone(),
        );
        let outbox_depth = Gauge::default();
        registry.register(
            "outbox_depth",
            "Deliveries pending in the outbox",
            outbox_depth.clone(),
        );
        let dead_letters = Gauge::default();
        registry.register(
            "dead_letters",
            "Deliveries dead-lettered in the outbox (re-send with `cartat-rules outbox retry`)",
            dead_letters.clone(),
        );
        let max_lag = FloatGauge::default();
        registry.register(
            "chat_lag_seconds_max",
            "The largest time since a watched chat was last polled successfully",
            max_lag.clone(),
        );
        let chats_gauge = Gauge::default();
        chats_gauge.set(chats.len() as i64);
        registry.register("chats_watched", "Watched chats", chats_gauge.clone());
        let build_info = Family::<[(&'static str, &'static str); 1], Gauge>::default();
        build_info
            .get_or_create(&[("version", env!("CARGO_PKG_VERSION"))])
            .set(1);
        registry.register(
            "build_info",
            "The running build (always 1), by version",
            build_info,
        );
        let rule_set_info = Family::<[(&'static str, String); 1], Gauge>::default();
        registry.register(
            "rule_set",
            "The rule set in force (always 1), by fingerprint (`cartat-rules check` prints a folder's)",
            rule_set_info.clone(),
        );
        // Every series with a fixed label set exists from the start, at 0: a dashboard's rate()
        // and an alert on `increase(...) > 0` see the first event, not a series appearing.
        let poll_series: Vec<Vec<Counter>> = accounts
            .iter()
            .map(|account| {
                PollOutcome::ALL
                    .iter()
                    .map(|o| {
                        polls
                            .get_or_create(&[
                                ("account", account.to_string()),
                                ("outcome", o.as_str().to_string()),
                            ])
                            .clone()
                    })
                    .collect()
            })
            .collect();
        let budget_series: Vec<FloatCounter> = accounts
            .iter()
            .map(|account| {
                budget_wait
                    .get_or_create(&[("account", account.to_string())])
                    .clone()
            })
            .collect();
        for k in MESSAGE_KINDS {
            let _ = messages.get_or_create(&[("kind", k)]);
        }
        for o in DELIVERY_OUTCOMES {
            let _ = deliveries.get_or_create(&[("outcome", o)]);
        }
        for k in ["full", "groups"] {
            let _ = outbox_scans.get_or_create(&[("kind", k)]);
        }
        let started_ms = now_ms();
        Metrics {
            registry,
            polls,
            poll_duration,
            messages,
            matches,
            muted,
            leases,
            lease_takeovers,
            fenced,
            rule_errors,
            deliveries,
            outbox_scans,
            gaps,
            budget_wait,
            accounts: accounts.iter().map(|a| a.to_string()).collect(),
            poll_series,
            budget_series,
            outbox_depth,
            dead_letters,
            max_lag,
            chats: chats_gauge,
            last_ok_ms: std::sync::RwLock::new(
                chats
                    .iter()
                    .map(|c| (c.to_string(), AtomicI64::new(started_ms)))
                    .collect(),
            ),
            started_ms,
            rules_loaded: AtomicBool::new(false),
            rule_set: Default::default(),
            rule_set_info,
            instance: std::sync::OnceLock::new(),
            store_errors_in_a_row: AtomicU32::new(0),
        }
    }

    /// The name of account `index` (the `account` label).
    fn account(&self, index: usize) -> String {
        self.accounts.get(index).cloned().unwrap_or_default()
    }

    /// One poll of chat `chat` (its key) of account `account` ended.
    pub fn poll(&self, account: usize, chat: &str, outcome: PollOutcome, seconds: f64) {
        match self
            .poll_series
            .get(account)
            .and_then(|s| s.get(outcome as usize))
        {
            Some(counter) => {
                counter.inc();
            }
            None => {
                self.polls
                    .get_or_create(&[
                        ("account", self.account(account)),
                        ("outcome", outcome.as_str().to_string()),
                    ])
                    .inc();
            }
        }
        self.poll_duration.observe(seconds);
        match outcome {
            PollOutcome::Ok => {
                let last_ok = self.last_ok_ms.read().unwrap_or_else(|e| e.into_inner());
                if let Some(t) = last_ok.get(chat) {
                    // A chat a reload removed stays "never late", whatever answers late.
                    let now = now_ms();
                    let _ = t.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                        (v != i64::MAX).then_some(now)
                    });
                }
                self.store_errors_in_a_row.store(0, Ordering::Relaxed);
            }
            PollOutcome::StoreError => {
                self.store_errors_in_a_row.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    /// Messages seen by one poll.
    pub fn messages(&self, new: usize, updated: usize, skipped: usize) {
        for (kind, n) in [("new", new), ("updated", updated), ("skipped", skipped)] {
            if n > 0 {
                self.messages
                    .get_or_create(&[("kind", kind)])
                    .inc_by(n as u64);
            }
        }
    }

    /// Exposes the per-rule series of these rules at 0 (the rules loaded at start).
    pub fn known_rules<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        for id in ids {
            let _ = self.matches.get_or_create(&[("rule", id.to_string())]);
            let _ = self.rule_errors.get_or_create(&[("rule", id.to_string())]);
        }
    }

    /// A rule fired (rule ids are bounded by the config).
    pub fn rule_matched(&self, rule: &str) {
        self.matches
            .get_or_create(&[("rule", rule.to_string())])
            .inc();
    }

    /// In a cluster: how many leases this instance holds.
    pub fn set_leases(&self, n: usize) {
        self.leases.set(n as i64);
    }

    /// In a cluster: this instance took a lease.
    pub fn lease_taken(&self) {
        self.lease_takeovers.inc();
    }

    /// In a cluster: a commit was refused by its lease's fencing token.
    pub fn fenced(&self) {
        self.fenced.inc();
    }

    /// A silence muted a rule's firing.
    pub fn rule_muted(&self, rule: &str) {
        self.muted
            .get_or_create(&[("rule", rule.to_string())])
            .inc();
    }

    /// A rule failed on a message or a chat.
    pub fn rule_failed(&self, rule: &str) {
        self.rule_errors
            .get_or_create(&[("rule", rule.to_string())])
            .inc();
    }

    /// One webhook attempt ended: `delivered`, `retry` or `dead`.
    pub fn delivery(&self, outcome: &'static str) {
        self.deliveries.get_or_create(&[("outcome", outcome)]).inc();
    }

    /// The dispatcher read the outbox: a full scan, or the groups that changed.
    pub fn outbox_scan(&self, full: bool) {
        let kind = if full { "full" } else { "groups" };
        self.outbox_scans.get_or_create(&[("kind", kind)]).inc();
    }

    pub fn gap_detected(&self) {
        self.gaps.inc();
    }

    pub fn budget_waited(&self, account: usize, d: std::time::Duration) {
        match self.budget_series.get(account) {
            Some(counter) => {
                counter.inc_by(d.as_secs_f64());
            }
            None => {
                self.budget_wait
                    .get_or_create(&[("account", self.account(account))])
                    .inc_by(d.as_secs_f64());
            }
        }
    }

    /// The rule set now in force, by its fingerprint (`/healthz`, `cartat_rule_set`).
    pub fn set_rule_set(&self, fingerprint: &str) {
        let mut current = self.rule_set.lock().unwrap_or_else(|e| e.into_inner());
        if !current.is_empty() {
            self.rule_set_info
                .remove(&[("fingerprint", current.clone())]);
        }
        self.rule_set_info
            .get_or_create(&[("fingerprint", fingerprint.to_string())])
            .set(1);
        *current = fingerprint.to_string();
    }

    /// The fingerprint of the rule set in force ("" before one is set).
    pub fn rule_set(&self) -> String {
        self.rule_set
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_rules_loaded(&self, loaded: bool) {
        self.rules_loaded.store(loaded, Ordering::Relaxed);
    }

    /// A chat a config reload added: late from now if never polled.
    pub fn add_chat(&self, chat: &str) {
        let mut last_ok = self.last_ok_ms.write().unwrap_or_else(|e| e.into_inner());
        match last_ok.get(chat) {
            Some(t) => {
                if t.swap(now_ms(), Ordering::Relaxed) == i64::MAX {
                    self.chats.inc();
                }
            }
            None => {
                last_ok.insert(chat.to_string(), AtomicI64::new(now_ms()));
                self.chats.inc();
            }
        }
    }

    /// A chat a config reload removed: no longer counted, never late.
    pub fn retire_chat(&self, chat: &str) {
        if let Some(t) = self
            .last_ok_ms
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(chat)
            && t.swap(i64::MAX, Ordering::Relaxed) != i64::MAX
        {
            self.chats.dec();
        }
    }

    /// A chat a reload removed and added back: counted again, late from now if not polled.
    pub fn revive_chat(&self, chat: &str) {
        if let Some(t) = self
            .last_ok_ms
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(chat)
            && t.swap(now_ms(), Ordering::Relaxed) == i64::MAX
        {
            self.chats.inc();
        }
    }

    /// The largest time since a chat's last successful poll (since start for one never polled).
    pub fn max_lag_seconds(&self) -> f64 {
        let now = now_ms();
        let oldest = self
            .last_ok_ms
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|t| t.load(Ordering::Relaxed))
            .min()
            .unwrap_or(now);
        (now - oldest).max(0) as f64 / 1000.0
    }

    /// Whether the daemon is ready, or why not (`store_ok`: a store query just succeeded).
    pub fn health(&self, store_ok: Result<(), String>) -> Result<String, String> {
        if !self.rules_loaded.load(Ordering::Relaxed) {
            return Err("rules not loaded".into());
        }
        store_ok.map_err(|e| format!("state store: {e}"))?;
        let errors = self.store_errors_in_a_row.load(Ordering::Relaxed);
        if errors >= UNHEALTHY_STORE_ERRORS {
            return Err(format!(
                "state store: the last {errors} poll commits failed"
            ));
        }
        let cluster = match self.instance.get() {
            Some(me) => format!(", instance {me} holding {} lease(s)", self.leases.get()),
            None => String::new(),
        };
        Ok(format!(
            "ok: {} chats watched, up {}s, rule set {}{cluster}",
            self.chats.get(),
            (now_ms() - self.started_ms) / 1000,
            self.rule_set()
        ))
    }

    /// In a cluster: this instance's name, said by `/healthz`.
    pub fn set_instance(&self, me: &str) {
        let _ = self.instance.set(me.to_string());
    }

    /// The Prometheus text exposition, with the gauges read from the store just before and
    /// the process's own figures (the usual `process_*` names, without our prefix).
    pub fn render(
        &self,
        outbox_pending: i64,
        outbox_dead: i64,
        process: Option<ProcessFigures>,
    ) -> String {
        self.outbox_depth.set(outbox_pending);
        self.dead_letters.set(outbox_dead);
        self.max_lag.set(self.max_lag_seconds());
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        if let Some(p) = process {
            let families = format!(
                "# HELP process_cpu_seconds Total user and system CPU time spent in seconds.\n\
                 # TYPE process_cpu_seconds counter\n\
                 process_cpu_seconds_total {}\n\
                 # HELP process_resident_memory_bytes Resident memory size in bytes.\n\
                 # TYPE process_resident_memory_bytes gauge\n\
                 process_resident_memory_bytes {}\n\
                 # HELP process_open_fds Number of open file descriptors.\n\
                 # TYPE process_open_fds gauge\n\
                 process_open_fds {}\n\
                 # HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n\
                 # TYPE process_start_time_seconds gauge\n\
                 process_start_time_seconds {}\n",
                p.cpu_seconds, p.resident_bytes, p.open_fds, p.start_time_seconds
            );
            // Before the exposition's closing `# EOF`.
            match out.rfind("# EOF") {
                Some(at) => out.insert_str(at, &families),
                None => out.push_str(&families),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_family_with_bounded_labels() {
        let m = Metrics::new(
            &["default", "sales"],
            &["966500000001@c.us", "sales/966500000002@c.us"],
        );
        m.set_rules_loaded(true);
        m.poll(0, "966500000001@c.us", PollOutcome::Ok, 0.01);
        m.poll(1, "sales/966500000002@c.us", PollOutcome::NotFound, 0.02);
        m.messages(3, 1, 1);
        m.rule_matched("bot-keyword");
        m.delivery("delivered");
        m.gap_detected();
        m.budget_waited(1, std::time::Duration::from_millis(250));
        let text = m.render(4, 1, None);
        for want in [
            "cartat_polls_total{account=\"default\",outcome=\"ok\"} 1",
            "cartat_polls_total{account=\"sales\",outcome=\"not_found\"} 1",
            "cartat_polls_total{account=\"sales\",outcome=\"ok\"} 0",
            "cartat_poll_duration_seconds_count 2",
            "cartat_messages_total{kind=\"new\"} 3",
            "cartat_messages_total{kind=\"skipped\"} 1",
            "cartat_rule_matches_total{rule=\"bot-keyword\"} 1",
            "cartat_deliveries_total{outcome=\"delivered\"} 1",
            "cartat_gaps_detected_total 1",
            "cartat_budget_wait_seconds_total{account=\"sales\"} 0.25",
            "cartat_budget_wait_seconds_total{account=\"default\"} 0",
            "cartat_outbox_depth 4",
            "cartat_dead_letters 1",
            "cartat_chat_lag_seconds_max ",
            "cartat_chats_watched 2",
        ] {
            assert!(text.contains(want), "missing `{want}` in\n{text}");
        }
    }

    #[test]
    fn every_fixed_series_is_there_at_zero_with_help_and_type_and_the_process_figures() {
        let m = Metrics::new(&["default"], &["966500000001@c.us"]);
        m.known_rules(["bot-keyword"]);
        let text = m.render(
            0,
            0,
            Some(ProcessFigures {
                cpu_seconds: 1.5,
                resident_bytes: 20_000_000,
                open_fds: 12,
                start_time_seconds: 1_700_000_000.0,
            }),
        );
        for o in PollOutcome::ALL {
            let series = format!(
                "cartat_polls_total{{account=\"default\",outcome=\"{}\"}} 0",
                o.as_str()
            );
            assert!(text.contains(&series), "missing `{series}` in\n{text}");
        }
        for want in [
            "# TYPE cartat_polls counter",
            "# HELP cartat_polls ",
            "cartat_messages_total{kind=\"updated\"} 0",
            "cartat_deliveries_total{outcome=\"gone\"} 0",
            "cartat_rule_matches_total{rule=\"bot-keyword\"} 0",
            "cartat_rule_errors_total{rule=\"bot-keyword\"} 0",
            "cartat_gaps_detected_total 0",
            concat!(
                "cartat_build_info{version=\"",
                env!("CARGO_PKG_VERSION"),
                "\"} 1"
            ),
            "# TYPE process_cpu_seconds counter",
            "process_cpu_seconds_total 1.5",
            "process_resident_memory_bytes 20000000",
            "process_open_fds 12",
            "process_start_time_seconds 1700000000",
        ] {
            assert!(text.contains(want), "missing `{want}` in\n{text}");
        }
        assert!(
            text.ends_with("# EOF\n"),
            "the exposition still ends with # EOF"
        );
    }

    #[test]
    fn an_outcome_s_place_in_all_is_its_discriminant() {
        for (i, o) in PollOutcome::ALL.iter().enumerate() {
            assert_eq!(*o as usize, i, "{}", o.as_str());
        }
    }

    #[test]
    fn health_needs_rules_and_a_working_store() {
        let m = Metrics::new(&["default"], &["966500000001@c.us"]);
        assert!(m.health(Ok(())).is_err(), "rules not loaded yet");
        m.set_rules_loaded(true);
        assert!(m.health(Ok(())).is_ok());
        assert!(m.health(Err("disk I/O error".into())).is_err());
        for _ in 0..UNHEALTHY_STORE_ERRORS {
            m.poll(0, "966500000001@c.us", PollOutcome::StoreError, 0.0);
        }
        assert!(m.health(Ok(())).unwrap_err().contains("commits failed"));
        m.poll(0, "966500000001@c.us", PollOutcome::Ok, 0.0);
        assert!(m.health(Ok(())).is_ok(), "a successful commit heals");
    }

    #[test]
    fn health_in_a_cluster_names_the_instance_and_its_leases() {
        let m = Metrics::new(&["default"], &[]);
        m.set_rules_loaded(true);
        assert!(!m.health(Ok(())).unwrap().contains("instance"));
        m.set_instance("vm-42-abcd");
        m.set_leases(2);
        let text = m.health(Ok(())).unwrap();
        assert!(
            text.ends_with(", instance vm-42-abcd holding 2 lease(s)"),
            "{text}"
        );
        m.lease_taken();
        m.fenced();
        let out = m.render(0, 0, None);
        for line in [
            "cartat_leases 2",
            "cartat_lease_takeovers_total 1",
            "cartat_fenced_commits_total 1",
        ] {
            assert!(out.contains(line), "{line} in\n{out}");
        }
    }
}
