//! Several instances on one PostgreSQL database (`cluster:`), with real processes, a real
//! server (`cartat_rules::pgtest`) and real signals: an instance frozen with SIGSTOP past its
//! leases commits nothing when it resumes (fencing) while another polls its chats; instances
//! SIGKILLed at random lose and repeat nothing, and the gateway never sees more than the
//! account's budget in a second.

use crate::crash::{every_planted_delivered, use_postgres};
use crate::delivery::{spawn_with_env, wait_logged, write_config};
use crate::support::*;
use cartat_rules::store::Store;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// A fresh database, or None (the test skips: see `pgtest`).
async fn database() -> Option<String> {
    tokio::task::spawn_blocking(cartat_rules::pgtest::database)
        .await
        .unwrap()
}

/// `cfg` on PostgreSQL `url`, in a cluster whose leases last `ttl`.
fn in_cluster(cfg: &std::path::Path, url: &str, ttl: &str) {
    use_postgres(cfg, url);
    let mut text = std::fs::read_to_string(cfg).unwrap();
    text.push_str(&format!("cluster:\n  lease_ttl: {ttl}\n"));
    std::fs::write(cfg, text).unwrap();
}

/// The instances alive and their leases, as `cluster status` reads them.
fn status(url: &str) -> Vec<(String, i64, i64)> {
    let url = url.to_string();
    std::thread::spawn(move || {
        Store::open_postgres(&url, false)
            .and_then(|s| s.cluster_status(2_000))
            .unwrap_or_default()
    })
    .join()
    .unwrap()
}

fn signal(daemon: &Daemon, sig: i32) {
    // SAFETY: kill takes a pid and a signal number.
    unsafe { libc::kill(daemon.child.id() as i32, sig) };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_frozen_past_its_leases_commits_nothing_and_its_chats_go_on_elsewhere() {
    let Some(url) = database().await else {
        return;
    };
    let chats: Vec<String> = (0..6).map(|i| format!("96650000550{i}")).collect();
    let gw = gateway(&quiet_chats(&chats)).await;
    let rx = receiver().await;
    let ws = Workspace::new();
    ws.write("rules/bot.yaml", &bot_rule("bot", &[rx.url("/bot")]));
    let cfg = write_config(&ws, &gw, &chats, "2s", 0.01, "");
    in_cluster(&cfg, &url, "2s");
    // A holds its first commit back for 6 s: long enough to be frozen in the middle of it.
    let a = spawn_with_env(&cfg, &[("CARTAT_PAUSE", "before_commit:1:6000")]);
    let b = spawn_with_env(&cfg, &[]);
    wait_logged(
        "both instances holding a share",
        Duration::from_secs(20),
        &a,
        || {
            let s = status(&url);
            s.len() == 2
                && s.iter().all(|(_, _, n)| *n > 0)
                && s.iter().map(|i| i.2).sum::<i64>() == 7
        },
    )
    .await;
    let (code, out, err) = run_cli(
        &["cluster", "status", "-c", cfg.to_str().unwrap()],
        ws.path(),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("2 instance(s) alive, 7 of 7 lease(s) held"),
        "{out}"
    );

    for c in &chats {
        gw.push_message(c, &format!("bot {c}"), false);
    }
    wait_logged(
        "A's poll to hold its commit",
        Duration::from_secs(10),
        &a,
        || a.output().contains("pause point `before_commit` reached"),
    )
    .await;
    signal(&a, libc::SIGSTOP);
    let frozen = Instant::now();

    // B sees A's leases run out, takes its chats and delivers every message.
    wait_logged(
        "every message delivered by B",
        Duration::from_secs(30),
        &b,
        || {
            let got: HashSet<String> = bodies(&rx.received()).into_iter().collect();
            chats.iter().all(|c| got.contains(&format!("bot {c}")))
        },
    )
    .await;
    assert!(b.output().contains("lease.taken"), "{}", b.output());
    let s = status(&url);
    assert_eq!(s.len(), 1, "A is not alive: {s:?}");
    assert_eq!(s[0].2, 7, "B holds every lease: {s:?}");

    // A resumes: the commit it held back carries a token that is no longer the lease's.
    // (The leases ran out within their 2 s life of A's last renewal, before the freeze.)
    assert!(frozen.elapsed() > Duration::from_millis(600));
    signal(&a, libc::SIGCONT);
    wait_logged("A's commit refused", Duration::from_secs(15), &a, || {
        a.output().contains("lease.fenced")
    })
    .await;
    wait_logged(
        "the two instances sharing the chats again",
        Duration::from_secs(20),
        &a,
        || {
            let s = status(&url);
            s.len() == 2 && s.iter().all(|(_, _, n)| *n > 0)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let a_log = a.output();
    assert_eq!(a.stop(), 0, "{a_log}");
    assert_eq!(b.stop(), 0);

    // Each message once; the fenced poll left nothing behind.
    let mut per_body: HashMap<String, HashSet<String>> = HashMap::new();
    for r in rx.received() {
        per_body
            .entry(
                r.json()["message"]["body"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
            .or_default()
            .insert(r.header("webhook-id").unwrap_or("").to_string());
    }
    assert_eq!(per_body.len(), chats.len(), "{per_body:?}");
    assert!(per_body.values().all(|ids| ids.len() == 1), "{per_body:?}");
    let rows = tokio::task::spawn_blocking(move || {
        Store::open_postgres(&url, false)
            .unwrap()
            .list(None, 100)
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(rows.len(), chats.len(), "one outbox row per message");
    gw.shutdown().await;
}

/// The must-show kill loop of a cluster: 3 instances share 320 chats on 2 gateway accounts
/// (two mock gateways, the same numbers in both) with synthetic traffic; one instance at
/// random is SIGKILLed every few seconds and restarted. Every matching message reaches the
/// receiver, none under two delivery ids, every chat is polled again soon after its owner
/// died, and neither gateway ever sees more than its account's `per_second` in a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_killed_at_random_lose_and_repeat_nothing_within_the_budget() {
    use rand::{Rng, SeedableRng};
    let Some(url) = database().await else {
        return;
    };
    let seed: u64 = std::env::var("CARTAT_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| jiff::Timestamp::now().as_nanosecond() as u64);
    println!("cluster kill loop: CARTAT_CRASH_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    const CHATS: u64 = 160;
    const PER_SECOND: u64 = 36;
    let (interval_s, ttl_s) = (6u64, 3u64);
    let traffic_ms = 20_000;
    let mut gateways = Vec::new();
    for (i, token) in ["sales-token", "support-token"].into_iter().enumerate() {
        gateways.push(
            gateway(&format!(
                "token: {token}\nchats: []\nsynthetic:\n  chats: {CHATS}\n  active_fraction: 0.2\n  messages_per_second: 8\n  keyword_every: 2\n  seed: {}\n  until: {traffic_ms}ms\n",
                (seed + i as u64) % 1_000_000
            ))
            .await,
        );
    }
    let chats: Vec<String> = (0..CHATS)
        .map(cartat_rules::mock::synthetic_chat_id)
        .collect();
    let rx = receiver().await;
    let ws = Workspace::new();
    ws.write("rules/bot.yaml", &bot_rule("bot", &[rx.url("/hooks")]));
    let poll = format!("  interval: {interval_s}s\n  on_first_sight: replay_history\n");
    let rate = format!("{{ per_second: {PER_SECOND}, burst: 18 }}");
    let text = Config {
        rate_limit: Some(&rate),
        poll: &poll,
        watch_rules: false,
        webhook_timeout: "2s",
        retry_scale: 0.01,
        accounts: vec![
            Account::on("sales", &gateways[0], &chats),
            Account::on("support", &gateways[1], &chats),
        ],
        ..Config::new(&gateways[0], &[] as &[&str])
    }
    .yaml();
    let cfg = ws.write("cartat.yaml", &text);
    in_cluster(&cfg, &url, &format!("{ttl_s}s"));

    let started = Instant::now();
    let mut instances: Vec<Option<Daemon>> =
        (0..3).map(|_| Some(spawn_with_env(&cfg, &[]))).collect();
    let mut kills = 0;
    let mut last_kill_ms = 0;
    while started.elapsed() < Duration::from_millis(traffic_ms) {
        tokio::time::sleep(Duration::from_millis(rng.random_range(3_000..6_000))).await;
        let i = rng.random_range(0..instances.len());
        if let Some(d) = instances[i].take() {
            d.kill();
            kills += 1;
            last_kill_ms = gateways[0].elapsed_ms();
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1_500))).await;
        instances[i] = Some(spawn_with_env(&cfg, &[]));
    }

    // The traffic is over: everything planted arrives, in each account.
    let planted: Vec<HashSet<String>> = gateways
        .iter()
        .map(|gw| gw.planted().into_iter().map(|p| p.message_id).collect())
        .collect();
    for (account, p) in ["sales", "support"].iter().zip(&planted) {
        assert!(
            p.len() > 25,
            "the traffic planted {} matching messages in {account}",
            p.len()
        );
    }
    let any = instances[0].as_ref().unwrap();
    wait_logged(
        "every planted message delivered",
        Duration::from_secs(90),
        any,
        || gateways.iter().all(|gw| every_planted_delivered(gw, &rx)),
    )
    .await;
    // Every chat of both accounts polled again after the last death: within a lease's life
    // (its chats free), an interval and a round of the budget of the instance that takes it.
    let polled_after = |since: u64| -> usize {
        gateways
            .iter()
            .map(|gw| {
                let polled: HashSet<String> = gw
                    .requests()
                    .iter()
                    .filter(|r| r.at_ms > since)
                    .map(|r| r.chat.split('@').next().unwrap_or("").to_string())
                    .collect();
                chats.iter().filter(|c| polled.contains(*c)).count()
            })
            .sum()
    };
    let bound = Duration::from_secs(ttl_s + 2 * interval_s + 5);
    let waited = Instant::now();
    wait_logged("every chat polled after the last death", bound, any, || {
        polled_after(last_kill_ms) == 2 * chats.len()
    })
    .await;
    let recovered = waited.elapsed();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let s = status(&url);
    for d in instances.into_iter().flatten() {
        let log = d.output();
        assert_eq!(d.stop(), 0, "{log}");
    }
    println!("instances at the end: {s:?}");

    // One delivery id per message, each from the account that planted it.
    let mut id_of: HashMap<(String, String), String> = HashMap::new();
    for r in rx.received() {
        let v = r.json();
        let msg = v["message"]["id"].as_str().unwrap_or("").to_string();
        let account = v["chat"]["account"].as_str().unwrap_or("").to_string();
        let from = match account.as_str() {
            "sales" => &planted[0],
            "support" => &planted[1],
            other => panic!("a delivery from account {other:?}"),
        };
        assert!(
            from.contains(&msg),
            "a delivery for {msg}, not planted in {account}"
        );
        let id = r.header("webhook-id").unwrap_or("").to_string();
        let first = id_of
            .entry((account, msg.clone()))
            .or_insert_with(|| id.clone());
        assert_eq!(first, &id, "two delivery ids for {msg}");
    }
    // Each account's budget, all instances together, in every second of its gateway's log.
    let mut busiest = Vec::new();
    for gw in &gateways {
        let mut per_second: HashMap<i64, u64> = HashMap::new();
        for r in gw.requests() {
            *per_second.entry(r.unix_ms.div_euclid(1000)).or_default() += 1;
        }
        let most = per_second.values().copied().max().unwrap_or(0);
        assert!(
            most <= PER_SECOND,
            "{most} requests of one account in one second (budget {PER_SECOND})"
        );
        busiest.push(most);
    }
    println!(
        "cluster kill loop: {kills} SIGKILLs in {:.1}s; {} matching messages on 2 accounts, {} deliveries; busiest second per account {busiest:?}/{PER_SECOND}; every chat polled again {:.1}s after the end of the kills (bound {bound:?})",
        started.elapsed().as_secs_f64(),
        planted.iter().map(HashSet::len).sum::<usize>(),
        rx.received().len(),
        recovered.as_secs_f64()
    );
    for gw in gateways {
        gw.shutdown().await;
    }
}
