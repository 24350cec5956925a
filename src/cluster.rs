//! Several instances on one PostgreSQL database (`cluster:` in the config): each watched chat
//! is polled by at most one live instance, through a lease with an expiry (by the database's
//! clock) and a fencing token that grows with every change of owner.
//!
//! Owns: the lease loop — every third of the lease's life an instance says it is alive, renews
//! its leases, gives up what is over its fair share and takes free or expired chats up to it
//! ([`crate::store::postgres::Postgres::lease_cycle`], one transaction) — and what follows from
//! the leases it holds: the chats its poller polls and the API budget it may use (the
//! account's budget divided among the instances alive), sent to the poller as a
//! [`ChatsUpdate`]; the chats its dispatcher sends for; whether it seals the digests of all
//! chats (the holder of the pseudo-chat [`ALL`]). A poll's commit carries the token of its
//! chat's lease and is refused if the lease moved on (a paused instance that lost its chats
//! commits nothing), and an instance stops sending for its chats as soon as its leases may
//! have run out by its own clock (a third of their life before they do). Must not: poll, send
//! or commit itself.

use crate::config::WatchedChat;
use crate::engine::poller::ChatsUpdate;
use crate::store::Store;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio_util::sync::CancellationToken;

/// The pseudo-chat whose holder seals the digests over all chats and sends their webhooks.
pub const ALL: &str = crate::model::ALL_CHATS;

/// This instance in the cluster, and the leases it holds now.
#[derive(Debug)]
pub struct Cluster {
    /// This instance's name: host, process id and a random part.
    pub me: String,
    /// How long a lease lasts without renewal.
    pub ttl: Duration,
    /// chat → (fencing token, until when this instance may act on it by its own clock).
    held: RwLock<HashMap<String, (i64, Instant)>>,
}

impl Cluster {
    pub fn new(ttl: Duration) -> Cluster {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "host".into());
        Cluster {
            me: format!(
                "{host}-{}-{:04x}",
                std::process::id(),
                rand::random::<u16>()
            ),
            ttl,
            held: RwLock::default(),
        }
    }

    fn held(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, (i64, Instant)>> {
        self.held.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The fencing token of this instance's lease on `chat`, if it may still act on it.
    pub fn token(&self, chat: &str) -> Option<i64> {
        match self.held().get(chat) {
            Some((token, until)) if Instant::now() < *until => Some(*token),
            _ => None,
        }
    }

    /// How many leases this instance holds now.
    pub fn count(&self) -> usize {
        let now = Instant::now();
        self.held().values().filter(|(_, u)| now < *u).count()
    }

    /// How long a lease cycle waits for the next: a third of a lease's life.
    fn every(&self) -> Duration {
        self.ttl / 3
    }
}

/// The lease loop, until `shutdown`: `config`'s chats and each account's `per_second` and
/// `burst` as the config has them (a config reload sends new ones on `reloads`); the poller
/// learns its chats and each account's share of its budget on `poller`. At the end the leases
/// are given up, so the others take the chats over at once.
pub async fn run(
    cluster: Arc<Cluster>,
    store: Store,
    mut config: ChatsUpdate,
    mut reloads: UnboundedReceiver<ChatsUpdate>,
    poller: UnboundedSender<ChatsUpdate>,
    metrics: Arc<crate::metrics::Metrics>,
    shutdown: CancellationToken,
) {
    metrics.set_instance(&cluster.me);
    // A newcomer takes no chat until every other instance alive has said (in its row) that it
    // lowered its share of each account's budget to the one that counts the newcomer, and its
    // last second of requests at the old share has passed (the budget's window): polling
    // before could add the newcomer's share to theirs for a moment, over an account's
    // `per_second`. An instance that does not say (an older version) is taken to have lowered
    // it two lease cycles and a window after the newcomer's start. Alone, it starts at once.
    let window = crate::gateway::client::WINDOW_MARGIN + Duration::from_secs(1);
    let wait = crate::store::postgres::JoinWait {
        window_ms: (window + Duration::from_millis(100)).as_millis() as i64,
        settle_ms: (cluster.every() * 2 + window).as_millis() as i64,
    };
    let mut joining = Some(wait);
    let mut last: Option<(Vec<String>, usize)> = None;
    let mut failing = false;
    loop {
        let started = Instant::now();
        let mut names: Vec<String> = config
            .chats
            .iter()
            .map(|c| c.id.as_str().to_string())
            .collect();
        names.push(ALL.to_string());
        let (s, me, ttl_ms) = (
            store.clone(),
            cluster.me.clone(),
            cluster.ttl.as_millis() as i64,
        );
        let view = tokio::task::spawn_blocking(move || s.lease_cycle(&me, &names, ttl_ms, joining))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        match view {
            Ok(view) => {
                failing = false;
                // What this instance may act on, until a third of the lease's life before it
                // ends by our clock (the database's moved on from when the cycle began).
                let until = started + cluster.ttl - cluster.every();
                let before: Vec<String> = cluster.held().keys().cloned().collect();
                let held: HashMap<String, (i64, Instant)> = view
                    .held
                    .iter()
                    .map(|(c, t)| (c.clone(), (*t, until)))
                    .collect();
                for chat in before.iter().filter(|c| !held.contains_key(*c)) {
                    if !view.released.contains(chat) {
                        crate::events::lease_lost(chat);
                    }
                }
                for chat in &view.taken {
                    crate::events::lease_taken(chat);
                    metrics.lease_taken();
                }
                *cluster.held.write().unwrap_or_else(|e| e.into_inner()) = held;
                metrics.set_leases(cluster.count());
                let mut mine: Vec<String> = view
                    .held
                    .iter()
                    .map(|(c, _)| c.clone())
                    .filter(|c| c != ALL)
                    .collect();
                mine.sort();
                store.set_scope(Some((
                    view.held.iter().map(|(c, _)| c.clone()).collect(),
                    until,
                )));
                if last.as_ref() != Some(&(mine.clone(), view.live)) {
                    crate::events::leases_changed(&cluster.me, mine.len(), view.live);
                    let watched: Vec<WatchedChat> = config
                        .chats
                        .iter()
                        .filter(|c| mine.binary_search(&c.id.as_str().to_string()).is_ok())
                        .cloned()
                        .collect();
                    // Each account's budget, divided among the instances alive (the chats of
                    // every account are spread over all of them).
                    let share = |n: u32| (n / view.live.max(1) as u32).max(1);
                    let _ = poller.send(ChatsUpdate {
                        chats: watched,
                        rates: config
                            .rates
                            .iter()
                            .map(|(name, per_second, burst)| {
                                (name.clone(), share(*per_second), share(*burst))
                            })
                            .collect(),
                    });
                    last = Some((mine, view.live));
                }
                if view.settled {
                    joining = None;
                }
            }
            Err(e) => {
                if !failing {
                    crate::events::lease_cycle_failed(&e);
                }
                failing = true;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(cluster.every()) => {}
            Some(update) = reloads.recv() => {
                config = update;
                // The shares are sent again with the next cycle.
                last = None;
            }
        }
    }
}

/// Gives up every lease of this instance (at the end of a clean stop, once its deliveries in
/// flight are done).
pub async fn release(cluster: &Cluster, store: &Store) {
    cluster
        .held
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
    let (s, me) = (store.clone(), cluster.me.clone());
    match tokio::task::spawn_blocking(move || s.release_all(&me)).await {
        Ok(Ok(n)) => crate::events::leases_released(n),
        Ok(Err(e)) => crate::events::lease_cycle_failed(&e.to_string()),
        Err(e) => crate::events::lease_cycle_failed(&e.to_string()),
    }
}
