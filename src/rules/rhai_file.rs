//! `.rhai` rule files: `fn on_message(msg, chat)` and/or `fn on_chat(chat)`, calling
//! `webhook(url, map)`, `log(level, text)`, `state_get(key)` and `state_set(key, value)`.
//!
//! Owns: compiling rule files in the sandbox of [`super::script`] and running their hooks
//! with capped side effects. A call collects what the script asked for — it never sends or
//! writes anything itself: the engine turns the output into outbox rows and stores the
//! state in the poll's transaction. A script that fails or exceeds a bound is stopped and
//! reported with its file and rule; the other rules go on.

use super::raw::Level;
use super::script::{Limits, Sandbox, ScriptError};
use crate::diag::Diagnostic;
use rhai::{AST, Dynamic, Map};
use serde_json::Value;
use std::cell::RefCell;
use std::path::{Path, PathBuf};

/// At most this many `webhook` and `log` calls per hook call.
pub const MAX_ACTIONS: usize = 10;
/// At most this many keys, and this many bytes of JSON, of state per rule and chat.
pub const MAX_STATE_KEYS: usize = 32;
pub const MAX_STATE_BYTES: usize = 4096;

/// One compiled rule file.
#[derive(Debug)]
pub struct ScriptRule {
    /// The file name without `.rhai`.
    pub id: String,
    pub source: PathBuf,
    ast: AST,
    pub on_message: bool,
    pub on_chat: bool,
}

/// What one hook call asked for.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Output {
    /// (url, JSON body) in call order.
    pub webhooks: Vec<(String, Value)>,
    pub logs: Vec<(Level, String)>,
    /// The rule's state for this chat after the call (only when it changed).
    pub state: Option<serde_json::Map<String, Value>>,
    /// Why the call was stopped, if it was; what it asked for before that is dropped.
    pub error: Option<String>,
}

/// The per-call buffer the registered functions write to (one call at a time per thread).
struct Call {
    out: Output,
    state: serde_json::Map<String, Value>,
    state_changed: bool,
}

thread_local! {
    static CALL: RefCell<Option<Call>> = const { RefCell::new(None) };
}

fn with_call<T>(
    f: impl FnOnce(&mut Call) -> Result<T, String>,
) -> Result<T, Box<rhai::EvalAltResult>> {
    CALL.with(|c| match c.borrow_mut().as_mut() {
        Some(call) => f(call).map_err(|e| e.into()),
        None => Err("called outside a rule hook".into()),
    })
}

fn count_action(call: &Call) -> Result<(), String> {
    if call.out.webhooks.len() + call.out.logs.len() >= MAX_ACTIONS {
        return Err(format!("more than {MAX_ACTIONS} actions in one call"));
    }
    Ok(())
}

/// The sandbox with the rule-file functions registered. `Send + Sync`.
#[derive(Debug)]
pub struct Host {
    sandbox: Sandbox,
}

/// Bounds for rule files: whole programs, so deeper nesting and more operations than a
/// one-line `script` condition, still far from anything that could hurt the daemon.
pub fn rule_file_limits() -> Limits {
    Limits {
        max_source_bytes: 64 * 1024,
        max_operations: 200_000,
        max_call_levels: 32,
        max_expr_depth: 64,
        max_function_expr_depth: 48,
        max_variables: 256,
        max_functions: 64,
        ..Limits::default()
    }
}

impl Default for Host {
    fn default() -> Self {
        Host::new(rule_file_limits())
    }
}

impl Host {
    pub fn new(limits: Limits) -> Host {
        let mut sandbox = Sandbox::new(limits);
        let engine = sandbox.engine_mut();
        engine.register_fn("webhook", |url: &str, body: Map| {
            with_call(|call| {
                count_action(call)?;
                crate::net::ssrf::vet_url(url, &crate::net::ssrf::NetPolicy::AllowAll)
                    .map_err(|e| format!("webhook: {e}"))?;
                call.out
                    .webhooks
                    .push((url.to_string(), to_json(&Dynamic::from_map(body))));
                Ok(())
            })
        });
        engine.register_fn("log", |level: &str, text: &str| {
            with_call(|call| {
                count_action(call)?;
                let level = match level {
                    "debug" => Level::Debug,
                    "info" => Level::Info,
                    "warn" => Level::Warn,
                    "error" => Level::Error,
                    other => {
                        return Err(format!(
                            "log: unknown level `{other}` (debug, info, warn, error)"
                        ));
                    }
                };
                call.out
                    .logs
                    .push((level, text.chars().take(1000).collect()));
                Ok(())
            })
        });
        engine.register_fn("state_get", |key: &str| {
            with_call(|call| Ok(call.state.get(key).map(from_json).unwrap_or(Dynamic::UNIT)))
        });
        engine.register_fn("state_set", |key: &str, value: Dynamic| {
            with_call(|call| {
                let v = to_json(&value);
                let mut next = call.state.clone();
                next.insert(key.to_string(), v);
                let bytes = serde_json::to_string(&next).map(|s| s.len()).unwrap_or(usize::MAX);
                if next.len() > MAX_STATE_KEYS || bytes > MAX_STATE_BYTES {
                    return Err(format!("state_set: the state would exceed {MAX_STATE_KEYS} keys or {MAX_STATE_BYTES} bytes"));
                }
                call.state = next;
                call.state_changed = true;
                Ok(())
            })
        });
        Host { sandbox }
    }

    /// Compiles a rule file; the id is the file name.
    pub fn compile(&self, path: &Path, text: &str) -> Result<ScriptRule, Diagnostic> {
        let id = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("")
            .to_string();
        let ast = self
            .sandbox
            .compile_script(text)
            .map_err(|(msg, at)| match at {
                Some((line, col)) => Diagnostic::error(path, line as u64, col as u64, msg),
                None => Diagnostic::error(path, 0, 0, msg),
            })?;
        let has = |name: &str, arity: usize| {
            ast.iter_functions()
                .any(|f| f.name == name && f.params.len() == arity)
        };
        let (on_message, on_chat) = (has("on_message", 2), has("on_chat", 1));
        if !on_message && !on_chat {
            return Err(Diagnostic::error(
                path,
                0,
                0,
                "a rule file defines `fn on_message(msg, chat)` and/or `fn on_chat(chat)`; this one defines neither",
            ));
        }
        Ok(ScriptRule {
            id,
            source: path.to_path_buf(),
            ast,
            on_message,
            on_chat,
        })
    }

    /// Calls `on_message(msg, chat)`.
    pub fn on_message(
        &self,
        rule: &ScriptRule,
        msg: Value,
        chat: Value,
        state: &serde_json::Map<String, Value>,
    ) -> Output {
        self.call(
            rule,
            "on_message",
            state,
            (from_json(&msg), from_json(&chat)),
        )
    }

    /// Calls `on_chat(chat)`.
    pub fn on_chat(
        &self,
        rule: &ScriptRule,
        chat: Value,
        state: &serde_json::Map<String, Value>,
    ) -> Output {
        self.call(rule, "on_chat", state, (from_json(&chat),))
    }

    fn call(
        &self,
        rule: &ScriptRule,
        name: &str,
        state: &serde_json::Map<String, Value>,
        args: impl rhai::FuncArgs,
    ) -> Output {
        CALL.with(|c| {
            *c.borrow_mut() = Some(Call {
                out: Output::default(),
                state: state.clone(),
                state_changed: false,
            })
        });
        let result = self.sandbox.call_fn(&rule.ast, name, args);
        let call = CALL.with(|c| c.borrow_mut().take());
        let Some(call) = call else {
            return Output {
                error: Some("the script lost its call state".into()),
                ..Output::default()
            };
        };
        match result {
            Ok(()) => Output {
                state: call.state_changed.then_some(call.state),
                ..call.out
            },
            Err(e) => Output {
                error: Some(describe(rule, name, &e)),
                ..Output::default()
            },
        }
    }
}

fn describe(rule: &ScriptRule, hook: &str, e: &ScriptError) -> String {
    format!(
        "{} (rule `{}`, {hook}): {e}",
        rule.source.display(),
        rule.id
    )
}

/// rhai value → JSON (unit → null; other types → their string form).
pub fn to_json(v: &Dynamic) -> Value {
    if v.is_unit() {
        Value::Null
    } else if let Ok(b) = v.as_bool() {
        Value::Bool(b)
    } else if let Ok(i) = v.as_int() {
        Value::from(i)
    } else if let Ok(f) = v.as_float() {
        serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null)
    } else if v.is_string() {
        Value::String(v.clone().into_string().unwrap_or_default())
    } else if v.is_array() {
        Value::Array(
            v.clone()
                .into_array()
                .unwrap_or_default()
                .iter()
                .map(to_json)
                .collect(),
        )
    } else if v.is_map() {
        let map = v.clone().cast::<Map>();
        Value::Object(
            map.iter()
                .map(|(k, v)| (k.to_string(), to_json(v)))
                .collect(),
        )
    } else {
        Value::String(v.to_string())
    }
}

/// JSON → rhai value.
pub fn from_json(v: &Value) -> Dynamic {
    match v {
        Value::Null => Dynamic::UNIT,
        Value::Bool(b) => (*b).into(),
        Value::Number(n) => match n.as_i64() {
            Some(i) => i.into(),
            None => n.as_f64().unwrap_or(0.0).into(),
        },
        Value::String(s) => s.clone().into(),
        Value::Array(a) => Dynamic::from_array(a.iter().map(from_json).collect()),
        Value::Object(o) => Dynamic::from_map(
            o.iter()
                .map(|(k, v)| (k.as_str().into(), from_json(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests;
