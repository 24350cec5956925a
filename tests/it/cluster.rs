//! Several instances on one PostgreSQL database (`cluster:`), with real processes, a real
//! server (`cartat_rules::pgtest`) and real signals: an instance frozen with SIGSTOP past its
//! leases commits nothing when it resumes (fencing) while another polls its chats; instances
//! SIGKILLed at random lose and repeat nothing, and the gateway never sees more than the
//! account's budget in a second.

use crate::crash::use_postgres;
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
