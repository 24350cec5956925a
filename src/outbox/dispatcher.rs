//! The dispatcher: sends due outbox rows, signs them, classifies the answer and records the
//! outcome. A row stays pending while it is in flight, so a crash re-sends it with the same
//! `delivery_id` (at-least-once on the wire, exactly-once per id for an idempotent receiver).
//!
//! Owns: webhook I/O. Must not: follow redirects, use environment proxies, or connect to an
//! address the SSRF guard refuses.

use crate::events;
use crate::outbox::schedule::{AttemptResult, RetryPolicy, Verdict, classify, next_delay};
use crate::outbox::sign::SigningKey;
use crate::outbox::ssrf::{GuardedResolver, NetPolicy, vet_url};
use crate::store::{AttemptRecord, Next, OutboxRow, Store};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How many deliveries are in flight at once.
const CONCURRENCY: usize = 32;

/// Sends webhooks from the outbox.
pub struct Dispatcher {
    pub store: Store,
    http: reqwest::Client,
    pub policy: RetryPolicy,
    secret: Option<SigningKey>,
    net_policy: NetPolicy,
    pub wake: Arc<Notify>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Dispatcher {
    pub fn new(
        store: Store,
        timeout: Duration,
        policy: RetryPolicy,
        secret: Option<SigningKey>,
        net_policy: NetPolicy,
        wake: Arc<Notify>,
    ) -> Result<Dispatcher, String> {
        crate::install_crypto();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver::new(net_policy.clone())))
            .user_agent(concat!("cartat-rules/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the webhook client: {e}"))?;
        Ok(Dispatcher {
            store,
            http,
            policy,
            secret,
            net_policy,
            wake,
            metrics: Arc::default(),
        })
    }

    /// Sends until `shutdown`; deliveries in flight then finish (bounded by the timeout), the
    /// rest stay pending in the outbox.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let store = self.store.clone();
            let now = now_ms();
            let due = match tokio::task::spawn_blocking(move || store.due(now, CONCURRENCY)).await {
                Ok(Ok(rows)) => rows,
                Ok(Err(e)) => {
                    tracing::error!("outbox query failed: {e}");
                    Vec::new()
                }
                Err(e) => {
                    tracing::error!("outbox query panicked: {e}");
                    Vec::new()
                }
            };
            if due.is_empty() {
                let store = self.store.clone();
                let next = tokio::task::spawn_blocking(move || store.next_due_ms())
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .flatten();
                let wait = next
                    .map(|t| Duration::from_millis((t - now_ms()).clamp(0, 1000) as u64))
                    .unwrap_or(Duration::from_secs(1));
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
                continue;
            }
            let mut set = tokio::task::JoinSet::new();
            for row in due {
                let this = self.clone();
                set.spawn(async move { this.deliver(row).await });
            }
            while set.join_next().await.is_some() {}
        }
    }

    /// One attempt for one row, recorded in the store.
    pub async fn deliver(&self, row: OutboxRow) {
        let attempt = row.attempts + 1;
        let result = self.send(&row).await;
        let now = now_ms();
        let verdict = classify(&result, now / 1000);
        let status = match &result {
            AttemptResult::Status { code, .. } => Some(*code),
            _ => None,
        };
        let d = &row.delivery;
        let record = match &verdict {
            Verdict::Delivered => {
                events::delivered(&d.delivery_id, &d.rule_id, status.unwrap_or(0), attempt);
                self.metrics.delivery("delivered");
                AttemptRecord {
                    next: Next::Delivered,
                    status,
                    error: None,
                }
            }
            Verdict::Retry { reason, .. } => {
                let mut rng = rand::rng();
                match next_delay(&self.policy, attempt, &verdict, &mut rng) {
                    Some(delay) => {
                        events::delivery_retry(&d.delivery_id, &d.rule_id, reason, attempt, delay);
                        self.metrics.delivery("retry");
                        AttemptRecord {
                            next: Next::RetryAt(now + delay.as_millis() as i64),
                            status,
                            error: Some(reason.clone()),
                        }
                    }
                    None => {
                        let why = format!("{reason} (after {attempt} attempts)");
                        events::dead_lettered(&d.delivery_id, &d.rule_id, &why, attempt);
                        self.metrics.delivery("dead");
                        AttemptRecord {
                            next: Next::Dead,
                            status,
                            error: Some(why),
                        }
                    }
                }
            }
            Verdict::Dead { reason } => {
                events::dead_lettered(&d.delivery_id, &d.rule_id, reason, attempt);
                self.metrics.delivery("dead");
                AttemptRecord {
                    next: Next::Dead,
                    status,
                    error: Some(reason.clone()),
                }
            }
            Verdict::Gone => {
                let why =
                    "410 Gone: the receiver asked us to stop sending to this endpoint".to_string();
                events::dead_lettered(&d.delivery_id, &d.rule_id, &why, attempt);
                self.metrics.delivery("gone");
                AttemptRecord {
                    next: Next::Dead,
                    status,
                    error: Some(why),
                }
            }
        };
        let store = self.store.clone();
        let id = row.id;
        match tokio::task::spawn_blocking(move || store.record_attempt(id, &record, now)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(delivery_id = %d.delivery_id, "cannot record the delivery outcome (it will be re-sent): {e}")
            }
            Err(e) => tracing::error!("record_attempt panicked: {e}"),
        }
    }

    async fn send(&self, row: &OutboxRow) -> AttemptResult {
        let d = &row.delivery;
        if let Err(e) = vet_url(&d.url, &self.net_policy) {
            return AttemptResult::Refused(e);
        }
        let ts = now_ms() / 1000;
        let mut req = self
            .http
            .post(&d.url)
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", &d.delivery_id)
            .header("webhook-id", &d.delivery_id)
            .header("webhook-timestamp", ts.to_string());
        if let Some(key) = &self.secret {
            req = req.header(
                "webhook-signature",
                key.sign(&d.delivery_id, ts, d.body.as_bytes()),
            );
        }
        for (k, v) in &d.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        match req.body(d.body.clone()).send().await {
            Ok(resp) => {
                let retry_after = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                AttemptResult::Status {
                    code: resp.status().as_u16(),
                    retry_after,
                }
            }
            Err(e) if e.is_timeout() => AttemptResult::Timeout,
            Err(e) => {
                let text = crate::gateway::client::error_chain(&e);
                if text.contains("refused by the SSRF guard") {
                    AttemptResult::Refused(text)
                } else {
                    AttemptResult::Connect(text)
                }
            }
        }
    }
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}
