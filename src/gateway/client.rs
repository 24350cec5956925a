//! The HTTP client for Cartat: one API-wide rate budget, the bearer token kept secret,
//! `limit` sent both as JSON body and query parameter.
//!
//! Owns: every request to the gateway and the budget they share, including the pause a
//! 429's `Retry-After` imposes on every caller. Must not: parse messages beyond handing the
//! bytes to [`super::model`], or retry on its own (the poller decides).

use super::model::{ChatId, Page, ReplyError, parse_reply};
use crate::outbox::schedule::parse_retry_after;
use governor::{Quota, RateLimiter, clock::DefaultClock, state::InMemoryState, state::NotKeyed};
use secrecy::{ExposeSecret, SecretString};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// The API-wide budget: a GCRA quota plus a pause that `Retry-After` pushes forward.
pub struct RateBudget {
    limiter: RateLimiter<NotKeyed, InMemoryState, DefaultClock>,
    paused_until: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for RateBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateBudget").finish_non_exhaustive()
    }
}

impl RateBudget {
    pub fn new(per_second: u32, burst: u32) -> RateBudget {
        let per_second = NonZeroU32::new(per_second.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
        RateBudget {
            limiter: RateLimiter::direct(Quota::per_second(per_second).allow_burst(burst)),
            paused_until: Mutex::new(None),
        }
    }

    fn paused(&self) -> Option<Instant> {
        let p = *self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
        p.filter(|t| *t > Instant::now())
    }

    /// Pauses every caller for `d` (never shortens an existing pause).
    pub fn pause_for(&self, d: Duration) {
        let until = Instant::now() + d;
        let mut p = self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
        if p.is_none_or(|old| old < until) {
            *p = Some(until);
        }
    }

    /// Waits until a request may be sent; returns how long it waited.
    pub async fn acquire(&self) -> Duration {
        let start = Instant::now();
        loop {
            if let Some(until) = self.paused() {
                tokio::time::sleep_until(until).await;
            }
            self.limiter.until_ready().await;
            // A 429 may have arrived while we waited for the quota: honour it too.
            if self.paused().is_none() {
                return start.elapsed();
            }
        }
    }
}

/// Why a fetch failed (an error for that poll of that chat only).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("rate limited by the gateway (429), every chat paused for {0:?}")]
    RateLimited(Duration),
    #[error("the gateway refused the token (401); check api.token")]
    Unauthorized,
    #[error("the gateway does not know this chat (404)")]
    NotFound,
    #[error("the gateway answered {0}")]
    Status(u16),
    #[error("the gateway did not answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot reach the gateway: {0}")]
    Transport(String),
    #[error("{0}")]
    Reply(#[from] ReplyError),
}

/// A Cartat client; cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    http: reqwest::Client,
    base_url: String,
    token: Arc<SecretString>,
    timeout: Duration,
    pub budget: Arc<RateBudget>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("base_url", &self.base_url)
            .field("token", &"**redacted**")
            .finish()
    }
}

impl Gateway {
    pub fn new(
        base_url: &str,
        token: SecretString,
        timeout: Duration,
        budget: Arc<RateBudget>,
    ) -> Result<Gateway, String> {
        crate::install_crypto();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("cartat-rules/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Gateway {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
            token: Arc::new(token),
            timeout,
            budget,
        })
    }

    /// Fetches one chat with at most `limit` messages, waiting for the budget first.
    pub async fn fetch(&self, chat: &ChatId, limit: u32) -> Result<Page, FetchError> {
        self.budget.acquire().await;
        let url = format!("{}/chats/{}", self.base_url, chat.path_segment());
        let resp = self
            .http
            .get(&url)
            .header("Accept", "application/json")
            .bearer_auth(self.token.expose_secret())
            .query(&[("limit", limit)])
            .json(&serde_json::json!({ "limit": limit }))
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        let status = resp.status().as_u16();
        match status {
            200..=299 => {}
            429 => {
                let now = jiff::Timestamp::now().as_second();
                let wait = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, now))
                    .unwrap_or(Duration::from_secs(5));
                self.budget.pause_for(wait);
                return Err(FetchError::RateLimited(wait));
            }
            401 | 403 => return Err(FetchError::Unauthorized),
            404 => return Err(FetchError::NotFound),
            s => return Err(FetchError::Status(s)),
        }
        let bytes = resp.bytes().await.map_err(|e| self.transport(e))?;
        Ok(parse_reply(&bytes, chat)?)
    }

    fn transport(&self, e: reqwest::Error) -> FetchError {
        if e.is_timeout() {
            FetchError::Timeout(self.timeout)
        } else {
            // Without the URL: it holds the chat's phone number (the token is in a header).
            FetchError::Transport(error_chain(&e.without_url()))
        }
    }
}

/// An error and its sources on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}
