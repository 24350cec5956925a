//! Resolved events (`notify_resolved: true`) with the real binary: the alert is resolved
//! exactly once, across a SIGKILL and aborts inside and right after the commit that resolves it.

use crate::crash::wait_abort;
use crate::delivery::{chat_ids, outbox, spawn_with_env, wait_first_sight, write_config};
use crate::support::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolved_event_goes_out_exactly_once_across_a_sigkill_and_crashes_at_its_commit() {
    let chats = chat_ids("9665000088", 1);
    let gw = gateway(&quiet_chats(&chats)).await;
    let rx = receiver().await;
    let ws = Workspace::new();
    ws.write(
        "rules/sla.yaml",
        &format!(
            "id: sla\non: chat\nmatch: {{ unanswered_for: 1s }}\nnotify_resolved: true\n\
             actions: [ {{ webhook: {{ url: \"{}\" }} }} ]\n",
            rx.url("/oncall")
        ),
    );
    let cfg = write_config(&ws, &gw, &chats, "2s", 0.01, "");
    let daemon = Daemon::spawn(&cfg);
    wait_first_sight(&gw, &chats).await;
    gw.push_message(&chats[0], "anyone there?", false);
    wait_received(&rx, 1, "the alert").await;
    let alert = rx.received()[0].json();
    assert_eq!(alert["type"], "rule.matched");
    wait_for(
        "the alert recorded as delivered",
        Duration::from_secs(10),
        || outbox(&ws).iter().any(|r| r.state == "delivered"),
    )
    .await;
    daemon.kill(); // SIGKILL while the alert stands

    // We answer while no daemon runs; the first daemon dies inside the transaction that
    // resolves the alert, the second right after its commit, before any webhook went out.
    gw.push_message(&chats[0], "yes, here", true);
    for point in ["in_transaction", "after_commit"] {
        let armed = spawn_with_env(&cfg, &[("CARTAT_FAILPOINT", point)]);
        wait_abort(armed, point).await;
        assert_eq!(rx.received().len(), 1, "nothing sent before `{point}`");
    }
    let resolved_rows = || {
        outbox(&ws)
            .iter()
            .filter(|r| r.delivery.delivery_id.ends_with(":resolved"))
            .count()
    };
    assert_eq!(resolved_rows(), 1, "committed once, by the second");

    let daemon = Daemon::spawn(&cfg);
    wait_received(&rx, 2, "the resolved event").await;
    assert_eq!(daemon.stop(), 0);
    // Restarted: the alert stays resolved, and is not resolved again.
    let daemon = Daemon::spawn(&cfg);
    let polled = gw.requests().len();
    wait_for("a few more polls", Duration::from_secs(10), || {
        gw.requests().len() >= polled + 5
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(daemon.stop(), 0);

    let got = rx.received();
    assert_eq!(got.len(), 2, "one alert, one resolved: {got:?}");
    let resolved = got[1].json();
    assert_eq!(resolved["type"], "rule.resolved");
    assert_eq!(resolved["resolves"], alert["delivery_id"]);
    assert_eq!(
        resolved["delivery_id"],
        format!("{}:resolved", alert["delivery_id"].as_str().unwrap()).as_str()
    );
    assert_eq!(
        got[1].header("webhook-id"),
        resolved["delivery_id"].as_str()
    );
    assert_eq!(resolved["message"]["body"], "yes, here");
    assert_eq!(resolved_rows(), 1);
    gw.shutdown().await;
}
