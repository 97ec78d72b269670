//! Dependencies between the crate's top-level modules point one way. Every `crate::<module>`
//! path in `src/` (comments and `mod tests` blocks left out) is an edge; the test fails on an
//! edge that points up the layer table below, on a module missing from it, and on any cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The allowed directions: a module may use the modules of lower layers only. A new top-level
/// module gets a line here.
const LAYERS: &[(usize, &[&str])] = &[
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
    (1, &["limits", "store", "telemetry"]),
    (2, &["security_log"]),
    (3, &["auth"]),
    (4, &["error", "state"]),
    (5, &["cleanup", "dashboard"]),
    (6, &["http"]),
    (7, &["server"]),
    (8, &["app"]),
    (9, &["cli"]),
];

/// Edges allowed against the table while the code they come from is being moved, each with the
/// reason; empty when every edge points down.
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

/// The modules on a cycle: those that reach themselves again.
fn cycles(edges: &BTreeMap<(String, String), String>) -> BTreeSet<String> {
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (from, to) in edges.keys() {
        next.entry(from).or_default().push(to);
    }
    let reaches = |start: &str| {
        let mut seen = BTreeSet::new();
        let mut stack = next.get(start).cloned().unwrap_or_default();
        while let Some(module) = stack.pop() {
            if seen.insert(module) {
                stack.extend(next.get(module).into_iter().flatten());
            }
        }
        seen.contains(start)
    };
    next.keys()
        .filter(|m| reaches(m))
        .map(|m| (*m).to_owned())
        .collect()
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
        match (layer(from), layer(to)) {
            (Some(a), Some(b)) if a > b || excepted => {}
            (Some(_), Some(_)) => {
                wrong.push(format!("  {from} -> {to} ({at}) points up or sideways"))
            }
            (None, _) => wrong.push(format!("  {from} is not in LAYERS ({at})")),
            (_, None) => wrong.push(format!("  {to} is not in LAYERS ({at})")),
        }
    }
    let on_cycles = cycles(&edges);
    for ((from, to), at) in &edges {
        if on_cycles.contains(from) && on_cycles.contains(to) {
            wrong.push(format!("  {from} -> {to} ({at}) may be on a cycle"));
        }
    }
    wrong.dedup();
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
