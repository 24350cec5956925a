//! The daemon and its commands on a PostgreSQL state (`state.url`), with a real server (see
//! `cartat_rules::pgtest`): `outbox` and `silence` work beside the running daemon, and a second
//! daemon on the same database is refused. The fail-point crash test runs on it too
//! (`crash::a_crash_at_each_fail_point_loses_nothing_on_postgres`).

use crate::crash::use_postgres;
use crate::delivery::{chat_ids, wait_first_sight, wait_logged, write_config};
use crate::support::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commands_work_beside_a_daemon_on_postgres_and_a_second_daemon_is_refused() {
    let Some(url) = tokio::task::spawn_blocking(cartat_rules::pgtest::database)
        .await
        .unwrap()
    else {
        return;
    };
    let chats = chat_ids("9665000066", 2);
    let gw = gateway(&quiet_chats(&chats)).await;
    let rx = receiver().await;
    let ws = Workspace::new();
    ws.write("rules/bot.yaml", &bot_rule("bot", &[rx.url("/bot")]));
    let cfg = write_config(&ws, &gw, &chats, "2s", 0.01, "");
    use_postgres(&cfg, &url);
    let cfg_arg = cfg.to_str().unwrap();
    let daemon = Daemon::spawn(&cfg);
    wait_first_sight(&gw, &chats).await;
    gw.push_message(&chats[0], "bot one", false);
    wait_received(&rx, 1, "the first webhook").await;

    // A second daemon on the same database: refused, saying why, and the first goes on.
    let (code, out, err) = run_cli(&["run", "-c", cfg_arg], ws.path());
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        err.contains(
            "another cartat-rules is already running on the database postgres://postgres@127.0.0.1:"
        ),
        "{err}"
    );

    // The commands, beside it.
    wait_logged(
        "the delivery recorded",
        Duration::from_secs(10),
        &daemon,
        || {
            let (_, out, _) = run_cli(&["outbox", "list", "-c", cfg_arg], ws.path());
            out.lines()
                .any(|l| l.contains("delivered") && l.contains("bot"))
        },
    )
    .await;
    let (code, out, err) = run_cli(
        &[
            "silence",
            "add",
            "--chat",
            &chats[1],
            "--for",
            "1h",
            "--reason",
            "on postgres",
            "-c",
            cfg_arg,
        ],
        ws.path(),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("silence 1: every rule in chat "), "{out}");
    wait_logged(
        "the daemon to see the silence",
        Duration::from_secs(10),
        &daemon,
        || daemon.output().contains("ids=[1]"),
    )
    .await;
    gw.push_message(&chats[1], "bot muted", false);
    gw.push_message(&chats[0], "bot two", false);
    wait_received(&rx, 2, "the second webhook").await;
    wait_logged("the muted firing", Duration::from_secs(10), &daemon, || {
        daemon.output().contains("muted by silence 1")
    })
    .await;
    assert_eq!(daemon.stop(), 0);
    assert_eq!(bodies(&rx.received()), ["bot one", "bot two"]);
    assert!(!ws.path().join("state/test.db").exists(), "no SQLite file");
    gw.shutdown().await;
}
