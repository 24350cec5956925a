//! Digests (`digest:`) with the real binary: the firings of a window survive a SIGKILL inside
//! the window and an abort in the middle of sealing it; exactly one digest goes out, with every
//! firing in it.

use crate::crash::wait_abort;
use crate::delivery::{chat_ids, outbox, spawn_with_env, wait_first_sight, write_config};
use crate::support::*;
use cartat_rules::store::Store;
use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

/// The window of the test's rule, in seconds.
const EVERY: i64 = 15;

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// How many firings wait for their digest, read from the state file as `outbox list` does.
fn pending(ws: &Workspace) -> i64 {
    Store::open_shared(&ws.path().join("state/test.db"))
        .and_then(|s| s.pending_digest_items())
        .map(|p| p.values().sum())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digest_survives_a_sigkill_inside_its_window_and_a_crash_while_it_is_sealed() {
    let chats = chat_ids("9665000077", 3);
    let gw = gateway(&quiet_chats(&chats)).await;
    let rx = receiver().await;
    let ws = Workspace::new();
    ws.write(
        "rules/digest.yaml",
        &format!(
            "id: bot-digest\nmatch: {{ from_me: false, body: {{ any: [bot], words: true }} }}\n\
             digest: {{ every: {EVERY}s }}\nactions: [ {{ webhook: {{ url: \"{}\" }} }} ]\n",
            rx.url("/digest")
        ),
    );
    let cfg = write_config(&ws, &gw, &chats, "2s", 0.01, "");

    // Begin just after a window starts, so that everything below happens inside it.
    let now = unix_now();
    let into = now.rem_euclid(EVERY as f64);
    tokio::time::sleep(Duration::from_secs_f64(EVERY as f64 - into + 0.1)).await;
    let window_start = unix_now() as i64 / EVERY * EVERY;

    let daemon = Daemon::spawn(&cfg);
    wait_first_sight(&gw, &chats).await;
    for c in &chats {
        gw.push_message(c, &format!("bot before the kill {c}"), false);
    }
    wait_for("3 firings committed", Duration::from_secs(10), || {
        pending(&ws) == 3
    })
    .await;
    daemon.kill(); // SIGKILL, inside the window

    // The next daemon is armed to abort inside the transaction that seals the window.
    let armed = spawn_with_env(&cfg, &[("CARTAT_FAILPOINT", "digest_before_commit")]);
    let polled = gw.requests().len();
    wait_for("the armed daemon's polls", Duration::from_secs(10), || {
        gw.requests().len() >= polled + 2 * chats.len()
    })
    .await;
    for c in &chats {
        gw.push_message(c, &format!("bot after the kill {c}"), false);
    }
    wait_for("6 firings committed", Duration::from_secs(10), || {
        pending(&ws) == 6
    })
    .await;
    assert!(
        unix_now() < (window_start + EVERY) as f64,
        "the machine was too slow: the firings did not all fall in one {EVERY}s window"
    );
    assert!(
        rx.received().is_empty(),
        "nothing is sent before the window ends"
    );
    wait_abort(armed, "digest_before_commit").await;
    assert!(outbox(&ws).is_empty(), "the aborted seal left no row");
    assert_eq!(pending(&ws), 6, "and every firing");

    let daemon = Daemon::spawn(&cfg);
    wait_received(&rx, 1, "the digest").await;
    // Give a second digest of the same window every chance to appear.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = rx.received();
    assert_eq!(got.len(), 1, "exactly one digest: {got:?}");
    let body = got[0].json();
    assert_eq!(body["type"], "rule.digest");
    assert_eq!(body["rule"], "bot-digest");
    assert_eq!(body["count"], 6);
    assert_eq!(body["more"], 0);
    assert_eq!(
        body["window"]["start"],
        jiff::Timestamp::from_second(window_start)
            .unwrap()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    );
    let listed: BTreeSet<String> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["message"]["body"].as_str().unwrap().to_string())
        .collect();
    let want: BTreeSet<String> = chats
        .iter()
        .flat_map(|c| {
            [
                format!("bot before the kill {c}"),
                format!("bot after the kill {c}"),
            ]
        })
        .collect();
    assert_eq!(listed, want, "every firing, once");
    assert_eq!(got[0].header("webhook-id"), body["delivery_id"].as_str());
    let rows = outbox(&ws);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(pending(&ws), 0);
    assert_eq!(daemon.stop(), 0);
    gw.shutdown().await;
}
