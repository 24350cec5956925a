//! The health and metrics server: `GET /healthz` and `GET /metrics` (Prometheus text), and
//! the admin API when `server.admin_token` is set: `POST /api/reload` reloads the rules and
//! answers with the new set's fingerprint, or its errors as `path:line:col` (the last good set
//! stays in force); `GET /api/rules`; `GET|POST /api/silences` and `DELETE /api/silences/{id}`
//! (what `cartat-rules silence` does); `GET /api/outbox` and `POST /api/outbox/{id}/retry`
//! (what `cartat-rules outbox` does).
//!
//! Bind outside, run inside: [`run`] takes an already bound listener and a shutdown token, so
//! tests bind `127.0.0.1:0`. Owns: the routes, the admin token check. Must not: expose
//! anything secret (the token, webhook secrets, URL credentials, message content), or write to
//! the store other than through the admin API's operations (silences, a dead letter's retry),
//! each behind the token.

use crate::metrics::Metrics;
use crate::store::Store;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// What the routes read.
#[derive(Clone, Debug)]
pub(crate) struct ServerState {
    pub metrics: Arc<Metrics>,
    pub store: Store,
    pub reloader: Arc<crate::reload::Reloader>,
    /// `server.admin_token`; None: the admin API answers 404.
    pub admin_token: Option<Arc<secrecy::SecretString>>,
    /// Each chat's last poll and each rule's firings, for the status page.
    pub board: Arc<crate::engine::board::ChatBoard>,
    pub rule_board: Arc<crate::engine::board::RuleBoard>,
    pub console: crate::console::Console,
}

impl ServerState {
    /// The rule set in force.
    pub(crate) fn rules_in_force(&self) -> Arc<crate::rules::RuleSet> {
        self.reloader
            .target
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Serves until `shutdown`.
pub(crate) async fn run(
    listener: tokio::net::TcpListener,
    state: ServerState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(event = "server.listening", %addr, "health and metrics server listening (GET /healthz, GET /metrics)");
    }
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// The routes, for tests that drive them without a socket.
pub(crate) fn router(state: ServerState) -> Router {
    Router::new()
        .route("/", get(crate::console::page))
        .route("/login", axum::routing::post(crate::console::login))
        .route("/logout", axum::routing::post(crate::console::logout))
        .route("/api/chats", get(crate::console::api_chats))
        .route("/api/history", get(crate::console::api_history))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/reload", axum::routing::post(reload))
        .route("/api/rules", get(rules))
        .route("/api/silences", get(silences_list).post(silences_add))
        .route("/api/silences/{id}", axum::routing::delete(silences_expire))
        .route("/api/outbox", get(outbox_list))
        .route("/api/outbox/{id}/retry", axum::routing::post(outbox_retry))
        .with_state(state)
}

/// This process's CPU time, resident memory, open descriptors and start time, from `/proc`
/// (None where there is no `/proc`).
fn process_figures() -> Option<crate::metrics::ProcessFigures> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name, which may itself hold spaces and parentheses.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // SAFETY: sysconf only reads a configuration value.
    let (tick, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let (tick, page) = (tick.max(1) as f64, page.max(1) as u64);
    let num = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    // utime, stime (fields 14, 15), starttime (22) and rss (24), counted from 1 with the pid.
    let cpu_seconds = (num(11)? + num(12)?) as f64 / tick;
    let started_ticks = num(19)? as f64;
    let resident_bytes = num(21)? * page;
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse::<f64>()
        .ok()?;
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(crate::metrics::ProcessFigures {
        cpu_seconds,
        resident_bytes,
        open_fds,
        start_time_seconds: boot + started_ticks / tick,
    })
}

/// (pending, dead) outbox rows, read with one query.
async fn outbox_counts(store: &Store) -> Result<(i64, i64), String> {
    let store = store.clone();
    let counts = tokio::task::spawn_blocking(move || store.counts())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok((
        counts.get("pending").copied().unwrap_or(0),
        counts.get("dead").copied().unwrap_or(0),
    ))
}

async fn healthz(State(s): State<ServerState>) -> Response {
    let store_ok = outbox_counts(&s.store).await.map(drop);
    match s.metrics.health(store_ok) {
        Ok(text) => (StatusCode::OK, text + "\n").into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {why}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(s): State<ServerState>) -> Response {
    let (pending, dead) = outbox_counts(&s.store).await.unwrap_or((-1, -1));
    let body = s.metrics.render(pending, dead, process_figures());
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// Whether `headers` carry `Authorization: Bearer <token>`, compared in constant time.
pub(crate) fn authorized(headers: &axum::http::HeaderMap, token: &secrecy::SecretString) -> bool {
    use secrecy::ExposeSecret;
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            // The scheme is case-insensitive (RFC 9110); the token is not.
            v.get(..7)
                .filter(|scheme| scheme.eq_ignore_ascii_case("bearer "))
                .map(|_| &v[7..])
        })
    else {
        return false;
    };
    let want = token.expose_secret().as_bytes();
    let given = given.as_bytes();
    given.len() == want.len()
        && given
            .iter()
            .zip(want)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

pub(crate) fn json_reply(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{body}\n"),
    )
        .into_response()
}

/// The admin API's gate for reads: `None` to go on, or the answer for an API that is off
/// (404) or a request with neither the token nor the console's session cookie (401).
pub(crate) fn admin_refusal(s: &ServerState, headers: &axum::http::HeaderMap) -> Option<Response> {
    use serde_json::json;
    let Some(token) = &s.admin_token else {
        return Some(json_reply(
            StatusCode::NOT_FOUND,
            json!({"ok": false, "error": "the admin API is off: set server.admin_token"}),
        ));
    };
    if crate::console::credential(headers, token).is_some() {
        return None;
    }
    let mut r = json_reply(
        StatusCode::UNAUTHORIZED,
        json!({"ok": false, "error": "a bearer token (server.admin_token) is required"}),
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Bearer"),
    );
    Some(r)
}

/// The gate of a state-changing action: [`admin_refusal`], and a request that rides on the
/// session cookie (not the bearer token) must carry the CSRF token, else 403.
fn write_refusal(s: &ServerState, headers: &axum::http::HeaderMap) -> Option<Response> {
    if let Some(refused) = admin_refusal(s, headers) {
        return Some(refused);
    }
    let token = s.admin_token.as_deref()?;
    if crate::console::credential(headers, token) == Some(crate::console::Credential::Cookie)
        && !crate::console::csrf_ok(headers, token)
    {
        return Some(json_reply(
            StatusCode::FORBIDDEN,
            serde_json::json!({"ok": false, "error": "the CSRF token is missing or wrong (X-CSRF-Token, from the status page)"}),
        ));
    }
    None
}

/// `GET /api/rules`: the rule set in force as written (what `plan --against URL` diffs).
async fn rules(State(s): State<ServerState>, headers: axum::http::HeaderMap) -> Response {
    if let Some(refused) = admin_refusal(&s, &headers) {
        return refused;
    }
    let set = s.rules_in_force();
    json_reply(
        StatusCode::OK,
        serde_json::json!({
            "fingerprint": set.fingerprint,
            "rules": set.docs.iter().map(crate::rules::docs::RuleDoc::to_json).collect::<Vec<_>>(),
        }),
    )
}

/// `POST /api/reload`: 200 with the new set's fingerprint and warnings, 422 with its errors
/// (the set in force stays, and its fingerprint is said), 401 without the token, 404 when the
/// admin API is off.
async fn reload(State(s): State<ServerState>, headers: axum::http::HeaderMap) -> Response {
    use crate::reload::Reloaded;
    use serde_json::json;
    if let Some(refused) = write_refusal(&s, &headers) {
        return refused;
    }
    let reloader = s.reloader.clone();
    let outcome = match tokio::task::spawn_blocking(move || reloader.reload()).await {
        Ok(o) => o,
        Err(e) => {
            return json_reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"ok": false, "error": format!("the reload failed: {e}")}),
            );
        }
    };
    let diagnostics =
        |d: &crate::diag::Diagnostics| d.0.iter().map(|x| x.to_json()).collect::<Vec<_>>();
    match outcome {
        Reloaded::InForce {
            fingerprint,
            rules,
            warnings,
            config,
        } => json_reply(
            StatusCode::OK,
            json!({
                "ok": true,
                "fingerprint": fingerprint,
                "rules": rules,
                "warnings": diagnostics(&warnings),
                "config": {
                    "chats_added": config.chats_added,
                    "chats_removed": config.chats_removed,
                    "intervals_changed": config.intervals_changed,
                    "rate_limit_changed": config.rate_limit_changed,
                    "restart_needed": config.restart_needed,
                },
            }),
        ),
        Reloaded::Refused {
            why,
            errors,
            in_force,
        } => json_reply(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"ok": false, "error": why, "errors": diagnostics(&errors), "fingerprint": in_force}),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_is_authorized() {
        let token = secrecy::SecretString::from("s3cret");
        let with = |value: &str| {
            let mut h = axum::http::HeaderMap::new();
            h.insert(header::AUTHORIZATION, value.parse().unwrap());
            authorized(&h, &token)
        };
        assert!(with("Bearer s3cret"));
        assert!(with("bearer s3cret"));
        for wrong in [
            "Bearer s3cre",
            "Bearer s3cret2",
            "Bearer S3CRET",
            "Basic s3cret",
            "s3cret",
            "Bearer ",
        ] {
            assert!(!with(wrong), "{wrong}");
        }
        assert!(!authorized(&axum::http::HeaderMap::new(), &token));
    }
}

/// Runs a store operation off the runtime thread (a database server answers over the network).
pub(crate) async fn with_store<T: Send + 'static>(
    s: &ServerState,
    op: impl FnOnce(&Store) -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, Response> {
    let store = s.store.clone();
    match tokio::task::spawn_blocking(move || op(&store)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(json_reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({"ok": false, "error": e.to_string()}),
        )),
        Err(e) => Err(json_reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({"ok": false, "error": e.to_string()}),
        )),
    }
}

fn silence_json(x: &crate::model::Silence) -> serde_json::Value {
    serde_json::json!({
        "id": x.id,
        "rule": x.rule_id,
        "chat": x.chat_id.as_deref().map(crate::events::mask),
        "until": crate::model::rfc3339(x.until_ms.div_euclid(1000)),
        "reason": x.reason,
        "created_at": crate::model::rfc3339(x.created_at_ms.div_euclid(1000)),
    })
}

#[derive(serde::Deserialize)]
struct SilencesQuery {
    #[serde(default)]
    all: bool,
}

/// `GET /api/silences[?all=true]`: the silences in force (all of them with `all`).
async fn silences_list(
    State(s): State<ServerState>,
    headers: axum::http::HeaderMap,
    axum::extract::Query(q): axum::extract::Query<SilencesQuery>,
) -> Response {
    if let Some(refused) = admin_refusal(&s, &headers) {
        return refused;
    }
    let now = jiff::Timestamp::now().as_millisecond();
    match with_store(&s, move |st| st.silences((!q.all).then_some(now))).await {
        Ok(list) => json_reply(
            StatusCode::OK,
            serde_json::json!({"silences": list.iter().map(silence_json).collect::<Vec<_>>()}),
        ),
        Err(r) => r,
    }
}

/// What `POST /api/silences` takes: `{"rule": "bot-keyword", "chat": "966500000000",
/// "for": "2h", "reason": "migration"}` (`until`, RFC 3339, instead of `for`).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSilence {
    rule: Option<String>,
    chat: Option<String>,
    #[serde(rename = "for")]
    for_: Option<String>,
    until: Option<String>,
    reason: String,
}

/// `POST /api/silences`: adds a silence; 201 with it, or 400 saying what is wrong.
async fn silences_add(
    State(s): State<ServerState>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    use serde_json::json;
    if let Some(refused) = write_refusal(&s, &headers) {
        return refused;
    }
    let bad = |e: String| json_reply(StatusCode::BAD_REQUEST, json!({"ok": false, "error": e}));
    let new: NewSilence = match serde_json::from_slice(&body) {
        Ok(n) => n,
        Err(e) => return bad(format!("the body is not a silence: {e}")),
    };
    let now = jiff::Timestamp::now().as_millisecond();
    if new.rule.is_none() && new.chat.is_none() {
        return bad("a silence names a rule, a chat, or both".into());
    }
    if new.reason.trim().is_empty() {
        return bad("reason is empty: say why, for whoever looks next".into());
    }
    let chat = match new
        .chat
        .as_deref()
        .map(crate::gateway::model::ChatId::parse)
    {
        None => None,
        Some(Ok(c)) => Some(c.as_str().to_string()),
        Some(Err(e)) => return bad(format!("chat: {e}")),
    };
    let until_ms = match (&new.for_, &new.until) {
        (Some(f), None) => match crate::duration::parse(f) {
            Ok(d) if !d.is_zero() => {
                now.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            }
            Ok(_) => return bad("for: 0s mutes nothing".into()),
            Err(e) => return bad(format!("for: {e}")),
        },
        (None, Some(u)) => match u.parse::<jiff::Timestamp>() {
            Ok(t) if t.as_millisecond() > now => t.as_millisecond(),
            Ok(_) => return bad("until is not in the future".into()),
            Err(e) => return bad(format!("until: {e}")),
        },
        _ => return bad("give one of `for` (2h) and `until` (RFC 3339)".into()),
    };
    let silence = crate::model::Silence {
        id: 0,
        rule_id: new.rule,
        chat_id: chat,
        until_ms,
        reason: new.reason,
        created_at_ms: now,
    };
    let mut added = silence.clone();
    match with_store(&s, move |st| st.add_silence(&silence)).await {
        Ok(id) => {
            added.id = id;
            json_reply(
                StatusCode::CREATED,
                json!({"ok": true, "silence": silence_json(&added)}),
            )
        }
        Err(r) => r,
    }
}

/// `DELETE /api/silences/{id}`: ends a silence now; 404 if none in force has that id.
async fn silences_expire(
    State(s): State<ServerState>,
    headers: axum::http::HeaderMap,
    axum::extract::Path(id): axum::extract::Path<i64>,
) -> Response {
    if let Some(refused) = write_refusal(&s, &headers) {
        return refused;
    }
    let now = jiff::Timestamp::now().as_millisecond();
    match with_store(&s, move |st| st.expire_silence(id, now)).await {
        Ok(true) => json_reply(StatusCode::OK, serde_json::json!({"ok": true, "id": id})),
        Ok(false) => json_reply(
            StatusCode::NOT_FOUND,
            serde_json::json!({"ok": false, "error": format!("no silence {id} in force")}),
        ),
        Err(r) => r,
    }
}

#[derive(serde::Deserialize)]
struct OutboxQuery {
    state: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/outbox[?state=dead&limit=50]`: deliveries, newest first — without their bodies
/// (message content), with credentials and query values of urls masked.
async fn outbox_list(
    State(s): State<ServerState>,
    headers: axum::http::HeaderMap,
    axum::extract::Query(q): axum::extract::Query<OutboxQuery>,
) -> Response {
    if let Some(refused) = admin_refusal(&s, &headers) {
        return refused;
    }
    if let Some(st) = &q.state
        && !["pending", "delivered", "dead", "gone"].contains(&st.as_str())
    {
        return json_reply(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"ok": false, "error": "state: pending, delivered, dead or gone"}),
        );
    }
    let limit = q.limit.unwrap_or(50).min(1_000);
    match with_store(&s, move |st| st.list(q.state.as_deref(), limit)).await {
        Ok(rows) => {
            let rows: Vec<serde_json::Value> = rows
                .iter()
                .map(|r| delivery_json(r, crate::events::mask(&r.delivery.chat_id), &r.state))
                .collect();
            json_reply(StatusCode::OK, serde_json::json!({"deliveries": rows}))
        }
        Err(r) => r,
    }
}

/// An outbox row as the API and the status page show it: without its body (message content),
/// with credentials and query values of its url masked; `chat` and `state` as the caller words
/// them.
pub(crate) fn delivery_json(
    r: &crate::store::OutboxRow,
    chat: String,
    state: &str,
) -> serde_json::Value {
    serde_json::json!({
        "id": r.id,
        "delivery_id": r.delivery.delivery_id,
        "rule": r.delivery.rule_id,
        "chat": chat,
        "url": crate::net::ssrf::redacted(&r.delivery.url),
        "state": state,
        "attempts": r.attempts,
        "last_status": r.last_status,
        "last_error": r.last_error,
        "updated_at": crate::model::rfc3339(r.updated_at_ms.div_euclid(1000)),
    })
}

/// `POST /api/outbox/{id}/retry`: re-sends a dead-lettered delivery (outbox id or
/// delivery_id) with its original delivery_id, as `cartat-rules outbox retry` does.
async fn outbox_retry(
    State(s): State<ServerState>,
    headers: axum::http::HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    if let Some(refused) = write_refusal(&s, &headers) {
        return refused;
    }
    let now = jiff::Timestamp::now().as_millisecond();
    let which = id.clone();
    match with_store(&s, move |st| {
        st.requeue(crate::store::Requeue::One(&which), now)
    })
    .await
    {
        Ok(0) => json_reply(
            StatusCode::NOT_FOUND,
            serde_json::json!({"ok": false, "error": format!("no dead-lettered delivery {id}")}),
        ),
        Ok(n) => json_reply(
            StatusCode::OK,
            serde_json::json!({"ok": true, "requeued": n}),
        ),
        Err(r) => r,
    }
}
