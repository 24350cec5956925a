//! The command line. Each command is a function returning its exit code; errors
//! are printed here, once, with what the user can do about them.

mod check;
mod demo;
mod health;
pub(crate) mod init;
mod mock_gateway;
mod outbox;
mod plan;
mod reload;
mod ruletest;
mod run;
mod schema;
mod silence;
mod test;

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Turns WhatsApp chats served by the Cartat gateway into automations: rules in YAML,
/// signed webhooks and logs, no missed and no repeated action across crashes.
#[derive(Debug, Parser)]
#[command(name = "cartat-rules", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub log: LogArgs,
}

/// Verbosity and log format, for every command.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// More output (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Log line format.
    #[arg(long, value_enum, global = true)]
    pub log_format: Option<LogFormatArg>,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormatArg {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: poll the watched chats, evaluate the rules, deliver the actions,
    /// until SIGINT/SIGTERM (then finish in-flight work and exit 0). Exit 1 on a bad config.
    Run {
        /// The config file.
        #[arg(short, long, default_value = "cartat.yaml", env = "CARTAT_CONFIG")]
        config: PathBuf,
    },
    /// Validate the config and every rule file without touching the network. Prints each
    /// problem as `path:line:col: message`; exit 0 when all is valid, 1 otherwise.
    Check {
        /// The config file (its `rules.paths` are checked too).
        #[arg(short, long, default_value = "cartat.yaml")]
        config: PathBuf,
        /// Rule files or folders to check instead of the config's `rules.paths`. With paths
        /// and no config file present, only the rules are checked.
        paths: Vec<PathBuf>,
        /// How to print the findings: `text`, `json` (for machines) or `github` (annotations
        /// on the pull request's lines in GitHub Actions).
        #[arg(long, value_enum, default_value = "text")]
        format: CheckFormat,
        /// Warnings fail the check too (exit 1), not only errors.
        #[arg(long)]
        strict: bool,
    },
    /// Test rules offline. Without `--input`: run the rule tests (`RULES/tests/*.yaml`, or
    /// `--tests`), which poll a chat at given times and say exactly what must fire; prints a
    /// diff of what did not go as expected and exits 1. With `--input`: a dry run on a saved
    /// `/chats` reply (or a JSON array of them) that prints which rule fired on which message
    /// and the exact webhook bodies. Either way nothing is sent and no state is written.
    Test {
        /// A rule file or folder.
        #[arg(long)]
        rules: PathBuf,
        /// Rule tests to run, a file or a folder (default: the `tests` folder of `--rules`).
        #[arg(long, conflicts_with_all = ["input", "explain", "at"])]
        tests: Option<PathBuf>,
        /// A saved `/chats/{id}` reply, or a JSON array of replies: a dry run instead of tests.
        #[arg(long)]
        input: Option<PathBuf>,
        /// `text` for people; `json`: with tests, one document (ok, counts, every test's polls
        /// and problems), with `--input`, one object per line and firing.
        #[arg(long, value_enum, default_value = "text")]
        format: TestFormat,
        /// With `--input`: also show, per message and rule, the normalized text and the first
        /// condition that failed.
        #[arg(long, requires = "input")]
        explain: bool,
        /// With `--input`: evaluate chat rules (`on: chat`) as of this time (RFC 3339, e.g.
        /// 2026-11-28T10:00:00Z); default: now. `for:` is reported, not waited for.
        #[arg(long, value_parser = parse_time, requires = "input")]
        at: Option<i64>,
        /// The time zone of `when:` conditions that name none, as the config's
        /// `rules.timezone` (IANA, e.g. Asia/Riyadh); default: the `--config`'s, else UTC.
        #[arg(long, value_parser = parse_timezone)]
        timezone: Option<jiff::tz::TimeZone>,
        /// A config to take `rules.timezone` from, so rules are tested in the zone they run in.
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Inspect the delivery queue and re-send dead-lettered deliveries (same delivery_id).
    Outbox {
        /// The config file (for `state.path`); before or after `list`/`retry`.
        #[arg(short, long, default_value = "cartat.yaml", global = true)]
        config: PathBuf,
        #[command(subcommand)]
        action: Option<OutboxAction>,
    },
    /// Mute rules for a while (by rule, chat or both): their firings take no action and are
    /// logged as muted; a running daemon sees a change within a second. Kept in the state file.
    Silence {
        /// The config file (for `state.path` and the rules); before or after the action.
        #[arg(short, long, default_value = "cartat.yaml", global = true)]
        config: PathBuf,
        #[command(subcommand)]
        action: SilenceAction,
    },
    /// The instances of a cluster (`cluster:` with `state.url`): which are alive, when each was
    /// last heard from, and how many chats each polls.
    Cluster {
        /// The config file (for `state.url` and `cluster.lease_ttl`).
        #[arg(short, long, default_value = "cartat.yaml", global = true)]
        config: PathBuf,
        #[command(subcommand)]
        action: ClusterAction,
    },
    /// Offline end-to-end demo: a built-in mock gateway, a local webhook receiver, and the
    /// engine on `rules/` with `examples/demo.yaml`; prints every fired action.
    Demo {
        /// How long to run.
        #[arg(long, default_value = "20s", value_parser = parse_duration)]
        duration: Duration,
        /// A config to run instead of the built-in one (`examples/demo.yaml` with the rules of
        /// `rules/`, both built into the binary).
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// The mock gateway's scenario (default: the built-in conversation).
        #[arg(long)]
        scenario: Option<PathBuf>,
    },
    /// The fake Cartat used by the demo and the tests: serves `/chats/{id}` from a scenario.
    MockGateway {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:8787")]
        listen: std::net::SocketAddr,
        /// A scenario file (default: the demo conversation).
        #[arg(long)]
        scenario: Option<PathBuf>,
    },
    /// Print the JSON Schema of a rule file (one rule or a list), or of `cartat.yaml` with
    /// `schema config`, for editors' YAML language servers:
    /// `cartat-rules schema > rule.schema.json`, `cartat-rules schema config > cartat.schema.json`.
    Schema {
        /// Which file's schema.
        #[arg(value_enum, default_value = "rules")]
        of: SchemaOf,
    },
    /// Write a commented `cartat.yaml` and an example rule (`rules/bot-keyword.yaml`) into a
    /// folder, to start from; existing files are never overwritten.
    Init {
        /// The folder to write into.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Print a shell completion script: `cartat-rules completions bash > /etc/bash_completion.d/cartat-rules`
    /// (zsh: into a folder of your `$fpath` as `_cartat-rules`; fish:
    /// `~/.config/fish/completions/cartat-rules.fish`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Ask a running daemon's `/healthz` (at the config's `server.listen`, or `--url`): exit 0
    /// when it answers 200, 1 otherwise. For container health checks and probes.
    Health {
        /// The config file (for `server.listen`).
        #[arg(short, long, default_value = "cartat.yaml", env = "CARTAT_CONFIG")]
        config: PathBuf,
        /// Ask this url instead, e.g. http://127.0.0.1:9464/healthz.
        #[arg(long)]
        url: Option<String>,
        /// Give up after this long.
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Reload a running daemon's rules now (`POST /api/reload` with the admin token) and say
    /// what it answered: the new rule set's fingerprint, or its errors as `path:line:col`
    /// while the last good set stays in force (exit 1). The address and token come from the
    /// config's `server.listen` and `server.admin_token`.
    Reload {
        /// The config file (for `server.listen` and `server.admin_token`).
        #[arg(short, long, default_value = "cartat.yaml", env = "CARTAT_CONFIG")]
        config: PathBuf,
        /// Ask this url instead, e.g. http://127.0.0.1:9464/api/reload.
        #[arg(long)]
        url: Option<String>,
        /// The admin token, instead of the config's.
        #[arg(long, env = "CARTAT_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// `text`, or `json` (the daemon's answer as it came).
        #[arg(long, value_enum, default_value = "text")]
        format: TextOrJson,
        /// Give up after this long (a big rule set takes a while to compile).
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Before a deploy: what the new rules change against the rules deployed now, rule by rule
    /// (added, removed, renamed, and the paths inside a rule that changed, old → new), and
    /// what each change does to the state kept per rule (cooldowns, threshold counts, timers).
    /// Formatting, comments, file names and order are not changes. Exit 1 when either set
    /// does not load.
    Plan {
        /// The new rules: a rule file or folder.
        #[arg(long)]
        rules: PathBuf,
        /// The rules deployed now: a rule file or folder (a checkout of the deployed commit,
        /// the daemon's rules folder), or a running daemon, `http://127.0.0.1:9464` (its admin
        /// API: the set it has in force, whatever is on disk).
        #[arg(long)]
        against: String,
        /// The admin token, when `--against` is a daemon.
        #[arg(long, env = "CARTAT_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// `text` for people, `json`: one document (every change, its fields and warnings).
        #[arg(long, value_enum, default_value = "text")]
        format: TextOrJson,
    },
}

/// `text` for people, `json` for machines.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum TextOrJson {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum TestFormat {
    Text,
    Json,
}

/// A delivery's state in the outbox, as `outbox list --state` takes it.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum OutboxState {
    Pending,
    Delivered,
    Dead,
    Gone,
}

impl OutboxState {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            OutboxState::Pending => "pending",
            OutboxState::Delivered => "delivered",
            OutboxState::Dead => "dead",
            OutboxState::Gone => "gone",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum OutboxAction {
    /// List deliveries, newest first.
    List {
        /// Only this state (gone: its endpoint answered 410).
        #[arg(long, value_enum)]
        state: Option<OutboxState>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Re-send a dead-lettered (dead or gone) delivery by outbox id or delivery_id, or all of
    /// them, with the original delivery_id; re-sending to a url a 410 disabled enables it again.
    Retry {
        /// The outbox id or delivery_id.
        id: Option<String>,
        /// Every dead-lettered delivery.
        #[arg(long, conflicts_with = "id")]
        dead: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterAction {
    /// List the instances alive and the chats each holds.
    Status,
}

#[derive(Debug, Subcommand)]
pub enum SilenceAction {
    /// Mute a rule, a chat, or a rule in a chat, for a while; prints the silence's id.
    Add {
        /// Only this rule id (default: every rule, with --chat).
        #[arg(long, required_unless_present = "chat")]
        rule: Option<String>,
        /// Only this chat: a phone number with country code (966500000000) or a full id
        /// (…@c.us, …@g.us); default: every chat, with --rule.
        #[arg(long)]
        chat: Option<String>,
        /// For how long: 30m, 2h, 1d.
        #[arg(long = "for", value_parser = parse_duration, required_unless_present = "until", conflicts_with = "until")]
        for_: Option<Duration>,
        /// Until when (RFC 3339, e.g. 2026-12-07T18:00:00Z).
        #[arg(long, value_parser = parse_time)]
        until: Option<i64>,
        /// Why, for whoever looks at `silence list` next.
        #[arg(long)]
        reason: String,
    },
    /// List the silences in force (with --all, the ended ones too).
    List {
        #[arg(long)]
        all: bool,
    },
    /// End a silence now.
    Expire {
        /// The silence's id (from `silence add` or `silence list`).
        id: i64,
    },
}

/// The config at `path` and its state, opened beside a running daemon for a command that
/// reads or changes it (`create`: an SQLite file the daemon has not made yet is created);
/// None once the reason is on stderr.
fn config_and_state(
    path: &std::path::Path,
    create: bool,
) -> Option<(crate::config::Config, crate::store::Store)> {
    use crate::store::Store;
    let config = match crate::config::load(path, crate::config::EnvMode::Optional) {
        Ok((c, _)) => c,
        Err(d) => {
            eprint!("{d}");
            return None;
        }
    };
    let store = if create && config.state_url.is_none() && !config.state_path.exists() {
        Store::open(&config.state_path)
    } else {
        Store::open_for(&config, false)
    };
    match store {
        Ok(s) => Some((config, s)),
        Err(e) => {
            eprintln!("cartat-rules: {e}");
            None
        }
    }
}

/// Loads the rules `test` runs on (no network policy: nothing is sent), printing the warnings;
/// `None` (the errors printed) when they do not load.
fn load_rules_to_test(
    path: &std::path::Path,
    timezone: Option<&jiff::tz::TimeZone>,
) -> Option<crate::rules::RuleSet> {
    match crate::rules::load_with(
        &[path.to_path_buf()],
        &crate::net::ssrf::NetPolicy::AllowAll,
        timezone,
    ) {
        Ok((rules, warnings)) => {
            eprint!("{warnings}");
            Some(rules)
        }
        Err(d) => {
            eprint!("{d}");
            None
        }
    }
}

fn parse_timezone(s: &str) -> Result<jiff::tz::TimeZone, String> {
    jiff::tz::TimeZone::get(s)
        .map_err(|_| format!("`{s}` is not a time zone; write an IANA name such as Asia/Riyadh"))
}

fn parse_time(s: &str) -> Result<i64, String> {
    s.parse::<jiff::Timestamp>()
        .map(|t| t.as_second())
        .map_err(|e| format!("`{s}` is not an RFC 3339 time like 2026-11-28T10:00:00Z: {e}"))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::duration::parse(s)
}

/// Sets up logging: `RUST_LOG` wins, else -v/-q, else `default`.
pub fn init_logging(args: &LogArgs, default: &str, format: crate::config::LogFormat) {
    use tracing_subscriber::EnvFilter;
    let level = if args.quiet {
        "warn"
    } else {
        match args.verbose {
            0 => default,
            1 => "debug",
            _ => "trace",
        }
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let json = match args.log_format {
        Some(LogFormatArg::Json) => true,
        Some(LogFormatArg::Text) => false,
        None => format == crate::config::LogFormat::Json,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = if json {
        // One flat object per line: `timestamp`, `level`, `event` (stable, for machines),
        // `message` (for people), then the event's own fields (README, "Logs").
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// Runs a command; returns the process exit code.
pub fn main(cli: Cli) -> ExitCode {
    let code = match cli.command {
        Command::Run { config } => run::run(&config, &cli.log),
        Command::Reload {
            config,
            url,
            token,
            format,
            timeout,
        } => reload::reload(&config, url.as_deref(), token.as_deref(), format, timeout),
        Command::Plan {
            rules,
            against,
            token,
            format,
        } => plan::run(&rules, &against, token.as_deref(), format),
        Command::Check {
            config,
            paths,
            format,
            strict,
        } => check::check(&config, &paths, format, strict),
        Command::Test {
            rules,
            tests,
            input,
            format,
            explain,
            at,
            timezone,
            config,
        } => {
            let timezone = match (timezone, config) {
                (Some(tz), _) => Some(tz),
                (None, Some(path)) => {
                    match crate::config::load(&path, crate::config::EnvMode::Optional) {
                        Ok((c, _)) => c.rules_timezone,
                        Err(d) => {
                            eprint!("{d}");
                            return ExitCode::from(1);
                        }
                    }
                }
                (None, None) => None,
            };
            match input {
                Some(input) => test::test(&rules, &input, format, explain, at, timezone.as_ref()),
                None => ruletest::run(&rules, tests.as_deref(), format, timezone.as_ref()),
            }
        }
        Command::Outbox { config, action } => outbox::outbox(&config, action),
        Command::Silence { config, action } => silence::silence(&config, action),
        Command::Cluster { config, action } => match action {
            ClusterAction::Status => silence::cluster_status(&config),
        },
        Command::Demo {
            duration,
            config,
            scenario,
        } => demo::demo(config.as_deref(), scenario.as_deref(), duration, &cli.log),
        Command::MockGateway { listen, scenario } => {
            mock_gateway::mock_gateway(listen, scenario.as_deref(), &cli.log)
        }
        Command::Schema { of } => schema::schema(of),
        Command::Init { dir } => init::init(&dir),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "cartat-rules",
                &mut std::io::stdout(),
            );
            0
        }
        Command::Health {
            config,
            url,
            timeout,
        } => health::health(&config, url.as_deref(), timeout),
    };
    ExitCode::from(code)
}

/// How `check` prints what it found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CheckFormat {
    /// `path:line:col: message`, as a compiler prints, then a summary line.
    Text,
    /// One JSON document: `ok`, `errors`, `warnings`, `rules` and every diagnostic.
    Json,
    /// GitHub Actions annotations (`::error file=…,line=…,col=…::…`), then a summary line.
    Github,
}

/// The files `schema` describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SchemaOf {
    /// A rule file: one rule, or a list of rules.
    Rules,
    /// The config file, `cartat.yaml`.
    Config,
}

/// The runtime of a long-running command: `workers` threads for its tasks, unless
/// `TOKIO_WORKER_THREADS` says otherwise (tokio reads it when no count is given).
///
/// The daemon runs on one, the thread that starts it (tokio's current-thread runtime):
/// measured side by side (README, "the cost of a poll"), a second worker cost a third more CPU
/// at idle and at workload A (tasks woken across threads), and the store's writes are short
/// enough to run inline ([`crate::store::group`]). A rule set of heavy rhai scripts can ask
/// for more with `TOKIO_WORKER_THREADS=2`.
fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if workers == 1 && std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        builder.worker_threads(workers);
    }
    builder.enable_all().build()
}
