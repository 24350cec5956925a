//! The daemon: opens the store, starts the poller and the dispatcher, stops them gracefully.
//!
//! Bind outside, run inside: `run` takes a compiled config and rules and a shutdown token,
//! so tests and the demo run it in-process.

use crate::config::Config;
use crate::engine::poller::{Poller, Stats};
use crate::gateway::client::{Gateway, RateBudget};
use crate::metrics::Metrics;
use crate::outbox::dispatcher::Dispatcher;
use crate::outbox::schedule::RetryPolicy;
use crate::rules::RuleSet;
use crate::store::Store;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a graceful stop waits for in-flight polls and deliveries.
pub const STOP_DEADLINE: Duration = Duration::from_secs(15);

/// A running engine's handles, for the demo, tests and the health and metrics server.
pub struct Running {
    pub stats: Arc<Stats>,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    /// The state file's background checkpoints, for as long as this is held.
    pub checkpointer: crate::store::Checkpointer,
    /// Reloads the rules: the file watcher, SIGHUP and `POST /api/reload` share it.
    pub(crate) reloader: Arc<crate::reload::Reloader>,
    /// The admin API's token (`server.admin_token`); None: the admin API is off.
    pub(crate) admin_token: Option<secrecy::SecretString>,
    /// In a cluster: the lease loop, taken by the daemon's `run`.
    lease_loop: std::sync::Mutex<Option<LeaseLoop>>,
    /// What the status page shows of the chats and the rules.
    pub(crate) board: Arc<crate::engine::board::ChatBoard>,
    pub(crate) rule_board: Arc<crate::engine::board::RuleBoard>,
    pub(crate) console: crate::console::Console,
}

impl Running {
    /// The lease loop, for the caller of the daemon's `run` to hand over (once; None outside a
    /// cluster).
    pub fn take_lease_loop(&self) -> Option<LeaseLoop> {
        self.lease_loop
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

/// Opens the store (refusing a locked or broken one) and builds the parts.
pub fn prepare(
    config: Config,
    rules: RuleSet,
) -> anyhow::Result<(Arc<Poller>, Arc<Dispatcher>, Running)> {
    let store = Store::open_for(&config, true)?;
    let checkpointer = store.start_checkpointer()?;
    let gateways = config
        .accounts
        .iter()
        .map(|a| {
            let budget = Arc::new(RateBudget::new(a.api.rate_per_second, a.api.burst));
            Gateway::new(&a.api, budget).map_err(|e| anyhow::anyhow!("account `{}`: {e}", a.name))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let wake = Arc::new(crate::outbox::dispatcher::Wake::default());
    let policy = RetryPolicy {
        max_attempts: config.webhooks.max_attempts,
        ..RetryPolicy::default()
    }
    .scaled(config.webhooks.retry_scale);
    let metrics = Arc::new(Metrics::new(
        &config
            .accounts
            .iter()
            .map(|a| a.name.as_str())
            .collect::<Vec<_>>(),
        &config
            .chats
            .iter()
            .map(|c| c.id.as_str())
            .collect::<Vec<_>>(),
    ));
    metrics.set_rules_loaded(true);
    metrics.set_rule_set(&rules.fingerprint);
    metrics.known_rules(
        rules
            .rules
            .iter()
            .map(|r| r.id.as_str())
            .chain(rules.chat_rules.iter().map(|r| r.id.as_str()))
            .chain(rules.script_rules.iter().map(|r| r.id.as_str())),
    );
    let commits = crate::store::group::CommitQueue::start(store.clone())
        .map_err(|e| anyhow::anyhow!("cannot start the store's writer: {e}"))?;
    let mut dispatcher = Dispatcher::new(
        store.clone(),
        commits.clone(),
        config.webhooks.timeout,
        policy,
        config.webhooks.secret.clone(),
        config.webhooks.net_policy.clone(),
        wake.clone(),
    )
    .map_err(anyhow::Error::msg)?
    .with_config_fingerprint(&config);
    dispatcher.metrics = metrics.clone();
    let stats = Arc::new(Stats::default());
    let admin_token = config.admin_token.clone();
    // Config reloads reach the poller's loop through this channel; in a cluster they go to the
    // lease loop, which sends the poller its share.
    let (updates, chat_updates) = tokio::sync::mpsc::unbounded_channel();
    let cluster = config
        .cluster
        .map(|ttl| Arc::new(crate::cluster::Cluster::new(ttl)));
    let (reloads, lease_loop) = match &cluster {
        Some(c) => {
            let (reloads, from_config) = tokio::sync::mpsc::unbounded_channel();
            (
                reloads,
                Some(LeaseLoop {
                    cluster: c.clone(),
                    reloads: from_config,
                    poller: updates,
                }),
            )
        }
        None => (updates, None),
    };
    let config_source = config
        .path
        .is_file()
        .then(|| crate::reload::ConfigSource::new(&config, reloads));
    // The silences in force from the first poll on; then read again every second.
    let silences = store
        .silences(Some(jiff::Timestamp::now().as_millisecond()))
        .map_err(|e| anyhow::anyhow!("cannot read the silences: {e}"))?;
    let poller = Poller {
        cluster,
        silences: Arc::new(RwLock::new(Arc::new(silences))),
        config: Arc::new(config),
        gateways,
        store: store.clone(),
        commits,
        rules: Arc::new(RwLock::new(Arc::new(rules))),
        wake_dispatcher: wake,
        stats: stats.clone(),
        metrics: metrics.clone(),
        skipped_seen: Default::default(),
        snapshots: Default::default(),
        started_s: jiff::Timestamp::now().as_second(),
        chat_updates: std::sync::Mutex::new(Some(chat_updates)),
        board: Default::default(),
        rule_board: Default::default(),
    };
    let dispatcher = Arc::new(dispatcher);
    let rules_loaded_ms = Arc::new(std::sync::atomic::AtomicI64::new(
        jiff::Timestamp::now().as_millisecond(),
    ));
    let (board, rule_board) = (poller.board.clone(), poller.rule_board.clone());
    let console = crate::console::Console {
        show_phone_numbers: poller.config.show_phone_numbers,
        history: poller.config.history.is_some(),
        started_ms: jiff::Timestamp::now().as_millisecond(),
        rules_loaded_ms: rules_loaded_ms.clone(),
    };
    let reloader = Arc::new(crate::reload::Reloader {
        paths: poller.config.rule_paths.clone(),
        target: poller.rules.clone(),
        allow_empty: poller.config.allow_empty_rules,
        policy: poller.config.webhooks.net_policy.clone(),
        timezone: poller.config.rules_timezone.clone(),
        then: Box::new({
            let dispatcher = dispatcher.clone();
            let metrics = metrics.clone();
            move |set| {
                metrics.set_rule_set(&set.fingerprint);
                rules_loaded_ms.store(
                    jiff::Timestamp::now().as_millisecond(),
                    std::sync::atomic::Ordering::Relaxed,
                );
                // New rules are a new fingerprint: urls a 410 disabled get another chance.
                dispatcher.refresh_fingerprint();
            }
        }),
        one_at_a_time: Default::default(),
        config: config_source,
    });
    Ok((
        Arc::new(poller),
        dispatcher,
        Running {
            stats,
            store,
            metrics,
            checkpointer,
            reloader,
            admin_token,
            lease_loop: std::sync::Mutex::new(lease_loop),
            board,
            rule_board,
            console,
        },
    ))
}

/// The lease loop's channels, until the daemon's `run` starts it (in a cluster).
pub struct LeaseLoop {
    cluster: Arc<crate::cluster::Cluster>,
    reloads: tokio::sync::mpsc::UnboundedReceiver<crate::engine::poller::ChatsUpdate>,
    poller: tokio::sync::mpsc::UnboundedSender<crate::engine::poller::ChatsUpdate>,
}

/// Runs until `shutdown` is cancelled, then lets in-flight work finish within
/// [`STOP_DEADLINE`]; whatever is not delivered stays pending in the outbox.
pub(crate) async fn run(
    poller: Arc<Poller>,
    dispatcher: Arc<Dispatcher>,
    reloader: Arc<crate::reload::Reloader>,
    lease_loop: Option<LeaseLoop>,
    shutdown: CancellationToken,
) {
    let chats = poller.config.chats.len();
    let accounts = poller.config.accounts.len();
    let store = poller.store.clone();
    match &lease_loop {
        Some(l) => {
            tracing::info!(event = "daemon.started", chats, accounts, state = %poller.store.path().display(), instance = %l.cluster.me, "cartat-rules started in a cluster: the chats are shared through leases")
        }
        None => {
            tracing::info!(event = "daemon.started", chats, accounts, state = %poller.store.path().display(), "cartat-rules started")
        }
    }
    // The lease loop stops with the others, but gives up its leases only after them.
    let leases_stop = CancellationToken::new();
    let leases = lease_loop.map(|l| {
        let cluster = l.cluster.clone();
        let task = tokio::spawn(crate::cluster::run(
            l.cluster,
            store.clone(),
            crate::engine::poller::ChatsUpdate::of(&poller.config),
            l.reloads,
            l.poller,
            poller.metrics.clone(),
            leases_stop.clone(),
        ));
        (cluster, task)
    });
    let reloader = tokio::spawn(crate::reload::watch(
        reloader,
        poller.config.watch_rules,
        Duration::from_secs(1),
        shutdown.clone(),
    ));
    let sealer = tokio::spawn(crate::engine::digest::run(
        poller.commits.clone(),
        poller.rules.clone(),
        poller.wake_dispatcher.clone(),
        poller.cluster.clone(),
        shutdown.clone(),
    ));
    let silences = tokio::spawn(watch_silences(
        poller.commits.clone(),
        poller.silences.clone(),
        shutdown.clone(),
    ));
    let pruner = poller
        .config
        .history
        .map(|h| tokio::spawn(prune_history(poller.commits.clone(), h, shutdown.clone())));
    let p = tokio::spawn(poller.run(shutdown.clone()));
    let d = tokio::spawn(dispatcher.run(shutdown.clone()));
    shutdown.cancelled().await;
    tracing::info!(
        event = "daemon.stopping",
        "stopping: finishing in-flight polls and deliveries"
    );
    let both = async {
        let _ = reloader.await;
        let _ = sealer.await;
        let _ = silences.await;
        if let Some(pruner) = pruner {
            let _ = pruner.await;
        }
        let _ = p.await;
        let _ = d.await;
    };
    if tokio::time::timeout(STOP_DEADLINE, both).await.is_err() {
        tracing::warn!(
            event = "daemon.stop_deadline",
            "stop deadline reached; unfinished deliveries stay pending and are re-sent on the next start"
        );
    }
    if let Some((cluster, task)) = leases {
        leases_stop.cancel();
        let _ = task.await;
        crate::cluster::release(&cluster, &store).await;
    }
    // A clean stop leaves the state file whole on its own: what the write-ahead log holds is
    // moved into it (a copy of the file alone, or a process exit that beats the writer
    // thread's close, then misses nothing).
    let checkpoint = tokio::task::spawn_blocking(move || store.checkpoint()).await;
    if let Ok(Err(e)) = checkpoint {
        tracing::warn!(
            event = "store.checkpoint_failed",
            "could not fold the write-ahead log into the state file: {e}"
        );
    }
    tracing::info!(event = "daemon.stopped", "stopped");
}

/// How often the run history is cut down to `history.keep` and `history.max_age`.
pub const PRUNE_HISTORY_EVERY: Duration = Duration::from_secs(60);

/// Prunes the run history at start and every [`PRUNE_HISTORY_EVERY`], through the writer (a
/// delete of the oldest rows, between two polls' transactions), until `shutdown`.
async fn prune_history(
    commits: crate::store::group::CommitQueue,
    h: crate::config::HistoryConfig,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(PRUNE_HISTORY_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let before = jiff::Timestamp::now().as_millisecond()
            - h.max_age.as_millis().min(i64::MAX as u128) as i64;
        match commits
            .read(move |store| store.prune_history(h.keep, before))
            .await
        {
            Some(Ok(n)) if n > 0 => {
                tracing::debug!(
                    event = "history.pruned",
                    deleted = n,
                    "run history pruned: {n} entries"
                );
            }
            Some(Err(e)) => {
                tracing::warn!(
                    event = "history.prune_failed",
                    "cannot prune the run history: {e}"
                );
            }
            _ => {}
        }
    }
}

/// How often the daemon reads the silences (`cartat-rules silence` writes them next to it).
pub const SILENCES_EVERY: Duration = Duration::from_secs(1);

/// Reads the silences in force every [`SILENCES_EVERY`] into `into`, until `shutdown`; a failed
/// read keeps the last ones (and is logged once until a read succeeds again).
async fn watch_silences(
    commits: crate::store::group::CommitQueue,
    into: Arc<RwLock<Arc<Vec<crate::model::Silence>>>>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(SILENCES_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = jiff::Timestamp::now().as_millisecond();
        match commits.read(move |store| store.silences(Some(now))).await {
            Some(Ok(list)) => {
                failing = false;
                let changed = **into.read().unwrap_or_else(|e| e.into_inner()) != list;
                if changed {
                    tracing::info!(event = "silences.changed", in_force = list.len(),
                        ids = ?list.iter().map(|s| s.id).collect::<Vec<_>>(),
                        "silences in force: {}", list.len());
                    *into.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(list);
                }
            }
            Some(Err(e)) if !failing => {
                failing = true;
                tracing::warn!(
                    event = "silences.read_failed",
                    "cannot read the silences (the last ones stay in force): {e}"
                );
            }
            _ => {}
        }
    }
}

/// Binds the health and metrics server's address (`server.listen`); a failure is logged and
/// the daemon runs without it (monitoring must not stop the work).
pub async fn bind_server(addr: Option<std::net::SocketAddr>) -> Option<tokio::net::TcpListener> {
    let addr = addr?;
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::error!(event = "server.listen_failed", %addr, "cannot listen for /healthz and /metrics ({e}); running without them (set server.listen to a free address, or `off`)");
            None
        }
    }
}

/// Serves `/healthz` and `/metrics` on `listener` until `shutdown`.
pub fn spawn_server(
    listener: tokio::net::TcpListener,
    running: &Running,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let state = crate::server::ServerState {
        metrics: running.metrics.clone(),
        store: running.store.clone(),
        reloader: running.reloader.clone(),
        admin_token: running.admin_token.clone().map(Arc::new),
        board: running.board.clone(),
        rule_board: running.rule_board.clone(),
        console: running.console.clone(),
    };
    tokio::spawn(async move {
        if let Err(e) = crate::server::run(listener, state, shutdown).await {
            tracing::error!(
                event = "server.stopped",
                "the health and metrics server stopped: {e}"
            );
        }
    })
}

/// Resolves when SIGINT or SIGTERM arrives.
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
