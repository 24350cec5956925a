//! The health and metrics server: `GET /healthz` and `GET /metrics` (Prometheus text), and
//! the admin API when `server.admin_token` is set: `POST /api/reload` reloads the rules and
//! answers with the new set's fingerprint, or its errors as `path:line:col` (the last good set
//! stays in force).
//!
//! Bind outside, run inside: [`run`] takes an already bound listener and a shutdown token, so
//! tests bind `127.0.0.1:0`. Owns: the routes, the admin token check. Must not: expose
//! anything secret (the token, webhook secrets, URLs, message content) or write to the store.

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
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/reload", axum::routing::post(reload))
        .route("/api/rules", get(rules))
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
fn authorized(headers: &axum::http::HeaderMap, token: &secrecy::SecretString) -> bool {
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

fn json_reply(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{body}\n"),
    )
        .into_response()
}

/// The admin API's gate: `None` to go on, or the answer for an API that is off (404) or a
/// request without the token (401).
fn admin_refusal(s: &ServerState, headers: &axum::http::HeaderMap) -> Option<Response> {
    use serde_json::json;
    let Some(token) = &s.admin_token else {
        return Some(json_reply(
            StatusCode::NOT_FOUND,
            json!({"ok": false, "error": "the admin API is off: set server.admin_token"}),
        ));
    };
    if authorized(headers, token) {
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

/// `GET /api/rules`: the rule set in force as written (what `plan --against URL` diffs).
async fn rules(State(s): State<ServerState>, headers: axum::http::HeaderMap) -> Response {
    if let Some(refused) = admin_refusal(&s, &headers) {
        return refused;
    }
    let set = s
        .reloader
        .target
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
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
    if let Some(refused) = admin_refusal(&s, &headers) {
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
