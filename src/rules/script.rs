//! The rhai sandbox: compiles script expressions once and evaluates them with hard bounds
//! (`match.script`; also the sandbox of `.rhai` rule files).
//!
//! Owns: the one way an untrusted script is run. The engine is built raw (`Engine::new_raw`)
//! with only the core, logic, string, array and map packages; no modules, no `eval`, no
//! file, network or clock access; every limit is set explicitly (rhai's defaults differ
//! between debug and release builds); a wall-clock deadline is checked from `on_progress`;
//! `print`/`debug` go to tracing, capped; a panic inside rhai is caught and reported as an
//! error. Must not: know about rules, messages or files — callers pass the variables.

use rhai::packages::{
    BasicArrayPackage, BasicMapPackage, CorePackage, LogicPackage, MoreStringPackage, Package,
};
use rhai::{AST, Dynamic, Engine, EvalAltResult, Scope};
use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

/// Every bound a script runs under. The defaults suit one-line conditions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest accepted source, in bytes (refused at compile time).
    pub max_source_bytes: usize,
    /// rhai operations per evaluation.
    pub max_operations: u64,
    /// Function call nesting.
    pub max_call_levels: usize,
    /// Expression nesting at the top level and inside functions (refused at compile time:
    /// this is what stops parse bombs such as 10,000 nested parentheses).
    pub max_expr_depth: usize,
    pub max_function_expr_depth: usize,
    /// Longest string a script may build, in bytes.
    pub max_string_size: usize,
    /// Largest array and map a script may build.
    pub max_array_size: usize,
    pub max_map_size: usize,
    /// Variables in scope at once.
    pub max_variables: usize,
    /// Script-defined functions.
    pub max_functions: usize,
    /// Wall-clock time per evaluation.
    pub deadline: Duration,
    /// `print`/`debug` lines logged per evaluation, and their length in characters.
    pub max_print_lines: u32,
    pub max_print_chars: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_source_bytes: 8 * 1024,
            max_operations: 50_000,
            max_call_levels: 16,
            max_expr_depth: 32,
            max_function_expr_depth: 16,
            // A body is at most 64 KiB; its normalized form may be a little longer.
            max_string_size: 256 * 1024,
            max_array_size: 10_000,
            max_map_size: 1_000,
            max_variables: 64,
            max_functions: 32,
            deadline: Duration::from_millis(50),
            max_print_lines: 8,
            max_print_chars: 200,
        }
    }
}

/// Why an evaluation did not give a bool.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScriptError {
    /// The script ran into a bound (operations, sizes, depth, variables) and was stopped.
    #[error("stopped: {0}")]
    Limit(String),
    /// The wall-clock deadline passed.
    #[error("stopped: ran longer than {0:?}")]
    Deadline(Duration),
    /// The poll's script budget was spent by the scripts before it (not run, or stopped).
    #[error("stopped: this poll's scripts together ran longer than {0:?} (the budget per poll)")]
    PollBudget(Duration),
    /// The script failed (unknown property, type mismatch, …).
    #[error("{0}")]
    Runtime(String),
    /// It ran, but did not return a bool.
    #[error("must return a bool, returned {0}")]
    NotBool(String),
    /// rhai panicked; caught here so the engine goes on.
    #[error("the script engine panicked")]
    Panicked,
}

/// Built-ins that block the thread; scripts cannot call them.
const BLOCKING: &[&str] = &["sleep"];

/// The first call of a [`BLOCKING`] built-in in `ast` (as a function or a method), if any.
fn blocking_call(ast: &AST) -> Option<(String, rhai::Position)> {
    let mut found = None;
    ast.walk(&mut |path: &[rhai::ASTNode]| {
        if let Some(rhai::ASTNode::Expr(
            rhai::Expr::FnCall(call, pos) | rhai::Expr::MethodCall(call, pos),
        )) = path.last()
            && BLOCKING.contains(&call.name.as_str())
        {
            found = Some((call.name.to_string(), *pos));
            return false;
        }
        true
    });
    found
}

/// Names the engine resolves itself, with no registered function behind them.
const ENGINE_KEYWORDS: [&str; 9] = [
    "print",
    "debug",
    "type_of",
    "Fn",
    "call",
    "curry",
    "is_shared",
    "is_def_var",
    "is_def_fn",
];

/// The first call in `ast` to a function the engine does not have (neither registered, nor
/// defined by the script, nor a variable holding a function pointer), with its position: such
/// a call compiles, and fails on every evaluation ("function not found").
fn unknown_call(engine: &Engine, ast: &AST) -> Option<(String, rhai::Position, Vec<String>)> {
    let mut known: Vec<String> =
        engine.collect_fn_metadata(None, |info| Some(info.metadata.name.to_string()), true);
    known.extend(ast.iter_functions().map(|f| f.name.to_string()));
    known.extend(ENGINE_KEYWORDS.iter().map(|k| k.to_string()));
    let mut variables = std::collections::HashSet::new();
    let mut calls = Vec::new();
    ast.walk(&mut |path: &[rhai::ASTNode]| {
        match path.last() {
            Some(rhai::ASTNode::Stmt(rhai::Stmt::Var(var, ..))) => {
                variables.insert(var.0.name.to_string());
            }
            Some(rhai::ASTNode::Expr(
                rhai::Expr::FnCall(call, pos) | rhai::Expr::MethodCall(call, pos),
            )) => calls.push((call.name.to_string(), *pos)),
            _ => {}
        }
        true
    });
    // Operators are calls too (`+`, `==`): only names are checked.
    let is_name = |n: &str| n.starts_with(|c: char| c.is_alphabetic() || c == '_');
    calls
        .into_iter()
        .find(|(name, _)| {
            is_name(name) && !variables.contains(name) && !known.iter().any(|k| k == name)
        })
        .map(|(name, pos)| (name, pos, known))
}

/// The message for a call to a function the sandbox does not have.
fn unknown_call_message(name: &str, known: &[String]) -> String {
    let names: Vec<&str> = known.iter().map(String::as_str).collect();
    match crate::diag::did_you_mean(name, &names) {
        Some(close) => format!(
            "`{name}` is not a function rule scripts have (every evaluation would fail); did you mean `{close}`?"
        ),
        None => {
            format!("`{name}` is not a function rule scripts have (every evaluation would fail)")
        }
    }
}

fn refused_call(name: &str) -> String {
    format!("`{name}` is not available to rule scripts: a rule must never wait")
}

thread_local! {
    /// The deadline of the evaluation running on this thread (one at a time per thread).
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
    /// The end of the script budget of the poll running on this thread, and the budget.
    static POLL_BUDGET: Cell<Option<(Instant, Duration)>> = const { Cell::new(None) };
    /// `print`/`debug` lines left for the evaluation running on this thread.
    static PRINTS_LEFT: Cell<u32> = const { Cell::new(0) };
    /// Operations of the evaluation running on this thread, counted by us: rhai counts on a
    /// copy of its state inside closures called from native functions (`map`, `filter`, …),
    /// so its own `max_operations` alone does not stop `a.map(|x| a.map(…))`.
    static OPS: Cell<u64> = const { Cell::new(0) };
}

/// A configured rhai engine. `Send + Sync`: build one per rule set and share it.
pub struct Sandbox {
    engine: Engine,
    limits: Limits,
    /// Variables every script may use (checked at compile time: strict variables).
    variables: Vec<&'static str>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("limits", &self.limits)
            .field("variables", &self.variables)
            .finish()
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox::new(Limits::default())
    }
}

impl Sandbox {
    /// A sandbox with these limits and no variables (see [`Sandbox::with_variables`]).
    pub fn new(limits: Limits) -> Sandbox {
        let mut engine = Engine::new_raw();
        for lib in [
            CorePackage::new().as_shared_module(),
            LogicPackage::new().as_shared_module(),
            MoreStringPackage::new().as_shared_module(),
            BasicArrayPackage::new().as_shared_module(),
            BasicMapPackage::new().as_shared_module(),
        ] {
            engine.register_global_module(lib);
        }
        engine
            .set_max_operations(limits.max_operations)
            .set_max_call_levels(limits.max_call_levels)
            .set_max_expr_depths(limits.max_expr_depth, limits.max_function_expr_depth)
            .set_max_string_size(limits.max_string_size)
            .set_max_array_size(limits.max_array_size)
            .set_max_map_size(limits.max_map_size)
            .set_max_variables(limits.max_variables)
            .set_max_functions(limits.max_functions)
            .set_max_strings_interned(256)
            .set_strict_variables(true)
            .set_fail_on_invalid_map_property(true)
            .disable_symbol("eval");
        // `sleep` would hold the chat's poll past every deadline (the deadline is checked
        // between operations, and a sleep is one): refused when a script names it (see
        // `blocking_call`), and an error at once when reached through a function pointer
        // (`Fn("sleep")`): these natives shadow rhai's own.
        // Numbers as customers write them: digits in any script (`١٥٠٠`, `۱۵۰۰`), thousands
        // groups; `()` when the text is not one, so `(parse_int(msg.body) ?? 0) > 1000` works.
        engine.register_fn("parse_int", |s: &str| -> Dynamic {
            crate::text::number::parse_int(s).map_or(Dynamic::UNIT, Dynamic::from_int)
        });
        engine.register_fn("parse_float", |s: &str| -> Dynamic {
            crate::text::number::parse_float(s).map_or(Dynamic::UNIT, Dynamic::from_float)
        });
        engine.register_fn("first_number", |s: &str| -> Dynamic {
            crate::text::number::first_number(s).map_or(Dynamic::UNIT, Dynamic::from_float)
        });
        engine.register_fn("to_int", |f: rhai::FLOAT| -> rhai::INT {
            f.trunc() as rhai::INT
        });
        engine.register_fn("to_int", |i: rhai::INT| -> rhai::INT { i });
        engine.register_fn("to_float", |i: rhai::INT| -> rhai::FLOAT {
            i as rhai::FLOAT
        });
        engine.register_fn("to_float", |f: rhai::FLOAT| -> rhai::FLOAT { f });
        for blocked in BLOCKING {
            engine.register_fn(*blocked, |_: rhai::INT| -> Result<(), Box<EvalAltResult>> {
                Err("`sleep` is not available to rule scripts: a rule must never wait".into())
            });
            engine.register_fn(
                *blocked,
                |_: rhai::FLOAT| -> Result<(), Box<EvalAltResult>> {
                    Err("`sleep` is not available to rule scripts: a rule must never wait".into())
                },
            );
        }
        let max_chars = limits.max_print_chars;
        engine.on_print(move |s| {
            if take_print() {
                tracing::info!(target: "cartat_rules::script", event = "script.print", text = %cap(s, max_chars), "script print");
            }
        });
        engine.on_debug(move |s, src, pos| {
            if take_print() {
                tracing::debug!(target: "cartat_rules::script", event = "script.debug", text = %cap(s, max_chars), source = src.unwrap_or(""), position = %pos, "script debug");
            }
        });
        let max_ops = limits.max_operations;
        engine.on_progress(move |_| {
            let ops = OPS.get() + 1;
            OPS.set(ops);
            if max_ops > 0 && ops > max_ops {
                return Some(Dynamic::from(OPERATIONS));
            }
            // Reading the clock every operation would cost more than the operation.
            if !ops.is_multiple_of(128) {
                return None;
            }
            match DEADLINE.get() {
                Some(at) if Instant::now() >= at => Some(Dynamic::from(DEADLINE_TOKEN)),
                _ => None,
            }
        });
        Sandbox {
            engine,
            limits,
            variables: Vec::new(),
        }
    }

    /// Declares the variables scripts may read (`msg`, `chat`, …); any other name is a
    /// compile error.
    pub fn with_variables(mut self, names: &[&'static str]) -> Sandbox {
        self.variables = names.to_vec();
        self
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// What a compiled script may not do, said, with where: a blocking call, or a call to a
    /// function the sandbox does not have.
    fn refused(&self, ast: &AST) -> Option<(String, rhai::Position)> {
        blocking_call(ast)
            .map(|(name, pos)| (refused_call(&name), pos))
            .or_else(|| {
                unknown_call(&self.engine, ast)
                    .map(|(name, pos, known)| (unknown_call_message(&name, &known), pos))
            })
    }

    /// Compiles one expression. The error says what is wrong and where in the expression
    /// (`line:col` of the script text itself), without the file position (the caller adds it).
    pub fn compile_expression(&self, src: &str) -> Result<AST, String> {
        if src.len() > self.limits.max_source_bytes {
            return Err(format!(
                "the expression is {} bytes long; at most {} are allowed",
                src.len(),
                self.limits.max_source_bytes
            ));
        }
        if src.trim().is_empty() {
            return Err("the expression is empty".into());
        }
        let mut scope = Scope::new();
        for name in &self.variables {
            scope.push_constant(*name, ());
        }
        match catch_unwind(AssertUnwindSafe(|| {
            self.engine.compile_expression_with_scope(&scope, src)
        })) {
            Ok(Ok(ast)) => match self.refused(&ast) {
                Some((message, pos)) => Err(match (pos.line(), pos.position()) {
                    (Some(l), Some(c)) => format!("{message} (at {l}:{c} of the expression)"),
                    _ => message,
                }),
                None => Ok(ast),
            },
            Ok(Err(e)) => {
                let pos = e.position();
                let kind = e.err_type().to_string();
                Err(match (pos.line(), pos.position()) {
                    (Some(l), Some(c)) => format!("{kind} (at {l}:{c} of the expression)"),
                    (Some(l), None) => format!("{kind} (at line {l} of the expression)"),
                    _ => kind,
                })
            }
            Err(_) => Err("the script engine panicked while compiling".into()),
        }
    }

    /// Evaluates a compiled expression with these variables (constants in its scope) and
    /// requires a bool.
    pub fn eval_bool<I>(&self, ast: &AST, vars: I) -> Result<bool, ScriptError>
    where
        I: IntoIterator<Item = (&'static str, Dynamic)>,
    {
        let mut scope = Scope::new();
        for (name, value) in vars {
            scope.push_constant_dynamic(name, value);
        }
        let v = self.guarded(|| self.engine.eval_ast_with_scope::<Dynamic>(&mut scope, ast))?;
        v.as_bool().map_err(|t| ScriptError::NotBool(t.to_string()))
    }

    /// Runs `f` under the deadline, the print cap and a panic guard.
    fn guarded<T>(
        &self,
        f: impl FnOnce() -> Result<T, Box<EvalAltResult>>,
    ) -> Result<T, ScriptError> {
        let deadline = self.limits.deadline;
        let now = Instant::now();
        // The earlier of this evaluation's deadline and the end of the poll's budget.
        let poll = POLL_BUDGET.get();
        let ends = match poll {
            Some((end, budget)) if end <= now => return Err(ScriptError::PollBudget(budget)),
            Some((end, _)) => end.min(now + deadline),
            None => now + deadline,
        };
        let previous = DEADLINE.replace(Some(ends));
        let prints = PRINTS_LEFT.replace(self.limits.max_print_lines);
        let ops = OPS.replace(0);
        let result = catch_unwind(AssertUnwindSafe(f));
        DEADLINE.set(previous);
        PRINTS_LEFT.set(prints);
        OPS.set(ops);
        match result {
            Err(_) => Err(ScriptError::Panicked),
            Ok(Err(e)) => match (classify(*e, deadline), poll) {
                (ScriptError::Deadline(_), Some((end, budget))) if Instant::now() >= end => {
                    Err(ScriptError::PollBudget(budget))
                }
                (e, _) => Err(e),
            },
            Ok(Ok(v)) => Ok(v),
        }
    }

    /// The engine, for a host that registers its own functions (rule files) before sharing
    /// the sandbox.
    pub(crate) fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// Compiles a whole script (function definitions; `.rhai` rule files). The error carries
    /// the `line:col` of the script.
    pub fn compile_script(&self, src: &str) -> Result<AST, (String, Option<(usize, usize)>)> {
        if src.len() > self.limits.max_source_bytes {
            return Err((
                format!(
                    "the script is {} bytes long; at most {} are allowed",
                    src.len(),
                    self.limits.max_source_bytes
                ),
                None,
            ));
        }
        match catch_unwind(AssertUnwindSafe(|| self.engine.compile(src))) {
            Ok(Ok(ast)) => match self.refused(&ast) {
                Some((message, pos)) => Err((
                    message,
                    pos.line().map(|l| (l, pos.position().unwrap_or(1))),
                )),
                None => Ok(ast),
            },
            Ok(Err(e)) => {
                let pos = e.position();
                let at = pos.line().map(|l| (l, pos.position().unwrap_or(1)));
                Err((e.err_type().to_string(), at))
            }
            Err(_) => Err(("the script engine panicked while compiling".into(), None)),
        }
    }

    /// Calls a function the script defines, under every bound; its return value is ignored.
    pub fn call_fn(
        &self,
        ast: &AST,
        name: &str,
        args: impl rhai::FuncArgs,
    ) -> Result<(), ScriptError> {
        let mut scope = Scope::new();
        self.guarded(|| self.engine.call_fn::<Dynamic>(&mut scope, ast, name, args))
            .map(|_| ())
    }
}

/// Runs `f` (one poll's rule evaluation) with a script budget: every script evaluation inside
/// stops when `budget` is spent, counted from now, and those after it do not run — so a page
/// of many messages times several slow scripts still holds the poll for at most `budget`
/// (plus the one evaluation running when it ends, itself stopped at its deadline).
pub fn with_poll_budget<T>(budget: Duration, f: impl FnOnce() -> T) -> T {
    let previous = POLL_BUDGET.replace(Some((Instant::now() + budget, budget)));
    let out = f();
    POLL_BUDGET.set(previous);
    out
}

/// Tokens `on_progress` stops a script with.
const OPERATIONS: &str = "operations";
const DEADLINE_TOKEN: &str = "deadline";

fn take_print() -> bool {
    let left = PRINTS_LEFT.get();
    if left == 0 {
        return false;
    }
    PRINTS_LEFT.set(left - 1);
    true
}

fn cap(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}

fn classify(e: EvalAltResult, deadline: Duration) -> ScriptError {
    use EvalAltResult as E;
    match e {
        E::ErrorTerminated(token, _)
            if token.clone().into_string().ok().as_deref() == Some(OPERATIONS) =>
        {
            ScriptError::Limit("too many operations".into())
        }
        E::ErrorTerminated(..) => ScriptError::Deadline(deadline),
        E::ErrorTooManyOperations(_) => ScriptError::Limit("too many operations".into()),
        E::ErrorTooManyVariables(_) => ScriptError::Limit("too many variables".into()),
        E::ErrorStackOverflow(_) => ScriptError::Limit("calls nested too deeply".into()),
        E::ErrorDataTooLarge(what, _) => ScriptError::Limit(format!("{what} too large")),
        E::ErrorInFunctionCall(_, _, inner, _) if is_limit(&inner) => classify(*inner, deadline),
        // What rhai's `sync` build says when a closure calls itself through a captured variable.
        E::ErrorDataRace(..) => ScriptError::Runtime(
            "a closure called itself (through a variable it captured): recursion is only for `fn` functions".into(),
        ),
        E::ErrorInFunctionCall(_, _, inner, _) if matches!(*inner, E::ErrorDataRace(..)) => {
            classify(*inner, deadline)
        }
        other => ScriptError::Runtime(other.to_string()),
    }
}

fn is_limit(e: &EvalAltResult) -> bool {
    use EvalAltResult as E;
    match e {
        E::ErrorTerminated(..)
        | E::ErrorTooManyOperations(_)
        | E::ErrorTooManyVariables(_)
        | E::ErrorStackOverflow(_)
        | E::ErrorDataTooLarge(..) => true,
        E::ErrorInFunctionCall(_, _, inner, _) => is_limit(inner),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rhai::Map;

    fn sandbox() -> Sandbox {
        Sandbox::default().with_variables(&["msg"])
    }

    fn msg(body: &str) -> Vec<(&'static str, Dynamic)> {
        let mut m = Map::new();
        m.insert("body".into(), body.into());
        m.insert("from_me".into(), false.into());
        vec![("msg", m.into())]
    }

    fn run(src: &str, body: &str) -> Result<bool, ScriptError> {
        let s = sandbox();
        let ast = s.compile_expression(src).expect("compiles");
        s.eval_bool(&ast, msg(body))
    }

    #[test]
    fn expressions_see_their_variables_and_the_string_and_array_basics() {
        assert_eq!(run("msg.body.len() < 5", "abc"), Ok(true));
        assert_eq!(run("msg.body.len() < 5", "abcdef"), Ok(false));
        assert_eq!(
            run(r#"msg.body.contains("bot") && !msg.from_me"#, "a bot"),
            Ok(true)
        );
        assert_eq!(run(r#"msg.body.to_upper() == "ABC""#, "abc"), Ok(true));
        assert_eq!(run(r#"["a", "b"].contains(msg.body)"#, "b"), Ok(true));
        assert_eq!(run(r#"#{x: 1}.x + 1 == 2"#, ""), Ok(true));
    }

    #[test]
    fn compile_errors_say_where_in_the_expression() {
        let e = sandbox()
            .compile_expression("msg.body.len( < 5")
            .unwrap_err();
        assert!(e.contains("(at 1:"), "{e}");
        let e = sandbox()
            .compile_expression("mgs.body == \"\"")
            .unwrap_err();
        assert!(
            e.contains("mgs"),
            "an unknown variable is a compile error: {e}"
        );
        assert!(sandbox().compile_expression("  ").is_err());
    }

    #[test]
    fn scripts_read_numbers_as_customers_write_them() {
        let engine = &sandbox().engine;
        let eval = |expr: &str| engine.eval::<Dynamic>(expr).unwrap().to_string();
        assert_eq!(eval(r#"parse_int("١٬٥٠٠")"#), "1500");
        assert_eq!(eval(r#"parse_int(" ۴۲ ")"#), "42");
        assert_eq!(eval(r#"parse_int("42 SAR") ?? -1"#), "-1");
        assert_eq!(eval(r#"parse_float("٣٫٥")"#), "3.5");
        assert_eq!(eval(r#"first_number("order #٤٥٢١ please")"#), "4521.0");
        assert_eq!(eval(r#"to_int(first_number("3.9 kg"))"#), "3");
        assert_eq!(eval("to_float(2) / 4"), "0.5");
    }

    #[test]
    fn a_call_to_a_function_the_sandbox_lacks_is_a_compile_error() {
        // `parse_xml` is in a package the sandbox does not load: it compiled, then failed
        // on every message.
        let e = sandbox()
            .compile_expression("parse_xml(msg.body) > 3")
            .unwrap_err();
        assert!(
            e.contains("`parse_xml` is not a function rule scripts have")
                && e.contains("(at 1:1 of the expression)"),
            "{e}"
        );
        let e = sandbox()
            .compile_expression(r#"msg.body.contain("x")"#)
            .unwrap_err();
        assert!(e.contains("did you mean `contains`?"), "{e}");
        // What the sandbox has, what a script defines, and a closure held in a variable.
        for ok in [
            r#"msg.body.contains("x") && msg.body.len() < 5"#,
            r#"type_of(msg) == "map" && [1, 2].map(|x| x + 1).len() == 2"#,
        ] {
            assert!(sandbox().compile_expression(ok).is_ok(), "{ok}");
        }
        let script = "fn twice(x) { x * 2 }\nfn on_message() { let f = |x| x + 1; twice(f.call(1)) == f(3) }";
        let result = Sandbox::default().compile_script(script);
        assert!(result.is_ok(), "{:?}", result.err());
        let (e, at) = Sandbox::default()
            .compile_script("fn on_message() {\n  parse_xml(\"1.5\") > 1.0\n}")
            .unwrap_err();
        assert!(e.contains("`parse_xml`"), "{e}");
        assert_eq!(at, Some((2, 3)));
    }

    #[test]
    fn eval_and_modules_are_unavailable() {
        assert!(sandbox().compile_expression(r#"eval("1 == 1")"#).is_err());
        assert!(sandbox().compile_expression(r#"import "x" as y"#).is_err());
    }

    #[test]
    fn parse_bombs_are_refused_at_compile_time() {
        let deep = format!("{}true{}", "(".repeat(10_000), ")".repeat(10_000));
        let e = sandbox().compile_expression(&deep).unwrap_err();
        assert!(!e.is_empty());
        let nested = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        assert!(sandbox().compile_expression(&nested).is_err());
        let long = format!("msg.body == \"{}\"", "x".repeat(20_000));
        assert!(
            sandbox()
                .compile_expression(&long)
                .unwrap_err()
                .contains("bytes long")
        );
    }

    /// An array literal of `n` zeros (expressions cannot loop, but closures over arrays can).
    fn zeros(n: usize) -> String {
        format!("[{}]", vec!["0"; n].join(","))
    }

    #[test]
    fn bounds_stop_a_runaway_script() {
        let a = zeros(1000);
        // Operations: a million closure calls inside one expression. The deadline is out of the
        // way, so that a loaded machine (a debug build among the whole suite) still stops it on
        // operations, the bound this checks.
        let patient = Sandbox::new(Limits {
            deadline: Duration::from_secs(60),
            ..Limits::default()
        })
        .with_variables(&["msg"]);
        let ast = patient
            .compile_expression(&format!("{a}.map(|x| {a}.map(|y| y + 1).len()).len() > 0"))
            .expect("compiles");
        let e = patient.eval_bool(&ast, msg("")).unwrap_err();
        assert_eq!(e, ScriptError::Limit("too many operations".into()));
        let small = Sandbox::new(Limits {
            max_string_size: 1000,
            max_array_size: 100,
            ..Limits::default()
        })
        .with_variables(&["msg"]);
        let a = zeros(90);
        // String size.
        let ast = small
            .compile_expression(&format!(
                r#"{a}.reduce(|s, x| s + "yyyyyyyyyyyy", "").len() > 0"#
            ))
            .unwrap();
        let e = small.eval_bool(&ast, msg("")).unwrap_err();
        assert!(matches!(e, ScriptError::Limit(_)), "{e:?}");
        // Array size.
        let ast = small
            .compile_expression(&format!("({a} + {a}).len() > 0"))
            .unwrap();
        let e = small.eval_bool(&ast, msg("")).unwrap_err();
        assert!(matches!(e, ScriptError::Limit(_)), "{e:?}");
    }

    /// A sandbox with no operation limit (only the clocks stop a script) and `deadline`, and
    /// a script that runs for seconds.
    fn slow_script(deadline: Duration) -> (Sandbox, AST) {
        let s = Sandbox::new(Limits {
            max_operations: 0,
            deadline,
            ..Limits::default()
        })
        .with_variables(&["msg"]);
        let a = zeros(1000);
        let ast = s
            .compile_expression(&format!(
                "{a}.map(|x| {a}.map(|y| {a}.map(|z| z).len()).len()).len() > 0"
            ))
            .unwrap();
        (s, ast)
    }

    #[test]
    fn the_deadline_stops_a_slow_script() {
        let (s, ast) = slow_script(Duration::from_millis(20));
        let started = Instant::now();
        let e = s.eval_bool(&ast, msg("")).unwrap_err();
        assert_eq!(e, ScriptError::Deadline(Duration::from_millis(20)));
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn a_poll_budget_bounds_many_slow_scripts_together() {
        let (s, ast) = slow_script(Duration::from_millis(50));
        let started = Instant::now();
        let errors: Vec<ScriptError> = with_poll_budget(Duration::from_millis(120), || {
            (0..20)
                .map(|_| s.eval_bool(&ast, msg("")).unwrap_err())
                .collect()
        });
        let took = started.elapsed();
        // Twenty evaluations at their 50 ms deadline would take a second.
        assert!(took < Duration::from_millis(600), "{took:?}");
        assert_eq!(errors[0], ScriptError::Deadline(Duration::from_millis(50)));
        let spent = ScriptError::PollBudget(Duration::from_millis(120));
        assert!(errors[2..].iter().all(|e| *e == spent), "{errors:?}");
        assert!(spent.to_string().contains("budget per poll"));
        // Outside a poll, only the deadline counts.
        assert_eq!(
            s.eval_bool(&ast, msg("")).unwrap_err(),
            ScriptError::Deadline(Duration::from_millis(50))
        );
    }

    /// The longest single evaluation a hostile one-liner can make with the default limits:
    /// each built-in that works in one call (no `on_progress` in between) is bounded by the
    /// size limits. Printed for the record (`cargo test -- --nocapture longest`).
    #[test]
    fn the_longest_single_evaluation_stays_near_the_deadline() {
        let s = sandbox();
        // The message body is 128 KB (the rhai size limits let a script build 256 KB).
        let b = "msg.body";
        let hostile = [
            format!("({b} + {b}).len() > 0"),
            format!("({b} + {b}).index_of(\"q\") > 0"),
            format!("({b} + {b}).to_upper().len() > 0"),
            format!("{b}.split(\" \").len() > 0"),
            format!("{b}.split(\"\").len() > 0"),
            format!("{b}.split(\" \").map(|w| w.len()).len() > 0"),
            format!("{b}.sub_string(1).sub_string(1).len() > 0"),
            format!("{b}.chars().len() > 0"),
            "(0..9999).map(|x| 9999 - x).sort().len() > 0".to_string(),
            "(0..9999).map(|x| x.to_string()).reduce(|a, b| a + b).len() > 0".to_string(),
        ];
        let mut longest = (Duration::ZERO, String::new());
        for src in &hostile {
            let Ok(ast) = s.compile_expression(src) else {
                continue;
            };
            let started = Instant::now();
            let _ = s.eval_bool(&ast, msg(&"بوت ".repeat(16 * 1024)));
            let took = started.elapsed();
            if took > longest.0 {
                longest = (took, src.clone());
            }
        }
        println!(
            "longest single evaluation: {:?} for `{}`",
            longest.0, longest.1
        );
        assert!(longest.0 < Duration::from_secs(1), "{longest:?}");
    }

    #[test]
    fn runtime_errors_and_non_bools_are_errors() {
        assert!(matches!(
            run("msg.bdy == \"\"", ""),
            Err(ScriptError::Runtime(_))
        ));
        assert_eq!(
            run("msg.body.len()", "ab"),
            Err(ScriptError::NotBool("i64".into()))
        );
        // Printing is allowed (to the log, capped) and does not change the result.
        assert_eq!(
            run(r#"print("hi") == () && debug("x") == ()"#, ""),
            Ok(true)
        );
    }

    #[test]
    fn scripts_cannot_sleep_and_closure_recursion_says_what_it_is() {
        let s = sandbox();
        for src in ["sleep(4) == ()", "sleep(1e300) == ()"] {
            let e = s.compile_expression(src).expect_err(src);
            assert!(e.contains("sleep"), "{src}: {e}");
        }
        // Through a function pointer it is an error at once, not a wait.
        let ast = s
            .compile_expression(r#"Fn("sleep").call(4) == ()"#)
            .unwrap();
        let started = Instant::now();
        let e = s.eval_bool(&ast, msg("")).unwrap_err();
        assert!(started.elapsed() < Duration::from_millis(500));
        assert!(
            e.to_string().contains("not available to rule scripts"),
            "{e}"
        );
        let ast = s
            .compile_script("fn spin() { let f = 0; f = |n| f.call(n); f.call(1) }")
            .unwrap();
        let e = s.call_fn(&ast, "spin", ()).unwrap_err();
        assert!(e.to_string().contains("a closure called itself"), "{e}");
    }

    #[test]
    fn the_sandbox_is_shareable() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Sandbox>();
        assert_send_sync::<AST>();
    }
}
