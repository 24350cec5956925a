//! The HTTP client for Cartat: one API-wide rate budget, the bearer token kept secret,
//! `limit` sent both as JSON body and query parameter.
//!
//! Owns: every request to the gateway and the budget they share, including the pause a
//! 429's `Retry-After` imposes on every caller. Must not: parse messages beyond handing the
//! bytes to [`super::model`], or retry on its own (the poller decides).

use super::http1::{Answer, Failure, Http1};
use super::memo::ReplyMemo;
use super::model::{ChatId, Page, ReplyError};
use crate::net::http::{error_chain, parse_retry_after};
use reqwest::header::{self, HeaderName, HeaderValue};
use secrecy::ExposeSecret;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

const USER_AGENT: &str = concat!("cartat-rules/", env!("CARGO_PKG_VERSION"));

/// The API-wide budget: a GCRA quota (sustained rate and burst), a sliding one-second window
/// that never admits more than `per_second` requests in any second (bursts included, right
/// after start or after a pause), and a pause that `Retry-After` pushes forward.
///
/// Callers reserve a send time in FIFO order and sleep until it, so waking after a pause
/// spreads the queued requests over the window instead of releasing them at once.
pub struct RateBudget {
    state: Mutex<BudgetState>,
}

impl std::fmt::Debug for RateBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateBudget").finish_non_exhaustive()
    }
}

/// Extra width of the sliding window: requests reserved one window apart may reach the
/// gateway a little closer together (scheduling, connection set-up), so leave room.
pub const WINDOW_MARGIN: Duration = Duration::from_millis(50);

/// How late after its reserved time a request may still go on that reservation. Later (a
/// starved process, a slow connect), it takes a new one: requests reserved one window apart
/// but sent late could otherwise reach the gateway closer together than the margin allows.
pub const LATE_SEND: Duration = Duration::from_millis(25);

/// The pure part of [`RateBudget`]: when may the next request go. Time is an input.
#[derive(Debug)]
pub struct BudgetState {
    per_second: usize,
    window: Duration,
    emission: Duration,
    tolerance: Duration,
    /// GCRA's theoretical arrival time.
    tat: Option<Instant>,
    /// The last `per_second` reserved send times, oldest first (non-decreasing).
    recent: VecDeque<Instant>,
    paused_until: Option<Instant>,
}

impl BudgetState {
    pub fn new(per_second: u32, burst: u32) -> BudgetState {
        let per_second = per_second.max(1);
        let burst = burst.clamp(1, per_second);
        let emission = Duration::from_secs(1) / per_second;
        BudgetState {
            per_second: per_second as usize,
            window: Duration::from_secs(1) + WINDOW_MARGIN,
            emission,
            tolerance: emission * (burst - 1),
            tat: None,
            recent: VecDeque::with_capacity(per_second as usize + 1),
            paused_until: None,
        }
    }

    /// Reserves the earliest send time at or after `now` that keeps every rule; the caller
    /// sends then (or, if a pause arrived meanwhile, reserves again).
    pub fn reserve(&mut self, now: Instant) -> Instant {
        let mut t = now;
        if let Some(p) = self.paused_until {
            t = t.max(p);
        }
        if let Some(&last) = self.recent.back() {
            t = t.max(last);
        }
        if let Some(tat) = self.tat
            && let Some(earliest) = tat.checked_sub(self.tolerance)
        {
            t = t.max(earliest);
        }
        if self.recent.len() >= self.per_second {
            t = t.max(self.recent[self.recent.len() - self.per_second] + self.window);
        }
        self.tat = Some(self.tat.map_or(t, |tat| tat.max(t)) + self.emission);
        self.recent.push_back(t);
        while self.recent.len() > self.per_second {
            self.recent.pop_front();
        }
        t
    }

    /// A new rate and burst from now on (a config reload). What was reserved keeps counting:
    /// a lower rate never lets the window it already holds take more than the new rate.
    pub fn set_rate(&mut self, per_second: u32, burst: u32) {
        let fresh = BudgetState::new(per_second, burst);
        self.per_second = fresh.per_second;
        self.emission = fresh.emission;
        self.tolerance = fresh.tolerance;
        while self.recent.len() > self.per_second {
            self.recent.pop_front();
        }
    }

    /// Pauses every caller until `until` (never shortens an existing pause).
    pub fn pause_until(&mut self, until: Instant) {
        if self.paused_until.is_none_or(|old| old < until) {
            self.paused_until = Some(until);
        }
    }

    /// The pause in force at `now`, if any.
    pub fn paused_at(&self, now: Instant) -> Option<Instant> {
        self.paused_until.filter(|t| *t > now)
    }
}

impl RateBudget {
    pub fn new(per_second: u32, burst: u32) -> RateBudget {
        RateBudget {
            state: Mutex::new(BudgetState::new(per_second, burst)),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, BudgetState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// See [`BudgetState::set_rate`].
    pub fn set_rate(&self, per_second: u32, burst: u32) {
        self.state().set_rate(per_second, burst);
    }

    /// The pause in force now, if any.
    pub fn paused(&self) -> Option<Instant> {
        self.state().paused_at(Instant::now())
    }

    /// Pauses every caller for `d` (never shortens an existing pause).
    pub fn pause_for(&self, d: Duration) {
        self.state().pause_until(Instant::now() + d);
    }

    /// Waits until a request may be sent; returns how long it waited.
    pub async fn acquire(&self) -> Duration {
        self.acquire_at().await.0
    }

    /// Waits until a request may be sent; returns how long it waited and the time reserved
    /// for it (a request that goes more than [`LATE_SEND`] after it takes a new one).
    pub async fn acquire_at(&self) -> (Duration, Instant) {
        let start = Instant::now();
        loop {
            let at = self.state().reserve(Instant::now());
            // A time already here goes at once: the runtime's timer would round it up to its
            // next millisecond and spread a bunch of due requests a millisecond apart.
            if at > Instant::now() {
                tokio::time::sleep_until(at).await;
            }
            // A 429 may have arrived while we waited for our turn: honour it too.
            if self.paused().is_none() {
                return (start.elapsed(), at);
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
    #[error(
        "the reply is larger than {0} bytes (api.max_reply_bytes); the rest was not read — raise it if this chat's pages are really that large"
    )]
    TooLarge(u64),
}

/// A Cartat client; cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    http: reqwest::Client,
    base_url: String,
    /// `Bearer <token>`, built once and marked sensitive (never shown by `Debug`).
    authorization: reqwest::header::HeaderValue,
    max_reply_bytes: Option<u64>,
    timeout: Duration,
    pub budget: Arc<RateBudget>,
    /// The lean path for a plain-http gateway without a proxy ([`super::http1`]); reqwest
    /// serves the others.
    plain: Option<Arc<Http1>>,
    /// The headers of every poll on the lean path (the token's marked sensitive).
    plain_headers: Arc<[(HeaderName, HeaderValue)]>,
    /// Each chat's last reply, so the next is parsed only where it differs
    /// ([`super::memo`]); a chat's entry is taken out while its reply is read.
    memos: Arc<Mutex<HashMap<ChatId, ReplyMemo>>>,
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
    /// A client for `api` (its base url, token, timeout, reply cap and proxy) sharing `budget`.
    pub fn new(api: &crate::config::ApiConfig, budget: Arc<RateBudget>) -> Result<Gateway, String> {
        crate::install_crypto();
        let timeout = api.timeout;
        let builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(USER_AGENT);
        // The bearer token goes through a proxy only when `api.proxy` says so: the
        // `HTTP(S)_PROXY` variables of whatever environment the daemon runs in are ignored.
        let builder = match &api.proxy {
            Some(p) => builder
                .proxy(reqwest::Proxy::all(p.as_str()).map_err(|e| format!("api.proxy: {e}"))?),
            None => builder.no_proxy(),
        };
        let http = builder
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let mut authorization =
            reqwest::header::HeaderValue::try_from(format!("Bearer {}", api.token.expose_secret()))
                .map_err(|_| {
                    "api.token holds a character that cannot go in an HTTP header".to_string()
                })?;
        authorization.set_sensitive(true);
        let plain = match api.proxy {
            Some(_) => None,
            None => Http1::for_base_url(&api.base_url).map(Arc::new),
        };
        let plain_headers: Arc<[(HeaderName, HeaderValue)]> = Arc::new([
            (header::ACCEPT, HeaderValue::from_static("application/json")),
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::AUTHORIZATION, authorization.clone()),
            (header::USER_AGENT, HeaderValue::from_static(USER_AGENT)),
        ]);
        Ok(Gateway {
            http,
            base_url: api.base_url.trim_end_matches('/').to_string(),
            authorization,
            max_reply_bytes: api.max_reply_bytes,
            timeout,
            budget,
            plain,
            plain_headers,
            memos: Arc::default(),
        })
    }

    /// The most bytes a reply to `limit` may have.
    pub fn reply_cap(&self, limit: u32) -> u64 {
        self.max_reply_bytes
            .unwrap_or(4 * 1024 * 1024 + 16 * 1024 * u64::from(limit))
    }

    /// Fetches one chat with at most `limit` messages, waiting for the budget first.
    pub async fn fetch(&self, chat: &ChatId, limit: u32) -> Result<Page, FetchError> {
        self.fetch_waited(chat, limit).await.0
    }

    /// As [`Gateway::fetch`], also saying how long it waited for the budget.
    pub async fn fetch_waited(
        &self,
        chat: &ChatId,
        limit: u32,
    ) -> (Result<Page, FetchError>, Duration) {
        let (waited, reserved) = self.budget.acquire_at().await;
        (self.fetch_prepaid(chat, limit, reserved).await, waited)
    }

    /// Fetches on a reservation the caller took ([`RateBudget::acquire_at`]): at once, unless
    /// it is more than [`LATE_SEND`] past, when it takes a new one first.
    pub async fn fetch_prepaid(
        &self,
        chat: &ChatId,
        limit: u32,
        reserved: Instant,
    ) -> Result<Page, FetchError> {
        if Instant::now() > reserved + LATE_SEND {
            self.budget.acquire().await;
        }
        // `limit` both as the documented JSON body and as a query parameter.
        let path = format!("/chats/{}?limit={limit}", chat.path_segment());
        let body = format!("{{\"limit\":{limit}}}");
        // Read never past the cap: a reply that never ends costs this chat's poll, not the
        // daemon's memory.
        let cap = self.reply_cap(limit);
        let answer = match &self.plain {
            Some(plain) => tokio::time::timeout(
                self.timeout,
                plain.get(&path, &self.plain_headers, &body.into(), cap),
            )
            .await
            .map_err(|_| FetchError::Timeout(self.timeout))?
            .map_err(|f| match f {
                Failure::TooLarge => FetchError::TooLarge(cap),
                Failure::Transport(e) => FetchError::Transport(e),
            })?,
            None => self.fetch_general(&path, body, cap).await?,
        };
        self.refused(answer.status, answer.retry_after.as_deref())?;
        let mut memo = self
            .memos
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(chat)
            .unwrap_or_default();
        let page = memo.parse(&answer.body, chat)?;
        self.memos
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(chat.clone(), memo);
        Ok(page)
    }

    /// The error a non-2xx status is (a 429 also pauses every caller for its `Retry-After`).
    fn refused(&self, status: u16, retry_after: Option<&str>) -> Result<(), FetchError> {
        match status {
            200..=299 => Ok(()),
            429 => {
                let now = jiff::Timestamp::now().as_second();
                let wait = retry_after
                    .and_then(|v| parse_retry_after(v, now))
                    .unwrap_or(Duration::from_secs(5));
                self.budget.pause_for(wait);
                Err(FetchError::RateLimited(wait))
            }
            // 401 is about the token (every chat); 403 may be about this chat only.
            401 => Err(FetchError::Unauthorized),
            404 => Err(FetchError::NotFound),
            s => Err(FetchError::Status(s)),
        }
    }

    /// One request through reqwest (an `https://` gateway, or one behind `api.proxy`).
    async fn fetch_general(
        &self,
        path: &str,
        body: String,
        cap: u64,
    ) -> Result<Answer, FetchError> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base_url))
            .header(header::ACCEPT, "application/json")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, self.authorization.clone())
            .body(body)
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            return Ok(Answer::refusal(status, resp.headers()));
        }
        if resp.content_length().is_some_and(|n| n > cap) {
            return Err(FetchError::TooLarge(cap));
        }
        let mut resp = resp;
        let mut bytes: Vec<u8> =
            Vec::with_capacity(resp.content_length().unwrap_or(64 * 1024).min(cap) as usize);
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.transport(e))? {
            if bytes.len() as u64 + chunk.len() as u64 > cap {
                return Err(FetchError::TooLarge(cap));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(Answer {
            status,
            retry_after: None,
            body: bytes,
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future as _;

    /// The most reservations in any window of `width` starting at a reservation.
    fn max_in_window(times: &[Instant], width: Duration) -> usize {
        let mut best = 0;
        for (i, &t) in times.iter().enumerate() {
            let n = times[i..].iter().take_while(|&&u| u < t + width).count();
            best = best.max(n);
        }
        best
    }

    #[test]
    fn a_burst_goes_at_once_then_the_window_holds() {
        let t0 = Instant::now();
        let mut b = BudgetState::new(5, 5);
        let times: Vec<Instant> = (0..50).map(|_| b.reserve(t0)).collect();
        assert!(
            times[..5].iter().all(|&t| t == t0),
            "the burst is immediate"
        );
        assert!(
            times[5] >= t0 + Duration::from_secs(1),
            "then the window is full"
        );
        assert!(max_in_window(&times, Duration::from_secs(1)) <= 5);
        // Sustained: 50 requests take about 10 windows.
        let span = times[49] - t0;
        assert!(span >= Duration::from_secs(9), "{span:?}");
    }

    #[test]
    fn a_small_burst_spreads_requests_at_the_rate() {
        let t0 = Instant::now();
        let mut b = BudgetState::new(10, 1);
        let times: Vec<Instant> = (0..20).map(|_| b.reserve(t0)).collect();
        for w in times.windows(2) {
            assert!(
                w[1] - w[0] >= Duration::from_millis(99),
                "{:?}",
                w[1] - w[0]
            );
        }
        assert!(max_in_window(&times, Duration::from_secs(1)) <= 10);
    }

    #[test]
    fn a_new_rate_holds_from_the_next_reservation_and_counts_what_went_before() {
        let t0 = Instant::now();
        let mut b = BudgetState::new(10, 10);
        let mut times: Vec<Instant> = (0..10).map(|_| b.reserve(t0)).collect();
        assert!(times.iter().all(|&t| t == t0));
        // Lowered to 2 a second: the window the first 10 hold is full for the new rate too.
        b.set_rate(2, 2);
        let later: Vec<Instant> = (0..10).map(|_| b.reserve(t0)).collect();
        assert!(
            later[0] >= t0 + Duration::from_secs(1),
            "{:?}",
            later[0] - t0
        );
        assert!(max_in_window(&later, Duration::from_secs(1)) <= 2);
        // Raised to 20: more per window than before.
        b.set_rate(20, 20);
        let last = *later.last().unwrap();
        let raised: Vec<Instant> = (0..20).map(|_| b.reserve(last)).collect();
        assert!(max_in_window(&raised, Duration::from_secs(1)) > 2);
        times.extend(later.iter().chain(&raised));
        assert!(max_in_window(&times, Duration::from_secs(1)) <= 20);
    }

    #[test]
    fn a_burst_larger_than_the_rate_is_clamped_to_the_window() {
        let t0 = Instant::now();
        let mut b = BudgetState::new(4, 100);
        let times: Vec<Instant> = (0..40).map(|_| b.reserve(t0)).collect();
        assert!(max_in_window(&times, Duration::from_secs(1)) <= 4);
    }

    #[test]
    fn after_a_pause_nobody_goes_early_and_the_window_still_holds() {
        let t0 = Instant::now();
        let mut b = BudgetState::new(5, 5);
        let before: Vec<Instant> = (0..5).map(|_| b.reserve(t0)).collect();
        b.pause_until(t0 + Duration::from_secs(3));
        // A shorter pause never shortens it.
        b.pause_until(t0 + Duration::from_secs(1));
        assert_eq!(
            b.paused_at(t0 + Duration::from_secs(2)),
            Some(t0 + Duration::from_secs(3))
        );
        let after: Vec<Instant> = (0..20)
            .map(|_| b.reserve(t0 + Duration::from_millis(1500)))
            .collect();
        assert!(after.iter().all(|&t| t >= t0 + Duration::from_secs(3)));
        let all: Vec<Instant> = before.into_iter().chain(after).collect();
        assert!(max_in_window(&all, Duration::from_secs(1)) <= 5);
    }

    #[test]
    fn interleaved_callers_at_random_times_never_exceed_the_window() {
        let t0 = Instant::now();
        let mut b = BudgetState::new(7, 3);
        let mut now = t0;
        let mut times = Vec::new();
        let mut x: u64 = 42;
        for _ in 0..500 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            now += Duration::from_millis((x >> 33) % 400);
            let t = b.reserve(now);
            assert!(t >= now);
            times.push(t);
        }
        assert!(max_in_window(&times, Duration::from_secs(1)) <= 7);
    }

    /// A request sent late on its reservation takes a new one: two requests reserved a window
    /// apart, the first starved past the second's time, still reach the gateway a window apart.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_late_on_its_reservation_takes_a_new_one() {
        let scenario =
            crate::mock::Scenario::from_yaml("chats:\n  - id: \"966500000001\"\n").unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gw = crate::mock::MockGateway::start(listener, scenario)
            .await
            .unwrap();
        let api = crate::config::ApiConfig {
            base_url: gw.base_url(),
            token: gw.token().to_string().into(),
            timeout: Duration::from_secs(5),
            rate_per_second: 1,
            burst: 1,
            message_limit: 5,
            max_message_limit: 1000,
            max_reply_bytes: None,
            proxy: None,
        };
        let gateway = Gateway::new(&api, Arc::new(RateBudget::new(1, 1))).unwrap();
        let chat = ChatId::parse("966500000001").unwrap();
        let (_, first) = gateway.budget.acquire_at().await;
        let (_, second) = gateway.budget.acquire_at().await;
        assert!(second >= first + Duration::from_secs(1));
        // The second goes on time; the first only now, a window late.
        let (a, b) = tokio::join!(
            gateway.fetch_prepaid(&chat, 5, second),
            gateway.fetch_prepaid(&chat, 5, first)
        );
        a.unwrap();
        b.unwrap();
        let mut at: Vec<u64> = gw.requests().iter().map(|r| r.at_ms).collect();
        at.sort_unstable();
        assert_eq!(at.len(), 2);
        assert!(
            at[1] - at[0] >= 1_000,
            "two requests {} ms apart on a budget of 1 a second",
            at[1] - at[0]
        );
        gw.shutdown().await;
    }

    /// A burst the budget allows goes at once: each acquire is ready the first time it is
    /// polled. Through the timer, even a time already here waited for the timer's next
    /// millisecond, which spread a bunch of due polls a millisecond apart (a wake-up each).
    #[tokio::test]
    async fn an_allowed_burst_is_acquired_without_waiting_for_the_timer() {
        let budget = RateBudget::new(100, 100);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        for i in 0..100 {
            let mut acquire = std::pin::pin!(budget.acquire());
            assert!(
                acquire.as_mut().poll(&mut cx).is_ready(),
                "request {i} of an allowed burst waited"
            );
        }
        // The 101st waits for the window.
        let mut acquire = std::pin::pin!(budget.acquire());
        assert!(acquire.as_mut().poll(&mut cx).is_pending());
    }
}
