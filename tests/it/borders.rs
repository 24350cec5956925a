//! The borders between the crate's modules, read from the source: which folder may name which
//! other module of the crate (`crate::…`, in `use` lines or inline paths, comments aside).
//!
//! - `store` never names `engine`: a second store backend must not have to know the poll loop;
//!   the types both need live in `model`.
//! - `rules` never names `outbox`: rules produce intents; the network policy they check urls
//!   against is `net`'s.
//! - `gateway` never names `outbox`: both read `Retry-After` and error chains from `net`.
//! - `text`, `model` and `net` name nothing of the crate but themselves.
//! - Only the store names its backend's driver: SQL and `rusqlite` stay under `src/store/`, so
//!   a second backend is added behind the store's seam, not beside it.

use std::path::{Path, PathBuf};

/// (folder under `src/`, the crate modules it may not name; `None`: every one but itself).
const BORDERS: &[(&str, Option<&[&str]>)] = &[
    ("store", Some(&["engine"])),
    ("rules", Some(&["outbox"])),
    ("gateway", Some(&["outbox"])),
    ("text", None),
    ("model", None),
    ("net", None),
];

/// The crate modules a source text names: `crate::x` and each top-level `x` of `crate::{x, …}`.
fn named_modules(text: &str) -> Vec<String> {
    let code: String = text
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = Vec::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level names of the group, up to its closing brace.
            let mut depth = 0;
            let mut start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if start && !c.is_whitespace() => {
                        start = false;
                        out.push(ident(&group[j..]));
                    }
                    _ => {}
                }
            }
        } else {
            out.push(ident(rest));
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every crossing of a border under `src`: "file: names crate::x".
fn violations(src: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for (folder, forbidden) in BORDERS {
        let mut files = Vec::new();
        rust_files(&src.join(folder), &mut files);
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for m in named_modules(&text) {
                let bad = match forbidden {
                    Some(list) => list.contains(&m.as_str()),
                    None => m != *folder,
                };
                if bad {
                    found.push(format!("{}: names crate::{m}", f.display()));
                }
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

/// Files outside `src/store/` that name the SQLite driver.
fn driver_outside_the_store(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let store = src.join("store");
    let mut found: Vec<String> = files
        .into_iter()
        .filter(|f| !f.starts_with(&store))
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            text.lines()
                .map(|l| l.split("//").next().unwrap_or(""))
                .any(|l| l.contains("rusqlite"))
        })
        .map(|f| f.display().to_string())
        .collect();
    found.sort();
    found
}

#[test]
fn only_the_store_names_the_sqlite_driver() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let v = driver_outside_the_store(&src);
    assert!(
        v.is_empty(),
        "rusqlite named outside src/store/:\n{}",
        v.join("\n")
    );

    let dir = tempfile::tempdir().unwrap();
    for (path, text) in [
        ("store/sqlite/open.rs", "use rusqlite::Connection;\n"),
        (
            "outbox/cli.rs",
            "// rusqlite in a comment\nuse crate::store::Store;\n",
        ),
        (
            "commands/outbox.rs",
            "let c = rusqlite::Connection::open(p)?;\n",
        ),
    ] {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
    }
    let v = driver_outside_the_store(dir.path());
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].ends_with("commands/outbox.rs"), "{v:?}");
}

#[test]
fn the_source_tree_keeps_its_module_borders() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let v = violations(&src);
    assert!(v.is_empty(), "borders crossed:\n{}", v.join("\n"));
}

#[test]
fn each_border_crossing_is_caught() {
    // A tree with one crossing of each border (and lines that cross nothing).
    let dir = tempfile::tempdir().unwrap();
    let files = [
        ("store/mod.rs", "use crate::engine::decide::Memory;\n", true),
        (
            "store/ok.rs",
            "use crate::model::Memory; // crate::engine in a comment\n",
            false,
        ),
        (
            "rules/mod.rs",
            "let p = crate::outbox::ssrf::NetPolicy::AllowAll;\n",
            true,
        ),
        ("rules/ok.rs", "use crate::net::ssrf::NetPolicy;\n", false),
        (
            "text/mod.rs",
            "use crate::{text::normalize, config::Config};\n",
            true,
        ),
        (
            "text/ok.rs",
            "use crate::text::{compact, normalize::{fast, slow}};\n",
            false,
        ),
        (
            "model/mod.rs",
            "use crate::{\n    gateway::model::Chat,\n};\n",
            true,
        ),
        ("net/mod.rs", "fn f() { crate::events::log(); }\n", true),
        (
            "gateway/client.rs",
            "use crate::outbox::schedule::parse_retry_after;\n",
            true,
        ),
    ];
    for (path, text, _) in &files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
    }
    let v = violations(dir.path());
    for (path, _, crosses) in &files {
        let caught = v.iter().any(|l| l.contains(path));
        assert_eq!(caught, *crosses, "{path}: {v:?}");
    }
    assert_eq!(v.len(), 6, "{v:?}");
}
