//! Dependencies between the crate's top-level modules point one way. Every `crate::<module>`
//! path in `src/` (comments and `mod tests` blocks left out) is an edge; the test fails on an
//! edge that points up the layer table below (unless listed in `EXCEPTIONS`), on a module missing
//! from it, and on any cycle (excepted edges included).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The allowed directions: a module may use the modules of lower layers only. A new top-level
/// module gets a line here; the numbers leave room for one between two layers.
const LAYERS: &[(usize, &[&str])] = &[
    // Leaves: values, settings, the clock, the metric handles, the Redis connection.
    (
        0,
        &[
            "clock",
            "config",
            "domain",
            "durable_file",
            "metrics",
            "redis_link",
            "shutdown",
            "systemd",
        ],
    ),
    // The Postgres handle (pool, health, retries) that the store and the security log share.
    (5, &["db"]),
    (10, &["limits", "security_log", "telemetry"]),
    // Users, sessions and identities; security events never depend on them.
    (20, &["store"]),
    (25, &["mail"]),
    (30, &["alerts", "anomaly", "auth"]),
    (40, &["error", "state"]),
    (50, &["cleanup", "dashboard"]),
    (60, &["http"]),
    (70, &["server"]),
    (80, &["app"]),
    (90, &["cli"]),
];

/// Edges allowed against the table, each with its reason; empty while every edge points down.
const EXCEPTIONS: &[(&str, &str)] = &[];

/// Files of the library outside any module (the crate root) or outside the library (binaries).
const NOT_MODULES: &[&str] = &["lib", "main", "bin"];

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// The top-level modules a line names through `crate::a` or `crate::{a, b::c}`.
fn named_modules(line: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let inner = group.split('}').next().unwrap_or_default();
            names.extend(inner.split(',').map(|p| ident(p.trim())));
        } else {
            names.push(ident(rest));
        }
    }
    names.retain(|n| !n.is_empty() && n != "self");
    names
}

fn ident(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// Every edge between two top-level modules, with the first place it is written.
fn edges(src: &Path) -> BTreeMap<(String, String), String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut edges = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(src).unwrap();
        let first = relative.components().next().unwrap();
        let first = first.as_os_str().to_str().unwrap();
        let module = first.strip_suffix(".rs").unwrap_or(first).to_owned();
        if NOT_MODULES.contains(&module.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (number, line) in lines.iter().enumerate() {
            let trimmed = line.trim();
            let next = lines.get(number + 1).map_or("", |l| l.trim());
            if trimmed == "#[cfg(test)]" && next.starts_with("mod tests") {
                break;
            }
            if trimmed.starts_with("//") {
                continue;
            }
            for target in named_modules(line) {
                if target != module {
                    edges
                        .entry((module.clone(), target))
                        .or_insert_with(|| format!("{}:{}", relative.display(), number + 1));
                }
            }
        }
    }
    edges
}

fn layer(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .find(|(_, modules)| modules.contains(&module))
        .map(|(layer, _)| *layer)
}

fn table() -> String {
    let mut text = String::from("allowed directions (a module uses lower layers only):\n");
    for (layer, modules) in LAYERS {
        text.push_str(&format!("  {layer}: {}\n", modules.join(", ")));
    }
    text
}

/// The shortest path of edges from `start` to `goal`, both included, if there is one.
fn path(
    edges: &BTreeMap<(String, String), String>,
    start: &str,
    goal: &str,
) -> Option<Vec<String>> {
    let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
    let mut frontier = vec![start];
    while !frontier.is_empty() {
        let mut next = Vec::new();
        for module in frontier {
            if module == goal {
                let mut path = vec![goal.to_owned()];
                let mut at = goal;
                while let Some(before) = came_from.get(at) {
                    path.push((*before).to_owned());
                    at = before;
                }
                path.reverse();
                return Some(path);
            }
            for (from, to) in edges.keys() {
                if from == module && to != start && !came_from.contains_key(to.as_str()) {
                    came_from.insert(to, from);
                    next.push(to.as_str());
                }
            }
        }
        frontier = next;
    }
    None
}

#[test]
fn top_level_modules_depend_downwards_only_and_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let edges = edges(&src);
    assert!(
        !edges.is_empty(),
        "no crate:: paths found under {}",
        src.display()
    );
    let mut wrong = Vec::new();
    for ((from, to), at) in &edges {
        let excepted = EXCEPTIONS.iter().any(|(f, t)| f == from && t == to);
        let downwards = match (layer(from), layer(to)) {
            (Some(a), Some(b)) => a > b,
            (None, _) => {
                wrong.push(format!("  {from} is not in LAYERS ({at})"));
                false
            }
            (_, None) => {
                wrong.push(format!("  {to} is not in LAYERS ({at})"));
                false
            }
        };
        if !downwards && !excepted && layer(from).is_some() && layer(to).is_some() {
            wrong.push(format!("  {from} -> {to} ({at}) points up or sideways"));
        }
        // Every cycle has an edge that does not point down.
        if !downwards && let Some(back) = path(&edges, to, from) {
            wrong.push(format!("  cycle: {from} -> {}", back.join(" -> ")));
        }
    }
    assert!(
        wrong.is_empty(),
        "dependencies between top-level modules:\n{}\n\n{}",
        wrong.join("\n"),
        table()
    );
}

#[test]
fn paths_are_read_in_both_spellings() {
    assert_eq!(named_modules("use crate::config::Settings;"), ["config"]);
    assert_eq!(
        named_modules("use crate::{auth::x, self, store};"),
        ["auth", "store"]
    );
    assert_eq!(
        named_modules("let a = crate::clock::now(); crate::metrics::x()"),
        ["clock", "metrics"]
    );
}
