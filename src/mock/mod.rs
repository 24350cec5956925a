//! The mock gateway: a fake Cartat that speaks real HTTP, for the integration tests, the
//! offline demo (`cartat-rules demo`), `cartat-rules mock-gateway` and load tests.
//!
//! Owns: the scenario file format ([`Scenario`]), serving `GET /chats/{chat_id}` in the exact
//! whatsapp-web.js shape the real gateway uses (see `fixtures/real/`), scheduled messages
//! (appear, get edited, get revoked at fixed offsets from start), injected faults (429, 5xx,
//! non-JSON, truncated JSON, slow and hung replies), generated synthetic traffic for load tests,
//! and observability for tests: the request log, the list of planted keyword messages and
//! message injection (`/__mock/…` routes and [`MockGateway`] methods).
//!
//! Must not: ever be pointed at or proxy to a real gateway; bind sockets itself (it serves only
//! on the listener it is handed); keep every synthetic message in memory (synthetic message `k`
//! of chat `c` is derived from `(seed, c, k)`, so a reply costs O(limit) whatever the traffic);
//! log the token.
//!
//! Everything is deterministic given the scenario and the start instant: message ids, bodies
//! and timestamps do not depend on when or how often the mock is polled.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::duration::HumanDuration;

/// The business account the mock plays: `to` of inbound messages, `from` of outbound ones.
pub const BUSINESS_ID: &str = "966511111111@c.us";

/// The group member who authors inbound group messages unless a message names its `author`.
pub const GROUP_MEMBER_ID: &str = "966522222222@c.us";

/// The token a scenario requires when it names none.
pub const DEFAULT_TOKEN: &str = "mock-token";

/// Synthetic chat `i` is `9665` followed by the 8 digits of `SYNTHETIC_BASE + i`.
const SYNTHETIC_BASE: u64 = 10_000_000;
/// How many synthetic chats the id space holds.
const SYNTHETIC_MAX_CHATS: u64 = 100_000_000 - SYNTHETIC_BASE;

/// Text for synthetic messages that carry no keyword: a mix of Arabic and English.
const FILLER: &[&str] = &[
    "السلام عليكم",
    "hello",
    "متى يوصل الطلب؟",
    "thanks a lot",
    "كم السعر لو سمحت",
    "is the shop open today?",
    "تمام، شكرا",
    "I need help with my order",
    "وين المندوب؟",
    "ok",
    "صباح الخير",
    "can I change the address?",
    "ابي استفسر عن الفاتورة",
    "see you tomorrow",
    "الله يعطيك العافية",
    "payment done ✅",
];

mod faults;
mod observe;
mod scenario;
mod wire;
mod world;

use faults::*;
pub use observe::*;
pub use scenario::*;
use wire::*;
use world::*;

/// A scenario's chats as the mock serves them at any moment, without a server: what rule test
/// files (`cartat-rules test`) poll. Generated message ids carry no random run tag
/// (`MOCK_{chat}_{message}`), so the same file gives the same ids, delivery ids and bodies.
pub struct Replay {
    world: World,
    start_unix_ms: i64,
}

impl Replay {
    /// Compiles `scenario` (its ids and schedules checked as the mock checks them) with time 0
    /// at `start_unix_ms`.
    pub fn new(scenario: &Scenario, start_unix_ms: i64) -> Result<Replay, String> {
        Ok(Replay {
            world: World::compile_with_run(scenario, String::new())?,
            start_unix_ms,
        })
    }

    /// The `/chats/{chat}` reply at `at_ms` after time 0, serialized as the gateway sends it;
    /// `None` for a chat the scenario does not have.
    pub fn reply(&self, chat: &str, limit: Option<u64>, at_ms: i64) -> Option<String> {
        self.world.reply(chat, limit, at_ms, self.start_unix_ms)
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP.
// ---------------------------------------------------------------------------------------------

struct App {
    clock: Clock,
    token: String,
    world: RwLock<World>,
    faults: Mutex<Vec<Fault>>,
    log: Mutex<VecDeque<RequestRecord>>,
    max_records: usize,
    shutdown: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl App {
    fn new(scenario: &Scenario, shutdown: CancellationToken) -> std::io::Result<App> {
        let invalid = |e: String| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("mock scenario: {e}"),
            )
        };
        let world = World::compile(scenario).map_err(invalid)?;
        let faults = scenario
            .faults
            .iter()
            .enumerate()
            .map(|(i, f)| Fault::compile(f).map_err(|e| invalid(format!("faults[{i}]: {e}"))))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(App {
            clock: Clock::now(),
            token: scenario.token.clone(),
            world: RwLock::new(world),
            faults: Mutex::new(faults),
            log: Mutex::new(VecDeque::new()),
            max_records: scenario.max_recorded_requests,
            shutdown,
        })
    }

    fn record(
        &self,
        now_ms: i64,
        chat: &str,
        limit: Option<u64>,
        status: u16,
        fault: Option<usize>,
    ) {
        let at_ms = u64::try_from(now_ms).unwrap_or(0);
        let record = RequestRecord {
            at_ms,
            unix_ms: self.clock.start_unix_ms + now_ms,
            chat: chat.to_owned(),
            limit,
            status,
            fault,
        };
        let mut log = lock(&self.log);
        if self.max_records == 0 {
            return;
        }
        while log.len() >= self.max_records {
            log.pop_front();
        }
        log.push_back(record);
    }

    fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.log).iter().cloned().collect()
    }

    fn planted(&self) -> Vec<PlantedMessage> {
        let world = self.world.read().unwrap_or_else(PoisonError::into_inner);
        world.planted(self.clock.elapsed_ms(), self.clock.start_unix_ms)
    }

    fn push(&self, chat: &str, msg: NewMessage) -> Result<PushedMessage, PushError> {
        let mut world = self.world.write().unwrap_or_else(PoisonError::into_inner);
        let now_ms = self.clock.elapsed_ms();
        let from_me = msg.from_me;
        let author = msg.author.clone();
        let (served, id, is_group) = world.push(chat, msg, now_ms)?;
        let serialized = if is_group && !from_me {
            let p = author.as_deref().unwrap_or(GROUP_MEMBER_ID);
            format!("{from_me}_{served}_{id}_{p}")
        } else {
            format!("{from_me}_{served}_{id}")
        };
        tracing::debug!(event = "mock.message_pushed", chat = %served, id = %id, "mock gateway: message pushed");
        Ok(PushedMessage {
            id,
            serialized,
            timestamp: timestamp_of(self.clock.start_unix_ms, now_ms),
        })
    }
}

/// A 200 `application/json` reply that opens a `messages` array and never closes it: the same
/// message over and over, written as fast as the client reads, for at most a minute.
fn endless_response(stop: CancellationToken) -> Response {
    use tokio::io::AsyncWriteExt;
    let (mut w, r) = tokio::io::duplex(64 * 1024);
    let one = r#"{"id":{"fromMe":false,"id":"ENDLESS","_serialized":"false_0@c.us_ENDLESS"},"timestamp":1700000000,"body":"bot endless","type":"chat"},"#;
    let chunk = one.repeat(64 * 1024 / one.len());
    tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(60);
        if w.write_all(br#"{"status":"success","messages":["#)
            .await
            .is_err()
        {
            return;
        }
        while Instant::now() < deadline && !stop.is_cancelled() {
            // Fails once the client hangs up.
            if w.write_all(chunk.as_bytes()).await.is_err() {
                return;
            }
        }
    });
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(r));
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn json_response(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

fn error_response(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "status": "error", "message": message }).to_string();
    json_response(status, body)
}

fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let value = value.trim();
    let Some((scheme, given)) = value.split_once(' ') else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer") && given.trim() == token
}

/// A limit from text (`50`, `Infinity`).
fn limit_from_text(text: &str) -> Result<Option<u64>, String> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("infinity") {
        return Ok(None);
    }
    t.parse::<u64>()
        .map(Some)
        .map_err(|_| format!("limit `{t}` is not a whole number ≥ 0 or Infinity"))
}

/// The `limit` in force: the query parameter if given, else `{"limit": N}` in the body.
fn request_limit(uri: &Uri, body: &[u8]) -> Result<Option<u64>, String> {
    let query = Query::<HashMap<String, String>>::try_from_uri(uri)
        .map_err(|e| format!("bad query: {e}"))?;
    if let Some(text) = query.get("limit") {
        return limit_from_text(text);
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("request body is not JSON: {e}"))?;
    match value.get("limit") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => limit_from_text(s),
        Some(serde_json::Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(l), _) => Ok(Some(l)),
            // `as` on purpose: a finite non-negative float floored to a count, saturating.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            (None, Some(f)) if f.is_finite() && f >= 0.0 => Ok(Some(f.floor() as u64)),
            _ => Err(format!("limit {n} is not a whole number ≥ 0")),
        },
        Some(other) => Err(format!("limit {other} is not a number")),
    }
}

fn truncate_half(text: &str) -> String {
    let mut cut = text.len() / 2;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text[..cut].to_owned()
}

const MALFORMED_BODY: &str = "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center></body></html>\n";

async fn chats_handler(
    State(app): State<Arc<App>>,
    UrlPath(chat): UrlPath<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let now_ms = app.clock.elapsed_ms();
    let limit = request_limit(&uri, &body);
    if !authorized(&headers, &app.token) {
        app.record(now_ms, &chat, limit.clone().ok().flatten(), 401, None);
        tracing::debug!(
            event = "mock.unauthorized",
            status = 401,
            "mock gateway: unauthorized request"
        );
        return error_response(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let limit = match limit {
        Ok(l) => l,
        Err(why) => {
            app.record(now_ms, &chat, None, 400, None);
            return error_response(StatusCode::BAD_REQUEST, &why);
        }
    };
    let fault = pick_fault(&mut lock(&app.faults), &chat, now_ms);
    let (fault_index, action, delay) = match fault {
        Some((i, action, delay)) => (Some(i), action, delay),
        None => (None, FaultAction::Normal, None),
    };
    let reply = || {
        let world = app.world.read().unwrap_or_else(PoisonError::into_inner);
        world.reply(&chat, limit, now_ms, app.clock.start_unix_ms)
    };
    let response = match action {
        FaultAction::Hang => {
            app.record(now_ms, &chat, limit, 0, fault_index);
            tracing::debug!(event = "mock.hanging", fault = ?fault_index, "mock gateway: hanging a request");
            app.shutdown.cancelled().await;
            return error_response(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
        }
        FaultAction::Status {
            code,
            retry_after,
            body,
        } => {
            let mut r = match body {
                Some(b) => json_response(code, b),
                None => error_response(
                    code,
                    &code.canonical_reason().unwrap_or("error").to_lowercase(),
                ),
            };
            if let Some(v) = retry_after.and_then(|v| HeaderValue::from_str(&v).ok()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            r
        }
        FaultAction::Malformed => json_response(StatusCode::OK, MALFORMED_BODY.to_owned()),
        FaultAction::Endless => endless_response(app.shutdown.clone()),
        FaultAction::Normal | FaultAction::Truncated => match reply() {
            None => error_response(StatusCode::NOT_FOUND, "chat not found"),
            Some(text) if action == FaultAction::Truncated => {
                json_response(StatusCode::OK, truncate_half(&text))
            }
            Some(text) => json_response(StatusCode::OK, text),
        },
    };
    let status = response.status().as_u16();
    app.record(now_ms, &chat, limit, status, fault_index);
    tracing::debug!(event = "mock.answered", status, fault = ?fault_index, "mock gateway: answered");
    if let Some(d) = delay {
        tokio::select! {
            () = tokio::time::sleep(d) => {}
            () = app.shutdown.cancelled() => {}
        }
    }
    response
}

async fn requests_handler(State(app): State<Arc<App>>) -> Response {
    json_response(
        StatusCode::OK,
        serde_json::to_string(&app.requests()).unwrap_or_default(),
    )
}

async fn planted_handler(State(app): State<Arc<App>>) -> Response {
    json_response(
        StatusCode::OK,
        serde_json::to_string(&app.planted()).unwrap_or_default(),
    )
}

async fn push_handler(
    State(app): State<Arc<App>>,
    UrlPath(chat): UrlPath<String>,
    body: Bytes,
) -> Response {
    let msg: NewMessage = match serde_json::from_slice(&body) {
        Ok(m) => m,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, &format!("bad message: {e}")),
    };
    match app.push(&chat, msg) {
        Ok(p) => {
            let body = serde_json::json!({
                "status": "success",
                "id": p.id,
                "serialized": p.serialized,
                "timestamp": p.timestamp,
            });
            json_response(StatusCode::OK, body.to_string())
        }
        Err(e @ PushError::UnknownChat(_)) => error_response(StatusCode::NOT_FOUND, &e.to_string()),
        Err(e @ PushError::DuplicateId(_)) => error_response(StatusCode::CONFLICT, &e.to_string()),
        Err(e @ PushError::Invalid(_)) => error_response(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/chats/{chat_id}", get(chats_handler))
        .route("/__mock/requests", get(requests_handler))
        .route("/__mock/planted", get(planted_handler))
        .route("/__mock/chats/{chat_id}/messages", post(push_handler))
        .with_state(app)
}

async fn run(listener: tokio::net::TcpListener, app: Arc<App>) -> std::io::Result<()> {
    let shutdown = app.shutdown.clone();
    axum::serve(listener, router(app))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// The blocking entry point for `cartat-rules mock-gateway`: serves until the token is cancelled.
///
/// Fails at once (`InvalidInput`) if the scenario does not validate.
pub async fn serve(
    listener: tokio::net::TcpListener,
    scenario: Scenario,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Arc::new(App::new(&scenario, shutdown)?);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(event = "mock.listening", %addr, "mock gateway listening");
    }
    run(listener, app).await
}

/// A running mock gateway, served in a spawned task. Dropping it stops the server.
pub struct MockGateway {
    addr: SocketAddr,
    app: Arc<App>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl fmt::Debug for MockGateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockGateway")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl MockGateway {
    /// Serves on an already bound listener (tests bind 127.0.0.1:0), in a spawned task.
    ///
    /// The mock's clock starts now. Fails (`InvalidInput`) if the scenario does not validate.
    pub async fn start(
        listener: tokio::net::TcpListener,
        scenario: Scenario,
    ) -> std::io::Result<MockGateway> {
        let addr = listener.local_addr()?;
        let app = Arc::new(App::new(&scenario, CancellationToken::new())?);
        tracing::info!(event = "mock.listening", %addr, "mock gateway listening");
        let task = tokio::spawn(run(listener, app.clone()));
        Ok(MockGateway {
            addr,
            app,
            task: Some(task),
        })
    }

    /// The address served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT` (an unspecified bind address is given as loopback).
    pub fn base_url(&self) -> String {
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(if addr.is_ipv4() {
                Ipv4Addr::LOCALHOST.into()
            } else {
                Ipv6Addr::LOCALHOST.into()
            });
        }
        format!("http://{addr}")
    }

    /// The token `/chats` requests must carry.
    pub fn token(&self) -> &str {
        &self.app.token
    }

    /// Every `/chats` request so far, in arrival order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.app.requests()
    }

    /// Appends an inbound (`from_me: false`) or outbound `chat` message, visible at once, and
    /// returns its id (`id.id`).
    ///
    /// # Panics
    /// If the chat is unknown: a test-setup mistake. Use [`MockGateway::push`] to handle it.
    pub fn push_message(&self, chat: &str, body: &str, from_me: bool) -> String {
        let msg = NewMessage {
            body: body.to_owned(),
            from_me,
            kind: default_type(),
            ..NewMessage::default()
        };
        match self.push(chat, msg) {
            Ok(p) => p.id,
            Err(e) => panic!("mock gateway: cannot push a message to `{chat}`: {e}"),
        }
    }

    /// Appends a message, visible at once.
    pub fn push(&self, chat: &str, msg: NewMessage) -> Result<PushedMessage, PushError> {
        self.app.push(chat, msg)
    }

    /// Every planted-keyword synthetic message visible so far.
    pub fn planted(&self) -> Vec<PlantedMessage> {
        self.app.planted()
    }

    /// Milliseconds since the mock started.
    pub fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.app.clock.elapsed_ms()).unwrap_or(0)
    }

    /// Unix milliseconds of the mock's start (timestamps are computed from its second).
    pub fn start_unix_ms(&self) -> i64 {
        self.app.clock.start_unix_ms
    }

    /// Stops serving: hung requests are released, in-flight ones finish.
    pub async fn shutdown(mut self) {
        self.app.shutdown.cancel();
        if let Some(task) = self.task.take() {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(event = "mock.stopped", error = %e, "mock gateway stopped with an error")
                }
                Err(e) => {
                    tracing::warn!(event = "mock.stopped", error = %e, "mock gateway task failed")
                }
            }
        }
    }
}

impl Drop for MockGateway {
    fn drop(&mut self) {
        self.app.shutdown.cancel();
    }
}

#[cfg(test)]
mod tests;
