//! Load test: the real daemon binary against the mock gateway in synthetic mode, on loopback.
//!
//! ```sh
//! cargo build --release --bins --examples
//! target/release/examples/load                          # 10,000 chats, 500 req/s, 60 s
//! target/release/examples/load --compare-scheduling     # adaptive vs round_robin, 1,000 chats
//! ```
//! (or `scripts/load-test.sh [ARGS]`, which does both steps).
//!
//! Reports daemon CPU seconds (utime + stime from /proc/PID/stat), peak RSS (VmHWM from
//! /proc/PID/status), polls per second, detection latency (a planted message becoming visible
//! in the mock → its webhook reaching the local receiver) p50 / mean / p99, and missed and
//! duplicated messages. Everything runs on 127.0.0.1, bounded in time, and stops by itself.

use cartat_rules::mock::{MockGateway, Scenario, synthetic_chat_id};
use cartat_rules::receiver::Receiver;
use clap::Parser;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Parser, Clone)]
#[command(about = "Load test of cartat-rules against the synthetic mock gateway")]
struct Args {
    /// Watched chats.
    #[arg(long)]
    chats: Option<u64>,
    /// Share of the chats that get messages.
    #[arg(long, default_value_t = 0.05)]
    active: f64,
    /// Messages per second over all active chats.
    #[arg(long)]
    mps: Option<f64>,
    /// The API budget, requests per second.
    #[arg(long)]
    rate: Option<u32>,
    /// poll.interval of every chat.
    #[arg(long)]
    interval: Option<String>,
    /// Seconds of traffic measured (after a warm-up that first-sights every chat).
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// api.message_limit.
    #[arg(long, default_value_t = 20)]
    message_limit: u32,
    /// adaptive or round_robin.
    #[arg(long, default_value = "adaptive")]
    scheduler: String,
    /// Run round_robin then adaptive on the same workload (default 1,000 chats, 50 req/s,
    /// interval 30s) and compare their detection latency.
    #[arg(long)]
    compare_scheduling: bool,
    /// The daemon binary (default: next to this example, i.e. target/release/cartat-rules).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Seed of the synthetic traffic.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Keep the state in PostgreSQL (a throwaway server started for the run, as the tests do;
    /// `CARTAT_TEST_POSTGRES_URL` names one instead) rather than an SQLite file.
    #[arg(long)]
    postgres: bool,
    /// Run this many instances in a cluster on one PostgreSQL database (implies --postgres).
    #[arg(long, default_value_t = 1)]
    instances: usize,
    /// Run with the run history off (`history.enabled: false`), to measure what it costs.
    #[arg(long)]
    no_history: bool,
}

#[derive(Debug, Clone)]
struct Spec {
    chats: u64,
    active: f64,
    mps: f64,
    rate: u32,
    interval: Duration,
    interval_text: String,
    duration: Duration,
    message_limit: u32,
    scheduler: String,
    seed: u64,
    postgres: bool,
    instances: usize,
    history: bool,
}

#[derive(Debug)]
struct Report {
    spec: Spec,
    /// Per instance: CPU seconds in the measured window, peak RSS (kB).
    per_instance: Vec<(f64, u64)>,
    /// PostgreSQL: transactions committed per second in the measured window, and the server's
    /// CPU seconds in it (all its processes).
    pg: Option<(f64, f64)>,
    cpu_total_s: f64,
    cpu_window_s: f64,
    wall_s: f64,
    peak_rss_kb: u64,
    polls_per_s: f64,
    planted: usize,
    received: usize,
    missed: usize,
    duplicated: usize,
    measured: usize,
    p50_ms: f64,
    mean_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn proc_cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // Fields after the command (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz
}

fn proc_status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn daemon_bin(args: &Args) -> PathBuf {
    if let Some(b) = &args.bin {
        return b.clone();
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/release/examples/load → target/release/cartat-rules
    exe.parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("cartat-rules"))
        .expect("the daemon binary's folder")
}

async fn run_one(spec: Spec, bin: &PathBuf) -> anyhow::Result<Report> {
    // Warm-up: every chat's first poll (replay_history makes nothing depend on it, but the
    // latency of messages planted before a chat's first poll would measure the start-up).
    let warmup_s = (spec.chats as f64 / (spec.rate as f64 * 0.8)).ceil() as u64 + 3;
    // Traffic starts after the warm-up; latency is measured from one interval (plus 5s) later,
    // once every active chat has had messages seen by a regular poll (the steady state the
    // adaptive scheduler is for). Missed and duplicated count every planted message.
    let discover_s = spec.interval.as_secs() + 5;
    let measure_from_s = warmup_s + discover_s;
    let until_s = measure_from_s + spec.duration.as_secs();
    let scenario = format!(
        "synthetic: {{ chats: {}, active_fraction: {}, messages_per_second: {}, keyword: \"بوت\", keyword_every: 1, seed: {}, after: {}s, until: {}s }}\nmax_recorded_requests: 2000000\n",
        spec.chats, spec.active, spec.mps, spec.seed, warmup_s, until_s
    );
    let scenario = Scenario::from_yaml(&scenario).map_err(anyhow::Error::msg)?;
    let gw = MockGateway::start(
        tokio::net::TcpListener::bind("127.0.0.1:0").await?,
        scenario,
    )
    .await?;
    let rx = Receiver::start(tokio::net::TcpListener::bind("127.0.0.1:0").await?, None).await?;

    let dir = tempfile::tempdir()?;
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules)?;
    std::fs::write(
        rules.join("bot.yaml"),
        format!(
            "id: bot-keyword\nmatch:\n  from_me: false\n  body:\n    any: [\"بوت\"]\n    words: true\nactions:\n  - webhook:\n      url: {}\n",
            rx.url("/hooks/bot")
        ),
    )?;
    let mut chats = String::new();
    for i in 0..spec.chats {
        chats.push_str(&format!("  - \"{}\"\n", synthetic_chat_id(i)));
    }
    let burst = (spec.rate / 10).max(1);
    let pg_url = if spec.postgres {
        let url = tokio::task::spawn_blocking(cartat_rules::pgtest::database)
            .await?
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "no PostgreSQL for --postgres (install it, or set CARTAT_TEST_POSTGRES_URL)"
                )
            })?;
        Some(url)
    } else {
        None
    };
    let state = match &pg_url {
        Some(url) if spec.instances > 1 => {
            format!("state:\n  url: \"{url}\"\ncluster:\n  lease_ttl: 15s\n")
        }
        Some(url) => format!("state:\n  url: \"{url}\"\n"),
        None => "state:\n  path: ./state/load.db\n".to_string(),
    };
    let config = format!(
        "api:\n  base_url: {}\n  token: mock-token\n  timeout: 5s\n  rate_limit: {{ per_second: {}, burst: {burst} }}\n  message_limit: {}\n\
         chats:\n{chats}poll:\n  interval: {}\n  on_first_sight: replay_history\n  scheduler: {}\n\
         {state}rules:\n  paths: [./rules]\n  watch: false\n\
         webhooks:\n  allow_private_networks: [127.0.0.1/32]\nlog:\n  mask_phone_numbers: true\nserver:\n  listen: \"off\"\nhistory:\n  enabled: {}\n",
        gw.base_url(),
        spec.rate,
        spec.message_limit,
        spec.interval_text,
        spec.scheduler,
        spec.history
    );
    let cfg = dir.path().join("cartat.yaml");
    std::fs::write(&cfg, config)?;
    let log_path = dir.path().join("daemon.log");
    let started = Instant::now();
    let mut children = Vec::new();
    for i in 0..spec.instances.max(1) {
        let log = std::fs::File::create(if i == 0 {
            log_path.clone()
        } else {
            dir.path().join(format!("daemon-{i}.log"))
        })?;
        children.push(
            Command::new(bin)
                .args(["run", "-c"])
                .arg(&cfg)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot start {}: {e} (build it: cargo build --release --bins)",
                        bin.display()
                    )
                })?,
        );
    }
    let pids: Vec<u32> = children.iter().map(|c| c.id()).collect();
    let cpu_of = |pids: &[u32]| -> Vec<f64> { pids.iter().map(|p| proc_cpu_seconds(*p)).collect() };
    eprintln!(
        "[{}] {} chats, {:.0}% active, {} msg/s, budget {}/s, interval {}: warm-up {}s, traffic {}s (measured: the last {}s)",
        spec.scheduler,
        spec.chats,
        spec.active * 100.0,
        spec.mps,
        spec.rate,
        spec.interval_text,
        warmup_s,
        until_s - warmup_s,
        spec.duration.as_secs()
    );

    let mock_start = Instant::now() - Duration::from_millis(gw.elapsed_ms());
    tokio::time::sleep_until((mock_start + Duration::from_secs(measure_from_s)).into()).await;
    let cpu_before = cpu_of(&pids);
    let pg_before = match &pg_url {
        Some(url) => Some(pg_figures(url.clone()).await),
        None => None,
    };
    let polls_before = gw.requests().len();
    tokio::time::sleep_until((mock_start + Duration::from_secs(until_s)).into()).await;
    let cpu_after_traffic = cpu_of(&pids);
    let pg_after = match &pg_url {
        Some(url) => Some(pg_figures(url.clone()).await),
        None => None,
    };
    let polls_after = gw.requests().len();
    // Drain: the last messages of quiet chats may wait up to one interval.
    let drain = spec.interval + Duration::from_secs(5);
    let planted = gw.planted();
    let deadline = Instant::now() + drain;
    loop {
        let got: std::collections::HashSet<String> = rx
            .received()
            .iter()
            .filter_map(|r| r.json()["message"]["id"].as_str().map(str::to_string))
            .collect();
        if planted.iter().all(|p| got.contains(&p.message_id)) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu_total_s: f64 = cpu_of(&pids).iter().sum();
    let rss: Vec<u64> = pids.iter().map(|p| proc_status_kb(*p, "VmHWM:")).collect();
    let peak_rss_kb = rss.iter().copied().max().unwrap_or(0);
    let wall_s = started.elapsed().as_secs_f64();
    for pid in &pids {
        unsafe {
            libc::kill(*pid as i32, libc::SIGTERM);
        }
    }
    for mut child in children {
        let _ = child.wait();
    }
    let per_instance: Vec<(f64, u64)> = cpu_after_traffic
        .iter()
        .zip(&cpu_before)
        .map(|(a, b)| a - b)
        .zip(rss)
        .collect();
    let pg = match (pg_before, pg_after) {
        (Some((c0, t0)), Some((c1, t1))) => {
            Some(((c1 - c0) as f64 / spec.duration.as_secs_f64(), t1 - t0))
        }
        _ => None,
    };

    let mut by_id: HashMap<String, Vec<i64>> = HashMap::new();
    for r in rx.received() {
        if let Some(id) = r.json()["message"]["id"].as_str() {
            let at =
                r.at.duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64);
            by_id.entry(id.to_string()).or_default().push(at);
        }
    }
    let mut latencies: Vec<f64> = Vec::new();
    let mut missed = 0;
    let measure_from_unix_ms = gw.start_unix_ms() + measure_from_s as i64 * 1000;
    for p in &planted {
        match by_id.get(&p.message_id) {
            Some(ats) if p.at_unix_ms >= measure_from_unix_ms => {
                let first = ats.iter().min().copied().unwrap_or(0);
                latencies.push((first - p.at_unix_ms) as f64);
            }
            Some(_) => {}
            None => missed += 1,
        }
    }
    let duplicated: usize = by_id.values().map(|v| v.len().saturating_sub(1)).sum();
    latencies.sort_by(|a, b| a.total_cmp(b));
    let mean = latencies.iter().sum::<f64>() / latencies.len().max(1) as f64;
    let report = Report {
        cpu_total_s,
        cpu_window_s: per_instance.iter().map(|(c, _)| c).sum(),
        per_instance,
        pg,
        wall_s,
        peak_rss_kb,
        polls_per_s: (polls_after - polls_before) as f64 / spec.duration.as_secs_f64(),
        planted: planted.len(),
        received: by_id.len(),
        missed,
        duplicated,
        measured: latencies.len(),
        p50_ms: percentile(&latencies, 0.5),
        mean_ms: mean,
        p99_ms: percentile(&latencies, 0.99),
        max_ms: latencies.last().copied().unwrap_or(f64::NAN),
        spec,
    };
    rx.stop();
    gw.shutdown().await;
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let errors = text.lines().filter(|l| l.contains("ERROR")).count();
    if errors > 0 {
        eprintln!(
            "daemon logged {errors} errors; the first: {}",
            text.lines().find(|l| l.contains("ERROR")).unwrap_or("")
        );
    }
    Ok(report)
}

/// The test server's committed transactions (its database, all sessions) and the CPU seconds of
/// all its processes so far.
async fn pg_figures(url: String) -> (i64, f64) {
    tokio::task::spawn_blocking(move || {
        let commits = postgres::Client::connect(&url, postgres::NoTls)
            .and_then(|mut c| {
                c.query_one(
                    "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
                    &[],
                )
            })
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(0);
        // The server's processes: the postmaster of the test server and its children.
        let cpu = cartat_rules::pgtest::server()
            .and_then(|s| s.local())
            .and_then(|(data, _)| std::fs::read_to_string(data.join("postmaster.pid")).ok())
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
            .map(|master| {
                let mut total = proc_cpu_seconds(master);
                for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                    let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                        continue;
                    };
                    let stat =
                        std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                    let rest = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
                    if rest
                        .split_whitespace()
                        .nth(1)
                        .and_then(|p| p.parse::<u32>().ok())
                        == Some(master)
                    {
                        total += proc_cpu_seconds(pid);
                    }
                }
                total
            })
            .unwrap_or(f64::NAN);
        (commits, cpu)
    })
    .await
    .unwrap_or((0, f64::NAN))
}

fn print(r: &Report) {
    let traffic = r.spec.duration.as_secs_f64();
    println!("scheduler             {}", r.spec.scheduler);
    println!(
        "run history           {}",
        if r.spec.history { "on" } else { "off" }
    );
    println!(
        "workload              {} chats, {:.0}% active, {} msg/s, budget {} req/s, interval {}, message_limit {}, {}s measured",
        r.spec.chats,
        r.spec.active * 100.0,
        r.spec.mps,
        r.spec.rate,
        r.spec.interval_text,
        r.spec.message_limit,
        traffic
    );
    println!(
        "daemon CPU            {:.2} s over the whole run ({:.1} s wall, {:.1}% of one core); {:.2} s during the {traffic:.0} s measured ({:.1}% of one core)",
        r.cpu_total_s,
        r.wall_s,
        100.0 * r.cpu_total_s / r.wall_s,
        r.cpu_window_s,
        100.0 * r.cpu_window_s / traffic
    );
    println!(
        "peak RSS (VmHWM)      {:.1} MB",
        r.peak_rss_kb as f64 / 1024.0
    );
    println!("polls per second      {:.1}", r.polls_per_s);
    if r.per_instance.len() > 1 {
        for (i, (cpu, rss)) in r.per_instance.iter().enumerate() {
            println!(
                "instance {i}            {cpu:.2} s CPU in the measured window ({:.1}% of one core), peak RSS {:.1} MB",
                100.0 * cpu / traffic,
                *rss as f64 / 1024.0
            );
        }
    }
    if let Some((commits, cpu)) = r.pg {
        println!(
            "PostgreSQL            {commits:.1} transactions committed per second; the server's CPU {cpu:.2} s in the measured window ({:.2} ms per transaction)",
            1000.0 * cpu / (commits * traffic).max(1.0)
        );
    }
    println!(
        "detection latency     p50 {:.0} ms, mean {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} messages in the measured window)",
        r.p50_ms, r.mean_ms, r.p99_ms, r.max_ms, r.measured
    );
    println!(
        "planted messages      {} planted, {} delivered, {} missed, {} duplicated",
        r.planted, r.received, r.missed, r.duplicated
    );
}

fn spec(args: &Args, scheduler: &str, compare: bool) -> Spec {
    let (chats, rate, interval, mps) = if compare {
        (1_000, 50, "30s", 5.0)
    } else {
        (10_000, 500, "30s", 50.0)
    };
    let interval_text = args
        .interval
        .clone()
        .unwrap_or_else(|| interval.to_string());
    Spec {
        chats: args.chats.unwrap_or(chats),
        active: args.active,
        mps: args.mps.unwrap_or(mps),
        rate: args.rate.unwrap_or(rate),
        interval: cartat_rules::duration::parse(&interval_text).expect("--interval like 30s"),
        interval_text,
        duration: Duration::from_secs(args.duration),
        message_limit: args.message_limit,
        scheduler: scheduler.to_string(),
        seed: args.seed,
        postgres: args.postgres || args.instances > 1,
        instances: args.instances.max(1),
        history: !args.no_history,
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = daemon_bin(&args);
    if !bin.exists() {
        anyhow::bail!(
            "{} does not exist: run `cargo build --release --bins --examples` first",
            bin.display()
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        if args.compare_scheduling {
            let rr = run_one(spec(&args, "round_robin", true), &bin).await?;
            print(&rr);
            println!();
            let ad = run_one(spec(&args, "adaptive", true), &bin).await?;
            print(&ad);
            println!();
            println!(
                "adaptive vs round_robin at the same budget: mean latency {:.1}x lower, p99 {:.1}x lower",
                rr.mean_ms / ad.mean_ms,
                rr.p99_ms / ad.p99_ms
            );
        } else {
            let r = run_one(spec(&args, &args.scheduler, false), &bin).await?;
            print(&r);
        }
        Ok(())
    })
}
