//! The operator's console on the daemon's server: the status page at `/` (server-rendered
//! HTML and a little JavaScript, no build step), the read APIs behind it (`GET /api/chats`,
//! `GET /api/history`), and the session that lets a browser use the admin actions.
//!
//! Who may do what: the page and its reads are open to whoever reaches the address (it binds
//! 127.0.0.1 by default); every state-changing action (retry, silence, reload) needs
//! `server.admin_token`, either as `Authorization: Bearer` or as the session cookie that
//! `POST /login` sets from it. A request that rides on the cookie must also carry the CSRF
//! token (`X-CSRF-Token`, which the page reads from its own HTML): another site can make the
//! browser send the cookie, but cannot read the page to learn the token. The cookie is
//! `HttpOnly` and `SameSite=Strict` besides. Both values are HMACs of the admin token, so
//! they survive a restart and die with a token change.
//!
//! Owns: the page, the cookie and CSRF checks, the chats and history APIs. Must not: show a
//! secret (tokens, webhook secrets, url credentials), a whole phone number unless
//! `server.show_phone_numbers`, or message bodies (the history holds reasons, not texts).

use crate::server::{ServerState, json_reply};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

/// What the page needs besides the store: set once when the daemon starts.
#[derive(Clone, Debug)]
pub(crate) struct Console {
    pub show_phone_numbers: bool,
    /// `history` is on.
    pub history: bool,
    pub started_ms: i64,
    /// When the rule set in force was loaded (unix ms).
    pub rules_loaded_ms: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

/// The session cookie's name.
pub(crate) const COOKIE: &str = "cartat_session";

fn derive(token: &SecretString, purpose: &str) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(token.expose_secret().as_bytes())
        .expect("HMAC takes any key length");
    mac.update(b"cartat-rules console ");
    mac.update(purpose.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The session cookie's value for `token`.
pub(crate) fn session_value(token: &SecretString) -> String {
    derive(token, "session")
}

/// The CSRF token for `token`'s sessions.
pub(crate) fn csrf_value(token: &SecretString) -> String {
    derive(token, "csrf")
}

/// Equal in constant time (for secrets of the same length).
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The value of cookie `name` in `headers`.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// How a request proved it may act: by the bearer token, or by the session cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Credential {
    Bearer,
    Cookie,
}

/// The credential `headers` carry for `token`, if any.
pub(crate) fn credential(headers: &HeaderMap, token: &SecretString) -> Option<Credential> {
    if crate::server::authorized(headers, token) {
        return Some(Credential::Bearer);
    }
    let session = cookie(headers, COOKIE)?;
    same(session.as_bytes(), session_value(token).as_bytes()).then_some(Credential::Cookie)
}

/// Whether a cookie-borne request carries the CSRF token (in `X-CSRF-Token`).
pub(crate) fn csrf_ok(headers: &HeaderMap, token: &SecretString) -> bool {
    headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| same(v.as_bytes(), csrf_value(token).as_bytes()))
}

/// A chat id as the page shows it.
fn shown(c: &Console, chat: &str) -> String {
    if c.show_phone_numbers {
        chat.to_string()
    } else {
        crate::events::mask_always(chat)
    }
}

fn rfc3339_ms(ms: i64) -> String {
    crate::model::rfc3339(ms.div_euclid(1000))
}

/// The chats' lines as JSON (what `/api/chats` answers and the page shows).
fn chats_json(s: &ServerState) -> Vec<Value> {
    let now = jiff::Timestamp::now().as_millisecond();
    s.board
        .snapshot()
        .into_iter()
        .map(|(chat, line)| {
            json!({
                "chat": shown(&s.console, &chat),
                "last_poll": line.last_poll_ms.map(rfc3339_ms),
                "last_ok": line.last_ok_ms.map(rfc3339_ms),
                "lag_seconds": line.last_ok_ms.map(|t| (now - t).max(0) as f64 / 1000.0),
                "unread": line.unread,
                "last_error": line.last_error,
                "failures": line.failures,
                "retry_in_seconds": line.retry_in_ms.map(|ms| ms as f64 / 1000.0),
            })
        })
        .collect()
}

fn history_json(c: &Console, entries: &[crate::model::HistoryEntry]) -> Vec<Value> {
    entries
        .iter()
        .map(|e| {
            json!({
                "id": e.id,
                "at": rfc3339_ms(e.at_ms),
                "chat": shown(c, &e.chat_id),
                "message_id": e.message_id.as_deref().map(|m| if c.show_phone_numbers {
                    m.to_string()
                } else {
                    crate::events::mask_always(m)
                }),
                "type": e.kind,
                "from_me": e.from_me,
                "rules": e.rules,
                "not_candidates": e.not_candidates,
            })
        })
        .collect()
}

/// The read gate of `/api/chats` and `/api/history`: the same as the other admin reads.
fn read_refusal(s: &ServerState, headers: &HeaderMap) -> Option<Response> {
    crate::server::admin_refusal(s, headers)
}

/// `GET /api/chats`: every watched chat's last poll, lag, unread count, error and backoff.
pub(crate) async fn api_chats(
    axum::extract::State(s): axum::extract::State<ServerState>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = read_refusal(&s, &headers) {
        return r;
    }
    json_reply(StatusCode::OK, json!({"chats": chats_json(&s)}))
}

/// What `/api/history` and the page's search take.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct HistorySearch {
    /// A chat: a phone number or a chat id.
    pub chat: Option<String>,
    pub rule: Option<String>,
    pub limit: Option<usize>,
}

impl HistorySearch {
    fn query(&self) -> Result<crate::store::HistoryQuery, String> {
        let chat = match self
            .chat
            .as_deref()
            .map(str::trim)
            .filter(|c| !c.is_empty())
        {
            None => None,
            Some(c) => Some(
                crate::gateway::model::ChatId::parse(c)
                    .map_err(|e| format!("chat: {e}"))?
                    .as_str()
                    .to_string(),
            ),
        };
        Ok(crate::store::HistoryQuery {
            chat,
            rule: self
                .rule
                .as_deref()
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .map(str::to_string),
            limit: self.limit.unwrap_or(100).clamp(1, 1_000),
        })
    }
}

/// `GET /api/history[?chat=966500000000&rule=bot&limit=100]`: the run history, newest first.
pub(crate) async fn api_history(
    axum::extract::State(s): axum::extract::State<ServerState>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<HistorySearch>,
) -> Response {
    if let Some(r) = read_refusal(&s, &headers) {
        return r;
    }
    let query = match q.query() {
        Ok(q) => q,
        Err(e) => return json_reply(StatusCode::BAD_REQUEST, json!({"ok": false, "error": e})),
    };
    match crate::server::with_store(&s, move |st| st.history(&query)).await {
        Ok(entries) => json_reply(
            StatusCode::OK,
            json!({"enabled": s.console.history, "entries": history_json(&s.console, &entries)}),
        ),
        Err(r) => r,
    }
}

/// `POST /login` (a form with `token`): sets the session cookie and goes back to the page;
/// 401 with the page's message when the token is wrong.
pub(crate) async fn login(
    axum::extract::State(s): axum::extract::State<ServerState>,
    axum::extract::Form(form): axum::extract::Form<std::collections::HashMap<String, String>>,
) -> Response {
    let Some(token) = &s.admin_token else {
        return (
            StatusCode::NOT_FOUND,
            "the admin actions are off: set server.admin_token\n",
        )
            .into_response();
    };
    let given = form.get("token").map(String::as_str).unwrap_or("");
    if !same(given.as_bytes(), token.expose_secret().as_bytes()) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            "<!doctype html><meta charset=utf-8><p>Wrong token. <a href=\"/\">Back</a></p>\n",
        )
            .into_response();
    }
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/".to_string()),
            (
                header::SET_COOKIE,
                format!(
                    "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict",
                    session_value(token)
                ),
            ),
        ],
    )
        .into_response()
}

/// `POST /logout`: clears the session cookie.
pub(crate) async fn logout() -> Response {
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/".to_string()),
            (
                header::SET_COOKIE,
                format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
            ),
        ],
    )
        .into_response()
}

const PAGE: &str = include_str!("console.html");

/// `GET /[?chat=…&rule=…]`: the status page.
pub(crate) async fn page(
    axum::extract::State(s): axum::extract::State<ServerState>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<HistorySearch>,
) -> Response {
    let now = jiff::Timestamp::now().as_millisecond();
    let signed_in = s
        .admin_token
        .as_deref()
        .is_some_and(|t| credential(&headers, t).is_some());
    let csrf = match (&s.admin_token, signed_in) {
        (Some(t), true) => csrf_value(t),
        _ => String::new(),
    };
    let (query, search_error) = match q.query() {
        Ok(q) => (q, None),
        Err(e) => (
            crate::store::HistoryQuery {
                limit: 100,
                ..Default::default()
            },
            Some(e),
        ),
    };
    let read = crate::server::with_store(&s, move |st| {
        let history = st.history(&query)?;
        let counts = st.counts()?;
        let outbox = st.list(None, 50)?;
        let silences = st.silences(Some(now))?;
        Ok((history, counts, outbox, silences))
    })
    .await;
    let (history, counts, outbox, silences) = match read {
        Ok(r) => r,
        Err(r) => return r,
    };
    let set = s.rules_in_force();
    let mut files: Vec<String> = set
        .docs
        .iter()
        .map(|d| d.path.display().to_string())
        .collect();
    files.dedup();
    let rules: Vec<Value> = set
        .docs
        .iter()
        .map(|d| {
            let st = s.rule_board.status(&d.id, now);
            json!({
                "id": d.id,
                "file": d.path.display().to_string(),
                "fired_last_hour": st.fired_last_hour,
                "fired_last_day": st.fired_last_day,
                "last_fired": st.last_fired_ms.map(rfc3339_ms),
                "errors": st.errors,
                "last_error": st.last_error,
            })
        })
        .collect();
    let outbox: Vec<Value> = outbox
        .iter()
        .map(|r| {
            let state = if r.state == "pending" && r.attempts > 0 {
                "retrying"
            } else {
                r.state.as_str()
            };
            crate::server::delivery_json(r, shown(&s.console, &r.delivery.chat_id), state)
        })
        .collect();
    let silences: Vec<Value> = silences
        .iter()
        .map(|x| {
            json!({
                "id": x.id,
                "rule": x.rule_id,
                "chat": x.chat_id.as_deref().map(|c| shown(&s.console, c)),
                "until": rfc3339_ms(x.until_ms),
                "reason": x.reason,
            })
        })
        .collect();
    let count = |k: &str| counts.get(k).copied().unwrap_or(0);
    let ctx = json!({
        "now": rfc3339_ms(now),
        "started": rfc3339_ms(s.console.started_ms),
        "fingerprint": set.fingerprint,
        "rules_loaded": rfc3339_ms(s.console.rules_loaded_ms.load(std::sync::atomic::Ordering::Relaxed)),
        "files": files,
        "chats": chats_json(&s),
        "rules": rules,
        "history_on": s.console.history,
        "history": history_json(&s.console, &history),
        "search": {"chat": q.chat.unwrap_or_default(), "rule": q.rule.unwrap_or_default()},
        "search_error": search_error,
        "counts": {"pending": count("pending"), "delivered": count("delivered"), "dead": count("dead"), "gone": count("gone")},
        "outbox": outbox,
        "silences": silences,
        "admin": s.admin_token.is_some(),
        "signed_in": signed_in,
        "csrf": csrf,
    });
    let mut env = minijinja::Environment::new();
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::Html);
    let html = env
        .render_str(PAGE, ctx)
        .unwrap_or_else(|e| format!("<!doctype html><p>the page failed to render: {e}</p>"));
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            // The page's script is inline; nothing else loads from anywhere.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'",
            ),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        html,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_and_csrf_values_come_from_the_token_and_differ() {
        let a = SecretString::from("token-a".to_string());
        let b = SecretString::from("token-b".to_string());
        assert_eq!(session_value(&a), session_value(&a));
        assert_ne!(session_value(&a), session_value(&b));
        assert_ne!(session_value(&a), csrf_value(&a));
        assert!(!session_value(&a).contains("token-a"));
    }

    #[test]
    fn a_request_proves_itself_by_bearer_or_by_cookie_and_csrf_is_separate() {
        let t = SecretString::from("tok".to_string());
        let mut h = HeaderMap::new();
        assert_eq!(credential(&h, &t), None);
        h.insert(
            header::COOKIE,
            format!("a=b; {COOKIE}={}", session_value(&t))
                .parse()
                .unwrap(),
        );
        assert_eq!(credential(&h, &t), Some(Credential::Cookie));
        assert!(!csrf_ok(&h, &t));
        h.insert("x-csrf-token", csrf_value(&t).parse().unwrap());
        assert!(csrf_ok(&h, &t));
        h.insert("x-csrf-token", session_value(&t).parse().unwrap());
        assert!(!csrf_ok(&h, &t), "the session value is not the CSRF token");
        let mut wrong = HeaderMap::new();
        wrong.insert(header::COOKIE, format!("{COOKIE}=00").parse().unwrap());
        assert_eq!(credential(&wrong, &t), None);
        let mut bearer = HeaderMap::new();
        bearer.insert(header::AUTHORIZATION, "Bearer tok".parse().unwrap());
        assert_eq!(credential(&bearer, &t), Some(Credential::Bearer));
    }
}
